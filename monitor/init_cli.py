"""The `monitor init` command line; the work is monitor/init.py.

Only click at import time: `monitor init --help` must not pay for numpy, pydantic or the decoder.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["init_command"]


@click.command("init")
@click.argument("predictions", type=click.Path(dir_okay=False, exists=True, allow_dash=True))
@click.option("--ground-truth", type=click.Path(dir_okay=False, exists=True, allow_dash=True),
              help="Ground truth for (some of) the sample: SLO targets are suggested from the sample's quality.")
@click.option("--model", help="The model to configure when the sample holds several.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("mlmon.yaml"),
              show_default=True, help="Config file to write; the reference goes to reference/ beside it.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def init_command(predictions: str, ground_truth: str | None, model: str | None, output: Path, force: bool) -> None:
    """Write a commented starter config from PREDICTIONS, a sample of your prediction events (JSON lines in
    the native shape, see docs/getting-started.md; .gz, .zst or '-' too)."""
    from monitor.init import run_init

    run_init(predictions, ground_truth, model, output, force)
