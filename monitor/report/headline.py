"""What is wrong, first: breached SLOs, alert tiers that would fire, collapsed labels, significant drift.

"Now" comes from the report's snapshot (the same figures as every table below it); "since when" from the
timeline, evaluated with the same conditions at each step: the start of the run of steps, ending at the
evaluation time, over which the condition held. The conditions are the generated alert rules' (tiers from
monitor/rules/tier_state.py, collapse and drift from monitor/rules/alerts.py) without their `for:` delays.
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.config import MonitorConfig, format_duration
from monitor.report.model import ModelView, ReportView, SLOView
from monitor.report.timeline import ModelTimeline, Timeline, run_since, timeline_window
from monitor.rules.collapse_state import collapse
from monitor.rules.options import RuleOptions

KIND_COLLAPSE = "label collapse"
KIND_FEATURE = "feature drift"
KIND_SCORE = "score drift"
KIND_COOCCURRENCE = "label co-occurrence drift"


@dataclass(frozen=True)
class FiringTier:
    name: str
    severity: str
    long_window: str
    burn: float | None
    threshold: float
    since: float | None  # None without a timeline


@dataclass(frozen=True)
class SLOStatus:
    model: str
    slo: SLOView
    breached: bool  # the objective over the period is below target (budget overspent)
    firing: list[FiringTier]

    @property
    def state(self) -> str:
        return "breached" if self.breached else "burning" if self.firing else "met"


@dataclass(frozen=True)
class Finding:
    """A collapsed label or a significant drift in the drift alerts' window."""

    model: str
    version: str
    kind: str
    subject: str  # label or feature ('' for co-occurrence)
    value: float
    detail: str
    since: float | None


@dataclass(frozen=True)
class Headline:
    window: str  # the drift and collapse window
    slos: list[SLOStatus]  # breached or burning first
    findings: list[Finding]
    invalid: float  # events rejected as invalid

    @property
    def problems(self) -> int:
        return sum(s.state != "met" for s in self.slos) + len(self.findings)


def build_headline(config: MonitorConfig, view: ReportView, timeline: Timeline | None) -> Headline:
    window = format_duration(timeline_window(config, view.opts))
    slos: list[SLOStatus] = []
    findings: list[Finding] = []
    for m in view.models:
        mt = timeline.models.get(m.name) if timeline else None
        times = timeline.times if timeline else []
        for s in m.slos:
            firing = []
            for t in s.tiers:
                if not t.fires:
                    continue
                since = None
                if mt is not None and s.name in mt.slos:
                    since = run_since(mt.slos[s.name].tier_fires(view.opts, t, s.target, m.min_events), times)
                firing.append(FiringTier(t.name, t.severity, t.long_window, t.long_burn, t.threshold, since))
            breached = s.remaining is not None and s.remaining < 0
            slos.append(SLOStatus(m.name, s, breached, firing))
        findings += _findings(view.opts, m, window, mt, times)
    order = {"breached": 0, "burning": 1, "met": 2}
    slos.sort(key=lambda x: order[x.state])
    return Headline(window, slos, findings, sum(view.invalid.values()))


def _findings(opts: RuleOptions, m: ModelView, window: str, mt: ModelTimeline | None,
              times: list[float]) -> list[Finding]:
    out: list[Finding] = []
    sig = m.significant
    for v in m.versions:
        wv = v.windows.get(window)
        if wv is None:
            continue
        vs = mt.versions.get(v.version) if mt else None
        for r in wv.rows:
            kind = collapse(opts, r.positive_rate, r.reference_rate, wv.predictions)
            if kind is None or r.positive_rate is None or r.reference_rate is None:
                continue
            since = None
            if vs is not None:
                ls = vs.labels[r.label]
                since = run_since([collapse(opts, ls.positive_rate[k], r.reference_rate, vs.predictions[k]) == kind
                                   for k in range(len(times))], times)
            out.append(Finding(m.name, v.version, KIND_COLLAPSE, r.label, r.positive_rate,
                               f"predicted for {r.positive_rate:.1%} of predictions (reference "
                               f"{r.reference_rate:.1%}): almost {kind}", since))
        for feature, per in v.feature_psi.items():
            psi = per.get(window)
            if psi is not None and psi >= sig:
                since = run_since(_above(vs.feature_psi[feature], sig), times) if vs else None
                out.append(Finding(m.name, v.version, KIND_FEATURE, feature, psi, f"PSI {psi:.2f} ≥ {sig:g}", since))
        for label, per in v.score_psi.items():
            psi = per.get(window)
            if psi is not None and psi >= sig:
                since = run_since(_above(vs.labels[label].score_psi, sig), times) if vs else None
                out.append(Finding(m.name, v.version, KIND_SCORE, label, psi, f"PSI {psi:.2f} ≥ {sig:g}", since))
        co = wv.cooccurrence_drift
        if co is not None and co >= sig:
            since = run_since(_above(vs.cooccurrence_psi, sig), times) if vs else None
            out.append(Finding(m.name, v.version, KIND_COOCCURRENCE, "", co, f"PSI {co:.2f} ≥ {sig:g}", since))
    return out


def _above(series: list[float | None], threshold: float) -> list[bool]:
    return [x is not None and x >= threshold for x in series]
