"""What a field mapping costs (docs/attach.md): the same events replayed in the native shape and as a flat
custom log with a review table, in one process, alternating, best of K.

    python -m bench.mapping_bench [--events N] [--repeat K]

Prints both times, the ratio mapped/native (of time, and of events/s: the target is at least 0.8x), and
whether both gave byte-identical metrics. Both take the native fast path when the core is built (the
mapping's simple paths are read in Rust); the exact Python decoder judges only what it is unsure of.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson
import yaml

from monitor.config import parse_config
from monitor.exporter import prometheus_text
from monitor.inputs import EXAMPLE
from monitor.replay import run_replay
from monitor.simulate import TrafficSpec, generate

FLAT_INPUT: dict[str, Any] = {
    "predictions": {"topic": "inference-log", "fields": {
        "model": "model_name", "prediction_id": "id", "timestamp": "created_at", "model_version": "model_version",
        "scores": "outputs[0].data", "score_labels": "parameters.label_names", "predicted": "served",
        "features": "request", "latency_ms": "latency"}},
    "ground_truth": {"topic": "review-results", "fields": {
        "model": "model_name", "prediction_id": "request_id", "timestamp": "reviewed_at", "labels": "gold_labels"}},
}


def flat_prediction(raw: bytes, labels: list[str]) -> bytes:
    o = orjson.loads(raw)
    out = {"id": o["prediction_id"], "model_name": o["model"], "model_version": o.get("model_version"),
           "created_at": o["timestamp"], "outputs": [{"data": [o["scores"][x] for x in labels]}],
           "parameters": {"label_names": labels}, "request": o.get("features"), "latency": o.get("latency_ms")}
    if "predicted" in o:
        out["served"] = o["predicted"]
    return orjson.dumps(out)


def review(raw: bytes) -> bytes:
    o = orjson.loads(raw)
    return orjson.dumps({"request_id": o["prediction_id"], "reviewed_at": o["timestamp"],
                         "gold_labels": o["labels"], "model_name": o["model"]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = EXAMPLE / "config.yaml"
    data = yaml.safe_load(path.read_text())
    model = data["models"][0]
    model["reference"] = str(EXAMPLE / model["reference"])
    data["models"] = [model]
    native = parse_config(data)
    mapped = parse_config({**data, "models": [{**model, "input": FLAT_INPUT}]})
    preds, truths = generate(TrafficSpec(n=args.events, rate=20.0, seed=1))
    P = [r for _, r in preds if orjson.loads(r).get("model") == model["name"]]
    T = [r for _, r in truths if orjson.loads(r).get("model") == model["name"]]
    inputs = {"inference-log": [flat_prediction(r, model["labels"]) for r in P],
              "review-results": [review(r) for r in T]}
    same = prometheus_text(run_replay(native, P, T)[1]) == prometheus_text(run_replay(mapped, [], [], inputs=inputs)[1])
    best = {"native": float("inf"), "mapped": float("inf")}
    for _ in range(args.repeat):
        for mode in best:
            started = time.perf_counter()
            if mode == "native":
                run_replay(native, P, T)
            else:
                run_replay(mapped, [], [], inputs=inputs)
            best[mode] = min(best[mode], time.perf_counter() - started)
    n = len(P) + len(T)
    print(f"{n} events: native {best['native']:.2f} s, mapped {best['mapped']:.2f} s, "
          f"mapped/native {best['mapped'] / best['native']:.2f}x the time, so {best['native'] / best['mapped']:.2f}x "
          f"the events/s (target at least 0.8x), identical metrics: {same}")


if __name__ == "__main__":
    main()
