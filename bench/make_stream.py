"""The benchmark streams: N simulated predictions plus their delayed ground truth, written once and cached.

Both peers of `python -m bench.run` read the same two JSON-lines files (and the same config). Two mixes:

- `example`: `monitor.simulate.generate` for the bundled example's moderation model (six labels, scores
  for every label, RFC 3339 timestamps, about 80% of predictions labelled, 10% of those partially), read
  with monitor/examples/config.yaml.
- `realistic`: what a team's producers commonly send (the native shapes of docs/configuration.md), three
  models on the same two topics, interleaved in time:
  * `moderation` (multilabel, 6 labels; 60% of predictions): the simulator's events, RFC 3339 times;
  * `intent` (multiclass, 5 classes; 25%): epoch milliseconds, truth as a one-class list;
  * `fraud` (binary; 15%): epoch seconds with a fraction, truth as `{"fraud": 0|1}` half of the time;
  * a quarter of all predictions carry the served `predicted` list (what the service returned: the
    thresholded labels, or the top class);
  * every model has a reference (moderation: the bundled baseline; the other two: a JSON baseline built
    from the first 2,000 predictions of their own stream), so drift statistics are computed for all three.
  The config is written beside the stream (`config.yaml`).

The cache key holds the mix, N, the seed and a hash of the generators' sources (this file and
monitor/simulate.py), so a change to either regenerates the files instead of reusing stale ones.

    python -m bench.make_stream [--mix example|realistic] [--events N] [--seed S] [--dir D]   # prints the paths
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_EVENTS = 100_000
DEFAULT_SEED = 7
MIXES = ("example", "realistic")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "monitor" / "examples" / "config.yaml"


def cache_root() -> Path:
    base = os.environ.get("MLMON_BENCH_CACHE") or os.path.join(tempfile.gettempdir(), "mlmon-bench")
    return Path(base)


def _generator_hash() -> str:
    # Located, not imported: bench.run stays free of numpy so the children it forks start small.
    spec = importlib.util.find_spec("monitor.simulate")
    if spec is None or spec.origin is None:
        raise SystemExit("bench: monitor.simulate not found; run from the repository root or install the package")
    digest = hashlib.sha256(Path(spec.origin).read_bytes())
    digest.update(Path(__file__).read_bytes())
    # The realistic mix's config names this checkout's example reference by absolute path: a stream cached
    # by another checkout (or a deleted worktree) must not be reused.
    digest.update(str(EXAMPLE_CONFIG.resolve()).encode())
    return digest.hexdigest()[:12]


def _write_atomic(path: Path, data: bytes) -> None:
    # Other people may run the benchmark in the same checkout at the same time: write aside, then rename.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _lines(events: list[tuple[float, bytes]]) -> bytes:
    return b"".join(raw + b"\n" for _, raw in events)


def stream_dir(events: int = DEFAULT_EVENTS, seed: int = DEFAULT_SEED, mix: str = "example") -> Path:
    prefix = "" if mix == "example" else f"{mix}-"
    return cache_root() / f"{prefix}n{events}-seed{seed}-{_generator_hash()}"


def stream_paths(events: int = DEFAULT_EVENTS, seed: int = DEFAULT_SEED, directory: Path | None = None,
                 mix: str = "example") -> tuple[Path, Path, Path]:
    """(predictions, ground truth, config) of a stream; the config is the example's for the example mix."""
    root = directory or stream_dir(events, seed, mix)
    config = EXAMPLE_CONFIG if mix == "example" else root / "config.yaml"
    return root / "predictions.jsonl", root / "ground_truth.jsonl", config


def ensure_stream(events: int = DEFAULT_EVENTS, seed: int = DEFAULT_SEED, directory: Path | None = None,
                  mix: str = "example") -> tuple[Path, Path, Path, bool]:
    """(predictions path, ground-truth path, config path, generated now?) for a stream of `events` predictions."""
    preds_path, truth_path, config_path = stream_paths(events, seed, directory, mix)
    if preds_path.exists() and truth_path.exists() and config_path.exists():
        return preds_path, truth_path, config_path, False
    preds_path.parent.mkdir(parents=True, exist_ok=True)
    if mix == "example":
        from monitor.simulate import TrafficSpec, generate

        preds, truths = generate(TrafficSpec(n=events, seed=seed))
    else:
        preds, truths = realistic(events, seed, preds_path.parent)
    _write_atomic(truth_path, _lines(truths))
    _write_atomic(preds_path, _lines(preds))
    return preds_path, truth_path, config_path, True


# --- the realistic mix --------------------------------------------------------------------------------------
INTENTS = ("billing", "cancel", "upgrade", "support", "other")
CHANNELS = ("web", "ios", "android", "email")
COUNTRIES = ("de", "fr", "us", "gb", "br", "in")
RATE = 2.0  # predictions per second, all models together (about 14 h for 100k, 6 days for 1M)
SERVED_SHARE = 0.25
REFERENCE_SAMPLE = 2000
# Ground truth arrives within the join's TTL (72h): river's join has no TTL, so a later truth would be
# joined by river and expired by the monitor, and the cross-check would compare different work.
MAX_DELAY = 48 * 3600.0


def realistic(n: int, seed: int, directory: Path) -> tuple[list[tuple[float, bytes]], list[tuple[float, bytes]]]:
    import numpy as np
    import orjson

    from monitor.simulate import LABELS, TrafficSpec, generate

    rng = np.random.default_rng(seed + 1)
    model = rng.choice(3, n, p=[0.60, 0.25, 0.15])  # 0 moderation, 1 intent, 2 fraud
    start = TrafficSpec().start
    times = start + np.arange(n) / RATE
    served = rng.random(n) < SERVED_SHARE

    preds: list[tuple[float, bytes]] = []
    truths: list[tuple[float, bytes]] = []
    # moderation: the simulator's events on the moderation slots, a quarter with the served list added
    # (the example config's thresholds: violence 0.7, the others 0.5).
    slots = np.nonzero(model == 0)[0]
    mod_preds, mod_truths = generate(TrafficSpec(n=slots.size, seed=seed, rate=RATE * slots.size / n, start=start))
    thresholds = {label: 0.7 if label == "violence" else 0.5 for label in LABELS}
    for (ts, raw), serve in zip(mod_preds, served[slots].tolist(), strict=True):
        if serve:
            event = orjson.loads(raw)
            event["predicted"] = [k for k, v in event["scores"].items() if v >= thresholds[k]]
            raw = orjson.dumps(event)
        preds.append((ts, raw))
    truths += mod_truths

    for which, build in ((1, _intent), (2, _fraud)):
        sel = np.nonzero(model == which)[0]
        p, g = build(rng, times[sel], served[sel])
        preds += p
        truths += g
    preds.sort(key=lambda x: x[0])
    truths.sort(key=lambda x: x[0])
    _write_config(directory, {
        "intent": [raw for _, raw in preds if b'"model":"intent"' in raw][:REFERENCE_SAMPLE],
        "fraud": [raw for _, raw in preds if b'"model":"fraud"' in raw][:REFERENCE_SAMPLE],
    })
    return preds, truths


def _intent(rng: Any, t: Any, served: Any) -> tuple[list[tuple[float, bytes]], list[tuple[float, bytes]]]:
    import numpy as np
    import orjson

    n, k = t.size, len(INTENTS)
    actual = rng.choice(k, n, p=[0.3, 0.1, 0.15, 0.35, 0.1])
    logits = rng.normal(0.0, 1.0, (n, k))
    logits[np.arange(n), actual] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    tokens = rng.poisson(40, n)
    channel = rng.choice(len(CHANNELS), n, p=[0.5, 0.2, 0.2, 0.1])
    latency = rng.gamma(3.0, 5.0, n)
    labelled = rng.random(n) < 0.7
    delay = np.minimum(rng.exponential(1800.0, n) + 10.0, MAX_DELAY)
    preds, truths = [], []
    for i in range(n):
        pid = f"intent-{i}"
        scores = {c: round(float(probs[i, j]), 6) for j, c in enumerate(INTENTS)}
        event: dict[str, Any] = {"prediction_id": pid, "model": "intent", "model_version": "2024-11",
                                 "timestamp": int(t[i] * 1000), "scores": scores,
                                 "features": {"tokens": int(tokens[i]), "channel": CHANNELS[channel[i]]},
                                 "latency_ms": round(float(latency[i]), 2)}
        if served[i]:
            event["predicted"] = [max(scores, key=scores.__getitem__)]
        preds.append((float(t[i]), orjson.dumps(event)))
        if labelled[i]:
            gt = float(t[i] + delay[i])
            truths.append((gt, orjson.dumps({"prediction_id": pid, "model": "intent", "timestamp": int(gt * 1000),
                                             "labels": [INTENTS[actual[i]]]})))
    return preds, truths


def _fraud(rng: Any, t: Any, served: Any) -> tuple[list[tuple[float, bytes]], list[tuple[float, bytes]]]:
    import numpy as np
    import orjson

    n = t.size
    actual = rng.random(n) < 0.03
    score = np.where(actual, rng.beta(5, 2, n), rng.beta(1, 12, n))
    amount = np.round(rng.lognormal(3.5, 1.2, n), 2)
    country = rng.choice(len(COUNTRIES), n)
    labelled = rng.random(n) < 0.9
    as_object = rng.random(n) < 0.5
    delay = np.minimum(rng.exponential(6 * 3600.0, n) + 60.0, MAX_DELAY)
    preds, truths = [], []
    for i in range(n):
        pid = f"fraud-{i}"
        s = round(float(score[i]), 6)
        event: dict[str, Any] = {"prediction_id": pid, "model": "fraud", "model_version": "v3",
                                 "timestamp": round(float(t[i]), 3), "scores": {"fraud": s},
                                 "features": {"amount": float(amount[i]), "country": COUNTRIES[country[i]]}}
        if served[i]:
            event["predicted"] = ["fraud"] if s >= 0.4 else []
        preds.append((float(t[i]), orjson.dumps(event)))
        if labelled[i]:
            gt = float(t[i] + delay[i])
            labels: object = {"fraud": int(actual[i])} if as_object[i] else (["fraud"] if actual[i] else [])
            truths.append((gt, orjson.dumps({"prediction_id": pid, "model": "fraud", "timestamp": round(gt, 3),
                                             "labels": labels})))
    return preds, truths


def _write_config(directory: Path, samples: dict[str, list[bytes]]) -> None:
    """The mix's config, with a JSON baseline per model built from a sample of its stream (as
    `monitor reference` builds one)."""
    import orjson
    import yaml

    from monitor.config import parse_config
    from monitor.reference import reference_from_lines

    example = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    moderation = example["models"][0]
    moderation["reference"] = str((EXAMPLE_CONFIG.parent / moderation["reference"]).resolve())
    example["models"] = [
        moderation,
        {"name": "intent", "task": "multiclass", "labels": list(INTENTS),
         "features": {"numeric": ["tokens"], "categorical": ["channel"]}, "min_events": 50},
        {"name": "fraud", "task": "binary", "labels": ["fraud"], "threshold": 0.4,
         "features": {"numeric": ["amount"], "categorical": ["country"]}, "min_events": 50,
         "slos": [{"label": "fraud", "objective": "recall", "target": 0.8, "period": "30d", "severity": "page"}]},
    ]
    config = parse_config({**example, "models": [{**m, "reference": None} for m in example["models"]]})
    for m in example["models"][1:]:
        ref, _ = reference_from_lines(config, m["name"], samples[m["name"]])
        path = directory / f"reference-{m['name']}.json"
        _write_atomic(path, orjson.dumps(ref.to_json()))
        m["reference"] = path.name
    _write_atomic(directory / "config.yaml", yaml.safe_dump(example, sort_keys=False).encode())


def count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", "--predictions", type=int, default=DEFAULT_EVENTS, help="number of predictions")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--mix", choices=MIXES, default="example")
    ap.add_argument("--dir", type=Path, help="write here instead of the cache directory")
    args = ap.parse_args(argv)
    preds, truths, config, _ = ensure_stream(args.events, args.seed, args.dir, args.mix)
    print(preds)
    print(truths)
    print(config)


if __name__ == "__main__":
    main()
