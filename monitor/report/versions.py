"""Model versions side by side in one window: volume, per-label precision / recall / F1 with intervals,
and whether a version differs from the baseline (the version with the most predictions in the window)."""

from __future__ import annotations

from dataclasses import dataclass

from monitor.report.compare import ALPHA, adjusted, two_proportion_p
from monitor.report.model import Interval, LabelRow, ModelView

METRICS = ("precision", "recall", "f1")


@dataclass(frozen=True)
class VersionCell:
    version: str
    interval: Interval
    successes: float  # TP
    n: float  # its denominator (F1: TP + (FP + FN) / 2)
    p: float | None = None  # against the baseline; precision and recall only
    q: float | None = None  # Benjamini-Hochberg adjusted over the window's table

    @property
    def significant(self) -> bool:
        return self.q is not None and self.q < ALPHA


@dataclass(frozen=True)
class ComparisonRow:
    label: str
    metric: str
    cells: list[VersionCell]  # baseline first


@dataclass(frozen=True)
class Comparison:
    window: str
    versions: list[str]  # baseline first, then by predictions
    predictions: dict[str, float]
    joined: dict[str, float]
    rows: list[ComparisonRow]

    @property
    def baseline(self) -> str:
        return self.versions[0]

    def share(self, version: str) -> float | None:
        total = sum(self.predictions.values())
        return self.predictions[version] / total if total > 0 else None


def _counts(r: LabelRow, metric: str) -> tuple[float, float]:
    if metric == "precision":
        return r.tp, r.tp + r.fp
    if metric == "recall":
        return r.tp, r.tp + r.fn
    return r.tp, r.tp + (r.fp + r.fn) / 2


def compare(m: ModelView, window: str) -> Comparison:
    present = [v for v in m.versions if v.windows[window].has_data]
    present.sort(key=lambda v: (-v.windows[window].predictions, v.version))
    names = [v.version for v in present]
    rows: list[ComparisonRow] = []
    for li, label in enumerate(m.labels):
        for metric in METRICS:
            cells = []
            for v in present:
                r = v.windows[window].rows[li]
                s, n = _counts(r, metric)
                cells.append(VersionCell(v.version, getattr(r, metric), s, n))
            rows.append(ComparisonRow(label, metric, cells))
    # F1 is not a proportion of events: it gets intervals but no test.
    tested = [(ri, ci) for ri, row in enumerate(rows) if row.metric != "f1" for ci in range(1, len(row.cells))]
    ps = [two_proportion_p(rows[ri].cells[0].successes, rows[ri].cells[0].n, rows[ri].cells[ci].successes,
                           rows[ri].cells[ci].n) for ri, ci in tested]
    for (ri, ci), p, q in zip(tested, ps, adjusted(ps), strict=True):
        cell = rows[ri].cells[ci]
        rows[ri].cells[ci] = VersionCell(cell.version, cell.interval, cell.successes, cell.n, p, q)
    return Comparison(window, names, {v.version: v.windows[window].predictions for v in present},
                      {v.version: v.windows[window].joined for v in present}, rows)
