"""The whole pipeline on one machine, each part started by its one launcher: shared by the end-to-end
tests, the dashboard tests and `monitor demo`.

    Kafka ─> worker ─> Prometheus (rules from the config) ─> Alertmanager (deploy/alertmanager.yml) ─┐
                                                   pager / ticket capture  <──────────────────────┤
                            retraining receiver (HMAC checked) <── relay <────────────────────────┘

    with LocalStack(load_config("monitor.yaml"), rule_options=RuleOptions(for_overrides={"*": "0s"})) as stack:
        Feeder(stack.producer(), simulated_events(TrafficSpec(start=time.time()))).start()
        stack.prometheus.wait_for('ALERTS{alertname="MLMonitorFeatureDrift", alertstate="firing"}')
        stack.receiver.retraining        # the signed requests the relay delivered, with `verified`

Launchers reused: Kafka `monitor.stream.broker.LocalKafka` (or a bootstrap passed in), the worker's own
`ensure_topics`, `monitor worker` and `monitor relay` as sub-processes (the commands users run),
Prometheus and Alertmanager from `monitor.services`, rules from `monitor.rules.generate`. The pager,
ticket and retraining endpoints are one in-process HTTP server that records what arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import orjson
import yaml

from monitor import conventions as c
from monitor.config import KafkaConfig, MonitorConfig, RetrainingConfig
from monitor.relay.signing import SIGNATURE_HEADER, verify_signature
from monitor.rules import ALERTS_FILE, RECORDING_FILE, RuleOptions, generate, write
from monitor.services import Alertmanager, Prometheus, free_port, with_parent_death_signal
from monitor.simulate import TrafficSpec
from monitor.simulate import generate as simulate

# A private helper of the broker launcher: `setpriv --pdeathsig` so children die with us even on SIGKILL.
from monitor.stream.broker import LocalKafka

log = logging.getLogger("monitor.stack")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DIR = ROOT / "deploy"

PAGER_PATH = "/pagerduty"
TICKET_PATH = "/tickets"
RETRAIN_PATH = "/retrain"

Kind = Literal["prediction", "ground_truth"]


class StackError(RuntimeError):
    """A component did not start; the message carries the tail of its log."""


# --- the receivers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    at: float  # wall clock on receipt
    headers: dict[str, str]
    body: bytes
    verified: bool | None  # retraining requests only: the X-Mlmon-Signature matched the secret

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Stands in for PagerDuty, the ticket system and the retraining webhook; records every POST.

    The retraining endpoint checks the signature as a real receiver must (raw body, constant time) and
    answers 401 when it does not match, which the relay treats as a permanent failure.
    """

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self._lock = threading.Lock()
        self._received: list[Received] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                verified = None
                if self.path == RETRAIN_PATH:
                    verified = verify_signature(outer.secret, body, self.headers.get(SIGNATURE_HEADER))
                item = Received(self.path, time.time(), dict(self.headers.items()), body, verified)
                with outer._lock:
                    outer._received.append(item)
                self.send_response(401 if verified is False else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="mlmon-receiver", daemon=True)
        self._thread.start()

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    @property
    def pages(self) -> list[Received]:
        return self.received(PAGER_PATH)

    @property
    def tickets(self) -> list[Received]:
        return self.received(TICKET_PATH)

    @property
    def retraining(self) -> list[Received]:
        return self.received(RETRAIN_PATH)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- Alertmanager routing, pointed at local endpoints -------------------------------------------------------


@dataclass(frozen=True)
class AlertTimers:
    """Alertmanager's grouping timers for every route; production waits minutes, a local run seconds."""

    group_wait: str = "1s"
    group_interval: str = "1s"
    repeat_interval: str = "5s"


def local_alertmanager_config(
    pager_url: str, ticket_url: str, relay_url: str, routing_key_file: Path, timers: AlertTimers,
    source: Path = DEPLOY_DIR / "alertmanager.yml",
) -> dict[str, Any]:
    """deploy/alertmanager.yml with its routing and inhibitions unchanged, receivers pointed at local URLs.

    PagerDuty stays a `pagerduty_configs` receiver (its events-v2 payload is what arrives), only its URL
    and key file change; the receiver of the retraining route gets the relay, every other webhook the
    ticket URL.
    """
    cfg = yaml.safe_load(source.read_text(encoding="utf-8"))
    cfg["templates"] = [str((source.parent / t).resolve()) for t in cfg.get("templates", [])]
    routes = [cfg["route"], *cfg["route"].get("routes", [])]
    relay_receivers = {r["receiver"] for r in routes
                       if f'alertname="{c.ALERT_RETRAINING_RECOMMENDED}"' in r.get("matchers", [])}
    for route in routes:
        route.update(group_wait=timers.group_wait, group_interval=timers.group_interval,
                     repeat_interval=timers.repeat_interval)
    for receiver in cfg["receivers"]:
        for pd in receiver.get("pagerduty_configs", []):
            pd["url"] = pager_url
            pd["routing_key_file"] = str(routing_key_file)
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = relay_url if receiver["name"] in relay_receivers else ticket_url
    return cfg


# --- sub-processes ------------------------------------------------------------------------------------------


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class _Child:
    """A `monitor` sub-command in its own process with its log in a file; ready when `/healthz` says 200."""

    def __init__(self, name: str, args: list[str], port: int, log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        cmd = [sys.executable, "-m", "monitor.cli", *args]
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(with_parent_death_signal(cmd), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=ROOT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while _http_status(self.url + "/healthz") != 200:
            if self.proc.poll() is not None:
                raise StackError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} not healthy after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        # SIGTERM first: the worker writes a final checkpoint and leaves its group, the relay drains.
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, timeout)
                self.proc.kill()
                self.proc.wait(10)


# --- the stack ----------------------------------------------------------------------------------------------


class LocalStack:
    """Kafka, topics, worker, relay, Alertmanager and Prometheus for one config; `with` stops them all.

    `bootstrap`: use that broker instead of starting one; topic and group names then get a unique suffix
    so runs on a shared broker never meet. `rule_options`: e.g. `for_overrides={"*": "0s"}` so alerts fire
    on the first evaluation. The relay's secret is generated here and handed to the relay through the
    environment, like a deployment would.
    """

    def __init__(
        self,
        config: MonitorConfig,
        *,
        bootstrap: str | None = None,
        rule_options: RuleOptions | None = None,
        scrape_interval: str = "1s",
        timers: AlertTimers | None = None,
        checkpoint_interval: float = 0.5,
        workdir: Path | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.requested_config = config
        self.external_bootstrap = bootstrap
        self.rule_options = rule_options or RuleOptions()
        self.scrape_interval = scrape_interval
        self.timers = timers or AlertTimers()
        self.checkpoint_interval = checkpoint_interval
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="mlmon-stack-")) if workdir is None else workdir
        self._progress = progress or (lambda message: log.info("%s", message))
        self.secret = secrets.token_hex(16).encode()
        self._exit = contextlib.ExitStack()
        self.kafka: LocalKafka | None = None
        self.bootstrap = ""
        self.config = config
        self.config_path = self.dir / "config.yaml"
        self.worker: _Child | None = None
        self.relay: _Child | None = None
        self.receiver: Receiver | None = None
        self.alertmanager: Alertmanager | None = None
        self.prometheus: Prometheus | None = None

    # -- lifecycle

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._exit.callback(self._remove_dir)
        started = time.monotonic()
        if self.external_bootstrap:
            self.bootstrap = self.external_bootstrap
        else:
            self._progress("starting Kafka (local Apache Kafka, KRaft)")
            self.kafka = LocalKafka()
            self._exit.callback(self.kafka.stop)
            self.kafka.start()
            self.bootstrap = self.kafka.bootstrap

        self.receiver = Receiver(self.secret)
        self._exit.callback(self.receiver.close)
        self.config = self._effective_config()
        self.config_path.write_text(yaml.safe_dump(self.config.model_dump(mode="json", exclude_none=True),
                                                   sort_keys=False), encoding="utf-8")

        # The worker would create the topics too; creating them first (with its own code) means the
        # producers can never auto-create them with the broker's default partition count.
        from monitor.stream.kafka_setup import ensure_topics

        asyncio.run(ensure_topics(self.config))

        self._progress("starting the worker (monitor worker)")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        port = free_port()
        self.worker = _Child("worker", [
            "worker", "--config", str(self.config_path), "--metrics-port", str(port),
            "--checkpoint-interval", str(self.checkpoint_interval), "--session-timeout-ms", "3000",
        ], port, self.dir / "worker.log", env)
        self._exit.callback(self.worker.stop)
        self.worker.wait_healthy(timeout=120)

        self._progress("starting the relay (monitor relay)")
        assert self.config.retraining is not None
        relay_env = {**env, self.config.retraining.secret_env: self.secret.decode()}
        port = free_port()
        self.relay = _Child("relay", [
            "relay", "--config", str(self.config_path), "--port", str(port),
            "--outbox", str(self.dir / "relay-outbox.sqlite3"), "--retry-initial", "0.2", "--retry-max", "2",
        ], port, self.dir / "relay.log", relay_env)
        self._exit.callback(self.relay.stop)
        self.relay.wait_healthy(timeout=60)

        # Alertmanager before Prometheus: Prometheus sends alerts from its first evaluation on.
        self._progress("starting Alertmanager and Prometheus")
        key_file = self.dir / "pagerduty-routing-key"
        key_file.write_text("local-routing-key\n")
        am_config = local_alertmanager_config(self.receiver.url + PAGER_PATH, self.receiver.url + TICKET_PATH,
                                              self.relay.url + "/alertmanager", key_file, self.timers)
        self.alertmanager = Alertmanager(am_config, workdir=self.dir / "alertmanager")
        self._exit.callback(self.alertmanager.stop)
        self.alertmanager.start()

        rules = write(generate(self.config, self.rule_options, source="the stack's config"), self.dir / "rules")
        rule_files = [p for p in rules if p.name in (RECORDING_FILE, ALERTS_FILE)]
        self.prometheus = Prometheus([f"127.0.0.1:{self.worker.port}"], rule_files, job=self.rule_options.job,
                                     interval=self.scrape_interval,
                                     alertmanagers=[f"127.0.0.1:{self.alertmanager.port}"],
                                     workdir=self.dir / "prometheus")
        self._exit.callback(self.prometheus.stop)
        self.prometheus.start()
        self._progress(f"stack ready in {time.monotonic() - started:.1f} s")

    def stop(self) -> None:
        """Stop everything started so far, newest first; safe to call twice."""
        self._exit.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _remove_dir(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _effective_config(self) -> MonitorConfig:
        cfg = self.requested_config
        kafka_update: dict[str, Any] = {"bootstrap_servers": self.bootstrap}
        if self.external_bootstrap:
            suffix = uuid.uuid4().hex[:8]
            k = cfg.kafka
            kafka_update.update(predictions_topic=f"{k.predictions_topic}-{suffix}",
                                ground_truth_topic=f"{k.ground_truth_topic}-{suffix}",
                                dead_letter_topic=f"{k.dead_letter_topic}-{suffix}",
                                group_id=f"{k.group_id}-{suffix}")
        assert self.receiver is not None
        url = self.receiver.url + RETRAIN_PATH
        retraining = (cfg.retraining.model_copy(update={"url": url, "outbox": None}) if cfg.retraining
                      else RetrainingConfig(url=url))
        models = [m.model_copy(update={"reference": m.reference.resolve()}) if m.reference else m
                  for m in cfg.models]
        return cfg.model_copy(update={"kafka": cfg.kafka.model_copy(update=kafka_update),
                                      "retraining": retraining, "models": models})

    # -- what users of the stack need

    @property
    def urls(self) -> dict[str, str]:
        assert self.worker and self.prometheus and self.alertmanager and self.relay and self.receiver
        return {
            "metrics": self.worker.url + "/metrics",
            "prometheus": self.prometheus.url,
            "alertmanager": self.alertmanager.url,
            "relay": self.relay.url,
            "receiver": self.receiver.url,
        }

    def producer(self) -> EventProducer:
        return EventProducer(self.bootstrap, self.config.kafka)

    def query(self, expr: str) -> list[dict[str, Any]]:
        assert self.prometheus is not None
        return self.prometheus.query(expr)

    def logs(self) -> str:
        """Tails of the worker and relay logs, for failure messages."""
        return "\n".join(f"--- {child.name} ({child.log_path}) ---\n{child.tail()}"
                         for child in (self.worker, self.relay) if child is not None)


# --- traffic ------------------------------------------------------------------------------------------------


def _prediction_id(raw: bytes) -> bytes | None:
    try:
        pid = orjson.loads(raw).get("prediction_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return pid.encode() if isinstance(pid, str) else None


class EventProducer:
    """Raw JSON events to the predictions or ground-truth topic, keyed by prediction_id (docs/events.md),
    so a prediction and its ground truth land in partitions of the same number."""

    def __init__(self, bootstrap: str, kafka: KafkaConfig) -> None:
        from kafka import KafkaProducer  # imported late: `monitor --help` must stay light

        self.topics: dict[Kind, str] = {"prediction": kafka.predictions_topic,
                                        "ground_truth": kafka.ground_truth_topic}
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1,
                                       client_id="mlmon-stack-producer")

    def send(self, kind: Kind, raw: bytes, key: bytes | None = None) -> None:
        self._producer.send(self.topics[kind], value=raw, key=key if key is not None else _prediction_id(raw))

    def flush(self) -> None:
        self._producer.flush()

    def close(self) -> None:
        self._producer.close(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Event = tuple[float, Kind, bytes]  # (event time, kind, JSON)


def simulated_events(spec: TrafficSpec) -> list[Event]:
    """monitor.simulate's predictions and delayed ground truth, merged in event-time order."""
    preds, truths = simulate(spec)
    events: list[Event] = [(ts, "prediction", raw) for ts, raw in preds]
    events += [(ts, "ground_truth", raw) for ts, raw in truths]
    events.sort(key=lambda e: e[0])
    return events


class BackgroundLoop:
    """`_run` in a daemon thread from `start()` to `stop()`. `_run` loops until `self._stop` is set and
    sleeps by waiting on it, so `stop()` ends it at once instead of after a sleep."""

    thread_name = "mlmon-background"
    join_timeout = 30.0

    def start(self) -> Self:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.join_timeout)

    def _run(self) -> None:
        raise NotImplementedError


@dataclass
class Feeder(BackgroundLoop):
    """Produces each event when the wall clock reaches its event time (events in the past at once), in a
    thread, the way a live system emits them: the worker evaluates its windows at the wall clock."""

    producer: EventProducer
    events: Sequence[Event]
    lead: float = 0.0  # send this many seconds ahead of the clock
    sent: Counter[str] = field(default_factory=Counter)
    error: BaseException | None = None

    thread_name = "mlmon-feeder"
    join_timeout = 10.0

    def __post_init__(self) -> None:
        self.done = threading.Event()

    def _run(self) -> None:
        try:
            i, n = 0, len(self.events)
            while i < n and not self._stop.is_set():
                now = time.time() + self.lead
                while i < n and self.events[i][0] <= now:
                    _, kind, raw = self.events[i]
                    self.producer.send(kind, raw)
                    self.sent[kind] += 1
                    i += 1
                self.producer.flush()
                if i < n:
                    self._stop.wait(min(0.2, max(0.0, self.events[i][0] - time.time() - self.lead)))
        except BaseException as exc:  # reported to the caller through .error
            self.error = exc
            log.exception("feeder failed")
        finally:
            self.done.set()
