"""Rule files -> what the backtest needs from them: the raw metrics read, the recording rules in
dependency levels, and the alert rules with their `for:` and `keep_firing_for:`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monitor.config import parse_duration

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


class RuleFileError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str
    labels: dict[str, str]

    def as_yaml(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"record": self.record, "expr": self.expr}
        if self.labels:
            rule["labels"] = self.labels
        return rule


@dataclass(frozen=True)
class AlertRule:
    alert: str
    expr: str
    for_s: float
    keep_firing_for_s: float
    labels: dict[str, str]
    group: str


@dataclass
class Rules:
    recording: list[RecordingRule] = field(default_factory=list)
    alerts: list[AlertRule] = field(default_factory=list)

    def levels(self) -> list[list[RecordingRule]]:
        """Recording rules by dependency level: level 0 reads only raw series, level k reads some rule of
        level k-1. `promtool tsdb create-blocks-from rules` evaluates against what Prometheus already
        holds, so each level is backfilled after the one below it is in the TSDB."""
        level: dict[str, int] = {}
        recorded = {r.record for r in self.recording}
        pending = list(self.recording)
        # Several passes, so the file order does not matter (Prometheus evaluates a group in order, but
        # the backfill has no groups).
        while pending:
            rest = []
            for rule in pending:
                deps = {t for t in _NAME.findall(rule.expr) if t in recorded and t != rule.record}
                if all(d in level for d in deps):
                    level[rule.record] = max(level.get(rule.record, 0),
                                             1 + max((level[d] for d in deps), default=-1))
                else:
                    rest.append(rule)
            if len(rest) == len(pending):
                raise RuleFileError([f"recording rules depend on each other in a cycle: "
                                     f"{', '.join(sorted({r.record for r in rest}))}"])
            pending = rest
        out: list[list[RecordingRule]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
        for rule in self.recording:
            out[level[rule.record]].append(rule)
        return out

    def raw_metrics(self) -> set[str]:
        """Metric names read by some rule that no rule records (what the exporter must provide)."""
        recorded = {r.record for r in self.recording}
        names: set[str] = set()
        for expr in [r.expr for r in self.recording] + [a.expr for a in self.alerts]:
            names |= {t for t in _NAME.findall(_strip_strings(expr)) if t not in recorded}
        return names


def _strip_strings(expr: str) -> str:
    """Label values and quoted strings out, so `{label="violence"}` is not read as a metric name."""
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def _duration(value: object, where: str, problems: list[str]) -> float:
    if value in (None, 0, "0", "0s"):
        return 0.0
    try:
        return float(parse_duration(str(value)))
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return 0.0


def load_rules(paths: list[Path]) -> Rules:
    """Parse Prometheus rule files; every problem of every file is reported at once."""
    rules = Rules()
    problems: list[str] = []
    for path in paths:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
            problems.append(f"{path}: not a Prometheus rule file (no 'groups' list)")
            continue
        for g, group in enumerate(doc["groups"]):
            name = str(group.get("name", g)) if isinstance(group, dict) else str(g)
            for r, rule in enumerate(group.get("rules", []) if isinstance(group, dict) else []):
                where = f"{path}: group {name!r} rule {r + 1}"
                if not isinstance(rule, dict) or not isinstance(rule.get("expr"), str | int | float):
                    problems.append(f"{where}: no expr")
                    continue
                expr = str(rule["expr"])
                labels = {str(k): str(v) for k, v in (rule.get("labels") or {}).items()}
                if "record" in rule:
                    rules.recording.append(RecordingRule(str(rule["record"]), expr, labels))
                elif "alert" in rule:
                    hold = _duration(rule.get("for"), f"{where} for", problems)
                    keep = _duration(rule.get("keep_firing_for"), f"{where} keep_firing_for", problems)
                    rules.alerts.append(AlertRule(str(rule["alert"]), expr, hold, keep, labels,
                                                  name))
                else:
                    problems.append(f"{where}: neither 'record' nor 'alert'")
    if problems:
        raise RuleFileError(problems)
    if not rules.alerts:
        raise RuleFileError([f"no alert rules in {', '.join(map(str, paths)) or 'the rule files'}"])
    return rules
