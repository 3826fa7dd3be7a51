"""`monitor backtest` against Prometheus's own rule evaluation.

The oracle: promtool's rule unit tests run the same rule files through Prometheus's rule manager (groups
in order, `for:`, `keep_firing_for:`, staleness) over the same exported series. The backtest's firing set
at every sampled evaluation must equal `ALERTS{alertstate="firing"}` there.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from monitor.backtest.firing import Interval, firing_intervals
from monitor.backtest.rulefiles import RuleFileError, load_rules
from monitor.backtest.run import run_backtest
from monitor.cli import main
from monitor.config import MINUTE, parse_config
from monitor.inputs import EXAMPLE
from monitor.rules import RuleOptions
from monitor.rules.generate import ALERTS_FILE, RECORDING_FILE, generate, write
from monitor.services import binary, prometheus_builds
from monitor.simulate import TrafficSpec
from monitor.simulate import generate as simulate
from tests.needs import needs_prometheus

M = 60.0


# --- for: and keep_firing_for: (Prometheus rules/alerting.go) -----------------------------------------------
def _times(n: int) -> list[float]:
    return [i * M for i in range(n)]


def test_for_zero_fires_at_the_first_evaluation() -> None:
    assert firing_intervals(_times(5), {M: 1.0, 2 * M: 3.0}, 0) == [Interval(M, 3 * M, 3.0, M)]


def test_for_waits_until_active_for_that_long_and_a_gap_resets_pending() -> None:
    present = {t: 1.0 for t in (0, M, 2 * M)} | {t: 2.0 for t in (4 * M, 5 * M, 6 * M, 7 * M)}
    # active at 0, gone at 3m before 3m had passed: never fired; active again at 4m, fires at 7m.
    assert firing_intervals(_times(10), present, 3 * M) == [Interval(7 * M, 8 * M, 2.0, 4 * M)]


def test_keep_firing_for_bridges_short_gaps_and_ends_after_it() -> None:
    present = {0.0: 1.0, M: 1.0, 3 * M: 1.0}
    # Fires at 0; missing at 2m (kept), back at 3m, missing from 4m: kept until 4m + 2m = 6m.
    assert firing_intervals(_times(10), present, 0, keep_firing_for_s=2 * M) == [Interval(0, 6 * M, 1.0, 0)]


def test_still_firing_at_the_end_has_no_end() -> None:
    assert firing_intervals(_times(3), {M: 1.0, 2 * M: 1.0}, 0) == [Interval(M, None, 1.0, M)]


def test_pending_never_fired_leaves_nothing() -> None:
    assert firing_intervals(_times(4), {0: 1.0, M: 1.0}, 5 * M) == []


# --- rule files -------------------------------------------------------------------------------------------
def test_levels_put_every_rule_after_the_rules_it_reads(tmp_path: Path) -> None:
    rules = load_rules([Path("alert_rules") / RECORDING_FILE, Path("alert_rules") / ALERTS_FILE])
    levels = rules.levels()
    seen: set[str] = set()
    recorded = {r.record for r in rules.recording}
    for level in levels:
        for rule in level:
            reads = {name for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule.expr)
                     if name in recorded and name != rule.record}
            assert reads <= seen, (rule.record, reads - seen)
        seen |= {r.record for r in level}
    assert seen == recorded and len(levels) >= 2
    assert {"mlmon_label_outcomes", "mlmon_window_predictions", "up"} <= rules.raw_metrics()


def test_bad_rule_files_name_every_problem(tmp_path: Path) -> None:
    a = tmp_path / "a.yml"
    a.write_text("groups:\n- name: g\n  rules:\n  - alert: X\n    expr: up\n    for: soon\n  - record: y\n")
    b = tmp_path / "b.yml"
    b.write_text("just text\n")
    with pytest.raises(RuleFileError) as err:
        load_rules([a, b])
    text = "\n".join(err.value.problems)
    assert "for" in text and "rule 2: no expr" in text and "b.yml: not a Prometheus rule file" in text


# --- the whole backtest against promtool ------------------------------------------------------------------
START = datetime(2026, 11, 20, 6, 0, tzinfo=UTC).timestamp()


def _config() -> Any:
    data = yaml.safe_load((Path(str(EXAMPLE)) / "config.yaml").read_text())
    data["windows"] = ["2m", "5m", "10m", "30m", "1h", "2h"]
    data["join"] = {"ttl": "30m"}
    (model,) = data["models"]
    model["reference"] = str((Path(str(EXAMPLE)) / model["reference"]).resolve())
    model["thresholds"] = {}
    model["min_events"] = 30
    model["slos"] = [
        {"label": "violence", "objective": "recall", "target": 0.85, "period": "2h", "severity": "page"},
        {"label": "spam", "objective": "precision", "target": 0.90, "period": "2h", "severity": "ticket"},
    ]
    return parse_config(data)


def _rules(cfg: Any, out: Path) -> list[Path]:
    """Generated rules with short windows and a mix of `for:` (0s, 2m, 4m) and `keep_firing_for:`, so the
    state machine is exercised in every way."""
    opts = RuleOptions(for_overrides={"*": "2m", "MLMonitorFeatureDrift": "0s", "MLMonitorScoreDrift": "4m"},
                       fast_window=2 * MINUTE, drift_window=5 * MINUTE, slow_window=10 * MINUTE)
    files = {k: v for k, v in generate(cfg, opts).items() if k in (RECORDING_FILE, ALERTS_FILE)}
    write(files, out)
    alerts = yaml.safe_load((out / ALERTS_FILE).read_text())
    for group in alerts["groups"]:
        for rule in group["rules"]:
            if rule["alert"] in ("MLMonitorFeatureDrift", "MLMonitorLabelErrorBudgetBurn"):
                rule["keep_firing_for"] = "3m"
    (out / ALERTS_FILE).write_text(yaml.safe_dump(alerts, sort_keys=False))
    return [out / RECORDING_FILE, out / ALERTS_FILE]


def _history() -> tuple[list[bytes], list[bytes]]:
    preds, truths = simulate(TrafficSpec(n=4 * 80 * 60, start=START, rate=4.0, mean_delay=45.0,
                                         degrade_at=30 * 60, drift_at=45 * 60, seed=3))
    return [raw for _, raw in preds], [raw for _, raw in truths]


def _read_openmetrics(path: Path) -> tuple[list[float], dict[str, dict[float, str]]]:
    series: dict[str, dict[float, str]] = {}
    times: set[float] = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        key, value, ts = line.rsplit(" ", 2)
        series.setdefault(key, {})[float(ts)] = value
        times.add(float(ts))
    return sorted(times), series


def _promtool_values(times: list[float], samples: dict[float, str]) -> str:
    """promtool's series notation: a value per step, `stale` once a series has left (the live worker's
    scrape would write a staleness marker), `_` before it first appears."""
    out, seen = [], False
    for t in times:
        if t in samples:
            out.append(samples[t])
            seen = True
        else:
            out.append("stale" if seen else "_")
    return " ".join(out)


def _alerts_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


BUILDS = prometheus_builds()


@dataclass
class Oracle:
    """One build's backtest and the promtool run judging it (started, maybe still running)."""
    result: Any = None
    rule_files: list[Path] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    promtool: subprocess.Popen[str] | None = None
    error: BaseException | None = None


def _start_oracle(build: str, cfg: Any, preds: list[bytes], truths: list[bytes], tmp_path: Path) -> Oracle:
    """Backtest under `build`, then start its promtool on the exported series without waiting for it."""
    oracle = Oracle()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in BUILDS[build].items():
                mp.setenv(key, value)
            oracle.rule_files = rule_files = _rules(cfg, tmp_path / "rules")
            work = tmp_path / "work"
            oracle.result = result = run_backtest(cfg, preds, truths, rule_files=rule_files, workdir=work, workers=2)
            promtool = binary("promtool")
        assert promtool is not None
        times, series = _read_openmetrics(work / "history.om")
        oracle.times = times
        t0 = times[0]
        groups = [g["name"] for f in rule_files for g in yaml.safe_load(f.read_text())["groups"]]
        for k in range(0, len(times), 3):
            t = times[k]
            expected = [{"labels": "ALERTS" + "{" + ",".join(f'{n}="{v}"' for n, v in sorted(
                {**a.labels, "alertstate": "firing"}.items())) + "}", "value": 1} for a in result.firing_at(t)]
            oracle.checks.append({"expr": 'ALERTS{alertstate="firing"}', "eval_time": f"{round(t - t0)}s",
                                  "exp_samples": expected})
        test_file = tmp_path / "oracle.test.yml"
        # libyaml's safe dumper: the same document (1.7 MB) written in 0.06 s instead of 1.2 s.
        test_file.write_text(yaml.dump({
            "rule_files": [str(p) for p in rule_files], "evaluation_interval": "1m", "group_eval_order": groups,
            "tests": [{"interval": "1m",
                       "input_series": [{"series": key, "values": _promtool_values(times, samples)}
                                        for key, samples in series.items()],
                       "promql_expr_test": oracle.checks}],
        }, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False, width=1 << 30))
        oracle.promtool = subprocess.Popen([promtool, "test", "rules", str(test_file)], stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True)
    except Exception as exc:  # reported by that build's test, not by the other's
        oracle.error = exc
    return oracle


@pytest.fixture(scope="module")
def oracles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Oracle]]:
    """Every build's backtest of the same history, each build's promtool oracle started as soon as its
    backtest is done: promtool (single-threaded, the longest part) judges one build while the next build's
    backtest runs and the oracles run side by side, instead of one after the other in each test."""
    cfg = _config()
    preds, truths = _history()
    started: dict[str, Oracle] = {}
    try:
        # Debian's 2.42 first: its promtool takes the longest (about 1.7x 3.x's), so it starts first.
        for build in sorted(BUILDS, key=lambda b: b != "path"):
            started[build] = _start_oracle(build, cfg, preds, truths, tmp_path_factory.mktemp(f"backtest-{build}"))
        yield started
    finally:
        for oracle in started.values():
            if oracle.promtool is not None and oracle.promtool.poll() is None:
                oracle.promtool.kill()
                oracle.promtool.wait()


@needs_prometheus
@pytest.mark.parametrize("build", sorted(BUILDS))
def test_backtest_fires_what_prometheus_itself_fires(build: str, oracles: dict[str, Oracle]) -> None:
    """Under Debian's 2.42 and 3.x alike (3.x: left-open range selectors, so rates differ slightly; each
    build is compared with its own promtool)."""
    oracle = oracles[build]
    if oracle.error is not None:
        raise oracle.error
    result = oracle.result
    fired = {a.alert for a in result.alerts}
    # The history is built to fire: a violence recall collapse and an input shift.
    assert {"MLMonitorLabelErrorBudgetBurn", "MLMonitorFeatureDrift"} <= fired, fired
    assert len(oracle.times) == result.history.steps
    assert sum(1 for c in oracle.checks if c["exp_samples"]) >= 5
    assert oracle.promtool is not None
    output, _ = oracle.promtool.communicate(timeout=900)
    assert oracle.promtool.returncode == 0, output[-4000:]
    assert len(load_rules(oracle.rule_files).alerts) >= 10


# --- the command line -------------------------------------------------------------------------------------
def _cli(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["backtest", *args], env=env)


def test_cli_rejects_a_bad_step_and_an_end_before_the_start(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text("")
    config = str(Path(str(EXAMPLE)) / "config.yaml")
    r = _cli(["--config", config, "--predictions", str(p), "--step", "5s"])
    assert r.exit_code == 2 and "at least 10s" in r.output
    r = _cli(["--config", config, "--predictions", str(p), "--start", "2026-11-20T10:00:00Z",
              "--end", "2026-11-20T09:00:00Z"])
    assert r.exit_code == 2 and "after --start" in r.output


def test_cli_says_what_is_missing(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text('{"not": "a prediction"}\n')
    config = str(Path(str(EXAMPLE)) / "config.yaml")
    r = _cli(["--config", config, "--predictions", str(p)], env={"MLMON_PROMETHEUS": str(tmp_path / "nope")})
    assert r.exit_code != 0 and "MLMON_PROMETHEUS" in r.output
    if binary("prometheus") and binary("promtool"):
        r = _cli(["--config", config, "--predictions", str(p)])
        assert r.exit_code == 1 and "no event with a valid timestamp" in r.output
    bad = tmp_path / "bad.yml"
    bad.write_text("groups: 3\n")
    r = _cli(["--config", config, "--predictions", str(p), "--rules", str(bad)])
    if binary("prometheus") and binary("promtool"):
        assert r.exit_code == 1 and "not a Prometheus rule file" in r.output
