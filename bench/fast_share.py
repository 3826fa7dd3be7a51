"""How many events of a stream the native decoder's fast path takes (the rest go to the exact decoder).

    python -m bench.fast_share --config C --predictions P --ground-truth G     # prints one JSON object

Run by `python -m bench.run` in a child process, outside the timed runs.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from monitor.config import load_config
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Engine


def fast_share(config: str, predictions: str, ground_truth: str) -> dict[str, dict[str, int]]:
    engine = Engine(load_config(config))
    if engine.fast is None:
        raise SystemExit("bench: the native core is not built (or MLMON_NATIVE=0): no fast path to measure")
    out = {}
    for topic, path, decode in ((PREDICTIONS, predictions, engine.fast.predictions),
                                (GROUND_TRUTH, ground_truth, engine.fast.ground_truth)):
        with open(path, "rb") as fh:
            raws = [line.rstrip(b"\r\n") for line in fh if line.strip()]
        taken = decode(raws)["model"] >= 0
        out[topic] = {"events": len(raws), "fast": int(taken.sum())}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--predictions", required=True)
    ap.add_argument("--ground-truth", required=True)
    args = ap.parse_args(argv)
    sys.stdout.buffer.write(orjson.dumps(fast_share(args.config, args.predictions, args.ground_truth)) + b"\n")


if __name__ == "__main__":
    main()
