"""A new user's first hour: the terminal summary, loud rejections, inputs as people have them, `monitor
init` and a check-config that names every problem at once. Every command runs as a user runs it."""

from __future__ import annotations

import gzip
import json
import os
import pty
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
import zstandard
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import format_duration, load_config
from monitor.rules.tiers import tiers_for
from tests.conftest import EXAMPLE_CONFIG, ROOT

EXAMPLE = ROOT / "monitor" / "examples"
PREDS = EXAMPLE / "predictions.jsonl"
TRUTH = EXAMPLE / "ground_truth.jsonl"


def monitor(*args: str, stdin: bytes | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], capture_output=True, input=stdin,
                          cwd=cwd, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})


def on_terminal(*args: str) -> tuple[int, str]:
    """Run with stdout on a pseudo-terminal, as a person at a shell does."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "140", "LINES": "60", "TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", *args], stdout=slave, stderr=subprocess.PIPE,
                            cwd=ROOT, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO once the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    rc = proc.wait(timeout=180)
    return rc, b"".join(chunks).decode("utf-8", errors="replace")


# --- output for people ---------------------------------------------------------------------------------------

def test_replay_on_a_terminal_prints_a_summary_not_prometheus_text() -> None:
    rc, out = on_terminal("replay")
    assert rc == 0
    assert "# HELP" not in out and "mlmon_" not in out
    assert len(out.splitlines()) < 80  # ten seconds of reading, not 3,500 lines
    for needle in ("PAGE: violence-recall", "page_fast", "Labels over", "COLLAPSE", "drift (1h)",
                   "feature text_length", "rejected events: none"):
        assert needle in out, needle
    assert "\x1b[" in out  # colour on a terminal


def test_summary_tiers_match_the_alert_conditions_on_the_exported_burn_rates() -> None:
    """Which tiers the summary says would fire, against the alert rule's condition evaluated by hand on the
    Prometheus text (burn over the long window > threshold, enough events, short window not recovered)."""
    text = monitor("replay", "--format", "prometheus").stdout.decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    burn = {(s.labels["slo"], s.labels["window"]): s.value for s in fams["mlmon_error_budget_burn_rate"].samples}
    events = {(s.labels["slo"], s.labels["window"]): s.value for s in fams["mlmon_slo_events"].samples}
    cfg = load_config(EXAMPLE_CONFIG)
    model = cfg.models[0]
    expected = set()
    for slo in model.slos:
        for t in tiers_for(slo, cfg.windows):
            lw, sw = format_duration(t.long_window), format_duration(t.short_window)
            long_b, short_b = burn.get((slo.name, lw)), burn.get((slo.name, sw))
            if (long_b is not None and long_b > t.threshold and events.get((slo.name, lw), 0) >= model.min_events
                    and not (short_b is not None and short_b <= t.threshold)):
                expected.add((slo.name, t.name))
    from monitor.inputs import read_lines
    from monitor.replay import replay
    from monitor.summary import summarize

    result = replay(cfg, read_lines(PREDS), read_lines(TRUTH))
    view = summarize(cfg, result.figures, result.engine.latest_event_time or 0, result.rejections)
    got = {(s.name, t.name) for s in view.models[0].slos for t in s.firing}
    assert got == expected
    assert ("violence-recall", "page_fast") in got and not any(name == "spam-precision" for name, _ in got)


def test_format_table_is_available_when_piped_and_prometheus_stays_the_pipe_default() -> None:
    table = monitor("replay", "--format", "table").stdout.decode()
    assert "violence-recall" in table and "# HELP" not in table
    piped = monitor("replay").stdout.decode()
    assert piped.startswith("# HELP")


# --- loud failures -------------------------------------------------------------------------------------------

SECRET = "a-very-private-comment-text-that-must-not-be-echoed"


def _broken_predictions(tmp_path: Path) -> Path:
    lines = PREDS.read_text().splitlines()[:300]
    lines[4] = '{"prediction_id": "x", "model": "moderation", "note": "' + SECRET + '" '  # truncated JSON
    lines[9] = lines[9].replace('"moderation"', '"no-such-model"')
    lines[10] = lines[10].replace('"moderation"', '"no-such-model"')
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rejections_are_summarised_on_stderr_by_reason_with_line_and_short_excerpt(tmp_path: Path) -> None:
    preds = _broken_predictions(tmp_path)
    run = monitor("replay", "--config", str(EXAMPLE_CONFIG), "--predictions", str(preds), "--format", "json")
    assert run.returncode == 0
    err = run.stderr.decode()
    assert "3 of 300 prediction events rejected" in err
    assert "2 unknown_model: model is not configured; first at line 10:" in err
    assert "1 invalid_json: the message is not valid JSON; first at line 5:" in err
    assert SECRET not in err and SECRET[:20] not in err  # an excerpt, never the event
    json.loads(run.stdout)  # stdout stays machine-readable
    rc, out = on_terminal("replay", "--config", str(EXAMPLE_CONFIG), "--predictions", str(preds))
    assert rc == 0 and "Rejected events" in out and "unknown_model" in out and "invalid_json" in out
    assert SECRET[:20] not in out


@pytest.mark.parametrize("verb", ["replay", "report"])
def test_nothing_usable_exits_non_zero_with_a_clear_message(tmp_path: Path, verb: str) -> None:
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(line.replace('"moderation"', '"other"') + "\n"
                             for line in PREDS.read_text().splitlines()[:50]))
    extra = ["-o", str(tmp_path / "r.html")] if verb == "report" else []
    run = monitor(verb, "--config", str(EXAMPLE_CONFIG), "--predictions", str(preds), *extra)
    assert run.returncode == 1
    err = run.stderr.decode()
    assert "nothing usable in" in err and "all 50 prediction events were rejected" in err
    assert "unknown_model" in err
    assert not (tmp_path / "r.html").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    run = monitor(verb, "--config", str(EXAMPLE_CONFIG), "--predictions", str(empty), *extra)
    assert run.returncode == 1 and "holds no events" in run.stderr.decode()


def test_reference_and_init_tell_rejections_too(tmp_path: Path) -> None:
    preds = _broken_predictions(tmp_path)
    run = monitor("reference", "--config", str(EXAMPLE_CONFIG), "--model", "moderation", "-o",
                  str(tmp_path / "ref.json"), str(preds))
    assert run.returncode == 0
    assert "invalid_json" in run.stderr.decode() and "first at line 5" in run.stderr.decode()
    run = monitor("init", str(preds), "--model", "moderation", "-o", str(tmp_path / "c.yaml"))
    assert run.returncode == 0, run.stderr
    assert "invalid_json" in run.stderr.decode()
    garbage = tmp_path / "g.jsonl"
    garbage.write_text("not json\nnor this\n")
    for args in (["reference", "--config", str(EXAMPLE_CONFIG), "--model", "moderation", "-o",
                  str(tmp_path / "r2.json"), str(garbage)], ["init", str(garbage), "-o", str(tmp_path / "d.yaml")]):
        run = monitor(*args)
        assert run.returncode == 1 and "invalid_json" in run.stderr.decode(), args


# --- inputs as people have them ------------------------------------------------------------------------------

def test_gzip_zstd_stdin_bom_and_crlf_read_the_same_events(tmp_path: Path) -> None:
    plain = monitor("replay", "--config", str(EXAMPLE_CONFIG), "--predictions", str(PREDS), "--ground-truth",
                    str(TRUTH))
    assert plain.returncode == 0 and plain.stderr == b""
    pred_bytes, truth_bytes = PREDS.read_bytes(), TRUTH.read_bytes()
    variants: dict[str, tuple[Path | str, Path, bytes | None]] = {}
    gz = tmp_path / "p.jsonl.gz"
    gz.write_bytes(gzip.compress(pred_bytes))
    variants["gzip"] = (gz, TRUTH, None)
    zst = tmp_path / "t.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(truth_bytes))
    variants["zstd"] = (PREDS, zst, None)
    streamed = tmp_path / "t-stream.zst"  # no content size in the frame header, as `zstd -` writes
    stream = zstandard.ZstdCompressor().compressobj()
    streamed.write_bytes(stream.compress(truth_bytes) + stream.flush())
    variants["zstd without content size"] = (PREDS, streamed, None)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + pred_bytes.replace(b"\n", b"\r\n"))
    variants["bom+crlf"] = (bom, TRUTH, None)
    variants["stdin"] = ("-", TRUTH, gzip.compress(pred_bytes))
    for name, (p, t, stdin) in variants.items():
        run = monitor("replay", "--config", str(EXAMPLE_CONFIG), "--predictions", str(p), "--ground-truth", str(t),
                      stdin=stdin)
        assert run.returncode == 0, (name, run.stderr)
        assert run.stderr == b"", (name, run.stderr)
        assert run.stdout == plain.stdout, name


def test_unreadable_inputs_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "p.jsonl.gz"
    broken.write_bytes(gzip.compress(PREDS.read_bytes())[:500])
    run = monitor("replay", "--config", str(EXAMPLE_CONFIG), "--predictions", str(broken))
    assert run.returncode == 1 and "gzip file that cannot be decompressed" in run.stderr.decode()
    utf16 = tmp_path / "u.jsonl"
    utf16.write_bytes(PREDS.read_text()[:2000].encode("utf-16"))
    run = monitor("replay", "--config", str(EXAMPLE_CONFIG), "--predictions", str(utf16))
    assert run.returncode == 1 and "UTF-16" in run.stderr.decode()
    run = monitor("replay", "--config", str(EXAMPLE_CONFIG), "--predictions", "-", "--ground-truth", "-")
    assert run.returncode == 2


# --- check-config: every problem at once ----------------------------------------------------------------------

def test_check_config_lists_every_problem_of_a_file_in_one_run(tmp_path: Path) -> None:
    (tmp_path / "badref.json").write_text('{"format": 1, "model": "n"}\n')
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("""
windows: [5m, 90s, 1h]
kafka: {bootstrp_servers: x}
models:
  - name: m
    labels: [a, b]
    thresholds: {a: 2, zz: 0.5}
    reference: missing.json
    slos:
      - {label: zz, objective: recall, target: 0.9, period: 1h}
      - {label: a, objective: recall, target: 1.5}
      - {label: b, objective: precision, target: 0.9, period: 2h}
  - name: n
    labels: [x, y]
    task: multiclass
    reference: badref.json
""")
    run = monitor("check-config", str(cfg))
    assert run.returncode == 1
    err = run.stderr.decode()
    for needle in ("kafka.bootstrp_servers: unknown key", "window 90s", "models[0].slos[1].target",
                   "thresholds.a: 2", "'zz' is not one of the labels", "slos[0].label: 'zz'",
                   "models[0].slos[2].period: 2h must be one of the windows",
                   "models[0].reference: file", "does not exist",
                   "models[1].reference", "scores: must map each label", "predicted_positive_rate"):
        assert needle in err, needle


def test_a_malformed_reference_fails_check_config_as_replay_would(tmp_path: Path) -> None:
    ref = json.loads((EXAMPLE / "reference" / "moderation.json").read_text())
    ref["scores"]["spam"]["counts"] = ref["scores"]["spam"]["counts"][:-2]
    del ref["format"]
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data["models"][0]["reference"] = "ref.json"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    check = monitor("check-config", str(cfg))
    assert check.returncode == 1 and "no format field" in check.stderr.decode()
    replay = monitor("replay", "--config", str(cfg), "--predictions", str(PREDS))
    assert replay.returncode == 1 and "no format field" in replay.stderr.decode()
    ref["format"] = 1
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    check = monitor("check-config", str(cfg))
    assert check.returncode == 1 and "scores.spam: 9 edges need 10 counts, got 8" in check.stderr.decode()


# --- monitor init ---------------------------------------------------------------------------------------------

def _round_trip(tmp_path: Path, preds: Path, truth: Path | None) -> tuple[dict, str]:
    out = tmp_path / "cfg" / "mlmon.yaml"
    args = ["init", str(preds), "-o", str(out)] + (["--ground-truth", str(truth)] if truth else [])
    run = monitor(*args)
    assert run.returncode == 0, run.stderr
    check = monitor("check-config", str(out))
    assert check.returncode == 0 and check.stdout.decode().strip() == "ok", check.stderr
    replay = monitor("replay", "--config", str(out), "--predictions", str(preds),
                     *(["--ground-truth", str(truth)] if truth else []))
    assert replay.returncode == 0, replay.stderr
    again = monitor(*args)
    assert again.returncode == 1 and "--force" in again.stderr.decode()
    return yaml.safe_load(out.read_text()), replay.stdout.decode()


def test_init_round_trip_on_the_bundled_example(tmp_path: Path) -> None:
    cfg, text = _round_trip(tmp_path, PREDS, TRUTH)
    (model,) = cfg["models"]
    assert model["name"] == "moderation" and model["task"] == "multilabel"
    assert model["labels"] == ["violence", "hate", "spam", "nudity", "self_harm", "harassment"]
    assert sorted(model["features"]["numeric"]) == ["num_links", "text_length"]
    assert model["features"]["categorical"] == ["lang"]
    assert len(model["slos"]) == 6
    # The suggested target is the sample's own recall less its Wilson uncertainty: met today.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    remaining = {s.labels["label"]: s.value for s in families["mlmon_error_budget_remaining"].samples}
    assert set(remaining) == set(model["labels"])
    assert all(v > 0 for v in remaining.values()), remaining
    assert "mlmon_feature_psi" in families


def _multiclass_sample(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(3)
    classes = ["cat", "dog", "bird"]
    t0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    preds, truths = [], []
    for i in range(600):
        actual = rng.choice(classes)
        raw = [rng.random() + (2.0 if c == actual and rng.random() < 0.8 else 0) for c in classes]
        total = sum(raw)
        scores = {c: round(v / total, 6) for c, v in zip(classes, raw, strict=True)}
        scores[classes[-1]] = round(1 - scores[classes[0]] - scores[classes[1]], 6)
        preds.append({"prediction_id": f"p{i}", "model": "animals", "model_version": "1",
                      "timestamp": t0 + i * 10, "scores": scores,
                      "features": {"pixels": rng.randint(100, 10000), "camera": rng.choice(["a", "b", "c"]),
                                   "request_id": f"r{i}"}})
        if i % 3:
            truths.append({"prediction_id": f"p{i}", "model": "animals", "timestamp": t0 + i * 10 + 60,
                           "labels": [actual]})
    p, t = tmp_path / "animals.jsonl", tmp_path / "animals-truth.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in preds))
    t.write_text("".join(json.dumps(x) + "\n" for x in truths))
    return p, t


def test_init_round_trip_on_a_multiclass_sample(tmp_path: Path) -> None:
    preds, truth = _multiclass_sample(tmp_path)
    cfg, text = _round_trip(tmp_path, preds, truth)
    (model,) = cfg["models"]
    assert model["task"] == "multiclass" and model["labels"] == ["cat", "dog", "bird"]
    assert model["features"] == {"numeric": ["pixels"], "categorical": ["camera"]}  # request_id: an id
    assert "mlmon_accuracy" in text
    # The summary's accuracy and per-class recall against scikit-learn on the joined sample.
    from sklearn.metrics import accuracy_score, recall_score

    scores = {e["prediction_id"]: e["scores"] for e in map(json.loads, preds.read_text().splitlines())}
    joined = [(e["labels"][0], max(scores[e["prediction_id"]], key=scores[e["prediction_id"]].get))
              for e in map(json.loads, truth.read_text().splitlines())]
    actual, predicted = zip(*joined, strict=True)
    table = monitor("replay", "--config", str(tmp_path / "cfg" / "mlmon.yaml"), "--predictions", str(preds),
                    "--ground-truth", str(truth), "--format", "table").stdout.decode()
    assert f"accuracy over 2h {accuracy_score(actual, predicted):.3f}" in table
    recall = recall_score(actual, predicted, labels=["cat"], average=None)[0]
    cat_row = next(line for line in table.splitlines() if line.strip("│ ").startswith("cat "))
    assert f" {recall:.3f}" in cat_row, (recall, cat_row)


def test_init_without_ground_truth_and_from_stdin(tmp_path: Path) -> None:
    out = tmp_path / "s.yaml"
    run = monitor("init", "-", "-o", str(out), stdin=gzip.compress(PREDS.read_bytes()))
    assert run.returncode == 0, run.stderr
    assert "slos:" not in yaml.safe_dump(yaml.safe_load(out.read_text()))
    assert monitor("check-config", str(out)).returncode == 0


def test_new_verbs_keep_the_cli_start_up_light() -> None:
    from tests.conftest import imported_by_cli

    heavy = ("faust", "aiokafka", "kafka", "evidently", "pandas", "grafana_foundation_sdk", "sklearn", "scipy",
             "zstandard")
    assert imported_by_cli(["init", "--help"], heavy) == []
    assert imported_by_cli(["replay", "--help"], heavy) == []
