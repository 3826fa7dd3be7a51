"""Alertmanager webhook payloads (version 4) in, retraining request bodies out. Pure functions, no I/O.

Payload reference: https://prometheus.io/docs/alerting/latest/configuration/#webhook_config
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from monitor.conventions import ALERT_RETRAINING_RECOMMENDED, L_LABEL, L_MODEL, L_VERSION

REQUEST_SCHEMA: Final = "mlmon.retraining-request/v1"
# Annotations that are prose, not figures, and go into `reasons` instead.
_PROSE_ANNOTATIONS: Final = frozenset({"summary", "description", "runbook_url", "dashboard_url"})


class PayloadError(ValueError):
    """The body is JSON but not an Alertmanager webhook payload; the message names the offending key."""


@dataclass(frozen=True)
class Alert:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str  # as sent, for the request body
    starts_at_utc: str  # normalised, for the idempotency key (senders differ on 'Z' vs '+00:00')
    fingerprint: str
    generator_url: str | None

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(frozen=True)
class Notification:
    status: str
    receiver: str | None
    group_key: str | None
    external_url: str | None
    truncated_alerts: int
    alerts: tuple[Alert, ...]


@dataclass(frozen=True)
class Episode:
    """One firing period of one alert: Alertmanager repeats it with the same fingerprint and startsAt."""

    fingerprint: str
    starts_at: str


def parse_rfc3339(value: str) -> datetime:
    # fromisoformat (3.11+) takes 'Z' and nanosecond fractions; a naive time would be ambiguous.
    dt = datetime.fromisoformat(value.strip())
    if dt.tzinfo is None:
        raise ValueError("has no time zone")
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # e.g. year 1 with a positive offset falls before datetime.min in UTC
        raise ValueError("is out of range") from None


def _str_map(value: Any, path: str, required: bool) -> dict[str, str]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise PayloadError(f"{path}: must be an object of strings")
    for k, v in value.items():
        if not isinstance(v, str):
            raise PayloadError(f"{path}.{k}: must be a string, got {type(v).__name__}")
        try:
            # JSON can escape lone surrogates (\ud800) that no UTF-8 encoder, SQLite or HTTP header takes.
            k.encode("utf-8")
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadError(f"{path}: keys and values must be valid Unicode text") from None
    return dict(value)


def _opt_str(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise PayloadError(f"{path}{key}: must be a string")
    return value


def _fallback_fingerprint(labels: Mapping[str, str]) -> str:
    # Senders other than Alertmanager may omit the fingerprint; Alertmanager's is a hash of the label set,
    # so a hash of the sorted labels identifies the same alert the same way.
    canon = json.dumps(sorted(labels.items()), separators=(",", ":"), ensure_ascii=False)
    return "labels:" + hashlib.sha256(canon.encode()).hexdigest()[:16]


def _parse_alert(raw: Any, path: str) -> Alert:
    if not isinstance(raw, dict):
        raise PayloadError(f"{path}: must be an object")
    status = raw.get("status")
    if status not in ("firing", "resolved"):
        raise PayloadError(f"{path}.status: must be 'firing' or 'resolved'")
    labels = _str_map(raw.get("labels"), f"{path}.labels", required=True)
    annotations = _str_map(raw.get("annotations"), f"{path}.annotations", required=False)
    starts_at = raw.get("startsAt")
    if not isinstance(starts_at, str):
        raise PayloadError(f"{path}.startsAt: required RFC 3339 time is missing")
    try:
        starts_utc = parse_rfc3339(starts_at).isoformat().replace("+00:00", "Z")
    except ValueError:
        raise PayloadError(f"{path}.startsAt: {starts_at[:64]!r} is not an RFC 3339 time") from None
    fingerprint = _opt_str(raw, "fingerprint", path + ".") or _fallback_fingerprint(labels)
    return Alert(
        status=status,
        labels=labels,
        annotations=annotations,
        starts_at=starts_at,
        starts_at_utc=starts_utc,
        fingerprint=fingerprint,
        generator_url=_opt_str(raw, "generatorURL", path + "."),
    )


def parse_notification(data: Any) -> Notification:
    """Validate the decoded JSON of a webhook; raises PayloadError naming the first bad key."""
    if not isinstance(data, dict):
        raise PayloadError("(top level): must be a JSON object")
    if data.get("version") != "4":
        got = repr(data.get("version"))[:40]
        raise PayloadError(f'version: expected "4" (Alertmanager webhook payload), got {got}')
    status = data.get("status")
    if status not in ("firing", "resolved"):
        raise PayloadError("status: must be 'firing' or 'resolved'")
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("alerts: must be a list")
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        _str_map(data.get(key), key, required=False)
    truncated = data.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise PayloadError("truncatedAlerts: must be a non-negative integer")
    return Notification(
        status=status,
        receiver=_opt_str(data, "receiver", ""),
        group_key=_opt_str(data, "groupKey", ""),
        external_url=_opt_str(data, "externalURL", ""),
        truncated_alerts=truncated,
        alerts=tuple(_parse_alert(a, f"alerts[{i}]") for i, a in enumerate(alerts)),
    )


@dataclass(frozen=True)
class Selection:
    """Firing retraining alerts grouped by model, plus counts of what was left out and why."""

    by_model: dict[str, list[Alert]]
    ignored: dict[str, int]  # reason -> alerts


def select_retraining(n: Notification) -> Selection:
    by_model: dict[str, list[Alert]] = {}
    ignored: dict[str, int] = {}
    for alert in n.alerts:
        if alert.alertname != ALERT_RETRAINING_RECOMMENDED:
            reason = "other_alert"
        elif alert.status != "firing":
            reason = "resolved"
        elif not alert.labels.get(L_MODEL):
            reason = "no_model_label"
        else:
            by_model.setdefault(alert.labels[L_MODEL], []).append(alert)
            continue
        ignored[reason] = ignored.get(reason, 0) + 1
    return Selection(by_model, ignored)


def episodes(alerts: Iterable[Alert]) -> list[Episode]:
    unique = {Episode(a.fingerprint, a.starts_at_utc) for a in alerts}
    return sorted(unique, key=lambda e: (e.fingerprint, e.starts_at))


def idempotency_key(model: str, new_episodes: Iterable[Episode]) -> str:
    """Deterministic in (model, fingerprints, startsAt): a repeated notification maps to the same key."""
    h = hashlib.sha256()
    h.update(b"mlmon-retraining\x00" + model.encode())
    for e in sorted(new_episodes, key=lambda e: (e.fingerprint, e.starts_at)):
        h.update(b"\x00" + e.fingerprint.encode() + b"@" + e.starts_at.encode())
    return h.hexdigest()


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _figures(alert: Alert) -> dict[str, float]:
    # Rules put the values that fired the alert in annotations (e.g. value, f1, burn_rate); labels can hold
    # numbers too (thresholds). Whatever parses as a finite number is a figure; annotations win on clashes.
    out: dict[str, float] = {}
    for source in (alert.labels, alert.annotations):
        for k, v in source.items():
            if k in _PROSE_ANNOTATIONS or k == "alertname":
                continue
            x = _number(v)
            if x is not None:
                out[k] = x
    return out


def _split(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def build_request_body(
    model: str, alerts: list[Alert], key: str, created_at: float, notification: Notification
) -> bytes:
    """The retraining request, serialised once: these exact bytes are stored, signed and re-sent."""
    versions = sorted({a.labels[L_VERSION] for a in alerts if a.labels.get(L_VERSION)})
    labels: set[str] = set()
    for a in alerts:
        if a.labels.get(L_LABEL):
            labels.add(a.labels[L_LABEL])
        # A per-model rule can name several labels in one annotation.
        labels.update(_split(a.annotations.get("labels", "")))
    ordered = sorted(alerts, key=lambda a: (a.starts_at_utc, a.fingerprint))
    body = {
        "schema": REQUEST_SCHEMA,
        "idempotency_key": key,
        "model": model,
        "versions": versions,
        "labels": sorted(labels),
        "reasons": [
            {
                k: v
                for k, v in (
                    ("alertname", a.alertname),
                    ("summary", a.annotations.get("summary")),
                    ("description", a.annotations.get("description")),
                    ("severity", a.labels.get("severity")),
                )
                if v
            }
            for a in ordered
        ],
        "figures": [
            {"fingerprint": a.fingerprint, **({"label": a.labels[L_LABEL]} if a.labels.get(L_LABEL) else {}),
             "values": _figures(a)}
            for a in ordered
        ],
        "starts_at": ordered[0].starts_at,
        "created_at": datetime.fromtimestamp(created_at, UTC).isoformat().replace("+00:00", "Z"),
        "alerts": [
            {
                "fingerprint": a.fingerprint,
                "starts_at": a.starts_at,
                "labels": a.labels,
                "annotations": a.annotations,
                **({"generator_url": a.generator_url} if a.generator_url else {}),
            }
            for a in ordered
        ],
        "source": {
            k: v
            for k, v in (
                ("receiver", notification.receiver),
                ("group_key", notification.group_key),
                ("external_url", notification.external_url),
            )
            if v
        },
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
