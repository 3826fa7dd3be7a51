"""How /metrics grows with the number of labels: series, bytes and scrape time, with and without detail_labels.

    python -m bench.cardinality [--labels 50,500] [--events N] [--repeat K] [--json FILE]

For each label count it builds a multilabel model over the 8 default windows with a drift reference (so
the score-bin series exist), two numeric and one categorical feature and two SLOs, feeds N predictions
spread over the last 3 days (half with ground truth), and then times what a scrape costs:

- evaluate: `Engine.evaluate(at)`, every window summed and every figure computed;
- render: `exporter.prometheus_text`, the text format Prometheus reads;

best of K each. It does so with `detail_labels` unset (every label gets the 30 calibration-bin series per
window) and set to the first 5 labels, and prints series per family so a regression shows where it grew.
A multiclass model is measured too, since its confusion matrix is the one quadratic family (classes^2
cells per window; with detail_labels only the detail classes' rows and columns).

The block size (bytes of one window bucket) and the resident window state for full retention (every
minute bucket of 6h and every hour bucket of 30d populated) are printed for sizing (docs/operations.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from monitor.config import MonitorConfig, parse_config
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Engine
from monitor.engine.figures import Figures
from monitor.events import Decoder
from monitor.exporter import prometheus_text
from monitor.reference import Reference, build_reference

AT = datetime(2026, 11, 20, tzinfo=UTC).timestamp()
DETAIL = 5


def labels_of(n: int) -> list[str]:
    return [f"label_{i:03d}" for i in range(n)]


def config(n_labels: int, detail: bool, task: str = "multilabel") -> MonitorConfig:
    labels = labels_of(n_labels)
    model: dict[str, Any] = {
        "name": "wide", "task": task, "labels": labels,
        "features": {"numeric": ["length", "links"], "categorical": ["lang"]},
        "slos": [{"label": labels[0], "objective": "recall", "target": 0.9, "period": "30d"},
                 {"label": labels[1], "objective": "precision", "target": 0.9, "period": "30d"}],
    }
    if detail:
        model["detail_labels"] = labels[:DETAIL]
    return parse_config({"models": [model]})


def prediction(rnd: random.Random, labels: list[str], i: int, ts: float, multiclass: bool) -> bytes:
    scores = {label: round(rnd.random() ** 3, 4) for label in labels}
    if multiclass:
        total = sum(scores.values()) or 1.0
        scores = {k: v / total for k, v in scores.items()}
    return json.dumps({
        "prediction_id": f"p{i}", "model": "wide", "model_version": "v1",
        "timestamp": datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z"), "scores": scores,
        "features": {"length": rnd.randint(1, 500), "links": rnd.randint(0, 5), "lang": rnd.choice("abcdefg")},
    }).encode()


def truth(rnd: random.Random, labels: list[str], i: int, ts: float, multiclass: bool) -> bytes:
    actual = [rnd.choice(labels)] if multiclass else [x for x in labels if rnd.random() < 0.02]
    return json.dumps({"prediction_id": f"p{i}", "model": "wide", "labels": actual,
                       "timestamp": datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")}).encode()


def reference(cfg: MonitorConfig, seed: int = 1) -> Reference:
    rnd = random.Random(seed)
    model = cfg.models[0]
    decoder = Decoder(cfg)
    sample = [decoder.decode_prediction(prediction(rnd, model.labels, i, AT - 40 * 86400, model.task == "multiclass"))
              for i in range(500)]
    return build_reference(model, sample)


def build(n_labels: int, detail: bool, events: int, task: str = "multilabel", span: float = 3 * 86400) -> Engine:
    """An engine fed `events` predictions over the `span` seconds before AT, every second one labelled."""
    cfg = config(n_labels, detail, task)
    engine = Engine(cfg, {"wide": reference(cfg)})
    rnd = random.Random(7)
    labels = cfg.models[0].labels
    multiclass = task == "multiclass"
    items: list[tuple[str, bytes]] = []
    for i in range(events):
        ts = AT - rnd.random() * span
        items.append((PREDICTIONS, prediction(rnd, labels, i, ts, multiclass)))
        if i % 2 == 0:
            items.append((GROUND_TRUTH, truth(rnd, labels, i, ts + rnd.random() * 3600, multiclass)))
    items.sort(key=lambda x: json.loads(x[1])["timestamp"])
    rejected = engine.process(items)
    assert not rejected, rejected[:3]
    return engine


def best(fn: Any, repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def measure(engine: Engine, repeat: int) -> dict[str, Any]:
    t_eval, figures = best(lambda: engine.evaluate(AT), repeat)
    assert isinstance(figures, Figures)
    t_render, text = best(lambda: prometheus_text(figures), repeat)
    lines = [ln for ln in text.split(b"\n") if ln and not ln.startswith(b"#")]
    families: Counter[str] = Counter()
    for ln in lines:
        name = ln.split(b"{", 1)[0].split(b" ", 1)[0].decode()
        families[name] += 1
    state = engine.models["wide"]
    return {"series": len(lines), "bytes": len(text), "evaluate_s": t_eval, "render_s": t_render,
            "scrape_s": t_eval + t_render, "families": families, "block_bytes": state.layout.size * 8,
            "blocks": sum(len(v) for store in (state.store.fine, state.store.coarse) for v in store.values()),
            "full_retention_bytes": state.layout.size * 8 * (state.store.fine_span + state.store.coarse_span)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", default="50,500", help="comma-separated label counts")
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the measurements here")
    args = ap.parse_args()
    rows = []
    for task in ("multilabel", "multiclass"):
        for n in [int(x) for x in args.labels.split(",")]:
            for detail in (False, True):
                engine = build(n, detail, args.events, task)
                m = measure(engine, args.repeat)
                rows.append({"task": task, "labels": n, "detail_labels": f"first {DETAIL}" if detail else "all", **m})
                del engine
                gc.collect()
    print(f"{'task':<10} {'labels':>6} {'detail':>8} {'series':>9} {'MB':>6} {'evaluate':>9} {'render':>8} "
          f"{'scrape':>8} {'block KB':>8} {'full ret. MB':>12}")
    for r in rows:
        print(f"{r['task']:<10} {r['labels']:>6} {r['detail_labels']:>8} {r['series']:>9,} {r['bytes'] / 1e6:>6.1f} "
              f"{r['evaluate_s']:>8.3f}s {r['render_s']:>7.3f}s {r['scrape_s']:>7.3f}s {r['block_bytes'] / 1e3:>8.1f} "
              f"{r['full_retention_bytes'] / 1e6:>12.0f}")
    print("\nlargest families (series), per row:")
    for r in rows:
        top = ", ".join(f"{k.removeprefix('mlmon_')} {v:,}" for k, v in r["families"].most_common(5))
        print(f"  {r['task']} {r['labels']} {r['detail_labels']}: {top}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{**r, "families": dict(r["families"])} for r in rows], fh, indent=1)


if __name__ == "__main__":
    main()
