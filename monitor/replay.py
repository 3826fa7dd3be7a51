"""`monitor replay`: JSON-lines files in, the metrics out. The embedded default of the product.

This module is the replay itself (engine, ordering, rejections); the command line is monitor/replay_cli.py,
which imports it only when a replay runs.

The two files are merged by event time (predictions first on ties) and fed to the same engine the Kafka
worker runs. With `--at T` only events up to T are applied and windows end at T; without it T is the
newest event time.

Output: on a terminal a summary a person reads in seconds (monitor.summary); otherwise Prometheus text, so
pipes and scripts get what they always got. `--format` chooses explicitly. Rejected events are summarised
on stderr (monitor.rejections) whatever the format.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson

from monitor.config import MonitorConfig
from monitor.engine.columns import DecodedTopic
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Engine, topic_steps
from monitor.engine.figures import Figures
from monitor.events import InvalidEvent, parse_timestamp
from monitor.inputs import EXAMPLE, InputLines, read_lines
from monitor.rejections import InputReport, summarize, tell

__all__ = ["EXAMPLE", "read_lines", "replay", "run_replay"]

# Steps per `Engine.apply`. Each call ends in a flush whose cost is mostly per call (per touched block and
# model, expiry, numpy set-up), not per event: on the 1M realistic stream 65,536 took the applying stage
# from 2.0 s to 1.5 s against 8,192, for about 15 MB more peak memory. Figures do not depend on it beyond
# float rounding of sums (a block's delta is summed per flush before it is added).
BATCH = 65536


@dataclass(frozen=True)
class Replayed:
    engine: Engine
    figures: Figures
    rejections: list[InputReport]  # one per input read from a file, in the order predictions, ground truth


def run_replay(config: MonitorConfig, predictions: list[bytes], ground_truth: list[bytes],
               at: float | None = None, use_native: bool | None = None,
               inputs: dict[str, list[bytes]] | None = None) -> tuple[Engine, Figures]:
    """Replay two lists of raw events (and `inputs`: the lines of mapped topics, docs/attach.md, by topic
    name). Inputs read by monitor.inputs (they know their file and line numbers) also get the rejection
    summary on stderr, and fail when a file gave nothing usable: every command that evaluates files goes
    through here."""
    result = replay(config, predictions, ground_truth, at, use_native, inputs)
    tell(result.rejections)
    return result.engine, result.figures


def replay(config: MonitorConfig, predictions: list[bytes], ground_truth: list[bytes],
           at: float | None = None, use_native: bool | None = None,
           inputs: dict[str, list[bytes]] | None = None) -> Replayed:
    keep_freed_memory()
    engine = Engine(config, use_native=use_native)
    # The engine's long-lived structures (join entries) are acyclic: cyclic-GC passes over them find
    # nothing while re-scanning 100k+ objects, so the collector is paused for the replay.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if inputs:
            preds = _decode_side(engine, config, PREDICTIONS, predictions, inputs)
            truths = _decode_side(engine, config, GROUND_TRUTH, ground_truth, inputs)
        else:
            preds = engine.decode(PREDICTIONS, predictions)
            truths = engine.decode(GROUND_TRUTH, ground_truth)
        reports = rejection_reports(predictions, ground_truth, preds, truths)
        sides, index = steps_by_time(preds, truths, at)
        engine.apply_batches(preds, truths, [(sides[start:start + BATCH], index[start:start + BATCH])
                                             for start in range(0, len(sides), BATCH)])
    finally:
        if was_enabled:
            gc.enable()
    return Replayed(engine, engine.evaluate(at), reports)


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed blocks of up to 32 MiB in the heap for reuse.

    Each flush builds arrays of a few MiB (a block delta per touched minute) and frees them. By default
    glibc maps every block above 128 KiB afresh and unmaps it on free, so each flush pays fresh zeroed
    pages (measured: 5x the page faults of the whole replay, about 0.2 s of system time at 100k events).
    glibc raises that limit by itself once a large mapped block is freed, which a replay did by accident
    while it held one bytes object per line; it no longer frees such a block before applying. Other libcs,
    and processes that are not replays, are left alone."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks up to 32 MiB come from the heap
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD: and the heap's top is not returned at each free
    except (OSError, AttributeError):
        pass


def _decode_side(engine: Engine, config: MonitorConfig, side: str, default: list[bytes],
                 inputs: dict[str, list[bytes]]) -> DecodedTopic:
    """One side's default-topic lines and its mapped topics' lines, decoded together. Lines of a topic
    read with an envelope other than `none` are Kafka records (mapping.record_lines)."""
    from monitor.mapping import RecordMeta, record_lines

    name = "predictions" if side == PREDICTIONS else "ground_truth"
    default_topic = config.kafka.predictions_topic if side == PREDICTIONS else config.kafka.ground_truth_topic
    raws, sources, metas = list(default), [default_topic] * len(default), [RecordMeta()] * len(default)
    for topic, lines in inputs.items():
        if (name, topic) not in config.sources():
            continue
        if engine.readers[(side, topic)].envelope == "none":
            values, more = lines, [RecordMeta()] * len(lines)
        else:
            values, more = record_lines(lines)
        raws += values
        sources += [topic] * len(values)
        metas += more
    return engine.decode(side, raws, sources, metas)


def rejection_reports(predictions: list[bytes], ground_truth: list[bytes], preds: DecodedTopic,
                      truths: DecodedTopic) -> list[InputReport]:
    """The per-file rejection summaries of the inputs read by monitor.inputs (plain lists, as tests and
    benchmarks pass, have no file to name and get none)."""
    return [summarize(lines, kind, decoded.rejected)
            for lines, kind, decoded in ((predictions, "prediction", preds), (ground_truth, "ground-truth", truths))
            if isinstance(lines, InputLines) and lines.source]


def steps_by_time(predictions: DecodedTopic, ground_truth: DecodedTopic,
                  at: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Both topics' events merged by event time, predictions first on ties and file order after that: the
    predictions come first in the concatenation and the sort is stable. Events that could not be decoded
    come first (they carry no usable time) and are rejected by the engine. With `at`, events after it are
    left out."""
    ts = np.concatenate([predictions.times(), ground_truth.times()])
    sides, index = topic_steps(len(predictions), len(ground_truth))
    order = np.argsort(ts, kind="stable")
    if at is not None:
        order = order[ts[order] <= at]
    return sides[order], index[order]


def merge_by_time(predictions: list[bytes], ground_truth: list[bytes],
                  at: float | None) -> Iterator[tuple[str, bytes]]:
    """The raw (topic, bytes) sequence replay applies, for drivers that feed the engine raw messages
    (tests producing to Kafka, benchmarks)."""
    keyed = [(_event_time(r), 0, PREDICTIONS, r) for r in predictions]
    keyed += [(_event_time(r), 1, GROUND_TRUTH, r) for r in ground_truth]
    keyed.sort(key=lambda x: (x[0], x[1]))
    for ts, _, topic, raw in keyed:
        if at is not None and ts > at:
            break
        yield topic, raw


def _event_time(raw: bytes) -> float:
    try:
        obj = orjson.loads(raw)
        return parse_timestamp(obj.get("timestamp")) if isinstance(obj, dict) else float("-inf")
    except (orjson.JSONDecodeError, InvalidEvent):
        return float("-inf")
