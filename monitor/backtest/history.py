"""History files -> the series the worker would have exported, once per evaluation step, as OpenMetrics.

The engine is fed the merged history in time order and evaluated at every step T (events with time <= T
applied, windows ending at T), exactly what a worker scraped at T would have served. Only the metric
names the rules read are written: the rest (confidence intervals, per-worker ratios) is never queried
and would only multiply the samples promtool has to import.

The file is OpenMetrics because `promtool tsdb create-blocks-from openmetrics` reads only that. No
`# TYPE` lines: a type-less family is `unknown` and keeps its sample name, while typed families would
clash (the counter `mlmon_label_outcomes_total` and the window gauge `mlmon_label_outcomes` are one
family name in OpenMetrics).
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor import conventions as c
from monitor.config import MonitorConfig
from monitor.engine.columns import DecodedTopic
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Engine, topic_steps
from monitor.engine.figures import model_figures
from monitor.engine.tallies import Histogram
from monitor.replay import _event_time

UP = "up"


class HistoryError(ValueError):
    pass


@dataclass(frozen=True)
class HistoryStats:
    start: float  # first evaluation step (unix seconds)
    end: float  # last evaluation step
    step: float
    steps: int
    samples: int
    predictions: int
    ground_truth: int
    rejected: dict[tuple[str, str], int]  # (topic, reason) -> events the engine refused


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def series_key(name: str, labels: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{inner}}}" if inner else name


def _le(bound: float) -> str:
    return repr(float(bound))


class _Collector:
    """What `model_figures` writes into, keeping only the wanted metrics as ready-made series keys
    (duck-typed like Figures: the backtest evaluates thousands of times, and Sample objects per figure
    would dominate its run time)."""

    def __init__(self, wanted: set[str]) -> None:
        self.wanted = wanted
        self.lines: list[tuple[str, float]] = []
        self._keys: dict[tuple[str, tuple[str, ...]], str] = {}

    def _key(self, metric: c.MetricDef, labels: tuple[str, ...], name: str | None = None,
             extra: tuple[tuple[str, str], ...] = ()) -> str:
        cache = (name or metric.name, labels + tuple(v for _, v in extra))
        key = self._keys.get(cache)
        if key is None:
            key = self._keys[cache] = series_key(cache[0], [*zip(metric.labels, labels, strict=True), *extra])
        return key

    def add(self, metric: c.MetricDef, labels: tuple[str, ...], value: float) -> None:
        if metric.name not in self.wanted or value is None or value != value:  # NaN: undefined, left out
            return
        key = self._keys.get((metric.name, labels))
        if key is None:
            key = self._key(metric, labels)
        self.lines.append((key, float(value)))

    def add_histogram(self, metric: c.MetricDef, labels: tuple[str, ...], h: Histogram) -> None:
        base = metric.name
        if not {f"{base}_bucket", f"{base}_sum", f"{base}_count"} & self.wanted:
            return
        running = 0.0
        for le, n in zip([*[_le(b) for b in h.buckets.tolist()], "+Inf"], h.counts.tolist(), strict=True):
            running += n
            self.lines.append((self._key(metric, labels, f"{base}_bucket", (("le", le),)), running))
        self.lines.append((self._key(metric, labels, f"{base}_sum"), float(h.sum)))
        self.lines.append((self._key(metric, labels, f"{base}_count"), running))


def _steps(preds: DecodedTopic, truths: DecodedTopic) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sides, index, time) of every event in time order, predictions first on ties (as `monitor replay`).

    Unlike replay, a rejected event keeps the time its raw `timestamp` field states when that is readable:
    the backtest counts it in the invalid-input series at that time, as the worker would have when it
    arrived, instead of at the start of the history."""
    times = []
    for decoded in (preds, truths):
        t = decoded.times()
        for i in decoded.rejected:
            t[i] = _event_time(decoded.raws[i])
        times.append(t)
    ts = np.concatenate(times)
    sides, index = topic_steps(len(preds), len(truths))
    order = np.lexsort((sides, ts))
    return sides[order], index[order], ts[order]


def grid(first: float, last: float, step: float) -> np.ndarray:
    """Evaluation times: multiples of `step` from the first one at or after `first` to `last`."""
    start = math.ceil(first / step) * step
    if start > last:
        raise HistoryError(f"the history spans less than one {step:g}s step")
    return np.arange(start, last + step / 2, step)


def exported_names() -> set[str]:
    """Every sample name the engine can export (histograms as their _bucket/_sum/_count series)."""
    names = set()
    for metric in c.ALL_METRICS:
        if metric.kind == "histogram":
            names |= {f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"}
        else:
            names.add(metric.name)
    return names


def needed_names(wanted: set[str]) -> set[str]:
    """The exported sample names among `wanted` (rule files also name functions and labels)."""
    return wanted & exported_names()


def write_history(config: MonitorConfig, predictions: list[bytes], ground_truth: list[bytes], path: Path,
                  wanted: set[str], *, step: float = 60.0, start: float | None = None, end: float | None = None,
                  job: str = "mlmon", workers: int = 1) -> HistoryStats:
    """Write one sample per wanted series and step to `path` (OpenMetrics, seconds timestamps, `# EOF`).

    The worker is modelled as one target (`up{job, instance="backtest"}` 1 at every step), so the health
    alerts see a running worker rather than an absent one. A step's figures depend only on the events up
    to it, so with `workers` > 1 the steps are cut into consecutive chunks evaluated by forked processes
    (each applies the events before its chunk first), and their parts are concatenated in order.
    """
    wanted = needed_names(wanted)
    engine = Engine(config)
    preds = engine.decode(PREDICTIONS, predictions)
    truths = engine.decode(GROUND_TRUTH, ground_truth)
    sides, index, ts = _steps(preds, truths)
    valid = ts[np.isfinite(ts)]
    if valid.size == 0:
        raise HistoryError("no event with a valid timestamp in the history")
    times = grid(valid.min() if start is None else start, valid.max() if end is None else end, step)
    # Each evaluation applies the steps up to T (events without any readable time come first).
    cuts = np.searchsorted(ts, times, side="right")
    chunks = [c_ for c_ in np.array_split(np.arange(len(times)), max(1, min(workers, len(times)))) if len(c_)]
    parts = [path.with_name(f"{path.name}.part{i}") for i in range(len(chunks))]
    job_args = [(config, preds, truths, sides, index, times, cuts, chunk, part, wanted, job)
                for chunk, part in zip(chunks, parts, strict=True)]
    if len(chunks) == 1:
        results = [_evaluate_chunk(*job_args[0], engine=engine)]
    else:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(len(chunks)) as pool:
            results = pool.starmap(_evaluate_chunk, job_args)
    with open(path, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
            part.unlink()
        out.write(b"# EOF\n")
    rejected: Counter[tuple[str, str]] = Counter()
    for _, invalid in results:
        rejected = invalid  # the last chunk has applied every event
    return HistoryStats(float(times[0]), float(times[-1]), step, len(times), sum(n for n, _ in results),
                        len(preds), len(truths), dict(rejected))


def _evaluate_chunk(config: MonitorConfig, preds: DecodedTopic, truths: DecodedTopic, sides: np.ndarray,
                    index: np.ndarray, times: np.ndarray, cuts: np.ndarray, chunk: np.ndarray, part: Path,
                    wanted: set[str], job: str, engine: Engine | None = None) -> tuple[int, Counter[tuple[str, str]]]:
    engine = engine or Engine(config)
    up_key = series_key(UP, [("instance", "backtest"), ("job", job)])
    collector = _Collector(wanted)
    done = samples = 0
    with open(part, "w", encoding="utf-8") as out:
        for i in chunk.tolist():
            at = float(times[i])
            cut = int(cuts[i])
            if cut > done:
                engine.apply(preds, truths, sides[done:cut], index[done:cut])
                done = cut
            engine.flush()
            collector.lines.clear()
            for state in engine.models.values():
                model_figures(state, config.windows, at, collector)  # type: ignore[arg-type]
            for topic in (PREDICTIONS, GROUND_TRUTH):
                for reason in c.ALL_REASONS:
                    collector.add(c.INVALID_EVENTS_TOTAL, (topic, reason), engine.invalid[(topic, reason)])
            stamp = f" {at:.3f}\n"
            out.write("".join(f"{key} {value!r}{stamp}" for key, value in collector.lines))
            out.write(f"{up_key} 1{stamp}")
            samples += len(collector.lines) + 1
    return samples, engine.invalid
