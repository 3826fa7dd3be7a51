"""The optional native core (docs/native.md): whether it is here, and its per-model configuration."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from monitor.config import MonitorConfig
from monitor.reference import Reference

if TYPE_CHECKING:
    from monitor._native import ModelDict

try:
    from monitor import _native
except ImportError:  # built without a Rust toolchain: the pure-Python engine runs
    _native = None  # type: ignore[assignment]


def enabled() -> bool:
    """The native core is used unless it was not built or MLMON_NATIVE=0 asks for pure Python."""
    return _native is not None and os.environ.get("MLMON_NATIVE", "1") != "0"


def native_models(config: MonitorConfig, references: dict[str, Reference | None]) -> list[ModelDict]:
    out: list[ModelDict] = []
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


def native_readings(config: MonitorConfig,
                    readers: dict[tuple[str, str], Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The mapped inputs the fast path can read, per (side, topic): a plain body (no envelope, JSON
    payload), no `when`, no native events on the same topic, and every field a simple path
    (`monitor.config.simple_path`). Everything else stays with the exact reader (monitor.mapping)."""
    from monitor.config import simple_path

    index = {m.name: i for i, m in enumerate(config.models)}
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, reader in readers.items():
        if reader.plain or reader.native or reader.envelope != "none" or reader.oip_protobuf:
            continue
        mappings = []
        for m in reader.mappings:
            if m.when is not None:
                break
            paths = {name: simple_path(f.expression) for name, f in m.fields.items()}
            features = ({f.name.split(".", 1)[1]: simple_path(f.expression) for f in m.feature_fields}
                        if m.feature_fields is not None else None)
            model_path = None if m.constant_model is not None else simple_path(m.model_field.expression)
            if (any(p is None for p in paths.values()) or (features and any(p is None for p in features.values()))
                    or (m.constant_model is None and model_path is None)):
                break
            mappings.append({"model": index[m.model.name], "name": m.model.name, "model_path": model_path,
                             "fields": paths, "features": features})
        else:
            out[key] = {"kind": reader.side, "mappings": mappings}
    return out


def fast_decoder(config: MonitorConfig, references: dict[str, Reference | None],
                 readers: dict[tuple[str, str], Any]) -> tuple[Any, dict[tuple[str, str], int]]:
    """The native decoder for the config and, per (side, topic) the fast path can read, its reading's index
    in the decoder. The caller checks `enabled()` (or was told to use the native core)."""
    readings = native_readings(config, readers)
    decoder = _native.Decoder(config.kafka.max_message_bytes, native_models(config, references),
                              [(r["kind"], r["mappings"]) for r in readings.values()])
    return decoder, {key: i for i, (key, ok) in enumerate(zip(readings, decoder.readable, strict=True)) if ok}
