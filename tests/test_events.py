"""Decoding, validation and rejection reasons; bad input never stops the engine or skews good figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.conventions import ALL_REASONS, Reason
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Engine
from monitor.events import Decoder, InvalidEvent, parse_timestamp
from monitor.replay import run_replay
from tests.events import BASE, ground_truth, prediction

DATA = Path(__file__).parent / "data"


def cfg():
    from monitor.config import parse_config

    return parse_config({
        "kafka": {"max_message_bytes": 4096},
        "windows": ["1h", "1d"],
        "models": [
            {"name": "m", "labels": ["a", "b", "c"], "features": {"numeric": ["n"], "categorical": ["lang"]}},
            {"name": "mc", "task": "multiclass", "labels": ["x", "y"]},
        ],
    })


def reason_of(decode, raw: bytes) -> str:
    with pytest.raises(InvalidEvent) as exc:
        decode(raw)
    return exc.value.reason


GOOD = {"prediction_id": "p", "model": "m", "timestamp": "2026-11-20T10:00:00Z",
        "scores": {"a": 0.1, "b": 0.2, "c": 0.3}}


@pytest.mark.parametrize(("change", "reason"), [
    ({"prediction_id": ""}, Reason.INVALID_PREDICTION_ID),
    ({"prediction_id": "x" * 257}, Reason.INVALID_PREDICTION_ID),
    ({"prediction_id": 5}, Reason.WRONG_TYPE),
    ({"prediction_id": None}, Reason.MISSING_FIELD),
    ({"model": "nope"}, Reason.UNKNOWN_MODEL),
    ({"model": ["m"]}, Reason.WRONG_TYPE),
    ({"timestamp": "yesterday"}, Reason.BAD_TIMESTAMP),
    ({"timestamp": "2026-11-20T10:00:00"}, Reason.BAD_TIMESTAMP),
    ({"timestamp": "1999-12-31T23:59:59Z"}, Reason.TIMESTAMP_OUT_OF_RANGE),
    ({"timestamp": 5_000_000_000_000_000}, Reason.TIMESTAMP_OUT_OF_RANGE),
    ({"timestamp": True}, Reason.WRONG_TYPE),
    ({"scores": None}, Reason.MISSING_FIELD),
    ({"scores": [0.1, 0.2]}, Reason.WRONG_TYPE),
    ({"scores": {"a": 0.1, "b": 0.2}}, Reason.MISSING_SCORE),
    ({"scores": {"a": 1.5, "b": 0.2, "c": 0.3}}, Reason.SCORE_OUT_OF_RANGE),
    ({"scores": {"a": -0.1, "b": 0.2, "c": 0.3}}, Reason.SCORE_OUT_OF_RANGE),
    ({"scores": {"a": "0.1", "b": 0.2, "c": 0.3}}, Reason.WRONG_TYPE),
    ({"scores": {"a": True, "b": 0.2, "c": 0.3}}, Reason.WRONG_TYPE),
    ({"predicted": ["zzz"]}, Reason.UNKNOWN_LABEL),
    ({"predicted": "a"}, Reason.WRONG_TYPE),
    ({"predicted": ["a", "a"]}, Reason.INVALID_LABELS),
    ({"latency_ms": -1}, Reason.INVALID_LATENCY),
    ({"latency_ms": "fast"}, Reason.INVALID_LATENCY),
    ({"features": {"n": "long"}}, Reason.INVALID_FEATURES),
    ({"features": {"lang": {"nested": 1}}}, Reason.INVALID_FEATURES),
    ({"features": [1, 2]}, Reason.INVALID_FEATURES),
    ({"model_version": 7}, Reason.WRONG_TYPE),
])
def test_prediction_rejections(change: dict, reason: str) -> None:
    event = {**GOOD, **change}
    event = {k: v for k, v in event.items() if v is not None}
    assert reason_of(Decoder(cfg()).decode_prediction, orjson.dumps(event)) == reason


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", Reason.INVALID_JSON),
    (b"[1, 2]", Reason.NOT_AN_OBJECT),
    (b"\xff\xfe{}", Reason.INVALID_UTF8),
    (b'{"prediction_id": "p", "model": "m", "timestamp": 1795132800, "scores": {"a": NaN, "b": 0.2, "c": 0.3}}',
     Reason.SCORE_NOT_FINITE),
    (b'{"prediction_id": "p", "model": "m", "timestamp": 1795132800, "scores": {"a": Infinity, "b": 0, "c": 0}}',
     Reason.SCORE_NOT_FINITE),
    (b"[" * 5000 + b"]" * 5000, Reason.OVERSIZED),
    (b"[" * 2000 + b"]" * 2000, Reason.INVALID_JSON),
    (orjson.dumps({**GOOD, "features": {"n": 1, "pad": "x" * 5000}}), Reason.OVERSIZED),
])
def test_raw_rejections(raw: bytes, reason: str) -> None:
    assert reason_of(Decoder(cfg()).decode_prediction, raw) == reason


def test_timestamps_rfc3339_seconds_and_millis_agree() -> None:
    assert parse_timestamp("2026-11-20T10:00:00Z") == parse_timestamp(1795168800) == parse_timestamp(1795168800000)
    assert parse_timestamp("2026-11-20T11:00:00+01:00") == parse_timestamp("2026-11-20T10:00:00Z")


def test_unknown_score_keys_are_ignored_and_counted() -> None:
    engine = Engine(cfg())
    engine.predictions([orjson.dumps({**GOOD, "scores": {"a": 0.1, "b": 0.2, "c": 0.3, "extra": 0.9, "x": 2}})])
    figs = engine.evaluate()
    assert figs.by_name("mlmon_ignored_scores_total")[("m",)] == 2
    assert figs.by_name("mlmon_predictions_total")[("m", "unknown")] == 1


def test_ground_truth_forms() -> None:
    d = Decoder(cfg())
    full = d.decode_ground_truth(ground_truth("p", BASE, ["a"]))
    assert full.full and full.known.all() and full.actual.tolist() == [True, False, False]
    partial = d.decode_ground_truth(ground_truth("p", BASE, {"b": 1, "c": 0}))
    assert not partial.full and partial.known.tolist() == [False, True, True]
    assert partial.actual.tolist() == [False, True, False]
    assert reason_of(d.decode_ground_truth, ground_truth("p", BASE, {"b": 2})) == Reason.WRONG_TYPE
    assert reason_of(d.decode_ground_truth, ground_truth("p", BASE, {"b": 0.5})) == Reason.WRONG_TYPE
    assert reason_of(d.decode_ground_truth, ground_truth("p", BASE, {"zz": 1})) == Reason.UNKNOWN_LABEL
    assert reason_of(d.decode_ground_truth, ground_truth("p", BASE, {})) == Reason.INVALID_LABELS
    assert reason_of(d.decode_ground_truth, ground_truth("p", BASE, "a")) == Reason.WRONG_TYPE
    mc = d.decode_ground_truth(ground_truth("p", BASE, ["y"], model="mc"))
    assert mc.actual.tolist() == [False, True]
    assert reason_of(d.decode_ground_truth, ground_truth("p", BASE, ["x", "y"], model="mc")) == Reason.INVALID_LABELS
    assert reason_of(d.decode_ground_truth, ground_truth("p", BASE, {"x": 1}, model="mc")) == Reason.INVALID_LABELS


def test_multiclass_prediction_uses_argmax_or_one_served_class() -> None:
    d = Decoder(cfg())
    p = d.decode_prediction(prediction("p", BASE, {"x": 0.3, "y": 0.7}, model="mc"))
    assert p.predicted.tolist() == [False, True]
    bad = prediction("p", BASE, {"x": 0.3, "y": 0.7}, model="mc", predicted=["x", "y"])
    assert reason_of(d.decode_prediction, bad) == Reason.INVALID_LABELS


def test_rejection_detail_never_echoes_payload_text() -> None:
    secret = "user-email@example.com"
    d = Decoder(cfg())
    for raw in (orjson.dumps({**GOOD, "model": secret}), orjson.dumps({**GOOD, "predicted": [secret]}),
                orjson.dumps({**GOOD, "timestamp": secret}), orjson.dumps({**GOOD, "features": {"n": secret}})):
        with pytest.raises(InvalidEvent) as exc:
            d.decode_prediction(raw)
        assert secret not in str(exc.value)


def test_bad_input_file_is_counted_and_good_lines_are_exact() -> None:
    """tests/data/bad_*.jsonl mix malformed lines with good ones: every bad line is counted under its
    reason, and the figures equal those of the good lines alone."""
    config = cfg()
    preds = (DATA / "bad_predictions.jsonl").read_bytes().splitlines()
    truths = (DATA / "bad_ground_truth.jsonl").read_bytes().splitlines()
    decoder = Decoder(config)

    def good(lines: list[bytes], decode) -> list[bytes]:
        out = []
        for line in lines:
            try:
                decode(line)
                out.append(line)
            except InvalidEvent:
                pass
        return out

    good_p = good(preds, decoder.decode_prediction)
    good_g = good(truths, decoder.decode_ground_truth)
    assert 0 < len(good_p) < len(preds) and 0 < len(good_g) < len(truths)
    _engine, figs = run_replay(config, preds, truths)
    _, clean = run_replay(config, good_p, good_g)
    invalid = figs.by_name("mlmon_invalid_events_total")
    assert sum(invalid.values()) == len(preds) - len(good_p) + len(truths) - len(good_g)
    reasons = {r for _, r in invalid}
    assert reasons <= set(ALL_REASONS)
    for expected in (Reason.INVALID_JSON, Reason.WRONG_TYPE, Reason.SCORE_NOT_FINITE, Reason.SCORE_OUT_OF_RANGE,
                     Reason.UNKNOWN_MODEL, Reason.MISSING_FIELD, Reason.OVERSIZED, Reason.UNKNOWN_LABEL,
                     Reason.INVALID_UTF8, Reason.MISSING_SCORE, Reason.TIMESTAMP_OUT_OF_RANGE):
        assert expected in reasons, expected
    topics = {t for t, _ in invalid}
    assert topics == {PREDICTIONS, GROUND_TRUTH}
    skip = {"mlmon_invalid_events_total"}
    got = {(s.metric.name, s.labels): s.value for s in figs.samples if s.metric.name not in skip}
    want = {(s.metric.name, s.labels): s.value for s in clean.samples if s.metric.name not in skip}
    assert got == want
    assert figs.by_name("mlmon_joined_total")[("m", "v1")] > 0


def _same(a, b) -> bool:
    if isinstance(a, InvalidEvent) or isinstance(b, InvalidEvent):
        return isinstance(a, InvalidEvent) and isinstance(b, InvalidEvent) and a.reason == b.reason
    return all(
        (np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y)
        for x, y in ((getattr(a, f), getattr(b, f)) for f in a.__slots__)
    )


_value = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-2, 2), st.booleans(),
                   st.text(max_size=3), st.none())


@settings(max_examples=400, deadline=None)
@given(pid=st.one_of(st.text(max_size=5), st.integers(-(10**6), 10**6)), model=st.sampled_from(["m", "mc", "zz"]),
       ts=st.one_of(st.sampled_from(["2026-11-20T10:00:00Z", "2026-11-20T10:00:00.5+02:00", "2026-11-20T10:00:00",
                                     "1999-01-01T00:00:00Z", "x"]),
                    st.integers(0, 5_000_000_000_000)),
       scores=st.one_of(st.fixed_dictionaries({k: st.floats(0, 1) for k in "abc"},
                                              optional={"x": st.floats(0, 1), "q": _value}),
                        st.fixed_dictionaries({"x": st.floats(0, 1), "y": st.floats(0, 1)}),
                        st.dictionaries(st.sampled_from(["a", "b", "c", "x", "y", "q"]), _value)),
       features=st.one_of(st.none(), st.dictionaries(st.sampled_from(["n", "lang", "z"]), _value)),
       labels=st.one_of(st.lists(st.sampled_from(["a", "b", "c", "x", "zz"]), max_size=4),
                        st.dictionaries(st.sampled_from(["a", "b", "zz"]), _value), _value))
def test_batch_decoder_agrees_with_the_exact_decoder(pid, model, ts, scores, features, labels) -> None:
    """The fast batch path must accept exactly what the per-event decoder accepts, with the same values,
    and reject with the same reason (it falls back to that decoder)."""
    from monitor.events import BatchDecoder

    d = Decoder(cfg())
    batch = BatchDecoder(d)
    pred = orjson.dumps({"prediction_id": pid, "model": model, "timestamp": ts, "scores": scores,
                         "features": features, "latency_ms": 3})
    truth = orjson.dumps({"prediction_id": pid, "model": model, "timestamp": ts, "labels": labels})
    for raw, fast, slow in ((pred, batch.predictions, d.decode_prediction),
                            (truth, batch.ground_truth, d.decode_ground_truth)):
        try:
            expected = slow(raw)
        except InvalidEvent as exc:
            expected = exc
        assert _same(fast([raw])[0], expected)
