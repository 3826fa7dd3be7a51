"""Figures of one evaluation -> the view model the HTML report renders.

Everything shown comes from `Figures` (the same samples `monitor replay` prints) plus the config, so the
report can never disagree with the exporter. The only other input is the reference's numeric bin edges,
used to title score-distribution bins: they are aggregates, never raw event contents (categorical
reference values are left out for the same reason the metrics export bin indexes only).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from monitor import conventions as c
from monitor.config import ModelConfig, MonitorConfig, format_duration
from monitor.engine.engine import Engine
from monitor.engine.figures import Figures, HistogramSample
from monitor.report.segments import SegmentView, segment_views
from monitor.rules.options import RuleOptions
from monitor.rules.tier_state import TierState, slo_counts, tier_states
from monitor.rules.tiers import max_burn_rate

Labels = tuple[str, ...]


@dataclass(frozen=True)
class Interval:
    value: float | None
    lower: float | None
    upper: float | None


@dataclass(frozen=True)
class LabelRow:
    label: str
    threshold: float
    tp: float
    fp: float
    fn: float
    tn: float
    support: float | None
    precision: Interval
    recall: Interval
    f1: Interval
    ece: float | None
    positive_rate: float | None
    reference_rate: float | None
    score_psi: float | None
    est_precision: float | None
    est_recall: float | None


@dataclass(frozen=True)
class CalibrationBin:
    index: int
    count: float
    score_sum: float
    positives: float

    @property
    def mean_score(self) -> float:
        return self.score_sum / self.count

    @property
    def positive_share(self) -> float:
        return self.positives / self.count


@dataclass(frozen=True)
class Distribution:
    """Current vs reference counts over the frozen reference bins of one label's score."""

    name: str
    current: tuple[float, ...]
    reference: tuple[float, ...]
    bin_titles: tuple[str, ...]
    psi: float | None

    @staticmethod
    def shares(counts: tuple[float, ...]) -> tuple[float, ...]:
        total = sum(counts)
        return tuple(n / total for n in counts) if total > 0 else tuple(0.0 for _ in counts)


@dataclass(frozen=True)
class WindowView:
    window: str
    predictions: float
    joined: float
    pending: float
    coverage: float | None
    micro_f1: float | None
    macro_f1: float | None
    hamming_loss: float | None
    subset_accuracy: float | None
    accuracy: float | None
    cardinality_predicted: float | None
    cardinality_actual: float | None
    cooccurrence_drift: float | None
    drift_sufficient: bool | None
    rows: list[LabelRow]
    calibration: dict[str, list[CalibrationBin]]  # only labels with calibration detail
    scores: list[Distribution]
    missing: dict[str, float | None]  # feature -> missing ratio
    confusion: list[list[float]] | None  # multiclass: [actual][predicted]

    @property
    def has_data(self) -> bool:
        return self.predictions > 0 or self.joined > 0


@dataclass(frozen=True)
class VersionView:
    version: str
    windows: dict[str, WindowView]
    feature_psi: dict[str, dict[str, float | None]]  # feature -> window -> PSI (absent below the guard)
    score_psi: dict[str, dict[str, float | None]]  # label -> window -> PSI
    predictions_total: float
    joined_total: float
    latency: HistogramSample | None


@dataclass(frozen=True)
class SLOView:
    name: str
    label: str
    objective: str
    target: float
    period: str
    severity: str
    max_burn: float
    burn: dict[str, float | None]  # window -> burn rate
    events: dict[str, float]
    remaining: float | None
    tiers: list[TierState]
    measured: float | None = None  # the objective's value over the period, all versions together
    period_events: float = 0.0


@dataclass(frozen=True)
class ModelView:
    name: str
    task: str
    labels: list[str]
    min_events: int
    moderate: float
    significant: float
    min_samples: int
    missing_alert: float
    versions: list[VersionView]
    slos: list[SLOView]
    ground_truth_total: float
    delay: HistogramSample | None
    counters: dict[str, float]  # health counters shown as a small table (name -> value)
    segments: list[SegmentView] = field(default_factory=list)  # models[].segments, in config order


@dataclass(frozen=True)
class ReportView:
    at: float
    windows: list[str]  # configured windows with data, short to long (the selector's choices)
    default_window: str
    models: list[ModelView]
    invalid: dict[tuple[str, str], float] = field(default_factory=dict)  # (topic, reason) -> count, non-zero
    # The options the user's rules were generated with (`monitor report --rules`): every alert condition
    # shown is judged with them.
    opts: RuleOptions = field(default_factory=RuleOptions)

    @property
    def ece_threshold(self) -> float:
        return self.opts.ece_threshold


class _Index:
    """Figures indexed by metric name once: the report looks up thousands of samples."""

    def __init__(self, figures: Figures) -> None:
        self._by: dict[str, dict[Labels, float]] = defaultdict(dict)
        for s in figures.samples:
            self._by[s.metric.name][s.labels] = s.value
        self.histograms = figures.histograms

    def get(self, metric: c.MetricDef, labels: Labels) -> float | None:
        return self._by[metric.name].get(labels)

    def num(self, metric: c.MetricDef, labels: Labels) -> float:
        return self._by[metric.name].get(labels, 0.0)

    def items(self, metric: c.MetricDef) -> dict[Labels, float]:
        return self._by[metric.name]

    def histogram(self, metric: c.MetricDef, labels: Labels) -> HistogramSample | None:
        return next((h for h in self.histograms if h.metric.name == metric.name and h.labels == labels), None)


def default_window(config: MonitorConfig, figures: Figures) -> str:
    """The shortest window holding everything the longest one holds (1d for a 12-hour replay): longer
    windows would show the same numbers, shorter ones would leave data out. The longest window if none
    has data."""
    idx = _Index(figures)
    names = [format_duration(w) for w in sorted(config.windows)]

    def volume(window: str) -> float:
        return sum(v for k, v in idx.items(c.WINDOW_PREDICTIONS).items() if k[-1] == window) + \
            sum(v for k, v in idx.items(c.WINDOW_JOINED).items() if k[-1] == window)

    longest = volume(names[-1])
    if longest <= 0:
        return names[-1]
    return next(w for w in names if volume(w) >= longest)


def build_report(config: MonitorConfig, engine: Engine, figures: Figures, at: float,
                 window: str | None = None, opts: RuleOptions | None = None) -> ReportView:
    opts = opts or RuleOptions()
    idx = _Index(figures)
    windows = [format_duration(w) for w in sorted(config.windows)]
    chosen = window or default_window(config, figures)
    models = [_model_view(config, m, engine, figures, idx, windows, opts) for m in config.models]
    with_data = [w for w in windows
                 if any(v.windows[w].has_data for m in models for v in m.versions)]
    shown = [w for w in windows if w in with_data or w == chosen]
    invalid = {k: v for k, v in idx.items(c.INVALID_EVENTS_TOTAL).items() if v > 0}
    return ReportView(at=at, windows=shown, default_window=chosen, models=models,
                      invalid={(k[0], k[1]): v for k, v in sorted(invalid.items())}, opts=opts)


def _model_view(config: MonitorConfig, m: ModelConfig, engine: Engine, figures: Figures, idx: _Index,
                windows: list[str], opts: RuleOptions) -> ModelView:
    versions = sorted({k[1] for k in idx.items(c.PREDICTIONS_TOTAL) if k[0] == m.name})
    versions += sorted({k[1] for k in idx.items(c.WINDOW_JOINED) if k[0] == m.name} - set(versions))
    state = engine.models.get(m.name)
    titles = _score_bin_titles(state.reference if state else None, m)
    counters = {
        "ground truth received": idx.num(c.GROUND_TRUTH_TOTAL, (m.name,)),
        "ground-truth corrections": idx.num(c.CORRECTIONS_TOTAL, (m.name,)),
        "predictions expired unjoined": idx.num(c.JOIN_EXPIRED_TOTAL, (m.name, c.SIDE_PREDICTION)),
        "ground truth expired unjoined": idx.num(c.JOIN_EXPIRED_TOTAL, (m.name, c.SIDE_GROUND_TRUTH)),
        "predictions pending a join": idx.num(c.PENDING_JOINS, (m.name, c.SIDE_PREDICTION)),
        "ground truth pending a join": idx.num(c.PENDING_JOINS, (m.name, c.SIDE_GROUND_TRUTH)),
        "duplicate predictions": idx.num(c.DUPLICATES_TOTAL, (m.name, c.TOPIC_PREDICTIONS)),
        "duplicate ground truth": idx.num(c.DUPLICATES_TOTAL, (m.name, c.TOPIC_GROUND_TRUTH)),
        "late events (outside every window)": sum(idx.num(c.LATE_EVENTS_TOTAL, (m.name, t))
                                                  for t in (c.TOPIC_PREDICTIONS, c.TOPIC_GROUND_TRUTH)),
        "ignored score keys": idx.num(c.IGNORED_SCORES_TOTAL, (m.name,)),
    }
    return ModelView(
        name=m.name, task=m.task, labels=list(m.labels), min_events=m.min_events,
        moderate=m.drift.moderate, significant=m.drift.significant, min_samples=m.drift.min_samples,
        missing_alert=m.drift.missing_ratio_alert,
        versions=[_version_view(m, v, idx, windows, titles) for v in versions],
        slos=_slo_views(config, m, figures, idx, windows, opts),
        ground_truth_total=idx.num(c.GROUND_TRUTH_TOTAL, (m.name,)),
        delay=idx.histogram(c.GROUND_TRUTH_DELAY_SECONDS, (m.name,)),
        counters=counters,
        segments=segment_views(m, figures, windows),
    )


def _score_bin_titles(reference: object, m: ModelConfig) -> dict[str, tuple[str, ...]]:
    """'0.013 – 0.026' per score bin, from the reference deciles (bin i holds edge[i-1] <= s < edge[i])."""
    out: dict[str, tuple[str, ...]] = {}
    scores = getattr(reference, "scores", None)
    if scores is None:
        return out
    for label, binning in zip(m.labels, scores, strict=False):
        edges = [float(e) for e in binning.edges] if binning.edges is not None else []
        bounds = [0.0, *edges, 1.0]
        out[label] = tuple(f"score {bounds[i]:.3g} – {bounds[i + 1]:.3g}" for i in range(len(bounds) - 1))
    return out


def _version_view(m: ModelConfig, version: str, idx: _Index, windows: list[str],
                  titles: dict[str, tuple[str, ...]]) -> VersionView:
    views = {w: _window_view(m, version, w, idx, titles) for w in windows}
    feature_psi = {f: {w: idx.get(c.FEATURE_PSI, (m.name, version, f, w)) for w in windows}
                   for f in m.features.all}
    score_psi = {label: {w: idx.get(c.SCORE_PSI, (m.name, version, label, w)) for w in windows}
                 for label in m.labels}
    return VersionView(
        version=version, windows=views, feature_psi=feature_psi, score_psi=score_psi,
        predictions_total=idx.num(c.PREDICTIONS_TOTAL, (m.name, version)),
        joined_total=idx.num(c.JOINED_TOTAL, (m.name, version)),
        latency=idx.histogram(c.PREDICTION_LATENCY_SECONDS, (m.name, version)),
    )


def _window_view(m: ModelConfig, version: str, window: str, idx: _Index,
                 titles: dict[str, tuple[str, ...]]) -> WindowView:
    mvw = (m.name, version, window)
    rows = [_label_row(m, version, window, label, idx) for label in m.labels]
    calibration: dict[str, list[CalibrationBin]] = {}
    scores: list[Distribution] = []
    for label in m.labels:
        bins = []
        for b in range(c.CALIBRATION_BINS):
            stats = [idx.get(c.CALIBRATION_BIN, (m.name, version, label, str(b), s, window))
                     for s in c.CALIBRATION_STATS]
            if stats[0] is not None:
                bins.append(CalibrationBin(b, stats[0], stats[1] or 0.0, stats[2] or 0.0))
        if bins:
            calibration[label] = bins
        ref = _bins(idx, c.REFERENCE_SCORE_BIN, (m.name, label))
        if ref:
            cur = tuple(idx.num(c.SCORE_BIN, (m.name, version, label, str(b), window)) for b in range(len(ref)))
            bin_titles = titles.get(label, tuple(f"bin {b}" for b in range(len(ref))))
            scores.append(Distribution(label, cur, ref, bin_titles,
                                       idx.get(c.SCORE_PSI, (m.name, version, label, window))))
    confusion = None
    if m.task == "multiclass":
        confusion = [[idx.num(c.CONFUSION, (m.name, version, a, p, window)) for p in m.labels] for a in m.labels]
    sufficient = idx.get(c.DRIFT_SAMPLE_OK, mvw)
    return WindowView(
        window=window,
        predictions=idx.num(c.WINDOW_PREDICTIONS, mvw),
        joined=idx.num(c.WINDOW_JOINED, mvw),
        pending=idx.num(c.PENDING_IN_WINDOW, mvw),
        coverage=idx.get(c.LABEL_COVERAGE, mvw),
        micro_f1=idx.get(c.MICRO_F1, mvw),
        macro_f1=idx.get(c.MACRO_F1, mvw),
        hamming_loss=idx.get(c.HAMMING_LOSS, mvw),
        subset_accuracy=idx.get(c.SUBSET_ACCURACY, mvw),
        accuracy=idx.get(c.ACCURACY, mvw),
        cardinality_predicted=idx.get(c.LABEL_CARDINALITY, (*mvw, "predicted")),
        cardinality_actual=idx.get(c.LABEL_CARDINALITY, (*mvw, "actual")),
        cooccurrence_drift=idx.get(c.LABEL_COOCCURRENCE_DRIFT, mvw),
        drift_sufficient=None if sufficient is None else sufficient > 0,
        rows=rows, calibration=calibration, scores=scores,
        missing={f: idx.get(c.FEATURE_MISSING_RATIO, (m.name, version, f, window)) for f in m.features.all},
        confusion=confusion,
    )


def _bins(idx: _Index, metric: c.MetricDef, prefix: Labels) -> tuple[float, ...]:
    found = {int(k[-1]): v for k, v in idx.items(metric).items() if k[:-1] == prefix}
    return tuple(found.get(b, 0.0) for b in range(max(found) + 1)) if found else ()


def _label_row(m: ModelConfig, version: str, window: str, label: str, idx: _Index) -> LabelRow:
    key = (m.name, version, label, window)
    tp, fp, fn, tn = (idx.num(c.LABEL_OUTCOMES, (m.name, version, label, o, window)) for o in c.OUTCOMES)

    def interval(value: c.MetricDef, lower: c.MetricDef, upper: c.MetricDef) -> Interval:
        return Interval(idx.get(value, key), idx.get(lower, key), idx.get(upper, key))

    return LabelRow(
        label=label, threshold=m.threshold_for(label), tp=tp, fp=fp, fn=fn, tn=tn,
        support=idx.get(c.LABEL_SUPPORT, key),
        precision=interval(c.LABEL_PRECISION, c.LABEL_PRECISION_LOWER, c.LABEL_PRECISION_UPPER),
        recall=interval(c.LABEL_RECALL, c.LABEL_RECALL_LOWER, c.LABEL_RECALL_UPPER),
        f1=interval(c.LABEL_F1, c.LABEL_F1_LOWER, c.LABEL_F1_UPPER),
        ece=idx.get(c.LABEL_ECE, key),
        positive_rate=idx.get(c.PREDICTED_POSITIVE_RATE, key),
        reference_rate=idx.get(c.REFERENCE_POSITIVE_RATE, (m.name, label)),
        score_psi=idx.get(c.SCORE_PSI, key),
        est_precision=idx.get(c.ESTIMATED_LABEL_PRECISION, key),
        est_recall=idx.get(c.ESTIMATED_LABEL_RECALL, key),
    )


def _slo_views(config: MonitorConfig, m: ModelConfig, figures: Figures, idx: _Index,
               windows: list[str], opts: RuleOptions) -> list[SLOView]:
    counts = slo_counts(figures, m)
    out = []
    for s in m.slos:
        key = (m.name, s.label, s.name)
        burn = {w: idx.get(c.ERROR_BUDGET_BURN_RATE, (*key, w)) for w in windows}
        events = {w: idx.num(c.SLO_EVENTS, (*key, w)) for w in windows}
        tiers = tier_states(opts, config.windows, m, s,
                            {w: n for (name, w), n in counts.items() if name == s.name})
        period = format_duration(s.period)
        outcomes = {o: sum(v for k, v in idx.items(c.LABEL_OUTCOMES).items()
                           if k[0] == m.name and k[2] == s.label and k[3] == o and k[4] == period)
                    for o in c.OUTCOMES[:3]}
        tp, fp, fn = (outcomes[o] for o in c.OUTCOMES[:3])
        n = tp + (fn if s.objective == "recall" else fp)
        out.append(SLOView(
            name=s.name, label=s.label, objective=s.objective, target=s.target,
            period=period, severity=s.severity, max_burn=max_burn_rate(s.target),
            burn=burn, events=events, remaining=idx.get(c.ERROR_BUDGET_REMAINING, key), tiers=tiers,
            measured=tp / n if n > 0 else None, period_events=n,
        ))
    return out

