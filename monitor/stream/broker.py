"""A real Apache Kafka broker without Docker: the one start-up helper for tests, demo and benchmarks.

Pinned release: Apache Kafka 4.4.0 (Scala 2.13), single node, KRaft (broker + controller in one JVM).
Apache Kafka 3.9.2, the last 3.x release, stays available (`LocalKafka(version=COMPAT_KAFKA_VERSION)`,
`monitor broker --kafka-version 3.9.2`) for the compatibility test and for users whose cluster is 3.x.

Kafka 4 is KRaft-only and removed old request versions (KIP-896). aiokafka 0.14 negotiates versions from
the broker's ApiVersions answer; produce, fetch, group membership, offsets, admin and the transactional
producer (InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn) are exercised
against 4.4.0 by tests/test_broker.py. 4.x logs through log4j2 (the 3.x line through reload4j), so each
release carries its own logging binding and configuration.

Jars come from Maven Central through `mvn dependency:copy-dependencies` on a generated pom, into
`$MLMON_KAFKA_CACHE/kafka-<version>/libs` (default `~/.cache/mlmon/...`, honouring XDG_CACHE_HOME). A
marker file makes later calls skip mvn; a lock file makes a concurrent first fetch (parallel test
sessions, CI jobs) run mvn once while the others wait.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import click

from monitor.services import free_port, with_parent_death_signal  # free_port re-exported: part of the API

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
COMPAT_KAFKA_VERSION = "3.9.2"
SCALA_VERSION = "2.13"


@dataclass(frozen=True)
class Release:
    """What differs between the supported release lines: the logging binding and its configuration.

    kafka_2.13's pom declares slf4j-api only; the release tarball adds the binding, without which the
    broker would log nothing at all. 3.x binds to reload4j (log4j 1 API), 4.x to log4j2.
    """

    version: str
    extra_dependencies: tuple[tuple[str, str, str], ...]
    log4j2: bool


RELEASES: dict[str, Release] = {
    "4.4.0": Release("4.4.0", (("org.apache.logging.log4j", "log4j-slf4j-impl", "2.25.5"),), log4j2=True),
    "3.9.2": Release(
        "3.9.2",
        (("org.slf4j", "slf4j-reload4j", "1.7.36"), ("ch.qos.reload4j", "reload4j", "1.2.25")),
        log4j2=False,
    ),
}


def release(version: str) -> Release:
    try:
        return RELEASES[version]
    except KeyError:
        raise BrokerError(
            f"unsupported Kafka version {version!r}; supported: {', '.join(sorted(RELEASES))}"
        ) from None


# Pinned so that a machine with an old default plugin in ~/.m2 behaves like a fresh one.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
_MARKER = ".complete.json"

# Broker settings that make a one-node broker behave well under tests. Exposed so that the testcontainers
# path of the test fixture can apply the same ones.
TEST_BROKER_SETTINGS: dict[str, str] = {
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    # 50 partitions (the default) made the first group join take 1.9 s instead of 0.4 s here.
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.num.partitions": "1",
    "group.initial.rebalance.delay.ms": "0",
    # Tests lower the clients' session timeouts to make failover fast; the default minimum is 6 s.
    "group.min.session.timeout.ms": "1000",
    "auto.create.topics.enable": "true",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    # Replays produce records with old event timestamps; time-based retention would delete them.
    "log.retention.ms": "-1",
    # After a crash the restarted node waits out its previous incarnation's session before it may
    # register again: 9 s by default, which made a kill-and-restart test take 12 s instead of 3.
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
    # The cleaner (needed for faust changelogs) allocates this buffer on the heap; 128 MB by default.
    "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
}

_JVM_OPTIONS: tuple[str, ...] = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
# The storage formatter runs for a second: the C1 compiler alone and a serial GC start it fastest.
_TOOL_JVM_OPTIONS: tuple[str, ...] = ("-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")


class BrokerError(RuntimeError):
    """The jars could not be fetched, or the broker did not start or stop as expected."""


# --------------------------------------------------------------------------------------------- jars


def kafka_cache_root() -> Path:
    """Directory holding one `kafka-<version>/` per release (env MLMON_KAFKA_CACHE overrides)."""
    override = os.environ.get("MLMON_KAFKA_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mlmon"


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    return kafka_cache_root() / f"kafka-{version}"


def _main_jar(libs: Path, version: str) -> Path:
    return libs / f"kafka_{SCALA_VERSION}-{version}.jar"


def _is_complete(home: Path, version: str) -> bool:
    return (home / _MARKER).is_file() and _main_jar(home / "libs", version).is_file()


def ensure_kafka_jars(timeout: float = 900.0, version: str = KAFKA_VERSION) -> Path:
    """Return the directory of a release's jars (the pinned one by default), fetching them with `mvn`
    on first use.

    Safe to call from several processes at once: one fetches, the others wait on the lock and then
    find the marker. CI can call this once to pre-fetch.
    """
    rel = release(version)
    home = kafka_home(version)
    libs = home / "libs"
    if _is_complete(home, version):
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with _file_lock(home / ".lock", timeout=timeout):
        if _is_complete(home, version):  # another process fetched while we waited
            return libs
        started = time.monotonic()
        log.info("fetching Apache Kafka %s jars from Maven Central into %s", version, libs)
        with tempfile.TemporaryDirectory(dir=home, prefix=".fetch-") as tmp:
            staging = Path(tmp) / "libs"
            _run_maven(Path(tmp), staging, rel, timeout=timeout)
            main = _main_jar(staging, version)
            if not main.is_file():
                raise BrokerError(f"mvn finished but {main.name} is missing in {staging}")
            # A crash between rename and marker leaves libs/ without a marker: replace it.
            if libs.exists():
                shutil.rmtree(libs)
            os.replace(staging, libs)
        elapsed = time.monotonic() - started
        jars = sorted(p.name for p in libs.glob("*.jar"))
        marker = {
            "kafka_version": version,
            "scala_version": SCALA_VERSION,
            "jars": jars,
            "fetch_seconds": round(elapsed, 2),
        }
        _atomic_write(home / _MARKER, json.dumps(marker, indent=2) + "\n")
        log.info("fetched %d jars in %.1f s", len(jars), elapsed)
    return libs


def _pom(rel: Release) -> str:
    deps = [("org.apache.kafka", f"kafka_{SCALA_VERSION}", rel.version), *rel.extra_dependencies]
    dep_xml = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mlmon</groupId>
  <artifactId>kafka-{rel.version}-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dep_xml}
  </dependencies>
</project>
"""


def _run_maven(workdir: Path, output_dir: Path, rel: Release, timeout: float) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Apache Maven (`mvn`) is needed once to fetch the Kafka jars from Maven Central "
            "(apt-get install maven), or point MLMON_KAFKA_CACHE at a pre-fetched cache"
        )
    pom = workdir / "pom.xml"
    pom.write_text(_pom(rel), encoding="utf-8")
    cmd = [
        mvn, "-q", "-B", "-f", str(pom), _DEPENDENCY_PLUGIN,
        f"-DoutputDirectory={output_dir}", "-DincludeScope=runtime",
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"mvn did not finish fetching the Kafka jars within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise BrokerError(f"mvn failed (exit {proc.returncode}) fetching Kafka {rel.version}:\n{tail}")


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    # flock is released by the kernel when a holder dies, so a crashed fetch never leaves a stale lock.
    with path.open("a+") as fh:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if not announced:
                    log.info("waiting for another process fetching the Kafka jars (%s)", path)
                    announced = True
                if time.monotonic() > deadline:
                    raise BrokerError(f"timed out after {timeout:.0f} s waiting for lock {path}") from exc
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------- broker


def _random_cluster_id() -> str:
    # Same shape as Kafka's Uuid.randomUuid().toString(): URL-safe base64 of 16 bytes without padding,
    # never starting with "-" (it would parse as a CLI flag). Generating it here saves a JVM start.
    while True:
        raw = uuid.uuid4().bytes
        text = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("no `java` on PATH (Kafka needs Java 11+, 17 recommended) and JAVA_HOME unset")
    return java


def _cds_archive(java: str, version: str) -> Path | None:
    """Where the class-data-sharing archive for this JDK and release lives (None: disabled).

    Class loading dominates a cold start on 2 busy cores: with an AppCDS archive the broker was ready in
    3.2 s instead of 5.7 s, and the storage formatter took 0.4 s instead of 2.0 s. The archive is dumped
    by the first broker that exits cleanly, and keyed by the JDK binary so a JDK upgrade makes a new one.
    """
    if os.environ.get("MLMON_KAFKA_CDS", "1") == "0":
        return None
    real = os.path.realpath(java)
    try:
        stamp = f"{real}:{os.stat(real).st_mtime_ns}:{version}"
    except OSError:
        return None
    key = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    return kafka_home(version) / f"cds-{key}.jsa"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return f"({path} not readable)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def _log_errors(path: Path, limit: int = 6) -> str:
    """The first ERROR/FATAL entries with their exception message: the cause, which a tail often misses
    because a failed start logs a long shutdown after it."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    picked: list[str] = []
    for i, line in enumerate(lines):
        if " ERROR " in line or " FATAL " in line:
            picked.append(line)
            if i + 1 < len(lines) and not lines[i + 1].startswith("["):
                picked.append("    " + lines[i + 1].strip())
            if len(picked) >= 2 * limit:
                break
    return "\n".join(picked)


def _failure_report(data_dir: Path | None) -> str:
    if data_dir is None:
        return ""
    log_path = data_dir / "broker.log"
    parts = []
    errors = _log_errors(log_path)
    if errors:
        parts.append(f"--- errors in {log_path} ---\n{errors}")
    parts.append(f"--- broker.log (tail) ---\n{_tail(log_path)}")
    out = data_dir / "broker.out"
    if out.is_file() and out.stat().st_size:
        parts.append(f"--- broker.out (tail) ---\n{_tail(out, 15)}")
    return "\n".join(parts)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the JVM does: TIME_WAIT sockets a graceful stop leaves behind must not make the port look taken
        # (a restart on the same port would wait 60 s); a listening broker still makes the bind fail.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _clients_can_connect(bootstrap: str) -> bool:
    """True once a real client gets metadata listing this broker (not just an open TCP port)."""
    from kafka import KafkaAdminClient  # imported late: `monitor --help` must stay light
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="mlmon-readiness",
            bootstrap_timeout_ms=3000,
            request_timeout_ms=3000,
        )
    except (KafkaError, OSError):
        return False
    try:
        cluster = admin.describe_cluster()
        admin.list_topics()
        return bool(cluster.get("brokers"))
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


class LocalKafka:
    """A single-node KRaft Apache Kafka broker in a child JVM, on loopback ports.

    `with LocalKafka() as kafka: use(kafka.bootstrap)`. With no data_dir a temporary one is created and
    removed on stop(); a given data_dir is kept, and restarting on it keeps the topics and offsets.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        *,
        controller_port: int | None = None,
        heap: str = "512m",
        startup_timeout: float = 60.0,
        overrides: Mapping[str, str | int] | None = None,
        version: str = KAFKA_VERSION,
    ) -> None:
        self.release = release(version)
        self.version = version
        self._requested_port = port
        self._requested_controller_port = controller_port
        self._requested_data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.heap = heap
        self.startup_timeout = startup_timeout
        self.overrides = {k: str(v) for k, v in (overrides or {}).items()}
        self.port: int | None = port
        self.controller_port: int | None = controller_port
        self.data_dir: Path | None = self._requested_data_dir
        self._temp_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._cds_dump: tuple[Path, Path] | None = None  # (being written, final name)
        self._lock = threading.Lock()

    # -- public surface ------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("the broker's port is chosen at start(); call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        if self.data_dir is None:
            raise BrokerError("no data dir before start()")
        return self.data_dir / "broker.log"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Fetch jars if needed, format storage, start the JVM, and return once clients can connect."""
        with self._lock:
            if self.is_running():
                raise BrokerError(f"broker already running at {self.bootstrap}")
            self._terminate(kill_after=0.0)  # reap a JVM that died on its own since the last start
            for wanted in (self._requested_port, self._requested_controller_port):
                if wanted and not _port_free(wanted):
                    raise BrokerError(f"port {wanted} on 127.0.0.1 is already in use (another broker?)")
            libs = ensure_kafka_jars(version=self.version)
            # Ports we chose ourselves may be taken between probing and binding: retry with new ones.
            attempts = 1 if self._requested_port or self._requested_controller_port else 3
            for attempt in range(1, attempts + 1):
                try:
                    self._start_once(libs)
                    return self
                except _PortInUse:
                    self._terminate(kill_after=0.0)
                    if attempt == attempts:
                        raise BrokerError(
                            f"ports in use after {attempts} attempts\n{_failure_report(self.data_dir)}"
                        ) from None
                    log.info("port collision starting Kafka, retrying with new ports")
                except BaseException:
                    self._terminate(kill_after=0.0)
                    self._cleanup_dir()
                    raise
            raise AssertionError("unreachable")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (controlled shutdown, about 2 s), SIGKILL after `timeout`; remove a temporary data dir."""
        with self._lock:
            self._terminate(kill_after=timeout)
            self._cleanup_dir()

    def kill(self) -> None:
        """SIGKILL the JVM at once (a crash); a temporary data dir is removed, a given one kept."""
        with self._lock:
            self._terminate(kill_after=0.0)
            self._cleanup_dir()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        where = f"127.0.0.1:{self.port}" if self.port else "?"
        return f"<LocalKafka {self.version} {where} {state} data_dir={self.data_dir}>"

    # -- internals -------------------------------------------------------------------------------

    def _start_once(self, libs: Path) -> None:
        if self._requested_data_dir is not None:
            self.data_dir = self._requested_data_dir
            self.data_dir.mkdir(parents=True, exist_ok=True)
        elif self._temp_dir is None or not self._temp_dir.exists():
            _sweep_orphaned_temp_dirs()
            self._temp_dir = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX))
            (self._temp_dir / _OWNER_FILE).write_text(str(os.getpid()), encoding="ascii")
            self.data_dir = self._temp_dir
        assert self.data_dir is not None
        self.port = self._requested_port or free_port()
        self.controller_port = self._requested_controller_port or free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()

        props = self.data_dir / "server.properties"
        _atomic_write(props, self._server_properties())
        if self.release.log4j2:
            log4j = self.data_dir / "log4j2.properties"
            _atomic_write(log4j, self._log4j2_properties())
            log_option = f"-Dlog4j2.configurationFile={log4j.as_uri()}"
        else:
            log4j = self.data_dir / "log4j.properties"
            _atomic_write(log4j, self._log4j_properties())
            log_option = f"-Dlog4j.configuration={log4j.as_uri()}"
        # Each run starts a fresh log (the previous one is kept once), so the readiness check and its
        # error message read only this run.
        for name in ("broker.log", "broker.out"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.data_dir / name, self.data_dir / f"{name}.prev")

        classpath = f"{libs}{os.sep}*"
        java = _java()
        jvm_common = [log_option, "-cp", classpath]
        archive = _cds_archive(java, self.version)
        cds_use = [f"-XX:SharedArchiveFile={archive}"] if archive and archive.is_file() else []
        if not (self.data_dir / "kafka-logs" / "meta.properties").is_file():
            self._format_storage(java, [*cds_use, *jvm_common], props)

        cds_broker = cds_use
        if archive is not None and not cds_use:
            pending = archive.with_name(f".{archive.name}.{os.getpid()}.{id(self)}.tmp")
            self._cds_dump = (pending, archive)
            cds_broker = [f"-XX:ArchiveClassesAtExit={pending}"]
        cmd = [java, f"-Xmx{self.heap}", *_JVM_OPTIONS, *cds_broker, *jvm_common, _MAIN_CLASS, str(props)]
        self._out = (self.data_dir / "broker.out").open("wb")
        started = time.monotonic()
        self._proc = subprocess.Popen(
            with_parent_death_signal(cmd),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            # Own session: a terminal's Ctrl-C reaches us, and we shut the broker down in order.
            start_new_session=True,
        )
        _register(self)
        self._wait_ready(started)
        log.info(
            "Kafka %s ready at %s in %.1f s (pid %d, data %s)",
            self.version, self.bootstrap, time.monotonic() - started, self._proc.pid, self.data_dir,
        )  # fmt: skip

    def _format_storage(self, java: str, jvm_common: list[str], props: Path) -> None:
        cmd = [java, *_TOOL_JVM_OPTIONS, *jvm_common, _STORAGE_TOOL, "format", "-t", _random_cluster_id(),
               "-c", str(props)]  # fmt: skip
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise BrokerError(
                f"formatting Kafka storage failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
                f"\nbroker log:\n{_tail(self.log_path)}"
            )

    def _server_properties(self) -> str:
        assert self.data_dir is not None
        settings: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir / "kafka-logs"),
            **TEST_BROKER_SETTINGS,
            **self.overrides,
        }
        lines = [f"# written by monitor.stream.broker for Apache Kafka {self.version}"]
        lines += [f"{key}={_escape_property(value)}" for key, value in settings.items()]
        return "\n".join(lines) + "\n"

    def _log4j_properties(self) -> str:
        assert self.data_dir is not None
        log_file = _escape_property(str(self.data_dir / "broker.log"))
        # Rolling, so a long benchmark cannot fill the disk; request logging stays at WARN like upstream.
        return f"""log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log_file}
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.raft=INFO
"""

    def _log4j2_properties(self) -> str:
        assert self.data_dir is not None
        log_file = _escape_property(str(self.data_dir / "broker.log"))
        # The same layout as the 3.x file: _log_errors() reads " ERROR " lines from either.
        return f"""status=warn
appender.file.type=RollingFile
appender.file.name=file
appender.file.fileName={log_file}
appender.file.filePattern={log_file}.%i
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
appender.file.policies.type=Policies
appender.file.policies.size.type=SizeBasedTriggeringPolicy
appender.file.policies.size.size=20MB
appender.file.strategy.type=DefaultRolloverStrategy
appender.file.strategy.max=2
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
logger.request.name=kafka.request.logger
logger.request.level=WARN
logger.raft.name=org.apache.kafka.raft
logger.raft.level=INFO
"""

    def _wait_ready(self, started: float) -> None:
        assert self._proc is not None
        deadline = started + self.startup_timeout
        tcp_open = False
        while True:
            code = self._proc.poll()
            if code is not None:
                report = _failure_report(self.data_dir)
                ours = not (self._requested_port or self._requested_controller_port)
                if ours and "Address already in use" in report:
                    raise _PortInUse()
                raise BrokerError(f"Kafka exited with code {code} during start-up.\n{report}")
            assert self.port is not None
            if not tcp_open:
                tcp_open = _port_accepts(self.port)
            if tcp_open and _clients_can_connect(self.bootstrap):
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"Kafka at {self.bootstrap} not ready within {self.startup_timeout:g} s "
                    f"(tcp {'open' if tcp_open else 'closed'}).\n{_failure_report(self.data_dir)}"
                )
            time.sleep(0.1)

    def _terminate(self, kill_after: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            killed = False
            if proc.poll() is None:
                if kill_after > 0:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=kill_after)
                    except subprocess.TimeoutExpired:
                        log.warning("Kafka (pid %d) ignored SIGTERM for %.0f s; killing it", proc.pid, kill_after)
                if proc.poll() is None:
                    killed = True
                    proc.kill()
                    proc.wait(timeout=30)
            _unregister(self)
            self._publish_cds_archive(complete=not killed and proc.returncode in (0, 143, -signal.SIGTERM))
        if self._out is not None:
            self._out.close()
            self._out = None

    def _publish_cds_archive(self, complete: bool) -> None:
        # The JVM writes the archive while exiting; only a complete one (clean exit) is moved into place,
        # atomically, so concurrent first runs cannot leave a torn file behind.
        if self._cds_dump is None:
            return
        pending, final = self._cds_dump
        self._cds_dump = None
        try:
            if complete and pending.is_file() and pending.stat().st_size > 0 and not final.exists():
                os.replace(pending, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                pending.unlink()

    def _cleanup_dir(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
            self.data_dir = None


class _PortInUse(Exception):
    pass


_TEMP_PREFIX = "mlmon-kafka-"
_OWNER_FILE = ".owner-pid"


def _sweep_orphaned_temp_dirs() -> None:
    """Remove temporary data dirs whose owning Python process is gone.

    The JVM dies with its parent (parent-death signal), but a parent killed with SIGKILL cannot
    remove the data dir; the next start does it.
    """
    for path in Path(tempfile.gettempdir()).glob(f"{_TEMP_PREFIX}*"):
        try:
            pid = int((path / _OWNER_FILE).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def _escape_property(value: str) -> str:
    # java.util.Properties treats backslash as an escape; paths with one would be mangled otherwise.
    return value.replace("\\", "\\\\")


# Brokers still running at interpreter exit are stopped, so a failed test run leaves no JVM behind.
_RUNNING: set[LocalKafka] = set()
_RUNNING_LOCK = threading.Lock()


def _register(broker: LocalKafka) -> None:
    with _RUNNING_LOCK:
        _RUNNING.add(broker)


def _unregister(broker: LocalKafka) -> None:
    with _RUNNING_LOCK:
        _RUNNING.discard(broker)


@atexit.register
def _stop_all() -> None:
    with _RUNNING_LOCK:
        brokers = list(_RUNNING)
    for broker in brokers:
        with contextlib.suppress(Exception):
            broker.stop(timeout=5.0)


def start_broker(port: int | None = None, data_dir: Path | None = None, version: str = KAFKA_VERSION) -> LocalKafka:
    """Start a local broker and return it once clients can connect; the caller stops it."""
    return LocalKafka(port=port, data_dir=data_dir, version=version).start()


# ---------------------------------------------------------------------------------------------- CLI


@click.command(name="broker")
@click.option("--port", type=int, default=9092, show_default=True, help="Client (PLAINTEXT) port on 127.0.0.1.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep topics here across restarts (default: a temporary dir, removed on exit).",
)
@click.option("--fetch-only", is_flag=True, help="Only fetch and cache the Kafka jars, print their directory.")
@click.option(
    "--kafka-version",
    type=click.Choice(sorted(RELEASES)),
    default=KAFKA_VERSION,
    show_default=True,
    help="Apache Kafka release to run.",
)
def broker_command(port: int, data_dir: Path | None, fetch_only: bool, kafka_version: str) -> None:
    """Start a local single-node Apache Kafka (KRaft) and block until SIGINT/SIGTERM.

    Prints exactly one line on stdout, `ready bootstrap=127.0.0.1:PORT`, once clients can connect.
    """
    # Progress (first jar fetch, start-up) goes to stderr; stdout carries only the ready line.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    if fetch_only:
        click.echo(str(ensure_kafka_jars(version=kafka_version)))
        return

    stop_requested = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop_requested.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)

    broker = LocalKafka(port=port, data_dir=data_dir, version=kafka_version)
    try:
        broker.start()
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        if not stop_requested.is_set():
            click.echo(f"ready bootstrap={broker.bootstrap}")
            sys.stdout.flush()
        while not stop_requested.wait(0.5):
            if not broker.is_running():
                raise click.ClickException(f"Kafka exited unexpectedly; log tail:\n{_tail(broker.log_path)}")
    finally:
        log.info("stopping Kafka at %s", broker.bootstrap)
        broker.stop()
