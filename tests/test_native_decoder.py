"""The native fast-path decoder (`monitor._native.Decoder`, docs/native.md) against the exact Python decoder
(`monitor.events.Decoder`): whatever the fast path accepts, the exact decoder accepts too, with the same
values bit for bit. The fast path may leave anything to the exact decoder, so the property only constrains
what it accepts; the hand-written cases below check it does accept the common shapes and their edges.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import MonitorConfig, load_config, parse_config
from monitor.engine.native import native_models
from monitor.events import Decoder, GroundTruth, InvalidEvent, Prediction
from monitor.inputs import EXAMPLE, read_lines, split_lines
from monitor.reference import Reference, build_reference, load_reference

_native = pytest.importorskip("monitor._native", reason="the native core is not built")

MAX_BYTES = 65_536
LABELS = ["a", "b", "c"]


def config() -> MonitorConfig:
    """`m` has a reference (categorical bins), `plain` has none, `mc` is multiclass, `bin` is binary."""
    features = {"numeric": ["n", "n2"], "categorical": ["c", "c2"]}
    return parse_config({
        "kafka": {"max_message_bytes": MAX_BYTES},
        "windows": ["5m", "1h"],
        "models": [
            {"name": "m", "labels": LABELS, "threshold": 0.5, "thresholds": {"b": 0.25}, "features": features},
            {"name": "plain", "labels": LABELS, "features": features},
            {"name": "mc", "task": "multiclass", "labels": LABELS},
            {"name": "bin", "task": "binary", "labels": ["a"], "threshold": 0.3},
        ],
    })


def reference(cfg: MonitorConfig) -> Reference:
    decoder = Decoder(cfg)
    sample = [decoder.decode_prediction(orjson.dumps({
        "prediction_id": f"r{i}", "model": "m", "timestamp": "2026-01-01T00:00:00Z",
        "scores": {"a": i / 10, "b": 0.5, "c": 0.1},
        "features": {"n": i, "n2": 1.5, "c": c, "c2": c2}})) for i, (c, c2) in enumerate(
            [("en", 1), ("en", True), ("de", -3), ("1", "x"), ("True", 7), ("fr", False), ("en", 1)])]
    return build_reference(cfg.models[0], sample)


CONFIG = config()
REFERENCES: dict[str, Reference | None] = {"m": reference(CONFIG), "plain": None, "mc": None, "bin": None}
EXACT = Decoder(CONFIG)
FAST = _native.Decoder(MAX_BYTES, native_models(CONFIG, REFERENCES))


def bits(x: Any) -> bytes:
    return np.asarray(x, dtype=np.float64).tobytes()


def check_batch(fast: Any, exact: Decoder, config: MonitorConfig, references: dict[str, Reference | None],
                raws: list[bytes], kind: str) -> int:
    """Every event the fast path accepted decodes exactly to the same values; returns how many it accepted."""
    out = (fast.predictions if kind == "prediction" else fast.ground_truth)(raws)
    assert out["model"].dtype == np.int32 and out["row"].dtype == np.int64
    assert out["model"].shape == out["row"].shape == (len(raws),)
    models = config.models
    assert len(out["blocks"]) == len(models)
    for m, (cfg, block) in enumerate(zip(models, out["blocks"], strict=True)):
        rows = out["row"][out["model"] == m]
        k, nl = len(block["ids"]), len(cfg.labels)
        assert rows.tolist() == list(range(k)), "rows are numbered in input order"
        assert block["ts"].dtype == np.float64 and block["ts"].shape == (k,)
        if kind == "prediction":
            assert block["scores"].dtype == np.float64 and block["scores"].shape == (k, nl)
            assert block["predicted"].dtype == np.bool_ and block["predicted"].shape == (k, nl)
            assert block["version_code"].dtype == np.int64 and block["latency"].dtype == np.float64
            assert block["ignored"].dtype == np.int64
            assert block["numeric"].dtype == np.float64
            assert block["numeric"].shape == (k, len(cfg.features.numeric))
            assert block["categorical"].dtype == np.int64
            assert block["categorical"].shape == (k, len(cfg.features.categorical))
            assert len(set(block["version_names"])) == len(block["version_names"])
        else:
            assert block["actual"].dtype == np.bool_ and block["actual"].shape == (k, nl)
            assert block["known"].dtype == np.bool_ and block["known"].shape == (k, nl)
            assert block["full"].dtype == np.bool_ and block["full"].shape == (k,)
    assert not (out["row"][out["model"] < 0] != -1).any()
    for i, raw in enumerate(raws):
        m = int(out["model"][i])
        if m < 0:
            continue
        row, block, cfg = int(out["row"][i]), out["blocks"][m], models[m]
        try:
            ev = exact.decode_prediction(raw) if kind == "prediction" else exact.decode_ground_truth(raw)
        except InvalidEvent as exc:
            raise AssertionError(f"fast path accepted what the exact decoder rejects ({exc}): {raw!r}") from None
        assert ev.model == cfg.name
        assert block["ids"][row] == ev.prediction_id
        assert bits(block["ts"][row]) == bits(ev.ts), raw
        if isinstance(ev, Prediction):
            compare_prediction(ev, block, row, cfg, references.get(cfg.name), raw)
        else:
            assert isinstance(ev, GroundTruth)
            assert block["known"][row].tolist() == ev.known.tolist(), raw
            assert block["actual"][row].tolist() == ev.actual.tolist(), raw
            assert bool(block["full"][row]) == ev.full, raw
    return int((out["model"] >= 0).sum())


def compare_prediction(ev: Prediction, block: dict[str, Any], row: int, cfg: Any, ref: Reference | None,
                       raw: bytes) -> None:
    assert block["version_names"][block["version_code"][row]] == ev.version
    assert block["scores"][row].tobytes() == ev.scores.tobytes(), raw
    assert block["predicted"][row].tolist() == ev.predicted.tolist(), raw
    assert bits(block["latency"][row]) == bits(np.nan if ev.latency_s is None else ev.latency_s), raw
    assert int(block["ignored"][row]) == ev.ignored_scores
    features = ev.features or {}
    for j, name in enumerate(cfg.features.numeric):
        v = features.get(name)
        assert bits(block["numeric"][row, j]) == bits(np.nan if v is None else float(v)), raw
    for j, name in enumerate(cfg.features.categorical):
        v = features.get(name)
        want = -1 if v is None else ref.features[name].bin_category(v) if ref else 0
        assert int(block["categorical"][row, j]) == want, raw


# --- the bundled example ------------------------------------------------------------------------------------


def test_example_stream_is_all_fast_and_identical() -> None:
    with_files = EXAMPLE
    cfg = load_config(with_files / "config.yaml")
    refs = {m.name: load_reference(cfg, m) for m in cfg.models}
    fast = _native.Decoder(cfg.kafka.max_message_bytes, native_models(cfg, refs))
    exact = Decoder(cfg)
    preds = read_lines(with_files / "predictions.jsonl")
    truths = read_lines(with_files / "ground_truth.jsonl")
    assert check_batch(fast, exact, cfg, refs, preds, "prediction") == len(preds)
    partial = [raw for raw in truths if isinstance(orjson.loads(raw)["labels"], dict)]
    assert partial, "the example holds partial ground truth (an object of label -> 0/1)"
    assert check_batch(fast, exact, cfg, refs, truths, "ground_truth") == len(truths)


def test_a_large_file_decodes_from_its_buffer_on_threads_exactly(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A file read by monitor.inputs is decoded from spans of its buffer, and a batch this large is cut
    into chunks decoded on several threads: every row still equals the exact decoder's, in file order."""
    cfg = load_config(EXAMPLE / "config.yaml")
    refs = {m.name: load_reference(cfg, m) for m in cfg.models}
    fast = _native.Decoder(cfg.kafka.max_message_bytes, native_models(cfg, refs))
    base = [orjson.loads(raw) for raw in read_lines(EXAMPLE / "predictions.jsonl")]
    events = []
    for i in range(40_000):  # above the 32,768 messages that make two chunks
        event = dict(base[i % len(base)], prediction_id=f"big-{i}")
        if i % 7 == 0:
            event["model_version"] = f"v{i * 4 // 40_000}"  # versions first seen in later chunks
        events.append(orjson.dumps(event))
    events[20_001] = b'{"prediction_id": "x"}'  # left to the exact decoder, in the second chunk
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\r\n".join(events[:10]) + b"\r\n  \n" + b"\n".join(events[10:]) + b"\n")
    lines = read_lines(path)
    assert lines.spans() is not None, "read with the native core: spans of one buffer"
    assert len(lines) == len(events) and lines[10] == events[10] and lines.line_number(10) == 12
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("MLMON_DECODE_THREADS", threads)
        assert check_batch(fast, Decoder(cfg), cfg, refs, lines, "prediction") == len(events) - 1
    monkeypatch.setenv("MLMON_DECODE_THREADS", "1")
    one = fast.predictions(lines)
    monkeypatch.setenv("MLMON_DECODE_THREADS", "2")
    two = fast.predictions(list(lines))
    assert one["model"].tolist() == two["model"].tolist() and one["row"].tolist() == two["row"].tolist()
    for a, b in zip(one["blocks"], two["blocks"], strict=True):
        assert list(a["ids"]) == list(b["ids"]) and a["version_names"] == b["version_names"]
        assert a["version_code"].tolist() == b["version_code"].tolist()


@pytest.mark.parametrize("data", [
    b"", b"\n", b"\n\n \n", b'{"a": 1}', b'{"a": 1}\n{"b": 2}\n', b'\xef\xbb\xbf{"a"}\r\n\r\n  \n{"b"}',
    b"x\n\n\ny\r", b" \x0b\n\x0cz\n\t\r\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n{", b"a\r\r\nb", b"\ra\n",
])
def test_native_line_spans_are_the_lines_of_bytes_split(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native splitter keeps the lines, and their numbers, that Python's bytes.split path keeps."""
    spans = split_lines(data, "f")
    assert spans.spans() is not None
    monkeypatch.setenv("MLMON_NATIVE", "0")
    plain = split_lines(data, "f")
    assert plain.spans() is None
    assert list(spans) == list(plain) and spans[:] == plain[:]
    assert [spans.line_number(i) for i in range(len(spans))] == [plain.line_number(i) for i in range(len(plain))]


def test_a_large_file_is_read_and_split_on_threads_as_python_reads_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A file of 16 MiB or more is read and cut into lines on several threads: the same bytes, lines and
    line numbers as Python's own read and bytes.split, with blank and CRLF lines scattered over it."""
    rng = np.random.default_rng(5)
    kinds = [b"\n", b"  \t\n", b'{"id": "crlf"}\r\n', b'{"prediction_id": "p-%d", "x": [1, 2, 3]}\n']
    picks = rng.choice(4, 700_000, p=[0.05, 0.05, 0.1, 0.8])
    data = b"\xef\xbb\xbf" + b"".join(kinds[k] % i if k == 3 else kinds[k] for i, k in enumerate(picks.tolist()))
    assert len(data) > 24 << 20, "large enough for three threads' ranges"
    path = tmp_path / "big.jsonl"
    path.write_bytes(data + b'{"last": "no line feed"}')
    monkeypatch.setenv("MLMON_DECODE_THREADS", "3")
    assert _native.read_file(path) == path.read_bytes()
    assert _native.read_file(os.devnull) is None, "not a regular file: read the ordinary way"
    fast = read_lines(path)
    monkeypatch.setenv("MLMON_NATIVE", "0")
    plain = read_lines(path)
    assert fast.spans() is not None and plain.spans() is None
    assert len(fast) == len(plain) and list(fast) == list(plain)
    assert [fast.line_number(i) for i in range(len(fast))] == [plain.line_number(i) for i in range(len(plain))]


# --- hand-written edges: accepted, and identical ------------------------------------------------------------

HEAD = '"prediction_id": "p1", "model": "m", "timestamp": "2026-03-01T12:00:00Z"'
SCORES = '"scores": {"a": 0.5, "b": 0.25, "c": 0}'


@pytest.mark.parametrize("body", [
    SCORES,
    '"scores": {"c": 1, "a": 0.49999999999999994, "b": 0.2500000000000001, "x": "any", "y": null}',
    '"scores": {"a": 5e-1, "b": 1E0, "c": 0.1000000000000000055511151231257827021181583404541015625}',
    '"scores": {"a": 1e-400, "b": 0.30000000000000004, "c": 0.0}',
    SCORES + ', "model_version": "v\\u00e9-2"',
    SCORES + ', "latency_ms": 0',
    SCORES + ', "latency_ms": 12.345, "features": null',
    SCORES + ', "latency_ms": null, "features": {}',
    SCORES + ', "features": {"n": -7, "n2": 1e18, "c": "en", "c2": "zz", "other": [1, {"k": "\\ud83d\\ude00"}]}',
    SCORES + ', "features": {"n": 9223372036854775807, "n2": -9223372036854775808, "c": 1, "c2": true}',
    SCORES + ', "features": {"n": null, "c": -3, "c2": false}',
    SCORES + ', "features": {"c": "True", "c2": null}',
    SCORES + ', "features": {"c": "\\u0065n"}',
    SCORES + ', "predicted": ["c", "a"]',
    SCORES + ', "predicted": []',
    SCORES + ', "predicted": null',
    SCORES + ', "predicted": ["a", "b", "c"]',
    SCORES + ', "predicted": ["\\u0062"]',
])
def test_common_shapes_are_fast(body: str) -> None:
    other = '"timestamp": "2026-03-01T12:00:00Z", "model": "plain", "prediction_id": "p2"'
    raws = [f"{{{HEAD}, {body}}}".encode(), f"{{{body}, {other}}}".encode()]
    assert check_batch(FAST, EXACT, CONFIG, REFERENCES, raws, "prediction") == 2


@pytest.mark.parametrize("ts", [
    "2026-03-01T12:00:00Z", "2026-03-01T12:00:00.123Z", "2026-03-01T12:00:00.123456Z", "2024-02-29T23:59:59Z",
    "2026-03-01T12:00:00+00:00", "2026-03-01T12:00:00-00:00", "2026-03-01T12:00:00-05:30",
    "2026-03-01T12:00:00.5000000+05:30".replace("0000+", "+"), "1999-12-31T23:30:00-01:00",
    "2099-12-31T23:59:59.999999Z", "2000-01-01T00:00:00Z", "2026-12-31T23:59:59+23:59",
])
def test_timestamps_are_fast(ts: str) -> None:
    raw = f'{{"prediction_id": "p", "model": "m", "timestamp": "{ts}", {SCORES}}}'.encode()
    assert check_batch(FAST, EXACT, CONFIG, REFERENCES, [raw], "prediction") == 1


@pytest.mark.parametrize("ts", ["1772366400", "1772366400000", "1772366400.25", "1772366400123.5", "946684800",
                                "4102444799.999999", "946684800000", "4102444799999", "1e9", "1.7e12"])
def test_epoch_timestamps_are_fast(ts: str) -> None:
    for kind, body in (("prediction", SCORES), ("ground_truth", '"labels": ["a"]')):
        raw = f'{{"prediction_id": "p", "model": "m", "timestamp": {ts}, {body}}}'.encode()
        assert check_batch(FAST, EXACT, CONFIG, REFERENCES, [raw], kind) == 1, ts


@pytest.mark.parametrize("ts", ["946684799", "4102444800", "-1767225600", "-0", "0", "1e11", "99999999999.99",
                                "99999999999", "100000000000000", "4102444800000", "946684799999", "true", "null",
                                "[1767225600]", "1e400"])
def test_other_epoch_timestamps_are_left_to_the_exact_decoder(ts: str) -> None:
    raw = f'{{"prediction_id": "p", "model": "m", "timestamp": {ts}, {SCORES}}}'.encode()
    assert check_batch(FAST, EXACT, CONFIG, REFERENCES, [raw], "prediction") == 0, ts


@pytest.mark.parametrize("body", [
    '"scores": {"a": 0.2, "b": 0.5, "c": 0.3}',
    '"scores": {"a": 0.5, "b": 0.5, "c": 0.5}',
    '"scores": {"c": 1, "b": 0, "a": 0}',
    '"scores": {"a": 0.2, "b": 0.5, "c": 0.3}, "predicted": ["a"]',
    '"scores": {"a": 0.2, "b": 0.5, "c": 0.3, "d": 0.9}, "predicted": null',
])
def test_multiclass_predictions_are_fast(body: str) -> None:
    raw = f'{{"prediction_id": "p", "model": "mc", "timestamp": "2026-03-01T12:00:00Z", {body}}}'.encode()
    assert check_batch(FAST, EXACT, CONFIG, REFERENCES, [raw], "prediction") == 1


@pytest.mark.parametrize(("model", "body"), [
    ("mc", '"scores": {"a": 0.2, "b": 0.5, "c": 0.3}, "predicted": []'),
    ("mc", '"scores": {"a": 0.2, "b": 0.5, "c": 0.3}, "predicted": ["a", "b"]'),
    ("m", SCORES + ', "predicted": ["a", "a"]'),
    ("m", SCORES + ', "predicted": ["d"]'),
    ("m", SCORES + ', "predicted": ["a", "b", "c", "a"]'),
    ("m", SCORES + ', "predicted": "a"'),
    ("m", SCORES + ', "predicted": [1]'),
    ("m", SCORES + ', "predicted": {}'),
])
def test_bad_served_lists_are_left_to_the_exact_decoder(model: str, body: str) -> None:
    raw = f'{{"prediction_id": "p", "model": "{model}", "timestamp": "2026-03-01T12:00:00Z", {body}}}'.encode()
    assert check_batch(FAST, EXACT, CONFIG, REFERENCES, [raw], "prediction") == 0
    with pytest.raises(InvalidEvent):
        EXACT.decode_prediction(raw)


@pytest.mark.parametrize("ts", [
    "2026-03-01t12:00:00Z", "2026-03-01T12:00:00z", "2026-03-01T12:00:00", "2026-03-01T12:00:00.1234567Z",
    "2026-03-01T12:00:00.1Z", "2026-03-01 12:00:00Z", "2023-02-29T00:00:00Z", "2026-03-01T12:00:60Z",
    "1999-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "2026-03-01T12:00:00+24:00",
])
def test_other_timestamps_are_left_to_the_exact_decoder(ts: str) -> None:
    raw = f'{{"prediction_id": "p", "model": "m", "timestamp": "{ts}", {SCORES}}}'.encode()
    assert check_batch(FAST, EXACT, CONFIG, REFERENCES, [raw], "prediction") == 0


@pytest.mark.parametrize("raw", [
    b'{"prediction_id": "p", "model": "m", "timestamp": "2026-03-01T12:00:00Z", "labels": ["a", "c"]}',
    b'{"labels": [], "model": "plain", "timestamp": "2026-03-01T12:00:00.000+01:00", "prediction_id": "\\"q\\""}',
    b'{"prediction_id": "p", "model": "m", "timestamp": "2026-03-01T12:00:00Z", "labels": ["c", "b", "a"], '
    b'"scores": "ignored", "predicted": null, "model_version": 5}',
])
def test_full_ground_truth_is_fast(raw: bytes) -> None:
    assert check_batch(FAST, EXACT, CONFIG, REFERENCES, [raw], "ground_truth") == 1


@pytest.mark.parametrize(("model", "labels"), [
    ("m", '{"a": 1}'), ("m", '{"b": 0, "a": true}'), ("m", '{"a": false, "b": 1, "c": 0}'),
    ("plain", '{"c": 1, "\\u0062": 0}'), ("bin", '{"a": 0}'), ("bin", '["a"]'), ("bin", "[]"),
    ("mc", '["b"]'), ("mc", '["\\u0063"]'),
])
def test_partial_binary_and_multiclass_ground_truth_is_fast(model: str, labels: str) -> None:
    raw = f'{{"prediction_id": "p", "model": "{model}", "timestamp": 1772366400000, "labels": {labels}}}'.encode()
    assert check_batch(FAST, EXACT, CONFIG, REFERENCES, [raw], "ground_truth") == 1


@pytest.mark.parametrize(("model", "labels"), [
    ("m", "{}"), ("m", '{"a": 2}'), ("m", '{"a": 1.0}'), ("m", '{"a": "1"}'), ("m", '{"a": null}'),
    ("m", '{"d": 1}'), ("m", '{"a": 1, "a": 1}'), ("mc", '{"a": 1}'), ("mc", "[]"), ("mc", '["a", "b"]'),
    ("bin", '{"b": 1}'),
])
def test_odd_ground_truth_is_left_to_the_exact_decoder(model: str, labels: str) -> None:
    raw = f'{{"prediction_id": "p", "model": "{model}", "timestamp": 1772366400, "labels": {labels}}}'.encode()
    assert check_batch(FAST, EXACT, CONFIG, REFERENCES, [raw], "ground_truth") == 0


# --- hypothesis: hostile and near-valid events --------------------------------------------------------------

NUMBERS = st.one_of(
    st.floats(0, 1).map(repr),
    st.sampled_from([
        "0", "1", "2", "-0", "-0.0", "0.0", "1.0", "1E0", "5e-1", "0.5e0", "1e400", "-1e400", "1e-400", "-1e-400",
        "1.0000000000000001", "0.99999999999999999999", "0.1000000000000000055511151231257827021181583404541015625",
        "18446744073709551616", "18446744073709551615", "-9223372036854775809", "9223372036854775807", "1e18",
        "9.3e18", "1e300", "0.30000000000000004", "true", "false", "null", '"0.5"', "[]", "{}", "NaN", "Infinity",
        "-Infinity", "01", "1.", ".5", "-", "+1", "0x10",
    ]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(2 ** 70), 2 ** 70).map(str),
    st.from_regex(r"-?(0|[1-9][0-9]{0,22})(\.[0-9]{1,22})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
)
STRINGS = st.one_of(
    st.text(max_size=12).map(json.dumps),
    st.text(max_size=12).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.sampled_from(['"\\ud800"', '"a\\udc00"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\""', '"en"', '"de"', '"1"',
                     '"True"', '"\\u0065n"', '"\x01"', '"\\x"']),
)
SCALARS = st.one_of(NUMBERS, STRINGS)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(STRINGS, inner), max_size=3).map(lambda ps: "{" + ",".join(f"{k}:{v}" for k, v in ps) + "}"),
    ),
    max_leaves=6,
)


def mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any], odds: int = 8) -> st.SearchStrategy[Any]:
    """`valid` `odds` times in `odds + 1`, else `hostile`: most events stay near-valid, so that the fast
    path accepts many and each has only one or two odd parts."""
    return st.integers(0, odds).flatmap(lambda i: valid if i else hostile)


SCORE = mostly(st.one_of(st.floats(0, 1).map(repr), st.sampled_from(["0", "1"])), NUMBERS, odds=20)


def key(name: str) -> str:
    return json.dumps(name)


@st.composite
def timestamp(draw: st.DrawFn) -> str:
    shape = draw(st.integers(0, 30))
    if shape == 0:
        return draw(st.sampled_from(["1767225600", "1767225600000", "1767225600.5", "null", "true", '"2026-01-01"',
                                     '""', '"2026-03-01T12:00:00Z "', "[]", "-0", "-1767225600", "1e11",
                                     "99999999999", "4102444800", "4102444799999", "946684800000", "1e400"]))
    if shape <= 4:  # epoch seconds or milliseconds, around the edges too
        seconds = draw(st.one_of(st.floats(9e8, 4.2e9), st.integers(9 * 10**8, 42 * 10**8)))
        scale = draw(st.sampled_from([1, 1000]))
        return repr(seconds * scale) if draw(st.booleans()) else str(int(seconds * scale))
    odd = st.sampled_from
    year = draw(mostly(odd([2026, 2024, 2000, 2099]), odd([1999, 2100, 2023, 1970, 0])))
    month = draw(mostly(st.integers(1, 12), odd([0, 13, 2, 12, 1])))
    day = draw(mostly(st.integers(1, 28), odd([0, 29, 30, 31, 32, 1])))
    hour = draw(mostly(st.integers(0, 23), odd([0, 23, 24])))
    minute = draw(mostly(st.integers(0, 59), odd([0, 59, 60])))
    second = draw(mostly(st.integers(0, 59), odd([0, 59, 60])))
    sep = draw(mostly(st.just("T"), odd("t ")))
    frac = draw(mostly(odd(["", ".000", ".123", ".999", ".123456", ".000001", ".999999"]),
                       odd([".1", ".12", ".1234", ".12345", ".1234567", "."])))
    offset = draw(mostly(odd(["Z", "+00:00", "-00:00", "+05:30", "-05:30", "+23:59", "-23:59", "+01:00"]),
                         odd(["z", "", "+24:00", "+0530", "+05", "+05:30:00", "+05:60", "Z "])))
    return json.dumps(f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}{frac}{offset}")


IDS = mostly(
    st.one_of(st.sampled_from(['"p1"', '"p2"']), st.text(min_size=1, max_size=12).map(json.dumps),
              st.text(min_size=1, max_size=12).map(lambda s: json.dumps(s, ensure_ascii=False))),
    st.one_of(STRINGS, st.sampled_from(['""', json.dumps("x" * 256), json.dumps("x" * 257),
                                        json.dumps("\u00e9" * 256), json.dumps("\u00e9" * 128), "5", "null",
                                        '["p"]'])),
)
MODELS = mostly(st.sampled_from(['"m"', '"plain"', '"\\u006d"', '"mc"', '"bin"']),
                st.sampled_from(['"nope"', "5", "null"]))


@st.composite
def obj(draw: st.DrawFn, pairs: list[tuple[str, str]]) -> str:
    """An object of these pairs in any order, rarely with one repeated (same or another value)."""
    if pairs and draw(st.integers(0, 25)) == 0:
        k, v = draw(st.sampled_from(pairs))
        pairs = [*pairs, (k, draw(st.sampled_from([v, "null", "0"])))]
    pairs = draw(st.permutations(pairs))
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


@st.composite
def scores(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 40)) == 0:
        return draw(st.sampled_from(["null", "[]", '"a"', "5", "{}"]))
    pairs = [(key(label), draw(SCORE)) for label in LABELS if draw(st.integers(0, 40))]
    if draw(st.integers(0, 5)) == 0:
        pairs += draw(st.lists(st.tuples(st.one_of(st.sampled_from([key("x"), key("d")]), STRINGS), JUNK),
                               min_size=1, max_size=2))
    if draw(st.integers(0, 40)) == 0:
        pairs.append(('"\\u0061"', draw(SCORE)))  # "a" spelled with an escape: a duplicate key
    return draw(obj(pairs))


NUMERIC_VALUES = mostly(st.one_of(st.floats(-1e6, 1e6).map(repr), st.integers(-1000, 1000).map(str),
                                  st.just("null")), st.one_of(NUMBERS, STRINGS))
CATEGORICAL_VALUES = mostly(st.sampled_from(['"en"', '"de"', '"1"', '"True"', '"x"', "1", "-3", "7", "true",
                                             "false", "null", '"\\u0065n"']),
                            st.one_of(st.sampled_from(["[1]", '{"x": 1}', "1.0", "-0"]), NUMBERS, STRINGS))


@st.composite
def features(draw: st.DrawFn) -> str:
    shape = draw(st.integers(0, 60))
    if shape == 0:
        return draw(st.sampled_from(["null", "[]", '"f"', "5"]))
    if shape == 1:
        n = draw(st.sampled_from([1023, 1024]))  # with "c": at the exact decoder's limit, or one past it
        return "{" + ",".join([f'"k{i}": {i}' for i in range(n)] + ['"c": "en"']) + "}"
    names = draw(st.lists(st.sampled_from(["n", "n2", "c", "c2", "other"]), max_size=5, unique=True))
    pairs = [(key(name), draw(NUMERIC_VALUES if name.startswith("n") else
                              JUNK if name == "other" else CATEGORICAL_VALUES)) for name in names]
    return draw(obj(pairs))


@st.composite
def prediction(draw: st.DrawFn) -> bytes:
    pairs = [(key("prediction_id"), draw(IDS)), (key("model"), draw(MODELS)), (key("timestamp"), draw(timestamp()))]
    if draw(st.integers(0, 40)):
        pairs.append((key("scores"), draw(scores())))
    optional = {
        "model_version": mostly(st.sampled_from(['"v1"', '"v2"', json.dumps("v" * 64), json.dumps("\u00e9" * 32)]),
                                st.one_of(st.sampled_from(['""', "null", "5", json.dumps("v" * 65),
                                                           json.dumps("\u00e9" * 40)]), STRINGS)),
        "features": features(),
        "latency_ms": mostly(st.one_of(st.floats(0, 1e5).map(repr), st.integers(0, 10**6).map(str),
                                       st.just("null")),
                             st.one_of(NUMBERS, st.sampled_from(["-1", "-0", "-0.0", "true", '"5"']))),
        "predicted": mostly(
            st.lists(st.sampled_from([key("a"), key("b"), key("c")]), max_size=3, unique=True).map(
                lambda xs: "[" + ",".join(xs) + "]"),
            st.one_of(st.sampled_from(["null", '["a", "a"]', '["d"]', '["a", "b", "c", "a"]', '"a"', "[1]", "{}",
                                       '["\\u0061"]']), JUNK)),
        "labels": JUNK,
        "extra": JUNK,
    }
    for name, values in optional.items():
        if draw(st.integers(0, 19)) < (1 if name in ("labels", "extra") else 5 if name == "predicted" else 10):
            pairs.append((key(name), draw(values)))
    return mutate(draw, draw(obj(pairs)))


@st.composite
def ground_truth(draw: st.DrawFn) -> bytes:
    pairs = [(key("prediction_id"), draw(IDS)), (key("model"), draw(MODELS)), (key("timestamp"), draw(timestamp()))]
    label = mostly(st.sampled_from([key("a"), key("b"), key("c")]),
                   st.sampled_from([key("d"), '"\\u0062"', "5", "null", '"A"']), odds=12)
    value = mostly(st.sampled_from(["0", "1", "true", "false"]),
                   st.sampled_from(["2", "-0", "1.0", "0.0", "null", '"1"', "[]", "-1"]), odds=12)
    partial = st.lists(st.tuples(label, value), min_size=1, max_size=4).map(
        lambda ps: "{" + ",".join(f"{k}:{v}" for k, v in ps) + "}")
    labels = mostly(
        st.one_of(st.lists(label, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"), partial,
                  label.map(lambda x: f"[{x}]")),  # one class: what a multiclass truth holds
        st.sampled_from(['{"a": 1}', '{"a": 1, "b": 0, "c": true}', "null", '"a"', "{}", "[]"]),
    )
    if draw(st.integers(0, 40)):
        pairs.append((key("labels"), draw(labels)))
    for name in ("scores", "predicted", "model_version", "extra"):
        if draw(st.integers(0, 9)) == 0:
            pairs.append((key(name), draw(JUNK)))
    return mutate(draw, draw(obj(pairs)))


def mutate(draw: st.DrawFn, text: str) -> bytes:
    """Rarely break the message as a whole: not an object, bad UTF-8, cut, trailing bytes, oversized."""
    raw = text.encode("utf-8", "surrogatepass")
    how = draw(st.integers(0, 80))
    if how == 0:
        return b"[" + raw + b"]"
    if how == 1:
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])) + raw[at:]
    if how == 2:
        return raw[:draw(st.integers(0, len(raw)))]
    if how == 3:
        return raw + draw(st.sampled_from([b" ", b"\n", b"x", b"{}", b"\xef\xbb\xbf"]))
    if how == 4:
        return b"\xef\xbb\xbf" + raw
    if how == 5:
        return raw[:-1] + b', "pad": "' + b"x" * (MAX_BYTES - len(raw) - draw(st.integers(8, 12))) + b'"}'
    if how == 6:
        return draw(st.sampled_from([b"null", b"5", b'"s"', b"[]", b"", b"{}"]))
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(prediction(), min_size=1, max_size=12))
def test_fast_predictions_decode_exactly(raws: list[bytes]) -> None:
    check_batch(FAST, EXACT, CONFIG, REFERENCES, raws, "prediction")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(ground_truth(), min_size=1, max_size=12))
def test_fast_ground_truth_decodes_exactly(raws: list[bytes]) -> None:
    check_batch(FAST, EXACT, CONFIG, REFERENCES, raws, "ground_truth")


def examples(strategy: st.SearchStrategy[bytes], n: int) -> list[bytes]:
    raws: list[bytes] = []

    # Derandomized: the same examples every run, so a reach check below cannot pass or fail by luck.
    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(strategy)
    def collect(raw: bytes) -> None:
        raws.append(raw)

    collect()
    return raws


@pytest.mark.parametrize(("kind", "strategy"), [("prediction", prediction()), ("ground_truth", ground_truth())])
def test_generators_reach_the_fast_path(kind: str, strategy: st.SearchStrategy[bytes]) -> None:
    """The properties above would pass vacuously if the fast path refused everything generated."""
    raws = examples(strategy, 600)
    accepted = check_batch(FAST, EXACT, CONFIG, REFERENCES, raws, kind)
    assert accepted >= len(raws) // 20, (accepted, len(raws))
    # ... and every shape the fast path takes is among what it accepted.
    out = (FAST.predictions if kind == "prediction" else FAST.ground_truth)(raws)
    taken = [orjson.loads(raw) for raw, m in zip(raws, out["model"].tolist(), strict=True) if m >= 0]
    shapes = {
        "epoch timestamp": any(not isinstance(e["timestamp"], str) for e in taken),
        "multiclass": any(e["model"] == "mc" for e in taken),
    }
    if kind == "prediction":  # (binary ground truth is rare here: the hand-written cases above cover it)
        shapes["binary"] = any(e["model"] == "bin" for e in taken)
        shapes["served list"] = any(isinstance(e.get("predicted"), list) for e in taken)
    else:
        shapes["partial labels"] = any(isinstance(e["labels"], dict) for e in taken)
    assert all(shapes.values()), shapes


# --- construction -------------------------------------------------------------------------------------------


def test_bad_models_are_refused() -> None:
    good = native_models(CONFIG, REFERENCES)
    with pytest.raises(ValueError, match="thresholds"):
        _native.Decoder(100, [{**good[0], "thresholds": [0.5]}])
    with pytest.raises(ValueError, match="distinct"):
        _native.Decoder(100, [good[0], good[0]])
    with pytest.raises(ValueError, match="other_bin"):
        _native.Decoder(100, [{**good[0], "other_bin": []}])
    with pytest.raises(TypeError):
        FAST.predictions([b"{}", "not bytes"])


# --- mapped inputs (docs/attach.md): simple paths read by the fast path ------------------------------------


def mapped_config(pred_fields: dict[str, Any], gt_fields: dict[str, Any]) -> MonitorConfig:
    features = {"numeric": ["n", "n2"], "categorical": ["c", "c2"]}
    return parse_config({
        "kafka": {"max_message_bytes": MAX_BYTES},
        "windows": ["5m", "1h"],
        "models": [
            {"name": "m", "labels": LABELS, "thresholds": {"b": 0.25}, "features": features,
             "input": {"predictions": {"topic": "log", "fields": pred_fields},
                       "ground_truth": {"topic": "review", "fields": gt_fields}}},
            {"name": "bin", "task": "binary", "labels": ["a"], "features": features,
             "input": {"predictions": {"topic": "bin-log", "fields": {**pred_fields, "model": "'bin'"}}}},
        ],
    })


PER_FEATURE = {"model": "kind", "prediction_id": "id", "timestamp": "meta.t", "model_version": "v",
               "scores": "out[0].data", "score_labels": "out[0].names", "predicted": "served",
               "features": {"n": "req.n", "n2": "req.deep[1].n2", "c": "req.c", "c2": "c2"}, "latency_ms": "t.ms"}
ALIGNED = {"model": "kind", "prediction_id": "id", "timestamp": "meta.t", "model_version": "v",
           "scores": "out[0].data", "predicted": "served", "features": "req", "latency_ms": "t.ms"}
GT_FIELDS = {"model": "'m'", "prediction_id": "rid", "timestamp": "at", "labels": "gold"}
MAPPED = {name: mapped_config(fields, GT_FIELDS) for name, fields in (("per-feature", PER_FEATURE),
                                                                     ("aligned", ALIGNED))}


def mapped_engine(name: str) -> Any:
    from monitor.engine.engine import Engine

    return Engine(MAPPED[name], use_native=True)


def check_mapped(engine: Any, side: str, topic: str, raws: list[bytes]) -> int:
    """Every message the fast path read decodes, through the exact reader, to the same values."""
    reading = engine.fast_readings[(side, topic)]
    out = (engine.fast.predictions if side == "predictions" else engine.fast.ground_truth)(raws, reading)
    reader = engine.readers[(side, topic)]
    for i, raw in enumerate(raws):
        m = int(out["model"][i])
        if m < 0:
            continue
        ev = reader.decode(raw)
        assert not isinstance(ev, InvalidEvent), f"fast path read what the exact reader rejects ({ev}): {raw!r}"
        assert ev is not None
        cfg, block, row = engine.config.models[m], out["blocks"][m], int(out["row"][i])
        assert ev.model == cfg.name and block["ids"][row] == ev.prediction_id
        assert bits(block["ts"][row]) == bits(ev.ts), raw
        if isinstance(ev, Prediction):
            compare_prediction(ev, block, row, cfg, None, raw)
        else:
            assert block["known"][row].tolist() == ev.known.tolist(), raw
            assert block["actual"][row].tolist() == ev.actual.tolist(), raw
            assert bool(block["full"][row]) == ev.full, raw
    return int((out["model"] >= 0).sum())


GOOD_PER_FEATURE = {"kind": "m", "id": "r1", "meta": {"t": 1795000000000}, "v": "v2",
                    "out": [{"data": [0.1, 0.9, 0.3], "names": ["c", "a", "b"]}], "served": [1, 0, 1],
                    "req": {"n": 3, "c": "en", "deep": [{}, {"n2": 1.5}]}, "c2": True, "t": {"ms": 12.5}}


@pytest.mark.parametrize("change", [
    {}, {"served": None}, {"served": "b"}, {"served": ["c", "a"]}, {"served": []}, {"served": [0, 0, 0]},
    {"served": [True, False, True]}, {"v": None}, {"t": None}, {"t": {"ms": None}},
    {"meta": {"t": "2026-11-20T10:00:00Z"}}, {"req": None, "c2": None}, {"req": {"n": None, "deep": []}},
    {"out": [{"data": [0, 1, 0.5], "names": ["a", "b", "c"]}, "ignored"]},
    {"extra": {"kind": "x", "id": 5}},
])
def test_mapped_predictions_are_fast(change: dict[str, Any]) -> None:
    engine = mapped_engine("per-feature")
    body = {**GOOD_PER_FEATURE, **change}
    assert check_mapped(engine, "predictions", "log", [orjson.dumps(body)]) == 1, body


@pytest.mark.parametrize("change", [
    {"kind": "other"}, {"kind": None}, {"id": 5}, {"id": None}, {"meta": {"t": [1]}}, {"v": 7},
    {"out": [{"data": [0.1, 0.9], "names": ["c", "a", "b"]}]},
    {"out": [{"data": [0.1, 0.9, 0.3], "names": ["c", "a"]}]},
    {"out": [{"data": [0.1, 0.9, 0.3], "names": ["c", "a", "a"]}]}, {"out": [{"data": [0.1, 0.9, 0.3]}]},
    {"out": [{"data": "0.1", "names": ["c", "a", "b"]}]}, {"served": [1, 0]}, {"served": [1, 0, 2]},
    {"served": 1}, {"served": {"a": 1}}, {"served": ["a", 1]}, {"req": {"n": "3"}}, {"c2": [1]},
])
def test_odd_mapped_predictions_are_left_to_the_exact_reader(change: dict[str, Any]) -> None:
    engine = mapped_engine("per-feature")
    body = {**GOOD_PER_FEATURE, **change}
    assert check_mapped(engine, "predictions", "log", [orjson.dumps(body)]) == 0, body


def test_mapped_repeats_and_negative_zero_are_left_to_the_exact_reader() -> None:
    engine = mapped_engine("per-feature")
    good = orjson.dumps(GOOD_PER_FEATURE)
    assert check_mapped(engine, "predictions", "log", [good]) == 1
    for raw in (good[:-1] + b',"id":"r2"}', good.replace(b'"served":[1,0,1]', b'"served":[1,-0,1]'),
                good.replace(b'"req":{', b'"req":{"n":4,')):
        assert check_mapped(engine, "predictions", "log", [raw]) == 0, raw
    # a repeated key off every path changes nothing anyone reads
    assert check_mapped(engine, "predictions", "log", [good[:-1] + b',"zz":1,"zz":2}']) == 1


@pytest.mark.parametrize("gold", [[1, 0, 1], ["a"], "b", {"a": 1, "c": False}, [], [True, True, True]])
def test_mapped_ground_truth_is_fast(gold: Any) -> None:
    engine = mapped_engine("aligned")
    raw = orjson.dumps({"rid": "r1", "at": "2026-11-20T10:00:00Z", "gold": gold})
    assert check_mapped(engine, "ground_truth", "review", [raw]) == 1


@pytest.mark.parametrize("gold", [[1, 0], [2, 0, 1], 7, [["a"]], None, {}, ["a", 1], {"x": 1}])
def test_odd_mapped_ground_truth_is_left_to_the_exact_reader(gold: Any) -> None:
    engine = mapped_engine("aligned")
    raw = orjson.dumps({"rid": "r1", "at": "2026-11-20T10:00:00Z", "gold": gold})
    assert check_mapped(engine, "ground_truth", "review", [raw]) == 0


def test_mapped_binary_scores_and_flags() -> None:
    engine = mapped_engine("aligned")
    base = {"id": "r1", "meta": {"t": 1795000000}, "out": [{"data": 0.7}]}
    for extra in ({}, {"served": 1}, {"served": False}, {"served": ["a"]}, {"req": {"n": 1, "c": 2}}):
        assert check_mapped(engine, "predictions", "bin-log", [orjson.dumps({**base, **extra})]) == 1, extra
    for extra in ({"served": 2}, {"out": [{"data": True}]}, {"out": [{"data": "0.7"}]}, {"req": [1]}):
        assert check_mapped(engine, "predictions", "bin-log", [orjson.dumps({**base, **extra})]) == 0, extra


def test_paths_through_one_another_and_envelopes_stay_exact() -> None:
    from monitor.engine.engine import Engine

    crossing = mapped_config({**ALIGNED, "prediction_id": "meta", "timestamp": "meta.t"}, GT_FIELDS)
    engine = Engine(crossing, use_native=True)
    assert ("predictions", "log") not in engine.fast_readings
    assert ("ground_truth", "review") in engine.fast_readings
    projected = mapped_config({**ALIGNED, "scores": "out[*].data | [0]"}, GT_FIELDS)
    assert ("predictions", "log") not in Engine(projected, use_native=True).fast_readings


MAPPED_VALUE = st.one_of(st.sampled_from(["null", "0", "1", "-0", "true", "false", "0.5", '"a"', '"b"', '"m"',
                                          '"r1"', "1795000000000", '"2026-11-20T10:00:00Z"', "[]", "{}"]),
                         JUNK)


@st.composite
def mapped_prediction(draw: st.DrawFn) -> bytes:
    """Near-valid bodies of the per-feature shape: a value replaced, a path broken, keys repeated."""
    body = json.loads(json.dumps(GOOD_PER_FEATURE))
    text = orjson.dumps(body).decode()
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.integers(0, 5))
        if how == 0:
            body[draw(st.sampled_from(sorted(body)))] = json.loads(draw(st.sampled_from(
                ["null", "0", "1", "[]", "{}", '"m"', "1795000000000"])))
        elif how == 1:
            body["served"] = json.loads(draw(st.sampled_from(["[0,1,1]", "[1]", '["a","a"]', '["c"]', "[]", "1",
                                                              "[true,false,false]", "[0,0,2]", '"a"'])))
        elif how == 2:
            body["out"] = [{**GOOD_PER_FEATURE["out"][0],
                            "data": [draw(st.floats(0, 1)) for _ in range(draw(st.integers(2, 4)))]}]
        elif how == 3:
            body["out"] = [{**GOOD_PER_FEATURE["out"][0],
                            "names": draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=2, max_size=4))}]
        elif how == 4:
            body["meta"] = {"t": draw(st.one_of(st.integers(9 * 10**11, 42 * 10**11), st.floats(9e8, 4.2e9)))}
        text = orjson.dumps(body).decode()
        if how == 5:  # raw edits: a repeated key, -0, a replaced value
            key_ = draw(st.sampled_from(['"id"', '"kind"', '"served"', '"n"', '"t"', '"zz"']))
            at = text.find(key_ + ":")
            if at >= 0:
                value = draw(MAPPED_VALUE)
                text = text[:at] + f"{key_}:{value}," + text[at:]
    return text.encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(mapped_prediction(), min_size=1, max_size=8))
def test_fast_mapped_predictions_decode_exactly(raws: list[bytes]) -> None:
    check_mapped(mapped_engine("per-feature"), "predictions", "log", raws)


def test_mapped_generator_reaches_the_fast_path() -> None:
    raws = examples(mapped_prediction(), 200)
    accepted = check_mapped(mapped_engine("per-feature"), "predictions", "log", raws)
    assert len(raws) // 10 <= accepted < len(raws), (accepted, len(raws))
