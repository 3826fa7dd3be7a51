"""Mapped inputs (docs/attach.md): the same events in the native shape and in three foreign shapes give
the same figures, which match scikit-learn; hostile mapped input is rejected naming field and expression."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score, precision_score, recall_score

from monitor.config import parse_config
from monitor.conventions import ALL_REASONS
from monitor.engine.engine import Engine
from monitor.exporter import prometheus_text
from monitor.replay import run_replay
from tests.attach_shapes import SHAPES, ms_stream
from tests.test_oracle import LABELS, joined_rows, to_raw

WINDOWS = ["5m", "30m", "1h", "2h", "6h", "1d"]


def config(inputs: dict | None = None, **model: object):
    base: dict = {"name": "m", "labels": LABELS, "thresholds": {"b": 0.3}, **model}
    if inputs is not None:
        base["input"] = inputs
    return parse_config({"windows": WINDOWS, "join": {"ttl": "3d"}, "models": [base]})


@pytest.fixture(scope="module")
def stream():
    return ms_stream(seed=11)


@pytest.fixture(scope="module")
def native_text(stream) -> bytes:
    preds, gts = stream
    raw_p, raw_g = to_raw(preds, gts)
    _, figs = run_replay(config(), raw_p, raw_g)
    return prometheus_text(figs)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_foreign_shapes_give_the_native_figures_and_sklearns(shape: str, stream, native_text: bytes) -> None:
    preds, gts = stream
    s = SHAPES[shape](preds, gts)
    engine, figs = run_replay(config(s.inputs), [], [], inputs=s.replay_inputs())
    assert sum(engine.invalid.values()) == 0, engine.invalid
    assert prometheus_text(figs) == native_text  # every series, byte for byte
    at = max([p.ts for p in preds] + [g.ts for g in gts])
    rows = joined_rows(preds, gts, at)
    for li, label in enumerate(LABELS):  # the whole-stream (1d) figures against scikit-learn
        sel = [r for r in rows if r[0].version == "v1" and r[1].known[li] and at - r[2] < 86400 - 3600]
        y_true = np.array([r[1].actual[li] for r in sel])
        y_pred = np.array([r[0].predicted[li] for r in sel])
        assert figs.by_name("mlmon_label_precision")[("m", "v1", label, "1d")] == pytest.approx(
            precision_score(y_true, y_pred), abs=1e-12)
        assert figs.by_name("mlmon_label_recall")[("m", "v1", label, "1d")] == pytest.approx(
            recall_score(y_true, y_pred), abs=1e-12)
        assert figs.by_name("mlmon_label_f1")[("m", "v1", label, "1d")] == pytest.approx(
            f1_score(y_true, y_pred), abs=1e-12)
    assert figs.by_name("mlmon_joined_total")[("m", "v1")] == sum(1 for r in rows if r[0].version == "v1")


def test_kserve_request_events_are_skipped_not_rejected(stream) -> None:
    preds, _gts = stream
    s = SHAPES["kserve"](preds[:50], [])
    engine, figs = run_replay(config(s.inputs), [], [], inputs=s.replay_inputs())
    assert len(s.topics["kserve-log"]) == 100  # a request and a response per prediction
    assert sum(figs.by_name("mlmon_predictions_total").values()) == 50 and not engine.invalid


PRED_FIELDS = {"model": "'m'", "prediction_id": "id", "timestamp": "created_at", "scores": "outputs[0].data",
               "score_labels": "parameters.label_names", "features": {"length": "request.length"}}
GOOD = {"id": "r1", "created_at": 1795000000000, "outputs": [{"data": [0.9, 0.2, 0.1]}],
        "parameters": {"label_names": ["a", "b", "c"]}, "request": {"length": 3}}


def decode_one(body: object, fields: dict | None = None, side: str = "predictions", **model: object):
    inputs = {side: {"topic": "log", "fields": fields or PRED_FIELDS}}
    engine = Engine(config(inputs, features={"numeric": ["length"]}, **model))
    decoded = engine.decode(side, [orjson.dumps(body)], ["log"])
    return decoded.rejected.get(0), decoded


@pytest.mark.parametrize(("change", "reason", "detail"), [
    ({"id": None}, "missing_field", 'prediction_id is missing (fields.prediction_id = "id")'),
    ({"id": 17}, "wrong_type", 'prediction_id must be a string (fields.prediction_id = "id")'),
    ({"id": ""}, "invalid_prediction_id", '(fields.prediction_id = "id")'),
    ({"created_at": None}, "missing_field", 'timestamp is missing (fields.timestamp = "created_at")'),
    ({"created_at": [1]}, "wrong_type", '(fields.timestamp = "created_at")'),
    ({"created_at": 5}, "timestamp_out_of_range", '(fields.timestamp = "created_at")'),
    ({"outputs": None}, "missing_field", 'scores is missing (fields.scores = "outputs[0].data")'),
    ({"outputs": {"data": [1]}}, "missing_field", '(fields.scores = "outputs[0].data")'),
    ({"outputs": [{"data": "0.9"}]}, "wrong_type", '(fields.scores = "outputs[0].data")'),
    ({"outputs": [{"data": [0.9, 0.2, "x"]}]}, "wrong_type", 'scores.c must be a number (fields.scores'),
    ({"outputs": [{"data": [0.9, 0.2, 1.5]}]}, "score_out_of_range", '(fields.scores = "outputs[0].data")'),
    ({"outputs": [{"data": [0.9, 0.2]}]}, "invalid_labels", "score_labels has 3 names for 2 scores"),
    ({"parameters": None}, "missing_field", 'score_labels is missing (fields.score_labels = "parameters.label_names")'),
    ({"parameters": {"label_names": "abc"}}, "wrong_type", "(fields.score_labels"),
    ({"parameters": {"label_names": ["a", "a", "b"]}}, "invalid_labels", "(fields.score_labels"),
    ({"parameters": {"label_names": ["a", "b", "x"]}}, "missing_score", "scores.c is missing"),
    ({"request": {"length": "long"}}, "invalid_features", '(fields.features.length = "request.length")'),
])
def test_hostile_predictions_are_rejected_naming_field_and_expression(change: dict, reason: str, detail: str) -> None:
    body = {**GOOD, **change}
    exc, _ = decode_one(body)
    assert exc is not None and exc.reason == reason and detail in exc.detail, exc
    assert exc.expression is not None and exc.field is not None
    # The metric label is the bounded reason; field and expression never reach it.
    assert f"{reason}: " in str(exc)


@pytest.mark.parametrize("body", [[1, 2], "text", 3, None, {"outputs": [[[[]]]]}, {"id": {"deep": [1] * 100}}])
def test_any_json_never_crashes(body: object) -> None:
    exc, _ = decode_one(body)
    assert exc is not None


def test_an_expression_that_fails_on_a_message_is_a_rejection() -> None:
    fields = {**PRED_FIELDS, "prediction_id": "to_string(length(id))"}
    exc, _ = decode_one({**GOOD, "id": 5}, fields)  # length() of a number: a JMESPath type error
    assert exc is not None and exc.reason == "wrong_type" and exc.field == "prediction_id"
    assert '(fields.prediction_id = "to_string(length(id))")' in exc.detail
    exc, _ = decode_one({**GOOD, "id": "abc"}, fields)
    assert exc is None


def test_a_good_event_is_accepted() -> None:
    exc, decoded = decode_one(GOOD)
    assert exc is None and decoded.model[0] == 0


@pytest.mark.parametrize(("gold", "ok", "reason"), [
    ([1, 0, 1], True, None),
    (["a"], True, None),
    ("a", True, None),
    ({"a": 1}, True, None),
    ([1, 0], False, "invalid_labels"),
    ([2, 0, 1], False, "wrong_type"),
    (7, False, "wrong_type"),
    ([["a"]], False, "wrong_type"),
    (None, False, "missing_field"),
])
def test_ground_truth_shapes(gold: object, ok: bool, reason: str | None) -> None:
    fields = {"model": "'m'", "prediction_id": "request_id", "timestamp": "reviewed_at", "labels": "gold_labels"}
    exc, _ = decode_one({"request_id": "r1", "reviewed_at": "2026-11-20T10:00:00Z", "gold_labels": gold}, fields,
                        side="ground_truth")
    if ok:
        assert exc is None, exc
    else:
        assert exc is not None and exc.reason == reason and '(fields.labels = "gold_labels")' in exc.detail, exc


def test_a_model_expression_that_names_no_model_is_unknown_model() -> None:
    fields = {**PRED_FIELDS, "model": "model_name"}
    exc, _ = decode_one({**GOOD, "model_name": "other"}, fields)
    assert exc is not None and exc.reason == "unknown_model" and '(fields.model = "model_name")' in exc.detail


def test_native_rejections_name_their_field() -> None:
    engine = Engine(config())
    decoded = engine.decode("predictions", [b'{"model": "m", "timestamp": "2026-11-20T10:00:00Z"}'])
    assert decoded.rejected[0].field == "prediction_id" and decoded.rejected[0].expression is None


def test_native_topics_keep_the_fast_path() -> None:
    engine = Engine(config({"predictions": {"topic": "log"}}))
    assert engine.readers[("predictions", "predictions")].plain
    assert not engine.readers[("predictions", "log")].plain


def test_replay_command_reads_mapped_topic_files(tmp_path) -> None:
    from click.testing import CliRunner

    from monitor.cli import main
    from tests.attach_shapes import flat_log

    preds, gts = ms_stream(seed=4, n=200)
    shape = flat_log(preds, gts)
    files = []
    for topic, lines in shape.replay_inputs().items():
        path = tmp_path / f"{topic}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        files += ["--input", f"{topic}={path}"]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(orjson.dumps({"windows": WINDOWS, "models": [{"name": "m", "labels": LABELS,
                                                                   "thresholds": {"b": 0.3},
                                                                   "input": shape.inputs}]}).decode())
    result = CliRunner().invoke(main, ["replay", "--config", str(cfg), *files, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"mlmon_predictions_total"' in result.output
    raw_p, raw_g = to_raw(preds, gts)
    native_cfg = tmp_path / "native.yaml"
    native_cfg.write_text(orjson.dumps({"windows": WINDOWS, "models": [{"name": "m", "labels": LABELS,
                                                                          "thresholds": {"b": 0.3}}]}).decode())
    (tmp_path / "p.jsonl").write_bytes(b"\n".join(raw_p) + b"\n")
    (tmp_path / "g.jsonl").write_bytes(b"\n".join(raw_g) + b"\n")
    native = CliRunner().invoke(main, ["replay", "--config", str(native_cfg), "--predictions",
                                       str(tmp_path / "p.jsonl"), "--ground-truth", str(tmp_path / "g.jsonl")])
    mapped = CliRunner().invoke(main, ["replay", "--config", str(cfg), *files])
    assert native.exit_code == 0 and mapped.stdout == native.stdout
    bad = CliRunner().invoke(main, ["replay", "--config", str(cfg), "--input", f"nope={cfg}", "--input", "x"])
    assert bad.exit_code == 2
    assert "the config reads no topic 'nope'" in bad.output and "'x': expected TOPIC=FILE" in bad.output


def test_check_config_names_every_bad_expression(tmp_path) -> None:
    from click.testing import CliRunner

    from monitor.cli import main

    cfg = tmp_path / "config.yaml"
    cfg.write_text(orjson.dumps({"models": [{"name": "m", "labels": LABELS, "input": {
        "predictions": {"topic": "log", "fields": {"scores": "outputs[0", "prediction_id": "a..b"}}}}]}).decode())
    result = CliRunner().invoke(main, ["check-config", str(cfg)])
    assert result.exit_code != 0
    assert "models[0].input.predictions.fields.scores" in result.output
    assert "models[0].input.predictions.fields.prediction_id" in result.output


_json = st.recursive(st.none() | st.booleans() | st.integers(-10, 10**13) | st.floats(allow_nan=False)
                     | st.text(max_size=5) | st.sampled_from(["a", "b", "c"]),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
                         ["id", "data", "a", "b", "c", "label_names", "outputs", "parameters", "length"]), inner,
                         max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.sampled_from(["id", "created_at", "outputs", "parameters", "request", "served"]),
                            _json, max_size=6))
def test_hostile_mapped_predictions_never_crash(body: dict) -> None:
    fields = {**PRED_FIELDS, "predicted": "served"}
    exc, decoded = decode_one(body, fields)
    assert (exc is None) == (decoded.model[0] == 0)
    if exc is not None:
        assert exc.reason in ALL_REASONS and exc.field is not None


@settings(max_examples=200, deadline=None)
@given(gold=_json)
def test_hostile_mapped_ground_truth_never_crashes(gold: object) -> None:
    fields = {"model": "'m'", "prediction_id": "request_id", "timestamp": "reviewed_at", "labels": "gold_labels"}
    exc, decoded = decode_one({"request_id": "r1", "reviewed_at": 1795000000000, "gold_labels": gold}, fields,
                              side="ground_truth")
    assert (exc is None) == (decoded.model[0] == 0)
    if exc is not None:
        assert exc.reason in ALL_REASONS and exc.field == "labels"
