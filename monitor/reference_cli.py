"""The `monitor reference` command line; the work is monitor/reference.py.

Only click at import time: `monitor reference --help` must not pay for numpy, pydantic or the decoder.
"""

from __future__ import annotations

import click

__all__ = ["reference_command"]


@click.command("reference")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--model", required=True, help="Model name from the config.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.argument("sample", type=click.Path(dir_okay=False, exists=True, allow_dash=True))
def reference_command(config_path: str, model: str, output: str, sample: str) -> None:
    """Freeze drift bins from SAMPLE (JSON lines of prediction events; .gz, .zst or '-' too) into OUTPUT."""
    from monitor.reference import write_reference

    write_reference(config_path, model, output, sample)
