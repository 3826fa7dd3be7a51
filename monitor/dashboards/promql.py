"""PromQL fragments for the dashboards, built from the names in monitor.conventions and monitor.rules.names.

Every metric and label name comes from conventions, and every selector is checked against the series'
declared labels, so a renamed metric or a matcher on a label the series does not carry fails at generation
time instead of leaving a panel silently empty.

Every panel reads recorded series (monitor/rules/recording.py), never a worker's own series: the sums of the
additive window statistics across workers, the cluster-wide figures computed from those sums (PSI, ECE,
burn rates, budget), and the sums of counter rates. Ratios over the selected versions (precision, recall,
F1, micro/macro F1, coverage, shares, Wilson bounds) are recomputed here from the recorded sums. So N
workers show exactly what one worker would, and the panels show the numbers the alerts use.
"""

from __future__ import annotations

from collections.abc import Sequence

from monitor import conventions as C
from monitor.rules import names as N

Matcher = tuple[str, str, str]  # (label, operator, value)

TP, FP, FN, TN = C.OUTCOMES
STAT_COUNT, STAT_SCORE_SUM, STAT_POSITIVES = C.CALIBRATION_STATS

def _recorded(name: str, labels: Sequence[str], what: str) -> C.MetricDef:
    return C.MetricDef(name, "recorded", tuple(labels), what)


def _same(metric: C.MetricDef, name: str) -> C.MetricDef:
    """A recorded series with the labels of the exported metric it stands for."""
    return _recorded(name, metric.labels, f"recorded from {metric.name}")


# The recorded series the panels read.
R_OUTCOMES = _same(C.LABEL_OUTCOMES, N.LABEL_OUTCOMES_SUM)
R_WINDOW_PREDICTIONS = _same(C.WINDOW_PREDICTIONS, N.WINDOW_PREDICTIONS_SUM)
R_WINDOW_JOINED = _same(C.WINDOW_JOINED, N.WINDOW_JOINED_SUM)
R_PREDICTED_POSITIVES = _same(C.PREDICTED_POSITIVES, N.PREDICTED_POSITIVES_SUM)
R_FEATURE_MISSING = _same(C.FEATURE_MISSING, N.FEATURE_MISSING_SUM)
R_SCORE_BIN = _same(C.SCORE_BIN, N.SCORE_BIN_SUM)
R_REFERENCE_SCORE_BIN = _same(C.REFERENCE_SCORE_BIN, N.REFERENCE_SCORE_BIN_MAX)
R_CALIBRATION_BIN = _same(C.CALIBRATION_BIN, N.CALIBRATION_BIN_SUM)
R_CONFUSION = _same(C.CONFUSION, N.CONFUSION_SUM)
R_LABEL_ECE = _same(C.LABEL_ECE, N.LABEL_ECE)
R_SCORE_PSI = _same(C.SCORE_PSI, N.SCORE_PSI)
R_FEATURE_PSI = _same(C.FEATURE_PSI, N.FEATURE_PSI)
R_COOCCURRENCE_DRIFT = _same(C.LABEL_COOCCURRENCE_DRIFT, N.LABEL_COOCCURRENCE_DRIFT)
R_BURN_RATE = _same(C.ERROR_BUDGET_BURN_RATE, N.ERROR_BUDGET_BURN_RATE)
R_BUDGET_REMAINING = _same(C.ERROR_BUDGET_REMAINING, N.ERROR_BUDGET_REMAINING)
R_ACCURACY = _same(C.ACCURACY, N.ACCURACY)
R_FULLY_LABELLED = _same(C.WINDOW_FULLY_LABELLED, N.FULLY_LABELLED_SUM)
R_SUBSET_EXACT = _same(C.WINDOW_SUBSET_EXACT, N.SUBSET_EXACT_SUM)
R_LABELS_PREDICTED = _same(C.WINDOW_LABELS_PREDICTED, N.LABELS_PREDICTED_SUM)
R_LABELS_ACTUAL = _same(C.WINDOW_LABELS_ACTUAL, N.LABELS_ACTUAL_SUM)
R_ESTIMATED_PRECISION = _same(C.ESTIMATED_LABEL_PRECISION, N.ESTIMATED_LABEL_PRECISION_MIN)
R_ESTIMATED_RECALL = _same(C.ESTIMATED_LABEL_RECALL, N.ESTIMATED_LABEL_RECALL_MIN)
R_PENDING_JOINS = _same(C.PENDING_JOINS, N.PENDING_JOINS_SUM)
R_SEGMENT_OUTCOMES = _same(C.SEGMENT_TWINS[C.LABEL_OUTCOMES.name], N.SEGMENT_LABEL_OUTCOMES_SUM)
R_SEGMENT_PREDICTIONS = _same(C.SEGMENT_TWINS[C.WINDOW_PREDICTIONS.name], N.SEGMENT_WINDOW_PREDICTIONS_SUM)
R_SEGMENT_JOINED = _same(C.SEGMENT_TWINS[C.WINDOW_JOINED.name], N.SEGMENT_WINDOW_JOINED_SUM)
R_SEGMENT_BURN_RATE = _recorded(N.SEGMENT_ERROR_BUDGET_BURN_RATE,
                                (C.L_MODEL, C.L_LABEL, C.L_SLO, C.L_SEGMENT, C.L_SEGMENT_VALUE, C.L_WINDOW),
                                "recorded per segment value for SLOs with per_segment")
R_CONSUMER_LAG = _recorded(N.CONSUMER_LAG_SUM, (C.L_TOPIC,), f"recorded from {C.CONSUMER_LAG.name}")
# Per-second rates over monitor.rules.names.HEALTH_RANGE, summed after rate().
R_PREDICTIONS_RATE = _same(C.PREDICTIONS_TOTAL, N.PREDICTIONS_RATE)
R_GROUND_TRUTH_RATE = _same(C.GROUND_TRUTH_TOTAL, N.GROUND_TRUTH_RATE)
R_JOINED_RATE = _same(C.JOINED_TOTAL, N.JOINED_RATE)
R_JOIN_EXPIRED_RATE = _same(C.JOIN_EXPIRED_TOTAL, N.JOIN_EXPIRED_RATE)
R_INVALID_EVENTS_RATE = _same(C.INVALID_EVENTS_TOTAL, N.INVALID_EVENTS_RATE)
R_LATENCY_BUCKET_RATE = _recorded(N.PREDICTION_LATENCY_BUCKET_RATE, (*C.PREDICTION_LATENCY_SECONDS.labels, N.L_LE),
                                  f"recorded from {C.PREDICTION_LATENCY_SECONDS.name}_bucket")
R_DELAY_BUCKET_RATE = _recorded(N.GROUND_TRUTH_DELAY_BUCKET_RATE, (*C.GROUND_TRUTH_DELAY_SECONDS.labels, N.L_LE),
                                f"recorded from {C.GROUND_TRUTH_DELAY_SECONDS.name}_bucket")
RECORDED: tuple[C.MetricDef, ...] = tuple(v for k, v in list(globals().items()) if k.startswith("R_"))

# Dashboard template variables, as they appear inside queries.
VAR_MODEL = "$model"
VAR_VERSION = "$version"
VAR_LABEL = "$label"
VAR_WINDOW = "$window"
VAR_SEGMENT = "$segment"
VAR_SEGMENT_VALUE = "$segment_value"
RANGE = "$__range"
RANGE_SECONDS = "$__range_s"


def eq(label: str, value: str) -> Matcher:
    return (label, "=", value)


def regex(label: str, value: str) -> Matcher:
    return (label, "=~", value)


def one_of(label: str, values: Sequence[str]) -> Matcher:
    return (label, "=~", "|".join(values))


# The dashboard-wide filters. Model, version and label are multi-value capable variables, hence =~.
F_MODEL = regex(C.L_MODEL, VAR_MODEL)
F_VERSION = regex(C.L_VERSION, VAR_VERSION)
F_LABEL = regex(C.L_LABEL, VAR_LABEL)
F_WINDOW = eq(C.L_WINDOW, VAR_WINDOW)
F_SEGMENT = eq(C.L_SEGMENT, VAR_SEGMENT)
F_SEGMENT_VALUE = regex(C.L_SEGMENT_VALUE, VAR_SEGMENT_VALUE)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sel(metric: C.MetricDef, *matchers: Matcher) -> str:
    """`metric{matchers}`; matchers on labels the metric does not declare are refused.

    Filters that do not apply to the metric are skipped when passed through `applicable`, never here:
    a wrong label is a bug in the dashboard, not something to paper over.
    """
    allowed = set(metric.labels)
    for label, _, _ in matchers:
        if label not in allowed:
            raise ValueError(f"{metric.name} has no label {label!r} (labels: {metric.labels})")
    inner = ", ".join(f"{label}{op}{_quote(value)}" for label, op, value in matchers)
    return f"{metric.name}{{{inner}}}" if inner else metric.name


def applicable(metric: C.MetricDef, *matchers: Matcher) -> tuple[Matcher, ...]:
    """The dashboard filters the metric can take (e.g. ground-truth counters carry no version)."""
    return tuple(m for m in matchers if m[0] in metric.labels)


def _by(labels: Sequence[str]) -> str:
    return f"by ({', '.join(labels)})" if labels else ""


def agg(op: str, by: Sequence[str], expr: str) -> str:
    grouping = _by(by)
    return f"{op} {grouping} ({expr})" if grouping else f"{op}({expr})"


def sum_by(by: Sequence[str], expr: str) -> str:
    return agg("sum", by, expr)


def max_by(by: Sequence[str], expr: str) -> str:
    return agg("max", by, expr)


def min_by(by: Sequence[str], expr: str) -> str:
    return agg("min", by, expr)


def ratio(numerator: str, denominator: str) -> str:
    # `> 0` drops series whose denominator is zero: an undefined ratio is absent, not 0 or NaN (docs/semantics.md).
    return f"{numerator} / ({denominator} > 0)"


# --- classification quality from additive outcome counts ------------------------------------------------

def outcomes(by: Sequence[str], wanted: Sequence[str], *filters: Matcher,
             source: C.MetricDef = R_OUTCOMES) -> str:
    """Summed outcome counts, e.g. TP+FN when wanted=(tp, fn); per version, or per segment value when
    `source` is R_SEGMENT_OUTCOMES."""
    for outcome in wanted:
        if outcome not in C.OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
    matcher = eq(C.L_OUTCOME, wanted[0]) if len(wanted) == 1 else one_of(C.L_OUTCOME, wanted)
    return sum_by(by, sel(source, *filters, matcher))


def precision(by: Sequence[str], *filters: Matcher, source: C.MetricDef = R_OUTCOMES) -> str:
    return ratio(outcomes(by, (TP,), *filters, source=source), outcomes(by, (TP, FP), *filters, source=source))


def recall(by: Sequence[str], *filters: Matcher, source: C.MetricDef = R_OUTCOMES) -> str:
    return ratio(outcomes(by, (TP,), *filters, source=source), outcomes(by, (TP, FN), *filters, source=source))


def f1(by: Sequence[str], *filters: Matcher, source: C.MetricDef = R_OUTCOMES) -> str:
    """F1 = 2TP / (2TP + FP + FN), written as 2TP / (TP + (TP+FP+FN))."""
    tp = outcomes(by, (TP,), *filters, source=source)
    return f"2 * {tp} / (({tp} + {outcomes(by, (TP, FP, FN), *filters, source=source)}) > 0)"


def micro_f1(by: Sequence[str], *filters: Matcher, source: C.MetricDef = R_OUTCOMES) -> str:
    """Micro F1: outcome counts summed over labels first (`by` must not contain `label`)."""
    if C.L_LABEL in by:
        raise ValueError("micro F1 sums over labels")
    return f1(by, *filters, source=source)


def macro_f1(by: Sequence[str], *filters: Matcher) -> str:
    """Mean of the per-label F1 over labels with a defined F1 (absent ones do not count, docs/semantics.md)."""
    if C.L_LABEL in by:
        raise ValueError("macro F1 averages over labels")
    return agg("avg", by, f1([*by, C.L_LABEL], *filters))


def per_prediction_share(metric: C.MetricDef, by: Sequence[str], *filters: Matcher) -> str:
    """sum(metric) / sum(window_predictions), matched on the labels the two share (model, version)."""
    shared = [lbl for lbl in by if lbl in R_WINDOW_PREDICTIONS.labels]
    numerator = sum_by(by, sel(metric, *filters))
    denominator = sum_by(shared, sel(R_WINDOW_PREDICTIONS, *applicable(R_WINDOW_PREDICTIONS, *filters)))
    # The empty `group_left ()` is required: without it PromQL reads the parenthesised divisor as a label list.
    return f"{numerator} / on ({', '.join(shared)}) group_left () ({denominator} > 0)"


def drift_guarded(expr: str) -> str:
    """A drift figure only where the window holds enough predictions for it to mean anything (the
    sample-size guard the drift alerts use; undefined is absent)."""
    on = ", ".join((C.L_MODEL, C.L_VERSION, C.L_WINDOW))
    return f"({expr} and on ({on}) ({N.DRIFT_SAMPLE_OK} == 1))"


def histogram_quantile(q: float, bucket_rates: C.MetricDef, by: Sequence[str], *filters: Matcher) -> str:
    """The quantile of a histogram from its recorded bucket rates, summed by bucket bound (`le`)."""
    if N.L_LE not in bucket_rates.labels:
        raise ValueError(f"{bucket_rates.name} is not a recorded histogram bucket rate")
    return f"histogram_quantile({q:g}, {sum_by([*by, N.L_LE], sel(bucket_rates, *filters))})"


def total_over_range(rates: C.MetricDef, by: Sequence[str], *filters: Matcher) -> str:
    """Events over the dashboard's time range from a recorded per-second rate: mean rate x range length."""
    return f"{sum_by(by, f'avg_over_time({sel(rates, *filters)}[{RANGE}])')} * {RANGE_SECONDS}"


# Wilson 95% interval in count form (docs/semantics.md): with S successes out of N trials,
# (S + z²/2 ± z·sqrt(S(N-S)/N + z²/4)) / (N + z²). Written over summed counts so it is exact for any
# number of workers and always brackets the point estimate shown beside it.
_Z = 1.959963984540054


def wilson(successes: str, trials: str, *, upper: bool) -> str:
    sign = "+" if upper else "-"
    z2 = _Z * _Z
    # Full precision: rounded constants leave a visible 1e-7 instead of 0 for a lower bound at 0/N.
    spread = f"sqrt({successes} * ({trials} - {successes}) / ({trials} > 0) + {z2 / 4!r})"
    return f"({successes} + {z2 / 2!r} {sign} {_Z!r} * {spread}) / ({trials} + {z2!r})"


def precision_bound(by: Sequence[str], *filters: Matcher, upper: bool) -> str:
    return wilson(outcomes(by, (TP,), *filters), outcomes(by, (TP, FP), *filters), upper=upper)


def recall_bound(by: Sequence[str], *filters: Matcher, upper: bool) -> str:
    return wilson(outcomes(by, (TP,), *filters), outcomes(by, (TP, FN), *filters), upper=upper)


def avg_by(by: Sequence[str], expr: str) -> str:
    return agg("avg", by, expr)


def share_of_total(by: Sequence[str], metric: C.MetricDef, *filters: Matcher) -> str:
    """Each group's share of the metric's total over the same filters (a distribution over bins)."""
    selector = sel(metric, *filters)
    return f"{sum_by(by, selector)} / on () group_left () ({agg('sum', [], selector)} > 0)"
