"""Events in, state out: the one engine both drivers (Kafka worker, `monitor replay`) run.

Usage: feed raw message bytes with `process()` (a mixed, ordered batch of (topic, bytes)), or decode
each topic once with `decode()` and apply steps in any order with `apply()` (what replay does to merge
two files by time); then `evaluate(at)` for the figures. Invalid events never raise: they are counted by
reason and returned, with their bytes, for the driver's dead-letter topic.

Decoding is the native fast path (docs/native.md) when the extension is built, with the exact Python
decoder for every event the fast path does not take; without the extension, Python decodes everything.
Either way the result is columns (engine/columns.py), and the rest of the engine is the same code.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import orjson

from monitor import conventions as c
from monitor import mapping
from monitor.config import MonitorConfig, format_duration
from monitor.engine import native, parallel
from monitor.engine.columns import (
    DecodedTopic,
    GroundTruthColumns,
    PredictionColumns,
    concat_ground_truth,
    concat_predictions,
    from_ground_truth,
    from_predictions,
    segment_array,
)
from monitor.engine.figures import Figures, cumulative_figures, model_figures
from monitor.engine.model_state import ModelState
from monitor.events import BatchDecoder, Decoder, GroundTruth, InvalidEvent, Prediction
from monitor.mapping import RecordMeta
from monitor.reference import Reference, load_reference

PREDICTIONS = c.TOPIC_PREDICTIONS
GROUND_TRUTH = c.TOPIC_GROUND_TRUTH
SIDE = {PREDICTIONS: 0, GROUND_TRUTH: 1}


@dataclass(frozen=True)
class Rejection:
    topic: str
    reason: str
    detail: str
    raw: bytes
    # The native field at fault and, for a mapped input, the expression that read it (docs/attach.md);
    # for dead-letter headers and messages, never for metric labels.
    field: str | None = None
    expression: str | None = None


class Engine:
    def __init__(self, config: MonitorConfig, references: dict[str, Reference | None] | None = None,
                 use_native: bool | None = None) -> None:
        self.config = config
        self.use_native = native.enabled() if use_native is None else use_native
        self.decoder = Decoder(config)
        self.batch = BatchDecoder(self.decoder)
        if references is None:
            references = {m.name: load_reference(config, m) for m in config.models}
        self.models = {m.name: ModelState(config, m, references.get(m.name), self.use_native) for m in config.models}
        self._states = list(self.models.values())
        self._model_index = {name: i for i, name in enumerate(self.models)}
        self.segmented = [i for i, s in enumerate(self._states) if s.cfg.segments]
        # Topics that carry mapped inputs (docs/attach.md) are read through their reader; the native fast
        # path reads those whose fields are simple paths (docs/native.md), the exact reader all the rest.
        self.readers = mapping.readers(config, self.decoder)
        self.fast, self.fast_readings = (native.fast_decoder(config, references, self.readers) if self.use_native
                                         else (None, {}))
        self.default_source = {PREDICTIONS: config.kafka.predictions_topic,
                               GROUND_TRUTH: config.kafka.ground_truth_topic}
        self.invalid: Counter[tuple[str, str]] = Counter()
        self.max_clock_skew = config.join.max_clock_skew
        self.clock: Callable[[], float] = time.time  # replaceable, for tests

    # --- decoding ------------------------------------------------------------------------------------------
    def decode(self, topic: str, raws: list[bytes], sources: list[str] | None = None,
               metas: list[RecordMeta] | None = None) -> DecodedTopic:
        """Decode one side's messages (order-independent) into per-model columns. `topic` is the side
        (PREDICTIONS | GROUND_TRUTH); `sources` the Kafka topic (or replay input) of each message, by
        default the side's default topic; `metas` each message's key, headers and timestamp."""
        n = len(raws)
        default = self.default_source[topic]
        if sources is None:
            sources = [default] * n if not self.readers[(topic, default)].plain else None
        if sources is not None and not all(self.readers[(topic, s)].plain for s in set(sources)):
            return self._decode_mapped(topic, raws, sources, metas)
        if self.fast is not None:
            out = (self.fast.predictions if topic == PREDICTIONS else self.fast.ground_truth)(raws)
            self._fast_segments(topic, raws, out, None)
            decoded = DecodedTopic(topic, raws, out["model"].astype(np.int64), out["row"].astype(np.int64),
                                   [self._block(topic, b) for b in out["blocks"]], {})
            rest = np.nonzero(decoded.model < 0)[0].tolist()
            events = [self.decoder.decode_or_invalid(raws[i], topic != PREDICTIONS) for i in rest]
        else:
            decoded = DecodedTopic(topic, raws, np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64),
                                   [None] * len(self._states), {})
            rest = list(range(n))
            events = self.batch.predictions(raws) if topic == PREDICTIONS else self.batch.ground_truth(raws)
        self._add_exact(decoded, rest, events)
        if self.max_clock_skew is not None:
            self._reject_future(decoded)
        return decoded

    def _decode_mapped(self, topic: str, raws: list[bytes], sources: list[str],
                       metas: list[RecordMeta] | None) -> DecodedTopic:
        """Each source's messages through the native fast path when it can read them (the native shape,
        or a mapping of simple paths), every other message through its topic's reader and the exact
        decoder."""
        n = len(raws)
        decoded = DecodedTopic(topic, raws, np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64),
                               [None] * len(self._states), {})
        by_source: dict[str, list[int] | None] = {}
        if n and sources.count(sources[0]) == n:
            by_source[sources[0]] = None  # one source (the usual batch): no per-message grouping
        else:
            for i, source in enumerate(sources):
                by_source.setdefault(source, []).append(i)  # type: ignore[union-attr]
        positions: list[int] = []
        events: list[Prediction | GroundTruth | InvalidEvent] = []
        for source, listed in by_source.items():
            where: list[int] = list(range(n)) if listed is None else listed
            reader = self.readers[(topic, source)]
            reading = self.fast_readings.get((topic, source))
            if self.fast is not None and (reader.plain or reading is not None):
                decode = self.fast.predictions if topic == PREDICTIONS else self.fast.ground_truth
                mine = raws if listed is None else [raws[i] for i in listed]
                out = decode(mine, reading)
                self._fast_segments(topic, mine, out, reader)
                pos = np.arange(n, dtype=np.int64) if listed is None else np.array(listed, dtype=np.int64)
                self._add_fast(decoded, pos, out)
                where = pos[out["model"] < 0].tolist()
            for i in where:
                event = reader.decode(raws[i], metas[i] if metas is not None else None)
                if event is not None:  # None: a message the mapping's `when` leaves out
                    positions.append(i)
                    events.append(event)
        self._add_exact(decoded, positions, events)
        if self.max_clock_skew is not None:
            self._reject_future(decoded)
        return decoded

    def _fast_segments(self, topic: str, raws: list[bytes], out: Mapping[str, Any],
                       reader: mapping.TopicReader | None) -> None:
        """Segment values of the events the fast path took, which it does not read: the message is parsed
        again here and read by the same code as the exact decoder's (monitor.segments)."""
        if topic != PREDICTIONS or not self.segmented:
            return
        model = out["model"]
        for m in self.segmented:
            block = out["blocks"][m]
            if not len(block["ids"]):
                continue
            where = np.nonzero(model == m)[0]
            where = where[np.argsort(out["row"][where], kind="stable")]
            segments = self.decoder.schemas[self._states[m].cfg.name].segments
            name = self._states[m].cfg.name
            side = None if reader is None or reader.plain else next(x for x in reader.mappings if x.model.name == name)
            rows = []
            for i in where.tolist():
                doc = orjson.loads(raws[i])
                rows.append(segments.read(doc) if side is None else segments.read(side.to_native(doc), doc))
            block["segments"] = segment_array(rows)

    def _block(self, topic: str, b: Mapping[str, Any]) -> Any:
        return PredictionColumns(**b) if topic == PREDICTIONS else GroundTruthColumns(**b)

    def _add_fast(self, decoded: DecodedTopic, positions: np.ndarray, out: Mapping[str, Any]) -> None:
        """Append what the fast path accepted of the messages at `positions` to the per-model columns."""
        concat: Callable[[Any, Any], Any] = concat_predictions if decoded.topic == PREDICTIONS else concat_ground_truth
        base = np.zeros(len(self._states), dtype=np.int64)
        for m, b in enumerate(out["blocks"]):
            if not len(b["ids"]):
                continue
            have = decoded.blocks[m]
            base[m] = 0 if have is None else len(have)
            block = self._block(decoded.topic, b)
            decoded.blocks[m] = block if have is None else concat(have, block)
        model = out["model"].astype(np.int64)
        taken = model >= 0
        decoded.model[positions[taken]] = model[taken]
        decoded.row[positions[taken]] = out["row"][taken] + base[model[taken]]

    def _add_exact(self, decoded: DecodedTopic, positions: list[int],
                   events: list[Prediction | GroundTruth | InvalidEvent]) -> None:
        """Append what the exact decoder made of `positions` to the topic's per-model columns."""
        by_model: dict[int, tuple[list[int], list[Any]]] = {}
        for i, event in zip(positions, events, strict=True):
            if isinstance(event, InvalidEvent):
                decoded.rejected[i] = event
            else:
                pos, evs = by_model.setdefault(self._model_index[event.model], ([], []))
                pos.append(i)
                evs.append(event)
        for m, (pos, evs) in by_model.items():
            state = self._states[m]
            have = decoded.blocks[m]
            if decoded.topic == PREDICTIONS:
                more: Any = from_predictions(evs, state.n_labels, state.feature_spec)
                concat: Callable[[Any, Any], Any] = concat_predictions
            else:
                more, concat = from_ground_truth(evs, state.n_labels), concat_ground_truth
            base = 0 if have is None else len(have)
            decoded.blocks[m] = more if have is None else concat(have, more)
            decoded.model[pos] = m
            decoded.row[pos] = base + np.arange(len(pos))

    def _reject_future(self, decoded: DecodedTopic) -> None:
        limit = self.clock() + self.max_clock_skew  # type: ignore[operator]
        detail = f"timestamp is more than {format_duration(self.max_clock_skew)} ahead of the clock"  # type: ignore[arg-type]
        for i in np.nonzero(decoded.times() > limit)[0].tolist():
            decoded.reject(i, InvalidEvent(c.Reason.TIMESTAMP_OUT_OF_RANGE, detail))

    # --- applying ------------------------------------------------------------------------------------------
    def apply(self, predictions: DecodedTopic | None, ground_truth: DecodedTopic | None, sides: np.ndarray,
              index: np.ndarray) -> list[Rejection]:
        """Apply steps in order: step i is event `index[i]` of `predictions` (sides[i] == 0) or of
        `ground_truth` (1). Invalid events are counted and returned; then the batch is flushed."""
        return self.apply_batches(predictions, ground_truth, [(sides, index)])

    def apply_batches(self, predictions: DecodedTopic | None, ground_truth: DecodedTopic | None,
                      batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Rejection]:
        """`apply` of each (sides, index) batch in turn, each flushed after it: the figures of one `apply`
        call per batch. With the native core each model's batches are applied on one thread while the
        previous batch's statistics go into its blocks on another (`ModelState.take` and `fold`)."""
        topics = (predictions, ground_truth)
        rejected: list[Rejection] = []
        per_model: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in self._states]
        for sides, index in batches:
            model = np.full(len(sides), -1, dtype=np.int64)
            row = np.full(len(sides), -1, dtype=np.int64)
            for side, decoded in enumerate(topics):
                if decoded is not None:
                    sel = np.nonzero(sides == side)[0]
                    model[sel] = decoded.model[index[sel]]
                    row[sel] = decoded.row[index[sel]]
            for step in np.nonzero(model < 0)[0].tolist():
                decoded = topics[sides[step]]
                assert decoded is not None
                i = int(index[step])
                exc = decoded.rejected.get(i)
                if exc is None:  # skipped by a mapping's `when`: not an event
                    continue
                self.invalid[(decoded.topic, exc.reason)] += 1
                rejected.append(Rejection(decoded.topic, exc.reason, exc.detail, decoded.raws[i], exc.field,
                                          exc.expression))
            for m, steps in enumerate(per_model):
                sel = np.nonzero(model == m)[0]
                steps.append((sides[sel].astype(np.uint8), row[sel]))
        folds = parallel.folds() if self.use_native and len(batches) > 1 and parallel.threads() > 1 else None
        sized: list[tuple[int, Callable[[], None]]] = []
        for m, state in enumerate(self._states):
            steps = per_model[m]
            sized.append((sum(rows.size for _, rows in steps), partial(
                _apply_model, state, steps, predictions.blocks[m] if predictions is not None else None,
                ground_truth.blocks[m] if ground_truth is not None else None, folds)))
        # Largest first (the calling thread takes it, the pool the rest in order): the batches end when
        # their largest model does, whichever model the config lists first.
        sized.sort(key=lambda t: -t[0])
        self._run([task for _, task in sized])
        return rejected

    def _run(self, tasks: list[Callable[[], None]]) -> None:
        """Per-model work: on threads with the native core (it releases the GIL), else one after the other."""
        if self.use_native:
            parallel.run_all(tasks)
        else:
            for task in tasks:
                task()

    def process(self, items: Iterable[tuple[str, bytes]]) -> list[Rejection]:
        """Apply a batch of (topic, raw) in order; returns the rejected events."""
        items = list(items)
        sides = np.fromiter((SIDE[topic] for topic, _ in items), dtype=np.uint8, count=len(items))
        preds = [raw for topic, raw in items if topic == PREDICTIONS]
        truths = [raw for topic, raw in items if topic != PREDICTIONS]
        index = np.empty(len(items), dtype=np.int64)
        for side in (0, 1):
            sel = np.nonzero(sides == side)[0]
            index[sel] = np.arange(sel.size)
        return self.apply(self.decode(PREDICTIONS, preds) if preds else None,
                          self.decode(GROUND_TRUTH, truths) if truths else None, sides, index)

    def process_topics(self, predictions: list[bytes], ground_truth: list[bytes],
                       sources: tuple[list[str] | None, list[str] | None] = (None, None),
                       metas: tuple[list[RecordMeta] | None, list[RecordMeta] | None] = (None, None)
                       ) -> list[Rejection]:
        """Apply a batch of each side: all its predictions first, then all its ground truths (so a truth
        in the same batch joins at once instead of waiting). `sources` and `metas` per side as in decode."""
        sides, index = topic_steps(len(predictions), len(ground_truth))
        return self.apply(self.decode(PREDICTIONS, predictions, sources[0], metas[0]) if predictions else None,
                          self.decode(GROUND_TRUTH, ground_truth, sources[1], metas[1]) if ground_truth else None,
                          sides, index)

    def predictions(self, raws: Iterable[bytes]) -> list[Rejection]:
        return self.process((PREDICTIONS, r) for r in raws)

    def ground_truth(self, raws: Iterable[bytes]) -> list[Rejection]:
        return self.process((GROUND_TRUTH, r) for r in raws)

    def flush(self) -> None:
        self._run([state.flush for state in self._states])

    def add(self, other: Engine) -> None:
        """Add `other`'s statistics, model by model (`ModelState.add`: both flushed, this one without join
        entries), and its invalid-event counts: the merged view of partition engines (monitor.engine.merge)."""
        for name, state in self.models.items():
            theirs = other.models.get(name)
            if theirs is not None:
                state.add(theirs)
        self.invalid.update(other.invalid)

    @property
    def latest_event_time(self) -> float | None:
        marks = [s.join.watermark for s in self.models.values() if s.join.watermark > float("-inf")]
        return max(marks) if marks else None

    def evaluate(self, at: float | None = None) -> Figures:
        """Every figure at evaluation time `at` (default: the newest event time seen)."""
        self.flush()
        if at is None:
            at = self.latest_event_time or 0.0
        out = Figures()
        for state in self.models.values():
            model_figures(state, self.config.windows, at, out)
        self._invalid_figures(out)
        return out

    def cumulative(self) -> Figures:
        """Only the figures that count since the start (counters, histograms, the gauges beside them):
        what `evaluate` gives for them, without summing any window."""
        self.flush()
        out = Figures()
        for state in self.models.values():
            cumulative_figures(state, out)
        self._invalid_figures(out)
        return out

    def _invalid_figures(self, out: Figures) -> None:
        # Every (topic, reason) is exported from the start, so rate() and alerts see a zero, not nothing.
        for topic in (PREDICTIONS, GROUND_TRUTH):
            for reason in c.ALL_REASONS:
                out.add(c.INVALID_EVENTS_TOTAL, (topic, reason), self.invalid[(topic, reason)])



def _apply_model(state: ModelState, batches: list[tuple[np.ndarray, np.ndarray]], preds: Any, truths: Any,
                 folds: ThreadPoolExecutor | None) -> None:
    """One model's batches, each applied and flushed. With `folds`, a batch's statistics are folded into
    the blocks on a thread of that pool while the next batch is applied (one fold at a time, in order)."""
    pending: Future[None] | None = None
    try:
        for kinds, rows in batches:
            if rows.size:
                state.apply(kinds, rows, preds, truths)
            taken = state.take()
            if folds is None:
                state.fold(taken)
                continue
            if pending is not None:
                pending.result()
            pending = folds.submit(state.fold, taken)
        if pending is not None:
            pending.result()
    finally:
        if pending is not None:
            wait([pending])  # a failed apply leaves no fold of this model running


def topic_steps(n_predictions: int, n_ground_truth: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps (side, index) over every prediction, then every ground truth, each in its topic's order."""
    sides = np.repeat(np.array([0, 1], dtype=np.uint8), [n_predictions, n_ground_truth])
    return sides, np.concatenate([np.arange(n_predictions), np.arange(n_ground_truth)])
