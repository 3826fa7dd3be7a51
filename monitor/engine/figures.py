"""Window sums -> the figures of the metric catalogue (monitor/conventions.py), as plain samples.

The exporter turns samples into Prometheus families and `replay --format json` into JSON; neither
computes anything. Undefined figures (0/0, PSI below the sample-size guard) are left out, not zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from monitor import conventions as c
from monitor.config import format_duration
from monitor.engine.metrics import calibration, classification, drift, estimation, slo, thresholds
from monitor.engine.model_state import ModelState, segment_key
from monitor.engine.tallies import Histogram, JoinCounters
from monitor.engine.windows import (
    S_CARD_ACTUAL,
    S_CARD_ACTUAL_N,
    S_CARD_PRED,
    S_JOINED,
    S_PENDING,
    S_PREDICTIONS,
    S_SUBSET_N,
    S_SUBSET_OK,
)


@dataclass(frozen=True)
class Sample:
    metric: c.MetricDef
    labels: tuple[str, ...]
    value: float


@dataclass(frozen=True)
class HistogramSample:
    metric: c.MetricDef
    labels: tuple[str, ...]
    buckets: tuple[float, ...]
    counts: tuple[float, ...]  # per bucket, the last one is +Inf; not cumulative
    sum: float


class Figures:
    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.histograms: list[HistogramSample] = []

    def add(self, metric: c.MetricDef, labels: tuple[str, ...], value: float) -> None:
        if value is not None and not math.isnan(value):
            self.samples.append(Sample(metric, labels, float(value)))

    def add_histogram(self, metric: c.MetricDef, labels: tuple[str, ...], h: Histogram) -> None:
        self.histograms.append(HistogramSample(metric, labels, tuple(h.buckets.tolist()),
                                               tuple(h.counts.tolist()), h.sum))

    def by_name(self, name: str) -> dict[tuple[str, ...], float]:
        """Test and report helper: {labels: value} of one metric."""
        return {s.labels: s.value for s in self.samples if s.metric.name == name}


def model_figures(state: ModelState, windows: list[int], at: float, out: Figures) -> None:
    cfg = state.cfg
    lay = state.layout
    labels = cfg.labels
    detail = set(cfg.detail_labels) if cfg.detail_labels is not None else set(labels)
    cells = _confusion_cells(labels, detail) if state.multiclass else []
    longest = max(windows)
    all_versions: dict[int, np.ndarray] = {w: np.zeros(lay.size) for w in windows}

    for v, version in enumerate(state.version_names):
        sums = state.store.window_sums(v, windows, at)
        calib_ref = lay.view(sums[longest], "calib")
        for w in windows:
            all_versions[w] += sums[w]
            _window_figures(state, version, format_duration(w), sums[w], calib_ref, detail, cells, out)

    _segment_figures(state, windows, at, detail, out)
    _slo_figures(state, windows, all_versions, out)
    cumulative_figures(state, out)


def cumulative_figures(state: ModelState, out: Figures) -> None:
    """The model's counters, histograms and other since-start values: no window is summed for them, so a
    caller that needs only these (the worker's per-partition counters) skips the window figures."""
    model, lay = state.cfg.name, state.layout
    for v, version in enumerate(state.version_names):
        total = state.store.total.get(v)
        if total is not None:
            outcomes = lay.view(total, "outcomes")
            for li, label in enumerate(state.cfg.labels):
                for k, name in enumerate(c.OUTCOMES):
                    out.add(c.LABEL_OUTCOMES_TOTAL, (model, version, label, name), outcomes[li, k])
            out.add(c.JOINED_TOTAL, (model, version), lay.view(total, "scalars")[S_JOINED])
        out.add(c.PREDICTIONS_TOTAL, (model, version), state.tallies.predictions_total[v])
        out.add_histogram(c.PREDICTION_LATENCY_SECONDS, (model, version), state.tallies.latency[v])
    _model_counters(state, out)


def _segment_figures(state: ModelState, windows: list[int], at: float, detail: set[str], out: Figures) -> None:
    """The window figures of each segment value, from its own blocks, under the segment twins of the
    per-version metrics (conventions.SEGMENT_TWINS); figures without a twin are not reported per segment."""
    model = state.cfg.name
    for s, segment in enumerate(state.cfg.segments):
        for i, value in enumerate(state.segment_values[s]):
            sums = state.store.window_sums(segment_key(s, i), windows, at)
            calib_ref = state.layout.view(sums[max(windows)], "calib")
            for w in windows:
                scratch = Figures()
                _window_figures(state, value, format_duration(w), sums[w], calib_ref, detail, [], scratch)
                for sample in scratch.samples:
                    twin = c.SEGMENT_TWINS.get(sample.metric.name)
                    if twin is not None:
                        out.add(twin, (model, segment.name, value, *sample.labels[2:]), sample.value)


def _confusion_cells(labels: list[str], detail: set[str]) -> list[tuple[int, int]]:
    """The (actual, predicted) cells exported: the full matrix, or with detail_labels set only the rows and
    columns of those classes, so a 500-class model need not export 250,000 cells per window."""
    n = len(labels)
    if len(detail) == n:
        return [(a, p) for a in range(n) for p in range(n)]
    chosen = [i for i, label in enumerate(labels) if label in detail]
    return sorted({(d, x) for d in chosen for x in range(n)} | {(x, d) for d in chosen for x in range(n)})


def _window_figures(state: ModelState, version: str, window: str, vec: np.ndarray, calib_ref: np.ndarray,
                    detail: set[str], cells: list[tuple[int, int]], out: Figures) -> None:
    cfg = state.cfg
    model, labels, lay = cfg.name, cfg.labels, state.layout
    mvw = (model, version, window)
    sc = lay.view(vec, "scalars")
    n_pred = sc[S_PREDICTIONS]
    out.add(c.WINDOW_PREDICTIONS, mvw, n_pred)
    out.add(c.WINDOW_JOINED, mvw, sc[S_JOINED])
    out.add(c.PENDING_IN_WINDOW, mvw, sc[S_PENDING])
    out.add(c.LABEL_COVERAGE, mvw, classification.ratio(sc[S_JOINED], n_pred))

    outcomes = lay.view(vec, "outcomes")
    tp, fp, fn, tn = (outcomes[:, k] for k in range(4))
    precision, recall, f1 = classification.precision_recall_f1(tp, fp, fn)
    p_lo, p_hi = classification.wilson_interval(tp, tp + fp)
    r_lo, r_hi = classification.wilson_interval(tp, tp + fn)
    f_lo, f_hi = classification.f1_interval(tp, fp, fn)
    calib = lay.view(vec, "calib")
    ece = calibration.ece(calib[..., 0], calib[..., 1], calib[..., 2])
    est_p, est_r = estimation.estimate_precision_recall(lay.view(vec, "pending"), calib_ref[..., 0],
                                                        calib_ref[..., 2])
    est_tp, est_fn, pending_pos = estimation.alert_counts(lay.view(vec, "pending"), calib_ref[..., 0],
                                                          calib_ref[..., 2])
    pred_pos = lay.view(vec, "pred_pos")
    for li, label in enumerate(labels):
        key = (model, version, label, window)
        for k, name in enumerate(c.OUTCOMES):
            out.add(c.LABEL_OUTCOMES, (model, version, label, name, window), outcomes[li, k])
        for metric, arr in ((c.LABEL_PRECISION, precision), (c.LABEL_RECALL, recall), (c.LABEL_F1, f1),
                            (c.LABEL_PRECISION_LOWER, p_lo), (c.LABEL_PRECISION_UPPER, p_hi),
                            (c.LABEL_RECALL_LOWER, r_lo), (c.LABEL_RECALL_UPPER, r_hi),
                            (c.LABEL_F1_LOWER, f_lo), (c.LABEL_F1_UPPER, f_hi), (c.LABEL_ECE, ece),
                            (c.ESTIMATED_LABEL_PRECISION, est_p), (c.ESTIMATED_LABEL_RECALL, est_r)):
            out.add(metric, key, arr[li])
        out.add(c.ESTIMATED_TRUE_POSITIVES, key, est_tp[li])
        out.add(c.ESTIMATED_FALSE_NEGATIVES, key, est_fn[li])
        out.add(c.PENDING_PREDICTED_POSITIVES, key, pending_pos[li])
        out.add(c.LABEL_SUPPORT, key, tp[li] + fn[li])
        out.add(c.PREDICTED_POSITIVES, key, pred_pos[li])
        out.add(c.PREDICTED_POSITIVE_RATE, key, classification.ratio(pred_pos[li], n_pred))
        if label in detail:
            for b in range(calib.shape[1]):
                for k, stat in enumerate(c.CALIBRATION_STATS):
                    out.add(c.CALIBRATION_BIN, (model, version, label, str(b), stat, window), calib[li, b, k])

    out.add(c.MICRO_F1, mvw, classification.micro_f1(tp, fp, fn))
    out.add(c.MACRO_F1, mvw, classification.macro_f1(f1))
    out.add(c.HAMMING_LOSS, mvw, classification.hamming_loss(tp, fp, fn, tn))
    if state.multiclass:
        conf = lay.view(vec, "confusion")
        out.add(c.ACCURACY, mvw, classification.ratio(np.trace(conf), conf.sum()))
        for a, p in cells:
            out.add(c.CONFUSION, (model, version, labels[a], labels[p], window), conf[a, p])
    else:
        out.add(c.SUBSET_ACCURACY, mvw, classification.ratio(sc[S_SUBSET_OK], sc[S_SUBSET_N]))
        out.add(c.WINDOW_SUBSET_EXACT, mvw, sc[S_SUBSET_OK])
    out.add(c.WINDOW_FULLY_LABELLED, mvw, sc[S_SUBSET_N])  # the same count as S_CARD_ACTUAL_N
    out.add(c.WINDOW_LABELS_PREDICTED, mvw, sc[S_CARD_PRED])
    out.add(c.WINDOW_LABELS_ACTUAL, mvw, sc[S_CARD_ACTUAL])
    n_labels = len(labels)
    cardinality = (("predicted", sc[S_CARD_PRED], n_pred), ("actual", sc[S_CARD_ACTUAL], sc[S_CARD_ACTUAL_N]))
    for source, num, den in cardinality:
        card = classification.ratio(num, den)
        out.add(c.LABEL_CARDINALITY, (*mvw, source), card)
        out.add(c.LABEL_DENSITY, (*mvw, source), card / n_labels)

    _threshold_figures(state, version, window, vec, out)
    missing = lay.view(vec, "feat_missing")
    for fi, feature in enumerate(state.features):
        out.add(c.FEATURE_MISSING, (model, version, feature, window), missing[fi])
        out.add(c.FEATURE_MISSING_RATIO, (model, version, feature, window), classification.ratio(missing[fi], n_pred))
    _drift_figures(state, version, window, vec, n_pred, out)


def _threshold_figures(state: ModelState, version: str, window: str, vec: np.ndarray, out: Figures) -> None:
    cfg = state.cfg
    if state.multiclass or not state.advised:
        return
    objectives = {}
    for s in reversed(cfg.slos):  # the first SLO of a label decides its objective
        objectives[s.label] = (s.objective, s.target)
    hist = state.layout.view(vec, "thr_hist")
    for slot, li in enumerate(state.advised):
        label = cfg.labels[li]
        objective, target = objectives.get(label, ("f1", None))
        advice = thresholds.advise(hist[slot, :, 0], hist[slot, :, 1], objective, target)
        if advice is None:
            continue
        key = (cfg.name, version, label, objective, window)
        out.add(c.THRESHOLD_ADVICE, key, advice.threshold)
        out.add(c.THRESHOLD_ADVICE_LOWER, key, advice.lower)
        out.add(c.THRESHOLD_ADVICE_UPPER, key, advice.upper)


def _drift_figures(state: ModelState, version: str, window: str, vec: np.ndarray, n_pred: float,
                   out: Figures) -> None:
    ref = state.reference
    if ref is None:
        return
    cfg, lay = state.cfg, state.layout
    model = cfg.name
    enough = n_pred >= cfg.drift.min_samples
    out.add(c.DRIFT_SAMPLE_OK, (model, version, window), 1.0 if enough else 0.0)
    feat_bins = lay.view(vec, "feat_bins")
    for fi, feature in enumerate(state.features):
        binning = ref.features[feature]
        start = lay.feature_offsets[fi]
        cur = feat_bins[start:start + binning.size]
        for b in range(binning.size):
            out.add(c.FEATURE_BIN, (model, version, feature, str(b), window), cur[b])
        if enough and cur.sum() >= cfg.drift.min_samples:
            out.add(c.FEATURE_PSI, (model, version, feature, window), drift.psi(binning.counts, cur))
    score_bins = lay.view(vec, "score_bins")
    for li, label in enumerate(cfg.labels):
        binning = ref.scores[li]
        cur = score_bins[li, :binning.size]
        for b in range(binning.size):
            out.add(c.SCORE_BIN, (model, version, label, str(b), window), cur[b])
        if enough:
            out.add(c.SCORE_PSI, (model, version, label, window), drift.psi(binning.counts, cur))
    pairs = lay.view(vec, "pairs")
    for i, j, idx in state.exported_pairs:
        out.add(c.LABEL_PAIR_PREDICTED, (model, version, cfg.labels[i], cfg.labels[j], window), pairs[idx])
    if enough and pairs.size:
        out.add(c.LABEL_COOCCURRENCE_DRIFT, (model, version, window), drift.psi(ref.pair_counts, pairs))


def _slo_figures(state: ModelState, windows: list[int], sums: dict[int, np.ndarray], out: Figures) -> None:
    cfg, lay = state.cfg, state.layout
    index = {label: i for i, label in enumerate(cfg.labels)}
    for s in cfg.slos:
        li = index[s.label]
        out.add(c.SLO_TARGET, (cfg.name, s.label, s.name), s.target)
        for w in windows:
            tp, fp, fn, _ = lay.view(sums[w], "outcomes")[li]
            err, events = slo.error_ratio(s.objective, tp, fp, fn)
            window = format_duration(w)
            out.add(c.SLO_EVENTS, (cfg.name, s.label, s.name, window), events)
            out.add(c.ERROR_BUDGET_BURN_RATE, (cfg.name, s.label, s.name, window), slo.burn_rate(err, s.target))
            if w == s.period:
                out.add(c.ERROR_BUDGET_REMAINING, (cfg.name, s.label, s.name), slo.budget_remaining(err, s.target))


def _model_counters(state: ModelState, out: Figures) -> None:
    cfg = state.cfg
    model = cfg.name
    t = state.tallies
    join = JoinCounters.of(state.join)  # one read of the native join's counters, every side present
    out.add(c.GROUND_TRUTH_TOTAL, (model,), t.ground_truth_total)
    out.add(c.CORRECTIONS_TOTAL, (model,), join.corrections)
    out.add(c.IGNORED_SCORES_TOTAL, (model,), t.ignored_scores)
    for side in (c.SIDE_PREDICTION, c.SIDE_GROUND_TRUTH):
        out.add(c.JOIN_EXPIRED_TOTAL, (model, side), join.expired[side])
        out.add(c.PENDING_JOINS, (model, side), join.pending[side])
    for side in (c.SIDE_PREDICTION, c.SIDE_GROUND_TRUTH, c.SIDE_JOINED):
        out.add(c.JOIN_EVICTED_TOTAL, (model, side), join.evicted[side])
    for side, topic in ((c.SIDE_PREDICTION, c.TOPIC_PREDICTIONS), (c.SIDE_GROUND_TRUTH, c.TOPIC_GROUND_TRUTH)):
        out.add(c.DUPLICATES_TOTAL, (model, topic), join.duplicates[side])
    for topic, n in t.late.items():
        out.add(c.LATE_EVENTS_TOTAL, (model, topic), n)
    for topic, ts in t.last_event.items():
        out.add(c.LAST_EVENT_TIMESTAMP, (model, topic), ts)
    out.add_histogram(c.GROUND_TRUTH_DELAY_SECONDS, (model,), t.delay)
    ref = state.reference
    if ref is not None:
        for li, label in enumerate(cfg.labels):
            out.add(c.REFERENCE_POSITIVE_RATE, (model, label), ref.positive_rate[li])
            for b, n in enumerate(ref.scores[li].counts):
                out.add(c.REFERENCE_SCORE_BIN, (model, label, str(b)), n)
        for feature, binning in ref.features.items():
            for b, n in enumerate(binning.counts):
                out.add(c.REFERENCE_FEATURE_BIN, (model, feature, str(b)), n)
        if state.exported_pairs:
            out.add(c.REFERENCE_PREDICTIONS, (model,), ref.n)
        for i, j, idx in state.exported_pairs:
            out.add(c.REFERENCE_LABEL_PAIR, (model, cfg.labels[i], cfg.labels[j]), ref.pair_counts[idx])
