"""promtool's rule unit tests run as parallel shards, under one or several promtool builds at once.

`promtool test rules` runs its test cases one after the other on a single core, and the generated test
files hold up to a few hundred cases: on CI's two cores, one promtool at a time leaves a core idle for most
of the rules tests' wall time. Here every case of the file still runs, under real promtool, against the
same rule files, with the same `evaluation_interval` and `group_eval_order`: the cases are only spread
over several test files (one per core), and every shard of every build runs at the same time.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from monitor.rules import ALERTS_FILE, RECORDING_FILE, TESTS_FILE
from monitor.rules.check import Result

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _cost(case: dict[str, Any]) -> float:
    """Rough promtool cost of one case: rules are evaluated at every step up to the last eval_time."""
    times = [t["eval_time"] for key in ("alert_rule_test", "promql_expr_test") for t in case.get(key, [])]
    minutes = max((_minutes(t) for t in times), default=1.0)
    return minutes * (10 + len(case.get("input_series", [])))


def _minutes(duration: str) -> float:
    units = {"s": 1 / 60, "m": 1.0, "h": 60.0, "d": 1440.0}
    return float(duration[:-1]) * units[duration[-1]] if duration[-1] in units else 1.0


def split(test_file: Path, out_dir: Path, shards: int) -> list[Path]:
    """The cases of `test_file` spread over `shards` files in out_dir (largest first onto the lightest
    shard), rule files made absolute so the shards can live anywhere. Every case lands in exactly one."""
    doc = yaml.load(test_file.read_text(encoding="utf-8"), Loader=_Loader)
    cases: list[dict[str, Any]] = doc["tests"]
    base = test_file.resolve().parent
    header = {k: v for k, v in doc.items() if k != "tests"}
    header["rule_files"] = [str((base / f).resolve()) for f in doc["rule_files"]]
    shards = max(1, min(shards, len(cases)))
    bins: list[list[dict[str, Any]]] = [[] for _ in range(shards)]
    load = [0.0] * shards
    for case in sorted(cases, key=_cost, reverse=True):
        i = load.index(min(load))
        bins[i].append(case)
        load[i] += _cost(case)
    assert sum(len(b) for b in bins) == len(cases)
    paths = []
    for i, cases_i in enumerate(bins):
        path = out_dir / f"shard{i}.test.yml"
        path.write_text(yaml.dump({**header, "tests": cases_i}, Dumper=_Dumper, sort_keys=False, width=1 << 30),
                        encoding="utf-8")
        paths.append(path)
    return paths


def run_tests(test_file: Path, tools: Sequence[str], shards: int | None = None,
               timeout: float = 900) -> dict[str, Result]:
    """`promtool test rules` over every case of test_file under each of `tools`, all shards of all tools
    at once; per tool one Result (failed if any shard failed, with every shard's output)."""
    shards = shards or os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="promtool-shards-") as tmp:
        paths = split(test_file, Path(tmp), shards)
        procs = {(tool, path): subprocess.Popen([tool, "test", "rules", str(path)], stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True)
                 for tool in tools for path in paths}
        outputs: dict[tuple[str, Path], tuple[int, str]] = {}
        try:
            for key, proc in procs.items():
                out, _ = proc.communicate(timeout=timeout)
                outputs[key] = (proc.returncode, out)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    results = {}
    for tool in tools:
        codes = [outputs[(tool, p)][0] for p in paths]
        results[tool] = Result([tool, "test", "rules", str(test_file)], max(codes, key=abs),
                               "".join(outputs[(tool, p)][1] for p in paths))
    return results


def check(out_dir: Path, tools: Sequence[str], timeout: float = 900) -> dict[str, list[Result]]:
    """monitor.rules.check.check under several promtool builds at once, the test run sharded: per tool
    `promtool check rules` on the rule files, then (if every check passed) the tests."""
    rules = [str(out_dir / RECORDING_FILE), str(out_dir / ALERTS_FILE)]
    checked = {}
    for tool in tools:
        proc = subprocess.run([tool, "check", "rules", *rules], capture_output=True, text=True, timeout=timeout,
                              check=False)
        checked[tool] = Result([tool, "check", "rules", *rules], proc.returncode, proc.stdout + proc.stderr)
    passed = [t for t in tools if checked[t].ok]
    tested = run_tests(out_dir / TESTS_FILE, passed, timeout=timeout) if passed else {}
    return {t: [checked[t], *([tested[t]] if t in tested else [])] for t in tools}
