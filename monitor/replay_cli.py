"""The `monitor replay` command line; the replay itself is monitor/replay.py.

Only click, monitor.inputs and monitor.fast_exit at import time: `monitor replay --help` must not pay
for numpy, pydantic or the engine (about 0.3 s). The replay, the config and the output format's own dependencies
(prometheus_client for the exposition, rich for the table) are imported when the command runs.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from monitor.fast_exit import exit_now
from monitor.gc_pause import collector_paused
from monitor.inputs import input_options, load_inputs, read_lines

if TYPE_CHECKING:
    from monitor.config import MonitorConfig

__all__ = ["FORMATS", "replay_command"]

FORMATS = ("table", "prometheus", "json")


@click.command("replay")
@input_options
@click.option("--input", "topic_files", multiple=True, metavar="TOPIC=FILE",
              help="JSON lines of a topic named in the config's models[].input (repeatable); "
                   "--predictions and --ground-truth are the default topics. See docs/attach.md.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="table: a summary to read; prometheus: the exposition text; json: every sample. "
                   "Default: table on a terminal, prometheus otherwise (pipes, files, scripts).")
def replay_command(config_path: str | None, predictions: str | None, ground_truth: str | None,
                   at: str | None, topic_files: tuple[str, ...], fmt: str | None) -> None:
    """Replay prediction and ground-truth files through the engine and print the metrics.

    With no files, replays the bundled example stream (a moderation model with delayed ground truth).
    Files may be gzip or zstd compressed; '-' reads standard input.
    """
    # What is built before the replay lives until the process ends: modules, config models, input lines. The
    # cyclic collector would only re-scan it (monitor.gc_pause); the replay pauses it on its own.
    with collector_paused():
        from monitor.config import ConfigError
        from monitor.rejections import tell
        from monitor.replay import replay

        inputs = load_inputs(config_path, predictions, ground_truth, at, other_files=bool(topic_files))
        mapped = _topic_files(inputs.config, topic_files)
    try:
        result = replay(inputs.config, inputs.predictions, inputs.ground_truth, inputs.at, inputs=mapped)
    except ConfigError as exc:
        raise click.ClickException("; ".join(exc.problems)) from None
    tell(result.rejections)
    if fmt is None:
        fmt = "table" if sys.stdout.isatty() else "prometheus"
    if fmt == "table":
        with collector_paused():
            from monitor.summary import print_summary

        print_summary(inputs.config, result, inputs.at)
    elif fmt == "json":
        import orjson

        from monitor.figures_json import figures_json

        stamp = datetime.fromtimestamp(inputs.at, UTC).isoformat() if inputs.at is not None else None
        sys.stdout.buffer.write(orjson.dumps({"at": stamp, "metrics": figures_json(result.figures)}) + b"\n")
    else:
        with collector_paused():
            from monitor.exporter import prometheus_text

        sys.stdout.buffer.write(prometheus_text(result.figures))
    # Output written: the process may end here rather than free the replay's state object by object.
    # Not while a join holds an on-disk store (join.memory_entries): dropping it removes its directory.
    if not any(getattr(m.join, "store_dir", None) for m in result.engine.models.values()):
        exit_now()

def _topic_files(config: MonitorConfig, specs: tuple[str, ...]) -> dict[str, list[bytes]]:
    """--input TOPIC=FILE options: every topic must be one the config reads; every problem named at once."""
    known = {topic for _, topic in config.sources()}
    out: dict[str, list[bytes]] = {}
    problems = []
    for spec in specs:
        topic, sep, path = spec.partition("=")
        if not sep or not topic or not path:
            problems.append(f"--input {spec!r}: expected TOPIC=FILE")
        elif topic not in known:
            problems.append(f"--input {spec!r}: the config reads no topic {topic!r} (it reads {sorted(known)})")
        elif topic in out:
            problems.append(f"--input {spec!r}: topic {topic!r} is given twice")
        elif not Path(path).is_file():
            problems.append(f"--input {spec!r}: file {path!r} does not exist")
        else:
            out[topic] = read_lines(Path(path))
    if problems:
        raise click.UsageError("\n".join(problems))
    return out
