"""Config in, the three dashboards out as deterministic JSON files named after their uids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitor.config import MonitorConfig
from monitor.dashboards import debug, executive, oncall
from monitor.dashboards.common import encode

# uid -> builder. The uid is the file name and Grafana's identity for the dashboard: never change one.
BUILDERS: dict[str, Callable[[MonitorConfig], dict[str, Any]]] = {
    executive.UID: executive.build,
    oncall.UID: oncall.build,
    debug.UID: debug.build,
}


def build_all(config: MonitorConfig) -> dict[str, dict[str, Any]]:
    """uid -> dashboard JSON data."""
    return {uid: build(config) for uid, build in BUILDERS.items()}


def render(config: MonitorConfig) -> dict[str, str]:
    """File name -> file text."""
    return {f"{uid}.json": encode(data) for uid, data in build_all(config).items()}


def write(config: MonitorConfig, out_dir: str | Path) -> list[Path]:
    """Write the dashboards; returns the files whose content changed (unchanged files are not touched)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in render(config).items():
        path = out / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def stale(config: MonitorConfig, out_dir: str | Path) -> list[str]:
    """Names of the dashboard files in out_dir that are missing or differ from a fresh generation."""
    out = Path(out_dir)
    return [
        name
        for name, text in render(config).items()
        if not (out / name).exists() or (out / name).read_text(encoding="utf-8") != text
    ]
