"""Builders of raw event bytes for tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

BASE = datetime(2026, 11, 20, tzinfo=UTC).timestamp()


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def prediction(pid: str, ts: float, scores: dict[str, float], model: str = "m", version: str = "v1",
               **extra: Any) -> bytes:
    event = {"prediction_id": pid, "model": model, "model_version": version, "timestamp": rfc3339(ts),
             "scores": scores, **extra}
    return orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY, default=float)


def ground_truth(pid: str, ts: float, labels: list[str] | dict[str, int], model: str = "m") -> bytes:
    return orjson.dumps({"prediction_id": pid, "model": model, "timestamp": rfc3339(ts), "labels": labels})
