"""`monitor report`: one evaluation as a self-contained HTML page, the debug view without Grafana.

Only click is imported here: `monitor --help` and the lazy CLI must stay light, so the engine, numpy and
the optional evidently embed are imported inside the command.
"""

from __future__ import annotations

from pathlib import Path

import click

from monitor.inputs import input_options

__all__ = ["report_command"]


@click.command("report")
@input_options
@click.option("--window", help="Window shown first, one of the configured windows "
              "(default: the shortest window holding all the data the longest one holds).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default="report.html",
              show_default=True, help="HTML file to write ('-' for stdout).")
@click.option("--evidently", "with_evidently", is_flag=True, default=False,
              help="Embed evidently's data-drift report on the features of a sample of joined events "
                   "(needs evidently; adds about 5 MB of inline script in a sandboxed frame).")
@click.option("--rules", type=click.Path(exists=True),
              help="The rules directory (or alert rule file) `monitor rules` wrote: alerts are judged with the "
                   "options they were generated with (default: the default options).")
def report_command(config_path: str | None, predictions: str | None, ground_truth: str | None, at: str | None,
                   window: str | None, output: str, with_evidently: bool, rules: str | None) -> None:
    """Write a self-contained HTML report of one evaluation (no network, no scripts).

    With no files, reports on the bundled example stream.
    """
    from monitor.report.build import build_html

    html = build_html(config_path, predictions, ground_truth, at, window, with_evidently, rules)
    if output == "-":
        click.echo(html, nl=False)
        return
    Path(output).write_text(html, encoding="utf-8")
    click.echo(f"wrote {output} ({len(html.encode()) / 1024:,.0f} KiB)", err=True)
