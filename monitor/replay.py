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
from importlib import resources
from pathlib import Path
from typing import TypeVar

import click
import orjson

from monitor.config import ConfigError, MonitorConfig, load_config
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Decoded, Engine
from monitor.engine.figures import Figures
from monitor.events import InvalidEvent, parse_timestamp

T = TypeVar("T")

BATCH = 8192
EXAMPLE = resources.files("monitor") / "examples"


def read_lines(path: Path) -> list[bytes]:
    with open(path, "rb") as fh:
        return [line.rstrip(b"\r\n") for line in fh if line.strip()]


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


def _parse_at(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value, "--at")
    except InvalidEvent as exc:
        raise click.BadParameter(exc.detail, param_hint="--at") from None


@click.command("replay")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="Config file (default: the bundled example).")
@click.option("--predictions", type=click.Path(dir_okay=False, exists=True), help="JSON lines of predictions.")
@click.option("--ground-truth", type=click.Path(dir_okay=False, exists=True), help="JSON lines of ground truth.")
@click.option("--at", help="Evaluation time, RFC 3339 (default: the newest event time).")
@click.option("--format", "fmt", type=click.Choice(["prometheus", "json"]), default="prometheus", show_default=True)
def replay_command(config_path: str | None, predictions: str | None, ground_truth: str | None,
                   at: str | None, fmt: str) -> None:
    """Replay prediction and ground-truth files through the engine and print the metrics.

    With no files, replays the bundled example stream (a moderation model with delayed ground truth).
    """
    with resources.as_file(EXAMPLE) as example:
        config_file = Path(config_path) if config_path else example / "config.yaml"
        pred_file = Path(predictions) if predictions else (example / "predictions.jsonl" if not config_path else None)
        gt_file = Path(ground_truth) if ground_truth else (example / "ground_truth.jsonl" if not config_path else None)
        try:
            config = load_config(config_file)
        except ConfigError as exc:
            raise click.ClickException("\n".join([str(exc.source or config_file) + ":", *exc.problems])) from None
        when = _parse_at(at)
        try:
            _, figures = run_replay(config, read_lines(pred_file) if pred_file else [],
                                    read_lines(gt_file) if gt_file else [], when)
        except ConfigError as exc:
            raise click.ClickException("; ".join(exc.problems)) from None
    if fmt == "json":
        from monitor.exporter import figures_json

        stamp = datetime.fromtimestamp(when, UTC).isoformat() if when is not None else None
        sys.stdout.buffer.write(orjson.dumps({"at": stamp, "metrics": figures_json(figures)}) + b"\n")
    else:
        from monitor.exporter import prometheus_text

        sys.stdout.buffer.write(prometheus_text(figures))
