"""Names of the recorded (cluster-wide) series, derived from the exported metric names in conventions.

Prometheus' `level:metric:operation` convention, with level `mlmon`: `mlmon:label_outcomes:sum` is the sum
of `mlmon_label_outcomes` across worker processes, and `mlmon:label_precision` is the cluster-wide figure
that each worker's `mlmon_label_precision` only approximates. Deriving them here (never retyping) keeps a
rename in conventions a one-line change for the rules too.
"""

from __future__ import annotations

from typing import Final

from monitor import conventions as c

LEVEL: Final = c.PREFIX.rstrip("_")


def _stem(metric: c.MetricDef) -> str:
    return metric.name.removeprefix(c.PREFIX).removesuffix("_total")


def recorded(metric: c.MetricDef, operation: str | None = None) -> str:
    """`mlmon:<metric>` or `mlmon:<metric>:<operation>`."""
    return f"{LEVEL}:{_stem(metric)}" + (f":{operation}" if operation else "")


# Sums across workers of the additive window gauges.
LABEL_OUTCOMES_SUM: Final = recorded(c.LABEL_OUTCOMES, "sum")
WINDOW_PREDICTIONS_SUM: Final = recorded(c.WINDOW_PREDICTIONS, "sum")
WINDOW_JOINED_SUM: Final = recorded(c.WINDOW_JOINED, "sum")
PREDICTED_POSITIVES_SUM: Final = recorded(c.PREDICTED_POSITIVES, "sum")
FEATURE_MISSING_SUM: Final = recorded(c.FEATURE_MISSING, "sum")
FEATURE_BIN_SUM: Final = recorded(c.FEATURE_BIN, "sum")
SCORE_BIN_SUM: Final = recorded(c.SCORE_BIN, "sum")
CALIBRATION_BIN_SUM: Final = recorded(c.CALIBRATION_BIN, "sum")
SLO_EVENTS_SUM: Final = recorded(c.SLO_EVENTS, "sum")
LABEL_PAIR_SUM: Final = recorded(c.LABEL_PAIR_PREDICTED, "sum")
ESTIMATED_TRUE_POSITIVES_SUM: Final = recorded(c.ESTIMATED_TRUE_POSITIVES, "sum")
ESTIMATED_FALSE_NEGATIVES_SUM: Final = recorded(c.ESTIMATED_FALSE_NEGATIVES, "sum")
PENDING_PREDICTED_POSITIVES_SUM: Final = recorded(c.PENDING_PREDICTED_POSITIVES, "sum")
ADDITIVE: Final = (
    (c.LABEL_OUTCOMES, LABEL_OUTCOMES_SUM),
    (c.WINDOW_PREDICTIONS, WINDOW_PREDICTIONS_SUM),
    (c.WINDOW_JOINED, WINDOW_JOINED_SUM),
    (c.PREDICTED_POSITIVES, PREDICTED_POSITIVES_SUM),
    (c.FEATURE_MISSING, FEATURE_MISSING_SUM),
    (c.FEATURE_BIN, FEATURE_BIN_SUM),
    (c.SCORE_BIN, SCORE_BIN_SUM),
    (c.CALIBRATION_BIN, CALIBRATION_BIN_SUM),
    (c.SLO_EVENTS, SLO_EVENTS_SUM),
    (c.LABEL_PAIR_PREDICTED, LABEL_PAIR_SUM),
    (c.ESTIMATED_TRUE_POSITIVES, ESTIMATED_TRUE_POSITIVES_SUM),
    (c.ESTIMATED_FALSE_NEGATIVES, ESTIMATED_FALSE_NEGATIVES_SUM),
    (c.PENDING_PREDICTED_POSITIVES, PENDING_PREDICTED_POSITIVES_SUM),
)

# Sums across workers of the additive per-segment-value counts (only generated for models with segments).
SEGMENT_ADDITIVE: Final = tuple(
    (c.SEGMENT_TWINS[m.name], recorded(c.SEGMENT_TWINS[m.name], "sum"))
    for m in (c.LABEL_OUTCOMES, c.WINDOW_PREDICTIONS, c.WINDOW_JOINED)
)
SEGMENT_LABEL_OUTCOMES_SUM, SEGMENT_WINDOW_PREDICTIONS_SUM, SEGMENT_WINDOW_JOINED_SUM = (
    name for _, name in SEGMENT_ADDITIVE)

# Reference constants: every worker exports the same values, so they are deduplicated (max), never summed.
REFERENCE_FEATURE_BIN_MAX: Final = recorded(c.REFERENCE_FEATURE_BIN, "max")
REFERENCE_SCORE_BIN_MAX: Final = recorded(c.REFERENCE_SCORE_BIN, "max")
REFERENCE_POSITIVE_RATE_MAX: Final = recorded(c.REFERENCE_POSITIVE_RATE, "max")
REFERENCE_LABEL_PAIR_MAX: Final = recorded(c.REFERENCE_LABEL_PAIR, "max")
REFERENCE_PREDICTIONS_MAX: Final = recorded(c.REFERENCE_PREDICTIONS, "max")
CONSTANTS: Final = (
    (c.REFERENCE_FEATURE_BIN, REFERENCE_FEATURE_BIN_MAX),
    (c.REFERENCE_SCORE_BIN, REFERENCE_SCORE_BIN_MAX),
    (c.REFERENCE_POSITIVE_RATE, REFERENCE_POSITIVE_RATE_MAX),
    (c.REFERENCE_LABEL_PAIR, REFERENCE_LABEL_PAIR_MAX),
    (c.REFERENCE_PREDICTIONS, REFERENCE_PREDICTIONS_MAX),
)

# Smoothed bin shares, the PSI inputs.
FEATURE_BIN_SHARE: Final = recorded(c.FEATURE_BIN, "share")
SCORE_BIN_SHARE: Final = recorded(c.SCORE_BIN, "share")
REFERENCE_FEATURE_BIN_SHARE: Final = recorded(c.REFERENCE_FEATURE_BIN, "share")
REFERENCE_SCORE_BIN_SHARE: Final = recorded(c.REFERENCE_SCORE_BIN, "share")

# Cluster-wide figures, named after the per-worker gauge they replace.
LABEL_PRECISION: Final = recorded(c.LABEL_PRECISION)
LABEL_RECALL: Final = recorded(c.LABEL_RECALL)
LABEL_F1: Final = recorded(c.LABEL_F1)
LABEL_COVERAGE: Final = recorded(c.LABEL_COVERAGE)
LABEL_ECE: Final = recorded(c.LABEL_ECE)
FEATURE_PSI: Final = recorded(c.FEATURE_PSI)
SCORE_PSI: Final = recorded(c.SCORE_PSI)
PREDICTED_POSITIVE_RATE: Final = recorded(c.PREDICTED_POSITIVE_RATE)
FEATURE_MISSING_RATIO: Final = recorded(c.FEATURE_MISSING_RATIO)
LABEL_COOCCURRENCE_DRIFT: Final = recorded(c.LABEL_COOCCURRENCE_DRIFT)
DRIFT_SAMPLE_OK: Final = recorded(c.DRIFT_SAMPLE_OK)
ERROR_BUDGET_BURN_RATE: Final = recorded(c.ERROR_BUDGET_BURN_RATE)
ERROR_BUDGET_REMAINING: Final = recorded(c.ERROR_BUDGET_REMAINING)

# SLO error counts and their continuity-corrected Wilson bounds, over all versions and per version.
SLO_ERRORS: Final = f"{LEVEL}:slo_errors"
SLO_EVENTS: Final = recorded(c.SLO_EVENTS)  # from the outcome counts, beside SLO_ERRORS
SLO_ERROR_RATIO: Final = f"{LEVEL}:slo_error_ratio"
SLO_ERROR_RATIO_LOWER: Final = f"{SLO_ERROR_RATIO}:wilson_lower"
SLO_ERROR_RATIO_UPPER: Final = f"{SLO_ERROR_RATIO}:wilson_upper"
SLO_ERROR_RATIO_POISSON_LOWER: Final = f"{SLO_ERROR_RATIO}:poisson_lower"  # all versions: the burn tiers
BY_VERSION: Final = "by_version"
SLO_ERRORS_BY_VERSION: Final = f"{SLO_ERRORS}:{BY_VERSION}"
SLO_EVENTS_BY_VERSION: Final = f"{SLO_EVENTS}:{BY_VERSION}"
SLO_ERROR_RATIO_BY_VERSION: Final = f"{SLO_ERROR_RATIO}:{BY_VERSION}"
SLO_ERROR_RATIO_LOWER_BY_VERSION: Final = f"{SLO_ERROR_RATIO_LOWER}_{BY_VERSION}"
SLO_ERROR_RATIO_UPPER_BY_VERSION: Final = f"{SLO_ERROR_RATIO_UPPER}_{BY_VERSION}"
ERROR_BUDGET_BURN_RATE_BY_VERSION: Final = f"{ERROR_BUDGET_BURN_RATE}:{BY_VERSION}"
# Two-proportion z of a version's error ratio against the rest of its model's versions.
VERSION_REGRESSION_Z: Final = f"{LEVEL}:slo_version_regression:z"


def per_segment(name: str) -> str:
    """The per-segment-value twin of a recorded name, as the exported families are named
    (`mlmon:slo_errors` -> `mlmon:segment_slo_errors`)."""
    level, _, rest = name.partition(":")
    return f"{level}:segment_{rest}"


# Per-segment SLOs (models[].slos[].per_segment): the burn tiers' inputs per segment value, from the summed
# per-segment outcome counts. Only generated for configs with such an SLO.
SEGMENT_ERROR_BUDGET_BURN_RATE: Final = per_segment(ERROR_BUDGET_BURN_RATE)
SEGMENT_SLO_ERRORS: Final = per_segment(SLO_ERRORS)
SEGMENT_SLO_EVENTS: Final = per_segment(SLO_EVENTS)
SEGMENT_SLO_ERROR_RATIO_LOWER: Final = per_segment(SLO_ERROR_RATIO_LOWER)
SEGMENT_SLO_ERROR_RATIO_UPPER: Final = per_segment(SLO_ERROR_RATIO_UPPER)
SEGMENT_SLO_ERROR_RATIO_POISSON_LOWER: Final = per_segment(SLO_ERROR_RATIO_POISSON_LOWER)

# Upper Wilson bounds of the estimated (CBPE) recall and precision of pending predictions, from the summed
# expected counts: the estimated-quality alert fires only when even the bound is under the target.
ESTIMATED_RECALL_UPPER: Final = recorded(c.ESTIMATED_LABEL_RECALL, "wilson_upper")
ESTIMATED_PRECISION_UPPER: Final = recorded(c.ESTIMATED_LABEL_PRECISION, "wilson_upper")

# ECE's sampling scale (what a calibrated label's ECE is made of), for the calibration alert.
LABEL_ECE_NOISE: Final = recorded(c.LABEL_ECE, "noise")

# Label pairs: additive counts summed, then the log odds ratio of each pair's 2x2 table.
LABEL_PAIR_FIRST: Final = recorded(c.LABEL_PAIR_PREDICTED, "first")  # n_a broadcast to the pair
LABEL_PAIR_SECOND: Final = recorded(c.LABEL_PAIR_PREDICTED, "second")  # n_b
LABEL_PAIR_TOTAL: Final = recorded(c.LABEL_PAIR_PREDICTED, "predictions")  # n
REFERENCE_POSITIVES: Final = recorded(c.REFERENCE_POSITIVE_RATE, "count")
LABEL_PAIR_LOG_ODDS: Final = f"{LEVEL}:label_pair_log_odds_ratio"
LABEL_PAIR_LOG_ODDS_VAR: Final = f"{LABEL_PAIR_LOG_ODDS}:variance"
REFERENCE_LABEL_PAIR_LOG_ODDS: Final = f"{LEVEL}:reference_label_pair_log_odds_ratio"
REFERENCE_LABEL_PAIR_LOG_ODDS_VAR: Final = f"{REFERENCE_LABEL_PAIR_LOG_ODDS}:variance"
LABEL_PAIR_DEPENDENCY_Z: Final = f"{LEVEL}:label_pair_dependency_change:z"

# Inputs of the label-collapse alert: what the window would hold at the reference positive rate.
PREDICTED_POSITIVES_EXPECTED: Final = recorded(c.PREDICTED_POSITIVES, "expected")
# TODO(conventions): there is no exported "predicted negatives" metric to derive this name from.
PREDICTED_NEGATIVES_EXPECTED: Final = f"{LEVEL}:predicted_negatives:expected"

# Rates over fixed ranges (the range is part of the name, as Prometheus recommends).
LATENCY_RANGE: Final = "5m"
INVALID_RANGE: Final = "10m"
PREDICTION_LATENCY_P95: Final = recorded(c.PREDICTION_LATENCY_SECONDS, f"p95_rate{LATENCY_RANGE}")
INVALID_EVENTS_RATIO: Final = recorded(c.INVALID_EVENTS_TOTAL, f"ratio_rate{INVALID_RANGE}")

# Labels the rules add. TODO(conventions): move L_SIGNAL and L_COLLAPSE (and their values, and the
# burnrate_tier values in monitor/rules/tiers.py) into monitor/conventions.py.
L_SIGNAL: Final = "signal"  # why MLMonitorRetrainingRecommended fired
SIGNAL_FEATURE_DRIFT: Final = "feature_drift"
SIGNAL_SLO_BURN: Final = "slo_burn"
L_COLLAPSE: Final = "collapse"  # which way MLMonitorLabelCollapse went
COLLAPSE_NOTHING: Final = "nothing"
COLLAPSE_EVERYTHING: Final = "everything"
STALL_RELATIVE: Final = "relative"  # L_STALL values: against the stream's own rate, or never any
STALL_NEVER: Final = "never"
L_STALL: Final = "stall"
L_ALERTNAME: Final = "alertname"
L_INSTANCE: Final = "instance"
L_JOB: Final = "job"
L_LE: Final = "le"

# --- Dashboard inputs -------------------------------------------------------------------------------------
# Every dashboard panel reads recorded series (the ones above and these), never a worker's own series, so
# N workers show exactly what one would and the panels show the numbers the alerts use.
HEALTH_RANGE: Final = "5m"
CONSUMER_LAG_SUM: Final = recorded(c.CONSUMER_LAG, "sum")
PENDING_JOINS_SUM: Final = recorded(c.PENDING_JOINS, "sum")
CONFUSION_SUM: Final = recorded(c.CONFUSION, "sum")
# Counters summed after rate(), over the per-partition series (docs/operations.md, "Scaling out").
PREDICTIONS_RATE: Final = recorded(c.PREDICTIONS_TOTAL, f"rate{HEALTH_RANGE}")
GROUND_TRUTH_RATE: Final = recorded(c.GROUND_TRUTH_TOTAL, f"rate{HEALTH_RANGE}")
JOINED_RATE: Final = recorded(c.JOINED_TOTAL, f"rate{HEALTH_RANGE}")
JOIN_EXPIRED_RATE: Final = recorded(c.JOIN_EXPIRED_TOTAL, f"rate{HEALTH_RANGE}")
INVALID_EVENTS_RATE: Final = recorded(c.INVALID_EVENTS_TOTAL, f"rate{HEALTH_RANGE}")
PREDICTION_LATENCY_BUCKET_RATE: Final = f"{LEVEL}:{_stem(c.PREDICTION_LATENCY_SECONDS)}_bucket:rate{HEALTH_RANGE}"
GROUND_TRUTH_DELAY_BUCKET_RATE: Final = f"{LEVEL}:{_stem(c.GROUND_TRUTH_DELAY_SECONDS)}_bucket:rate{HEALTH_RANGE}"
FULLY_LABELLED_SUM: Final = recorded(c.WINDOW_FULLY_LABELLED, "sum")
SUBSET_EXACT_SUM: Final = recorded(c.WINDOW_SUBSET_EXACT, "sum")
LABELS_PREDICTED_SUM: Final = recorded(c.WINDOW_LABELS_PREDICTED, "sum")
LABELS_ACTUAL_SUM: Final = recorded(c.WINDOW_LABELS_ACTUAL, "sum")
SUBSET_ACCURACY: Final = recorded(c.SUBSET_ACCURACY)
LABEL_CARDINALITY: Final = recorded(c.LABEL_CARDINALITY)
# Estimated quality is not exported in additive parts: the worst worker's estimate (`min`), exact with one
# worker only (docs/dashboards.md).
ESTIMATED_LABEL_PRECISION_MIN: Final = recorded(c.ESTIMATED_LABEL_PRECISION, "min")
ESTIMATED_LABEL_RECALL_MIN: Final = recorded(c.ESTIMATED_LABEL_RECALL, "min")
# Multiclass accuracy from the summed confusion matrix: trace / total (exact when every cell is exported).
ACCURACY: Final = recorded(c.ACCURACY)
