"""PromQL fragments for the dashboards, built from the names in monitor.conventions.

Every metric and label name comes from conventions, and every selector is checked against the metric's
declared labels, so a renamed metric or a matcher on a label the metric does not carry fails at generation
time instead of leaving a panel silently empty.

Aggregation across workers: each worker exports its own series (Prometheus adds `instance`). Additive
gauges and counters are summed. Ratios that are plain functions of additive counts (precision, recall, F1,
micro/macro F1, coverage, rates, shares) are recomputed here from the sums, so N workers show exactly what
one worker would. Statistics that cannot be rebuilt from exported sums (Wilson bounds, PSI, ECE, burn rates,
estimated quality, co-occurrence drift) take the worst value across instances (`max`, or `min` for lower
bounds); with one worker that is the exported value itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from monitor import conventions as C

Matcher = tuple[str, str, str]  # (label, operator, value)

TP, FP, FN, TN = C.OUTCOMES
STAT_COUNT, STAT_SCORE_SUM, STAT_POSITIVES = C.CALIBRATION_STATS

# Dashboard template variables, as they appear inside queries.
VAR_MODEL = "$model"
VAR_VERSION = "$version"
VAR_LABEL = "$label"
VAR_WINDOW = "$window"
RATE_INTERVAL = "$__rate_interval"
RANGE = "$__range"


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


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sel(metric: C.MetricDef, *matchers: Matcher, suffix: str = "") -> str:
    """`metric{matchers}`; matchers on labels the metric does not declare are refused.

    Filters that do not apply to the metric are skipped when passed through `applicable`, never here:
    a wrong label is a bug in the dashboard, not something to paper over.
    """
    allowed = set(metric.labels)
    if suffix == "_bucket":
        allowed.add("le")
    for label, _, _ in matchers:
        if label not in allowed:
            raise ValueError(f"{metric.name} has no label {label!r} (labels: {metric.labels})")
    inner = ", ".join(f"{label}{op}{_quote(value)}" for label, op, value in matchers)
    return f"{metric.name}{suffix}{{{inner}}}" if inner else f"{metric.name}{suffix}"


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
    # `> 0` drops series whose denominator is zero: an undefined ratio is absent, not 0 or NaN (DESIGN 5).
    return f"{numerator} / ({denominator} > 0)"


def rate(counter: str, interval: str = RATE_INTERVAL) -> str:
    return f"rate({counter}[{interval}])"


def increase(counter: str, interval: str = RANGE) -> str:
    return f"increase({counter}[{interval}])"


# --- classification quality from additive outcome counts ------------------------------------------------

def outcomes(by: Sequence[str], wanted: Sequence[str], *filters: Matcher) -> str:
    """Summed outcome counts, e.g. TP+FN when wanted=(tp, fn)."""
    for outcome in wanted:
        if outcome not in C.OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
    matcher = eq(C.L_OUTCOME, wanted[0]) if len(wanted) == 1 else one_of(C.L_OUTCOME, wanted)
    return sum_by(by, sel(C.LABEL_OUTCOMES, *filters, matcher))


def precision(by: Sequence[str], *filters: Matcher) -> str:
    return ratio(outcomes(by, (TP,), *filters), outcomes(by, (TP, FP), *filters))


def recall(by: Sequence[str], *filters: Matcher) -> str:
    return ratio(outcomes(by, (TP,), *filters), outcomes(by, (TP, FN), *filters))


def f1(by: Sequence[str], *filters: Matcher) -> str:
    """F1 = 2TP / (2TP + FP + FN), written as 2TP / (TP + (TP+FP+FN))."""
    tp = outcomes(by, (TP,), *filters)
    return f"2 * {tp} / (({tp} + {outcomes(by, (TP, FP, FN), *filters)}) > 0)"


def micro_f1(by: Sequence[str], *filters: Matcher) -> str:
    """Micro F1: outcome counts summed over labels first (`by` must not contain `label`)."""
    if C.L_LABEL in by:
        raise ValueError("micro F1 sums over labels")
    return f1(by, *filters)


def macro_f1(by: Sequence[str], *filters: Matcher) -> str:
    """Mean of the per-label F1 over labels with a defined F1 (absent ones do not count, DESIGN 5)."""
    if C.L_LABEL in by:
        raise ValueError("macro F1 averages over labels")
    return agg("avg", by, f1([*by, C.L_LABEL], *filters))


def per_prediction_share(metric: C.MetricDef, by: Sequence[str], *filters: Matcher) -> str:
    """sum(metric) / sum(window_predictions), matched on the labels the two share (model, version)."""
    shared = [lbl for lbl in by if lbl in C.WINDOW_PREDICTIONS.labels]
    numerator = sum_by(by, sel(metric, *filters))
    denominator = sum_by(shared, sel(C.WINDOW_PREDICTIONS, *applicable(C.WINDOW_PREDICTIONS, *filters)))
    # The empty `group_left ()` is required: without it PromQL reads the parenthesised divisor as a label list.
    return f"{numerator} / on ({', '.join(shared)}) group_left () ({denominator} > 0)"


def histogram_quantile(q: float, metric: C.MetricDef, by: Sequence[str], *filters: Matcher) -> str:
    if metric.kind != "histogram":
        raise ValueError(f"{metric.name} is not a histogram")
    buckets = sum_by([*by, "le"], rate(sel(metric, *filters, suffix="_bucket")))
    return f"histogram_quantile({q:g}, {buckets})"


# Wilson 95% interval in count form (DESIGN 5): with S successes out of N trials,
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
