"""Engine figures against independent oracles: scikit-learn, scipy and direct numpy computations.

The stream has two versions, partial and full ground truth, corrections, served label lists, ground
truth that arrives before its prediction, and is evaluated at two times; the oracle recomputes every
figure from the raw events with the rules of docs/semantics.md, never from engine state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    precision_score,
    recall_score,
)

from monitor.config import format_duration
from monitor.engine.engine import Engine
from monitor.engine.figures import Figures
from monitor.reference import reference_from_lines
from monitor.replay import run_replay
from tests.conftest import small_config
from tests.events import BASE, ground_truth, prediction

LABELS = ["a", "b", "c"]
THRESHOLDS = np.array([0.5, 0.3, 0.5])


@dataclass
class Pred:
    pid: str
    ts: float
    version: str
    scores: np.ndarray
    predicted: np.ndarray


@dataclass
class GT:
    pid: str
    ts: float
    known: np.ndarray
    actual: np.ndarray
    full: bool
    order: int


def make_stream(seed: int, n: int = 2500, hours: float = 8.0):
    rng = np.random.default_rng(seed)
    preds, gts, order = [], [], 0
    for i in range(n):
        ts = BASE + rng.uniform(0, hours * 3600)
        actual = rng.random(3) < [0.3, 0.15, 0.05]
        scores = np.where(actual, rng.beta(4, 2, 3), rng.beta(1, 4, 3))
        version = "v1" if rng.random() < 0.7 else "v2"
        served = rng.random() < 0.2
        predicted = rng.random(3) < 0.3 if served else scores >= THRESHOLDS
        preds.append(Pred(f"p{i}", ts, version, scores, predicted))
        if rng.random() < 0.85:
            for _ in range(2 if rng.random() < 0.1 else 1):  # sometimes a correction
                gt_ts = ts + rng.exponential(1800) - (900 if rng.random() < 0.05 else 0)
                truth = actual ^ (rng.random(3) < 0.2) if gts and gts[-1].pid == f"p{i}" else actual
                if rng.random() < 0.3:
                    known = rng.random(3) < 0.6
                    known[rng.integers(3)] = True
                else:
                    known = np.ones(3, dtype=bool)
                order += 1
                gts.append(GT(f"p{i}", gt_ts, known, truth & known, bool(known.all()), order))
    return preds, gts


def to_raw(preds: list[Pred], gts: list[GT]) -> tuple[list[bytes], list[bytes]]:
    raw_p = []
    for p in preds:
        extra = {}
        if not np.array_equal(p.predicted, p.scores >= THRESHOLDS):
            extra["predicted"] = [x for x, on in zip(LABELS, p.predicted, strict=True) if on]
        raw_p.append(prediction(p.pid, p.ts, dict(zip(LABELS, p.scores.tolist(), strict=True)), version=p.version,
                                **extra))
    raw_g = []
    for g in sorted(gts, key=lambda g: g.order):
        if g.full:
            labels: list[str] | dict[str, int] = [x for x, on in zip(LABELS, g.actual, strict=True) if on]
        else:
            labels = {x: int(a) for x, k, a in zip(LABELS, g.known, g.actual, strict=True) if k}
        raw_g.append(ground_truth(g.pid, g.ts, labels))
    return raw_p, raw_g


def joined_rows(preds: list[Pred], gts: list[GT], at: float) -> list[tuple[Pred, GT, float]]:
    """What should be joined at `at`: each prediction with its winning ground truth (latest timestamp,
    then latest arrival), observed at max(prediction time, ground-truth time)."""
    winner: dict[str, GT] = {}
    for g in gts:
        if g.ts <= at and (g.pid not in winner or (g.ts, g.order) > (winner[g.pid].ts, winner[g.pid].order)):
            winner[g.pid] = g
    return [(p, winner[p.pid], max(p.ts, winner[p.pid].ts)) for p in preds if p.ts <= at and p.pid in winner]


def in_window(ts: float, at: float, window: int) -> bool:
    unit = 60 if window <= 6 * 3600 else 3600
    return at // unit - window // unit < ts // unit <= at // unit


def check_label(figs: Figures, key: tuple[str, ...], y_true: np.ndarray, y_pred: np.ndarray) -> None:
    got = {name: figs.by_name(f"mlmon_label_{name}").get(key) for name in ("precision", "recall", "f1")}
    want = {
        "precision": precision_score(y_true, y_pred, zero_division=np.nan) if y_true.size else math.nan,
        "recall": recall_score(y_true, y_pred, zero_division=np.nan) if y_true.size else math.nan,
        "f1": f1_score(y_true, y_pred, zero_division=np.nan) if y_true.size else math.nan,
    }
    for name, value in want.items():
        if math.isnan(value):
            assert got[name] is None, f"{name} {key} should be absent, got {got[name]}"
        else:
            assert got[name] == pytest.approx(value, abs=1e-12), f"{name} {key}"
    tp = int(np.sum(y_true & y_pred))
    n = int(np.sum(y_pred))
    if n:
        ci = binomtest(tp, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert figs.by_name("mlmon_label_precision_lower")[key] == pytest.approx(ci.low, abs=1e-6)
        assert figs.by_name("mlmon_label_precision_upper")[key] == pytest.approx(ci.high, abs=1e-6)


@pytest.mark.parametrize("at_hours", [None, 5.5])
def test_classification_figures_match_sklearn(at_hours: float | None) -> None:
    cfg = small_config(thresholds={"b": 0.3}, slos=[{"label": "a", "objective": "recall", "target": 0.9,
                                                     "period": "1d"}])
    preds, gts = make_stream(seed=3)
    raw_p, raw_g = to_raw(preds, gts)
    at = None if at_hours is None else BASE + at_hours * 3600
    _, figs = run_replay(cfg, raw_p, raw_g, at)
    if at is None:
        at = max([p.ts for p in preds] + [g.ts for g in gts])
    rows = joined_rows(preds, gts, at)
    checked = 0
    for window in cfg.windows:
        w = format_duration(window)
        in_w = [r for r in rows if in_window(r[2], at, window)]
        for version in ("v1", "v2"):
            vr = [r for r in in_w if r[0].version == version]
            known_cells_true, known_cells_pred = [], []
            f1s = []
            for li, label in enumerate(LABELS):
                sel = [r for r in vr if r[1].known[li]]
                y_true = np.array([r[1].actual[li] for r in sel], dtype=bool)
                y_pred = np.array([r[0].predicted[li] for r in sel], dtype=bool)
                check_label(figs, ("m", version, label, w), y_true, y_pred)
                known_cells_true.append(y_true)
                known_cells_pred.append(y_pred)
                if y_true.size and (y_true.any() or y_pred.any()):
                    f1s.append(f1_score(y_true, y_pred))
                checked += 1
            flat_t = np.concatenate(known_cells_true)
            flat_p = np.concatenate(known_cells_pred)
            if flat_t.any() or flat_p.any():
                assert figs.by_name("mlmon_micro_f1")[("m", version, w)] == pytest.approx(f1_score(flat_t, flat_p))
                assert figs.by_name("mlmon_macro_f1")[("m", version, w)] == pytest.approx(np.mean(f1s))
            if flat_t.size:
                assert figs.by_name("mlmon_hamming_loss")[("m", version, w)] == pytest.approx(
                    hamming_loss(flat_t, flat_p))
            full = [r for r in vr if r[1].full]
            if full:
                y_t = np.array([r[1].actual for r in full])
                y_p = np.array([r[0].predicted for r in full])
                assert figs.by_name("mlmon_subset_accuracy")[("m", version, w)] == pytest.approx(
                    accuracy_score(y_t, y_p))
                assert figs.by_name("mlmon_label_cardinality")[("m", version, w, "actual")] == pytest.approx(
                    y_t.sum(axis=1).mean())
        # SLO burn rate: recall of label a over all versions.
        sel = [r for r in in_w if r[1].known[0]]
        y_true = np.array([r[1].actual[0] for r in sel], dtype=bool)
        y_pred = np.array([r[0].predicted[0] for r in sel], dtype=bool)
        if y_true.any():
            burn = (1 - recall_score(y_true, y_pred)) / (1 - 0.9)
            assert figs.by_name("mlmon_error_budget_burn_rate")[("m", "a", "a-recall", w)] == pytest.approx(burn)
    assert checked == len(cfg.windows) * 2 * 3
    # Cumulative counters count every join once, corrections moved, never doubled.
    n_joined = {v: sum(1 for r in rows if r[0].version == v) for v in ("v1", "v2")}
    for v, n in n_joined.items():
        assert figs.by_name("mlmon_joined_total")[("m", v)] == n


def test_calibration_error_matches_direct_computation() -> None:
    cfg = small_config()
    preds, gts = make_stream(seed=5)
    raw_p, raw_g = to_raw(preds, gts)
    _, figs = run_replay(cfg, raw_p, raw_g)
    at = max([p.ts for p in preds] + [g.ts for g in gts])
    rows = joined_rows(preds, gts, at)
    edges = np.linspace(0, 1, 11)[1:-1]
    for li, label in enumerate(LABELS):
        sel = [r for r in rows if r[0].version == "v1" and r[1].known[li] and in_window(r[2], at, 6 * 3600)]
        s = np.array([r[0].scores[li] for r in sel])
        y = np.array([r[1].actual[li] for r in sel], dtype=float)
        b = np.digitize(s, edges)
        ece = sum((b == k).sum() / len(s) * abs(y[b == k].mean() - s[b == k].mean())
                  for k in range(10) if (b == k).any())
        assert figs.by_name("mlmon_label_ece")[("m", "v1", label, "6h")] == pytest.approx(ece, abs=1e-12)
        count = figs.by_name("mlmon_calibration_bin")
        for k in range(10):
            assert count[("m", "v1", label, str(k), "count", "6h")] == (b == k).sum()


def test_multiclass_accuracy_and_confusion_match_sklearn() -> None:
    cfg = small_config(task="multiclass", labels=["x", "y", "z"])
    rng = np.random.default_rng(9)
    raw_p, raw_g, truth, served = [], [], [], []
    for i in range(600):
        ts = BASE + i * 10
        scores = rng.dirichlet([1, 1, 1])
        actual = int(rng.choice(3, p=scores)) if rng.random() < 0.8 else int(rng.integers(3))
        raw_p.append(prediction(f"q{i}", ts, dict(zip("xyz", scores.tolist(), strict=True))))
        raw_g.append(ground_truth(f"q{i}", ts + 60, ["xyz"[actual]]))
        truth.append(actual)
        served.append(int(np.argmax(scores)))
    _, figs = run_replay(cfg, raw_p, raw_g)
    assert figs.by_name("mlmon_accuracy")[("m", "v1", "1d")] == pytest.approx(accuracy_score(truth, served))
    cm = confusion_matrix(truth, served, labels=[0, 1, 2])
    conf = figs.by_name("mlmon_confusion")
    for a in range(3):
        for p in range(3):
            assert conf[("m", "v1", "xyz"[a], "xyz"[p], "1d")] == cm[a, p]
    per_class = precision_score(truth, served, average=None, labels=[0, 1, 2])
    for k in range(3):
        assert figs.by_name("mlmon_label_precision")[("m", "v1", "xyz"[k], "1d")] == pytest.approx(per_class[k])


def _psi_direct(ref_values: np.ndarray, cur_values: np.ndarray, alpha: float = 0.5) -> float:
    edges = np.unique(np.quantile(ref_values, np.arange(1, 10) / 10))
    r = np.bincount(np.digitize(ref_values, edges), minlength=edges.size + 1)
    c = np.bincount(np.digitize(cur_values, edges), minlength=edges.size + 1)
    rs = (r + alpha) / (r.sum() + alpha * r.size)
    cs = (c + alpha) / (c.sum() + alpha * c.size)
    return float(np.sum((cs - rs) * np.log(cs / rs)))


def test_feature_and_score_psi_match_direct_computation() -> None:
    cfg = small_config(features={"numeric": ["x"], "categorical": ["lang"]})
    rng = np.random.default_rng(1)
    ref_x = rng.normal(0, 1, 3000)
    ref_scores = rng.beta(2, 5, 3000)
    sample = [prediction(f"r{i}", BASE, {"a": ref_scores[i], "b": 0.1, "c": 0.2},
                         features={"x": ref_x[i], "lang": ["en", "de", "fr"][i % 3]}) for i in range(3000)]
    reference, _ = reference_from_lines(cfg, "m", sample)
    cur_x = rng.normal(0.4, 1.2, 1500)
    cur_scores = rng.beta(2, 3, 1500)
    langs = rng.choice(["en", "de", "fr", "es"], 1500, p=[0.4, 0.3, 0.2, 0.1])
    engine = Engine(cfg, {"m": reference})
    engine.predictions(prediction(f"c{i}", BASE + i, {"a": cur_scores[i], "b": 0.1, "c": 0.2},
                                  features={"x": cur_x[i], "lang": langs[i]}) for i in range(1500))
    figs = engine.evaluate()
    assert figs.by_name("mlmon_feature_psi")[("m", "v1", "x", "1h")] == pytest.approx(_psi_direct(ref_x, cur_x))
    assert figs.by_name("mlmon_score_psi")[("m", "v1", "a", "1h")] == pytest.approx(
        _psi_direct(ref_scores, cur_scores))
    # Categorical: reference values en/de/fr (1000 each) and "other", which takes es.
    r = np.array([1000, 1000, 1000, 0]) + 0.5
    c = np.array([(langs == x).sum() for x in ("de", "en", "fr")] + [(langs == "es").sum()]) + 0.5
    r, c = r / r.sum(), c / c.sum()
    assert figs.by_name("mlmon_feature_psi")[("m", "v1", "lang", "1h")] == pytest.approx(
        float(np.sum((c - r) * np.log(c / r))))


def test_psi_absent_below_sample_size_guard() -> None:
    cfg = small_config(features={"numeric": ["x"]}, drift={"min_samples": 500})
    sample = [prediction(f"r{i}", BASE, {"a": 0.1, "b": 0.1, "c": 0.2}, features={"x": float(i)}) for i in range(1000)]
    reference, _ = reference_from_lines(cfg, "m", sample)
    engine = Engine(cfg, {"m": reference})
    engine.predictions(prediction(f"c{i}", BASE + i, {"a": 0.9, "b": 0.1, "c": 0.2}, features={"x": 5000.0})
                       for i in range(100))
    figs = engine.evaluate()
    assert ("m", "v1", "x", "1h") not in figs.by_name("mlmon_feature_psi")
    assert figs.by_name("mlmon_drift_sample_sufficient")[("m", "v1", "1h")] == 0.0


def test_psi_formula_matches_evidently_on_equal_bins() -> None:
    """evidently bins categorical data by category, so with every category present on both sides its
    PSI and ours (without smoothing) see the same bins and must agree."""
    pd = pytest.importorskip("pandas")
    stattests = pytest.importorskip("evidently.legacy.calculations.stattests.psi")
    from monitor.engine.metrics.drift import psi

    rng = np.random.default_rng(4)
    ref = rng.choice(list("abcde"), 5000, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    cur = rng.choice(list("abcde"), 3000, p=[0.2, 0.3, 0.2, 0.2, 0.1])
    ours = psi(np.array([(ref == k).sum() for k in "abcde"]), np.array([(cur == k).sum() for k in "abcde"]),
               alpha=0.0)
    theirs, _ = stattests._psi(pd.Series(ref), pd.Series(cur), "cat", 0.1)
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_estimated_quality_tracks_realised_quality_on_calibrated_scores() -> None:
    """CBPE's promise: with calibrated scores, the estimate for unlabelled predictions matches the quality
    they turn out to have. Scores here are calibrated by construction (label ~ Bernoulli(score))."""
    cfg = small_config(labels=["a"], threshold=0.5)
    rng = np.random.default_rng(2)
    n = 20000
    scores = rng.beta(1.2, 2.5, n)
    truth = rng.random(n) < scores
    engine = Engine(cfg)
    half = n // 2
    engine.predictions(prediction(f"p{i}", BASE + i * 0.5, {"a": scores[i]}) for i in range(n))
    engine.ground_truth(ground_truth(f"p{i}", BASE + i * 0.5 + 1, ["a"] if truth[i] else []) for i in range(half))
    figs = engine.evaluate(BASE + n * 0.5)
    pend = slice(half, n)
    pred_pos = scores[pend] >= 0.5
    realised_p = precision_score(truth[pend], pred_pos)
    realised_r = recall_score(truth[pend], pred_pos)
    key = ("m", "v1", "a", "1d")
    assert figs.by_name("mlmon_estimated_label_precision")[key] == pytest.approx(realised_p, abs=0.02)
    assert figs.by_name("mlmon_estimated_label_recall")[key] == pytest.approx(realised_r, abs=0.02)
