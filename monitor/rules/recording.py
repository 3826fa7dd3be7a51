"""Recording rules: sum the additive statistics across workers, then compute every ratio from the sums.

Each worker exports its own series and its own ratio gauges, which are exact only when it is the only
worker. Here the counts are summed first (`sum by` the metric's declared labels, so whatever target labels
the scrape adds drop out) and precision, recall, F1, ECE, PSI, rates and burn rates are recomputed from the
sums, so N workers give exactly the figures one worker would. Rules are listed in dependency order in one
group: Prometheus evaluates a group's rules sequentially, so each sees the previous ones' fresh results.
"""

from __future__ import annotations

from typing import Any

from monitor import conventions as c
from monitor.config import ModelConfig, MonitorConfig, format_duration
from monitor.rules import names as n
from monitor.rules.options import RuleOptions
from monitor.rules.promql import by, labels, num, sel

Rule = dict[str, Any]
TP, FP, FN, TN = c.OUTCOMES
COUNT, SCORE_SUM, POSITIVES = c.CALIBRATION_STATS
MVLW = (c.L_MODEL, c.L_VERSION, c.L_LABEL, c.L_WINDOW)
MVW = (c.L_MODEL, c.L_VERSION, c.L_WINDOW)
MVFW = (c.L_MODEL, c.L_VERSION, c.L_FEATURE, c.L_WINDOW)
MLW = (c.L_MODEL, c.L_LABEL, c.L_WINDOW)
MLS = (c.L_MODEL, c.L_LABEL, c.L_SLO)
MLSW = (*MLS, c.L_WINDOW)
MVLSW = (c.L_MODEL, c.L_VERSION, c.L_LABEL, c.L_SLO, c.L_WINDOW)
PAIR = (c.L_MODEL, c.L_VERSION, c.L_LABEL, c.L_LABEL_B, c.L_WINDOW)
MSS = (*MLS, c.L_SEGMENT, c.L_SEGMENT_VALUE)  # one per-segment SLO's value of its segment
MSSW = (c.L_MODEL, c.L_SEGMENT, c.L_SEGMENT_VALUE, c.L_LABEL, c.L_WINDOW)


def record(name: str, expr: str, extra: dict[str, str] | None = None) -> Rule:
    rule: Rule = {"record": name, "expr": expr}
    if extra:
        rule["labels"] = dict(sorted(extra.items()))
    return rule


def outcome_count(group: tuple[str, ...], outcomes: tuple[str, ...], matchers: dict[str, str] | None = None,
                  source: str = n.LABEL_OUTCOMES_SUM) -> str:
    if len(outcomes) == 1:
        return by("sum", group, sel(source, {**(matchers or {}), c.L_OUTCOME: outcomes[0]}))
    return by("sum", group, sel(source, matchers, {c.L_OUTCOME: "|".join(outcomes)}))


def count_ratio(group: tuple[str, ...], num_outcomes: tuple[str, ...], den_outcomes: tuple[str, ...],
                matchers: dict[str, str] | None = None, source: str = n.LABEL_OUTCOMES_SUM) -> str:
    """sum(num)/sum(den) over outcome counts (of `source`); absent when the denominator is 0 (undefined,
    not 0).

    `or 0 * den` keeps the ratio defined (as 0) when no series of the numerator's outcomes exists.
    """
    numer = outcome_count(group, num_outcomes, matchers, source)
    den = outcome_count(group, den_outcomes, matchers, source)
    return f"({numer} or 0 * {den})\n/\n({den} > 0)"


def _aggregates() -> list[Rule]:
    rules = [record(name, by("sum", metric.labels, metric.name)) for metric, name in n.ADDITIVE]
    rules += [record(name, by("max", metric.labels, metric.name)) for metric, name in n.CONSTANTS]
    return rules


def _quality() -> list[Rule]:
    tp = outcome_count(MVLW, (TP,))
    counted = outcome_count(MVLW, (TP, FP, FN))
    tp_or_zero = f"({tp} or 0 * {counted})"
    cal = n.CALIBRATION_BIN_SUM
    gap = f"abs({sel(cal, {c.L_STAT: POSITIVES})} - ignoring ({c.L_STAT}) {sel(cal, {c.L_STAT: SCORE_SUM})})"
    return [
        record(n.LABEL_PRECISION, count_ratio(MVLW, (TP,), (TP, FP))),
        record(n.LABEL_RECALL, count_ratio(MVLW, (TP,), (TP, FN))),
        # F1 = 2TP / (2TP + FP + FN); defined (as 0) even when precision or recall is not.
        record(n.LABEL_F1, f"2 * {tp_or_zero}\n/\n(({tp_or_zero} + {counted}) > 0)"),
        record(n.LABEL_COVERAGE, f"{n.WINDOW_JOINED_SUM}\n/\n({n.WINDOW_PREDICTIONS_SUM} > 0)"),
        record(n.LABEL_ECE, f"{by('sum', MVLW, gap)}\n/\n({by('sum', MVLW, sel(cal, {c.L_STAT: COUNT}))} > 0)"),
        record(n.LABEL_ECE_NOISE, _ece_noise()),
    ]


def _ece_noise() -> str:
    """sum over bins of sqrt(count * mean (1 - mean)) / N (monitor.rules.stats.ece_noise): empty bins drop out."""
    cal = n.CALIBRATION_BIN_SUM
    s, cnt = sel(cal, {c.L_STAT: SCORE_SUM}), sel(cal, {c.L_STAT: COUNT})
    per_bin = f"sqrt(clamp_min({s} * ignoring ({c.L_STAT}) ({cnt} - ignoring ({c.L_STAT}) {s})\n" \
              f"/ ignoring ({c.L_STAT}) ({cnt} > 0), 0))"
    return f"{by('sum', MVLW, per_bin)}\n/\n({by('sum', MVLW, cnt)} > 0)"


def wilson_lower(errors: str, events: str, z: float) -> str:
    """monitor.rules.stats.wilson_cc_lower in PromQL; 0 without errors, absent without events."""
    z2 = z * z
    root = f"sqrt({num(z2 - 2)} - 1 / {events} + 4 * {errors} * ({events} - {errors} + 1) / {events})"
    bound = f"(2 * {errors} + {num(z2 - 1)} - {num(z)} * {root})\n/ (2 * (({events} > 0) + {num(z2)}))"
    return f"clamp_min({bound}, 0)\n* ({errors} > bool 0)"


def wilson_upper(errors: str, events: str, z: float) -> str:
    """monitor.rules.stats.wilson_cc_upper in PromQL; 1 when every event is an error."""
    z2 = z * z
    root = f"sqrt({num(z2 + 2)} - 1 / {events} + 4 * {errors} * ({events} - {errors} - 1) / {events})"
    bound = f"(2 * {errors} + {num(z2 + 1)} + {num(z)} * {root})\n/ (2 * (({events} > 0) + {num(z2)}))"
    return f"clamp_max({bound}\n+ ({errors} >= bool {events}), 1)"


def poisson_lower(errors: str, events: str, z: float) -> str:
    """monitor.rules.stats.poisson_lower in PromQL; 0 without errors (1 / 0 is +Inf, clamped to 0),
    absent without events."""
    base = f"clamp_min(1 - 1 / (9 * {errors}) - {num(z / 3)} / sqrt({errors}), 0)"
    return f"{errors} * {base} ^ 3\n/ ({events} > 0)"


def _slo_statistics(opts: RuleOptions) -> list[Rule]:
    """Error ratios and their Wilson bounds (all versions, and per version), and each version's
    two-proportion z against the rest of its model. Inputs are the per-SLO counts of slo_rules."""
    rules = []
    for errors, events, ratio, lower, upper in (
            (n.SLO_ERRORS, n.SLO_EVENTS, n.SLO_ERROR_RATIO, n.SLO_ERROR_RATIO_LOWER, n.SLO_ERROR_RATIO_UPPER),
            (n.SLO_ERRORS_BY_VERSION, n.SLO_EVENTS_BY_VERSION, n.SLO_ERROR_RATIO_BY_VERSION,
             n.SLO_ERROR_RATIO_LOWER_BY_VERSION, n.SLO_ERROR_RATIO_UPPER_BY_VERSION)):
        rules += [
            record(ratio, f"{errors}\n/ ({events} > 0)"),
            record(lower, wilson_lower(errors, events, opts.burn_z)),
            record(upper, wilson_upper(errors, events, opts.burn_z)),
        ]
    rules.append(record(n.SLO_ERROR_RATIO_POISSON_LOWER, poisson_lower(n.SLO_ERRORS, n.SLO_EVENTS, opts.burn_z)))
    # The rest of the model: its counts minus the version's.
    mlsw = f"on ({labels(MLSW)}) group_left ()"
    rest_e, rest_n = f"(-1 * {n.SLO_ERRORS_BY_VERSION} + {mlsw} {n.SLO_ERRORS})", \
        f"(-1 * {n.SLO_EVENTS_BY_VERSION} + {mlsw} {n.SLO_EVENTS})"
    e1, n1 = n.SLO_ERRORS_BY_VERSION, n.SLO_EVENTS_BY_VERSION
    pooled = f"(({e1} + {rest_e}) / ({n1} + {rest_n}))"
    var = f"({pooled} * (1 - {pooled}) * (1 / ({n1} > 0) + 1 / ({rest_n} > 0)))"
    z = f"({e1} / ({n1} > 0) - {rest_e} / ({rest_n} > 0))\n/ sqrt({var} > 0)"
    rules.append(record(n.VERSION_REGRESSION_Z, z))
    return rules


def _estimated_bounds(opts: RuleOptions) -> list[Rule]:
    """Upper Wilson bounds (z = burn_z) of the estimated recall and precision of pending predictions: one
    minus the lower bound of the expected misses (false negatives among expected positives, false
    positives among predicted positives). The expected counts are summed over workers; they are not whole
    numbers, which the formula does not need. Absent under one expected positive (nothing to bound)."""
    tp, fn, pp = n.ESTIMATED_TRUE_POSITIVES_SUM, n.ESTIMATED_FALSE_NEGATIVES_SUM, n.PENDING_PREDICTED_POSITIVES_SUM
    positives = f"(({tp} + {fn}) >= 1)"
    return [
        record(n.ESTIMATED_RECALL_UPPER, f"1 - (\n{wilson_lower(fn, positives, opts.burn_z)}\n)"),
        record(n.ESTIMATED_PRECISION_UPPER, f"1 - (\n{wilson_lower(f'({pp} - {tp})', f'({pp} >= 1)', opts.burn_z)}\n)"),
    ]


def _rates() -> list[Rule]:
    per_window = f"on ({labels(MVW)}) group_left () ({n.WINDOW_PREDICTIONS_SUM} > 0)"
    # The predictions count broadcast to every label of its model/version/window.
    predictions_by_label = (f"({n.PREDICTED_POSITIVE_RATE} * 0 + on ({labels(MVW)}) group_left () "
                            f"{n.WINDOW_PREDICTIONS_SUM})")
    ref_rate = f"on ({c.L_MODEL}, {c.L_LABEL}) group_left ()"
    return [
        record(n.PREDICTED_POSITIVE_RATE, f"{n.PREDICTED_POSITIVES_SUM}\n/ {per_window}"),
        record(n.FEATURE_MISSING_RATIO, f"{n.FEATURE_MISSING_SUM}\n/ {per_window}"),
        record(n.PREDICTED_POSITIVES_EXPECTED,
               f"{predictions_by_label}\n* {ref_rate} {n.REFERENCE_POSITIVE_RATE_MAX}"),
        record(n.PREDICTED_NEGATIVES_EXPECTED,
               f"{predictions_by_label}\n* {ref_rate} (1 - {n.REFERENCE_POSITIVE_RATE_MAX})"),
    ]


def _share(counts: str, group: tuple[str, ...]) -> str:
    """Smoothed share (count + a) / (total + a * bins), as in monitor.engine.metrics.drift.psi."""
    a = num(c.PSI_ALPHA)
    total = f"{by('sum', group, counts)} + {a} * {by('count', group, counts)}"
    return f"({counts} + {a})\n/ on ({labels(group)}) group_left ()\n({total})"


def _psi(current_share: str, reference_share: str, ref_on: tuple[str, ...], group: tuple[str, ...]) -> str:
    match = f"on ({labels(ref_on)}) group_left ()"
    term = f"({current_share} - {match} {reference_share})\n* ln({current_share} / {match} {reference_share})"
    return by("sum", group, f"\n{term}\n")


def _drift() -> list[Rule]:
    feature_ref = (c.L_MODEL, c.L_FEATURE)
    score_ref = (c.L_MODEL, c.L_LABEL)
    return [
        record(n.FEATURE_BIN_SHARE, _share(n.FEATURE_BIN_SUM, MVFW)),
        record(n.REFERENCE_FEATURE_BIN_SHARE, _share(n.REFERENCE_FEATURE_BIN_MAX, feature_ref)),
        record(n.FEATURE_PSI, _psi(n.FEATURE_BIN_SHARE, n.REFERENCE_FEATURE_BIN_SHARE,
                                   (*feature_ref, c.L_BIN), MVFW)),
        record(n.SCORE_BIN_SHARE, _share(n.SCORE_BIN_SUM, MVLW)),
        record(n.REFERENCE_SCORE_BIN_SHARE, _share(n.REFERENCE_SCORE_BIN_MAX, score_ref)),
        record(n.SCORE_PSI, _psi(n.SCORE_BIN_SHARE, n.REFERENCE_SCORE_BIN_SHARE, (*score_ref, c.L_BIN), MVLW)),
        # Label pairs are not exported as additive counts, so this cannot be recomputed exactly. Workers see
        # random shares of the traffic (partitioned by prediction_id), so a real dependency break shows on
        # every worker: the minimum over workers with enough data fires only when all of them agree.
        record(n.LABEL_COOCCURRENCE_DRIFT, by(
            "min", MVW,
            f"{c.LABEL_COOCCURRENCE_DRIFT.name}\nand on ({n.L_INSTANCE}, {n.L_JOB}, {labels(MVW)}) "
            f"({c.DRIFT_SAMPLE_OK.name} == 1)",
        )),
    ]


def log_odds(both: str, first: str, second: str, total: str) -> tuple[str, str]:
    """(log odds ratio, variance) of a pair's 2x2 table (monitor.rules.stats.log_odds_ratio)."""
    cells = (f"({both} + 0.5)", f"({first} - {both} + 0.5)", f"({second} - {both} + 0.5)",
             f"({total} - {first} - {second} + {both} + 0.5)")
    ratio = f"ln({cells[0]} * {cells[3]}\n/ ({cells[1]} * {cells[2]}))"
    return ratio, " + ".join(f"1 / {x}" for x in cells)


def _pairs() -> list[Rule]:
    """Label dependency per exported pair: the log odds ratio of its 2x2 table now and in the reference.

    The odds ratio measures the dependency alone: it does not move when either label's rate moves, nor
    with the share of events that carry fewer than two labels, and it is 1 for independent labels.
    """
    pair, ref_pair = n.LABEL_PAIR_SUM, n.REFERENCE_LABEL_PAIR_MAX
    to_b = f'label_replace({{}}, "{c.L_LABEL_B}", "$1", "{c.L_LABEL}", "(.+)")'
    mvlw, mvbw = labels(MVLW), labels((c.L_MODEL, c.L_VERSION, c.L_LABEL_B, c.L_WINDOW))
    ref_count = f"{n.REFERENCE_POSITIVE_RATE_MAX}\n* on ({c.L_MODEL}) group_left () {n.REFERENCE_PREDICTIONS_MAX}"
    lor, var = log_odds(pair, n.LABEL_PAIR_FIRST, n.LABEL_PAIR_SECOND, n.LABEL_PAIR_TOTAL)
    ref_first = f"({ref_pair} * 0 + on ({c.L_MODEL}, {c.L_LABEL}) group_left () {n.REFERENCE_POSITIVES})"
    ref_second = (f"({ref_pair} * 0 + on ({c.L_MODEL}, {c.L_LABEL_B}) group_left () "
                  f"{to_b.format(n.REFERENCE_POSITIVES)})")
    ref_total = f"({ref_pair} * 0 + on ({c.L_MODEL}) group_left () {n.REFERENCE_PREDICTIONS_MAX})"
    ref_lor, ref_var = log_odds(ref_pair, ref_first, ref_second, ref_total)
    ref_on = f"on ({c.L_MODEL}, {c.L_LABEL}, {c.L_LABEL_B}) group_left ()"
    return [
        record(n.LABEL_PAIR_FIRST, f"{pair} * 0 + on ({mvlw}) group_left () {n.PREDICTED_POSITIVES_SUM}"),
        record(n.LABEL_PAIR_SECOND,
               f"{pair} * 0 + on ({mvbw}) group_left () {to_b.format(n.PREDICTED_POSITIVES_SUM)}"),
        record(n.LABEL_PAIR_TOTAL, f"{pair} * 0 + on ({labels(MVW)}) group_left () {n.WINDOW_PREDICTIONS_SUM}"),
        record(n.LABEL_PAIR_LOG_ODDS, lor),
        record(n.LABEL_PAIR_LOG_ODDS_VAR, var),
        record(n.REFERENCE_POSITIVES, ref_count),
        record(n.REFERENCE_LABEL_PAIR_LOG_ODDS, ref_lor),
        record(n.REFERENCE_LABEL_PAIR_LOG_ODDS_VAR, ref_var),
        record(n.LABEL_PAIR_DEPENDENCY_Z,
               f"({n.LABEL_PAIR_LOG_ODDS} - {ref_on} {n.REFERENCE_LABEL_PAIR_LOG_ODDS})\n"
               f"/ sqrt({n.LABEL_PAIR_LOG_ODDS_VAR} + {ref_on} {n.REFERENCE_LABEL_PAIR_LOG_ODDS_VAR})"),
    ]


def _health() -> list[Rule]:
    bucket = f"{c.PREDICTION_LATENCY_SECONDS.name}_bucket[{n.LATENCY_RANGE}]"
    rules = [record(n.PREDICTION_LATENCY_P95, (
        f"histogram_quantile(0.95, sum by ({c.L_MODEL}, {c.L_VERSION}, {n.L_LE}) (rate({bucket})))"
    ))]
    for topic, valid in ((c.TOPIC_PREDICTIONS, c.PREDICTIONS_TOTAL), (c.TOPIC_GROUND_TRUTH, c.GROUND_TRUTH_TOTAL)):
        invalid = f"rate({sel(c.INVALID_EVENTS_TOTAL.name, {c.L_TOPIC: topic})}[{n.INVALID_RANGE}])"
        # `or vector(0)`: input that is all invalid has no valid-event series at all.
        total = f"sum({invalid}) + (sum(rate({valid.name}[{n.INVALID_RANGE}])) or vector(0))"
        ratio = f"sum by ({c.L_TOPIC}) ({invalid})\n/ on () group_left ()\n(({total}) > 0)"
        rules.append(record(n.INVALID_EVENTS_RATIO, ratio, {c.L_TOPIC: topic}))
    return rules


def slo_rules(model: ModelConfig) -> list[Rule]:
    """Burn rate per SLO and window (over all versions and per version), the budget left over the SLO's
    period, and the SLO's error and event counts that the Wilson bounds are computed from."""
    rules = []
    for slo in model.slos:
        match = {c.L_MODEL: model.name, c.L_LABEL: slo.label}
        errors = (FN,) if slo.objective == "recall" else (FP,)
        ratio = count_ratio(MLW, errors, (TP, *errors), match)
        # Static model/slo labels repeat what the expression yields; they keep rules of different SLOs
        # distinct for promtool's duplicate-rule lint.
        static = {c.L_MODEL: model.name, c.L_SLO: slo.name}
        rules.append(record(n.ERROR_BUDGET_BURN_RATE, f"{ratio}\n/ (1 - {num(slo.target)})", static))
        period = sel(n.ERROR_BUDGET_BURN_RATE, {**match, c.L_SLO: slo.name, c.L_WINDOW: format_duration(slo.period)})
        rules.append(record(n.ERROR_BUDGET_REMAINING, f"1 - {by('max', MLS, period)}", static))
        for group, err_name, events_name in ((MLW, n.SLO_ERRORS, n.SLO_EVENTS),
                                             (MVLW, n.SLO_ERRORS_BY_VERSION, n.SLO_EVENTS_BY_VERSION)):
            counted = outcome_count(group, (TP, *errors), match)
            rules.append(record(err_name, f"{outcome_count(group, errors, match)} or 0 * {counted}", static))
            rules.append(record(events_name, counted, static))
        by_version = count_ratio(MVLW, errors, (TP, *errors), match)
        rules.append(record(n.ERROR_BUDGET_BURN_RATE_BY_VERSION, f"{by_version}\n/ (1 - {num(slo.target)})", static))
    return rules


def model_rules(model: ModelConfig) -> list[Rule]:
    enough = f"{sel(n.WINDOW_PREDICTIONS_SUM, {c.L_MODEL: model.name})} >= bool {num(model.drift.min_samples)}"
    return [record(n.DRIFT_SAMPLE_OK, enough, {c.L_MODEL: model.name}), *slo_rules(model)]


def recording_groups(cfg: MonitorConfig, opts: RuleOptions | None = None) -> list[dict[str, Any]]:
    opts = opts or RuleOptions()
    rules = _aggregates() + _quality() + _rates() + _drift() + _pairs() + _health()
    for model in cfg.models:
        rules += model_rules(model)
    rules += _slo_statistics(opts)
    rules += _estimated_bounds(opts)
    rules += dashboard_rules()
    if any(model.segments for model in cfg.models):
        rules += segment_rules()
    # After the per-segment sums they read (a group's rules are evaluated in order).
    rules += segment_slo_rules(cfg, opts)
    return [{"name": "mlmon.recording", "rules": rules}]


# --- Dashboard inputs ---------------------------------------------------------------------------------------
# Every panel reads recorded series: the cluster-wide figures above and these. Counters are rated per series
# first and summed after, by the metric's declared labels (so `partition`, `instance` and `job` drop out):
# the exporter labels counters with their partition, so a partition moving to another worker starts a new
# series there instead of a drop that rate() would read as a reset (docs/operations.md "Scaling out").


def _sum_of_rates(metric: c.MetricDef, extra: tuple[str, ...] = (), suffix: str = "") -> str:
    return by("sum", (*metric.labels, *extra), f"rate({metric.name}{suffix}[{n.HEALTH_RANGE}])")


def _accuracy() -> str:
    """trace / total of the summed confusion matrix; the diagonal is the cells whose actual = predicted,
    picked by matching each cell against a copy of the `actual` label under the name `predicted`."""
    mvw = labels(MVW)
    diagonal_keys = (f'label_replace(group by ({mvw}, {c.L_ACTUAL}) ({n.CONFUSION_SUM}), '
                     f'"{c.L_PREDICTED}", "$1", "{c.L_ACTUAL}", "(.*)")')
    trace = by("sum", MVW, f"{n.CONFUSION_SUM}\nand on ({mvw}, {c.L_ACTUAL}, {c.L_PREDICTED})\n{diagonal_keys}")
    return f"{trace}\n/\n({by('sum', MVW, n.CONFUSION_SUM)} > 0)"


def dashboard_rules() -> list[Rule]:
    return [
        record(n.CONSUMER_LAG_SUM, by("sum", (c.L_TOPIC,), c.CONSUMER_LAG.name)),
        record(n.PENDING_JOINS_SUM, by("sum", c.PENDING_JOINS.labels, c.PENDING_JOINS.name)),
        record(n.PREDICTIONS_RATE, _sum_of_rates(c.PREDICTIONS_TOTAL)),
        record(n.GROUND_TRUTH_RATE, _sum_of_rates(c.GROUND_TRUTH_TOTAL)),
        record(n.JOINED_RATE, _sum_of_rates(c.JOINED_TOTAL)),
        record(n.JOIN_EXPIRED_RATE, _sum_of_rates(c.JOIN_EXPIRED_TOTAL)),
        record(n.INVALID_EVENTS_RATE, _sum_of_rates(c.INVALID_EVENTS_TOTAL)),
        record(n.PREDICTION_LATENCY_BUCKET_RATE, _sum_of_rates(c.PREDICTION_LATENCY_SECONDS, (n.L_LE,), "_bucket")),
        record(n.GROUND_TRUTH_DELAY_BUCKET_RATE, _sum_of_rates(c.GROUND_TRUTH_DELAY_SECONDS, (n.L_LE,), "_bucket")),
        record(n.CONFUSION_SUM, by("sum", c.CONFUSION.labels, c.CONFUSION.name)),
        record(n.ACCURACY, _accuracy()),
        record(n.ESTIMATED_LABEL_PRECISION_MIN, by("min", MVLW, c.ESTIMATED_LABEL_PRECISION.name)),
        record(n.ESTIMATED_LABEL_RECALL_MIN, by("min", MVLW, c.ESTIMATED_LABEL_RECALL.name)),
        *(record(name, by("sum", MVW, metric.name)) for metric, name in (
            (c.WINDOW_FULLY_LABELLED, n.FULLY_LABELLED_SUM), (c.WINDOW_SUBSET_EXACT, n.SUBSET_EXACT_SUM),
            (c.WINDOW_LABELS_PREDICTED, n.LABELS_PREDICTED_SUM), (c.WINDOW_LABELS_ACTUAL, n.LABELS_ACTUAL_SUM))),
        record(n.SUBSET_ACCURACY, f"{n.SUBSET_EXACT_SUM}\n/\n({n.FULLY_LABELLED_SUM} > 0)"),
        record(n.LABEL_CARDINALITY, f"{n.LABELS_PREDICTED_SUM}\n/\n({n.WINDOW_PREDICTIONS_SUM} > 0)",
               {c.L_SOURCE: "predicted"}),
        record(n.LABEL_CARDINALITY, f"{n.LABELS_ACTUAL_SUM}\n/\n({n.FULLY_LABELLED_SUM} > 0)", {c.L_SOURCE: "actual"}),
    ]


def segment_rules() -> list[Rule]:
    """The segment panels' inputs: per segment value counts summed across workers. The panels compute
    precision, recall and F1 from them, so N workers show what one would (as long as every worker tracks
    the same values: a value that took a slot on one worker and fell into `_other` on another is split)."""
    return [record(name, by("sum", metric.labels, metric.name)) for metric, name in n.SEGMENT_ADDITIVE]


def segment_slo_rules(cfg: MonitorConfig, opts: RuleOptions) -> list[Rule]:
    """Per-segment SLOs (slos[].per_segment): what slo_rules and _slo_statistics record for the whole
    model, per value of the SLO's segment, from the summed per-segment outcome counts: the burn rate,
    the error and event counts and the bounds of the error ratio that the burn tiers read. Each SLO adds
    one series per name, window and segment value the workers export: at most max_values + 2 values per
    worker, whatever the traffic (docs/alerting.md, Per-segment SLOs)."""
    rules = []
    for model in cfg.models:
        for slo in model.slos:
            if slo.per_segment is None:
                continue
            match = {c.L_MODEL: model.name, c.L_SEGMENT: slo.per_segment, c.L_LABEL: slo.label}
            errors = (FN,) if slo.objective == "recall" else (FP,)
            source = n.SEGMENT_LABEL_OUTCOMES_SUM
            ratio = count_ratio(MSSW, errors, (TP, *errors), match, source)
            static = {c.L_MODEL: model.name, c.L_SLO: slo.name, c.L_SEGMENT: slo.per_segment}
            counted = outcome_count(MSSW, (TP, *errors), match, source)
            rules += [
                record(n.SEGMENT_ERROR_BUDGET_BURN_RATE, f"{ratio}\n/ (1 - {num(slo.target)})", static),
                record(n.SEGMENT_SLO_ERRORS, f"{outcome_count(MSSW, errors, match, source)} or 0 * {counted}", static),
                record(n.SEGMENT_SLO_EVENTS, counted, static),
            ]
    if not rules:
        return []
    errors_, events = n.SEGMENT_SLO_ERRORS, n.SEGMENT_SLO_EVENTS
    return [
        *rules,
        record(n.SEGMENT_SLO_ERROR_RATIO_LOWER, wilson_lower(errors_, events, opts.burn_z)),
        record(n.SEGMENT_SLO_ERROR_RATIO_UPPER, wilson_upper(errors_, events, opts.burn_z)),
        record(n.SEGMENT_SLO_ERROR_RATIO_POISSON_LOWER, poisson_lower(errors_, events, opts.burn_z)),
    ]
