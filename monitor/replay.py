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

import click
import numpy as np
import orjson

from monitor.config import ConfigError, MonitorConfig
from monitor.engine.columns import DecodedTopic
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Engine, topic_steps
from monitor.engine.figures import Figures
from monitor.events import InvalidEvent, parse_timestamp
from monitor.inputs import EXAMPLE, input_options, load_inputs, read_lines

__all__ = ["EXAMPLE", "read_lines", "run_replay"]

BATCH = 8192


def run_replay(config: MonitorConfig, predictions: list[bytes], ground_truth: list[bytes],
               at: float | None = None, use_native: bool | None = None) -> tuple[Engine, Figures]:
    engine = Engine(config, use_native=use_native)
    # The engine's long-lived structures (join entries) are acyclic: cyclic-GC passes over them find
    # nothing while re-scanning 100k+ objects, so the collector is paused for the replay.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        preds = engine.decode(PREDICTIONS, predictions)
        truths = engine.decode(GROUND_TRUTH, ground_truth)
        sides, index = steps_by_time(preds, truths, at)
        for start in range(0, len(sides), BATCH):
            engine.apply(preds, truths, sides[start:start + BATCH], index[start:start + BATCH])
    finally:
        if was_enabled:
            gc.enable()
    return engine, engine.evaluate(at)


def steps_by_time(predictions: DecodedTopic, ground_truth: DecodedTopic,
                  at: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Both topics' events merged by event time, predictions first on ties and file order after that
    (`np.lexsort` is stable). Events that could not be decoded come first (they carry no usable time) and
    are rejected by the engine. With `at`, events after it are left out."""
    ts = np.concatenate([predictions.times(), ground_truth.times()])
    sides, index = topic_steps(len(predictions), len(ground_truth))
    order = np.lexsort((sides, ts))
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
