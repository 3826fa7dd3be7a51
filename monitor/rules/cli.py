"""`monitor rules`: generate the Prometheus rules and their promtool tests, optionally check them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import click

from monitor.config import ConfigError, load_config
from monitor.rules.check import PromtoolMissing, check
from monitor.rules.generate import generate, write
from monitor.rules.options import DEFAULT_JOB, DEFAULT_RUNBOOK_BASE, RuleOptions


def _bundled_config() -> str:
    return str(resources.files("monitor") / "examples" / "config.yaml")


def _parse_for(values: tuple[str, ...]) -> dict[str, str]:
    overrides = {}
    for item in values:
        key, sep, duration = item.partition("=")
        if not sep or not key or not duration:
            raise click.BadParameter(f"{item!r}: expected ALERT=DURATION, ALERT:TIER=DURATION or *=DURATION")
        overrides[key] = duration
    return overrides


@click.command("rules")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Monitor config (default: the bundled example).")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), default="alert_rules",
              show_default=True, help="Directory for the rule files and tests/.")
@click.option("--check", "run_check", is_flag=True, help="Run promtool check/test on the output; non-zero on failure.")
@click.option("--runbook-base", default=DEFAULT_RUNBOOK_BASE, show_default=True,
              help="Where docs/runbooks/ is served, e.g. https://git.example.com/team/mlmon/blob/main/docs/runbooks/ "
                   "(runbook_url = prefix + AlertName.md); the default is the path in a checkout.")
@click.option("--job", default=DEFAULT_JOB, show_default=True, help="Prometheus scrape job of the workers.")
@click.option("--ece-threshold", type=click.FloatRange(0, 1, min_open=True), default=RuleOptions.ece_threshold,
              show_default=True, help="MLMonitorCalibrationDrift fires above this ECE.")
@click.option("--for", "for_items", multiple=True, metavar="ALERT=DURATION",
              help="Override a `for:` duration (alert name, MLMonitorLabelErrorBudgetBurn:<tier>, or *). "
                   "Repeatable.")
def rules_command(config_path: str | None, out_dir: str, run_check: bool, runbook_base: str, job: str,
                  ece_threshold: float, for_items: tuple[str, ...]) -> None:
    """Generate recording rules, alert rules and promtool tests from the config."""
    path = config_path or _bundled_config()
    try:
        cfg = load_config(path)
        opts = RuleOptions(runbook_base=runbook_base, job=job, ece_threshold=ece_threshold,
                           for_overrides=_parse_for(for_items))
    except ConfigError as exc:
        raise click.ClickException("\n".join(exc.problems)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--for") from None
    out = Path(out_dir)
    for written in write(generate(cfg, opts, source=Path(path).name), out):
        click.echo(f"wrote {written}")
    if not run_check:
        return
    try:
        results = check(out)
    except PromtoolMissing as exc:
        raise click.ClickException(str(exc)) from None
    for result in results:
        click.echo(f"$ {' '.join(result.command)}\n{result.output.rstrip()}")
    if not all(r.ok for r in results):
        raise click.ClickException("promtool reported failures (see above)")
