"""Security: Kafka TLS and SASL/SCRAM from the config, the relay's HMACs, and secrets that stay secret.

1. Kafka: every security key reaches the aiokafka argument that uses it (checked on aiokafka's own clients,
   and end to end against a real broker with a SASL_SSL / SCRAM-SHA-256 listener); keys the protocol
   would ignore are config errors.
2. Secrets: distinctive values are planted in every environment variable the config names (SASL user and
   password, retraining and inbound secrets), in GRAFANA_TOKEN and in a webhook URL's user-info and
   query, then everything the product writes is searched for them: the worker's log, /metrics and
   /healthz while it retries an unreachable broker, the relay's log, answers and /metrics, check-config,
   replay, dashboards push, and exception messages.
3. Metrics: no raw input text in label values (categorical features are bin indexes); /metrics only on the
   configured bind address.
4. The relay's HMACs from an attacker's side: what is refused inbound, what a receiver can verify outbound.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from monitor import conventions as c
from monitor.config import ConfigError, KafkaConfig, load_config, parse_config
from monitor.engine.engine import PREDICTIONS
from monitor.relay import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_body, verify_signature
from monitor.relay.server import RelayStartupError, start_relay
from monitor.services import free_port
from monitor.stream.kafka_setup import SetupError, client_options
from tests.test_hostile_input import (
    INBOUND_SECRET,
    RELAY_SECRET,
    RelayThread,
    alert,
    base_obj,
    dumps,
    notification,
    post,
)

ROOT = Path(__file__).resolve().parent.parent

# Distinctive, so any leak is unmistakable; each lives in the variable the config names.
CANARIES = {
    "MLMON_T_SASL_USER": "sasl-user-canary-7Hq2",
    "MLMON_T_SASL_PASSWORD": "sasl-pass-canary-Vb81x",
    "MLMON_T_RETRAIN_SECRET": "retrain-canary-Kd93q",
    "MLMON_T_INBOUND_SECRET": "inbound-canary-Pq55w",
    "GRAFANA_TOKEN": "glsa_grafana-canary-Mw20",
}
URL_PASSWORD, URL_QUERY = "urlpass-canary-Zr61", "querytoken-canary-Lc04"
SECRETS = [*CANARIES.values(), URL_PASSWORD, URL_QUERY]


def leaks(text: str | bytes) -> list[str]:
    """The planted secrets found in text, raw or base64-encoded (as in a Basic auth header)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    found = []
    for s in SECRETS:
        if s in text or base64.b64encode(s.encode()).decode().rstrip("=") in text:
            found.append(s)
    return found


def env_with_canaries() -> dict[str, str]:
    return {**os.environ, **CANARIES, "PYTHONUNBUFFERED": "1"}


def cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=env or env_with_canaries())


def closed_port() -> int:
    return free_port()  # free now, and nothing listens on it


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


MODEL = {"name": "moderation", "labels": ["violence", "spam"], "features": {"categorical": ["lang"]}}


def write_config(tmp: Path, data: dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# --- TLS material ------------------------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(d: Path, prefix: str = "") -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 / localhost and a client certificate, EC keys, PEM."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", f"{prefix}ca.key", "-out", f"{prefix}ca.pem", "-days", "2",
             "-subj", f"/CN={prefix}mlmon-test-ca", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{prefix}{who}.key", "-out", f"{prefix}{who}.csr", "-subj", f"/CN={who}",
                 cwd=d)
        _openssl("x509", "-req", "-in", f"{prefix}{who}.csr", "-CA", f"{prefix}ca.pem", "-CAkey", f"{prefix}ca.key",
                 "-CAcreateserial", "-out", f"{prefix}{who}.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    # Kafka's PEM keystore: the private key and the certificate chain in one file.
    (d / f"{prefix}server.pem").write_bytes((d / f"{prefix}server.key").read_bytes() +
                                            (d / f"{prefix}server.crt").read_bytes())
    return {name: d / f"{prefix}{name}" for name in ("ca.pem", "client.crt", "client.key", "server.pem")}


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not on PATH")


# --- 1. Kafka security settings ---------------------------------------------------------------------------
def _models() -> list[dict[str, Any]]:
    return [{"name": "m", "labels": ["a"]}]


@pytest.mark.parametrize("kafka, problem", [
    ({"ssl_cafile": "ca.pem"}, "ssl_cafile is set but security_protocol PLAINTEXT does not use TLS"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username_env": "U",
      "sasl_password_env": "P", "ssl_cafile": "ca.pem"}, "does not use TLS"),
    ({"sasl_mechanism": "SCRAM-SHA-512"}, "sasl_mechanism is set but security_protocol PLAINTEXT does not use SASL"),
    ({"security_protocol": "SSL", "sasl_password_env": "P"}, "sasl_password_env is set"),
    ({"security_protocol": "SASL_SSL", "sasl_username_env": "U", "sasl_password_env": "P"},
     "sasl_mechanism is required with security_protocol SASL_SSL"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username_env": "U"},
     "sasl_password_env is required"),
    ({"security_protocol": "SSL", "ssl_keyfile": "client.key"}, "ssl_keyfile needs ssl_certfile"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username_env": "U",
      "sasl_password_env": "P"}, "kafka.sasl_mechanism"),
])
def test_security_keys_the_protocol_would_ignore_are_config_errors(kafka: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"kafka": kafka, "models": _models()})
    assert problem in str(err.value)


@needs_openssl
def test_client_options_map_every_security_key_to_aiokafka(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    pki = make_pki(tmp_path)
    monkeypatch.setenv("MLMON_T_SASL_USER", CANARIES["MLMON_T_SASL_USER"])
    monkeypatch.setenv("MLMON_T_SASL_PASSWORD", CANARIES["MLMON_T_SASL_PASSWORD"])
    # Relative TLS paths are relative to the config file, like every other path in it.
    cfg_path = write_config(tmp_path, {"kafka": {
        "bootstrap_servers": "broker-1:9093,broker-2:9093", "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_username_env": "MLMON_T_SASL_USER",
        "sasl_password_env": "MLMON_T_SASL_PASSWORD", "ssl_cafile": "ca.pem", "ssl_certfile": "client.crt",
        "ssl_keyfile": "client.key"}, "models": _models()})
    monkeypatch.chdir("/")
    kafka = load_config(cfg_path).kafka
    assert kafka.ssl_cafile == str(pki["ca.pem"])
    opts = client_options(kafka)
    assert set(opts) == {"bootstrap_servers", "security_protocol", "ssl_context", "sasl_mechanism",
                         "sasl_plain_username", "sasl_plain_password"}
    assert (opts["security_protocol"], opts["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == (CANARIES["MLMON_T_SASL_USER"],
                                                                          CANARIES["MLMON_T_SASL_PASSWORD"])
    ctx = opts["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    # Verification on: the CA from the config is the trust anchor and the host name must match.
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [cert["subject"] for cert in ctx.get_ca_certs()] == [((("commonName", "mlmon-test-ca"),),)]

    async def construct() -> None:
        # aiokafka's own clients take these keyword arguments and keep them where their connections read them.
        for cls in (AIOKafkaConsumer, AIOKafkaProducer, AIOKafkaAdminClient):
            client: Any = cls(**opts)
            inner = getattr(client, "_client", None) or client.client  # the AIOKafkaClient every connection uses
            assert inner._security_protocol == "SASL_SSL", cls
            assert inner._sasl_mechanism == "SCRAM-SHA-512", cls
            assert inner._sasl_plain_username == CANARIES["MLMON_T_SASL_USER"], cls
            assert inner._sasl_plain_password == CANARIES["MLMON_T_SASL_PASSWORD"], cls
            assert inner._ssl_context is ctx, cls
            await (client.close() if cls is AIOKafkaAdminClient else client.stop())

    asyncio.run(construct())

    # TLS without SASL: a context, no SASL arguments; SASL without TLS: no context.
    tls_only = KafkaConfig(security_protocol="SSL", ssl_cafile=str(pki["ca.pem"]))
    assert set(client_options(tls_only)) == {"bootstrap_servers", "security_protocol", "ssl_context"}
    plain_sasl = KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                             sasl_username_env="MLMON_T_SASL_USER", sasl_password_env="MLMON_T_SASL_PASSWORD")
    assert "ssl_context" not in client_options(plain_sasl)


def test_a_secret_pasted_where_a_variable_name_belongs_is_refused_without_echoing_it(tmp_path: Path) -> None:
    secret = "hunter2-Pasted/Secret+x=="
    for section, key in (("kafka", "sasl_password_env"), ("kafka", "sasl_username_env"),
                         ("retraining", "secret_env"), ("retraining", "inbound_secret_env")):
        data: dict[str, Any] = {"models": _models(), "retraining": {"url": "https://example.com/hook"}}
        if section == "kafka":
            data["kafka"] = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                             "sasl_username_env": "U", "sasl_password_env": "P", key: secret}
        else:
            data["retraining"][key] = secret
        path = write_config(tmp_path, data)
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert f"{section}.{key}" in str(err.value) and secret not in str(err.value)
        out = cli("check-config", str(path))
        assert out.returncode == 1 and f"{section}.{key}" in out.stderr
        assert secret not in out.stdout + out.stderr
    # Credentials in a URL the config refuses are not echoed either.
    path = write_config(tmp_path, {"models": _models(),
                                   "retraining": {"url": f"ftp://admin:{URL_PASSWORD}@example.com/?t={URL_QUERY}"}})
    out = cli("check-config", str(path))
    assert out.returncode == 1 and "retraining.url" in out.stderr and not leaks(out.stdout + out.stderr)


def test_missing_secrets_are_named_by_variable_never_by_value(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    kafka = KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                        sasl_username_env="MLMON_T_SASL_USER", sasl_password_env="MLMON_T_SASL_PASSWORD")
    monkeypatch.setenv("MLMON_T_SASL_USER", CANARIES["MLMON_T_SASL_USER"])
    monkeypatch.delenv("MLMON_T_SASL_PASSWORD", raising=False)
    with pytest.raises(SetupError) as err:
        client_options(kafka)
    assert "MLMON_T_SASL_PASSWORD" in str(err.value) and not leaks(str(err.value))

    cfg = parse_config({"models": _models(), "retraining": {
        "url": "https://example.com/hook", "secret_env": "MLMON_T_RETRAIN_SECRET",
        "inbound_secret_env": "MLMON_T_INBOUND_SECRET"}})

    async def start(environ: dict[str, str]) -> str:
        try:
            handle = await start_relay(cfg, port=0, outbox_path=tmp_path / "outbox.sqlite3", environ=environ)
        except RelayStartupError as exc:
            return str(exc)
        await handle.close()
        return ""

    message = asyncio.run(start({"MLMON_T_RETRAIN_SECRET": CANARIES["MLMON_T_RETRAIN_SECRET"]}))
    assert "MLMON_T_INBOUND_SECRET" in message and not leaks(message)


# --- 2. secrets in everything the product writes ------------------------------------------------------------
def _loopback_alias_works(host: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


def test_worker_keeps_secrets_out_of_logs_metrics_and_errors_and_binds_metrics_where_told(tmp_path: Path) -> None:
    """The worker with SASL secrets loaded, retrying a broker that is not there: its log (debug level),
    /metrics, /healthz and its final error. /metrics listens on metrics.bind only."""
    bind = "127.0.0.2" if _loopback_alias_works("127.0.0.2") else "127.0.0.1"
    port = free_port()
    kafka_port = closed_port()
    cfg = write_config(tmp_path, {
        "kafka": {"bootstrap_servers": f"127.0.0.1:{kafka_port}", "security_protocol": "SASL_PLAINTEXT",
                  "sasl_mechanism": "SCRAM-SHA-512", "sasl_username_env": "MLMON_T_SASL_USER",
                  "sasl_password_env": "MLMON_T_SASL_PASSWORD"},
        "metrics": {"bind": bind, "port": port},
        "models": [MODEL],
        "retraining": {"url": f"http://monitor:{URL_PASSWORD}@127.0.0.1:9/hook?token={URL_QUERY}",
                       "secret_env": "MLMON_T_RETRAIN_SECRET", "inbound_secret_env": "MLMON_T_INBOUND_SECRET"},
    })
    proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "worker", "--config", str(cfg), "--log-level",
                             "debug"], cwd=ROOT, env=env_with_canaries(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        metrics = health = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                _, metrics = http_get(f"http://{bind}:{port}/metrics")
                _, health = http_get(f"http://{bind}:{port}/healthz")
                break
            except OSError:
                time.sleep(0.2)
        assert metrics.startswith(b"# HELP"), "the worker never served /metrics"
        if bind != "127.0.0.1":  # bound to the configured address only
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        time.sleep(3)  # at least one failed connection attempt, logged
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert "Kafka not reachable yet" in out and "cannot reach Kafka" in out, out[-2000:]
    assert proc.returncode != 0
    assert b"starting" in health
    assert not leaks(out), out[-3000:]
    assert not leaks(metrics) and not leaks(health)


class Receiver:
    """An HTTP server in a thread, every path routed to `_handle`. As a retraining webhook receiver it answers
    503 once, then 400 (a permanent failure, which the relay logs with the start of the answer)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.got: list[tuple[bytes, dict[str, str]]] = []
        self.port = free_port()

    async def _handle(self, request: web.Request) -> web.Response:
        self.got.append((await request.read(), dict(request.headers)))
        if len(self.got) == 1:
            return web.Response(status=503, text="busy")
        # Echoes the start of what it got, as error pages do; the relay logs the start of this answer.
        return web.Response(status=400, text=f"rejected: {self.got[-1][0][:200]!r}")

    def __enter__(self) -> Receiver:
        self.thread.start()

        async def start() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_relay_keeps_secrets_out_of_logs_answers_and_metrics(tmp_path: Path) -> None:
    with Receiver() as receiver:
        port = free_port()
        cfg = write_config(tmp_path, {"models": [MODEL], "retraining": {
            "url": f"http://monitor:{URL_PASSWORD}@127.0.0.1:{receiver.port}/hook?token={URL_QUERY}",
            "secret_env": "MLMON_T_RETRAIN_SECRET", "inbound_secret_env": "MLMON_T_INBOUND_SECRET"}})
        proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "relay", "--config", str(cfg), "--port",
                                 str(port), "--outbox", str(tmp_path / "outbox.sqlite3"), "--log-level", "debug",
                                 "--retry-initial", "0.05", "--retry-max", "0.1"],
                                cwd=ROOT, env=env_with_canaries(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        answers: list[bytes] = []
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    http_get(base + "/healthz")
                    break
                except OSError:
                    time.sleep(0.1)
            inbound = CANARIES["MLMON_T_INBOUND_SECRET"]
            body = json.dumps(notification(alert(model="moderation"))).encode()

            def send(headers: dict[str, str], data: bytes = body) -> int:
                req = urllib.request.Request(base + "/alertmanager", data=data, method="POST",
                                             headers={"Content-Type": "application/json", **headers})
                try:
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        answers.append(resp.read())
                        return resp.status
                except urllib.error.HTTPError as exc:
                    answers.append(exc.read())
                    return exc.code

            assert send({"Authorization": f"Bearer {inbound}x"}) == 401  # near miss: must not be echoed
            assert send({"Authorization": f"Basic {base64.b64encode(inbound.encode()).decode()}"}) == 401
            assert send({SIGNATURE_HEADER: sign_body(b"wrong", body)}) == 401
            assert send({"Authorization": f"Bearer {inbound}"}, b"{not json " + inbound.encode()) == 400
            assert send({"Authorization": f"Bearer {inbound}"}) == 200
            deadline = time.monotonic() + 20
            while len(receiver.got) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(receiver.got) >= 2, "the request was not delivered (twice: 503, then 400)"
            time.sleep(0.3)  # the permanent failure is logged
            _, metrics = http_get(base + "/metrics")
            _, health = http_get(base + "/healthz")
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
    assert "failed permanently" in out or "400" in out, out[-2000:]
    assert not leaks(out), out[-3000:]
    assert not leaks(metrics) and not leaks(health)
    # The near-miss bearer token was the only secret-like thing in the bodies we sent: no answer repeats it.
    assert not any(leaks(a) for a in answers), answers
    # The receiver got the user-info as HTTP Basic auth (the URL asked for it), and the signature: never
    # the outbound secret itself.
    payload, headers = receiver.got[0]
    assert verify_signature(CANARIES["MLMON_T_RETRAIN_SECRET"].encode(), payload, headers[SIGNATURE_HEADER])
    assert CANARIES["MLMON_T_RETRAIN_SECRET"] not in json.dumps(headers) + payload.decode()


def test_check_config_and_replay_never_print_a_secret(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {
        "kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                  "sasl_username_env": "MLMON_T_SASL_USER", "sasl_password_env": "MLMON_T_SASL_PASSWORD"},
        "models": [MODEL],
        "retraining": {"url": "https://example.com/hook", "secret_env": "MLMON_T_RETRAIN_SECRET",
                       "inbound_secret_env": "MLMON_T_INBOUND_SECRET"}})
    ok = cli("check-config", str(cfg))
    assert ok.returncode == 0 and ok.stdout.strip() == "ok"
    preds = tmp_path / "p.jsonl"
    preds.write_bytes(dumps({**base_obj(PREDICTIONS), "model": "moderation", "scores": {"violence": 0.4,
                                                                                         "spam": 0.9}}) + b"\n")
    replay = cli("replay", "--config", str(cfg), "--predictions", str(preds))
    assert replay.returncode == 0, replay.stderr
    broken = write_config(tmp_path, {"models": [{**MODEL, "thresholds": {"nope": 2}}]}, "broken.yaml")
    bad = cli("check-config", str(broken))
    assert bad.returncode == 1
    for run in (ok, replay, bad):
        assert not leaks(run.stdout + run.stderr)


def test_dashboards_push_never_prints_the_grafana_token(tmp_path: Path) -> None:
    """Against a Grafana that refuses the token (401, echoing the Authorization header in its body, as a
    careless proxy would) and against nothing at all."""

    class FakeGrafana(Receiver):
        async def _handle(self, request: web.Request) -> web.Response:
            return web.json_response({"message": "invalid API key"}, status=401)

    class Echo(Receiver):
        async def _handle(self, request: web.Request) -> web.Response:
            return web.json_response({"message": "Unauthorized", "received": request.headers.get("Authorization")},
                                     status=401)

    outputs = []
    for server in (FakeGrafana, Echo):
        with server() as grafana:
            outputs.append(cli("dashboards", "push", "--grafana-url", f"http://127.0.0.1:{grafana.port}",
                               "--timeout", "5"))
    outputs.append(cli("dashboards", "push", "--grafana-url", f"http://127.0.0.1:{closed_port()}", "--timeout", "2"))
    outputs.append(cli("dashboards", "push", "--grafana-url",
                       f"http://admin:{URL_PASSWORD}@127.0.0.1:{closed_port()}", "--timeout", "2"))
    for run in outputs:
        assert run.returncode != 0
        found = leaks(run.stdout + run.stderr)
        assert not found, (found, run.stdout[-1000:], run.stderr[-1000:])


# --- 3. what /metrics may say ---------------------------------------------------------------------------------
def test_metrics_carry_no_raw_input_text(tmp_path: Path) -> None:
    """A replay whose categorical values, prediction ids and unwatched free text are distinctive: none of
    them reaches /metrics. Every label value comes from the config or a fixed vocabulary; the only value
    taken from events is `version` (the model_version field, bounded to 64 characters)."""
    langs = [f"lang-canary-{i:02d}" for i in range(25)]  # more than the 20 reference values: an "other" bin
    ref = tmp_path / "reference.jsonl"
    pred = tmp_path / "predictions.jsonl"
    truth = tmp_path / "truth.jsonl"
    t0 = datetime(2026, 11, 20, tzinfo=UTC).timestamp()

    def event(i: int, ts: float) -> dict[str, Any]:
        return {"prediction_id": f"pid-canary-{i}", "model": "moderation", "model_version": "v7",
                "timestamp": ts, "scores": {"violence": (i % 10) / 10, "spam": (i % 7) / 7},
                "features": {"lang": langs[i % len(langs)], "comment": f"free-text-canary-{i} call me"}}

    ref.write_text("".join(json.dumps(event(i, t0 - 86400)) + "\n" for i in range(400)))
    pred.write_text("".join(json.dumps(event(i, t0 + i)) + "\n" for i in range(600)))
    truth.write_text("".join(json.dumps({"prediction_id": f"pid-canary-{i}", "model": "moderation",
                                         "timestamp": t0 + i + 30, "labels": ["spam"]}) + "\n"
                             for i in range(0, 600, 2)))
    cfg = write_config(tmp_path, {"windows": ["5m", "1h", "1d"], "models": [{
        **MODEL, "reference": "reference.jsonl", "slos": [{"label": "spam", "objective": "precision",
                                                           "target": 0.9, "period": "1d"}]}]})
    run = cli("replay", "--config", str(cfg), "--predictions", str(pred), "--ground-truth", str(truth))
    assert run.returncode == 0, run.stderr
    text = run.stdout
    for needle in ("canary", "call me"):
        assert needle not in text
    config = load_config(cfg)
    vocabulary = {
        "moderation", "v7", *config.models[0].labels, "lang", *config.window_names, *c.OUTCOMES,
        c.SIDE_PREDICTION, c.SIDE_GROUND_TRUTH, c.SIDE_JOINED, c.TOPIC_PREDICTIONS, c.TOPIC_GROUND_TRUTH,
        *c.ALL_REASONS, *c.CALIBRATION_STATS, *c.OBJECTIVES, "predicted", "actual", "spam-precision",
    }
    seen_bins = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == c.BUILD_INFO.name:
                continue
            for name, value in sample.labels.items():
                if name == "le":
                    continue
                if name == c.L_BIN:
                    assert re.fullmatch(r"\d+", value), (family.name, value)
                    if family.name == c.FEATURE_BIN.name:
                        seen_bins.add(int(value))
                    continue
                assert value in vocabulary, (family.name, name, value)
    assert seen_bins == set(range(21))  # 20 reference values and "other", as indexes


# --- 4. the relay's HMACs from an attacker's side -------------------------------------------------------------
@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayThread]:
    r = RelayThread(tmp_path_factory.mktemp("relay")).start()
    yield r
    r.stop()


def test_relay_refuses_forged_tampered_and_cross_secret_requests(relay: RelayThread) -> None:
    json_ct = {"Content-Type": "application/json"}

    def body(fp: str) -> bytes:
        return json.dumps(notification({**alert(model=f"hmac-{fp}"), "fingerprint": fp})).encode()

    a, b = body("a"), body("b")
    inbound = INBOUND_SECRET.encode()
    refused = {
        "no credentials": (a, {}),
        "signature under another key": (a, {SIGNATURE_HEADER: sign_body(b"guess", a)}),
        "signature under the outbound secret": (a, {SIGNATURE_HEADER: sign_body(RELAY_SECRET.encode(), a)}),
        "signature of another body": (b, {SIGNATURE_HEADER: sign_body(inbound, a)}),
        "body with a byte appended": (a + b" ", {SIGNATURE_HEADER: sign_body(inbound, a)}),
        "truncated signature": (a, {SIGNATURE_HEADER: sign_body(inbound, a)[:-2]}),
        "bare hex without sha256=": (a, {SIGNATURE_HEADER: sign_body(inbound, a).removeprefix("sha256=")}),
        "other algorithm name": (a, {SIGNATURE_HEADER: "sha1=" + sign_body(inbound, a)[7:]}),
        "bearer of the outbound secret": (a, {"Authorization": f"Bearer {RELAY_SECRET}"}),
        "bearer with a prefix of the token": (a, {"Authorization": f"Bearer {INBOUND_SECRET[:-1]}"}),
        "token as Basic auth": (a, {"Authorization": "Basic " + base64.b64encode(inbound).decode()}),
        "token without a scheme": (a, {"Authorization": INBOUND_SECRET}),
    }
    for name, (data, headers) in refused.items():
        status, _, answer = post(relay, data, {**json_ct, **headers})
        assert status == 401, name
        err = json.loads(answer)
        assert err["error"] == "unauthorized" and INBOUND_SECRET not in err["message"], name
    accepted = {
        "hmac": (a, {SIGNATURE_HEADER: sign_body(inbound, a)}),
        "hmac, upper-case hex": (b, {SIGNATURE_HEADER: "sha256=" + sign_body(inbound, b)[7:].upper()}),
        "bearer": (body("c"), {"Authorization": f"Bearer {INBOUND_SECRET}"}),
    }
    for name, (data, headers) in accepted.items():
        status, _, answer = post(relay, data, {**json_ct, **headers})
        assert status == 200, (name, answer)
    _, _, metrics = post(relay, b"", {}, path="/metrics", method="GET")
    counted = {tuple(s.labels.items()): s.value for f in text_string_to_metric_families(metrics.decode())
               for s in f.samples if s.name == "mlmon_relay_webhooks_rejected_total"}
    assert counted[(("reason", "unauthorized"),)] >= len(refused)


def test_relay_output_is_signed_with_its_own_secret_over_the_exact_bytes(relay: RelayThread) -> None:
    raw = json.dumps(notification({**alert(model="signed-output"), "fingerprint": "out"})).encode()
    status, _, answer = post(relay, raw, {"Content-Type": "application/json",
                                         SIGNATURE_HEADER: sign_body(INBOUND_SECRET.encode(), raw)})
    assert status == 200, answer
    key = json.loads(answer)["requests"][0]["idempotency_key"]

    async def wait() -> tuple[bytes, dict[str, str]]:
        for _ in range(250):
            for got, headers in relay.received:
                if json.loads(got).get("idempotency_key") == key:
                    return got, headers
            await asyncio.sleep(0.02)
        raise AssertionError("not delivered")

    got, headers = relay.call(wait())
    assert verify_signature(RELAY_SECRET.encode(), got, headers[SIGNATURE_HEADER])
    assert not verify_signature(INBOUND_SECRET.encode(), got, headers[SIGNATURE_HEADER])
    assert not verify_signature(RELAY_SECRET.encode(), got + b" ", headers[SIGNATURE_HEADER])
    request = json.loads(got)
    # Freshness a receiver can trust is inside the signed bytes; the timestamp header is not signed.
    assert request["created_at"].endswith("Z") and request["idempotency_key"] == key
    assert TIMESTAMP_HEADER in headers
    assert RELAY_SECRET not in got.decode() and INBOUND_SECRET not in got.decode()


# --- 1b. a real broker with SASL_SSL and SCRAM ----------------------------------------------------------------
@needs_openssl
@pytest.mark.kafka
@pytest.mark.slow
def test_worker_over_sasl_ssl_scram_against_a_real_broker(tmp_path: Path) -> None:
    """Apache Kafka with a SASL_SSL listener (SCRAM-SHA-256, a certificate from a test CA): the worker,
    configured only through the config and environment, creates its topics, consumes and counts; with a
    wrong password or an untrusted CA it does not get in, and says so without the password."""
    from aiokafka import AIOKafkaProducer

    from monitor.stream.broker import LocalKafka

    pki = make_pki(tmp_path)
    plain, controller, secure = free_port(), free_port(), free_port()
    overrides = {
        "listeners": f"PLAINTEXT://127.0.0.1:{plain},CONTROLLER://127.0.0.1:{controller},"
                     f"SASL_SSL://127.0.0.1:{secure}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{secure}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms": "SCRAM-SHA-256",
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
        "listener.name.sasl_ssl.ssl.keystore.location": str(pki["server.pem"]),
    }
    user, password = CANARIES["MLMON_T_SASL_USER"], CANARIES["MLMON_T_SASL_PASSWORD"]
    with LocalKafka(port=plain, controller_port=controller, overrides=overrides) as broker:
        # The credential goes in through the Admin API on the plaintext listener (what kafka-configs.sh
        # does; its class moved between Kafka 3 and 4, the protocol did not).
        from kafka.admin import KafkaAdminClient, ScramMechanism, UserScramCredentialUpsertion

        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            errors = admin.alter_user_scram_credentials(
                [UserScramCredentialUpsertion(user, ScramMechanism.SCRAM_SHA_256, password, iterations=4096)])
        finally:
            admin.close()
        assert not any(errors.values()), errors

        def config(ca: Path, name: str) -> Path:
            return write_config(tmp_path, {
                "kafka": {"bootstrap_servers": f"127.0.0.1:{secure}", "security_protocol": "SASL_SSL",
                          "sasl_mechanism": "SCRAM-SHA-256", "sasl_username_env": "MLMON_T_SASL_USER",
                          "sasl_password_env": "MLMON_T_SASL_PASSWORD", "ssl_cafile": ca.name,
                          "predictions_topic": "secure-predictions", "ground_truth_topic": "secure-truth",
                          "dead_letter_topic": "secure-dlq", "group_id": "secure-monitor", "partitions": 2},
                "metrics": {"port": free_port()}, "models": [MODEL]}, name)

        good = config(pki["ca.pem"], "good.yaml")
        port = load_config(good).metrics.port
        worker = subprocess.Popen([sys.executable, "-m", "monitor.cli", "worker", "--config", str(good),
                                   "--checkpoint-interval", "0.5"], cwd=ROOT, env=env_with_canaries(),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # Produce through the plaintext listener (the test's side door), keyed like real producers.
            async def produce() -> None:
                producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
                await producer.start()
                try:
                    now = time.time()
                    for i in range(20):
                        obj = {**base_obj(PREDICTIONS), "model": "moderation", "prediction_id": f"s{i}",
                               "timestamp": now, "scores": {"violence": 0.2, "spam": 0.7}}
                        await producer.send_and_wait("secure-predictions", dumps(obj), key=f"s{i}".encode())
                finally:
                    await producer.stop()

            deadline = time.monotonic() + 90
            counted = 0.0
            produced = False
            while time.monotonic() < deadline and counted < 20:
                time.sleep(0.5)
                try:
                    _, text = http_get(f"http://127.0.0.1:{port}/metrics")
                    _, health = http_get(f"http://127.0.0.1:{port}/healthz")
                except OSError:
                    continue
                if not produced and b'"ok"' in health:  # topics exist and the worker is in its group
                    asyncio.run(produce())
                    produced = True
                # One series per partition (the worker exports counters per partition): their sum.
                counted = sum(s.value for fam in text_string_to_metric_families(text.decode())
                              for s in fam.samples if s.name == c.PREDICTIONS_TOTAL.name)
            assert counted == 20, "the worker did not consume over SASL_SSL"
        finally:
            worker.send_signal(signal.SIGTERM)
            out, _ = worker.communicate(timeout=60)
        assert not leaks(out), out[-3000:]

        # A wrong password and a CA that did not sign the broker's certificate: refused, and said so.
        other = make_pki(tmp_path, prefix="other-")
        for name, cfg, env in (
            ("wrong password", good, {**env_with_canaries(), "MLMON_T_SASL_PASSWORD": "wrong-" + password}),
            ("untrusted CA", config(other["ca.pem"], "untrusted.yaml"), env_with_canaries()),
        ):
            proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "worker", "--config", str(cfg)], cwd=ROOT,
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(6)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode != 0, name
            assert "cannot reach Kafka" in out or "Kafka not reachable" in out, (name, out[-2000:])
            assert not leaks(out) and "wrong-" + password not in out, (name, out[-3000:])
