"""`monitor replay`: JSON-lines files in, the metrics out. The embedded default of the product.

The two files are merged by event time (predictions first on ties) and fed to the same engine the Kafka
worker runs. With `--at T` only events up to T are applied and windows end at T; without it T is the
newest event time.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TypeVar

import click
import orjson

from monitor.config import ConfigError, MonitorConfig
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Decoded, Engine
from monitor.engine.figures import Figures
from monitor.events import InvalidEvent, parse_timestamp
from monitor.inputs import EXAMPLE, input_options, load_inputs, read_lines

__all__ = ["EXAMPLE", "read_lines", "run_replay"]

T = TypeVar("T")

BATCH = 8192


def run_replay(config: MonitorConfig, predictions: list[bytes], ground_truth: list[bytes],
               at: float | None = None) -> tuple[Engine, Figures]:
    engine = Engine(config)
    # The engine's long-lived structures (join entries) are acyclic: cyclic-GC passes over them find
    # nothing while re-scanning 100k+ objects, so the collector is paused for the replay.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for chunk in _chunks(decoded_by_time(engine, predictions, ground_truth, at), BATCH):
            engine.apply(chunk)
    finally:
        if was_enabled:
            gc.enable()
    return engine, engine.evaluate(at)


def decoded_by_time(engine: Engine, predictions: list[bytes], ground_truth: list[bytes],
                    at: float | None) -> list[Decoded]:
    """Both files decoded (once) and merged by event time, predictions first on ties; events that could
    not be decoded come first (they carry no usable time) and are rejected by the engine."""
    keyed: list[tuple[float, int, Decoded]] = []
    for order, topic, lines in ((0, PREDICTIONS, predictions), (1, GROUND_TRUTH, ground_truth)):
        for chunk in _chunks(lines, BATCH):
            for topic_, raw, event in engine.decode([(topic, raw) for raw in chunk]):
                ts = float("-inf") if isinstance(event, InvalidEvent) else event.ts
                if at is None or ts <= at:
                    keyed.append((ts, order, (topic_, raw, event)))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [k[2] for k in keyed]


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


def _chunks(seq: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


@click.command("replay")
@input_options
@click.option("--format", "fmt", type=click.Choice(["prometheus", "json"]), default="prometheus", show_default=True)
def replay_command(config_path: str | None, predictions: str | None, ground_truth: str | None,
                   at: str | None, fmt: str) -> None:
    """Replay prediction and ground-truth files through the engine and print the metrics.

    With no files, replays the bundled example stream (a moderation model with delayed ground truth).
    """
    inputs = load_inputs(config_path, predictions, ground_truth, at)
    try:
        _, figures = run_replay(inputs.config, inputs.predictions, inputs.ground_truth, inputs.at)
    except ConfigError as exc:
        raise click.ClickException("; ".join(exc.problems)) from None
    if fmt == "json":
        from monitor.exporter import figures_json

        stamp = datetime.fromtimestamp(inputs.at, UTC).isoformat() if inputs.at is not None else None
        sys.stdout.buffer.write(orjson.dumps({"at": stamp, "metrics": figures_json(figures)}) + b"\n")
    else:
        from monitor.exporter import prometheus_text

        sys.stdout.buffer.write(prometheus_text(figures))
