"""Alert summaries and descriptions, written once and rendered two ways.

The rules get Go templates (`{{ $labels.model }}`, `{{ printf "%.3f" $value }}`); the promtool tests get
the same text with the values a scenario must produce, so a test also checks the number an on-call
engineer will read. Fields that are not passed in `fixed` come from the alert's labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from monitor import conventions as c


@dataclass(frozen=True)
class Text:
    summary: str
    description: str
    value_format: str = "%.3f"


_BURN: Final = c.ALERT_LABEL_ERROR_BUDGET_BURN
_COLLAPSE: Final = c.ALERT_LABEL_COLLAPSE
_DOWN: Final = c.ALERT_DOWN
_RETRAIN: Final = c.ALERT_RETRAINING_RECOMMENDED

_WHOLE: Final[Mapping[str, Text]] = {
    _BURN: Text(
        "{model}/{label}: {slo} is burning its error budget at {value}x ({burnrate_tier})",
        "Over the last {long_window} the {slo} SLO (target {target}) of model {model} spent its error budget "
        "{value} times faster than sustainable. Tier {burnrate_tier} fires when the error ratio over "
        "{long_window} is above {error_ratio} ({threshold}x the budget) and above the budget {budget} "
        "beyond sampling noise (its Wilson and Poisson lower bounds are), on at least {min_events} labelled "
        "events, unless the last {short_window} is back under {error_ratio} beyond noise.",
    ),
    f"{_BURN}:mid": Text(
        "{model}/{label}: {slo} is burning its error budget at {value}x ({burnrate_tier})",
        "Over the last {long_window}, or {mid_window} when that fired it, the {slo} SLO (target {target}) of "
        "model {model} spent its error budget {value} times faster than sustainable. Tier {burnrate_tier} "
        "fires when the error ratio over {long_window} is above {error_ratio} ({threshold}x the budget) and "
        "above the budget {budget} beyond sampling noise (its Wilson and Poisson lower bounds are), on at "
        "least {min_events} labelled events; or, before {long_window} has turned over after an onset, when "
        "the error ratio over {mid_window} is above the budget beyond noise and {error_ratio} is within its "
        "Wilson interval; "
        "unless the last {short_window} is back under {error_ratio} beyond noise.",
    ),
    c.ALERT_FEATURE_DRIFT: Text(
        "{model} {version}: feature {feature} drifted (PSI {value})",
        "The PSI of feature {feature} over the last {window} is {value}, in the significant band "
        "(>= {significant}), with at least {min_samples} values in the window (F6 silent input drift).",
    ),
    c.ALERT_SCORE_DRIFT: Text(
        "{model} {version}: scores of label {label} drifted (PSI {value})",
        "The PSI of the score distribution of label {label} over the last {window} is {value}, in the "
        "significant band (>= {significant}), with at least {min_samples} predictions in the window.",
    ),
    f"{_COLLAPSE}:nothing": Text(
        "{model} {version}: label {label} is predicted for almost nothing",
        "Label {label} was predicted for a share {value} of the predictions over the last {windows} "
        "(the lowest among the windows that qualify), under {factor} of its reference rate, where the "
        "reference rate expects at least {min_expected} positives (F2 label collapse).",
        "%.4f",
    ),
    f"{_COLLAPSE}:everything": Text(
        "{model} {version}: label {label} is predicted for almost everything",
        "Label {label} was predicted for a share {value} of the predictions over the last {windows}: its "
        "negatives fell under {factor} of the reference, where the reference expects at least "
        "{min_expected} negatives (F2 label collapse).",
        "%.4f",
    ),
    c.ALERT_CALIBRATION_DRIFT: Text(
        "{model} {version}: label {label} is miscalibrated (ECE {value})",
        "The expected calibration error of label {label} over the last {windows} is {value}: above "
        "{threshold} by more than {noise_factor} times its sampling scale, on at least {min_events} "
        "labelled events. Its scores no longer mean what its threshold assumes (F1 threshold/calibration "
        "drift).",
    ),
    c.ALERT_MISSING_FEATURES: Text(
        "{model} {version}: feature {feature} missing in a share {value} of predictions",
        "Feature {feature} was absent or null in a share {value} of the predictions over the last {window} "
        "(alert above {threshold}, at least {min_samples} predictions; F4 missing features).",
    ),
    c.ALERT_LATENCY_HIGH: Text(
        "{model} {version}: serving latency p95 is {value}s",
        "The p95 of the serving latency reported on prediction events over the last {range} is {value}s, "
        "above the model's latency_slo_seconds of {threshold}s (F3 serving latency spike).",
    ),
    c.ALERT_LABEL_COOCCURRENCE_DRIFT: Text(
        "{model} {version}: the dependency between {label} and {label_b} changed (z {value})",
        "Over the last {window} the log odds ratio of labels {label} and {label_b} being predicted "
        "together moved from the reference's by at least {change} (a factor 2 in odds) and by {value} "
        "standard errors (alert at |z| >= {z}), on at least {min_samples} predictions (F7 "
        "label-dependency break).",
        "%.1f",
    ),
    c.ALERT_GROUND_TRUTH_STALLED: Text(
        "{model}: ground truth stopped arriving",
        "Predictions for model {model} kept arriving but no ground truth was accepted over one of the "
        "last {windows}, where its ground truth per prediction over the last {baseline} expected at "
        "least {min_expected} (or none in {stall} on a stream without ground truth): quality figures "
        "and SLO burn rates are going stale.",
    ),
    c.ALERT_CONSUMER_LAG: Text(
        "Consumer lag on {topic} is {value} messages",
        "The stream workers are {value} messages behind on topic {topic} (alert above {threshold}): "
        "every figure, and every alert, is that far behind.",
        "%.0f",
    ),
    c.ALERT_INVALID_INPUT: Text(
        "A share {value} of the events on {topic} is invalid",
        "Over the last {range} a share {value} of the events on {topic} was rejected to the dead-letter "
        "topic (alert above {threshold}). See mlmon_invalid_events_total by reason.",
    ),
    c.ALERT_VERSION_REGRESSION: Text(
        "{model} {version}: {slo} significantly worse than the other versions (z {value})",
        "Over the last {windows} the {slo} SLO (target {target}) error ratio of version {version} is "
        "higher than that of the model's other versions by {value} standard errors (alert at {z}), and "
        "its own Wilson lower bound is above the budget: roll the version back.",
        "%.1f",
    ),
    c.ALERT_ESTIMATED_QUALITY_LOW: Text(
        "{model} {version}: estimated {objective} of {label} is at most {value}, under the {slo} target",
        "The {objective} of label {label} estimated from calibrated scores (CBPE) for predictions of "
        "the last {window} still waiting for ground truth is at most {value} (its upper Wilson bound, "
        "z {z}, summed over workers), under the {slo} target {target}: an early warning before labels "
        "confirm it.",
    ),
    f"{_DOWN}:all": Text(
        "No mlmon worker of job {job} is up",
        "Prometheus scrapes no worker of job {job}: no quality, drift or SLO alert can fire while this lasts.",
    ),
    f"{_DOWN}:instance": Text(
        "mlmon worker {instance} is down",
        "Prometheus cannot scrape worker {instance} of job {job}; its partitions should move to the other "
        "workers.",
    ),
    f"{_RETRAIN}:feature_drift": Text(
        "{model} {version}: retraining recommended ({value} features drifted)",
        "{value} features of model {model} {version} stayed in the significant PSI band (>= {significant}) "
        "over the last {window}. The retraining relay decides, with its cooldown, whether to trigger.",
        "%.0f",
    ),
    f"{_RETRAIN}:slo_burn": Text(
        "{model}: retraining recommended ({slo} burning {value}x over {window})",
        "The {slo} SLO of model {model} has burned its error budget at {value}x (above {threshold}x) over "
        "the last {window}: quality has been degraded for days, not minutes. The retraining relay decides, "
        "with its cooldown, whether to trigger.",
    ),
}

# The burn alerts of a per-segment SLO (one per segment value): the same texts, naming the value.
SEGMENT: Final = "segment"


def _for_segment(text: Text) -> Text:
    return Text(text.summary.replace("{model}/{label}:", "{model}/{label} {segment}={segment_value}:", 1),
                text.description.replace("of model {model}", "of model {model} on the events with "
                                         "{segment} {segment_value}", 1), text.value_format)


TEXTS: Final[Mapping[str, Text]] = {
    **_WHOLE, **{f"{key}:{SEGMENT}": _for_segment(_WHOLE[key]) for key in (_BURN, f"{_BURN}:mid")}}


class _Fields(dict[str, str]):
    """format_map source: fixed fields, then alert labels (as templates when labels is None)."""

    def __init__(self, fixed: Mapping[str, str], labels: Mapping[str, str] | None) -> None:
        super().__init__(fixed)
        self.labels = labels

    def __missing__(self, key: str) -> str:
        if self.labels is None:
            return "{{ $labels." + key + " }}"
        return self.labels[key]


def render(key: str, runbook_url: str, fixed: Mapping[str, str],
           labels: Mapping[str, str] | None = None, value: float | None = None) -> dict[str, str]:
    """Annotations of one alert rule (labels None: Go templates) or of one expected alert (labels given)."""
    text = TEXTS[key]
    if labels is None:
        shown = '{{ printf "' + text.value_format + '" $value }}'
    else:
        shown = text.value_format % value if value is not None else ""
    fields = _Fields({**fixed, "value": shown}, labels)
    return {
        "description": text.description.format_map(fields),
        "runbook_url": runbook_url,
        "summary": text.summary.format_map(fields),
    }
