from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import MonitorConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "monitor" / "examples" / "config.yaml"


@pytest.fixture(scope="session")
def example_config() -> MonitorConfig:
    return load_config(EXAMPLE_CONFIG)


@pytest.fixture(scope="session")
def example_exposition() -> bytes:
    """`monitor replay` with no arguments: the bundled example replayed, as one worker's Prometheus text."""
    replay = subprocess.run([sys.executable, "-m", "monitor.cli", "replay"], capture_output=True, timeout=120,
                            check=True, cwd=ROOT)
    return replay.stdout


def imported_by_cli(args: list[str], modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter has imported after `monitor <args>` (to keep start-up light)."""
    import subprocess
    import sys

    # The command must succeed: the modules a failed run imported say nothing about a run's.
    code = ("import sys; from monitor.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            f"print('HEAVY=' + ','.join(m for m in {modules!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    heavy = res.stdout.strip().splitlines()[-1].removeprefix("HEAVY=")
    return heavy.split(",") if heavy else []


def small_config(**model: object) -> MonitorConfig:
    """A config with one model `m` (labels a, b, c by default) and short windows, for engine tests."""
    base: dict[str, object] = {"name": "m", "task": "multilabel", "labels": ["a", "b", "c"], "threshold": 0.5}
    base.update(model)
    return parse_config({"windows": ["5m", "30m", "1h", "2h", "6h", "1d"], "join": {"ttl": "3d"}, "models": [base]})


# The real-Kafka fixture (env var, testcontainers, or a local Apache Kafka from Maven Central jars).
from tests.kafka_fixtures import kafka_bootstrap  # noqa: E402, F401

# The longest modules, longest first (measured on 2 cores). pytest-xdist's loadfile scheduling hands out
# modules in collection order, so starting these first keeps one of them from running alone at the end.
LONGEST_MODULES = ("test_demo", "test_state_scale", "test_rules", "test_hostile_input", "test_repartition",
                   "test_native", "test_services", "test_worker", "test_native_decoder", "test_backtest")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the rest keep their order
