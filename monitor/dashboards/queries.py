"""Panel queries of a dashboard with its template variables expanded the way Grafana expands them.

Used to run every panel query against a real Prometheus (each must return data) and by the tests to check
every expression with promtool. Plain JSON in, no grafana-foundation-sdk needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from monitor.config import parse_duration

VariableValue = str | Sequence[str]

# Grafana's built-in interval variables, with values that fit a Prometheus scraping every 15 s or faster.
BUILTIN_DEFAULTS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

ALL = "$__all"
# ${name}, ${name:format}, [[name]] and $name; `$1` (a label_replace reference) is not a variable.
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$([A-Za-z_]\w*)")
_REGEX_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|]")


def _regex_escape(value: str) -> str:
    # Grafana's prometheusSpecialRegexEscape: the result sits inside a PromQL string, hence the doubling.
    value = value.replace("\\", "\\\\\\\\")
    return _REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value)


def _plain_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\\\'")


class _Variables:
    def __init__(self, dashboard: Mapping[str, Any], given: Mapping[str, VariableValue]) -> None:
        self.defs = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
        self.values: dict[str, VariableValue] = dict(BUILTIN_DEFAULTS)
        for name, definition in self.defs.items():
            current = (definition.get("current") or {}).get("value")
            if current not in (None, "", []):
                self.values[name] = current
        self.values.update(given)
        # Grafana derives $__range_s and $__range_ms from the time range, so a given $__range sets them too.
        if "__range" in given and isinstance(given["__range"], str):
            seconds = parse_duration(given["__range"])
            self.values["__range_s"] = str(given.get("__range_s", seconds))
            self.values["__range_ms"] = str(given.get("__range_ms", seconds * 1000))

    def _resolved(self, name: str) -> list[str] | None:
        """The values the variable stands for, or None for 'All' (a regex, not a list of values)."""
        if name not in self.values:
            raise KeyError(name)
        value = self.values[name]
        values = [value] if isinstance(value, str) else list(value)
        if any(v in (ALL, "All") for v in values):
            return None
        return values

    def as_list(self, name: str) -> list[str]:
        values = self._resolved(name)
        if values is None:
            raise ValueError(f"${name} is 'All': pass the actual values to repeat a panel over them")
        return values

    def format_query(self, name: str) -> str:
        definition = self.defs.get(name, {})
        values = self._resolved(name)
        if values is None:
            all_value = definition.get("allValue")
            if not all_value:
                raise ValueError(f"${name} is 'All' but the variable has no allValue")
            return str(all_value)
        if not (definition.get("multi") or definition.get("includeAll")):
            return ",".join(_plain_escape(v) for v in values)
        escaped = [_regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    def format_text(self, name: str) -> str:
        values = self._resolved(name)
        return "All" if values is None else " + ".join(values)


def _expand(text: str, variables: _Variables, *, query: bool, where: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        try:
            return variables.format_query(name) if query else variables.format_text(name)
        except KeyError:
            raise KeyError(f"{where}: template variable ${name} has no value") from None

    return _VARIABLE.sub(substitute, text)


def _panels(dashboard: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Every non-row panel with the variable it repeats over (its own, or its expanded row's)."""
    row_repeat: str | None = None
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            row_repeat = panel.get("repeat") or None
            for inner in panel.get("panels", []) or []:  # collapsed rows keep their panels inside
                yield inner, inner.get("repeat") or row_repeat
            continue
        yield panel, panel.get("repeat") or row_repeat


def panel_queries(
    dashboard_json: Mapping[str, Any], variables: Mapping[str, VariableValue]
) -> list[tuple[str, str]]:
    """[(panel title, PromQL expression)] for every target of every panel, variables expanded.

    `variables` maps names without `$` to a value or a list of values (multi-select), e.g.
    {"model": "moderation", "version": ["v7", "v8"], "label": "violence", "window": "1h",
    "__rate_interval": "30s"}. Values not given fall back to the dashboard's saved current value and, for
    Grafana's built-ins ($__rate_interval, $__interval, $__range, ...), to BUILTIN_DEFAULTS. Multi-value
    variables are regex-escaped and joined as (a|b), as Grafana's Prometheus datasource does. A panel that
    repeats over a variable yields its queries once per value, titled per value. An unknown variable
    raises KeyError naming the panel.
    """
    base = _Variables(dashboard_json, variables)
    out: list[tuple[str, str]] = []
    for panel, repeat in _panels(dashboard_json):
        title = panel.get("title", "")
        instances = [base]
        if repeat:
            instances = []
            for value in base.as_list(repeat):
                instances.append(_Variables(dashboard_json, {**base.values, repeat: value}))
        for variables_for_panel in instances:
            shown = _expand(title, variables_for_panel, query=False, where=title)
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if expr:
                    out.append((shown, _expand(expr, variables_for_panel, query=True, where=shown)))
    return out
