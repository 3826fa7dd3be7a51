"""Faults around `monitor worker` on a real broker: the broker restarting mid-stream, and Prometheus
scraping while the consumer group rebalances.

These tests run their own LocalKafka on a fixed port with a kept data dir, because one of them stops and
starts the broker; the session-wide fixture broker is shared by other tests and must stay up. The worker
helpers (subprocess, produce, scrape, replay comparison) come from tests/test_worker.py so both files
judge "exact" the same way.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from monitor import conventions as c
from monitor.config import MonitorConfig
from monitor.stack import BackgroundLoop
from monitor.stream.broker import LocalKafka, free_port
from tests.kafka_fixtures import create_topic
from tests.test_worker import (
    ADDITIVE_GAUGES,
    Series,
    WorkerProcess,
    assert_series_equal,
    drained,
    key_of,
    produce,
    replay_series,
    stream,  # noqa: F401  (module fixture: the same 3000-prediction stream as test_worker)
    total,
    wait_for,
    workers,  # noqa: F401  (fixture: kills leftover worker processes)
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker only this module uses. Both ports are fixed so a restart comes back at the same address
    (clients keep the bootstrap string) and the KRaft quorum address does not change under the kept data."""
    broker = LocalKafka(port=free_port(), data_dir=tmp_path_factory.mktemp("faults-kafka"),
                        controller_port=free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def additive(series: Series) -> Series:
    return {k: v for k, v in series.items()
            if k[0].endswith(("_total", "_bucket", "_count", "_sum")) or k[0] in ADDITIVE_GAUGES}


def _prepare(tmp_path: Path, bootstrap: str, events: tuple) -> tuple[Path, MonitorConfig, Series]:
    """A 4-partition config on `bootstrap`, its topics created, and replay's figures as the oracle."""
    preds, truths, at = events
    path, config = write_config(tmp_path, bootstrap, partitions=4)
    for topic in (config.kafka.predictions_topic, config.kafka.ground_truth_topic):
        create_topic(bootstrap, topic, partitions=config.kafka.partitions)
    return path, config, replay_series(config, preds, truths, at)


# --- a. broker restart -----------------------------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_worker_survives_a_broker_restart_mid_stream(own_kafka: LocalKafka, tmp_path: Path, stream,  # noqa: F811
                                                     workers) -> None:  # noqa: F811
    preds, truths, at = stream
    bootstrap = own_kafka.bootstrap
    path, config, expected = _prepare(tmp_path, bootstrap, stream)
    kafka = config.kafka
    cut = len(preds) // 2
    # Ground truth goes with the predictions it belongs to, as a live system would emit it.
    first_ids = {key_of(p) for p in preds[:cut]}
    first_truths = [t for t in truths if key_of(t) in first_ids]
    rest_truths = [t for t in truths if key_of(t) not in first_ids]
    produce(bootstrap, kafka.predictions_topic, preds[:cut])
    w = WorkerProcess(path, at, tmp_path, checkpoint_interval=0.3)
    workers.append(w)
    wait_for("the worker to consume the first part",
             lambda: total(w.try_scrape() or {}, c.PREDICTIONS_TOTAL.name) > 0, workers=workers)
    # Ground truth arrives while the worker runs, so the broker likely goes down with a checkpoint due or
    # in flight (the interval is 0.3 s).
    produce(bootstrap, kafka.ground_truth_topic, first_truths)
    wait_for("some ground truth applied",
             lambda: total(w.try_scrape() or {}, c.GROUND_TRUTH_TOTAL.name) > 0, workers=workers)
    before = w.scrape()

    down = time.monotonic()
    own_kafka.stop()  # graceful: controlled shutdown, the data dir is kept
    time.sleep(2.0)  # long enough for the worker's fetches, heartbeats and a checkpoint to fail
    assert w.proc.poll() is None, f"the worker exited while the broker was down:\n{w.output()[-3000:]}"
    during = w.try_scrape()
    assert during is not None, "/metrics stopped answering while the broker was down"
    own_kafka.start()
    outage = time.monotonic() - down

    produce(bootstrap, kafka.predictions_topic, preds[cut:])
    produce(bootstrap, kafka.ground_truth_topic, rest_truths)
    started = time.monotonic()
    wait_for("the worker to drain after the broker restart", drained([w], expected), timeout=90, workers=workers)
    assert_series_equal(w.scrape(), expected)
    wait_for("/healthz 200 after the restart", lambda: w.get("/healthz")[0] == 200, timeout=30, workers=workers)
    assert total(before, c.PREDICTIONS_TOTAL.name) <= cut < len(preds)  # the outage really was mid-stream
    assert w.stop() == 0, w.output()[-3000:]
    print(f"broker down and back in {outage:.1f} s; worker drained {time.monotonic() - started:.1f} s after "
          f"the second half was produced")


# --- b. scrapes during a rebalance -----------------------------------------------------------------------------
_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LAG_PARTITION = re.compile(r'^mlmon_consumer_lag\{[^}]*partition="(\d+)"', re.MULTILINE)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
# Only what the invariants read: parsing all ~3000 series of every 50 ms scrape with prometheus_client's
# parser would cost more CPU than the two workers have on 2 cores.
_WANTED = (c.LABEL_OUTCOMES.name, c.LABEL_SUPPORT.name, c.LABEL_PRECISION.name, c.LABEL_RECALL.name,
           c.CALIBRATION_BIN.name, c.WINDOW_JOINED.name, c.WINDOW_PREDICTIONS.name, c.SCORE_BIN.name,
           c.FEATURE_BIN.name, c.FEATURE_MISSING.name, c.PREDICTED_POSITIVES.name, "mlmon_predictions_total")


def quick_parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for line in text.splitlines():
        if not line.startswith(_WANTED):
            continue
        m = _LINE.match(line)
        assert m, f"unparseable line {line!r}"
        name, labels, value = m.groups()
        if name in _WANTED:
            out[name].append((dict(_LABEL.findall(labels or "")), float(value)))
    return out


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def snapshot_violations(text: str) -> list[str]:
    """What in one scrape could not come from one consistent state of one worker's engines.

    Every figure is evaluated from the same merged sums, so these hold exactly in any snapshot, and a scrape
    that mixed two states (a batch or a partition hand-over half applied) breaks at least one of them.
    """
    f = quick_parse(text)
    bad: list[str] = []
    # (version, label, window) -> outcome -> count
    outcomes: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for lab, v in f[c.LABEL_OUTCOMES.name]:
        outcomes[(lab["version"], lab["label"], lab["window"])][lab["outcome"]] = v

    def per_label(name: str, stat: str | None = None) -> dict[tuple[str, str, str], float]:
        acc: dict[tuple[str, str, str], float] = defaultdict(float)
        for lab, v in f[name]:
            if stat is None or lab.get("stat") == stat:
                acc[(lab["version"], lab["label"], lab["window"])] += v
        return acc

    def per_window(name: str) -> dict[tuple[str, str], float]:
        return {(lab["version"], lab["window"]): v for lab, v in f[name]}

    support = per_label(c.LABEL_SUPPORT.name)
    precision = per_label(c.LABEL_PRECISION.name)
    recall = per_label(c.LABEL_RECALL.name)
    calib_n = per_label(c.CALIBRATION_BIN.name, "count")
    calib_pos = per_label(c.CALIBRATION_BIN.name, "positives")
    score_n = per_label(c.SCORE_BIN.name)
    pred_pos = per_label(c.PREDICTED_POSITIVES.name)
    joined = per_window(c.WINDOW_JOINED.name)
    predicted = per_window(c.WINDOW_PREDICTIONS.name)
    for key, o in outcomes.items():
        version, _, window = key
        if set(o) != set(c.OUTCOMES):
            bad.append(f"{key}: outcomes {sorted(o)}")
            continue
        tp, fp, fn, tn = (o[k] for k in c.OUTCOMES)
        n = tp + fp + fn + tn
        if key not in support or not close(support[key], tp + fn):
            bad.append(f"{key}: support {support.get(key)} != tp+fn {tp + fn}")
        if (tp + fp > 0) != (key in precision) or (key in precision and not close(precision[key], tp / (tp + fp))):
            bad.append(f"{key}: precision {precision.get(key)} vs tp={tp} fp={fp}")
        if (tp + fn > 0) != (key in recall) or (key in recall and not close(recall[key], tp / (tp + fn))):
            bad.append(f"{key}: recall {recall.get(key)} vs tp={tp} fn={fn}")
        # Every known label slot of a joined event lands in exactly one calibration bin.
        if not close(calib_n.get(key, -1.0), n) or not close(calib_pos.get(key, -1.0), tp + fn):
            bad.append(f"{key}: calibration count {calib_n.get(key)} / positives {calib_pos.get(key)} "
                       f"vs outcomes n={n} tp+fn={tp + fn}")
        if joined.get((version, window), -1.0) < n:
            bad.append(f"{key}: window_joined {joined.get((version, window))} < outcomes {n}")
        # Every prediction in the window has one score per label, in one bin.
        if not close(score_n.get(key, -1.0), predicted.get((version, window), -2.0)):
            bad.append(f"{key}: score bins {score_n.get(key)} != window_predictions {predicted.get((version, window))}")
        if pred_pos.get(key, math.inf) > predicted.get((version, window), -1.0):
            bad.append(f"{key}: predicted_positives {pred_pos.get(key)} > window_predictions")
    features: dict[tuple[str, str, str], float] = defaultdict(float)
    for name in (c.FEATURE_BIN.name, c.FEATURE_MISSING.name):
        for lab, v in f[name]:
            features[(lab["version"], lab["feature"], lab["window"])] += v
    for (version, feature, window), n in features.items():
        if not close(n, predicted.get((version, window), -1.0)):
            bad.append(f"{(version, feature, window)}: feature bins + missing {n} != window_predictions")
    # Windows end at the same instant, so a longer one contains a shorter one.
    for per in (predicted, joined):
        by_version: dict[str, list[float]] = defaultdict(list)
        for (version, _), v in sorted(per.items(), key=lambda kv: _window_seconds(kv[0][1])):
            by_version[version].append(v)
        for version, values in by_version.items():
            if values != sorted(values):
                bad.append(f"{version}: window counts not nested: {values}")
    totals: dict[str, float] = defaultdict(float)  # counters come per partition: their sum is the total
    for lab, v in f["mlmon_predictions_total"]:
        totals[lab["version"]] += v
    for (version, _), v in predicted.items():
        if v > totals.get(version, -1.0):
            bad.append(f"{version}: window_predictions {v} > predictions_total {totals.get(version)}")
    return bad


def _window_seconds(window: str) -> float:
    return float(window[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[window[-1]]


@dataclass
class Scraper(BackgroundLoop):
    """Scrapes one worker every `interval` seconds in a thread and checks each body on the spot."""

    worker: WorkerProcess
    interval: float = 0.05
    scrapes: int = 0
    during_rebalance: int = 0  # scrapes answered while /healthz said 503 (not a settled member)
    errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    # Partition sets seen, from mlmon_consumer_lag: proof the scrapes spanned the hand-overs.
    ownership: list[frozenset[str]] = field(default_factory=list)

    def _run(self) -> None:
        url = f"http://127.0.0.1:{self.worker.port}"
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
                    status, body = r.status, r.read().decode()
            except (OSError, urllib.error.HTTPError) as exc:
                if self.worker.proc.poll() is None:  # an error from a live worker is a finding
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                status, body = 0, ""
            if status == 200:
                self.scrapes += 1
                found = snapshot_violations(body)
                if found:
                    self.violations.append(f"scrape {self.scrapes}: {found[:3]}")
                owned = frozenset(_LAG_PARTITION.findall(body))
                if owned and (not self.ownership or self.ownership[-1] != owned):
                    self.ownership.append(owned)
                if self.worker.get("/healthz")[0] != 200:
                    self.during_rebalance += 1
            elif status:
                self.errors.append(f"HTTP {status}")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


def wait_serving(w: WorkerProcess, workers_: list[WorkerProcess]) -> None:
    wait_for(f"worker {w.port} to serve /metrics", lambda: w.try_scrape() is not None, workers=workers_)


def wait_member(w: WorkerProcess, workers_: list[WorkerProcess]) -> None:
    def holds_partitions() -> bool:
        status, body = w.get("/healthz") if w.try_scrape() is not None else (0, b"")
        return status == 200 and "consuming 0 " not in body.decode()

    wait_for(f"worker {w.port} to hold partitions", holds_partitions, workers=workers_)


@pytest.mark.timeout(150)
def test_scrapes_during_a_rebalance_are_consistent_snapshots(own_kafka: LocalKafka, tmp_path: Path,
                                                            stream, workers) -> None:  # noqa: F811
    preds, truths, at = stream
    bootstrap = own_kafka.bootstrap
    path, config, expected = _prepare(tmp_path, bootstrap, stream)
    kafka = config.kafka
    produce(bootstrap, kafka.predictions_topic, preds[:1000])
    produce(bootstrap, kafka.ground_truth_topic, truths[:800])

    a = WorkerProcess(path, at, tmp_path)
    workers.append(a)
    wait_member(a, workers)
    scrapers = [Scraper(a).start()]
    try:
        # A second worker joins (partitions move to it with live state), then leaves again (they move back),
        # while both topics keep flowing and both workers are scraped every 50 ms.
        b = WorkerProcess(path, at, tmp_path)
        workers.append(b)
        wait_serving(b, workers)
        scrapers.append(Scraper(b).start())
        feed = threading.Thread(target=lambda: (produce(bootstrap, kafka.predictions_topic, preds[1000:2000]),
                                                produce(bootstrap, kafka.ground_truth_topic, truths[800:1600])))
        feed.start()
        wait_member(b, workers)
        feed.join(60)
        time.sleep(1.0)
        scrapers[1].stop()  # a refused connection from a worker on its way out is not a finding
        assert b.stop() == 0, b.output()[-3000:]
        wait_for("the survivor to take every partition back",
                 lambda: f"consuming {kafka.partitions} partitions" in a.get("/healthz")[1].decode(), workers=[a])

        # A third one joins and stays: the exactness check below adds two workers' figures.
        d = WorkerProcess(path, at, tmp_path)
        workers.append(d)
        wait_serving(d, [a, d])
        scrapers.append(Scraper(d).start())
        wait_member(d, [a, d])
        produce(bootstrap, kafka.predictions_topic, preds[2000:])
        produce(bootstrap, kafka.ground_truth_topic, truths[1600:])
        wait_for("both workers to drain", drained([a, d], expected), workers=[a, d])
        # Scraping goes on until the first worker's scrapes have shown the last hand-over too.
        wait_for("a scrape of the first worker after the third joined, and 10 scrapes of the third",
                 lambda: len(scrapers[0].ownership) >= 4 and len(scrapers[0].ownership[-1]) == 2
                 and scrapers[2].scrapes >= 10, timeout=20, workers=[a, d])
    finally:
        for s in scrapers:
            s.stop()

    summed: Series = defaultdict(float)
    for w in (a, d):
        for key, v in additive(w.scrape()).items():
            summed[key] += v
    assert_series_equal(dict(summed), additive(expected))
    for w in (a, d):
        assert 0 < total(w.scrape(), c.PREDICTIONS_TOTAL.name) < len(preds)  # each holds a share

    report = [(s.worker.port, s.scrapes, s.during_rebalance, len(s.errors), len(s.violations),
               [",".join(sorted(o)) for o in s.ownership]) for s in scrapers]
    print("scrapes per worker (port, scrapes, during a rebalance, errors, inconsistent, partitions held):", report)
    assert not [e for s in scrapers for e in s.errors], [s.errors[:3] for s in scrapers]
    assert not [v for s in scrapers for v in s.violations], [s.violations[:3] for s in scrapers]
    assert all(s.scrapes >= 10 for s in scrapers), report
    assert sum(s.during_rebalance for s in scrapers) > 0, f"no scrape landed in a rebalance: {report}"
    # The first worker held all 4, gave 2 away, took them back and gave 2 away again, all while scraped.
    assert len(scrapers[0].ownership) >= 4, report
    for w in (a, d):
        assert w.stop(signal.SIGTERM) == 0
