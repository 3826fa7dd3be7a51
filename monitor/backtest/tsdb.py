"""The exported history into a real Prometheus: backfilled blocks, recording rules backfilled level by
level, alert expressions as range queries.

    promtool tsdb create-blocks-from openmetrics history.om data/
    for each dependency level:   (a rule only sees what Prometheus already holds)
        prometheus over data/ ; query_range(rule expr, start, end, step) for each rule of the level
        the results, named after the rule -> promtool tsdb create-blocks-from openmetrics -> data/
    prometheus over data/ ; query_range(alert expr, start, end, step) for every alert rule
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.backtest.history import series_key
from monitor.backtest.rulefiles import RecordingRule, Rules
from monitor.services import Prometheus, ServiceError, binary

# Backfilled history lies in the past: retention is measured from the newest block, but keep it out of
# the way anyway.
# Range queries over long histories of joins (the PSI rules) take minutes on a busy machine: no timeout.
_PROMETHEUS_ARGS = ("--storage.tsdb.retention.time=100y", "--query.timeout=24h")


class BacktestToolError(RuntimeError):
    pass


@dataclass(frozen=True)
class Tools:
    prometheus: str
    promtool: str

    @classmethod
    def find(cls) -> Tools:
        missing = []
        try:
            prometheus, promtool = binary("prometheus"), binary("promtool")
        except ServiceError as exc:
            raise BacktestToolError(str(exc)) from None
        if prometheus is None:
            missing.append("prometheus (set MLMON_PROMETHEUS or apt-get install prometheus)")
        if promtool is None:
            missing.append("promtool (set MLMON_PROMTOOL or apt-get install prometheus)")
        if missing:
            raise BacktestToolError("not found: " + "; ".join(missing))
        assert prometheus is not None and promtool is not None
        return cls(prometheus, promtool)


def _run(cmd: list[str], what: str, timeout: float = 3600) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise BacktestToolError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout + proc.stderr


def create_blocks(promtool: str, openmetrics: Path, data: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    # Large blocks: promtool re-reads the whole input once per block range, so 2h blocks over days of
    # history would parse the file dozens of times.
    _run([promtool, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=744h", str(openmetrics),
          str(data)], "promtool tsdb create-blocks-from openmetrics")


@contextmanager
def prometheus_over(workdir: Path, exe: str, step: float) -> Iterator[Prometheus]:
    """A Prometheus with no scrape targets and no rules over the TSDB in workdir/data.

    Its lookback is just under one step. A live Prometheus writes a staleness marker when a series leaves
    /metrics (an undefined figure, a PSI below its sample guard) or a rule's result, so the series is gone
    at the next evaluation; backfilled blocks carry no staleness markers, and the default 5m lookback
    would keep such a series for five more minutes. Every series here is sampled exactly at every step,
    so a lookback of step - 1s finds the sample at T and nothing older, under 2.x's closed and 3.x's
    left-open lookback alike."""
    prom = Prometheus([], workdir=workdir, extra_args=(*_PROMETHEUS_ARGS, f"--query.lookback-delta={int(step) - 1}s"))
    prom.exe = exe
    prom.start(timeout=120)
    try:
        yield prom
    finally:
        prom.stop()


def backfill_recording(tools: Tools, workdir: Path, levels: list[list[RecordingRule]], start: float, end: float,
                       step: float, log: Callable[[str], None] = lambda _: None) -> None:
    """Each level's rules as range queries at the evaluation interval over what Prometheus holds, the
    results imported as blocks, then Prometheus restarted over them for the next level.

    This is what `promtool tsdb create-blocks-from rules` does (a range query per rule, the record name
    and the rule's labels on the result), without its cost here: it writes one block per rule and 2-hour
    range, and took minutes per level on a day of history; one import per level takes seconds."""
    data = workdir / "data"
    for i, level in enumerate(levels):
        began = time.monotonic()
        om = workdir / f"level-{i}.om"
        samples = 0
        with prometheus_over(workdir, tools.prometheus, step) as prom, open(om, "w", encoding="utf-8") as out:
            for rule in level:
                for series in query_range_chunked(prom, rule.expr, start, end, step, f"recording rule {rule.record}"):
                    labels = {k: v for k, v in series["metric"].items() if k != "__name__"}
                    labels.update(rule.labels)
                    key = series_key(rule.record, sorted(labels.items()))
                    out.write("".join(f"{key} {_om_value(v)} {float(t):.3f}\n" for t, v in series["values"]))
                    samples += len(series["values"])
            out.write("# EOF\n")
        if samples:
            create_blocks(tools.promtool, om, data)
        om.unlink()
        log(f"recording rules level {i}: {len(level)} rules, {samples} samples, {time.monotonic() - began:.1f}s")


def _om_value(v: str) -> str:
    return {"NaN": "NaN", "+Inf": "+Inf", "-Inf": "-Inf", "Inf": "+Inf"}.get(v, v)


# Prometheus refuses range queries of more than 11,000 points per series; smaller pieces also keep each
# query's memory small.
MAX_POINTS = 1_440


def query_range_chunked(prom: Prometheus, expr: str, start: float, end: float, step: float,
                        what: str) -> list[dict[str, Any]]:
    """query_range over [start, end] in pieces of at most MAX_POINTS steps, series merged by labels."""
    merged: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    t = start
    while t <= end:
        stop = min(end, t + (MAX_POINTS - 1) * step)
        try:
            part = prom.query_range(expr, t, stop, step)
        except ServiceError as exc:
            raise BacktestToolError(f"{what}: {exc}") from None
        for series in part:
            key = tuple(sorted(series["metric"].items()))
            merged.setdefault(key, {"metric": series["metric"], "values": []})["values"].extend(series["values"])
        t = stop + step
    return list(merged.values())


def evaluate_alerts(prom: Prometheus, rules: Rules, start: float, end: float,
                    step: float) -> list[tuple[Any, list[dict[str, Any]]]]:
    """(alert rule, range-query matrix) per alert rule, in rule-file order."""
    return [(rule, query_range_chunked(prom, rule.expr, start, end, step, f"alert {rule.alert} (group {rule.group})"))
            for rule in rules.alerts]
