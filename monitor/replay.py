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

import click
import orjson

from monitor.config import ConfigError, MonitorConfig, load_config
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Engine
from monitor.engine.figures import Figures
from monitor.events import InvalidEvent, parse_timestamp

BATCH = 8192
EXAMPLE = resources.files("monitor") / "examples"


def _event_time(raw: bytes) -> float:
    """Event time for ordering only; an unreadable line sorts first and is rejected by the engine."""
    try:
        obj = orjson.loads(raw)
        return parse_timestamp(obj.get("timestamp")) if isinstance(obj, dict) else float("-inf")
    except (orjson.JSONDecodeError, InvalidEvent):
        return float("-inf")


def read_lines(path: Path) -> list[bytes]:
    with open(path, "rb") as fh:
        return [line.rstrip(b"\r\n") for line in fh if line.strip()]


def merge_by_time(predictions: list[bytes], ground_truth: list[bytes], at: float | None) -> Iterator[tuple[str, bytes]]:
    keyed = [(_event_time(r), 0, PREDICTIONS, r) for r in predictions]
    keyed += [(_event_time(r), 1, GROUND_TRUTH, r) for r in ground_truth]
    keyed.sort(key=lambda x: (x[0], x[1]))
    for ts, _, topic, raw in keyed:
        if at is not None and ts > at:
            break
        yield topic, raw


def run_replay(config: MonitorConfig, predictions: list[bytes], ground_truth: list[bytes],
               at: float | None = None) -> tuple[Engine, Figures]:
    engine = Engine(config)
    # The engine's structures (join entries, pending batches) are acyclic and live until the end, so cyclic-GC
    # passes over them find nothing while re-scanning 100k+ objects: suspend the collector for the replay.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(engine, predictions, ground_truth, at)
    finally:
        if was_enabled:
            gc.enable()


def _run(engine, predictions, ground_truth, at):
    batch: list[tuple[str, bytes]] = []
    for item in merge_by_time(predictions, ground_truth, at):
        batch.append(item)
        if len(batch) >= BATCH:
            engine.process(batch)
            batch = []
    engine.process(batch)
    return engine, engine.evaluate(at)


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
