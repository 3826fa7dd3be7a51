"""The command line as a user runs it: replay (the embedded default), reference, check-config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import EXAMPLE_CONFIG, ROOT, imported_by_cli

EXAMPLE = ROOT / "monitor" / "examples"


def monitor(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], capture_output=True, text=True,
                          check=check, cwd=ROOT, timeout=120)


def test_replay_without_arguments_prints_the_example_metrics() -> None:
    out = monitor("replay").stdout
    families = {f.name: f for f in text_string_to_metric_families(out)}
    for name in ("mlmon_label_f1", "mlmon_label_ece", "mlmon_feature_psi", "mlmon_error_budget_burn_rate",
                 "mlmon_estimated_label_precision", "mlmon_ground_truth_delay_seconds",
                 "mlmon_prediction_latency_seconds", "mlmon_label_outcomes", "mlmon_predictions", "mlmon_build_info"):
        assert name in families, name
    burn = {(s.labels["slo"], s.labels["window"]): s.value for s in families["mlmon_error_budget_burn_rate"].samples}
    # The example's violence recall collapses in its last hours: the fast windows burn at the maximum.
    assert burn[("violence-recall", "1h")] > 5
    assert burn[("spam-precision", "1d")] < 1


def test_replay_json_and_at() -> None:
    out = json.loads(monitor("replay", "--format", "json", "--at", "2026-11-20T06:00:00Z").stdout)
    assert out["at"].startswith("2026-11-20T06:00:00")
    preds = [m for m in out["metrics"] if m["name"] == "mlmon_predictions_total"]
    assert preds and preds[0]["value"] < 8000  # only events up to 06:00 applied
    burn = {m["labels"]["window"]: m["value"] for m in out["metrics"]
            if m["name"] == "mlmon_error_budget_burn_rate" and m["labels"]["slo"] == "violence-recall"}
    assert burn["1h"] < 3  # before the degradation at 08:00


def test_reference_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "ref.json"
    res = monitor("reference", "--config", str(EXAMPLE_CONFIG), "--model", "moderation", "-o", str(out),
                  str(EXAMPLE / "predictions.jsonl"))
    assert "8000 predictions" in res.stdout
    ref = json.loads(out.read_text())
    assert len(ref["scores"]["violence"]["edges"]) == 9
    assert ref["features"]["lang"]["values"][0] == "en"


def test_check_config_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: m\n    labels: [a, b]\n    thresholds: {a: 2}\n"
                   "    slos:\n      - {label: zz, objective: recall, target: 0.9}\n"
                   "windows: [5m, 90s]\nkafka: {bootstrp_servers: x}\n")
    res = monitor("check-config", str(bad), check=False)
    assert res.returncode == 1
    assert "kafka.bootstrp_servers: unknown key" in res.stderr
    assert "windows" in res.stderr
    assert monitor("check-config", str(EXAMPLE_CONFIG)).stdout.strip() == "ok"


def test_cli_start_up_stays_light() -> None:
    assert imported_by_cli(["replay", "--help"], ("faust", "aiokafka", "kafka", "evidently", "pandas",
                                                  "grafana_foundation_sdk", "sklearn", "scipy")) == []


# Libraries a command pays for only when it needs them: the config and engine (pydantic, yaml, jmespath,
# numpy), the exposition (prometheus_client), the terminal table (rich), statistics (scipy), Kafka.
HEAVY = ("numpy", "scipy", "pydantic", "yaml", "jmespath", "prometheus_client", "rich", "aiokafka", "kafka")


@pytest.mark.parametrize("verb", ["", "replay", "init", "reference", "check-config", "report", "backtest"])
def test_help_imports_no_heavy_library(verb: str) -> None:
    # Guards start-up without timing it: `--help` must not import what only a run needs.
    assert imported_by_cli([verb, "--help"] if verb else ["--help"], HEAVY) == []


def test_replay_imports_what_its_output_format_needs(tmp_path: Path) -> None:
    first = (EXAMPLE / "predictions.jsonl").read_text().splitlines()[0]
    pid = json.loads(first)["prediction_id"]
    truth = next(line for line in (EXAMPLE / "ground_truth.jsonl").read_text().splitlines()
                 if json.loads(line)["prediction_id"] == pid)
    (tmp_path / "p.jsonl").write_text(first + "\n")
    (tmp_path / "g.jsonl").write_text(truth + "\n")
    args = ["replay", "--config", str(EXAMPLE_CONFIG), "--predictions", str(tmp_path / "p.jsonl"),
            "--ground-truth", str(tmp_path / "g.jsonl"), "--format"]
    # Every format needs the config and the engine; only the exposition needs prometheus_client and only
    # the table needs rich. No format needs scipy or Kafka.
    needed = {"numpy", "pydantic", "yaml"}
    never = {"scipy", "aiokafka", "kafka"}
    for fmt, own, other in (("prometheus", "prometheus_client", "rich"), ("table", "rich", "prometheus_client"),
                            ("json", None, None)):
        imported = set(imported_by_cli([*args, fmt], HEAVY))
        assert needed <= imported, (fmt, imported)  # the run really went through config and engine
        assert not imported & never, (fmt, imported)
        assert own is None or own in imported, (fmt, imported)
        others = {other} if other else {"prometheus_client", "rich"}
        assert not imported & others, (fmt, imported)


def test_replay_ends_its_own_process_with_every_byte_written(tmp_path: Path) -> None:
    """`monitor replay` in a process of its own ends without tearing the interpreter down once its output
    is written (monitor.fast_exit): every format still arrives whole, through a pipe and into a file,
    with exit status 0, and equals the output of the command run in-process (a library caller's, where
    the command returns as before)."""
    from click.testing import CliRunner

    from monitor.cli import main

    for fmt in ("prometheus", "json", "table"):
        inproc = CliRunner().invoke(main, ["replay", "--format", fmt])
        assert inproc.exit_code == 0, inproc.output
        assert monitor("replay", "--format", fmt).stdout == inproc.output, fmt
        out = tmp_path / f"out.{fmt}"
        with out.open("w") as f:
            done = subprocess.run([sys.executable, "-m", "monitor.cli", "replay", "--format", fmt], stdout=f,
                                  cwd=ROOT, timeout=120)
        assert done.returncode == 0 and out.read_text() == inproc.output, fmt


def test_replay_with_on_disk_join_stores_still_removes_them(tmp_path: Path) -> None:
    """With join.memory_entries the joins keep entries in on-disk stores that are deleted when dropped:
    such a replay ends the ordinary way, and leaves no store behind."""
    state = tmp_path / "state"
    state.mkdir()
    shutil.copytree(EXAMPLE / "reference", tmp_path / "reference")  # the config names it relatively
    config = tmp_path / "config.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text().replace(
        "join: {ttl: 72h}", f"join: {{ttl: 72h, memory_entries: 50, state_dir: {json.dumps(str(state))}}}"))
    res = monitor("replay", "--config", str(config), "--predictions", str(EXAMPLE / "predictions.jsonl"),
                  "--ground-truth", str(EXAMPLE / "ground_truth.jsonl"))
    assert "mlmon_label_f1" in res.stdout
    assert list(state.iterdir()) == []
