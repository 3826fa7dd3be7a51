"""`monitor check-config`. Only click at import time: the config module (pydantic, yaml) loads when a
config is checked, not for `--help`."""

from __future__ import annotations

import click


@click.command("check-config")
@click.argument("config", type=click.Path(dir_okay=False))
def check_config_command(config: str) -> None:
    """Validate CONFIG; print every problem in one run (each naming its key, model references included) or
    'ok'. Exit 1 on problems."""
    from monitor.config import check_config

    problems = check_config(config)
    if not problems:
        click.echo("ok")
        return
    for line in problems:
        click.echo(f"{config}: {line}", err=True)
    raise SystemExit(1)
