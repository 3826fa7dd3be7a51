"""The statistics behind the alert rules against independent oracles (scipy, statsmodels, numpy counts).

monitor.rules.stats holds the formulas the recording rules evaluate (the promtool tests check that
PromQL computes exactly these); here they are checked against what they claim to be: a bound whose
false-alarm probability is small, a z statistic equal to statsmodels', an odds-ratio interval equal to
scipy's, and engine pair counts equal to a direct count of the events.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, gamma, norm
from scipy.stats.contingency import odds_ratio
from statsmodels.stats import proportion
from statsmodels.stats.contingency_tables import Table2x2

from monitor.conventions import LABEL_PAIRS_EXPORTED
from monitor.engine.engine import Engine
from monitor.engine.metrics.drift import exported_pairs
from monitor.reference import pair_counts, reference_from_lines
from monitor.rules import stats
from tests.conftest import small_config
from tests.events import BASE, ground_truth, prediction

Z = 3.09  # RuleOptions.burn_z


def _false_alarm(theta: float, n: int, z: float = Z) -> float:
    """P(the Wilson lower bound of X/n exceeds theta) for X ~ Binomial(n, theta): exact, from scipy."""
    first = next((x for x in range(n + 1) if stats.wilson_cc_lower(x, n, z) > theta), None)
    return 0.0 if first is None else float(binom.sf(first - 1, n, theta))


# A true ratio -> the worst chance per window that the lower bound exceeds it, over window sizes from 50
# events up: the bound alone (the tiers test it against the budget; docs/alerting.md). The bound is a normal
# approximation: skewed small ratios on few events come out worse than the nominal 0.1%.
WORST = {0.0144: 0.006, 0.06: 0.0035, 0.15: 0.0025, 0.575: 0.001, 0.915: 0.001}


@pytest.mark.parametrize("theta", sorted(WORST))
def test_wilson_lower_bound_false_alarms_per_window(theta: float) -> None:
    """A label whose true error ratio sits exactly on a tier's threshold (the worst healthy case): the
    exact chance that one window's bound says otherwise, for every window size from min_events up."""
    sizes = [*range(50, 400, 7), 1000, 5000, 20000]
    chances = [_false_alarm(theta, n) for n in sizes]
    assert max(chances) <= WORST[theta]
    assert np.mean(chances) <= 0.003


def test_wilson_bounds_bracket_the_ratio_and_the_examples_of_the_docs() -> None:
    for e, n in ((0, 10), (1, 50), (5, 50), (50, 50), (121, 1000)):
        assert stats.wilson_cc_lower(e, n, Z) <= e / n <= stats.wilson_cc_upper(e, n, Z)
    # A healthy 0.91 recall on 50 events (target 0.85): even the slowest tier (error ratio 0.15) is silent.
    assert stats.wilson_cc_lower(round(0.09 * 50), 50, Z) < 0.15
    # A measured recall of 0.835 on 121 events (true 0.91) is silent too; a total collapse on 50 is not.
    assert stats.wilson_cc_lower(round(0.165 * 121), 121, Z) < 0.15
    assert stats.wilson_cc_lower(50, 50, Z) > 0.575


def test_upper_bound_vetoes_a_real_collapse_rarely() -> None:
    """The short-window veto: P(upper bound <= theta) when the true error ratio is theta."""
    for theta in (0.06, 0.15, 0.575, 0.915):
        for n in (3, 10, 30, 100, 1000):
            last = max((x for x in range(n + 1) if stats.wilson_cc_upper(x, n, Z) <= theta), default=None)
            p = 0.0 if last is None else float(binom.cdf(last, n, theta))
            assert p <= 0.01, (theta, n, p)


def _violated(x: int, n: int, budget: float) -> bool:
    """The SLO violated beyond noise on one window, written out here: the Wilson and the Poisson lower
    bounds above the budget."""
    return stats.wilson_cc_lower(x, n, Z) > budget and _poisson_lower(x, n) > budget


def _poisson_lower(x: int, n: int) -> float:
    """The Poisson lower bound of the error ratio, by the rule's own formula (Wilson-Hilferty), which
    test_poisson_bound_is_below_the_exact_gamma_quantile_and_close_to_it holds to scipy's exact one."""
    return stats.poisson_lower(x, n, Z)


def _burn_fires(x: int, n: int, theta: float, budget: float) -> bool:
    """A burn tier's decision on its long window: the measured ratio above theta (threshold x budget) and
    the violation beyond noise."""
    return x / n > theta and _violated(x, n, budget)


def _mid_fires(x: int, n: int, theta: float, budget: float) -> bool:
    """page_slow's mid-window clause: the violation beyond noise, and theta under the Wilson upper bound."""
    return stats.wilson_cc_upper(x, n, Z) > theta and _violated(x, n, budget)


def _chance(n: int, true_ratio: float, fires: object) -> float:
    """Exact P(fires on one window of n events) when the true error ratio is true_ratio (scipy). Every
    condition is monotone in the error count, so it is the tail from the first count that fires."""
    first = next((x for x in range(n + 1) if fires(x, n)), None)  # type: ignore[operator]
    return 0.0 if first is None else float(binom.sf(first - 1, n, true_ratio))


def _fire_chance(n: int, true_ratio: float, theta: float, budget: float) -> float:
    return _chance(n, true_ratio, lambda x, m: _burn_fires(x, m, theta, budget))


@pytest.mark.parametrize(("target", "threshold"), [(0.5, 1.5), (0.5, 1.9), (0.8, 3.0), (0.8, 4.6), (0.85, 3.83),
                                                   (0.85, 6.1), (0.99, 6.0), (0.99, 14.4), (0.999, 6.0),
                                                   (0.999, 14.4)])
def test_page_tiers_stay_silent_on_a_label_exactly_on_budget(target: float, threshold: float) -> None:
    """The page tiers' thresholds at four targets (docs/alerting.md) for a label that just meets its SLO:
    the exact chance per window, for every window size from min_events up, stays under 0.1%."""
    budget = 1 - target
    sizes = [*range(50, 400, 7), 1000, 5000, 20000]
    assert max(_fire_chance(n, budget, threshold * budget, budget) for n in sizes) <= 0.001


@pytest.mark.parametrize("target", [0.5, 0.8, 0.85, 0.99, 0.999])
def test_ticket_slow_stays_silent_on_a_label_exactly_on_budget(target: float) -> None:
    """ticket_slow's threshold is 1x (theta = the budget), so only the bounds stand between a label exactly
    on budget and a ticket. The Wilson bound alone fired in 0.8% (0.99) and 1.4% (0.999) of windows; with
    the Poisson bound every size from 5 events up stays under 0.1% (and the Wilson bound alone does not:
    the Poisson bound is what makes the difference)."""
    budget = 1 - target
    sizes = [*range(5, 50), *range(50, 400, 7), *range(400, 3000, 97), 5000, 20000, 60000]
    assert max(_fire_chance(n, budget, budget, budget) for n in sizes) <= 0.001
    wilson_only = max(_chance(n, budget, lambda x, m: x / m > budget and stats.wilson_cc_lower(x, m, Z) > budget)
                      for n in sizes)
    assert wilson_only > 0.001


def test_poisson_bound_is_below_the_exact_gamma_quantile_and_close_to_it() -> None:
    """Wilson-Hilferty against scipy's exact Poisson lower confidence bound (the gamma quantile at the
    one-sided 0.1% of z = 3.09): never above it (so never less conservative), within 0.05 errors from 2."""
    alpha = float(norm.sf(Z))
    for x in (1, 2, 3, 5, 8, 13, 30, 100, 1000):
        exact = float(gamma.ppf(alpha, x))
        ours = stats.poisson_lower(x, 1.0, Z)
        assert ours <= exact
        if x >= 2:
            assert exact - ours < 0.05, (x, exact, ours)


@pytest.mark.parametrize(("target", "threshold"), [(0.5, 1.5), (0.8, 3.0), (0.85, 3.83), (0.99, 6.0),
                                                   (0.999, 6.0)])
def test_mid_window_clause_stays_silent_on_a_label_exactly_on_budget(target: float, threshold: float) -> None:
    """page_slow's mid-window clause has no min_events floor: for every window size from 1 event up, a
    label exactly on budget fires it in under 0.1% of windows."""
    budget = 1 - target
    sizes = [*range(1, 50), *range(50, 400, 7), *range(400, 3000, 97), 5000, 20000, 60000]
    worst = max(_chance(n, budget, lambda x, m: _mid_fires(x, m, threshold * budget, budget)) for n in sizes)
    assert worst <= 0.001


def test_mid_window_clause_pages_a_thin_collapse_and_not_a_busy_ticket_level_burn() -> None:
    """self_harm (target 0.8, page_slow 3x: theta 0.6) at a true recall of 0.22 on the 45 labelled events a
    2h window holds at night: pages in most windows. A busy label at 1.5x the budget (ticket level) on 2,000
    events: practically never."""
    budget, theta = 0.2, 0.6
    assert _chance(45, 0.78, lambda x, m: _mid_fires(x, m, theta, budget)) > 0.95
    assert _chance(2000, 0.3, lambda x, m: _mid_fires(x, m, theta, budget)) < 1e-9


def test_the_poisson_bound_keeps_high_targets_quiet_on_few_expected_errors() -> None:
    """With the Wilson bound alone, a 0.999 label on budget would fire page_slow (6x) on 300 events with 3
    errors (the normal approximation on 0.3 expected errors): 0.36% per window. The Poisson bound brings it
    under 0.05% (an earlier version of the rules demanded the Wilson bound above theta instead, on windows
    expecting fewer than 5 errors: it cut a thin label's page at night)."""
    budget, theta = 0.001, 0.006

    def wilson_only(x: int, n: int) -> bool:
        return x / n > theta and stats.wilson_cc_lower(x, n, Z) > budget

    assert _chance(300, budget, wilson_only) > 0.003
    assert _fire_chance(300, budget, theta, budget) < 0.0005


def test_a_rare_labels_recall_collapse_pages_on_sixty_labelled_events() -> None:
    """self_harm (target 0.8, page_slow 3x: error ratio 0.6) at a true recall of 0.22 on 60 labelled events:
    the bound against the budget pages almost surely; the bound against 0.6 itself in one window of three
    (and only once the window holds nothing from before the onset)."""
    n, true_ratio, budget, theta = 60, 0.78, 0.2, 0.6
    assert _fire_chance(n, true_ratio, theta, budget) > 0.9
    old_first = next(x for x in range(n + 1) if x / n > theta and stats.wilson_cc_lower(x, n, Z) > theta)
    assert float(binom.sf(old_first - 1, n, true_ratio)) < 0.35


def test_two_proportion_z_equals_statsmodels() -> None:
    for e1, n1, e2, n2 in ((81, 100, 81, 900), (4, 8, 81, 900), (10, 100, 12, 120), (0, 30, 5, 400)):
        theirs, _ = proportion.proportions_ztest([e1, e2], [n1, n2])
        assert stats.two_proportion_z(e1, n1, e2, n2) == pytest.approx(theirs, rel=1e-12)


def test_log_odds_ratio_and_variance_equal_statsmodels_and_scipy() -> None:
    for n, a, b, ab in ((10000, 2000, 2000, 1500), (2000, 400, 400, 80), (300, 60, 60, 0)):
        cells = np.array([[ab, a - ab], [b - ab, n - a - b + ab]])
        theirs = Table2x2(cells + 0.5, shift_zeros=False)
        lor, var = stats.log_odds_ratio(n, a, b, ab)
        assert lor == pytest.approx(theirs.log_oddsratio, rel=1e-12)
        assert math.sqrt(var) == pytest.approx(theirs.log_oddsratio_se, rel=1e-12)
        if ab:  # scipy's sample odds ratio (integer tables, no +0.5) agrees where no cell is empty
            unshifted = odds_ratio(cells.astype(int), kind="sample").statistic
            assert math.log(unshifted) == pytest.approx(lor, abs=0.02)


def test_a_complete_break_moves_the_log_odds_decisively_whatever_the_share_of_single_labels() -> None:
    """85% of the reference has fewer than two labels: the pair PSI hardly moves, the odds ratio does."""
    ref = stats.log_odds_ratio(10000, 2000, 2000, 1500)
    now = stats.log_odds_ratio(3600, 720, 720, 720 * 720 / 3600)  # an hour of traffic, independent labels
    z = (now[0] - ref[0]) / math.sqrt(now[1] + ref[1])
    assert abs(now[0]) < 0.05 and z < -20


def test_ece_noise_separates_a_calibrated_label_from_a_true_ece_of_015() -> None:
    """Simulated labels: the rule's margin (threshold 0.12 + noise) stays silent on calibrated scores in
    every draw and fires on a true ECE of 0.15 (scores 0.15 too high) on 10,000 labelled events (six hours
    of a label at half a labelled event per second)."""
    rng = np.random.default_rng(7)

    def ece_and_noise(n: int, bias: float) -> tuple[float, float]:
        p = rng.beta(1.2, 3, n)
        y = rng.random(n) < p
        s = np.clip(p + bias, 0, 1)
        bins = np.minimum((s * 10).astype(int), 9)
        count = np.bincount(bins, minlength=10)
        ssum = np.bincount(bins, weights=s, minlength=10)
        pos = np.bincount(bins, weights=y, minlength=10)
        ece = float(np.abs(pos - ssum).sum() / n)
        return ece, stats.ece_noise(list(zip(count.tolist(), ssum.tolist(), strict=True)), n)

    for n in (100, 400, 3000):
        for _ in range(50):
            ece, noise = ece_and_noise(n, 0.0)
            assert ece <= 0.12 + noise
    fired = [e > 0.12 + z for e, z in (ece_and_noise(10000, 0.15) for _ in range(50))]
    assert all(fired)


# --- the engine's pair counts ---------------------------------------------------------------------------

def test_pair_counts_per_window_equal_a_direct_count() -> None:
    cfg = small_config()
    rng = np.random.default_rng(3)
    ref_pred = rng.random((2000, 3)) < [0.3, 0.3, 0.1]
    ref_pred[:, 1] |= ref_pred[:, 0] & (rng.random(2000) < 0.7)  # a and b go together
    sample = [prediction(f"r{i}", BASE, dict(zip("abc", (0.9 * row + 0.05).tolist(), strict=True)))
              for i, row in enumerate(ref_pred)]
    reference, _ = reference_from_lines(cfg, "m", sample)
    cur = rng.random((1500, 3)) < [0.3, 0.3, 0.1]  # independent now
    ts = BASE + rng.uniform(0, 7200, 1500)
    engine = Engine(cfg, {"m": reference})
    engine.predictions(prediction(f"c{i}", float(ts[i]), dict(zip("abc", (0.9 * row + 0.05).tolist(), strict=True)))
                       for i, row in enumerate(cur))
    at = float(ts.max())
    figs = engine.evaluate(at)
    got = figs.by_name("mlmon_label_pair_predicted")
    for window, seconds in (("5m", 300), ("1h", 3600), ("2h", 7200)):
        inside = (at // 60 - seconds // 60 < ts // 60) & (ts // 60 <= at // 60)
        for i, j in ((0, 1), (0, 2), (1, 2)):
            want = int(np.sum(cur[inside, i] & cur[inside, j]))
            assert got[("m", "v1", "abc"[i], "abc"[j], window)] == want
    ref_pairs = figs.by_name("mlmon_reference_label_pair")
    assert ref_pairs[("m", "a", "b")] == int(np.sum(ref_pred[:, 0] & ref_pred[:, 1]))
    assert figs.by_name("mlmon_reference_predictions")[("m",)] == 2000


def test_only_the_most_frequent_reference_pairs_are_exported() -> None:
    rng = np.random.default_rng(5)
    predicted = rng.random((3000, 12)) < rng.uniform(0.05, 0.6, 12)
    counts = pair_counts(predicted, 12)
    chosen = exported_pairs(counts, 12, LABEL_PAIRS_EXPORTED)
    assert len(chosen) == LABEL_PAIRS_EXPORTED < 66
    iu = np.triu_indices(12, 1)
    threshold = min(counts[idx] for _, _, idx in chosen)
    assert all(counts[k] <= threshold for k in range(66) if k not in {idx for _, _, idx in chosen})
    assert all((iu[0][idx], iu[1][idx]) == (i, j) for i, j, idx in chosen)
    assert exported_pairs(np.array([0.0, 0.0, 0.0, 5.0]), 3, 32) == []


# --- threshold advice ---------------------------------------------------------------------------------------

def test_threshold_advice_matches_sklearn_and_scipy_on_joined_events() -> None:
    """Recall SLO on a, precision SLO on b, none on c (F1): the advice and its interval recomputed by brute
    force over every candidate threshold with scikit-learn's metrics and scipy's Wilson interval."""
    from scipy.stats import binomtest
    from sklearn.metrics import f1_score, precision_score, recall_score

    from monitor.conventions import THRESHOLD_BINS
    from tests.events import ground_truth

    cfg = small_config(slos=[{"label": "a", "objective": "recall", "target": 0.8, "period": "1d"},
                             {"label": "b", "objective": "precision", "target": 0.7, "period": "1d"}])
    rng = np.random.default_rng(11)
    n = 3000
    actual = rng.random((n, 3)) < [0.3, 0.2, 0.1]
    scores = np.where(actual, rng.beta(4, 2, (n, 3)), rng.beta(1.5, 4, (n, 3)))
    ts = BASE + np.sort(rng.uniform(0, 3000, n))
    engine = Engine(cfg, {})
    engine.predictions(prediction(f"p{i}", float(ts[i]), dict(zip("abc", scores[i].tolist(), strict=True)))
                       for i in range(n))
    engine.ground_truth(ground_truth(f"p{i}", float(ts[i]) + 1, [x for x, on in zip("abc", actual[i], strict=True)
                                                                   if on]) for i in range(n))
    figs = engine.evaluate(float(ts[-1]) + 1)
    bins = np.minimum((scores * THRESHOLD_BINS).astype(int), THRESHOLD_BINS - 1)

    def wilson(successes: int, total: int) -> tuple[float, float]:
        ci = binomtest(successes, total).proportion_ci(confidence_level=0.95, method="wilson")
        return ci.low, ci.high

    ks = range(THRESHOLD_BINS)
    y = actual
    for j, label, objective, target in ((0, "a", "recall", 0.8), (1, "b", "precision", 0.7), (2, "c", "f1", None)):
        pred = {k: bins[:, j] >= k for k in ks}
        if objective == "recall":
            best = max(k for k in ks if recall_score(y[:, j], pred[k]) >= target)
            tps = {k: int(np.sum(y[:, j] & pred[k])) for k in ks}
            pos = int(y[:, j].sum())
            lo = max((k for k in ks if wilson(tps[k], pos)[0] >= target), default=0)
            hi = max(k for k in ks if wilson(tps[k], pos)[1] >= target)
        elif objective == "precision":
            defined = [k for k in ks if pred[k].any()]
            best = min(k for k in defined if precision_score(y[:, j], pred[k]) >= target)
            tps = {k: int(np.sum(y[:, j] & pred[k])) for k in defined}
            lo = min(k for k in defined if wilson(tps[k], int(pred[k].sum()))[1] >= target)
            hi = min(k for k in defined if wilson(tps[k], int(pred[k].sum()))[0] >= target)
        else:
            f1 = [f1_score(y[:, j], pred[k]) for k in ks]
            best = int(np.argmax(f1))
            tp = [int(np.sum(y[:, j] & pred[k])) for k in ks]
            half = [(int(np.sum(~y[:, j] & pred[k])) + int(np.sum(y[:, j] & ~pred[k]))) / 2 for k in ks]
            # The F1 interval of docs/semantics.md: Wilson on TP of TP + (FP+FN)/2 (scipy needs integers, so
            # the closed form here is checked against binomtest where the count is whole).
            def f1_bounds(k: int, tp: list[int] = tp, half: list[float] = half) -> tuple[float, float]:
                total = tp[k] + half[k]
                z = 1.959963984540054
                p = tp[k] / total
                centre = (p + z * z / (2 * total)) / (1 + z * z / total)
                spread = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
                if float(total).is_integer():
                    assert (centre - spread, centre + spread) == pytest.approx(wilson(tp[k], int(total)))
                return centre - spread, centre + spread
            floor = f1_bounds(best)[0]
            close = [k for k in ks if f1_bounds(k)[1] >= floor]
            lo, hi = min(close), max(close)
        key = ("m", "v1", label, objective, "1h")
        got = (figs.by_name("mlmon_threshold_advice")[key], figs.by_name("mlmon_threshold_advice_lower")[key],
               figs.by_name("mlmon_threshold_advice_upper")[key])
        assert got == pytest.approx((best / THRESHOLD_BINS, lo / THRESHOLD_BINS, hi / THRESHOLD_BINS)), label
        assert got[1] <= got[0] <= got[2]


# --- the estimated-quality bound --------------------------------------------------------------------------------

def _engine_with(scores: np.ndarray, truth: np.ndarray, labelled: int, step: float = 0.5) -> tuple[Engine, float]:
    cfg = small_config(labels=["a"], threshold=0.5)
    engine = Engine(cfg)
    n = len(scores)
    engine.predictions(prediction(f"p{i}", BASE + i * step, {"a": float(scores[i])}) for i in range(n))
    engine.ground_truth(ground_truth(f"p{i}", BASE + i * step + 1, ["a"] if truth[i] else [])
                        for i in range(labelled))
    return engine, BASE + n * step


def test_thin_score_bins_never_make_the_estimate_look_worse() -> None:
    """A fresh start: no ground truth, so no score bin is calibrated, and raw scores of a model that scores
    its negatives around 0.25 put the point estimate of recall far under any target. The alert's counts
    take every thin bin at its most favourable: true positives = predicted positives, no false negatives
    (counted directly from the scores)."""
    rng = np.random.default_rng(8)
    scores = np.where(rng.random(2000) < 0.1, rng.beta(20, 2, 2000), rng.beta(2, 6, 2000))
    engine, at = _engine_with(scores, np.zeros(2000, dtype=bool), labelled=0)
    figs = engine.evaluate(at)
    key = ("m", "v1", "a", "1d")
    assert figs.by_name("mlmon_estimated_label_recall")[key] < 0.6
    predicted = float(np.sum(scores >= 0.5))
    assert figs.by_name("mlmon_estimated_label_true_positives")[key] == pytest.approx(predicted)
    assert figs.by_name("mlmon_window_pending_predicted_positives")[key] == predicted
    assert figs.by_name("mlmon_estimated_label_false_negatives")[key] == 0.0


def test_the_upper_bound_covers_the_realised_recall_of_a_small_pending_set() -> None:
    """Calibrated scores (label ~ Bernoulli(score)), 4,000 labelled predictions, then 300 pending ones (about
    a dozen positives, a canary's rare label): in every draw the realised recall of the pending predictions
    (scikit-learn, from the hidden labels) is under the upper Wilson bound computed from the exported
    counts, while the point estimate alone falls under 0.8 in some draws."""
    from sklearn.metrics import recall_score


    below_point = 0
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        scores = np.where(rng.random(4300) < 0.05, rng.beta(8, 2, 4300), rng.beta(1, 20, 4300))
        truth = rng.random(4300) < scores
        engine, at = _engine_with(scores, truth, labelled=4000)
        figs = engine.evaluate(at)
        key = ("m", "v1", "a", "1d")
        tp = figs.by_name("mlmon_estimated_label_true_positives")[key]
        fn = figs.by_name("mlmon_estimated_label_false_negatives")[key]
        upper = 1 - stats.wilson_cc_lower(fn, tp + fn, Z)
        pending = slice(4000, 4300)
        realised = recall_score(truth[pending], scores[pending] >= 0.5, zero_division=1.0)
        assert realised <= upper, (seed, realised, upper)
        below_point += tp / (tp + fn) < 0.8
    assert below_point >= 1
