"""`monitor backtest`: which alerts would have fired over a recorded history, when, and for how long."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from monitor.inputs import parse_at


def _seconds(value: str, name: str) -> float:
    from monitor.config import parse_duration

    try:
        seconds = float(parse_duration(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None
    if seconds < 10 or seconds % 1:
        raise click.BadParameter("must be whole seconds, at least 10s", param_hint=name)
    return seconds


@click.command("backtest")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Monitor config.")
@click.option("--predictions", required=True, type=click.Path(dir_okay=False, exists=True),
              help="JSON lines of predictions.")
@click.option("--ground-truth", type=click.Path(dir_okay=False, exists=True), help="JSON lines of ground truth.")
@click.option("--rules", "rule_files", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Prometheus rule files (recording and alert rules); repeatable. "
                   "Default: what `monitor rules` generates for the config.")
@click.option("--step", default="60s", show_default=True,
              help="Evaluation interval: the engine is evaluated and the rules run at every step.")
@click.option("--start", help="First evaluation, RFC 3339 (default: the first event). Earlier events still "
                              "build the state.")
@click.option("--end", help="Last evaluation, RFC 3339 (default: the newest event).")
@click.option("--job", default="mlmon", show_default=True, help="Scrape job the rules expect the workers under.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes evaluating the engine (consecutive chunks of the steps).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the JSON result here.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep the TSDB and rule files here "
                                                                 "(must be empty or absent).")
def backtest_command(config_path: str, predictions: str, ground_truth: str | None, rule_files: tuple[str, ...],
                     step: str, start: str | None, end: str | None, job: str, workers: int, fmt: str,
                     output: str | None, workdir: str | None) -> None:
    """Replay a history through the engine and evaluate the alert rules over it with real Prometheus.

    Prints every alert that would have fired, when and for how long. Needs `prometheus` and `promtool`
    (Debian's 2.42 or 3.x; MLMON_PROMETHEUS / MLMON_PROMTOOL choose the binaries).
    """
    import orjson

    from monitor.backtest.history import HistoryError
    from monitor.backtest.report import print_table
    from monitor.backtest.rulefiles import RuleFileError
    from monitor.backtest.run import run_backtest
    from monitor.backtest.tsdb import BacktestToolError
    from monitor.config import ConfigError, load_config
    from monitor.inputs import read_lines

    step_s = _seconds(step, "--step")
    start_t, end_t = parse_at(start), parse_at(end)
    if start_t is not None and end_t is not None and end_t <= start_t:
        raise click.BadParameter("must be after --start", param_hint="--end")
    work = Path(workdir) if workdir else None
    if work is not None and work.exists() and any(work.iterdir()):
        raise click.BadParameter(f"{work} is not empty", param_hint="--workdir")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException("\n".join([f"{exc.source or config_path}:", *exc.problems])) from None
    err = click.get_text_stream("stderr")
    try:
        result = run_backtest(config, read_lines(Path(predictions)),
                              read_lines(Path(ground_truth)) if ground_truth else [],
                              rule_files=[Path(p) for p in rule_files] or None, step=step_s, start=start_t,
                              end=end_t, job=job, workers=workers, workdir=work, log=lambda m: click.echo(m, err=True))
    except RuleFileError as exc:
        raise click.ClickException("bad rule files:\n" + "\n".join(exc.problems)) from None
    except (HistoryError, BacktestToolError) as exc:
        raise click.ClickException(str(exc)) from None
    for item in result.to_json()["history"]["rejected"]:
        err.write(f"rejected {item['events']} {item['topic']} events: {item['reason']}\n")
    doc = result.to_json()
    if output:
        Path(output).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    if fmt == "json":
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print_table(result)
