"""Events in, state out: the one engine both drivers (Kafka worker, `monitor replay`) run.

Usage: feed raw message bytes with `predictions()` / `ground_truth()` (or `process()` for a mixed,
ordered batch), then `evaluate(at)` for the figures. Invalid events never raise: they are counted by
reason and returned, with their bytes, for the driver's dead-letter topic.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from monitor import conventions as c
from monitor.config import MonitorConfig, format_duration
from monitor.engine.figures import Figures, model_figures
from monitor.engine.model_state import ModelState
from monitor.events import BatchDecoder, Decoder, GroundTruth, InvalidEvent, Prediction
from monitor.reference import Reference, load_reference

PREDICTIONS = c.TOPIC_PREDICTIONS
GROUND_TRUTH = c.TOPIC_GROUND_TRUTH


Decoded = tuple[str, bytes, "Prediction | GroundTruth | InvalidEvent"]


@dataclass(frozen=True)
class Rejection:
    topic: str
    reason: str
    detail: str
    raw: bytes


class Engine:
    def __init__(self, config: MonitorConfig, references: dict[str, Reference | None] | None = None) -> None:
        self.config = config
        self.decoder = Decoder(config)
        self.batch = BatchDecoder(self.decoder)
        if references is None:
            references = {m.name: load_reference(config, m) for m in config.models}
        self.models = {m.name: ModelState(config, m, references.get(m.name)) for m in config.models}
        self.invalid: Counter[tuple[str, str]] = Counter()
        self.max_clock_skew = config.join.max_clock_skew
        self.clock: Callable[[], float] = time.time  # replaceable, for tests

    def _reject(self, topic: str, exc: InvalidEvent, raw: bytes, out: list[Rejection]) -> None:
        self.invalid[(topic, exc.reason)] += 1
        out.append(Rejection(topic, exc.reason, exc.detail, raw))

    def process(self, items: Iterable[tuple[str, bytes]]) -> list[Rejection]:
        """Apply a batch of (topic, raw) in order; returns the rejected events."""
        return self.apply(self.decode(list(items)))

    def decode(self, items: list[tuple[str, bytes]]) -> list[Decoded]:
        """Decode a batch (order-independent, so each topic's events are decoded together)."""
        preds = iter(self.batch.predictions([raw for topic, raw in items if topic == PREDICTIONS]))
        truths = iter(self.batch.ground_truth([raw for topic, raw in items if topic != PREDICTIONS]))
        out = [(topic, raw, next(preds) if topic == PREDICTIONS else next(truths)) for topic, raw in items]
        if self.max_clock_skew is not None:
            self._reject_future(out)
        return out

    def _reject_future(self, decoded: list[Decoded]) -> None:
        limit = self.clock() + self.max_clock_skew  # type: ignore[operator]
        for i, (topic, raw, event) in enumerate(decoded):
            if not isinstance(event, InvalidEvent) and event.ts > limit:
                decoded[i] = (topic, raw, InvalidEvent(
                    c.Reason.TIMESTAMP_OUT_OF_RANGE,
                    f"timestamp is more than {format_duration(self.max_clock_skew)} ahead of the clock",  # type: ignore[arg-type]
                    event.model))

    def apply(self, decoded: Iterable[Decoded]) -> list[Rejection]:
        """Join and aggregate decoded events in the given order; invalid ones are counted and returned."""
        rejected: list[Rejection] = []
        models = self.models
        for topic, raw, event in decoded:
            if isinstance(event, InvalidEvent):
                self._reject(topic, event, raw, rejected)
            elif topic == PREDICTIONS:
                models[event.model].add_prediction(event)  # type: ignore[arg-type]
            else:
                models[event.model].add_ground_truth(event)  # type: ignore[arg-type]
        self.flush()
        return rejected

    def predictions(self, raws: Iterable[bytes]) -> list[Rejection]:
        return self.process((PREDICTIONS, r) for r in raws)

    def ground_truth(self, raws: Iterable[bytes]) -> list[Rejection]:
        return self.process((GROUND_TRUTH, r) for r in raws)

    def flush(self) -> None:
        for state in self.models.values():
            state.flush()

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
        # Every (topic, reason) is exported from the start, so rate() and alerts see a zero, not nothing.
        for topic in (PREDICTIONS, GROUND_TRUTH):
            for reason in c.ALL_REASONS:
                out.add(c.INVALID_EVENTS_TOTAL, (topic, reason), self.invalid[(topic, reason)])
        return out
