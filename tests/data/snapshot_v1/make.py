"""Writes the checkpoint fixture of tests/test_snapshot_format.py: `python -m tests.data.snapshot_v1.make`.

It was run once, at the commit before the model and join counters got their own value types (dde40a3),
so `snapshot.bin` is a checkpoint as that code wrote it; regenerating it with newer code would defeat the
test. `events.jsonl` holds the stream (one `{"topic", "raw"}` per line) and `config.json` the config:
the test restores `snapshot.bin` and compares its figures with a fresh engine fed the first `CUT` events.

The stream exercises every counter a checkpoint holds: two models, versions beyond max_versions, segment
values beyond max_values, latency, ground-truth delay, late events, ignored score keys, invalid events,
duplicates on both sides, corrections, expiry and early eviction (a short TTL and a small pending cap),
and entries pending on both sides at the cut.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson

from monitor.config import MonitorConfig
from monitor.engine import snapshot
from monitor.engine.engine import Engine

HERE = Path(__file__).resolve().parent
T0 = 1_700_000_000
CUT = 900  # events in the snapshot; the rest continue the stream
BATCH = 97
CONFIG = {
    "windows": ["5m", "1h"],
    "join": {"ttl": "3h", "max_pending": 60},
    "models": [
        {"name": "m", "task": "multilabel", "labels": ["a", "b", "c"], "threshold": 0.5, "max_versions": 2,
         "segments": [{"name": "country", "feature": "country", "max_values": 2},
                      {"name": "tier", "field": "customer.tier"}]},
        {"name": "k", "task": "multiclass", "labels": ["x", "y", "z"]},
    ],
}


def events(seed: int = 5, n: int = 700) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    out: list[tuple[float, int, str, bytes]] = []  # (arrival time, order, topic, raw)
    order = 0

    def put(at: float, topic: str, obj: object) -> None:
        nonlocal order
        order += 1
        out.append((at, order, topic, obj if isinstance(obj, bytes) else orjson.dumps(obj)))

    for i in range(n):
        ts = T0 + i * 30 + float(rng.uniform(0, 10))
        if rng.random() < 0.6:
            actual = rng.random(3) < 0.4
            scores = {x: float(s) for x, s in zip("abc", np.clip(actual * 0.5 + rng.random(3) * 0.6, 0, 1),
                                                  strict=True)}
            if rng.random() < 0.1:
                scores["junk"] = 1.0
            pred: dict[str, object] = {
                "prediction_id": f"m{i}", "model": "m", "timestamp": ts, "scores": scores,
                "model_version": f"v{int(rng.integers(4))}",
                "features": {"country": ["de", "fr", "us", "br"][int(rng.integers(4))]},
                "customer": {"tier": ["gold", "free"][int(rng.integers(2))]}}
            if rng.random() < 0.7:
                pred["latency_ms"] = float(rng.exponential(80))
            labels: object = [x for x, a in zip("abc", actual, strict=True) if a]
            if rng.random() < 0.3:
                labels = {x: int(a) for x, a in zip("abc", actual, strict=True) if rng.random() < 0.7} or {"a": 0}
            model = "m"
        else:
            cls = "xyz"[int(rng.integers(3))]
            raw = rng.dirichlet(np.ones(3) + 2 * (np.array(list("xyz")) == cls))
            pred = {"prediction_id": f"k{i}", "model": "k", "timestamp": ts,
                    "scores": dict(zip("xyz", raw.tolist(), strict=True)), "model_version": "v1"}
            labels = [cls]
            model = "k"
        arrival = ts + (float(rng.exponential(30)) if rng.random() < 0.95 else 2.5 * 3600)  # some arrive late
        put(arrival, "predictions", pred)
        if rng.random() < 0.05:
            put(arrival + 5, "predictions", pred)  # a duplicate
        if rng.random() < 0.8:
            gt_ts = ts + float(rng.exponential(900))
            put(max(gt_ts, arrival + 10), "ground_truth",
                {"prediction_id": pred["prediction_id"], "model": model, "timestamp": gt_ts, "labels": labels})
            r = rng.random()
            if r < 0.08:  # a correction
                other = ["y"] if model == "k" else ["a", "b"]
                put(gt_ts + 60, "ground_truth", {"prediction_id": pred["prediction_id"], "model": model,
                                                 "timestamp": gt_ts + 60, "labels": other})
            elif r < 0.12:  # a re-sent identical ground truth
                put(gt_ts + 1, "ground_truth", {"prediction_id": pred["prediction_id"], "model": model,
                                                "timestamp": gt_ts, "labels": labels})
        if rng.random() < 0.01:
            put(ts, "predictions", b"{not json")
        if rng.random() < 0.05:  # a ground truth whose prediction never comes (pending, then expired)
            put(ts, "ground_truth", {"prediction_id": f"orphan{i}", "model": "m", "timestamp": ts, "labels": ["a"]})
    out.sort(key=lambda e: (e[0], e[1]))
    return [{"topic": topic, "raw": raw.decode()} for _, _, topic, raw in out]


def main() -> None:
    config = MonitorConfig.model_validate(CONFIG)
    stream = events()
    engine = Engine(config)
    items = [(e["topic"], e["raw"].encode()) for e in stream[:CUT]]
    for k in range(0, len(items), BATCH):
        engine.process(items[k:k + BATCH])
    data = snapshot.dump(engine, extra={"offsets": {"predictions": CUT}})
    (HERE / "snapshot.bin").write_bytes(data)
    (HERE / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in stream))
    (HERE / "config.json").write_text(json.dumps(CONFIG, indent=1) + "\n")
    for name, state in engine.models.items():
        j = state.join
        print(name, state.version_names, state.segment_values, state.predictions_total, state.late,
              state.ground_truth_total, state.ignored_scores, dict(j.pending), dict(j.expired), dict(j.evicted),
              dict(j.duplicates), j.corrections, j.joined, len(j))
    print("invalid", dict(engine.invalid), "bytes", len(data))


if __name__ == "__main__":
    main()
