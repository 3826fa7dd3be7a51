"""The report's timeline: the engine evaluated at regular steps over the replayed span.

One replay pass, not one replay per step: the events are applied in time order up to each step T and
the windows ending at T are read from the engine's bucket sums there. Applying exactly the events up to
T is what `monitor replay --at T` does, and the engine's state does not depend on where batches end (the
join expires on event time), so every point equals a fresh replay at T. Evaluating the final engine at
an earlier T would not: ground truth and corrections that arrive after T change the buckets before it.

Each step computes only what the timeline draws, over the drift alerts' window (nearest to 1h) plus the
SLO tiers' windows, with the same metric functions the engine's figures use; a full evaluation per step
would cost about ten times more.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from monitor.config import MonitorConfig, format_duration
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Engine
from monitor.engine.figures import Figures
from monitor.engine.metrics import classification, drift, slo
from monitor.engine.model_state import ModelState
from monitor.engine.windows import S_PREDICTIONS
from monitor.rejections import InputReport
from monitor.replay import BATCH, rejection_reports, steps_by_time
from monitor.rules.options import RuleOptions
from monitor.rules.tier_state import TierState, WindowCounts, verdict
from monitor.rules.tiers import nearest_window, tiers_for

MAX_POINTS = 100  # 10-minute steps over the example's 12 hours: onsets to 10 minutes, half the cost of 5
# Steps a person reads easily on a time axis; the smallest one that keeps the span under MAX_POINTS.
NICE_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400)

Series = list[float | None]


@dataclass
class LabelSeries:
    """One label of one version, over the timeline window, at each step (None: undefined there)."""

    precision: Series = field(default_factory=list)
    precision_lower: Series = field(default_factory=list)
    precision_upper: Series = field(default_factory=list)
    recall: Series = field(default_factory=list)
    recall_lower: Series = field(default_factory=list)
    recall_upper: Series = field(default_factory=list)
    f1: Series = field(default_factory=list)
    f1_lower: Series = field(default_factory=list)
    f1_upper: Series = field(default_factory=list)
    positive_rate: Series = field(default_factory=list)
    score_psi: Series = field(default_factory=list)

    def quality(self, metric: str) -> tuple[Series, Series, Series]:
        """(value, lower, upper) of 'precision', 'recall' or 'f1'."""
        return getattr(self, metric), getattr(self, f"{metric}_lower"), getattr(self, f"{metric}_upper")


@dataclass
class VersionSeries:
    predictions: list[float] = field(default_factory=list)  # in the timeline window
    labels: dict[str, LabelSeries] = field(default_factory=dict)
    feature_psi: dict[str, Series] = field(default_factory=dict)
    cooccurrence_psi: Series = field(default_factory=list)


@dataclass
class SLOSeries:
    """Burn rate, event and error counts of one SLO (all versions together) per window, at each step."""

    burn: dict[str, Series] = field(default_factory=dict)
    events: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[float]] = field(default_factory=dict)

    def tier_fires(self, opts: RuleOptions, tier: TierState, target: float, min_events: int) -> list[bool]:
        """At each step, whether the tier's alert would fire (monitor.rules.tier_state, as the snapshot)."""

        def at(window: str, k: int) -> WindowCounts:
            return WindowCounts(self.events[window][k], self.errors[window][k])

        mid = tier.mid_window
        return [verdict(opts, target, tier.threshold, min_events, at(tier.long_window, k), at(tier.short_window, k),
                        mid=at(mid, k) if mid is not None else None).fires
                for k in range(len(self.events[tier.long_window]))]


@dataclass
class ModelTimeline:
    versions: dict[str, VersionSeries] = field(default_factory=dict)
    slos: dict[str, SLOSeries] = field(default_factory=dict)


@dataclass
class Timeline:
    window: str  # every per-label point is over the window ending at its step
    step: int  # seconds between points (the last point is the evaluation time, maybe closer)
    times: list[float] = field(default_factory=list)
    models: dict[str, ModelTimeline] = field(default_factory=dict)


def choose_step(start: float, end: float) -> int:
    span = max(end - start, 0.0)
    return next((s for s in NICE_STEPS if span / s <= MAX_POINTS), NICE_STEPS[-1])


def step_times(start: float, end: float, step: int) -> list[float]:
    """Grid points (multiples of `step` since the epoch, so 5-minute steps fall on :00, :05, ...) from the
    first at or after `start`, then `end` itself when it is not on the grid."""
    first = math.ceil(start / step) * step
    out = [float(t) for t in range(int(first), int(end) + 1, step) if t <= end]
    if not out or out[-1] < end:
        out.append(float(end))
    return out


def timeline_window(config: MonitorConfig, opts: RuleOptions) -> int:
    """The window the drift and collapse alerts watch (nearest to 1h): short enough to show an onset,
    long enough for a stable rate."""
    return nearest_window(config.windows, opts.drift_window)


@dataclass(frozen=True)
class TimelineReplay:
    engine: Engine
    figures: Figures  # at the evaluation time, identical to `run_replay`'s
    at: float | None  # the evaluation time; None when no event was usable (nothing to evaluate)
    timeline: Timeline | None  # None likewise
    rejections: list[InputReport]  # as `monitor replay` tells them (monitor.rejections)


def replay_with_timeline(config: MonitorConfig, predictions: list[bytes], ground_truth: list[bytes],
                         at: float | None = None, opts: RuleOptions | None = None) -> TimelineReplay:
    """The replay `monitor replay` does, evaluated at each timeline step on the way."""
    engine = Engine(config)
    was_enabled = gc.isenabled()
    gc.disable()  # as in run_replay: the join's long-lived objects hold no cycles
    try:
        preds = engine.decode(PREDICTIONS, predictions)
        truths = engine.decode(GROUND_TRUTH, ground_truth)
        rejections = rejection_reports(predictions, ground_truth, preds, truths)
        sides, index = steps_by_time(preds, truths, at)
        times = np.empty(len(sides))
        for side, decoded in enumerate((preds, truths)):
            sel = sides == side
            times[sel] = decoded.times()[index[sel]]
        usable = times[np.isfinite(times)]
        window = timeline_window(config, opts or RuleOptions())
        timeline = None
        done = 0
        if usable.size:
            start, end = float(usable[0]), float(at if at is not None else usable[-1])
            step = choose_step(start, end)
            timeline = Timeline(format_duration(window), step)
            slo_windows = {name: _slo_windows(config, state) for name, state in engine.models.items()}
            for t in step_times(start, end, step):
                upto = int(np.searchsorted(times, t, side="right"))
                _apply(engine, preds, truths, sides[done:upto], index[done:upto])
                done = upto
                _evaluate(engine, config, window, t, timeline, slo_windows)
        _apply(engine, preds, truths, sides[done:], index[done:])
    finally:
        if was_enabled:
            gc.enable()
    figures = engine.evaluate(at)
    when = at if at is not None else engine.latest_event_time
    if when is None:
        return TimelineReplay(engine, figures, None, None, rejections)
    if timeline is not None:
        _trim(timeline, when)
    return TimelineReplay(engine, figures, when, timeline, rejections)


def _apply(engine: Engine, preds: object, truths: object, sides: np.ndarray, index: np.ndarray) -> None:
    for start in range(0, len(sides), BATCH):
        engine.apply(preds, truths, sides[start:start + BATCH], index[start:start + BATCH])  # type: ignore[arg-type]


def _trim(timeline: Timeline, when: float) -> None:
    """Drop points after the evaluation time (only when the newest event was a duplicate, which does not
    move the engine's clock)."""
    keep = sum(1 for t in timeline.times if t <= when)
    if keep == len(timeline.times):
        return
    del timeline.times[keep:]
    for m in timeline.models.values():
        for v in m.versions.values():
            _trim_lists(v.__dict__, keep)
            for ls in v.labels.values():
                _trim_lists(ls.__dict__, keep)
        for s in m.slos.values():
            _trim_lists(s.__dict__, keep)


def _trim_lists(obj: dict[str, object], keep: int) -> None:
    for value in obj.values():
        if isinstance(value, list):
            del value[keep:]
        elif isinstance(value, dict):
            _trim_lists(value, keep)


def _value(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _slo_windows(config: MonitorConfig, state: ModelState) -> list[int]:
    tiers = [t for s in state.cfg.slos for t in tiers_for(s, config.windows)]
    return sorted({w for t in tiers for w in (t.long_window, t.short_window, t.mid_window) if w is not None})


def _evaluate(engine: Engine, config: MonitorConfig, window: int, at: float, timeline: Timeline,
              slo_windows: dict[str, list[int]]) -> None:
    n_before = len(timeline.times)
    timeline.times.append(at)
    for name, state in engine.models.items():
        mt = timeline.models.setdefault(name, ModelTimeline())
        windows = sorted({window, *slo_windows[name]})
        totals = {w: np.zeros(state.layout.size) for w in slo_windows[name]}
        for v, version in enumerate(state.version_names):
            sums = state.store.window_sums(v, windows, at)
            for w in slo_windows[name]:
                totals[w] += sums[w]
            vs = mt.versions.get(version)
            if vs is None:  # a version first seen now: undefined at the earlier steps
                vs = mt.versions[version] = _empty_version(state, n_before)
            _version_point(state, sums[window], vs)
        _slo_point(state, totals, mt, n_before)


def _empty_version(state: ModelState, n: int) -> VersionSeries:
    vs = VersionSeries(predictions=[0.0] * n)
    for label in state.cfg.labels:
        ls = LabelSeries()
        for value in ls.__dict__.values():
            value.extend([None] * n)
        vs.labels[label] = ls
    for feature in state.features:
        vs.feature_psi[feature] = [None] * n
    vs.cooccurrence_psi = [None] * n
    return vs


def _version_point(state: ModelState, vec: np.ndarray, vs: VersionSeries) -> None:
    """The figures of `_window_figures` / `_drift_figures` (engine/figures.py) the timeline draws."""
    cfg, lay, ref = state.cfg, state.layout, state.reference
    n_pred = float(lay.view(vec, "scalars")[S_PREDICTIONS])
    vs.predictions.append(n_pred)
    outcomes = lay.view(vec, "outcomes")
    tp, fp, fn = outcomes[:, 0], outcomes[:, 1], outcomes[:, 2]
    precision, recall, f1 = classification.precision_recall_f1(tp, fp, fn)
    p_lo, p_hi = classification.wilson_interval(tp, tp + fp)
    r_lo, r_hi = classification.wilson_interval(tp, tp + fn)
    f_lo, f_hi = classification.f1_interval(tp, fp, fn)
    pred_pos = lay.view(vec, "pred_pos")
    # The same IEEE division as classification.ratio, for all labels at once.
    rate = np.full(pred_pos.shape, np.nan)
    if n_pred > 0:
        rate = pred_pos / n_pred
    columns = np.stack([precision, p_lo, p_hi, recall, r_lo, r_hi, f1, f_lo, f_hi, rate]).T.tolist()
    enough = ref is not None and n_pred >= cfg.drift.min_samples
    score_bins = lay.view(vec, "score_bins")
    for li, label in enumerate(cfg.labels):
        ls = vs.labels.setdefault(label, LabelSeries())
        for series, x in zip((ls.precision, ls.precision_lower, ls.precision_upper, ls.recall, ls.recall_lower,
                              ls.recall_upper, ls.f1, ls.f1_lower, ls.f1_upper, ls.positive_rate),
                             columns[li], strict=True):
            series.append(None if x != x else x)  # NaN (undefined) -> None
        psi = None
        if enough:
            assert ref is not None
            binning = ref.scores[li]
            psi = _value(drift.psi(binning.counts, score_bins[li, :binning.size]))
        ls.score_psi.append(psi)
    feat_bins = lay.view(vec, "feat_bins")
    for fi, feature in enumerate(state.features):
        psi = None
        if enough:
            assert ref is not None
            binning = ref.features[feature]
            start = lay.feature_offsets[fi]
            cur = feat_bins[start:start + binning.size]
            if cur.sum() >= cfg.drift.min_samples:
                psi = _value(drift.psi(binning.counts, cur))
        vs.feature_psi.setdefault(feature, []).append(psi)
    pairs = lay.view(vec, "pairs")
    vs.cooccurrence_psi.append(_value(drift.psi(ref.pair_counts, pairs)) if enough and pairs.size and ref else None)


def _slo_point(state: ModelState, totals: dict[int, np.ndarray], mt: ModelTimeline, n_before: int) -> None:
    """`_slo_figures` (engine/figures.py): each SLO over all versions. Python floats divide exactly as numpy
    float64 scalars do, at a fraction of the cost."""
    cfg, lay = state.cfg, state.layout
    index = {label: i for i, label in enumerate(cfg.labels)}
    for w, vec in totals.items():
        outcomes = lay.view(vec, "outcomes").tolist()
        name = format_duration(w)
        for s in cfg.slos:
            series = mt.slos.setdefault(s.name, SLOSeries())
            tp, fp, fn, _ = outcomes[index[s.label]]
            err, events = slo.error_ratio(s.objective, tp, fp, fn)
            series.burn.setdefault(name, [None] * n_before).append(_value(slo.burn_rate(err, s.target)))
            series.events.setdefault(name, [0.0] * n_before).append(float(events))
            series.errors.setdefault(name, [0.0] * n_before).append(float(fn if s.objective == "recall" else fp))


def run_since(flags: Sequence[bool], times: Sequence[float]) -> float | None:
    """The first step of the run of True that reaches the last step (None if the last step is False)."""
    if not flags or not flags[-1]:
        return None
    i = len(flags) - 1
    while i > 0 and flags[i - 1]:
        i -= 1
    return times[i]
