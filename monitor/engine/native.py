"""The optional native core (docs/native.md): whether it is here, and its per-model configuration."""

from __future__ import annotations

import os
from typing import Any

from monitor.config import MonitorConfig
from monitor.reference import Reference

try:
    from monitor import _native  # type: ignore[attr-defined]
except ImportError:  # built without a Rust toolchain: the pure-Python engine runs
    _native = None


def enabled() -> bool:
    """The native core is used unless it was not built or MLMON_NATIVE=0 asks for pure Python."""
    return _native is not None and os.environ.get("MLMON_NATIVE", "1") != "0"


def native_models(config: MonitorConfig, references: dict[str, Reference | None]) -> list[dict[str, Any]]:
    out = []
    for m in config.models:
        ref = references.get(m.name)
        cats = list(m.features.categorical)
        out.append({
            "name": m.name,
            "labels": list(m.labels),
            "thresholds": [float(m.threshold_for(x)) for x in m.labels],
            "multiclass": m.task == "multiclass",
            "numeric": list(m.features.numeric),
            "categorical": cats,
            "categories": [dict(ref.features[f]._lookup) if ref else None for f in cats],
            "other_bin": [ref.features[f].size - 1 if ref else 0 for f in cats],
        })
    return out
