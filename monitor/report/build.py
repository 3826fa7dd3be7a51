"""Files -> replay (with the timeline) -> view model -> HTML; the body of `monitor report`, importable by tests."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click

from monitor.config import ConfigError, MonitorConfig, format_duration
from monitor.engine.engine import Engine
from monitor.engine.figures import Figures
from monitor.inputs import load_inputs
from monitor.rejections import tell
from monitor.report.headline import Headline, build_headline
from monitor.report.html import render, when
from monitor.report.model import ReportView, build_report
from monitor.report.timeline import Timeline, replay_with_timeline
from monitor.rules.generate import NotGeneratedRules, read_rule_options
from monitor.rules.options import RuleOptions


class NoUsableEvents(click.ClickException):
    """Nothing was evaluated: a report would show an empty page dated at the epoch."""


@dataclass(frozen=True)
class Report:
    view: ReportView
    headline: Headline
    timeline: Timeline | None
    engine: Engine
    figures: Figures


def make_report(config: MonitorConfig, predictions: list[bytes], ground_truth: list[bytes],
                at: float | None = None, window: str | None = None, opts: RuleOptions | None = None) -> Report:
    configured = [format_duration(w) for w in config.windows]
    if window is not None and window not in configured:
        raise click.BadParameter(f"{window!r} is not a configured window ({', '.join(configured)})",
                                 param_hint="--window")
    replayed = replay_with_timeline(config, predictions, ground_truth, at, opts)
    engine, figures, evaluated_at, timeline = replayed.engine, replayed.figures, replayed.at, replayed.timeline
    # The per-file rejection summary `monitor replay` prints, and its failure when a file gave nothing.
    tell(replayed.rejections)
    if evaluated_at is None or engine.latest_event_time is None:
        raise NoUsableEvents(_nothing_usable(engine.invalid, len(predictions), len(ground_truth), at))
    view = build_report(config, engine, figures, evaluated_at, window, opts)
    return Report(view, build_headline(config, view, timeline), timeline, engine, figures)


def report_view(config: MonitorConfig, predictions: list[bytes], ground_truth: list[bytes],
                at: float | None = None, window: str | None = None,
                opts: RuleOptions | None = None) -> tuple[ReportView, Engine, Figures]:
    r = make_report(config, predictions, ground_truth, at, window, opts)
    return r.view, r.engine, r.figures


def _nothing_usable(invalid: Counter[tuple[str, str]], n_predictions: int, n_ground_truth: int,
                    at: float | None) -> str:
    total = n_predictions + n_ground_truth
    rejected = sum(invalid.values())
    if total == 0:
        return ("no events to report on: the prediction and ground-truth inputs are empty "
                "(with --config, pass --predictions and/or --ground-truth)")
    if rejected >= total:
        return f"no usable event: all {total:,} events were rejected as invalid ({rejection_summary(invalid)})"
    if at is not None:
        return (f"no usable event at or before --at {when(at)} ({total - rejected:,} valid events, all later"
                + (f"; {rejection_summary(invalid)}" if rejected else "") + ")")
    return f"no usable event among {total:,} ({rejection_summary(invalid)})"


def rejection_summary(invalid: Counter[tuple[str, str]]) -> str:
    """'predictions: invalid_json 3, missing_field 1; ground_truth: unknown_model 2'."""
    by_topic: dict[str, list[str]] = {}
    for (topic, reason), n in sorted(invalid.items()):
        if n > 0:
            by_topic.setdefault(topic, []).append(f"{reason} {n:,}")
    return "; ".join(f"{topic}: {', '.join(parts)}" for topic, parts in by_topic.items()) or "none rejected"


def build_html(config_path: str | None, predictions: str | None, ground_truth: str | None, at: str | None,
               window: str | None, with_evidently: bool = False, rules: str | None = None) -> str:
    opts = None
    if rules is not None:
        try:
            opts = read_rule_options(Path(rules))
        except NotGeneratedRules as exc:
            raise click.BadParameter(str(exc), param_hint="--rules") from None
    inputs = load_inputs(config_path, predictions, ground_truth, at)
    config, pred_lines, gt_lines = inputs.config, inputs.predictions, inputs.ground_truth
    try:
        report = make_report(config, pred_lines, gt_lines, inputs.at, window, opts)
    except ConfigError as exc:
        raise click.ClickException("; ".join(exc.problems)) from None
    rejected = sum(report.engine.invalid.values())
    if rejected:
        # The per-file details went to stderr already (make_report); this says where the report shows them.
        click.echo(f"monitor report: {rejected:,} of {len(pred_lines) + len(gt_lines):,} events rejected as "
                   "invalid, listed under 'Invalid input' in the report", err=True)
    extra: list[str] = []
    if with_evidently:
        from monitor.report.drift_embed import evidently_section

        extra.append(evidently_section(config, pred_lines, gt_lines, report.view.at, opts))
    return render(report.view, extra, headline=report.headline, timeline=report.timeline)
