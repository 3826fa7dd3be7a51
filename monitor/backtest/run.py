"""The whole backtest: history -> exported series -> Prometheus -> firing intervals per alert."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.backtest.firing import Interval, firing_intervals
from monitor.backtest.history import HistoryStats, write_history
from monitor.backtest.rulefiles import load_rules
from monitor.backtest.tsdb import Tools, backfill_recording, create_blocks, evaluate_alerts, prometheus_over
from monitor.config import MonitorConfig
from monitor.services import version


@dataclass(frozen=True)
class AlertSeries:
    alert: str
    labels: dict[str, str]  # the alert's labels: the expression's series labels plus the rule's labels
    for_s: float
    keep_firing_for_s: float
    intervals: list[Interval]

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")

    def firing_seconds(self, end: float) -> float:
        return sum((i.end if i.end is not None else end) - i.start for i in self.intervals)


@dataclass
class BacktestResult:
    history: HistoryStats
    prometheus_version: str
    rule_files: list[str]
    recording_rules: int
    recording_levels: int
    alert_rules: int
    alerts: list[AlertSeries]
    timings: dict[str, float] = field(default_factory=dict)

    def firing_at(self, t: float) -> list[AlertSeries]:
        return [a for a in self.alerts if any(i.start <= t and (i.end is None or t < i.end) for i in a.intervals)]

    def to_json(self) -> dict[str, Any]:
        h = self.history
        return {
            "history": {"start": iso(h.start), "end": iso(h.end), "step_seconds": h.step, "steps": h.steps,
                        "predictions": h.predictions, "ground_truth": h.ground_truth, "samples": h.samples,
                        "rejected": [{"topic": t, "reason": r, "events": n}
                                     for (t, r), n in sorted(h.rejected.items()) if n]},
            "prometheus_version": self.prometheus_version,
            "rules": {"files": self.rule_files, "recording": self.recording_rules,
                      "recording_levels": self.recording_levels, "alerts": self.alert_rules},
            "alerts": [{
                "alert": a.alert, "severity": a.severity, "labels": a.labels, "for_seconds": a.for_s,
                "keep_firing_for_seconds": a.keep_firing_for_s,
                "firing_minutes": round(a.firing_seconds(h.end + h.step) / 60, 1),
                "intervals": [{"start": iso(i.start), "end": iso(i.end) if i.end is not None else None,
                               "active_since": iso(i.active_since), "peak_value": i.peak,
                               "minutes": round(((i.end if i.end is not None else h.end + h.step) - i.start) / 60, 1)}
                              for i in a.intervals],
            } for a in self.alerts],
            # For drawing: one row per alert series, segments in seconds since the history's start.
            "timeline": {"start": iso(h.start), "end": iso(h.end + h.step), "rows": [{
                "alert": a.alert, "severity": a.severity,
                "labels": {k: v for k, v in a.labels.items() if k not in ("alertname", "severity")},
                "segments": [[i.start - h.start, (i.end if i.end is not None else h.end + h.step) - h.start]
                             for i in a.intervals],
            } for a in self.alerts]},
            "timings_seconds": {k: round(v, 2) for k, v in self.timings.items()},
        }


def result_from_json(doc: dict[str, Any]) -> BacktestResult:
    """A result back from its JSON (what `-o` wrote), for summaries computed later."""
    h = doc["history"]
    stats = HistoryStats(parse_iso(h["start"]), parse_iso(h["end"]), float(h["step_seconds"]), int(h["steps"]),
                         int(h["samples"]), int(h["predictions"]), int(h["ground_truth"]),
                         {(r["topic"], r["reason"]): int(r["events"]) for r in h["rejected"]})
    alerts = [AlertSeries(a["alert"], a["labels"], a["for_seconds"], a["keep_firing_for_seconds"],
                          [Interval(parse_iso(i["start"]), parse_iso(i["end"]) if i["end"] else None,
                                    i["peak_value"], parse_iso(i["active_since"])) for i in a["intervals"]])
              for a in doc["alerts"]]
    rules = doc["rules"]
    return BacktestResult(stats, doc["prometheus_version"], rules["files"], rules["recording"],
                          rules["recording_levels"], rules["alerts"], alerts, doc.get("timings_seconds", {}))


def parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def generated_rules(config: MonitorConfig, out_dir: Path) -> list[Path]:
    """The rules `monitor rules` would generate for this config, with production options."""
    from monitor.rules.generate import ALERTS_FILE, RECORDING_FILE, generate, write

    write({k: v for k, v in generate(config).items() if k in (RECORDING_FILE, ALERTS_FILE)}, out_dir)
    return [out_dir / RECORDING_FILE, out_dir / ALERTS_FILE]


def alert_series(matrices: list[tuple[Any, list[dict[str, Any]]]], times: list[float]) -> list[AlertSeries]:
    out = []
    for rule, matrix in matrices:
        for series in matrix:
            labels = {k: v for k, v in series["metric"].items() if k != "__name__"}
            labels.update(rule.labels)
            labels["alertname"] = rule.alert
            present = {float(t): float(v) for t, v in series["values"]}
            intervals = firing_intervals(times, present, rule.for_s, rule.keep_firing_for_s)
            if intervals:
                out.append(AlertSeries(rule.alert, dict(sorted(labels.items())), rule.for_s, rule.keep_firing_for_s,
                                       intervals))
    out.sort(key=lambda a: (a.intervals[0].start, a.alert, sorted(a.labels.items())))
    return out


def run_backtest(config: MonitorConfig, predictions: list[bytes], ground_truth: list[bytes], *,
                 rule_files: list[Path] | None = None, step: float = 60.0, start: float | None = None,
                 end: float | None = None, job: str = "mlmon", workdir: Path | None = None,
                 workers: int = 1, log: Callable[[str], None] = lambda _: None) -> BacktestResult:
    tools = Tools.find()
    with tempfile.TemporaryDirectory(prefix="mlmon-backtest-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if rule_files is None:
            rule_files = generated_rules(config, work / "rules")
        rules = load_rules(rule_files)
        timings: dict[str, float] = {}

        began = time.monotonic()
        om = work / "history.om"
        stats = write_history(config, predictions, ground_truth, om, rules.raw_metrics(), step=step, start=start,
                              end=end, job=job, workers=workers)
        timings["engine"] = time.monotonic() - began
        log(f"engine: {stats.steps} steps, {stats.samples} samples in {timings['engine']:.1f}s")

        began = time.monotonic()
        create_blocks(tools.promtool, om, work / "data")
        if workdir is None:
            om.unlink()
        timings["blocks"] = time.monotonic() - began
        log(f"blocks: {timings['blocks']:.1f}s")

        began = time.monotonic()
        levels = rules.levels()
        backfill_recording(tools, work, levels, stats.start, stats.end, step, log)
        timings["recording_rules"] = time.monotonic() - began

        began = time.monotonic()
        with prometheus_over(work, tools.prometheus, step) as prom:
            matrices = evaluate_alerts(prom, rules, stats.start, stats.end, step)
        times = [stats.start + i * step for i in range(stats.steps)]
        alerts = alert_series(matrices, times)
        timings["alerts"] = time.monotonic() - began
        log(f"alerts: {timings['alerts']:.1f}s")
        return BacktestResult(stats, version(tools.prometheus), [str(p) for p in rule_files], len(rules.recording),
                              len(levels), len(rules.alerts), alerts, timings)
