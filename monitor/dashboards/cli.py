"""`monitor dashboards generate | push | queries`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import click

from monitor.dashboards import DEFAULT_FOLDER_TITLE, DEFAULT_FOLDER_UID, TOKEN_ENV

BUNDLED_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "config.yaml"


@click.group("dashboards")
def dashboards_group() -> None:
    """Generate the Grafana dashboards from the config, or push them to a Grafana."""


@dashboards_group.command("generate")
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Monitor config (default: the bundled example).",
)
@click.option(
    "-o", "--out", "out_dir", type=click.Path(file_okay=False), default="dashboards", show_default=True
)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when the files differ from a fresh build.")
def generate_command(config_path: str | None, out_dir: str, check: bool) -> None:
    """Build the executive, on-call and debug dashboards as JSON files named after their uids."""
    from monitor.config import ConfigError, load_config
    from monitor.dashboards import generate

    try:
        config = load_config(config_path or BUNDLED_CONFIG)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if check:
        stale = generate.stale(config, out_dir)
        for name in stale:
            click.echo(f"{Path(out_dir) / name}: differs from a fresh generation", err=True)
        if stale:
            raise SystemExit(1)
        click.echo("up to date")
        return
    changed = generate.write(config, out_dir)
    click.echo(f"{len(generate.BUILDERS)} dashboards in {out_dir} ({len(changed)} changed)")


@dashboards_group.command("push")
@click.option("--grafana-url", required=True, envvar="GRAFANA_URL", help="e.g. http://localhost:3000")
@click.option("--folder", "folder_title", default=DEFAULT_FOLDER_TITLE, show_default=True, help="Folder title.")
@click.option(
    "--folder-uid",
    default=DEFAULT_FOLDER_UID,
    show_default=True,
    help="Folder identity; changing --folder later renames the same folder.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(exists=True, file_okay=False),
    default="dashboards",
    show_default=True,
)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per HTTP request.")
def push_command(grafana_url: str, folder_title: str, folder_uid: str, directory: str, timeout: float) -> None:
    """Create or update the folder and the dashboards in Grafana (token from $GRAFANA_TOKEN)."""
    from grafana_client.client import GrafanaException

    from monitor.dashboards import push

    token = os.environ.get(TOKEN_ENV)
    if not token and not urlsplit(grafana_url).password:
        raise click.ClickException(
            f"set {TOKEN_ENV} to a Grafana service-account token (Editor role on the folder)"
        )
    try:
        dashboards = push.load_dashboards(directory)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if not dashboards:
        raise click.ClickException(f"no dashboard files in {directory}")
    where = push.redact_url(grafana_url)
    try:
        api = push.connect(grafana_url, token, timeout=timeout)
        report = push.push(api, dashboards, folder_title=folder_title, folder_uid=folder_uid)
    except GrafanaException as exc:
        # The library's messages carry the response, never the request headers (the token).
        raise click.ClickException(f"{where}: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"{where}: {exc}") from None
    click.echo(
        f"{where}: folder {folder_uid!r} {report.folder}; created {len(report.created)}, "
        f"updated {len(report.updated)}, unchanged {len(report.unchanged)}"
    )
    if report.foreign:
        click.echo(f"also in the folder, not pushed from {directory}: {', '.join(report.foreign)}")


@dashboards_group.command("queries")
@click.argument("dashboard_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--var",
    "-v",
    "assignments",
    multiple=True,
    metavar="NAME=VALUE[,VALUE]",
    help="Template variable value(s), e.g. -v model=moderation -v label=violence,spam.",
)
def queries_command(dashboard_file: str, assignments: tuple[str, ...]) -> None:
    """Print every panel query of a dashboard file with the variables expanded (title TAB expr)."""
    from monitor.dashboards.queries import panel_queries

    variables: dict[str, str | list[str]] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--var")
        values = value.split(",")
        variables[name.lstrip("$")] = values if len(values) > 1 else value
    data = json.loads(Path(dashboard_file).read_text(encoding="utf-8"))
    try:
        rows = panel_queries(data, variables)
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    for title, expr in rows:
        click.echo(f"{title}\t{expr}")
