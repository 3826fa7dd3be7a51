"""Every metric, label, alert and rejection-reason name, defined once.

The exporter, the rule generator, the dashboards and the docs all import from here, so a rename is one
edit and a typo is an ImportError rather than a silently empty panel (the Sloth approach).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PREFIX: Final = "mlmon_"

# --- label names -------------------------------------------------------------------------------------
L_MODEL: Final = "model"
L_VERSION: Final = "version"
L_LABEL: Final = "label"
L_OUTCOME: Final = "outcome"
L_WINDOW: Final = "window"
L_TOPIC: Final = "topic"
L_REASON: Final = "reason"
L_SIDE: Final = "side"
L_SOURCE: Final = "source"
L_FEATURE: Final = "feature"
L_BIN: Final = "bin"
L_STAT: Final = "stat"
L_ACTUAL: Final = "actual"
L_PREDICTED: Final = "predicted"
L_SLO: Final = "slo"
L_PARTITION: Final = "partition"
L_SEVERITY: Final = "severity"
L_BURNRATE_TIER: Final = "burnrate_tier"
L_OBJECTIVE: Final = "objective"
L_LABEL_B: Final = "label_b"  # the second label of a label pair (the first is `label`)
L_SEGMENT: Final = "segment"  # a segment's name (models[].segments[].name)
L_SEGMENT_VALUE: Final = "segment_value"  # one of its values, or one of the SEGMENT_* values below

# The segment values that are not read from an event: values past a segment's max_values, and events
# without a usable value (absent, null, or not a string, integer or boolean).
SEGMENT_OTHER: Final = "_other"
SEGMENT_MISSING: Final = "_missing"

OUTCOMES: Final = ("tp", "fp", "fn", "tn")
SIDE_PREDICTION: Final = "prediction"
SIDE_GROUND_TRUTH: Final = "ground_truth"
SIDE_JOINED: Final = "joined"  # only on mlmon_join_evicted_total: a joined prediction removed by the cap
TOPIC_PREDICTIONS: Final = "predictions"
TOPIC_GROUND_TRUTH: Final = "ground_truth"
CALIBRATION_STATS: Final = ("count", "score_sum", "positives")
CALIBRATION_BINS: Final = 10
# Score histograms of joined events behind the threshold advice (mlmon_threshold_advice): 0.02 resolution.
THRESHOLD_BINS: Final = 50
OBJECTIVES: Final = ("recall", "precision", "f1")  # mlmon_threshold_advice{objective}
# PSI smoothing: shares are (count + PSI_ALPHA) / (total + PSI_ALPHA * bins) on both sides, so an empty
# bin never gives ln(0) and the same formula works in PromQL on the additive bin counts.
PSI_ALPHA: Final = 0.5


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: str  # counter | gauge | histogram | info
    labels: tuple[str, ...]
    help: str


def _m(name: str, kind: str, labels: tuple[str, ...], help_: str) -> MetricDef:
    return MetricDef(PREFIX + name, kind, labels, help_)


_MV = (L_MODEL, L_VERSION)
_MVW = (L_MODEL, L_VERSION, L_WINDOW)
_MVLW = (L_MODEL, L_VERSION, L_LABEL, L_WINDOW)

# --- counters (cumulative, since process start; Prometheus rate() handles restarts) ----------------------
PREDICTIONS_TOTAL = _m("predictions_total", "counter", _MV, "Valid prediction events accepted.")
GROUND_TRUTH_TOTAL = _m("ground_truth_total", "counter", (L_MODEL,), "Valid ground-truth events accepted.")
JOINED_TOTAL = _m("joined_total", "counter", _MV, "Predictions joined with their ground truth (first join).")
CORRECTIONS_TOTAL = _m(
    "ground_truth_corrections_total", "counter", (L_MODEL,),
    "Ground truth that replaced an earlier ground truth for the same prediction (counts corrected).",
)
JOIN_EXPIRED_TOTAL = _m(
    "join_expired_total", "counter", (L_MODEL, L_SIDE),
    "Events whose partner did not arrive within the join TTL.",
)
JOIN_EVICTED_TOTAL = _m(
    "join_evicted_total", "counter", (L_MODEL, L_SIDE),
    "Join entries removed before their TTL by the join.max_pending cap (side: what the entry held; "
    "prediction and ground_truth ones also count in mlmon_join_expired_total).",
)
DUPLICATES_TOTAL = _m("duplicates_total", "counter", (L_MODEL, L_TOPIC), "Duplicate events ignored.")
INVALID_EVENTS_TOTAL = _m(
    "invalid_events_total", "counter", (L_TOPIC, L_REASON),
    "Events rejected (sent to the dead-letter topic), by machine-readable reason.",
)
IGNORED_SCORES_TOTAL = _m(
    "ignored_scores_total", "counter", (L_MODEL,),
    "Score keys that are not configured labels (ignored, event otherwise valid).",
)
LATE_EVENTS_TOTAL = _m(
    "late_events_total", "counter", (L_MODEL, L_TOPIC),
    "Valid events older than the longest window: joined and counted, but outside every window.",
)
LABEL_OUTCOMES_TOTAL = _m(
    "label_outcomes_total", "counter", (L_MODEL, L_VERSION, L_LABEL, L_OUTCOME),
    "Per-label outcomes at join time (corrections move counts between outcomes).",
)

# --- window gauges -------------------------------------------------------------------------------------
LABEL_OUTCOMES = _m(
    "label_outcomes", "gauge", (L_MODEL, L_VERSION, L_LABEL, L_OUTCOME, L_WINDOW),
    "Per-label outcome counts of joined events observed in the window (additive across workers).",
)
WINDOW_PREDICTIONS = _m("window_predictions", "gauge", _MVW, "Predictions made in the window (additive).")
WINDOW_JOINED = _m("window_joined", "gauge", _MVW, "Joined events observed in the window (additive).")
PREDICTED_POSITIVES = _m(
    "predicted_positives", "gauge", _MVLW, "Predictions in the window with the label predicted (additive)."
)
FEATURE_MISSING = _m(
    "feature_missing", "gauge", (L_MODEL, L_VERSION, L_FEATURE, L_WINDOW),
    "Predictions in the window without the feature (additive).",
)
FEATURE_BIN = _m(
    "feature_bin", "gauge", (L_MODEL, L_VERSION, L_FEATURE, L_BIN, L_WINDOW),
    "Predictions per frozen reference bin of a feature in the window (additive; PSI inputs).",
)
SCORE_BIN = _m(
    "score_bin", "gauge", (L_MODEL, L_VERSION, L_LABEL, L_BIN, L_WINDOW),
    "Predictions per frozen reference bin of a label's score in the window (additive; PSI inputs).",
)
REFERENCE_FEATURE_BIN = _m(
    "reference_feature_bin", "gauge", (L_MODEL, L_FEATURE, L_BIN), "Reference sample count per feature bin."
)
REFERENCE_SCORE_BIN = _m(
    "reference_score_bin", "gauge", (L_MODEL, L_LABEL, L_BIN), "Reference sample count per score bin."
)
LABEL_PRECISION = _m("label_precision", "gauge", _MVLW, "Precision TP/(TP+FP); absent when undefined.")
LABEL_RECALL = _m("label_recall", "gauge", _MVLW, "Recall TP/(TP+FN); absent when undefined.")
LABEL_F1 = _m("label_f1", "gauge", _MVLW, "F1 2TP/(2TP+FP+FN); absent when undefined.")
LABEL_PRECISION_LOWER = _m("label_precision_lower", "gauge", _MVLW, "Wilson 95% lower bound of precision.")
LABEL_PRECISION_UPPER = _m("label_precision_upper", "gauge", _MVLW, "Wilson 95% upper bound of precision.")
LABEL_RECALL_LOWER = _m("label_recall_lower", "gauge", _MVLW, "Wilson 95% lower bound of recall.")
LABEL_RECALL_UPPER = _m("label_recall_upper", "gauge", _MVLW, "Wilson 95% upper bound of recall.")
LABEL_F1_LOWER = _m("label_f1_lower", "gauge", _MVLW, "Wilson 95% lower bound of F1 (docs/semantics.md).")
LABEL_F1_UPPER = _m("label_f1_upper", "gauge", _MVLW, "Wilson 95% upper bound of F1 (docs/semantics.md).")
LABEL_SUPPORT = _m("label_support", "gauge", _MVLW, "Actual positives (TP+FN) among joined events.")
MICRO_F1 = _m("micro_f1", "gauge", _MVW, "Micro-averaged F1 from outcome counts summed over labels.")
MACRO_F1 = _m("macro_f1", "gauge", _MVW, "Mean F1 over labels with a defined F1.")
HAMMING_LOSS = _m("hamming_loss", "gauge", _MVW, "sum(FP+FN)/sum(TP+FP+FN+TN) over known label slots.")
SUBSET_ACCURACY = _m("subset_accuracy", "gauge", _MVW, "Share of fully labelled events predicted exactly.")
ACCURACY = _m("accuracy", "gauge", _MVW, "Multiclass accuracy.")
CONFUSION = _m(
    "confusion", "gauge", (L_MODEL, L_VERSION, L_ACTUAL, L_PREDICTED, L_WINDOW),
    "Multiclass confusion counts.",
)
LABEL_CARDINALITY = _m(
    "label_cardinality", "gauge", (L_MODEL, L_VERSION, L_WINDOW, L_SOURCE),
    "Mean number of labels per event (predicted: by prediction time; actual: fully labelled joins).",
)
LABEL_DENSITY = _m(
    "label_density", "gauge", (L_MODEL, L_VERSION, L_WINDOW, L_SOURCE),
    "Label cardinality divided by the number of configured labels.",
)
# The additive parts of subset accuracy and label cardinality, so the cluster-wide figures can be recorded
# from sums across workers.
WINDOW_FULLY_LABELLED = _m(
    "window_fully_labelled", "gauge", _MVW,
    "Joined events in the window with every label known (additive; subset accuracy and actual cardinality).",
)
WINDOW_SUBSET_EXACT = _m(
    "window_subset_exact", "gauge", _MVW,
    "Fully labelled events in the window whose predicted label set is exactly right (additive).",
)
WINDOW_LABELS_PREDICTED = _m(
    "window_labels_predicted", "gauge", _MVW, "Labels predicted, summed over the window's predictions (additive).",
)
WINDOW_LABELS_ACTUAL = _m(
    "window_labels_actual", "gauge", _MVW, "Actual labels, summed over the window's fully labelled events (additive).",
)
LABEL_ECE = _m("label_ece", "gauge", _MVLW, "Expected calibration error, 10 equal-width bins.")
CALIBRATION_BIN = _m(
    "calibration_bin", "gauge", (L_MODEL, L_VERSION, L_LABEL, L_BIN, L_STAT, L_WINDOW),
    "Reliability-diagram sufficient statistics (additive): count, score_sum, positives per score bin.",
)
FEATURE_PSI = _m("feature_psi", "gauge", (L_MODEL, L_VERSION, L_FEATURE, L_WINDOW), "Feature PSI.")
SCORE_PSI = _m("score_psi", "gauge", _MVLW, "PSI of the label's score distribution against the reference.")
PREDICTED_POSITIVE_RATE = _m(
    "predicted_positive_rate", "gauge", _MVLW, "Share of predictions in which the label was predicted."
)
REFERENCE_POSITIVE_RATE = _m(
    "reference_positive_rate", "gauge", (L_MODEL, L_LABEL),
    "Share of reference predictions in which the label was predicted (for collapse alerts).",
)
FEATURE_MISSING_RATIO = _m(
    "feature_missing_ratio", "gauge", (L_MODEL, L_VERSION, L_FEATURE, L_WINDOW),
    "Share of predictions in which the feature was absent or null.",
)
LABEL_COOCCURRENCE_DRIFT = _m(
    "label_cooccurrence_drift", "gauge", _MVW, "PSI of the predicted label-pair distribution (docs/semantics.md)."
)
LABEL_COVERAGE = _m("label_coverage", "gauge", _MVW, "Joined events / predictions in the window.")
ESTIMATED_LABEL_PRECISION = _m(
    "estimated_label_precision", "gauge", _MVLW,
    "Expected precision of predictions still waiting for ground truth (calibrated scores, CBPE).",
)
ESTIMATED_LABEL_RECALL = _m(
    "estimated_label_recall", "gauge", _MVLW,
    "Expected recall of predictions still waiting for ground truth (calibrated scores, CBPE).",
)
ESTIMATED_TRUE_POSITIVES = _m(
    "estimated_label_true_positives", "gauge", _MVLW,
    "Expected true positives among predictions still waiting for ground truth; score bins too thin to "
    "calibrate count all their predicted positives (additive; the estimated-quality alert's bound).",
)
ESTIMATED_FALSE_NEGATIVES = _m(
    "estimated_label_false_negatives", "gauge", _MVLW,
    "Expected false negatives among predictions still waiting for ground truth; score bins too thin to "
    "calibrate count none (additive; the estimated-quality alert's bound).",
)
PENDING_PREDICTED_POSITIVES = _m(
    "window_pending_predicted_positives", "gauge", _MVLW,
    "Predictions made in the window still waiting for ground truth in which the label was predicted.",
)
PENDING_IN_WINDOW = _m(
    "window_pending", "gauge", _MVW, "Predictions made in the window still waiting for ground truth."
)
DRIFT_SAMPLE_OK = _m(
    "drift_sample_sufficient", "gauge", _MVW,
    "1 when the window holds enough predictions for PSI to be meaningful (sample-size guard), else 0.",
)
ERROR_BUDGET_BURN_RATE = _m(
    "error_budget_burn_rate", "gauge", (L_MODEL, L_LABEL, L_SLO, L_WINDOW),
    "SLO error ratio in the window / (1 - target).",
)
ERROR_BUDGET_REMAINING = _m(
    "error_budget_remaining", "gauge", (L_MODEL, L_LABEL, L_SLO),
    "1 - (error ratio over the SLO period)/(1 - target); negative when overspent.",
)
SLO_EVENTS = _m(
    "slo_events", "gauge", (L_MODEL, L_LABEL, L_SLO, L_WINDOW),
    "Events counted by the SLO's error ratio in the window (TP+FN for recall, TP+FP for precision).",
)
SLO_TARGET = _m("slo_target", "gauge", (L_MODEL, L_LABEL, L_SLO), "The SLO's objective target.")

THRESHOLD_ADVICE = _m(
    "threshold_advice", "gauge", (L_MODEL, L_VERSION, L_LABEL, L_OBJECTIVE, L_WINDOW),
    "Decision threshold that meets the label's SLO objective (recall: the highest that does; precision: "
    "the lowest), or maximises F1 without an SLO, on joined events of the window (docs/semantics.md).",
)
THRESHOLD_ADVICE_LOWER = _m(
    "threshold_advice_lower", "gauge", (L_MODEL, L_VERSION, L_LABEL, L_OBJECTIVE, L_WINDOW),
    "Lower end of the threshold advice's interval (Wilson 95% bounds; docs/semantics.md).",
)
THRESHOLD_ADVICE_UPPER = _m(
    "threshold_advice_upper", "gauge", (L_MODEL, L_VERSION, L_LABEL, L_OBJECTIVE, L_WINDOW),
    "Upper end of the threshold advice's interval (Wilson 95% bounds; docs/semantics.md).",
)
LABEL_PAIR_PREDICTED = _m(
    "label_pair_predicted", "gauge", (L_MODEL, L_VERSION, L_LABEL, L_LABEL_B, L_WINDOW),
    "Predictions in the window with both labels of the pair predicted (additive; with mlmon_predicted_"
    "positives and mlmon_window_predictions the pair's 2x2 table). Only the pairs of "
    "mlmon_reference_label_pair are exported.",
)
REFERENCE_LABEL_PAIR = _m(
    "reference_label_pair", "gauge", (L_MODEL, L_LABEL, L_LABEL_B),
    "Reference predictions with both labels of the pair predicted (the pairs that co-occur most there).",
)
REFERENCE_PREDICTIONS = _m("reference_predictions", "gauge", (L_MODEL,), "Predictions in the reference sample.")
# At most this many label pairs per model get pair counts (the most frequent in the reference), so the
# series stay linear in the number of labels.
LABEL_PAIRS_EXPORTED: Final = 32

# --- histograms ----------------------------------------------------------------------------------------
GROUND_TRUTH_DELAY_SECONDS = _m(
    "ground_truth_delay_seconds", "histogram", (L_MODEL,),
    "Ground-truth time minus prediction time at first join.",
)
PREDICTION_LATENCY_SECONDS = _m(
    "prediction_latency_seconds", "histogram", _MV, "Serving latency reported on prediction events."
)
GROUND_TRUTH_DELAY_BUCKETS: Final = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0,
                                     3 * 86400.0, 7 * 86400.0)
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- health --------------------------------------------------------------------------------------------
PENDING_JOINS = _m("pending_joins", "gauge", (L_MODEL, L_SIDE), "Events waiting for their partner.")
CONSUMER_LAG = _m("consumer_lag", "gauge", (L_TOPIC, L_PARTITION), "Consumer lag in messages.")
STATE_WRITE_FAILURES = _m(
    "state_write_failures_total", "counter", (),
    "State changelog writes that failed (each is retried with a backoff; /healthz says degraded meanwhile).",
)
STATE_RECORDS_WRITTEN = _m("state_records_written_total", "counter", (),
                           "Records written to the state changelog.")
STATE_BYTES_WRITTEN = _m("state_bytes_written_total", "counter", (),
                         "Key and value bytes written to the state changelog.")
STATE_WRITE_WAITS = _m(
    "state_write_waits_total", "counter", (),
    "Times consumption paused for the state write in flight: the input outran the changelog and the "
    "changes not yet written reached their bound.",
)
LOCAL_STORE_FAILURES = _m(
    "local_store_failures_total", "counter", (),
    "Writes to a partition's local copy of its changelog that failed: the copy is dropped (/healthz names "
    "the partition), and that partition's next restore reads its whole changelog. Figures are unaffected.",
)
LOCAL_STORE_UNSEALED = _m(
    "local_store_unsealed_bytes", "gauge", (L_PARTITION,),
    "Key and value bytes of changelog records a partition's local copy holds unsealed: a restart after a "
    "crash reads them from the changelog. At most 16 MiB; sealed every 60 s while records arrive, and when "
    "the input pauses with 1 MiB or more held.",
)
# Exported by the worker only (not by replay): its Kafka and state health.
WORKER_ONLY: Final = frozenset(m.name for m in (CONSUMER_LAG, STATE_WRITE_FAILURES, STATE_RECORDS_WRITTEN,
                                                STATE_BYTES_WRITTEN, STATE_WRITE_WAITS, LOCAL_STORE_FAILURES,
                                                LOCAL_STORE_UNSEALED))
BUILD_INFO = _m("build_info", "info", ("version", "python"), "Build information.")
LAST_EVENT_TIMESTAMP = _m(
    "last_event_timestamp_seconds", "gauge", (L_MODEL, L_TOPIC),
    "Event time of the newest valid event per topic (for ground-truth-stalled alerts).",
)


# --- per segment value (models[].segments): the window figures above, with the version label replaced by
# (segment, segment_value) and the version summed over. Bin-level series (calibration, score and feature
# bins, confusion cells, label pairs) and threshold advice stay per version only, to keep the series
# count per segment value small (docs/semantics.md).
def _segment_twin(base: MetricDef) -> MetricDef:
    assert base.labels[:2] == (L_MODEL, L_VERSION), base.name
    return MetricDef(PREFIX + "segment_" + base.name.removeprefix(PREFIX), base.kind,
                     (L_MODEL, L_SEGMENT, L_SEGMENT_VALUE, *base.labels[2:]), base.help + " Per segment value.")


SEGMENT_TWINS: Final = {base.name: _segment_twin(base) for base in (
    WINDOW_PREDICTIONS, WINDOW_JOINED, LABEL_COVERAGE, LABEL_OUTCOMES, LABEL_SUPPORT, LABEL_PRECISION,
    LABEL_RECALL, LABEL_F1, LABEL_PRECISION_LOWER, LABEL_PRECISION_UPPER, LABEL_RECALL_LOWER,
    LABEL_RECALL_UPPER, LABEL_F1_LOWER, LABEL_F1_UPPER, MICRO_F1, MACRO_F1, HAMMING_LOSS, SUBSET_ACCURACY,
    ACCURACY, LABEL_ECE, ESTIMATED_LABEL_PRECISION, ESTIMATED_LABEL_RECALL, PREDICTED_POSITIVE_RATE,
    FEATURE_MISSING_RATIO, DRIFT_SAMPLE_OK, FEATURE_PSI, SCORE_PSI, LABEL_COOCCURRENCE_DRIFT,
)}
SEGMENT_METRICS: Final = tuple(SEGMENT_TWINS.values())

ALL_METRICS: Final = (tuple(v for v in list(globals().values())
                            if isinstance(v, MetricDef) and v not in SEGMENT_METRICS) + SEGMENT_METRICS)

# --- alert names ---------------------------------------------------------------------------------------
ALERT_LABEL_ERROR_BUDGET_BURN: Final = "MLMonitorLabelErrorBudgetBurn"
ALERT_FEATURE_DRIFT: Final = "MLMonitorFeatureDrift"
ALERT_SCORE_DRIFT: Final = "MLMonitorScoreDrift"
ALERT_LABEL_COLLAPSE: Final = "MLMonitorLabelCollapse"
ALERT_CALIBRATION_DRIFT: Final = "MLMonitorCalibrationDrift"
ALERT_MISSING_FEATURES: Final = "MLMonitorMissingFeatures"
ALERT_LATENCY_HIGH: Final = "MLMonitorLatencyHigh"
ALERT_LABEL_COOCCURRENCE_DRIFT: Final = "MLMonitorLabelCooccurrenceDrift"
ALERT_GROUND_TRUTH_STALLED: Final = "MLMonitorGroundTruthStalled"
ALERT_CONSUMER_LAG: Final = "MLMonitorConsumerLag"
ALERT_INVALID_INPUT: Final = "MLMonitorInvalidInput"
ALERT_DOWN: Final = "MLMonitorDown"
ALERT_RETRAINING_RECOMMENDED: Final = "MLMonitorRetrainingRecommended"
ALERT_VERSION_REGRESSION: Final = "MLMonitorVersionRegression"
ALERT_ESTIMATED_QUALITY_LOW: Final = "MLMonitorEstimatedQualityLow"
ALL_ALERTS: Final = (
    ALERT_LABEL_ERROR_BUDGET_BURN, ALERT_FEATURE_DRIFT, ALERT_SCORE_DRIFT, ALERT_LABEL_COLLAPSE,
    ALERT_CALIBRATION_DRIFT, ALERT_MISSING_FEATURES, ALERT_LATENCY_HIGH, ALERT_LABEL_COOCCURRENCE_DRIFT,
    ALERT_GROUND_TRUTH_STALLED, ALERT_CONSUMER_LAG, ALERT_INVALID_INPUT, ALERT_DOWN,
    ALERT_RETRAINING_RECOMMENDED, ALERT_VERSION_REGRESSION, ALERT_ESTIMATED_QUALITY_LOW,
)
SEVERITIES: Final = ("page", "ticket", "info")

# --- rejection reasons (mlmon_invalid_events_total{reason}) ---------------------------------------------
class Reason:
    OVERSIZED: Final = "oversized"
    INVALID_UTF8: Final = "invalid_utf8"
    INVALID_JSON: Final = "invalid_json"
    NOT_AN_OBJECT: Final = "not_an_object"
    MISSING_FIELD: Final = "missing_field"
    WRONG_TYPE: Final = "wrong_type"
    INVALID_PREDICTION_ID: Final = "invalid_prediction_id"
    UNKNOWN_MODEL: Final = "unknown_model"
    BAD_TIMESTAMP: Final = "bad_timestamp"
    TIMESTAMP_OUT_OF_RANGE: Final = "timestamp_out_of_range"
    MISSING_SCORE: Final = "missing_score"
    SCORE_NOT_FINITE: Final = "score_not_finite"
    SCORE_OUT_OF_RANGE: Final = "score_out_of_range"
    UNKNOWN_LABEL: Final = "unknown_label"
    INVALID_LABELS: Final = "invalid_labels"
    INVALID_LATENCY: Final = "invalid_latency"
    INVALID_FEATURES: Final = "invalid_features"


ALL_REASONS: Final = tuple(v for k, v in vars(Reason).items() if k.isupper())

# Kafka header on dead-lettered messages.
DLQ_REASON_HEADER: Final = "mlmon-reason"
DLQ_DETAIL_HEADER: Final = "mlmon-detail"
DLQ_TOPIC_HEADER: Final = "mlmon-source-topic"
# The native field at fault, and for a mapped input the expression that read it (docs/attach.md).
DLQ_FIELD_HEADER: Final = "mlmon-field"
DLQ_EXPRESSION_HEADER: Final = "mlmon-expression"
# Where the original message was, so readers can drop the duplicates a worker crash can re-send.
DLQ_PARTITION_HEADER: Final = "mlmon-source-partition"
DLQ_OFFSET_HEADER: Final = "mlmon-source-offset"
