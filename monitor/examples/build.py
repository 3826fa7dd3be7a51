"""Regenerate the bundled example stream and reference (deterministic: fixed seeds)."""

from __future__ import annotations

from pathlib import Path

import orjson

from monitor.config import load_config
from monitor.reference import reference_from_lines
from monitor.simulate import TrafficSpec, generate, write_jsonl

HERE = Path(__file__).parent
HOURS = 12


def main() -> None:
    cfg = load_config(HERE / "config.yaml")
    sample, _ = generate(TrafficSpec(n=5000, seed=11))
    ref, _ = reference_from_lines(cfg, "moderation", [raw for _, raw in sample])
    (HERE / "reference").mkdir(exist_ok=True)
    baseline = orjson.dumps(ref.to_json(), option=orjson.OPT_INDENT_2) + b"\n"
    (HERE / "reference" / "moderation.json").write_bytes(baseline)
    n = 8000
    preds, truths = generate(TrafficSpec(n=n, seed=12, rate=n / (HOURS * 3600), mean_delay=1200,
                                         degrade_at=8 * 3600, drift_at=9 * 3600))
    # A snapshot of both topics at the last prediction: recent predictions still wait for ground truth.
    end = preds[-1][0]
    write_jsonl(str(HERE / "predictions.jsonl"), preds)
    write_jsonl(str(HERE / "ground_truth.jsonl"), [t for t in truths if t[0] <= end])


if __name__ == "__main__":
    main()
