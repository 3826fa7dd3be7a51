"""The inputs `monitor replay` and `monitor report` share: options, defaults and loading.

Only click at import time: `monitor report --help` must not pull in numpy or the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from monitor.config import MonitorConfig

F = TypeVar("F", bound=Callable[..., Any])
EXAMPLE = resources.files("monitor") / "examples"


@dataclass(frozen=True)
class Inputs:
    """What is evaluated: a config, the two files' lines and the evaluation time."""

    config: MonitorConfig
    predictions: list[bytes]
    ground_truth: list[bytes]
    at: float | None


def input_options(command: F) -> F:
    for option in reversed((
        click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
                     help="Config file (default: the bundled example)."),
        click.option("--predictions", type=click.Path(dir_okay=False, exists=True),
                     help="JSON lines of predictions."),
        click.option("--ground-truth", type=click.Path(dir_okay=False, exists=True),
                     help="JSON lines of ground truth."),
        click.option("--at", help="Evaluation time, RFC 3339 (default: the newest event time)."),
    )):
        command = option(command)
    return command


def read_lines(path: Path) -> list[bytes]:
    with open(path, "rb") as fh:
        return [line.rstrip(b"\r\n") for line in fh if line.strip()]


def parse_at(value: str | None) -> float | None:
    from monitor.events import InvalidEvent, parse_timestamp

    if value is None:
        return None
    try:
        return parse_timestamp(value, "--at")
    except InvalidEvent as exc:
        raise click.BadParameter(exc.detail, param_hint="--at") from None


def load_inputs(config_path: str | None, predictions: str | None, ground_truth: str | None,
                at: str | None) -> Inputs:
    """No config means the bundled example and its two files; a config without files, an empty stream."""
    from monitor.config import ConfigError, load_config

    with resources.as_file(EXAMPLE) as example:
        config_file = Path(config_path) if config_path else example / "config.yaml"
        pred_file = Path(predictions) if predictions else (None if config_path else example / "predictions.jsonl")
        gt_file = Path(ground_truth) if ground_truth else (None if config_path else example / "ground_truth.jsonl")
        try:
            config = load_config(config_file)
        except ConfigError as exc:
            raise click.ClickException("\n".join([str(exc.source or config_file) + ":", *exc.problems])) from None
        return Inputs(config, read_lines(pred_file) if pred_file else [], read_lines(gt_file) if gt_file else [],
                      parse_at(at))
