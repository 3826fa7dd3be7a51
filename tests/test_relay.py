"""`monitor relay` over real HTTP on loopback: Alertmanager payloads in, signed requests to a real receiver.

Nothing of the relay is mocked: each test starts the relay (in-process via start_relay, or as the real
`monitor relay` process) against an aiohttp receiver that checks the signature the way docs/relay.md tells
receivers to. Backoff is shrunk through RelaySettings / --retry-* so the file stays fast.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from monitor.config import MonitorConfig, parse_config
from monitor.conventions import ALERT_LABEL_ERROR_BUDGET_BURN, ALERT_RETRAINING_RECOMMENDED
from monitor.relay import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    RelayHandle,
    RelaySettings,
    RelayStartupError,
    sign_body,
    start_relay,
    verify_bearer,
    verify_signature,
)
from monitor.services import Alertmanager, free_port
from tests.needs import needs_alertmanager

SECRET = "s3cr3t-relay-key-7f9c2a"  # distinctive, so a leak into logs is unmistakable
INBOUND = "inb0und-token-41d8e0"
SECRET_ENV = "MLMON_TEST_RELAY_SECRET"
INBOUND_ENV = "MLMON_TEST_RELAY_INBOUND"
FAST = RelaySettings(retry_initial=0.02, retry_max=0.15, request_timeout=1.0, shutdown_grace=1.0)


# --- helpers -------------------------------------------------------------------------------------------


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    at: float

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A retraining webhook receiver: verifies the signature, records what it accepted.

    `status` decides the answer to each valid request (default 200); only 2xx answers count as accepted.
    """

    secret: bytes = SECRET.encode()
    status: Callable[[int], int] = lambda n: 200
    accepted: list[Received] = field(default_factory=list)
    attempts: list[Received] = field(default_factory=list)
    bad_signatures: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        rec = Received(body, dict(request.headers), time.monotonic())
        if not verify_signature(self.secret, body, request.headers.get(SIGNATURE_HEADER)):
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        self.attempts.append(rec)
        status = self.status(len(self.attempts))
        if 200 <= status < 300:
            self.accepted.append(rec)
        return web.json_response({"ok": status < 300}, status=status)

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_post("/retrain", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/retrain"


def make_config(url: str, cooldown: str = "1h", inbound: bool = False, **extra: Any) -> MonitorConfig:
    retraining: dict[str, Any] = {"url": url, "secret_env": SECRET_ENV, "cooldown": cooldown, **extra}
    if inbound:
        retraining["inbound_secret_env"] = INBOUND_ENV
    return parse_config(
        {
            "models": [
                {"name": "moderation", "labels": ["violence", "hate", "spam"]},
                {"name": "fraud", "task": "binary", "labels": ["fraud"]},
            ],
            "retraining": retraining,
        }
    )


def alert(
    model: str = "moderation",
    fingerprint: str = "fp-violence",
    starts_at: str = "2026-11-20T10:00:00.123456789Z",
    *,
    label: str = "violence",
    status: str = "firing",
    alertname: str = ALERT_RETRAINING_RECOMMENDED,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": alertname, "model": model, "version": "v7", "label": label,
                   "severity": "ticket"},
        "annotations": annotations
        if annotations is not None
        else {"summary": f"{model}/{label}: recall below target for 6h", "value": "0.62", "f1": "0.58"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}/{alertname="MLMonitorRetrainingRecommended"}:{model="moderation"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "retraining-relay",
        "groupLabels": {"alertname": ALERT_RETRAINING_RECOMMENDED},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


async def post(
    handle: RelayHandle, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as s, s.post(handle.webhook_url, data=data, headers=hdrs) as r:
        return r.status, await r.json(content_type=None)


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll until cond() holds; returns the seconds it took."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not reached within {timeout:.1f}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


def sample(handle: RelayHandle, name: str, **labels: str) -> float:
    return handle.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(INBOUND_ENV, INBOUND)


@pytest.fixture()
def outbox(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite3"


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


# --- behaviour -----------------------------------------------------------------------------------------


def test_firing_alert_yields_exactly_one_signed_request(outbox: Path) -> None:
    async def main() -> None:
        rx = await Receiver().start()
        relay = await start_relay(make_config(rx.url), 0, outbox, settings=FAST)
        try:
            t0 = time.monotonic()
            status, resp = await post(
                relay,
                payload(
                    alert(),
                    alert(fingerprint="fp-other", alertname=ALERT_LABEL_ERROR_BUDGET_BURN),
                    alert(fingerprint="fp-old", status="resolved", starts_at="2026-11-19T10:00:00Z"),
                ),
            )
            assert status == 200, resp
            assert [r["result"] for r in resp["requests"]] == ["enqueued"]
            await wait_until(lambda: len(rx.accepted) == 1)
            latency = rx.accepted[0].at - t0
            await asyncio.sleep(0.2)  # nothing else may follow
            assert len(rx.accepted) == 1 and rx.bad_signatures == 0
            got = rx.accepted[0]
            body = got.json
            assert got.headers[IDEMPOTENCY_HEADER] == body["idempotency_key"] == resp["requests"][0]["idempotency_key"]
            assert got.headers[SIGNATURE_HEADER] == sign_body(SECRET.encode(), got.body)
            assert int(got.headers["X-Mlmon-Timestamp"]) == pytest.approx(time.time(), abs=5)
            assert body["model"] == "moderation"
            assert body["versions"] == ["v7"]
            assert body["labels"] == ["violence"]
            assert body["starts_at"] == "2026-11-20T10:00:00.123456789Z"
            assert body["reasons"] == [{
                "alertname": ALERT_RETRAINING_RECOMMENDED,
                "summary": "moderation/violence: recall below target for 6h",
                "severity": "ticket",
            }]
            assert body["figures"] == [{"fingerprint": "fp-violence", "label": "violence",
                                        "values": {"value": 0.62, "f1": 0.58}}]
            assert [a["fingerprint"] for a in body["alerts"]] == ["fp-violence"]
            assert body["source"]["receiver"] == "retraining-relay"
            assert sample(relay, "mlmon_relay_alerts_ignored_total", reason="other_alert") == 1
            assert sample(relay, "mlmon_relay_alerts_ignored_total", reason="resolved") == 1
            assert sample(relay, "mlmon_relay_deliveries_total", outcome="delivered") == 1
            print(f"\nwebhook in -> signed request at receiver: {latency * 1000:.1f} ms")
        finally:
            await relay.close()
            await rx.stop()

    run(main())


def test_repeated_notification_yields_one_request(outbox: Path) -> None:
    async def main() -> None:
        rx = await Receiver().start()
        relay = await start_relay(make_config(rx.url), 0, outbox, settings=FAST)
        try:
            note = payload(alert())
            results = []
            for _ in range(3):  # Alertmanager's repeat_interval re-sends a still-firing group
                status, resp = await post(relay, note)
                assert status == 200
                results.append(resp["requests"][0])
                await asyncio.sleep(0.05)
            # An HA pair of Alertmanagers sends the same notification concurrently.
            both = await asyncio.gather(post(relay, note), post(relay, note))
            assert [r["result"] for r in results] == ["enqueued", "duplicate", "duplicate"]
            assert {r["idempotency_key"] for r in results} == {results[0]["idempotency_key"]}
            assert all(s == 200 and r["requests"][0]["result"] == "duplicate" for s, r in both)
            await wait_until(lambda: len(rx.accepted) == 1)
            await asyncio.sleep(0.2)
            assert len(rx.accepted) == 1
            assert sample(relay, "mlmon_relay_duplicates_total", model="moderation") == 4
        finally:
            await relay.close()
            await rx.stop()

    run(main())


def test_cooldown_suppresses_a_second_request_for_the_same_model(outbox: Path) -> None:
    async def main() -> None:
        rx = await Receiver().start()
        relay = await start_relay(make_config(rx.url, cooldown="1h"), 0, outbox, settings=FAST)
        try:
            _, first = await post(relay, payload(alert()))
            # A different alert (new fingerprint) for the same model within the cooldown.
            _, second = await post(relay, payload(alert(fingerprint="fp-hate", label="hate")))
            # Another model has its own cooldown.
            _, third = await post(relay, payload(alert(model="fraud", fingerprint="fp-fraud", label="fraud")))
            assert first["requests"][0]["result"] == "enqueued"
            assert second["requests"][0]["result"] == "suppressed"
            assert 3590 < second["requests"][0]["cooldown_left_seconds"] <= 3600
            assert third["requests"][0]["result"] == "enqueued"
            await wait_until(lambda: len(rx.accepted) == 2)
            await asyncio.sleep(0.2)
            assert sorted(r.json["model"] for r in rx.accepted) == ["fraud", "moderation"]
            assert sample(relay, "mlmon_relay_cooldown_suppressions_total", model="moderation") == 1
            async with aiohttp.ClientSession() as s, s.get(relay.url + "/metrics") as r:
                text = await r.text()
            assert 'mlmon_relay_cooldown_suppressions_total{model="moderation"} 1.0' in text
            assert "mlmon_relay_outbox_depth 0.0" in text
        finally:
            await relay.close()
            await rx.stop()

    run(main())


def test_cooldown_expiry_lets_a_still_firing_alert_through(outbox: Path) -> None:
    async def main() -> None:
        rx = await Receiver().start()
        relay = await start_relay(make_config(rx.url, cooldown="1s"), 0, outbox, settings=FAST)
        try:
            await post(relay, payload(alert()))
            _, r2 = await post(relay, payload(alert(fingerprint="fp-hate", label="hate")))
            assert r2["requests"][0]["result"] == "suppressed"
            await asyncio.sleep(1.05)
            # Alertmanager repeats the group (both alerts still firing): only the suppressed one is new.
            _, r3 = await post(relay, payload(alert(), alert(fingerprint="fp-hate", label="hate")))
            assert r3["requests"][0]["result"] == "enqueued"
            await wait_until(lambda: len(rx.accepted) == 2)
            assert rx.accepted[1].json["labels"] == ["hate", "violence"]
        finally:
            await relay.close()
            await rx.stop()

    run(main())


def test_receiver_answering_503_then_recovering_gets_the_request_once(outbox: Path) -> None:
    async def main() -> None:
        recovered_at: list[float] = []

        def status(n: int) -> int:
            if n <= 4:
                return 503
            recovered_at.append(time.monotonic())
            return 200

        rx = await Receiver(status=status).start()
        relay = await start_relay(make_config(rx.url), 0, outbox, settings=FAST)
        try:
            await post(relay, payload(alert()))
            await wait_until(lambda: len(rx.accepted) == 1)
            await asyncio.sleep(0.3)
            assert len(rx.accepted) == 1
            assert len(rx.attempts) == 5
            assert len({a.headers[IDEMPOTENCY_HEADER] for a in rx.attempts}) == 1
            assert len({a.body for a in rx.attempts}) == 1  # the stored bytes are re-sent unchanged
            assert [a.headers["X-Mlmon-Delivery-Attempt"] for a in rx.attempts] == ["1", "2", "3", "4", "5"]
            assert sample(relay, "mlmon_relay_delivery_attempts_total", result="5xx") == 4
            assert relay.outbox.counts() == {"pending": 0, "delivered": 1, "failed": 0}
        finally:
            await relay.close()
            await rx.stop()

    run(main())


def test_receiver_not_listening_then_up_gets_the_request_once(outbox: Path) -> None:
    async def main() -> None:
        port = free_port()
        rx = Receiver()
        relay = await start_relay(make_config(f"http://127.0.0.1:{port}/retrain"), 0, outbox, settings=FAST)
        try:
            await post(relay, payload(alert()))
            await wait_until(lambda: sample(relay, "mlmon_relay_delivery_attempts_total",
                                            result="connection_error") >= 3)
            assert relay.outbox.stats()[0] == 1
            t_up = time.monotonic()
            await rx.start(port)
            await wait_until(lambda: len(rx.accepted) == 1)
            after_recovery = rx.accepted[0].at - t_up
            await asyncio.sleep(0.3)
            assert len(rx.accepted) == 1
            # The backoff cap (0.15 s here) bounds the wait after the receiver comes back (slack for CI load).
            assert after_recovery < FAST.retry_max + 2.0
            print(f"\nreceiver back -> delivered: {after_recovery * 1000:.0f} ms (retry cap {FAST.retry_max}s)")
        finally:
            await relay.close()
            await rx.stop()

    run(main())


def test_permanent_4xx_fails_without_retry_but_429_is_retried(outbox: Path) -> None:
    async def main() -> None:
        answers = {1: 400, 2: 429, 3: 200}
        rx = await Receiver(status=lambda n: answers.get(n, 500)).start()
        relay = await start_relay(make_config(rx.url), 0, outbox, settings=FAST)
        try:
            await post(relay, payload(alert()))
            await wait_until(lambda: relay.outbox.counts()["failed"] == 1)
            await asyncio.sleep(0.2)
            assert len(rx.attempts) == 1  # no retry after a plain 400
            await post(relay, payload(alert(model="fraud", fingerprint="fp-fraud", label="fraud")))
            await wait_until(lambda: len(rx.accepted) == 1)
            assert len(rx.attempts) == 3  # 429 was retried
            assert sample(relay, "mlmon_relay_deliveries_total", outcome="failed") == 1
            assert sample(relay, "mlmon_relay_delivery_attempts_total", result="retryable_4xx") == 1
            failed = [r for r in relay.outbox.requests() if r["status"] == "failed"]
            assert failed[0]["model"] == "moderation" and "HTTP 400" in str(failed[0]["last_error"])
            # A failed request does not start the cooldown: the next alert for the model goes out.
            _, r = await post(relay, payload(alert(fingerprint="fp-hate", label="hate")))
            assert r["requests"][0]["result"] == "enqueued"
        finally:
            await relay.close()
            await rx.stop()

    run(main())


def test_closed_relay_delivers_pending_request_after_restart(outbox: Path) -> None:
    async def main() -> None:
        port = free_port()
        cfg = make_config(f"http://127.0.0.1:{port}/retrain")
        relay = await start_relay(cfg, 0, outbox, settings=FAST)
        status, resp = await post(relay, payload(alert()))
        assert status == 200  # the 200 means it is on disk
        await wait_until(lambda: sample(relay, "mlmon_relay_delivery_attempts_total",
                                        result="connection_error") >= 1)
        await relay.close()

        rx = await Receiver().start(port)
        relay = await start_relay(cfg, 0, outbox, settings=FAST)
        try:
            await wait_until(lambda: len(rx.accepted) == 1)
            # The restarted relay still remembers the alert: a repeat is a duplicate.
            _, again = await post(relay, payload(alert()))
            assert again["requests"][0]["result"] == "duplicate"
            await asyncio.sleep(0.3)
            assert len(rx.accepted) == 1
            assert rx.accepted[0].headers[IDEMPOTENCY_HEADER] == resp["requests"][0]["idempotency_key"]
        finally:
            await relay.close()
            await rx.stop()

    run(main())


def test_killed_relay_process_delivers_after_restart(tmp_path: Path) -> None:
    """The real `monitor relay` process, SIGKILLed with an undelivered request, restarted on its outbox."""
    port, relay_port = free_port(), free_port()
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump({
        "models": [{"name": "moderation", "labels": ["violence", "hate"]}],
        "retraining": {"url": f"http://127.0.0.1:{port}/retrain", "secret_env": SECRET_ENV,
                       "cooldown": "1h", "outbox": "state/outbox.sqlite3"},
    }))
    env = {**os.environ, SECRET_ENV: SECRET}
    cmd = [sys.executable, "-m", "monitor.cli", "relay", "--config", str(config), "--port", str(relay_port),
           "--retry-initial", "0.02", "--retry-max", "0.15", "--log-level", "debug"]
    logs = [tmp_path / "relay1.log", tmp_path / "relay2.log"]

    async def healthy() -> None:
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(f"http://127.0.0.1:{relay_port}/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() - t0 < 10, "relay did not start"
                await asyncio.sleep(0.05)

    async def main() -> None:
        with logs[0].open("w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            await healthy()
            async with aiohttp.ClientSession() as s:
                url = f"http://127.0.0.1:{relay_port}/alertmanager"
                async with s.post(url, json=payload(alert())) as r:
                    assert r.status == 200
            await asyncio.sleep(0.2)  # a few failed attempts against the absent receiver
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        # The relay resolved the outbox against the config's directory, not its working directory.
        assert (tmp_path / "state" / "outbox.sqlite3").exists()

        rx = await Receiver().start(port)
        with logs[1].open("w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            t0 = time.monotonic()
            await wait_until(lambda: len(rx.accepted) == 1, timeout=10)
            print(f"\nrestart -> delivered: {time.monotonic() - t0:.2f} s (process start included)")
            await asyncio.sleep(0.3)
            assert len(rx.accepted) == 1
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            await rx.stop()

    run(main())
    text = "".join(p.read_text() for p in logs)
    assert "retraining request delivered" in text
    assert SECRET not in text


# --- inbound validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "reason"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b"\xff\xfe", "application/json", 400, "invalid_json"),
        (b'{"version": "4"}', "text/plain", 415, "unsupported_media_type"),
        (b"[]", "application/json", 400, "invalid_payload"),
        (b'{"status": "firing", "alerts": []}', "application/json", 400, "invalid_payload"),
        (b'{"version": "4", "status": "firing", "alerts": {}}', "application/json", 400, "invalid_payload"),
        (json.dumps(payload({**alert(), "startsAt": "yesterday"})).encode(), "application/json", 400,
         "invalid_payload"),
        (json.dumps(payload({**alert(), "labels": {"model": 7}})).encode(), "application/json", 400,
         "invalid_payload"),
        (json.dumps(payload({**alert(), "status": "pending"})).encode(), "application/json", 400,
         "invalid_payload"),
    ],
)
def test_malformed_inputs_get_a_clear_4xx(
    outbox: Path, raw: bytes, content_type: str, status: int, reason: str
) -> None:
    async def main() -> None:
        relay = await start_relay(make_config("http://127.0.0.1:9/retrain"), 0, outbox, settings=FAST)
        try:
            got, body = await post(relay, None, {"Content-Type": content_type}, raw=raw)
            assert (got, body["error"]) == (status, reason), body
            assert body["message"]
            assert sample(relay, "mlmon_relay_webhooks_rejected_total", reason=reason) == 1
            assert relay.outbox.stats()[0] == 0
        finally:
            await relay.close()

    run(main())


def test_payload_errors_name_the_key(outbox: Path) -> None:
    async def main() -> None:
        relay = await start_relay(make_config("http://127.0.0.1:9/retrain"), 0, outbox, settings=FAST)
        try:
            _, body = await post(relay, payload(alert(), {**alert(), "startsAt": "yesterday"}))
            assert "alerts[1].startsAt" in body["message"]
            _, body = await post(relay, {**payload(), "version": "3"})
            assert body["message"].startswith("not an Alertmanager webhook payload: version")
        finally:
            await relay.close()

    run(main())


def test_oversized_bodies_and_unknown_routes(outbox: Path) -> None:
    async def main() -> None:
        settings = RelaySettings(**{**FAST.__dict__, "max_body_bytes": 4096})
        relay = await start_relay(make_config("http://127.0.0.1:9/retrain"), 0, outbox, settings=settings)
        try:
            big = payload(alert(annotations={"summary": "x" * 5000}))
            status, body = await post(relay, big)
            assert (status, body["error"]) == (413, "oversized")

            async def chunks() -> Any:  # no Content-Length: the limit must hold while reading
                for _ in range(10):
                    yield b" " * 1000

            async with aiohttp.ClientSession() as s:
                async with s.post(relay.webhook_url, data=chunks(),
                                  headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 413
                    assert (await r.json())["error"] == "oversized"
                async with s.get(relay.webhook_url) as r:
                    assert r.status == 405 and (await r.json())["error"] == "method_not_allowed"
                async with s.get(relay.url + "/nope") as r:
                    assert r.status == 404 and (await r.json())["error"] == "not_found"
                async with s.get(relay.url + "/healthz") as r:
                    assert r.status == 200 and (await r.json())["outbox_pending"] == 0
        finally:
            await relay.close()

    run(main())


def test_inbound_auth_hmac_or_bearer(outbox: Path) -> None:
    async def main() -> None:
        rx = await Receiver().start()
        relay = await start_relay(make_config(rx.url, inbound=True), 0, outbox, settings=FAST)
        try:
            note = payload(alert())
            raw = json.dumps(note).encode()
            ok_sig = {SIGNATURE_HEADER: sign_body(INBOUND.encode(), raw)}
            cases: list[tuple[dict[str, str], int]] = [
                ({}, 401),
                ({SIGNATURE_HEADER: sign_body(b"wrong", raw)}, 401),
                ({SIGNATURE_HEADER: sign_body(INBOUND.encode(), raw + b" ")}, 401),
                ({"Authorization": f"Bearer {INBOUND}x"}, 401),
                ({"Authorization": f"Basic {INBOUND}"}, 401),
                # The relay's outbound secret is not the inbound one.
                ({SIGNATURE_HEADER: sign_body(SECRET.encode(), raw)}, 401),
                (ok_sig, 200),
                ({"Authorization": f"Bearer {INBOUND}"}, 200),
            ]
            for headers, expected in cases:
                status, body = await post(relay, None, headers, raw=raw)
                assert status == expected, (headers, body)
                if expected == 401:
                    assert body["error"] == "unauthorized"
            assert sample(relay, "mlmon_relay_webhooks_rejected_total", reason="unauthorized") == 6
            await wait_until(lambda: len(rx.accepted) == 1)
        finally:
            await relay.close()
            await rx.stop()

    run(main())


# --- secrets and start-up ------------------------------------------------------------------------------


def test_secret_never_appears_in_logs_or_responses(outbox: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    async def main() -> None:
        answers = {1: 503, 2: 400}
        rx = await Receiver(status=lambda n: answers.get(n, 200)).start()
        relay = await start_relay(make_config(rx.url, inbound=True), 0, outbox, settings=FAST)
        try:
            raw = json.dumps(payload(alert())).encode()
            for headers in ({"Authorization": f"Bearer {SECRET}"}, {"Authorization": f"Bearer {INBOUND}"}):
                status, body = await post(relay, None, headers, raw=raw)
                assert status == (200 if INBOUND in headers["Authorization"] else 401)
                seen.append(json.dumps(body))
            _, body = await post(relay, None, {"Authorization": f"Bearer {INBOUND}"}, raw=b"{bad")
            seen.append(json.dumps(body))
            await wait_until(lambda: relay.outbox.counts()["failed"] == 1)
            async with aiohttp.ClientSession() as s, s.get(relay.url + "/metrics") as r:
                seen.append(await r.text())
        finally:
            await relay.close()
            await rx.stop()

    run(main())
    assert "rejected by" in caplog.text and "webhook rejected" in caplog.text
    for secret in (SECRET, INBOUND):
        assert secret not in caplog.text
        assert all(secret not in s for s in seen)


def test_missing_secret_fails_at_startup(outbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(RelayStartupError, match=SECRET_ENV) as err:
        run(start_relay(make_config("http://127.0.0.1:9/retrain"), 0, outbox))  # type: ignore[arg-type]
    assert "retraining.secret_env" in str(err.value)

    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.delenv(INBOUND_ENV)
    with pytest.raises(RelayStartupError, match=INBOUND_ENV):
        run(start_relay(make_config("http://127.0.0.1:9/retrain", inbound=True), 0, outbox))  # type: ignore[arg-type]

    no_retraining = parse_config({"models": [{"name": "m", "labels": ["a"]}]})
    with pytest.raises(RelayStartupError, match="retraining"):
        run(start_relay(no_retraining, 0, outbox))  # type: ignore[arg-type]


def test_cli_reports_missing_secret_clearly(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "models": [{"name": "m", "labels": ["a"]}],
        "retraining": {"url": "http://127.0.0.1:9/x", "secret_env": SECRET_ENV},
    }))
    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "relay", "--config", str(config), "--port", "0"],
        env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert f"environment variable {SECRET_ENV}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_second_relay_on_the_same_outbox_is_refused(outbox: Path) -> None:
    async def main() -> None:
        cfg = make_config("http://127.0.0.1:9/retrain")
        relay = await start_relay(cfg, 0, outbox, settings=FAST)
        try:
            with pytest.raises(RelayStartupError, match="in use by another relay"):
                await start_relay(cfg, 0, outbox, settings=FAST)
        finally:
            await relay.close()
        # Released on close: a restart in the same process works.
        again = await start_relay(cfg, 0, outbox, settings=FAST)
        await again.close()

    run(main())


def test_verify_signature_for_receivers() -> None:
    secret, body = b"k", b'{"a":1}'
    header = sign_body(secret, body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify_signature(secret, body, header)
    assert verify_signature(secret, body, header.upper().replace("SHA256=", "sha256="))
    assert not verify_signature(secret, body + b" ", header)
    assert not verify_signature(b"other", body, header)
    assert not verify_signature(secret, body, header[7:])  # prefix required
    assert not verify_signature(secret, body, None)
    assert not verify_signature(secret, body, "sha256=é")
    assert verify_bearer(b"tok", "Bearer tok") and verify_bearer(b"tok", "bearer  tok ")
    assert not verify_bearer(b"tok", "Bearer tok2") and not verify_bearer(b"tok", None)


# --- with a real Alertmanager --------------------------------------------------------------------------

@needs_alertmanager
def test_real_alertmanager_repeats_become_one_request(outbox: Path, tmp_path: Path) -> None:
    """Alertmanager 0.25 posts (bearer auth from credentials_file) and repeats every second: one request."""

    async def main() -> None:
        rx = await Receiver().start()
        relay = await start_relay(make_config(rx.url, inbound=True), 0, outbox, settings=FAST)
        token = tmp_path / "token"
        token.write_text(INBOUND + "\n")
        am = Alertmanager({
            "route": {"receiver": "relay", "group_by": ["alertname", "model"], "group_wait": "0s",
                      "group_interval": "1s", "repeat_interval": "1s"},
            "receivers": [{"name": "relay", "webhook_configs": [{
                "url": relay.webhook_url, "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token)}},
            }]}],
        }, workdir=tmp_path / "alertmanager")
        try:
            # Off the event loop: the in-process relay keeps serving while Alertmanager starts and posts.
            await asyncio.to_thread(am.start)
            am_alert = {
                "labels": {"alertname": ALERT_RETRAINING_RECOMMENDED, "model": "moderation",
                           "version": "v7", "label": "violence"},
                "annotations": {"summary": "retrain", "value": "0.61"},
                "startsAt": "2026-11-20T10:00:00Z",
            }
            await asyncio.to_thread(am.post_alerts, [am_alert])
            await wait_until(lambda: len(rx.accepted) == 1, timeout=10)
            # Let Alertmanager repeat the notification a few times.
            await wait_until(
                lambda: sample(relay, "mlmon_relay_duplicates_total", model="moderation") >= 2,
                timeout=10,
            )
            assert len(rx.accepted) == 1
            body = rx.accepted[0].json
            assert body["model"] == "moderation" and body["figures"][0]["values"] == {"value": 0.61}
            assert len(body["alerts"][0]["fingerprint"]) == 16  # Alertmanager's own fingerprint
            assert sample(relay, "mlmon_relay_webhooks_rejected_total", reason="unauthorized") == 0
        finally:
            am.stop()
            await relay.close()
            await rx.stop()

    run(main())
