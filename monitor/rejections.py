"""What was rejected from an input file, told to the person running the command.

Every command that reads events prints, on stderr, per input: how many events were rejected, by reason,
with the field the reason is about, the first line number and a short excerpt of that line, and fails
with a clear message when an input yielded nothing usable. The excerpt is cut short (at most 40
characters and never more than half the line): enough to recognise the line, never a whole raw event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import click

from monitor.events import InvalidEvent
from monitor.inputs import InputLines

EXCERPT_CHARS = 40
SHOWN_REASONS = 8


@dataclass(frozen=True)
class FirstRejection:
    reason: str
    count: int
    detail: str  # names the field, never payload text (monitor.events)
    line: int
    excerpt: str


@dataclass(frozen=True)
class InputReport:
    """One input file: events read, accepted, and the rejections by reason (most frequent first)."""

    source: str
    kind: str  # "prediction" | "ground-truth" | "sample"
    read: int
    rejected: list[FirstRejection] = field(default_factory=list)

    @property
    def rejected_count(self) -> int:
        return sum(r.count for r in self.rejected)

    @property
    def accepted(self) -> int:
        return self.read - self.rejected_count


def excerpt(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    keep = min(EXCERPT_CHARS, len(text) // 2)
    cut = "".join(ch if ch.isprintable() else "?" for ch in text[:keep])
    return cut + "…"


def summarize(lines: InputLines, kind: str, rejected: Mapping[int, InvalidEvent]) -> InputReport:
    """`rejected`: index into `lines` -> why that event was rejected."""
    first: dict[str, tuple[int, InvalidEvent]] = {}
    counts: dict[str, int] = {}
    for i in sorted(rejected):
        exc = rejected[i]
        counts[exc.reason] = counts.get(exc.reason, 0) + 1
        first.setdefault(exc.reason, (i, exc))
    rows = [FirstRejection(reason, counts[reason], exc.detail, lines.line_number(i), excerpt(lines[i]))
            for reason, (i, exc) in first.items()]
    rows.sort(key=lambda r: (-r.count, r.line))
    return InputReport(lines.source, kind, len(lines), rows)


def render(report: InputReport) -> list[str]:
    """The stderr lines for one input; none when nothing was rejected."""
    if not report.rejected:
        return []
    out = [f"{report.source}: {report.rejected_count:,} of {report.read:,} {report.kind} events rejected"]
    for r in report.rejected[:SHOWN_REASONS]:
        out.append(f"  {r.count:>7,} {r.reason}: {r.detail}; first at line {r.line}: {r.excerpt}")
    hidden = report.rejected[SHOWN_REASONS:]
    if hidden:
        out.append(f"  {sum(r.count for r in hidden):>7,} more, for {len(hidden)} other reasons")
    return out


def tell(reports: list[InputReport]) -> None:
    """Print the rejection summary on stderr, then fail if an input gave nothing usable."""
    for report in reports:
        for line in render(report):
            click.echo(line, err=True)
    require_usable(reports)


def require_usable(reports: list[InputReport]) -> None:
    for report in reports:
        if report.read == 0:
            raise click.ClickException(f"{report.source} holds no events (the file is empty)")
        if report.accepted == 0:
            top = report.rejected[0]
            raise click.ClickException(
                f"nothing usable in {report.source}: all {report.read:,} {report.kind} events were rejected "
                f"(mostly {top.reason}: {top.detail}); see docs/semantics.md for the event shape")
