"""The one way to start the real Prometheus and Alertmanager (Debian's packages) for tests, demo and
benchmarks: free loopback ports, temporary data directories, readiness checked over HTTP, no gossip port.

Which binaries: `MLMON_PROMETHEUS`, `MLMON_PROMTOOL` and `MLMON_ALERTMANAGER` (paths) override the PATH
lookup, so the same tests run against Debian's Prometheus 2.42 and a Prometheus 3.x build
(scripts/build_prometheus.sh).

Kafka has its own launcher (monitor/stream/broker.py); the worker and relay are started as `monitor`
sub-processes or in-process by their own modules.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import yaml


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_parent_death_signal(cmd: list[str]) -> list[str]:
    """Prefix `setpriv --pdeathsig` so a child dies with us even on SIGKILL (no orphaned servers).

    Only from the main thread: the kernel signals the child when the *thread* that forked it exits, so a
    child started from a short-lived thread would otherwise die with that thread.
    """
    setpriv = shutil.which("setpriv")
    if sys.platform != "linux" or setpriv is None or threading.current_thread() is not threading.main_thread():
        return cmd
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd]


# binary name -> the environment variable that overrides its PATH lookup.
BINARY_ENV = {
    "prometheus": "MLMON_PROMETHEUS",
    "promtool": "MLMON_PROMTOOL",
    "prometheus-alertmanager": "MLMON_ALERTMANAGER",
    "alertmanager": "MLMON_ALERTMANAGER",
    "amtool": "MLMON_AMTOOL",
}


def binary(*names: str) -> str | None:
    """The first of `names` found: its override variable (BINARY_ENV) if set, else on PATH (Debian
    calls Alertmanager `prometheus-alertmanager`). An override that is not an executable file raises,
    rather than silently testing another version."""
    for name in names:
        override = os.environ.get(BINARY_ENV.get(name, ""), "")
        if override:
            if not (os.path.isfile(override) and os.access(override, os.X_OK)):
                raise ServiceError(f"{BINARY_ENV[name]}={override} is not an executable file")
            return override
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


PROMETHEUS3_MODULE = "v0.316.0"  # Prometheus 3.16.0, as scripts/build_prometheus.sh builds it


def prometheus3_dir() -> Path | None:
    """Where scripts/build_prometheus.sh put Prometheus 3.x (MLMON_PROMETHEUS3_DIR, else its cache
    directory), if both binaries are there."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = Path(os.environ.get("MLMON_PROMETHEUS3_DIR") or cache / "mlmon" / f"prometheus-{PROMETHEUS3_MODULE}" / "bin")
    return path if all(os.access(path / name, os.X_OK) for name in ("prometheus", "promtool")) else None


def prometheus_builds() -> dict[str, dict[str, str]]:
    """The Prometheus builds available here, as the environment that selects each: Debian's (on PATH)
    and 3.x (prometheus3_dir). Tests run under every one."""
    builds: dict[str, dict[str, str]] = {}
    on_path = shutil.which("prometheus"), shutil.which("promtool")
    if on_path[0] and on_path[1]:
        builds["path"] = {"MLMON_PROMETHEUS": on_path[0], "MLMON_PROMTOOL": on_path[1]}
    p3 = prometheus3_dir()
    if p3 is not None:
        builds["3.x"] = {"MLMON_PROMETHEUS": str(p3 / "prometheus"), "MLMON_PROMTOOL": str(p3 / "promtool")}
    return builds


def version(exe: str) -> str:
    """The version a Prometheus-family binary reports (`--version`), "unknown" when it states none (a
    `go install` without the release's -ldflags)."""
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, check=False)
    match = re.search(r"version (\d+\.\d+\.\d+\S*)", out.stdout + out.stderr)
    return match[1] if match else "unknown"


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


class _Process:
    """A child process on a free loopback port with its own temp dir, ready when `ready_path` answers."""

    ready_path = "/-/ready"

    def __init__(self, workdir: Path | None, port: int | None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix=f"mlmon-{type(self).__name__.lower()}-")) if workdir is None \
            else workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "log.txt"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Self:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(with_parent_death_signal(self.command()), stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self._tail()
                self.stop()
                raise ServiceError(f"{type(self).__name__} exited with {self.proc.returncode}: {tail}")
            try:
                _get(self.url + self.ready_path, timeout=1.0)
                return self
            except OSError:
                time.sleep(0.05)
        tail = self._tail()
        self.stop()
        raise ServiceError(f"{type(self).__name__} not ready after {timeout:.0f}s: {tail}")

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Prometheus(_Process):
    """Prometheus scraping `targets` (host:port strings, job `job`) with the given rule files.

    Short intervals by default, since tests and the demo want to see changes within seconds."""

    def __init__(self, targets: Sequence[str], rule_files: Sequence[Path] = (), *, job: str = "mlmon",
                 interval: str = "1s", alertmanagers: Sequence[str] = (), workdir: Path | None = None,
                 port: int | None = None, extra_config: dict[str, Any] | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        super().__init__(workdir, port)
        self.extra_args = list(extra_args)
        self.exe = binary("prometheus")
        if self.exe is None:
            raise ServiceError("prometheus is not on PATH (apt-get install prometheus)")
        rules = []
        for i, path in enumerate(rule_files):
            target = self.dir / f"{i:02d}-{Path(path).name}"
            shutil.copyfile(path, target)
            rules.append(str(target))
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": rules,
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
        }
        if alertmanagers:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
        config.update(extra_config or {})
        self.config_path = self.dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=True))

    def command(self) -> list[str]:
        assert self.exe is not None
        return [self.exe, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle", *self.extra_args]

    def _api(self, path: str, params: dict[str, str], timeout: float) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            body = json.loads(_get(url, timeout=timeout))
        except urllib.error.HTTPError as exc:  # Prometheus answers 400/422 with the error in the body
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise ServiceError(f"query failed: {body.get('error')}")
        return list(body["data"]["result"])

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (raises on a PromQL error)."""
        return self._api("query", {"query": expr}, timeout=10)

    def query_range(self, expr: str, start: float, end: float, step: float,
                    timeout: float = 300) -> list[dict[str, Any]]:
        """Range query; the result matrix (raises on a PromQL error)."""
        return self._api("query_range", {"query": expr, "start": repr(start), "end": repr(end), "step": repr(step)},
                         timeout=timeout)

    def wait_for(self, expr: str, timeout: float = 30.0, interval: float = 0.2) -> list[dict[str, Any]]:
        """Poll until `expr` returns a non-empty result; returns it (raises on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = self.query(expr)
                if result:
                    return result
            except (OSError, ServiceError):
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"no result for {expr!r} within {timeout:.0f}s")
            time.sleep(interval)


class Alertmanager(_Process):
    """Alertmanager with the given config (a path, or a mapping written to the temp dir); no cluster port."""

    def __init__(self, config: Path | dict[str, Any], *, workdir: Path | None = None, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.exe = binary("prometheus-alertmanager", "alertmanager")
        if self.exe is None:
            raise ServiceError("alertmanager is not on PATH (apt-get install prometheus-alertmanager)")
        if isinstance(config, dict):
            self.config_path = self.dir / "alertmanager.yml"
            self.config_path.write_text(yaml.safe_dump(config, sort_keys=True))
        else:
            self.config_path = Path(config)

    def command(self) -> list[str]:
        assert self.exe is not None
        return [self.exe, f"--config.file={self.config_path}", f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="]

    def alerts(self) -> list[dict[str, Any]]:
        return list(json.loads(_get(f"{self.url}/api/v2/alerts")))

    def post_alerts(self, alerts: Sequence[dict[str, Any]]) -> None:
        """Send alerts the way Prometheus does (POST /api/v2/alerts)."""
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", data=json.dumps(list(alerts)).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()


class StaticMetrics:
    """Serves fixed bytes at /metrics on a free port (a stand-in scrape target for tests of rules and
    dashboards fed by `monitor replay`'s exposition)."""

    def __init__(self, body: bytes, port: int = 0,
                 content_type: str = "text/plain; version=0.0.4; charset=utf-8") -> None:
        self.body = body
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                payload = outer.body
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
