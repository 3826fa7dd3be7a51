"""Tiny PromQL builders: quoting, selectors, aggregation clauses and number literals."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping


def quote(value: str) -> str:
    """A PromQL string literal (JSON escaping is a subset PromQL accepts)."""
    return json.dumps(value, ensure_ascii=False)


def sel(name: str, matchers: Mapping[str, str] | None = None, regex: Mapping[str, str] | None = None) -> str:
    """`name{a="x", b=~"y|z"}`; equality matchers first, each group in the order given."""
    parts = [f"{k}={quote(v)}" for k, v in (matchers or {}).items()]
    parts += [f"{k}=~{quote(v)}" for k, v in (regex or {}).items()]
    return f"{name}{{{', '.join(parts)}}}" if parts else name


def labels(names: Iterable[str]) -> str:
    return ", ".join(names)


def by(op: str, names: Iterable[str], expr: str) -> str:
    return f"{op} by ({labels(names)}) ({expr})"


def num(x: float) -> str:
    """A short, exact-enough literal: 14.4, 6, 0.25, 1e-06."""
    return f"{x:.6g}"


def series(name: str, label_values: Mapping[str, str]) -> str:
    """A promtool input-series / exp_samples label string with labels sorted (stable output)."""
    inner = ", ".join(f"{k}={quote(v)}" for k, v in sorted(label_values.items()))
    return f"{name}{{{inner}}}"
