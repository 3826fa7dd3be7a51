"""Whole process against whole process: `monitor replay` vs river's join-and-count on the same stream.

    python -m bench.run [--mix example|realistic] [--predictions N] [--repeat K] [--no-python]
                        [--enforce] [--target 3.0]

1. Writes (once, cached; see bench/make_stream.py) N simulated predictions and their delayed ground truth:
   the bundled example's model (`--mix example`, the default) or the realistic mix of three models and the
   shapes producers send (`--mix realistic`: served lists, partial ground truth, multiclass, binary, epoch
   timestamps).
2. Times each peer as its own subprocess, alternating them K times and keeping the best wall time:
   `monitor replay --config C --predictions P --ground-truth G`, the same with MLMON_NATIVE=0 (unless
   `--no-python`), and `python bench/river_peer.py --config C --predictions P --ground-truth G`. CPU time
   and peak RSS come from GNU /usr/bin/time when installed, else from os.wait4 on the child. Stdout goes to
   a scratch file so the outputs can be cross-checked afterwards.
3. Cross-checks that both computed the same thing: joined events, and per model the per-label F1 and
   micro F1 from the monitor's cumulative `mlmon_label_outcomes_total` counters against river's values;
   and that the native and pure-Python replays printed the same bytes.
4. Times the start-up: `monitor --help`, `monitor replay --help` and a replay of the stream's first
   prediction and first ground truth with the same config (replay refuses empty files). Replay's steady
   rate is events / (replay's time - the 1-line replay's time).
5. Counts the share of events the native decoder's fast path takes (bench/fast_share.py, untimed).
6. Prints a table: events (predictions + ground truths), seconds, events/s, CPU seconds, peak RSS, and
   the ratio replay/river (events/s of replay over events/s of river; above 1 means replay is faster).

`--enforce` exits 2 when the ratio is below `--target`. CI does not run benches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.make_stream import DEFAULT_EVENTS, DEFAULT_SEED, MIXES, count_lines, stream_paths

ROOT = Path(__file__).resolve().parent.parent
RIVER_PEER = Path(__file__).resolve().parent / "river_peer.py"
DEFAULT_TARGET = 3.0


@dataclass
class Run:
    seconds: float  # wall
    cpu_seconds: float  # user + system of the child
    max_rss_kb: int


def monitor_command() -> list[str]:
    """The installed `monitor` console script itself (not a pyenv/asdf shim, which adds a shell start-up),
    falling back to `python -m monitor.cli` when the package is not installed as a script."""
    beside = Path(sys.executable).parent / "monitor"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("monitor")
    if found and "shims" not in found:
        return [found]
    return [sys.executable, "-m", "monitor.cli"]


GNU_TIME = "/usr/bin/time"


def gnu_time() -> str | None:
    """GNU time, when installed: it reports its own child's peak RSS. os.wait4 on a child we spawn
    directly also counts the memory the child inherited from this process before exec, which inflates
    small processes (the start-up rows) by our own footprint."""
    if not (os.path.isfile(GNU_TIME) and os.access(GNU_TIME, os.X_OK)):
        return None
    probe = subprocess.run([GNU_TIME, "-f", "%M", "true"], capture_output=True, text=True)
    return GNU_TIME if probe.returncode == 0 and probe.stderr.strip().isdigit() else None


def child_env(extra: dict[str, str] | None) -> dict[str, str]:
    """Every peer runs from its bytecode cache, as a package installed by pip does (it compiles on
    install): with PYTHONDONTWRITEBYTECODE in the environment, an editable install would compile its
    modules from source in every run (about 0.1 s of replay's start-up here), and the peers the bench
    compares would pay for the checkout, not for their code."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **(extra or {})}


def precompile() -> None:
    """Bytecode for this checkout's monitor and bench packages (what `pip install` writes for a wheel)."""
    import compileall

    for package in ("monitor", "bench"):
        compileall.compile_dir(ROOT / package, quiet=1)


def timed(cmd: list[str], stdout_path: str | None = None, time_bin: str | None = None,
          env: dict[str, str] | None = None) -> Run:
    """Wall time, CPU time and peak RSS (KB) of one subprocess."""
    report = None
    if time_bin:
        fd, report = tempfile.mkstemp(prefix="mlmon-bench-time-")
        os.close(fd)
        cmd = [time_bin, "-o", report, "-f", "%M %U %S", *cmd]
    out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, cwd=ROOT, env=child_env(env))
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            sys.stderr.write(err.decode(errors="replace"))
            raise SystemExit(f"bench: command failed with exit code {proc.returncode}: {' '.join(cmd)}")
        # ru_maxrss is KB on Linux, bytes on macOS; wait4's CPU time includes the child's own children.
        rss = usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss
        cpu = usage.ru_utime + usage.ru_stime
        if report:
            fields = Path(report).read_text().split()
            rss, cpu = int(fields[-3]), float(fields[-2]) + float(fields[-1])
    finally:
        if stdout_path:
            out.close()  # type: ignore[union-attr]
        if report:
            os.unlink(report)
    return Run(elapsed, cpu, rss)


def native_engine() -> str:
    """Which engine `monitor replay` runs here (asked in a child: this process stays free of numpy)."""
    probe = subprocess.run([sys.executable, "-c", "from monitor.engine import native; print(native.enabled())"],
                           cwd=ROOT, capture_output=True, text=True, check=True)
    return "native core" if probe.stdout.strip() == "True" else "pure-Python engine (monitor._native not built)"


def best(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.seconds)


# --- cross-check ------------------------------------------------------------------------------------------
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def replay_counts(prom_text: str) -> tuple[float, dict[str, dict[str, dict[str, float]]]]:
    """Joined events, and outcome counts per model, label and outcome (summed over versions)."""
    joined = 0.0
    outcomes: dict[str, dict[str, dict[str, float]]] = {}
    for line in prom_text.splitlines():
        if not line.startswith(("mlmon_joined_total{", "mlmon_label_outcomes_total{")):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m["labels"]))
        value = float(m["value"])
        if m["name"] == "mlmon_joined_total":
            joined += value
        else:
            per = outcomes.setdefault(labels["model"], {}).setdefault(labels["label"], {})
            per[labels["outcome"]] = per.get(labels["outcome"], 0.0) + value
    return joined, outcomes


def _f1(tp: float, fp: float, fn: float) -> float | None:
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else None


def cross_check(replay_out: Path, river_out: Path) -> list[str]:
    """Differences between the two peers' results (empty when they agree)."""
    joined, outcomes = replay_counts(replay_out.read_text())
    river = json.loads(river_out.read_text())
    problems = []
    if int(joined) != river["joined"]:
        problems.append(f"joined: replay {int(joined)} vs river {river['joined']}")
    if set(outcomes) != set(river["models"]):
        problems.append(f"models: replay {sorted(outcomes)} vs river {sorted(river['models'])}")
    for model, labels in outcomes.items():
        theirs_model = river["models"].get(model, {"labels": {}, "micro_f1": None})
        totals = [0.0, 0.0, 0.0]
        for label, per in labels.items():
            tp, fp, fn = (per.get(k, 0.0) for k in ("tp", "fp", "fn"))
            totals = [totals[0] + tp, totals[1] + fp, totals[2] + fn]
            theirs = theirs_model["labels"].get(label, {}).get("f1")
            ours = _f1(tp, fp, fn)
            if (ours is None) != (theirs is None) or (ours is not None and not math.isclose(ours, theirs,
                                                                                             rel_tol=1e-9)):
                problems.append(f"f1[{model}/{label}]: replay {ours} vs river {theirs}")
        micro = _f1(*totals)
        if micro is not None and not math.isclose(micro, theirs_model["micro_f1"] or 0.0, rel_tol=1e-9):
            problems.append(f"micro_f1[{model}]: replay {micro} vs river {theirs_model['micro_f1']}")
    return problems


def fast_share(config: Path, preds: Path, truths: Path) -> dict[str, dict[str, int]] | None:
    """Events the native fast path takes, per topic (None without the native core); asked in a child."""
    probe = subprocess.run([sys.executable, "-m", "bench.fast_share", "--config", str(config), "--predictions",
                            str(preds), "--ground-truth", str(truths)], cwd=ROOT, capture_output=True, text=True)
    return json.loads(probe.stdout) if probe.returncode == 0 else None


# --- report -----------------------------------------------------------------------------------------------
def _fmt_row(cols: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths, strict=True)))


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [_fmt_row(rows[0], widths), "  ".join("-" * w for w in widths)]
    lines += [_fmt_row(r, widths) for r in rows[1:]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", "--predictions", dest="events", type=int, default=DEFAULT_EVENTS,
                    help="predictions in the stream (default 100000)")
    ap.add_argument("--mix", choices=MIXES, default="example",
                    help="example: the bundled example's model; realistic: three models and every common shape")
    ap.add_argument("--no-python", action="store_true", help="skip the MLMON_NATIVE=0 peer (slow on big streams)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per peer; the best wall time counts (default 3)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--config", type=Path, help="default: the stream's (the example's for --mix example)")
    ap.add_argument("--target", type=float, default=DEFAULT_TARGET, help="ratio replay/river to reach (default 3)")
    ap.add_argument("--enforce", action="store_true", help="exit 2 when the ratio is below --target")
    ap.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.events < 1:
        ap.error("--events and --repeat must be at least 1")

    t0 = time.perf_counter()
    preds, truths, stream_config = stream_paths(args.events, args.seed, mix=args.mix)
    config = args.config or stream_config
    fresh = not (preds.exists() and truths.exists() and stream_config.exists())
    if fresh:  # in a child, so this process never loads numpy (a forked child's peak RSS starts at ours)
        subprocess.run([sys.executable, "-m", "bench.make_stream", "--events", str(args.events),
                        "--seed", str(args.seed), "--mix", args.mix], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    n_preds, n_truths = count_lines(preds), count_lines(truths)
    events = n_preds + n_truths
    print(f"stream: {n_preds} predictions + {n_truths} ground truths = {events} events "
          f"({'generated' if fresh else 'cached'} in {preds.parent}, {time.perf_counter() - t0:.1f} s)")

    precompile()
    monitor = monitor_command()
    time_bin = gnu_time()
    files = ["--config", str(config.resolve()), "--predictions", str(preds), "--ground-truth", str(truths)]
    replay_cmd = [*monitor, "replay", *files]
    river_cmd = [sys.executable, str(RIVER_PEER), *files]

    engine = native_engine()
    print(f"monitor replay runs the {engine}")
    replay_runs: list[Run] = []
    python_runs: list[Run] = []
    river_runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="mlmon-bench-out-") as scratch:
        replay_out, river_out = Path(scratch) / "replay.prom", Path(scratch) / "river.json"
        python_out = Path(scratch) / "python.prom"
        one_pred, one_truth = Path(scratch) / "one_prediction.jsonl", Path(scratch) / "one_ground_truth.jsonl"
        for source, one in ((preds, one_pred), (truths, one_truth)):
            with open(source, "rb") as fh:
                one.write_bytes(fh.readline())
        one_cmd = [*monitor, "replay", "--config", str(config.resolve()), "--predictions", str(one_pred),
                   "--ground-truth", str(one_truth)]
        startup_cmds = {
            "monitor --help": [*monitor, "--help"],
            "monitor replay --help": [*monitor, "replay", "--help"],
            "monitor replay, 1-line files": one_cmd,
            "python -c pass (floor)": [sys.executable, "-c", "pass"],
        }
        startup_runs: dict[str, list[Run]] = {name: [] for name in startup_cmds}
        for i in range(args.repeat):  # alternate, so a noisy neighbour hurts every peer alike
            replay_runs.append(timed(replay_cmd, str(replay_out), time_bin))
            if not args.no_python:
                python_runs.append(timed(replay_cmd, str(python_out), time_bin, {"MLMON_NATIVE": "0"}))
            river_runs.append(timed(river_cmd, str(river_out), time_bin))
            for name, cmd in startup_cmds.items():
                startup_runs[name].append(timed(cmd, None, time_bin))
            python_note = "" if args.no_python else f"pure-Python replay {python_runs[-1].seconds:.2f} s, "
            print(f"  run {i + 1}/{args.repeat}: replay {replay_runs[-1].seconds:.2f} s, {python_note}"
                  f"river {river_runs[-1].seconds:.2f} s", flush=True)
        problems = cross_check(replay_out, river_out)
        if not args.no_python and python_out.read_bytes() != replay_out.read_bytes():
            problems.append("the native and the pure-Python engine printed different metrics")
        k = max(3, args.repeat)
        for name, cmd in startup_cmds.items():  # start-up is short: a few more runs for a steadier best
            startup_runs[name] += [timed(cmd, None, time_bin) for _ in range(k - args.repeat)]

    startup = {name: best(runs) for name, runs in startup_runs.items()}
    share = fast_share(config, preds, truths)

    rp, rv = best(replay_runs), best(river_runs)
    py = best(python_runs) if python_runs else None
    replay_eps, river_eps = events / rp.seconds, events / rv.seconds
    ratio = replay_eps / river_eps
    empty_s = startup["monitor replay, 1-line files"].seconds
    steady_eps = events / (rp.seconds - empty_s) if rp.seconds > empty_s else math.inf
    rows = [["peer", "events", "seconds", "events/s", "CPU s", "peak RSS"]]
    peers = [("monitor replay", rp), ("river join-and-count", rv)]
    if py is not None:
        peers.append(("replay, MLMON_NATIVE=0", py))
    for name, r in peers:
        rows.append([name, f"{events:,}", f"{r.seconds:.2f}", f"{events / r.seconds:,.0f}", f"{r.cpu_seconds:.2f}",
                     f"{r.max_rss_kb / 1024:.0f} MiB"])
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"best of {args.repeat}; peak RSS from {'GNU time' if time_bin else 'os.wait4'}")
    print(table(rows))
    cpu_ratio = rv.cpu_seconds / rp.cpu_seconds if rp.cpu_seconds else math.inf
    print(f"\nratio replay/river: {ratio:.2f}x by wall time (target {args.target:g}x); "
          f"{cpu_ratio:.2f}x by CPU time (steadier on a busy machine)")
    print(f"replay's steady rate: {steady_eps:,.0f} events/s ({events:,} events in {rp.seconds:.2f} s "
          f"minus {empty_s:.2f} s for replaying 1-line files)")
    if share is not None:
        print("native fast path took " + ", ".join(
            f"{v['fast']:,} of {v['events']:,} {topic} ({100 * v['fast'] / max(v['events'], 1):.1f}%)"
            for topic, v in share.items()))
    print(f"\nstart-up (best of {k}):")
    print(table([["command", "seconds", "CPU s", "peak RSS"]]
                + [[k, f"{v.seconds:.3f}", f"{v.cpu_seconds:.3f}", f"{v.max_rss_kb / 1024:.0f} MiB"]
                   for k, v in startup.items()]))
    if problems:
        print("\ncross-check FAILED, the peers disagree:\n  " + "\n  ".join(problems))
    else:
        print("\ncross-check: replay and river agree (joined events, per-model per-label F1 and micro F1)"
              + ("" if args.no_python else "; the native and pure-Python replays print the same bytes"))

    if args.json:
        args.json.write_text(json.dumps({
            "mix": args.mix, "config": str(config),
            "events": events, "predictions": n_preds, "ground_truth": n_truths, "repeat": args.repeat,
            "cores": os.cpu_count(), "python": platform.python_version(),
            "replay": {"seconds": rp.seconds, "events_per_s": replay_eps, "cpu_seconds": rp.cpu_seconds,
                       "max_rss_kb": rp.max_rss_kb,
                       "all_seconds": [r.seconds for r in replay_runs]},
            "engine": engine,
            "python_replay": None if py is None else {
                "seconds": py.seconds, "events_per_s": events / py.seconds, "cpu_seconds": py.cpu_seconds,
                "max_rss_kb": py.max_rss_kb, "all_seconds": [r.seconds for r in python_runs]},
            "river": {"seconds": rv.seconds, "events_per_s": river_eps, "cpu_seconds": rv.cpu_seconds,
                      "max_rss_kb": rv.max_rss_kb,
                      "all_seconds": [r.seconds for r in river_runs]},
            "ratio": ratio, "cpu_ratio": cpu_ratio, "target": args.target, "steady_events_per_s": steady_eps,
            "fast_path": share,
            "startup": {k: {"seconds": v.seconds, "cpu_seconds": v.cpu_seconds, "max_rss_kb": v.max_rss_kb}
                        for k, v in startup.items()},
            "cross_check_problems": problems,
        }, indent=2) + "\n")
    if problems:
        return 1
    if args.enforce and ratio < args.target:
        print(f"\nbench: FAIL: monitor replay is {ratio:.2f}x river's join-and-count, below the {args.target:g}x "
              f"target (replay {replay_eps:,.0f} events/s, river {river_eps:,.0f} events/s)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
