"""The backtest result as a terminal table (rich)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from monitor.backtest.run import BacktestResult

_HIDDEN = ("alertname", "severity", "model")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def print_table(result: BacktestResult, console: Console | None = None) -> None:
    # Piped output gets a wide table rather than rich's 80-column default with every cell folded.
    console = console or (Console() if sys.stdout.isatty() else Console(width=220))
    h = result.history
    end = h.end + h.step
    table = Table(title=f"Alerts that would have fired, {_when(h.start)} to {_when(end)} UTC "
                        f"({h.steps} evaluations every {h.step:g}s, Prometheus {result.prometheus_version})")
    for column in ("alert", "severity", "labels", "first fired (UTC)", "times fired", "firing (min)",
                   "longest (min)", "still firing"):
        table.add_column(column, justify="right" if "min" in column or column == "times fired" else "left")
    for a in result.alerts:
        durations = [((i.end if i.end is not None else end) - i.start) / 60 for i in a.intervals]
        labels = ", ".join(f"{k}={v}" for k, v in a.labels.items() if k not in _HIDDEN)
        table.add_row(a.alert, a.severity, labels, _when(a.intervals[0].start), str(len(a.intervals)),
                      f"{sum(durations):.0f}", f"{max(durations):.0f}",
                      "yes" if a.intervals[-1].end is None else "")
    if not result.alerts:
        console.print(table.title)
        console.print("no alert would have fired")
        return
    console.print(table)
