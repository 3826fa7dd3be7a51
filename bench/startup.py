"""Start-up: what every `monitor` run pays before it does any work, against interpreter floors.

    python -m bench.startup [--repeat N] [--baseline DIR] [--json out.json]

Each command runs N times as its own process, the commands alternating round by round so a noisy
neighbour hurts all of them alike; best and median wall time are reported, and each best as a ratio
against two floors measured in the same run: `python -c pass` (the interpreter and its site hooks) and
`python -c "import numpy"` (the one library a replay cannot do without).

The commands:

- `monitor --help`, `monitor replay --help`;
- `monitor replay` of a 1-prediction, 1-ground-truth file with the bundled example config (Prometheus
  text to /dev/null: the whole path, imports, config, engine, figures and exposition);
- the floors above, and `python -c "import numpy, yaml, prometheus_client; from pydantic import BaseModel"`:
  the libraries a replay to Prometheus text needs whatever the monitor does (so the monitor's share shows).

`monitor` is run as its console script does it (`from monitor.cli import main; main()`) with this
checkout first on sys.path, so a checkout is measured even when another copy is installed. The children
get a bytecode cache in a scratch directory (PYTHONPYCACHEPREFIX, after one untimed warm-up round), as an
installed package has: without one every run would recompile the monitor's modules.
`--no-bytecode-cache` measures without (e.g. when PYTHONDONTWRITEBYTECODE is how you run).
`--baseline DIR` also times the monitor commands from another checkout (e.g. an older commit exported
with `git archive`) in the same rounds, for a before/after ratio from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "monitor" / "examples"
# The console script's own body (pip writes `from monitor.cli import main; sys.exit(main())`).
MONITOR = "import sys; from monitor.cli import main; sys.argv[0] = 'monitor'; sys.exit(main())"
PASS = "python -c pass (floor)"
NUMPY = "python -c 'import numpy' (floor)"
LIBS = "python -c 'import numpy, yaml, prometheus_client; from pydantic import BaseModel'"


@dataclass(frozen=True)
class Command:
    name: str
    argv: list[str]
    cwd: Path


def monitor_commands(root: Path, one_pred: Path, one_truth: Path, suffix: str = "") -> list[Command]:
    monitor = [sys.executable, "-c", MONITOR]
    replay = [*monitor, "replay", "--config", str(EXAMPLE / "config.yaml"), "--predictions", str(one_pred),
              "--ground-truth", str(one_truth), "--format", "prometheus"]
    return [
        Command(f"monitor --help{suffix}", [*monitor, "--help"], root),
        Command(f"monitor replay --help{suffix}", [*monitor, "replay", "--help"], root),
        Command(f"monitor replay, 1-line files{suffix}", replay, root),
    ]


def floors() -> list[Command]:
    py = sys.executable
    return [
        Command(PASS, [py, "-c", "pass"], ROOT),
        Command(NUMPY, [py, "-c", "import numpy"], ROOT),
        # `import pydantic` alone is lazy; BaseModel is what loads its machinery.
        Command(LIBS, [py, "-c", "import numpy, yaml, prometheus_client; from pydantic import BaseModel"], ROOT),
    ]


def run_once(cmd: Command, env: dict[str, str]) -> float:
    """Wall seconds of one run; a failing command stops the benchmark (it would be timing an error)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd.argv, cwd=cmd.cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.decode(errors="replace"))
        raise SystemExit(f"bench: {cmd.name!r} failed with exit code {proc.returncode}")
    return elapsed


def child_env(cache: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    if cache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env["PYTHONPYCACHEPREFIX"] = cache
    return env


def one_line_files(scratch: Path) -> tuple[Path, Path]:
    """The first prediction of the bundled example stream and the ground truth that answers it."""
    first = (EXAMPLE / "predictions.jsonl").read_bytes().split(b"\n", 1)[0]
    pid = json.loads(first)["prediction_id"]
    truth = next(line for line in (EXAMPLE / "ground_truth.jsonl").read_bytes().splitlines()
                 if json.loads(line)["prediction_id"] == pid)
    pred_path, truth_path = scratch / "predictions.jsonl", scratch / "ground_truth.jsonl"
    pred_path.write_bytes(first + b"\n")
    truth_path.write_bytes(truth + b"\n")
    return pred_path, truth_path


def measure(commands: list[Command], repeat: int, env: dict[str, str], warm_up: bool) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {c.name: [] for c in commands}
    if warm_up:
        for cmd in commands:
            run_once(cmd, env)
    for _ in range(repeat):
        for cmd in commands:
            times[cmd.name].append(run_once(cmd, env))
    return times


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=15, help="runs per command (default 15)")
    ap.add_argument("--baseline", type=Path, help="another checkout whose monitor commands are timed alongside")
    ap.add_argument("--no-bytecode-cache", action="store_true", help="children compile every module each run")
    ap.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mlmon-bench-startup-") as scratch_dir:
        scratch = Path(scratch_dir)
        pred, truth = one_line_files(scratch)
        commands = floors() + monitor_commands(ROOT, pred, truth)
        if args.baseline is not None:
            commands += monitor_commands(args.baseline.resolve(), pred, truth, " (baseline)")
        cache = None if args.no_bytecode_cache else str(scratch / "pycache")
        times = measure(commands, args.repeat, child_env(cache), warm_up=cache is not None)

    best = {name: min(ts) for name, ts in times.items()}
    floor_pass, floor_numpy = best[PASS], best[NUMPY]
    rows = [["command", "best s", "median s", "x python -c pass", "x import numpy", "above pass s"]]
    for name, ts in times.items():
        rows.append([name, f"{best[name]:.3f}", f"{statistics.median(ts):.3f}", f"{best[name] / floor_pass:.2f}",
                     f"{best[name] / floor_numpy:.2f}", f"{best[name] - floor_pass:.3f}"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.repeat} runs per command, alternating; bytecode cache: {'no' if cache is None else 'yes'}")
    print(table(rows))
    if args.baseline is not None:
        print()
        for c in monitor_commands(ROOT, pred, truth):
            base = best[f"{c.name} (baseline)"]
            print(f"{c.name}: {best[c.name]:.3f} s vs baseline {base:.3f} s ({base / best[c.name]:.2f}x faster; "
                  f"above the pass floor {best[c.name] - floor_pass:.3f} s vs {base - floor_pass:.3f} s)")
    if args.json:
        args.json.write_text(json.dumps({
            "repeat": args.repeat, "bytecode_cache": cache is not None,
            "commands": {name: {"best": best[name], "median": statistics.median(ts), "runs": ts}
                         for name, ts in times.items()},
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
