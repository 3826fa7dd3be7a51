"""The benchmark stream: N simulated predictions plus their delayed ground truth, written once and cached.

Both peers of `python -m bench.run` read the same two JSON-lines files. The files come from
`monitor.simulate.generate` with a fixed seed (about 80% of predictions labelled, 10% of those partially),
so every run and every machine measures the same bytes. The cache key holds N, the seed and a hash of the
generator's source, so a change to `monitor/simulate.py` regenerates the files instead of reusing stale ones.

    python -m bench.make_stream [--events N] [--seed S] [--dir D]   # prints the two paths
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

DEFAULT_EVENTS = 100_000
DEFAULT_SEED = 7


def cache_root() -> Path:
    base = os.environ.get("MLMON_BENCH_CACHE") or os.path.join(tempfile.gettempdir(), "mlmon-bench")
    return Path(base)


def _generator_hash() -> str:
    # Located, not imported: bench.run stays free of numpy so the children it forks start small.
    spec = importlib.util.find_spec("monitor.simulate")
    if spec is None or spec.origin is None:
        raise SystemExit("bench: monitor.simulate not found; run from the repository root or install the package")
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()[:12]


def _write_atomic(path: Path, events: list[tuple[float, bytes]]) -> None:
    # Other people may run the benchmark in the same checkout at the same time: write aside, then rename.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(b"".join(raw + b"\n" for _, raw in events))
    os.replace(tmp, path)


def stream_paths(events: int = DEFAULT_EVENTS, seed: int = DEFAULT_SEED,
                 directory: Path | None = None) -> tuple[Path, Path]:
    root = directory or cache_root() / f"n{events}-seed{seed}-{_generator_hash()}"
    return root / "predictions.jsonl", root / "ground_truth.jsonl"


def ensure_stream(events: int = DEFAULT_EVENTS, seed: int = DEFAULT_SEED,
                  directory: Path | None = None) -> tuple[Path, Path, bool]:
    """(predictions path, ground-truth path, generated now?) for a stream of `events` predictions."""
    preds_path, truth_path = stream_paths(events, seed, directory)
    if preds_path.exists() and truth_path.exists():
        return preds_path, truth_path, False
    preds_path.parent.mkdir(parents=True, exist_ok=True)
    from monitor.simulate import TrafficSpec, generate

    preds, truths = generate(TrafficSpec(n=events, seed=seed))
    _write_atomic(truth_path, truths)
    _write_atomic(preds_path, preds)
    return preds_path, truth_path, True


def count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="number of predictions")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--dir", type=Path, help="write here instead of the cache directory")
    args = ap.parse_args(argv)
    preds, truths, _ = ensure_stream(args.events, args.seed, args.dir)
    print(preds)
    print(truths)


if __name__ == "__main__":
    main()
