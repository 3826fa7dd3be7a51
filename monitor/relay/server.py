"""The relay's HTTP side: POST /alertmanager, GET /healthz, GET /metrics, and the in-process API."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.config import DAY, MonitorConfig, RetrainingConfig
from monitor.relay.delivery import Backoff, Deliverer, redact_url
from monitor.relay.metrics import RelayMetrics
from monitor.relay.outbox import EnqueueResult, Outbox, OutboxLockedError
from monitor.relay.payload import (
    Alert,
    Notification,
    PayloadError,
    build_request_body,
    episodes,
    parse_notification,
    select_retraining,
)
from monitor.relay.signing import SIGNATURE_HEADER, verify_bearer, verify_signature

log = logging.getLogger("monitor.relay")

DEFAULT_PORT: Final = 8787
DEFAULT_OUTBOX: Final = "mlmon-relay-outbox.sqlite3"


class RelayStartupError(RuntimeError):
    """The relay cannot start; the message says why and never contains a secret."""


@dataclass(frozen=True)
class RelaySettings:
    """Knobs that are not in the product config; the defaults suit production, tests shrink the timings."""

    retry_initial: float = 1.0
    retry_max: float = 60.0
    request_timeout: float = 10.0
    max_body_bytes: int = 1 << 20
    # Finished requests and the alert episodes they cover are kept this long (dedupe memory).
    retention: float = 30 * DAY
    shutdown_grace: float = 5.0


def _read_secret(environ: Mapping[str, str], name: str, key: str) -> bytes:
    value = environ.get(name)
    if value is None or not value.strip():
        raise RelayStartupError(
            f"environment variable {name} (config key {key}) is not set or empty; "
            "it must hold the HMAC secret"
        )
    # Secret files and `echo` leave trailing newlines; Alertmanager trims its credentials_file likewise,
    # so both ends agree on the bytes.
    return value.strip().encode("utf-8")


def _error(status: int, reason: str, message: str) -> web.Response:
    return web.json_response({"error": reason, "message": message}, status=status)


def _version() -> str:
    try:
        return metadata.version("mlmon")
    except metadata.PackageNotFoundError:
        return "dev"


class Relay:
    def __init__(
        self,
        retraining: RetrainingConfig,
        models: list[str],
        outbox: Outbox,
        secret: bytes,
        inbound_secret: bytes | None,
        settings: RelaySettings,
    ) -> None:
        self.retraining = retraining
        self.outbox = outbox
        self.settings = settings
        self._inbound_secret = inbound_secret
        self.metrics = RelayMetrics(models, outbox.stats)
        self.deliverer = Deliverer(
            outbox,
            retraining.url,
            secret,
            self.metrics,
            Backoff(settings.retry_initial, settings.retry_max),
            settings.request_timeout,
            # Pruning must not forget requests the cooldown still needs to see.
            max(settings.retention, float(retraining.cooldown)),
            user_agent=f"mlmon-relay/{_version()}",
        )

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_body_bytes, middlewares=[_json_errors]
        )
        app.router.add_post("/alertmanager", self.handle_alertmanager)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/metrics", self.handle_metrics)
        return app

    def _reject(self, status: int, reason: str, message: str) -> web.Response:
        self.metrics.rejected.labels(reason).inc()
        log.warning("webhook rejected (%d %s): %s", status, reason, message)
        return _error(status, reason, message)

    async def handle_alertmanager(self, request: web.Request) -> web.Response:
        self.metrics.received.inc()
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._reject(413, "oversized", f"body of {request.content_length} bytes exceeds {limit}")
        if request.content_type != "application/json":
            return self._reject(
                415, "unsupported_media_type",
                f"Content-Type must be application/json, got {request.content_type[:80]!r}",
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(413, "oversized", f"body exceeds {limit} bytes")
        if self._inbound_secret is not None and not (
            verify_signature(self._inbound_secret, body, request.headers.get(SIGNATURE_HEADER))
            or verify_bearer(self._inbound_secret, request.headers.get("Authorization"))
        ):
            # One message for missing and wrong credentials: no hint for someone guessing.
            return self._reject(
                401, "unauthorized",
                f"a valid {SIGNATURE_HEADER} (HMAC-SHA256 of the body) or Authorization: Bearer is required",
            )
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._reject(400, "invalid_json", f"body is not valid JSON: {exc}")
        except RecursionError:
            return self._reject(400, "invalid_json", "body is nested too deeply")
        try:
            notification = parse_notification(data)
        except PayloadError as exc:
            return self._reject(400, "invalid_payload", f"not an Alertmanager webhook payload: {exc}")
        try:
            results = await self._accept(notification)
        except Exception:
            # Alertmanager retries on 5xx, so a failed outbox write loses nothing.
            log.exception("could not write to the outbox %s", self.outbox.path)
            return _error(500, "outbox_unavailable", "the request could not be stored; retry later")
        return web.json_response({"status": "ok", "requests": results})

    async def _accept(self, n: Notification) -> list[dict[str, Any]]:
        if n.truncated_alerts:
            log.warning(
                "Alertmanager truncated %d alerts from group %s (max_alerts); they are not relayed",
                n.truncated_alerts, n.group_key,
            )
        selection = select_retraining(n)
        for reason, count in selection.ignored.items():
            self.metrics.ignored.labels(reason).inc(count)
        results = []
        for model, alerts in selection.by_model.items():
            now = time.time()

            def make_body(
                key: str, model: str = model, alerts: list[Alert] = alerts, now: float = now
            ) -> bytes:
                return build_request_body(model, alerts, key, now, n)

            res: EnqueueResult = await asyncio.to_thread(
                self.outbox.enqueue, model, episodes(alerts), now, float(self.retraining.cooldown), make_body
            )
            m = self.metrics.model(model)
            if res.outcome == "enqueued":
                self.metrics.enqueued.labels(m).inc()
                self.deliverer.wake()
                log.info("retraining request queued: model=%s key=%s alerts=%d", model, res.idempotency_key,
                         len(alerts))
            elif res.outcome == "duplicate":
                self.metrics.duplicates.labels(m).inc()
                log.info("repeated notification ignored: model=%s key=%s", model, res.idempotency_key)
            else:
                self.metrics.suppressed.labels(m).inc()
                log.info("retraining request suppressed by cooldown: model=%s (%.0fs of cooldown left)",
                         model, res.cooldown_left)
            entry: dict[str, Any] = {"model": model, "result": res.outcome}
            if res.idempotency_key:
                entry["idempotency_key"] = res.idempotency_key
            if res.outcome == "suppressed":
                entry["cooldown_left_seconds"] = round(res.cooldown_left, 3)
            results.append(entry)
        return results

    async def handle_healthz(self, request: web.Request) -> web.Response:
        depth, oldest = await asyncio.to_thread(self.outbox.stats)
        ok = self.deliverer.running
        return web.json_response(
            {
                "status": "ok" if ok else "delivery_stopped",
                "outbox_pending": depth,
                "oldest_pending_age_seconds": 0.0 if oldest is None else round(time.time() - oldest, 3),
            },
            status=200 if ok else 503,
        )

    async def handle_metrics(self, request: web.Request) -> web.Response:
        # The outbox collector queries SQLite; keep that off the event loop.
        payload = await asyncio.to_thread(generate_latest, self.metrics.registry)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # aiohttp's own 404/405/413 are plain text; senders get the same JSON shape for every error.
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = {404: "not_found", 405: "method_not_allowed", 413: "oversized"}.get(exc.status, "http_error")
        resp = _error(exc.status, reason, exc.reason)
        if "Allow" in exc.headers:  # 405 must say which methods are allowed
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp


class RelayHandle:
    """A running relay: `.port`, `.url` (base URL), `.outbox`, `.metrics`; `await .close()` to stop."""

    def __init__(self, relay: Relay, runner: web.AppRunner, bind: str, port: int) -> None:
        self.relay = relay
        self._runner = runner
        self.bind = bind
        self.port = port
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}"

    @property
    def webhook_url(self) -> str:
        return self.url + "/alertmanager"

    @property
    def outbox(self) -> Outbox:
        return self.relay.outbox

    @property
    def metrics(self) -> RelayMetrics:
        return self.relay.metrics

    async def close(self) -> None:
        """Stop taking webhooks, let an in-flight delivery finish, close the outbox. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._runner.cleanup()
        await self.relay.deliverer.stop(self.relay.settings.shutdown_grace)
        await asyncio.to_thread(self.relay.outbox.close)

    async def __aenter__(self) -> RelayHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def resolve_outbox_path(cfg: MonitorConfig, outbox_path: str | Path | None) -> Path:
    """--outbox, else retraining.outbox, else ./mlmon-relay-outbox.sqlite3 (relative to the working dir)."""
    if outbox_path is not None:
        return Path(outbox_path)
    if cfg.retraining is not None and cfg.retraining.outbox is not None:
        return cfg.retraining.outbox
    return Path.cwd() / DEFAULT_OUTBOX


async def start_relay(
    cfg: MonitorConfig,
    port: int = DEFAULT_PORT,
    outbox_path: str | Path | None = None,
    *,
    bind: str = "127.0.0.1",
    settings: RelaySettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> RelayHandle:
    """Start the relay in the running event loop; `port=0` picks a free port (see `.port`).

    Raises RelayStartupError for a missing retraining section or secret, a locked outbox or a busy port.
    """
    settings = settings or RelaySettings()
    environ = os.environ if environ is None else environ
    rt = cfg.retraining
    if rt is None:
        raise RelayStartupError("the config has no `retraining` section (url, secret_env, cooldown)")
    secret = _read_secret(environ, rt.secret_env, "retraining.secret_env")
    inbound = (
        _read_secret(environ, rt.inbound_secret_env, "retraining.inbound_secret_env")
        if rt.inbound_secret_env
        else None
    )
    path = resolve_outbox_path(cfg, outbox_path)
    try:
        outbox = await asyncio.to_thread(Outbox, path)
    except OutboxLockedError as exc:
        raise RelayStartupError(str(exc)) from None
    except (OSError, sqlite3.Error) as exc:
        raise RelayStartupError(f"cannot open the outbox {path}: {exc}") from None
    relay = Relay(rt, [m.name for m in cfg.models], outbox, secret, inbound, settings)
    runner = web.AppRunner(relay.app(), access_log=logging.getLogger("monitor.relay.access"))
    await runner.setup()
    site = web.TCPSite(runner, bind, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await asyncio.to_thread(outbox.close)
        raise RelayStartupError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from None
    actual_port = runner.addresses[0][1]
    relay.deliverer.start()
    pending, _ = await asyncio.to_thread(outbox.stats)
    log.info(
        "relay listening on %s:%d, delivering to %s, outbox %s (%d pending), inbound auth %s",
        bind, actual_port, redact_url(rt.url), path, pending, "on" if inbound is not None else "off",
    )
    if inbound is None and bind not in ("127.0.0.1", "::1", "localhost"):
        log.warning("relay bound to %s without inbound auth (retraining.inbound_secret_env)", bind)
    return RelayHandle(relay, runner, bind, actual_port)
