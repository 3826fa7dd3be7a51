"""Files -> replay -> view model -> HTML; the body of `monitor report`, importable by tests."""

from __future__ import annotations

import click

from monitor.config import ConfigError, MonitorConfig, format_duration
from monitor.engine.engine import Engine
from monitor.engine.figures import Figures
from monitor.inputs import load_inputs
from monitor.replay import run_replay
from monitor.report.html import render
from monitor.report.model import ReportView, build_report


def evaluate(config: MonitorConfig, predictions: list[bytes], ground_truth: list[bytes],
             at: float | None) -> tuple[Engine, Figures, float]:
    """Replay, and the evaluation time the figures are for (replay's default: the newest event time)."""
    engine, figures = run_replay(config, predictions, ground_truth, at)
    when = at if at is not None else (engine.latest_event_time or 0.0)
    return engine, figures, when


def report_view(config: MonitorConfig, predictions: list[bytes], ground_truth: list[bytes],
                at: float | None = None, window: str | None = None) -> tuple[ReportView, Engine, Figures]:
    configured = [format_duration(w) for w in config.windows]
    if window is not None and window not in configured:
        raise click.BadParameter(f"{window!r} is not a configured window ({', '.join(configured)})",
                                 param_hint="--window")
    engine, figures, when = evaluate(config, predictions, ground_truth, at)
    return build_report(config, engine, figures, when, window), engine, figures


def build_html(config_path: str | None, predictions: str | None, ground_truth: str | None, at: str | None,
               window: str | None, with_evidently: bool = False) -> str:
    inputs = load_inputs(config_path, predictions, ground_truth, at)
    config, pred_lines, gt_lines = inputs.config, inputs.predictions, inputs.ground_truth
    try:
        view, _, _ = report_view(config, pred_lines, gt_lines, inputs.at, window)
    except ConfigError as exc:
        raise click.ClickException("; ".join(exc.problems)) from None
    extra: list[str] = []
    if with_evidently:
        from monitor.report.drift_embed import evidently_section

        extra.append(evidently_section(config, pred_lines, gt_lines, view.at))
    return render(view, extra)
