"""Soak: one `monitor worker` under a steady live load for minutes, watched from outside like production.

    python -m bench.soak [--minutes M] [--rate R] [--partitions P] [--ttl S] [--poll S] [--json FILE]

1. Starts its own Apache Kafka (monitor.stream.broker.LocalKafka, temporary data) and one worker
   subprocess (`python -m monitor.cli worker`, wall-clock evaluation, default checkpoint interval) on the
   example model with a short join TTL, so the join table reaches its steady size within the run.
2. Holds R events/s for M minutes (predictions and their ground truth together; 80% of predictions get
   ground truth after 2-40 s), with wall-clock timestamps, through the project's EventProducer (keyed by
   prediction_id). Payloads come from monitor.simulate, re-stamped with fresh ids and the current time.
3. Polls the worker's /metrics every `--poll` seconds for mlmon_joined_total, mlmon_predictions_total and
   mlmon_ground_truth_total, and samples the worker's VmRSS and CPU time from /proc every 2 s.
4. After the load stops, waits for the worker to apply everything and reports:
   - throughput: events produced/s against events the worker applied/s over the load period, and the
     drain time after the last send;
   - visibility latency: for the k-th ground truth sent, the first poll whose mlmon_joined_total >= k,
     response time minus send time (p50/p90/p99/max). An upper bound: it includes up to one poll interval
     and the scrape itself;
   - resident memory over time and a flatness verdict: least-squares slope of RSS over the second half of
     the load against the first half.

Everything (broker JVM, worker, this producer and poller) shares the machine's cores; read the numbers
with that in mind. docs/soak.md has a measured run.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import yaml

from monitor.config import MonitorConfig, load_config
from monitor.services import free_port, with_parent_death_signal
from monitor.simulate import TrafficSpec, generate
from monitor.stack import BackgroundLoop, EventProducer
from monitor.stream.broker import LocalKafka

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "monitor" / "examples" / "config.yaml"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# RSS growth per minute below which the second half counts as flat whatever the first half did: the
# allocator's and the kernel's page accounting move by a few MB without any leak.
FLAT_MB_PER_MIN = 1.0
MAX_DELAY = 40.0  # seconds from a prediction to its ground truth at most; the join TTL must exceed it

_COUNTER = re.compile(rb"^(mlmon_joined_total|mlmon_predictions_total|mlmon_ground_truth_total)\{[^}]*\} (\S+)$",
                      re.MULTILINE)


# --- setup ---------------------------------------------------------------------------------------------------
def soak_config(workdir: Path, bootstrap: str, partitions: int, ttl: int) -> tuple[Path, MonitorConfig]:
    data = yaml.safe_load(EXAMPLE.read_text())
    name = f"soak-{uuid.uuid4().hex[:8]}"
    data["kafka"] = {"bootstrap_servers": bootstrap, "predictions_topic": f"{name}-predictions",
                     "ground_truth_topic": f"{name}-truth", "dead_letter_topic": f"{name}-dlq",
                     "group_id": f"{name}-group", "partitions": partitions}
    # The example's 72h TTL would keep every prediction of the run in the join table (memory and
    # checkpoints growing for the whole soak by design); a TTL shorter than half the run lets the
    # second half show whether anything else grows.
    data["join"] = {"ttl": f"{ttl}s"}
    for m in data["models"]:
        m["reference"] = str((EXAMPLE.parent / m["reference"]).resolve())
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, load_config(path)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Templates:
    """Simulated payloads as dicts; each send re-stamps one with a new id and the current time."""

    predictions: list[dict]
    truths: list[dict | None]  # the ground truth of predictions[i], or None if it never gets one

    @classmethod
    def build(cls, n: int = 20_000, seed: int = 11) -> Templates:
        preds, truths = generate(TrafficSpec(n=n, seed=seed))
        by_id = {t["prediction_id"]: t for t in (orjson.loads(raw) for _, raw in truths)}
        parsed = [orjson.loads(raw) for _, raw in preds]
        return cls(parsed, [by_id.get(p["prediction_id"]) for p in parsed])


# --- load ----------------------------------------------------------------------------------------------------
@dataclass
class Load:
    """Paces predictions and their delayed ground truth at `rate` events/s in a thread."""

    producer: EventProducer
    templates: Templates
    rate: float
    seconds: float
    seed: int = 3
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    predictions: int = 0
    truths: int = 0
    truth_sent_at: list[float] = field(default_factory=list)  # send time of the k-th ground truth
    started: float = 0.0
    ended: float = 0.0
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="soak-load", daemon=True)
        self._rng = np.random.default_rng(self.seed)
        n = len(self.templates.predictions)
        labelled = sum(t is not None for t in self.templates.truths) / n
        # `rate` counts both topics: predictions/s * (1 + share that gets ground truth).
        self.prediction_rate = self.rate / (1.0 + labelled)

    def start(self) -> Load:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _delay(self) -> float:
        # Ground truth a few seconds to tens of seconds after its prediction, well inside the join TTL.
        return float(min(2.0 + self._rng.exponential(8.0), MAX_DELAY))

    def produced_by(self, t: float) -> int:
        """Events sent by wall time t (predictions are paced exactly; ground truth sends are recorded)."""
        preds = min(self.predictions, int(max(0.0, t - self.started) * self.prediction_rate))
        return preds + int(np.searchsorted(np.asarray(self.truth_sent_at), t, side="right"))

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def _loop(self) -> None:
        templates, producer = self.templates, self.producer
        n = len(templates.predictions)
        due: list[tuple[float, int, bytes, dict]] = []  # heap of (send at, seq, key, ground truth)
        self.started = time.time()
        stop_at = self.started + self.seconds
        tick = 0.01
        while True:
            now = time.time()
            if now >= stop_at:
                break
            want = int((now - self.started) * self.prediction_rate)
            while self.predictions < want:
                i = self.predictions
                t = dict(templates.predictions[i % n])
                pid = f"soak-{self.run_id}-{i}"
                t["prediction_id"] = pid
                t["timestamp"] = rfc3339(now)
                key = pid.encode()
                producer.send("prediction", orjson.dumps(t), key=key)
                self.predictions += 1
                truth = templates.truths[i % n]
                if truth is not None:
                    heapq.heappush(due, (now + self._delay(), i, key, truth))
            while due and due[0][0] <= now:
                _, i, key, truth = heapq.heappop(due)
                sent = time.time()
                # The ground truth's event time is when it is sent, as a labelling system would stamp it.
                body = {**truth, "prediction_id": key.decode(), "timestamp": rfc3339(sent)}
                producer.send("ground_truth", orjson.dumps(body), key=key)
                self.truth_sent_at.append(sent)
                self.truths += 1
            time.sleep(max(0.0, tick - (time.time() - now)))
        self.ended = time.time()
        # Ground truth still due after the load window is dropped: those predictions stay unlabelled and
        # expire after the TTL, which the join handles.
        producer.flush()


# --- watching the worker -------------------------------------------------------------------------------------
@dataclass
class Poll:
    sent: float
    received: float
    joined: float
    predictions: float
    truths: float


class Poller(BackgroundLoop):
    """GET /metrics every `interval` s in a thread; keeps the three counters of each answer."""

    thread_name = "soak-poller"

    def __init__(self, port: int, interval: float) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.polls: list[Poll] = []
        self.errors = 0
        self.scrape_seconds: list[float] = []

    def latest(self) -> Poll | None:
        return self.polls[-1] if self.polls else None

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.time()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as r:
                    body = r.read()
            except OSError:
                self.errors += 1
                self._stop.wait(self.interval)
                continue
            received = time.time()
            sums = {b"mlmon_joined_total": 0.0, b"mlmon_predictions_total": 0.0, b"mlmon_ground_truth_total": 0.0}
            for name, value in _COUNTER.findall(body):
                sums[name] += float(value)
            self.polls.append(Poll(sent, received, sums[b"mlmon_joined_total"], sums[b"mlmon_predictions_total"],
                                   sums[b"mlmon_ground_truth_total"]))
            self.scrape_seconds.append(received - sent)
            self._stop.wait(max(0.0, self.interval - (time.time() - sent)))


@dataclass
class ProcSample:
    t: float
    rss_mb: float
    cpu_seconds: float


def proc_sample(pid: int) -> ProcSample | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    # Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    fields = stat.rsplit(")", 1)[1].split()
    return ProcSample(time.time(), rss_kb / 1024, (int(fields[11]) + int(fields[12])) / CLK_TCK)


# --- results -------------------------------------------------------------------------------------------------
def slope_mb_per_min(samples: list[ProcSample]) -> float:
    if len(samples) < 3:
        return float("nan")
    t = np.array([s.t for s in samples])
    y = np.array([s.rss_mb for s in samples])
    return float(np.polyfit((t - t[0]) / 60.0, y, 1)[0])


def visibility_latencies(sent_at: list[float], polls: list[Poll]) -> np.ndarray:
    """Seconds from sending the k-th ground truth to the first answer showing >= k joins.

    mlmon_joined_total only counts ground truth that has been sent (one join per ground truth here), so the
    first poll with joined >= k always comes after the k-th send; joins of ground truth k+1.. cannot make
    it early. Ground truth not yet visible at the last poll is left out (reported as a count)."""
    joined = np.maximum.accumulate(np.array([p.joined for p in polls]))  # one worker: never decreases
    received = np.array([p.received for p in polls])
    k = np.arange(1, len(sent_at) + 1)
    idx = np.searchsorted(joined, k, side="left")
    seen = idx < len(polls)
    return received[idx[seen]] - np.asarray(sent_at)[seen]


@dataclass
class Result:
    minutes: float
    rate_target: float
    partitions: int
    ttl_seconds: int
    poll_seconds: float
    produced: int
    predictions: int
    truths: int
    produced_per_s: float
    applied_during_load_per_s: float
    applied_total: float
    drain_seconds: float
    latency_p50: float
    latency_p90: float
    latency_p99: float
    latency_max: float
    latency_missing: int
    scrape_p50: float
    scrape_max: float
    poll_errors: int
    rss_start_mb: float
    rss_mid_mb: float
    rss_end_mb: float
    rss_max_mb: float
    slope_first_half_mb_min: float
    slope_second_half_mb_min: float
    flat: bool
    worker_cpu_percent: float
    broker_cpu_percent: float
    worker_stop_line: str
    rss_series: list[tuple[float, float]]


def verdict(first: float, second: float) -> bool:
    return second <= FLAT_MB_PER_MIN or second <= 0.1 * first


def table(r: Result) -> str:
    rows = [
        ("load", f"{r.minutes:g} min at {r.rate_target:,.0f} events/s target, {r.partitions} partitions, "
                 f"join TTL {r.ttl_seconds} s"),
        ("produced", f"{r.produced:,} events ({r.predictions:,} predictions, {r.truths:,} ground truth)"),
        ("produced/s (steady part)", f"{r.produced_per_s:,.0f}"),
        ("worker applied/s (steady part)", f"{r.applied_during_load_per_s:,.0f} "
                                           f"({r.applied_during_load_per_s / max(r.produced_per_s, 1e-9):.3f} "
                                           "x produced)"),
        ("drain after last send", f"{r.drain_seconds:.2f} s (applied {r.applied_total:,.0f})"),
        ("ground truth -> visible in /metrics", f"p50 {r.latency_p50:.2f} s, p90 {r.latency_p90:.2f} s, "
                                                f"p99 {r.latency_p99:.2f} s, max {r.latency_max:.2f} s "
                                                f"(poll every {r.poll_seconds:g} s; {r.latency_missing} not seen)"),
        ("scrape duration", f"p50 {r.scrape_p50 * 1000:.0f} ms, max {r.scrape_max * 1000:.0f} ms, "
                            f"{r.poll_errors} errors"),
        ("worker RSS", f"start {r.rss_start_mb:.0f} MB, middle {r.rss_mid_mb:.0f} MB, end {r.rss_end_mb:.0f} MB, "
                       f"max {r.rss_max_mb:.0f} MB"),
        ("RSS slope", f"first half {r.slope_first_half_mb_min:+.2f} MB/min, second half "
                      f"{r.slope_second_half_mb_min:+.2f} MB/min -> {'FLAT' if r.flat else 'GROWING'}"),
        ("CPU (share of one core)", f"worker {r.worker_cpu_percent:.0f}%, broker {r.broker_cpu_percent:.0f}%"),
        ("worker's own totals", r.worker_stop_line),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'measure':<{width}} | value |", f"| {'-' * width} | ----- |"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------------------------
def run(minutes: float, rate: float, partitions: int, ttl: int, poll: float, keep: bool) -> Result:
    workdir = Path(tempfile.mkdtemp(prefix="mlmon-soak-"))
    kafka = LocalKafka()
    worker: subprocess.Popen[bytes] | None = None
    log_path = workdir / "worker.log"
    try:
        print(f"starting Kafka (work dir {workdir})", flush=True)
        kafka.start()
        path, config = soak_config(workdir, kafka.bootstrap, partitions, ttl)
        port = free_port()
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                with_parent_death_signal([sys.executable, "-m", "monitor.cli", "worker", "--config", str(path),
                                          "--metrics-port", str(port)]),
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_healthy(port, worker, log_path)
        templates = Templates.build()
        producer = EventProducer(kafka.bootstrap, config.kafka)
        poller = Poller(port, poll).start()
        samples: list[ProcSample] = []
        broker_samples: list[ProcSample] = []
        load = Load(producer, templates, rate, minutes * 60).start()
        print(f"load: {rate:,.0f} events/s for {minutes:g} min ({load.prediction_rate:,.0f} predictions/s)",
              flush=True)
        next_print = time.time() + 15
        while load._thread.is_alive():
            sample_procs(worker.pid, kafka.pid, samples, broker_samples)
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}:\n{tail(log_path)}")
            if time.time() >= next_print and samples:
                p = poller.latest()
                print(f"  {time.time() - load.started:5.0f} s: sent {load.predictions + load.truths:,}, "
                      f"applied {(p.predictions + p.truths) if p else 0:,.0f}, joined {p.joined if p else 0:,.0f}, "
                      f"worker RSS {samples[-1].rss_mb:.0f} MB", flush=True)
                next_print += 15
            load.join(2.0)
        if load.error is not None:
            raise RuntimeError(f"producer failed: {load.error!r}")
        sample_procs(worker.pid, kafka.pid, samples, broker_samples)
        load_samples = [s for s in samples if s.t <= load.ended]
        produced = load.predictions + load.truths
        # Drain: every sent event applied (counted by the worker's own counters).
        deadline = time.time() + 120
        while time.time() < deadline:
            p = poller.latest()
            if p and p.predictions + p.truths >= produced and p.received > load.ended:
                break
            time.sleep(0.05)
        drained = poller.latest()
        poller.stop()
        producer.close()
        # A graceful stop makes the worker log its own totals (checkpoint count, bytes and time).
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        stopped = next((line.split("stopped: ", 1)[1] for line in tail(log_path, 20_000).splitlines()
                        if "stopped: " in line), "(no stop line in the worker log)")
        assert drained is not None
        drain_seconds = drained.received - load.ended
        # Applied/s between 10 s into the load (past the start-up ramp) and its end.
        # Both rates over the same stretch: from when ground truth flows at full rate (its longest delay
        # after the start) to the end of the load; before that only predictions are sent.
        steady = [p for p in poller.polls if load.started + MAX_DELAY <= p.received <= load.ended]
        if len(steady) < 2:
            steady = [p for p in poller.polls if p.received <= load.ended][-2:] or poller.polls[:2]
        a, b = steady[0], steady[-1]
        span = max(b.received - a.received, 1e-9)
        applied_rate = (b.predictions + b.truths - a.predictions - a.truths) / span
        produced_rate = (load.produced_by(b.received) - load.produced_by(a.received)) / span
        lat = visibility_latencies(load.truth_sent_at, poller.polls)
        half = load.started + (load.ended - load.started) / 2
        first = [s for s in load_samples if s.t <= half]
        second = [s for s in load_samples if s.t >= half]
        s1, s2 = slope_mb_per_min(first), slope_mb_per_min(second)
        result = Result(
            minutes=minutes, rate_target=rate, partitions=partitions, ttl_seconds=ttl, poll_seconds=poll,
            produced=produced, predictions=load.predictions, truths=load.truths,
            produced_per_s=produced_rate,
            applied_during_load_per_s=applied_rate,
            applied_total=drained.predictions + drained.truths, drain_seconds=drain_seconds,
            latency_p50=pct(lat, 50), latency_p90=pct(lat, 90), latency_p99=pct(lat, 99),
            latency_max=float(lat.max()) if lat.size else float("nan"),
            latency_missing=len(load.truth_sent_at) - int(lat.size),
            scrape_p50=pct(np.array(poller.scrape_seconds), 50),
            scrape_max=max(poller.scrape_seconds, default=float("nan")), poll_errors=poller.errors,
            rss_start_mb=load_samples[0].rss_mb, rss_mid_mb=second[0].rss_mb if second else float("nan"),
            rss_end_mb=load_samples[-1].rss_mb, rss_max_mb=max(s.rss_mb for s in samples),
            slope_first_half_mb_min=s1, slope_second_half_mb_min=s2, flat=verdict(s1, s2),
            worker_cpu_percent=cpu_percent(load_samples),
            broker_cpu_percent=cpu_percent([s for s in broker_samples if s.t <= load.ended]),
            worker_stop_line=stopped,
            rss_series=[(round(s.t - load.started, 1), round(s.rss_mb, 1)) for s in samples],
        )
        return result
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # final checkpoint and a clean "stopped:" line in the log
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
        kafka.stop()
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def sample_procs(worker_pid: int, broker_pid: int | None, samples: list[ProcSample],
                 broker_samples: list[ProcSample]) -> None:
    s = proc_sample(worker_pid)
    if s is not None:
        samples.append(s)
    if broker_pid is not None:
        b = proc_sample(broker_pid)
        if b is not None:
            broker_samples.append(b)


def cpu_percent(samples: list[ProcSample]) -> float:
    if len(samples) < 2:
        return float("nan")
    return 100.0 * (samples[-1].cpu_seconds - samples[0].cpu_seconds) / (samples[-1].t - samples[0].t)


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


def wait_healthy(port: int, worker: subprocess.Popen[bytes], log_path: Path, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}:\n{tail(log_path)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                                                  timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"worker not healthy after {timeout:.0f} s:\n{tail(log_path)}")


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0, help="how long the load runs (default 5)")
    ap.add_argument("--rate", type=float, default=5000.0, help="events/s, both topics together (default 5000)")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--ttl", type=int, default=60, help="join TTL in seconds (default 60, above the 40 s max delay)")
    ap.add_argument("--poll", type=float, default=0.25, help="seconds between /metrics polls (default 0.25)")
    ap.add_argument("--json", type=Path, help="also write the results (with the RSS series) here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (worker log, config)")
    args = ap.parse_args()
    result = run(args.minutes, args.rate, args.partitions, args.ttl, args.poll, args.keep)
    print()
    print(table(result))
    step = max(1, len(result.rss_series) // 20)
    print("\nworker RSS over time (s after load start: MB): " +
          ", ".join(f"{t:.0f}: {mb:.0f}" for t, mb in result.rss_series[::step]))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()
