"""Hostile input: the event decoders, the join's memory bound and the relay's HTTP input under generated abuse.

What must hold whatever arrives:
- the engine never raises on input: every rejected event is counted under a reason of conventions.ALL_REASONS,
  the batch decoder's reason is the single-event decoder's, and good events interleaved with bad ones give
  exactly the figures they give alone;
- memory is bounded by `join.ttl` and `join.max_pending` however many distinct prediction ids arrive, and
  what the cap removes is counted (`mlmon_join_evicted_total`);
- the relay answers every request it cannot use with a 4xx and a JSON error, never a 5xx, and still accepts
  a valid request afterwards.

Generated cases (hypothesis) stay small per example so the file runs in well under a minute; the
million-id memory check runs in a subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor import conventions as c
from monitor.config import MonitorConfig, parse_config
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Engine
from monitor.engine.figures import Figures
from monitor.engine.join import JoinTable
from monitor.events import EPOCH_2000, EPOCH_2100, BatchDecoder, Decoder, InvalidEvent
from monitor.relay import RelayHandle, RelaySettings, sign_body, start_relay

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0
BASE = datetime(2026, 11, 20, tzinfo=UTC).timestamp()
NOW = BASE + 2 * DAY  # the engines' wall clock in these tests
SKEW = 3600.0
LABELS = ["a", "b", "c"]
CLASSES = ["x", "y", "z"]
MAX_BYTES = 1 << 20

CONFIG = parse_config({
    "windows": ["5m", "1h", "6h", "1d", "3d"],
    # A small cap, so the differential test below also runs through evictions.
    "join": {"ttl": "1d", "max_pending": 12, "max_clock_skew": "1h"},
    "models": [
        {"name": "m", "labels": LABELS, "thresholds": {"b": 0.3},
         "features": {"numeric": ["n"], "categorical": ["lang"]}},
        {"name": "mc", "task": "multiclass", "labels": CLASSES},
    ],
})
ANY = "any"  # a builder whose event must be rejected, for a reason it does not predict
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
          HealthCheck.function_scoped_fixture]


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=_QUIET)


def engine(config: MonitorConfig = CONFIG, use_native: bool | None = None) -> Engine:
    e = Engine(config, {m.name: None for m in config.models}, use_native)
    e.clock = lambda: NOW
    return e


def rfc3339(ts: float, offset: str = "Z") -> str:
    if offset == "Z":
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    return datetime.fromtimestamp(ts, datetime.fromisoformat(f"2000-01-01T00:00:00{offset}").tzinfo).isoformat()


def dumps(obj: Any) -> bytes:
    # json, not orjson: it writes NaN / Infinity literals and integers of any size, as hostile producers do.
    return json.dumps(obj, ensure_ascii=False, allow_nan=True).encode("utf-8")


# --- the oracle: one event, the single-event decoder, plus the engine's clock-skew rule -------------------
_ORACLE = Decoder(CONFIG)


def oracle(topic: str, raw: bytes) -> str | None:
    """None for an event the engine must accept, else the reason it must give."""
    decode = _ORACLE.decode_prediction if topic == PREDICTIONS else _ORACLE.decode_ground_truth
    try:
        event = decode(raw)
    except InvalidEvent as exc:
        return exc.reason
    return c.Reason.TIMESTAMP_OUT_OF_RANGE if event.ts > NOW + SKEW else None


# --- good events: valid, but with the awkward shapes producers really send ------------------------------
ids = st.one_of(st.integers(0, 30).map(lambda i: f"id-{i}"),
                st.sampled_from(["ид-ü-😀", "x" * 256, "a b\tc", "0", "\\u0000", "nul\x00id"]))
unit = st.one_of(st.floats(0, 1, allow_nan=False), st.sampled_from([0, 1, 0.0, 1.0, -0.0, 5e-324]))


@st.composite
def timestamp(draw: st.DrawFn, lo: float, hi: float) -> Any:
    ts = draw(st.floats(lo, hi, allow_nan=False))
    kind = draw(st.sampled_from(["z", "offset", "seconds", "int", "millis"]))
    if kind == "z":
        return rfc3339(ts)
    if kind == "offset":
        return rfc3339(ts, draw(st.sampled_from(["+05:30", "-08:00", "+00:00"])))
    if kind == "seconds":
        return ts
    if kind == "int":
        return int(ts)
    return int(ts * 1000)


def event_time(lo: float, hi: float) -> st.SearchStrategy[Any]:
    # Mostly the recent past; now and then years back (valid, but older than every window: late).
    return st.one_of(timestamp(lo, hi), timestamp(lo, hi), timestamp(lo, hi),
                     timestamp(EPOCH_2000, EPOCH_2000 + 365 * DAY))


@st.composite
def prediction_obj(draw: st.DrawFn) -> dict[str, Any]:
    multiclass = draw(st.booleans())
    labels = CLASSES if multiclass else LABELS
    scores: dict[str, Any] = {label: draw(unit) for label in labels}
    # Huge score dicts: keys that are not configured labels are ignored (and counted), not an error.
    extra = draw(st.sampled_from([0, 0, 0, 3, 2000]))
    scores.update({f"junk{i}": i for i in range(extra)})
    obj: dict[str, Any] = {"prediction_id": draw(ids), "model": "mc" if multiclass else "m",
                           "timestamp": draw(event_time(BASE, BASE + 1.5 * DAY)), "scores": scores}
    if draw(st.booleans()):
        obj["model_version"] = draw(st.sampled_from(["v1", "v2", "v" * 64]))
    if draw(st.booleans()):
        obj["predicted"] = [draw(st.sampled_from(CLASSES))] if multiclass else \
            draw(st.lists(st.sampled_from(LABELS), unique=True))
    if not multiclass and draw(st.booleans()):
        obj["features"] = {"n": draw(st.one_of(st.none(), st.floats(-1e300, 1e300), st.integers(-10**18, 10**18))),
                           "lang": draw(st.one_of(st.none(), st.sampled_from(["en", "de", "🦜", ""]),
                                                         st.integers(-(1 << 63), (1 << 63) - 1))),
                           # Unwatched features may hold anything, nested deep (within the parser's limit).
                           "blob": draw(st.integers(1, 200).map(lambda d: json.loads("[" * d + "]" * d)))}
    if draw(st.booleans()):
        obj["latency_ms"] = draw(st.floats(0, 1e12))
    if draw(st.booleans()):
        obj["unknown_top_level"] = {"k": [1, "two", None]}
    return obj


@st.composite
def ground_truth_obj(draw: st.DrawFn) -> dict[str, Any]:
    multiclass = draw(st.booleans())
    # Clock skew between the topics: truth stamped a day before any prediction, or two days after.
    obj: dict[str, Any] = {"prediction_id": draw(ids), "model": "mc" if multiclass else "m",
                           "timestamp": draw(event_time(BASE - DAY, BASE + 2 * DAY))}
    if multiclass:
        obj["labels"] = [draw(st.sampled_from(CLASSES))]
    elif draw(st.booleans()):
        obj["labels"] = draw(st.lists(st.sampled_from(LABELS), unique=True))
    else:
        obj["labels"] = draw(st.dictionaries(st.sampled_from(LABELS), st.sampled_from([0, 1, True, False]),
                                             min_size=1))
    return obj


good_event = st.one_of(prediction_obj().map(lambda o: (PREDICTIONS, dumps(o))),
                       ground_truth_obj().map(lambda o: (GROUND_TRUTH, dumps(o))))


# --- bad events: each builder says which reason it must get (or ANY) -------------------------------------
Bad = tuple[str, bytes, str]
topics = st.sampled_from([PREDICTIONS, GROUND_TRUTH])


def base_obj(topic: str) -> dict[str, Any]:
    if topic == PREDICTIONS:
        return {"prediction_id": "p", "model": "m", "model_version": "v1", "timestamp": rfc3339(BASE),
                "scores": {"a": 0.1, "b": 0.5, "c": 0.9}}
    return {"prediction_id": "p", "model": "m", "timestamp": rfc3339(BASE), "labels": ["a"]}


def with_field(topic: str, key: str, value: Any, reason: str, *, drop: bool = False) -> Bad:
    obj = base_obj(topic)
    if drop:
        obj.pop(key)
    else:
        obj[key] = value
    return topic, dumps(obj), reason


@st.composite
def oversized(draw: st.DrawFn) -> Bad:
    topic = draw(topics)
    pad = b"x" * (MAX_BYTES + draw(st.integers(0, 4096)))
    return topic, dumps(base_obj(topic))[:-1] + b', "padding": "' + pad + b'"}', c.Reason.OVERSIZED


@st.composite
def deeply_nested(draw: st.DrawFn) -> Bad:
    # Past orjson's 1024 levels; with a NaN literal somewhere the stdlib parser runs and hits its own limit.
    depth = draw(st.sampled_from([5000, 100_000]))
    opener = draw(st.sampled_from(["[", '{"a":', '[{"b":[']))
    closed = draw(st.booleans())
    nan = draw(st.booleans())
    body = opener * depth + ("NaN" if nan else "1")
    if closed:
        body += {"[": "]", '{"a":': "}", '[{"b":[': "]}]"}[opener] * depth
    if draw(st.booleans()):  # inside an otherwise valid event
        inner = dumps(base_obj(PREDICTIONS))[:-1] + b', "features": {"blob": ' + body.encode() + b"}}"
        return PREDICTIONS, inner, c.Reason.INVALID_JSON
    return draw(topics), body.encode(), c.Reason.INVALID_JSON


BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"]


@st.composite
def invalid_utf8(draw: st.DrawFn) -> Bad:
    topic = draw(topics)
    raw = dumps(base_obj(topic))
    at = draw(st.integers(0, len(raw)))
    return topic, raw[:at] + draw(st.sampled_from(BAD_UTF8)) + raw[at:], c.Reason.INVALID_UTF8


@st.composite
def not_an_object(draw: st.DrawFn) -> Bad:
    value = draw(st.one_of(st.lists(st.integers(), max_size=3), st.text(max_size=10), st.integers(), st.none(),
                           st.booleans(), st.floats(allow_nan=False, allow_infinity=False)))
    return draw(topics), dumps(value), c.Reason.NOT_AN_OBJECT


@st.composite
def garbage(draw: st.DrawFn) -> Bad:
    raw = draw(st.one_of(st.binary(max_size=64), st.sampled_from([b"", b" ", b"{", b"}", b"\x00", b"nul",
                                                                  b'{"prediction_id":'])))
    return draw(topics), raw, ANY


@st.composite
def huge_label_sets(draw: st.DrawFn) -> Bad:
    n = draw(st.sampled_from([4, 50, 3000]))
    known = draw(st.integers(0, 4))  # how many in four name a configured label
    names = [LABELS[i % 3] if i % 4 < known else f"label{i}" for i in range(n)]
    case = draw(st.sampled_from(["predicted", "labels", "partial", "one_unknown", "twice"]))
    if case == "predicted":
        return with_field(PREDICTIONS, "predicted", names, c.Reason.INVALID_LABELS)
    if case == "labels":
        return with_field(GROUND_TRUTH, "labels", names, c.Reason.INVALID_LABELS)
    if case == "partial":
        return with_field(GROUND_TRUTH, "labels", {f"unknown{i}": 1 for i in range(n)}, c.Reason.UNKNOWN_LABEL)
    if case == "one_unknown":
        topic = draw(topics)
        key = "predicted" if topic == PREDICTIONS else "labels"
        return with_field(topic, key, ["a", "zzz"], c.Reason.UNKNOWN_LABEL)
    topic = draw(topics)
    return with_field(topic, "predicted" if topic == PREDICTIONS else "labels", ["a", "a"], c.Reason.INVALID_LABELS)


@st.composite
def bad_timestamp(draw: st.DrawFn) -> Bad:
    out_of_range = c.Reason.TIMESTAMP_OUT_OF_RANGE
    cases: list[tuple[Any, str]] = [
        (draw(st.floats(0, EPOCH_2000, exclude_max=True)), out_of_range),
        (draw(st.floats(EPOCH_2100, 1e11, exclude_max=True)), out_of_range),
        (draw(st.floats(-1e300, -1e-9)), out_of_range),
        (draw(st.integers(10**11, int(EPOCH_2000 * 1000) - 1)), out_of_range),  # milliseconds before 2000
        (draw(st.floats(EPOCH_2100 * 1000, 1e300)), out_of_range),
        (f"{draw(st.integers(1000, 1999))}-06-01T00:00:00Z", out_of_range),
        (f"{draw(st.integers(2100, 9999))}-06-01T00:00:00+00:00", out_of_range),
        # Inside 2000-2100 but past the wall clock + join.max_clock_skew: would blind every window.
        (rfc3339(draw(st.floats(NOW + SKEW + 1, EPOCH_2100 - 1))), out_of_range),
        (draw(st.floats(NOW + SKEW + 1, EPOCH_2100 - 1)), out_of_range),
        ("2026-11-20T00:00:00", c.Reason.BAD_TIMESTAMP),  # no offset
        (draw(st.sampled_from(["yesterday", "", "2026-13-40T00:00:00Z", "１２３"])), c.Reason.BAD_TIMESTAMP),
        (float("nan"), c.Reason.BAD_TIMESTAMP),
        (float("inf"), c.Reason.BAD_TIMESTAMP),
        (10**400, c.Reason.BAD_TIMESTAMP),  # an integer no float can hold
        (draw(st.sampled_from([True, [], {}, [2026]])), c.Reason.WRONG_TYPE),
        (None, c.Reason.MISSING_FIELD),
    ]
    value, reason = draw(st.sampled_from(cases))
    topic = draw(topics)
    raw = with_field(topic, "timestamp", value, reason)[1]
    if value == 10**400:
        raw = raw[:-1] + b', "pad": NaN}'  # orjson refuses NaN, so the stdlib parser sees the integer whole
    return topic, raw, reason


@st.composite
def bad_scores(draw: st.DrawFn) -> Bad:
    scores: Any = {"a": 0.1, "b": 0.5, "c": 0.9}
    case = draw(st.integers(0, 9))
    if case == 0:
        del scores[draw(st.sampled_from(LABELS))]
        reason = c.Reason.MISSING_SCORE
    elif case == 1:
        scores[draw(st.sampled_from(LABELS))] = draw(st.one_of(st.floats(1, 1e308, exclude_min=True),
                                                               st.floats(-1e308, -1e-300)))
        reason = c.Reason.SCORE_OUT_OF_RANGE
    elif case == 2:
        scores[draw(st.sampled_from(LABELS))] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        reason = c.Reason.SCORE_NOT_FINITE
    elif case == 3:
        scores[draw(st.sampled_from(LABELS))] = draw(st.sampled_from(["0.5", True, [0.5], {"v": 0.5}]))
        reason = c.Reason.WRONG_TYPE
    elif case == 4:
        scores[draw(st.sampled_from(LABELS))] = None
        reason = c.Reason.MISSING_SCORE
    elif case == 5:
        scores = draw(st.sampled_from([[0.1, 0.5, 0.9], "a=0.1", 3]))
        reason = c.Reason.WRONG_TYPE
    elif case == 6:  # huge score dict that still lacks a configured label
        scores = {f"junk{i}": 0.5 for i in range(draw(st.sampled_from([10, 5000])))} | {"a": 0.1, "b": 0.2}
        reason = c.Reason.MISSING_SCORE
    elif case == 7:
        scores["a"] = 10**400
        return PREDICTIONS, dumps({**base_obj(PREDICTIONS), "scores": scores, "pad": float("nan")}), \
            c.Reason.SCORE_NOT_FINITE
    elif case == 8:
        return with_field(PREDICTIONS, "scores", None, c.Reason.MISSING_FIELD, drop=True)
    else:
        scores["c"] = 1e400  # the literal overflows to inf in the stdlib parser, is refused by orjson
        return PREDICTIONS, dumps({**base_obj(PREDICTIONS), "scores": scores}).replace(b"Infinity", b"1e400"), ANY
    return with_field(PREDICTIONS, "scores", scores, reason)


@st.composite
def bad_identity(draw: st.DrawFn) -> Bad:
    topic = draw(topics)
    cases: list[tuple[str, Any, str]] = [
        ("prediction_id", "", c.Reason.INVALID_PREDICTION_ID),
        ("prediction_id", "x" * draw(st.sampled_from([257, 100_000])), c.Reason.INVALID_PREDICTION_ID),
        ("prediction_id", draw(st.sampled_from([7, 1.5, True, ["p"], {"p": 1}])), c.Reason.WRONG_TYPE),
        ("prediction_id", None, c.Reason.MISSING_FIELD),
        ("model", "no-such-model", c.Reason.UNKNOWN_MODEL),
        ("model", draw(st.sampled_from([1, ["m"], {"m": 1}, False])), c.Reason.WRONG_TYPE),
        ("model", None, c.Reason.MISSING_FIELD),
    ]
    key, value, reason = draw(st.sampled_from(cases))
    return with_field(topic, key, value, reason, drop=value is None)


@st.composite
def bad_prediction_fields(draw: st.DrawFn) -> Bad:
    cases: list[tuple[str, Any, str]] = [
        ("model_version", draw(st.sampled_from(["", "v" * 65, 7, None, ["v1"]])), c.Reason.WRONG_TYPE),
        ("features", draw(st.sampled_from([[], "lang=en", 3])), c.Reason.INVALID_FEATURES),
        ("features", {"n": draw(st.sampled_from(["12", True, [1], float("nan")]))}, c.Reason.INVALID_FEATURES),
        ("features", {"lang": draw(st.sampled_from([{"x": 1}, ["en"], 1.5]))}, c.Reason.INVALID_FEATURES),
        ("features", {f"f{i}": i for i in range(1025)}, c.Reason.INVALID_FEATURES),
        ("latency_ms", draw(st.sampled_from([-1, -1e-9, "fast", True, float("inf"), float("nan")])),
         c.Reason.INVALID_LATENCY),
        ("predicted", draw(st.sampled_from(["a", {"a": 1}, 5])), c.Reason.WRONG_TYPE),
        ("predicted", [1, 2], c.Reason.WRONG_TYPE),
    ]
    key, value, reason = draw(st.sampled_from(cases))
    return with_field(PREDICTIONS, key, value, reason)


@st.composite
def bad_ground_truth_fields(draw: st.DrawFn) -> Bad:
    cases: list[tuple[Any, str]] = [
        ({}, c.Reason.INVALID_LABELS),
        ({"a": 2}, c.Reason.WRONG_TYPE),
        ({"a": "1"}, c.Reason.WRONG_TYPE),
        ({"a": 1.0}, c.Reason.WRONG_TYPE),
        ("a", c.Reason.WRONG_TYPE),
        (None, c.Reason.MISSING_FIELD),
        ([1], c.Reason.WRONG_TYPE),
    ]
    value, reason = draw(st.sampled_from(cases))
    return with_field(GROUND_TRUTH, "labels", value, reason, drop=value is None)


@st.composite
def bad_multiclass(draw: st.DrawFn) -> Bad:
    case = draw(st.integers(0, 3))
    if case == 0:
        obj = {**base_obj(PREDICTIONS), "model": "mc", "scores": {"x": 0.2, "y": 0.3, "z": 0.5},
               "predicted": ["x", "y"]}
        return PREDICTIONS, dumps(obj), c.Reason.INVALID_LABELS
    labels: Any = [["x", "y"], [], {"x": 1}][case - 1]
    return GROUND_TRUTH, dumps({**base_obj(GROUND_TRUTH), "model": "mc", "labels": labels}), c.Reason.INVALID_LABELS


@st.composite
def lone_surrogates(draw: st.DrawFn) -> Bad:
    # orjson refuses a lone \ud800; the stdlib parser (reached through a NaN literal) would accept it, and
    # such an id or version would later break every checkpoint and every scrape.
    topic = draw(topics)
    key = draw(st.sampled_from(["prediction_id", "model_version"] if topic == PREDICTIONS else ["prediction_id"]))
    obj = {**base_obj(topic), key: "p\ud800" if draw(st.booleans()) else "\udfff"}
    raw = json.dumps(obj).encode()  # ASCII: the surrogate travels as a \u escape, as JSON allows
    if draw(st.booleans()):
        raw = raw[:-1] + b', "pad": NaN}'
    return topic, raw, c.Reason.INVALID_JSON


@st.composite
def mutated(draw: st.DrawFn) -> Bad:
    """Byte-level damage to a valid event; the oracle decides whether it is still valid."""
    topic = draw(topics)
    raw = bytearray(dumps(base_obj(topic)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["flip", "drop", "insert"]))
        if op == "flip":
            raw[at] = draw(st.integers(0, 255))
        elif op == "drop":
            del raw[at]
        else:
            raw[at:at] = draw(st.sampled_from([b'"', b"\\", b"{", b"]", b",", b"\x00", b"\\u0000", b"9" * 30]))
    return topic, bytes(raw), "maybe"


bad_event = st.one_of(oversized(), deeply_nested(), invalid_utf8(), not_an_object(), garbage(), huge_label_sets(),
                      bad_timestamp(), bad_scores(), bad_identity(), bad_prediction_fields(),
                      bad_ground_truth_fields(), bad_multiclass(), lone_surrogates(), mutated())


# --- figures, compared exactly -----------------------------------------------------------------------
def comparable(figs: Figures) -> dict[Any, Any]:
    out: dict[Any, Any] = {(s.metric.name, s.labels): s.value for s in figs.samples
                           if s.metric is not c.INVALID_EVENTS_TOTAL}
    out.update({(h.metric.name, h.labels): (h.counts, h.sum) for h in figs.histograms})
    return out


def batches(items: list[Any], cuts: list[int]) -> Iterator[list[Any]]:
    edges = sorted({0, len(items), *(x % (len(items) + 1) for x in cuts)})
    for lo, hi in itertools.pairwise(edges):
        yield items[lo:hi]


# --- the decoders ------------------------------------------------------------------------------------
@fuzz(400)
@given(good=st.lists(good_event, max_size=30), bad=st.lists(bad_event, max_size=30), data=st.data())
def test_bad_events_are_counted_with_a_reason_and_good_ones_are_unaffected(
        good: list[tuple[str, bytes]], bad: list[Bad], data: st.DataObject) -> None:
    expected: list[tuple[str, bytes, str | None]] = []
    for topic, raw in good:
        assert oracle(topic, raw) is None, "the good-event generator made an invalid event"
        expected.append((topic, raw, None))
    for topic, raw, reason in bad:
        got = oracle(topic, raw)
        if reason == "maybe":
            expected.append((topic, raw, got))
            continue
        assert got is not None, f"accepted a hostile event: {raw[:200]!r}"
        assert reason in (ANY, got), (reason, got, raw[:200])
        expected.append((topic, raw, got))
    order = data.draw(st.permutations(range(len(expected))))
    stream = [expected[i] for i in order]
    cuts = data.draw(st.lists(st.integers(0, 10_000), max_size=4))

    mixed, clean = engine(), engine()
    rejected = []
    for chunk in batches(stream, cuts):
        rejected += mixed.process([(topic, raw) for topic, raw, _ in chunk])
        assert clean.process([(topic, raw) for topic, raw, reason in chunk if reason is None]) == []

    # The batch decoder (fast path, fallbacks) agrees with the single-event decoder on every event, in order.
    assert [(r.topic, r.raw, r.reason) for r in rejected] == [(t, raw, why) for t, raw, why in stream if why]
    assert all(r.reason in c.ALL_REASONS for r in rejected)
    assert sum(mixed.invalid.values()) == len(rejected)
    for r in rejected:  # details name a field, never echo the payload
        assert len(r.detail) < 200
    assert comparable(mixed.evaluate(NOW)) == comparable(clean.evaluate(NOW))
    counted = mixed.evaluate(NOW).by_name(c.INVALID_EVENTS_TOTAL.name)
    assert sum(counted.values()) == len(rejected)


@fuzz(3000)
@given(raw=st.one_of(st.binary(max_size=300), mutated().map(lambda b: b[1]), bad_event.map(lambda b: b[1]),
                     good_event.map(lambda g: g[1])))
def test_the_decoders_raise_nothing_but_invalid_event_and_agree(raw: bytes) -> None:
    decoder = Decoder(CONFIG)
    batch = BatchDecoder(decoder)
    for single, many in ((decoder.decode_prediction, batch.predictions),
                         (decoder.decode_ground_truth, batch.ground_truth)):
        try:
            want: Any = single(raw)
        except InvalidEvent as exc:
            assert exc.reason in c.ALL_REASONS
            want = exc.reason
        # Alone and in a batch with a valid event either side (the fast path must not leak state).
        for got in (many([raw])[0], many([dumps(base_obj(PREDICTIONS)), raw, dumps(base_obj(GROUND_TRUTH))])[1]):
            if isinstance(got, InvalidEvent):
                assert got.reason == want
            else:
                assert not isinstance(want, str), (want, raw[:200])
                assert (got.prediction_id, got.model, got.ts) == (want.prediction_id, want.model, want.ts)


def test_one_event_from_the_far_future_cannot_blind_the_monitor() -> None:
    """With join.max_clock_skew set, an event stamped 2099 is rejected; without it the watermark would
    jump there, expiring every pending join and every window block."""
    obj = base_obj(PREDICTIONS)
    e = engine()
    e.process([(PREDICTIONS, dumps(obj))])
    rejected = e.process([(PREDICTIONS, dumps({**obj, "prediction_id": "future",
                                               "timestamp": "2099-12-31T00:00:00Z"}))])
    assert [r.reason for r in rejected] == [c.Reason.TIMESTAMP_OUT_OF_RANGE]
    assert "ahead of the clock" in rejected[0].detail
    figs = e.evaluate(NOW)
    assert figs.by_name(c.PENDING_JOINS.name)[("m", c.SIDE_PREDICTION)] == 1
    assert figs.by_name(c.WINDOW_PREDICTIONS.name)[("m", "v1", "3d")] == 1


# --- the join under id floods ------------------------------------------------------------------------
@fuzz(150)
@given(events=st.lists(good_event, max_size=80), cap=st.integers(1, 12), cuts=st.lists(st.integers(0, 999),
                                                                                        max_size=3))
def test_join_invariants_hold_under_skewed_clocks_duplicates_and_the_cap(events: list[tuple[str, bytes]], cap: int,
                                                                          cuts: list[int]) -> None:
    config = parse_config({**CONFIG.model_dump(mode="json", exclude_none=True),
                           "join": {"ttl": "1d", "max_pending": cap, "max_clock_skew": "1h"}})
    e = engine(config)
    for chunk in batches(events, cuts):
        assert e.process(chunk) == []
        for state in e.models.values():
            join = state.join
            assert len(join) <= cap
            _, entries = join.export()
            assert join.pending[c.SIDE_PREDICTION] == np.sum(entries["has_pred"] & ~entries["has_truth"])
            assert join.pending[c.SIDE_GROUND_TRUTH] == np.sum(~entries["has_pred"] & entries["has_truth"])
            # Every accepted prediction is joined, waiting or expired (evicted ones included): none vanish.
            assert sum(state.tallies.predictions_total) == join.joined + join.pending[c.SIDE_PREDICTION] + \
                join.expired[c.SIDE_PREDICTION]
            assert join.evicted[c.SIDE_PREDICTION] <= join.expired[c.SIDE_PREDICTION]
            assert join.evicted[c.SIDE_GROUND_TRUTH] <= join.expired[c.SIDE_GROUND_TRUTH]
    figs = e.evaluate(NOW)
    evicted = figs.by_name(c.JOIN_EVICTED_TOTAL.name)
    assert set(evicted) == {(m, side) for m in ("m", "mc")
                            for side in (c.SIDE_PREDICTION, c.SIDE_GROUND_TRUTH, c.SIDE_JOINED)}


def test_cap_overflow_is_counted_apart_from_ttl_expiry() -> None:
    config = parse_config({"windows": ["1h"], "join": {"ttl": "1d", "max_pending": 100},
                           "models": [{"name": "m", "labels": LABELS}]})
    e = engine(config)
    obj = base_obj(PREDICTIONS)
    # 100 joined predictions fill the cap; 150 later ones that never get ground truth push them all out first
    # (soonest to expire), then 50 of their own.
    e.process([(PREDICTIONS, dumps({**obj, "prediction_id": f"j{i}", "timestamp": BASE + i})) for i in range(100)])
    e.process([(GROUND_TRUTH, dumps({**base_obj(GROUND_TRUTH), "prediction_id": f"j{i}", "timestamp": BASE + i}))
               for i in range(100)])
    e.process([(PREDICTIONS, dumps({**obj, "prediction_id": f"u{i}", "timestamp": BASE + 200 + i}))
               for i in range(150)])
    figs = e.evaluate()
    evicted = figs.by_name(c.JOIN_EVICTED_TOTAL.name)
    assert evicted[("m", c.SIDE_JOINED)] == 100  # their outcomes stay; corrections for them can no longer apply
    assert evicted[("m", c.SIDE_PREDICTION)] == 50
    assert evicted[("m", c.SIDE_GROUND_TRUTH)] == 0
    assert figs.by_name(c.JOIN_EXPIRED_TOTAL.name)[("m", c.SIDE_PREDICTION)] == 50  # never joined
    assert figs.by_name(c.JOINED_TOTAL.name)[("m", "v1")] == 100
    assert figs.by_name(c.PENDING_JOINS.name)[("m", c.SIDE_PREDICTION)] == 100


def test_resent_ground_truth_for_one_id_does_not_grow_the_expiry_heap() -> None:
    # The Python join's heap is inspectable; the native one compacts the same way (native/src/join.rs).
    e = engine(use_native=False)
    gt = base_obj(GROUND_TRUTH)
    for chunk in range(6):
        e.process([(GROUND_TRUTH, dumps({**gt, "timestamp": BASE + chunk * 10_000 + i})) for i in range(10_000)])
    join = e.models["m"].join
    assert len(join) == 1
    assert isinstance(join, JoinTable) and len(join._heap) <= 2 * len(join) + 1025


FLOOD = r"""
import sys, time
from datetime import UTC, datetime
sys.path.insert(0, {root!r})
from monitor.config import parse_config
from monitor.engine.engine import Engine, PREDICTIONS, GROUND_TRUTH
n, cap, batch = {n}, {cap}, 8192
config = parse_config({{"windows": ["5m", "1h"], "join": {{"ttl": "3d", "max_pending": cap}},
                        "models": [{{"name": "m", "labels": ["a", "b", "c", "d", "e", "f"]}}]}})
e = Engine(config, {{"m": None}})
tpl_p = (b'{{"prediction_id":"flood-%d-%s","model":"m","timestamp":"%s",'
         b'"scores":{{"a":0.1,"b":0.2,"c":0.3,"d":0.4,"e":0.5,"f":0.6}}}}')
tpl_g = b'{{"prediction_id":"truth-%d","model":"m","timestamp":"%s","labels":["a"]}}'
pad = b"x" * 200  # long ids: the cap counts entries, memory follows their size too
# RFC 3339 times (the decoder's fast path), 100 events per second of event time.
stamps = [datetime.fromtimestamp(1_790_000_000 + k, UTC).isoformat().encode() for k in range(n // 100 + 1)]

def peak_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

t0, marks = time.perf_counter(), {{}}
for start in range(0, n, batch):
    items = [(PREDICTIONS, tpl_p % (i, pad, stamps[i // 100])) if i % 4 else
             (GROUND_TRUTH, tpl_g % (i, stamps[i // 100])) for i in range(start, min(n, start + batch))]
    e.process(items)
    if start // batch == 25:
        marks["warm"] = peak_kb()
join = e.models["m"].join
print(marks["warm"], peak_kb(), len(join), join.evicted["prediction"], join.evicted["ground_truth"],
      round(time.perf_counter() - t0, 1))
"""


FLOOD_IDS, FLOOD_CAP = 1_000_000, 20_000


def flood_command(n: int, cap: int) -> list[str]:
    return [sys.executable, "-c", FLOOD.format(root=str(ROOT), n=n, cap=cap)]


def flood_result(stdout: str) -> tuple[int, int, int, int, int, float]:
    warm, peak, entries, ev_p, ev_g, secs = stdout.split()
    return int(warm), int(peak), int(entries), int(ev_p), int(ev_g), float(secs)


@pytest.fixture(scope="module", autouse=True)
def flood_process(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[str] | None]:
    """The million-id flood starts with the module's first test and runs beside the others (it takes about
    10 s of one core); its test only waits for the result."""
    wanted = any(item.name == test_a_million_distinct_ids_stay_within_the_cap_in_memory.__name__
                 for item in request.session.items)
    proc = subprocess.Popen(flood_command(FLOOD_IDS, FLOOD_CAP), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) if wanted else None
    yield proc
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_million_distinct_ids_stay_within_the_cap_in_memory(flood_process: subprocess.Popen[str]) -> None:
    """1M distinct ids (3 in 4 predictions with 200-byte ids, 1 in 4 ground truths), nothing ever joins, the
    TTL never passes: only `join.max_pending` bounds memory. Uncapped, the same flood grows the process by
    about 600 MB (about 780 bytes per entry with these ids)."""
    out, err = flood_process.communicate(timeout=300)
    assert flood_process.returncode == 0, err
    warm, peak, entries, ev_p, ev_g, _ = flood_result(out)
    assert entries == FLOOD_CAP
    assert ev_p + ev_g == FLOOD_IDS - FLOOD_CAP  # every entry beyond the cap is counted
    # Peak RSS after 200k events vs after 1M: the state stopped growing at the cap (allow 64 MB of noise).
    assert peak - warm < 64 * 1024, (warm, peak)


# --- the relay's HTTP input --------------------------------------------------------------------------
RELAY_SECRET, INBOUND_SECRET = "relay-out-secret-9c1e", "relay-in-secret-77ab"


class RelayThread:
    """The relay and a receiver in their own event loop, so hypothesis' synchronous tests can call them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.handle: RelayHandle | None = None
        self.receiver: web.AppRunner | None = None

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> RelayThread:
        self.thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        async def receive(request: web.Request) -> web.Response:
            self.received.append((await request.read(), dict(request.headers)))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/retrain", receive)
        self.receiver = web.AppRunner(app)
        await self.receiver.setup()
        await web.TCPSite(self.receiver, "127.0.0.1", 0).start()
        port = self.receiver.addresses[0][1]
        cfg = parse_config({"models": [{"name": "m", "labels": ["a"]}],
                            "retraining": {"url": f"http://127.0.0.1:{port}/retrain", "secret_env": "OUT",
                                           "inbound_secret_env": "IN", "cooldown": "1h"}})
        self.handle = await start_relay(cfg, port=0, outbox_path=self.tmp / "outbox.sqlite3",
                                        environ={"OUT": RELAY_SECRET, "IN": INBOUND_SECRET},
                                        settings=RelaySettings(retry_initial=0.05, retry_max=0.2,
                                                               request_timeout=2.0, max_body_bytes=64 * 1024))

    def stop(self) -> None:
        async def _stop() -> None:
            if self.handle is not None:
                await self.handle.close()
            if self.receiver is not None:
                await self.receiver.cleanup()

        self.call(_stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayThread]:
    r = RelayThread(tmp_path_factory.mktemp("relay")).start()
    yield r
    r.stop()


def post(relay: RelayThread, body: bytes, headers: dict[str, str], path: str = "/alertmanager",
         method: str = "POST") -> tuple[int, str, bytes]:
    assert relay.handle is not None
    conn = http.client.HTTPConnection("127.0.0.1", relay.handle.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def alert(model: str = "m", **labels: str) -> dict[str, Any]:
    return {"status": "firing", "labels": {"alertname": c.ALERT_RETRAINING_RECOMMENDED, "model": model, **labels},
            "annotations": {"summary": "recall below target"}, "startsAt": "2026-11-20T10:00:00Z",
            "fingerprint": "fp-1"}


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "status": "firing", "receiver": "retraining-relay", "groupKey": "{}:{}",
            "alerts": list(alerts)}


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=4), max_leaves=12)


@st.composite
def payload_like(draw: st.DrawFn) -> Any:
    """Something close to an Alertmanager payload with one part broken or replaced."""
    body: Any = notification(alert(), alert(label="violence"))
    path = draw(st.sampled_from([(), ("version",), ("status",), ("alerts",), ("alerts", 0), ("alerts", 0, "status"),
                                 ("alerts", 0, "labels"), ("alerts", 0, "labels", "model"), ("alerts", 0, "startsAt"),
                                 ("alerts", 1, "annotations"), ("alerts", 0, "fingerprint"), ("groupKey",),
                                 ("alerts", 0, "generatorURL"), ("truncatedAlerts",), ("externalURL",)]))
    value = draw(st.one_of(json_values, st.sampled_from(["", "firing", "resolved", "4", "2026-11-20T10:00:00",
                                                          "not a time", "9" * 400, {"a": 1}, [[]]])))
    if not path:
        return value
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


def signed(body: bytes, how: str) -> dict[str, str]:
    if how == "hmac":
        return {"X-Mlmon-Signature": sign_body(INBOUND_SECRET.encode(), body)}
    if how == "bearer":
        return {"Authorization": f"Bearer {INBOUND_SECRET}"}
    if how == "bad_hmac":
        return {"X-Mlmon-Signature": sign_body(b"wrong", body)}
    if how == "bad_bearer":
        return {"Authorization": "Bearer " + INBOUND_SECRET[:-1]}
    if how == "garbage":
        return {"X-Mlmon-Signature": "sha256=zz", "Authorization": "Basic Og=="}
    return {}


@st.composite
def relay_request(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["payload", "payload", "json", "bytes", "huge", "nested"]))
    if kind == "payload":
        body = json.dumps(draw(payload_like())).encode()
    elif kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
    elif kind == "huge":
        body = b'{"version": "4", "pad": "' + b"x" * (64 * 1024) + b'"}'
    else:  # within the stdlib parser's depth; deeper nesting is the known bug below
        body = b"[" * draw(st.integers(1, 500))
    headers = signed(body, draw(st.sampled_from(["hmac", "hmac", "bearer", "bad_hmac", "bad_bearer", "garbage",
                                                "none"])))
    headers["Content-Type"] = draw(st.sampled_from(["application/json", "application/json",
                                                    "application/json; charset=utf-8", "text/plain",
                                                    "application/x-www-form-urlencoded", "application/jsonx"]))
    return body, headers


def assert_json_error(status: int, ctype: str, body: bytes) -> dict[str, Any]:
    assert 400 <= status < 500, (status, body[:200])
    assert ctype.startswith("application/json"), ctype
    err = json.loads(body)
    assert isinstance(err.get("error"), str) and isinstance(err.get("message"), str)
    return err


@fuzz(1500)
@given(req=relay_request())
def test_relay_answers_every_bad_request_with_a_json_4xx(relay: RelayThread, req: tuple[bytes, dict[str, str]]) -> None:
    body, headers = req
    status, ctype, answer = post(relay, body, headers)
    if status == 200:
        assert json.loads(answer)["status"] == "ok"
    else:
        assert_json_error(status, ctype, answer)
        # Never a secret in an error answer.
        assert INBOUND_SECRET.encode() not in answer and RELAY_SECRET.encode() not in answer


@fuzz(100)
@given(method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH"]),
       path=st.sampled_from(["/alertmanager", "/", "/metrics/../alertmanager", "/x" * 50, "/%00", "/alertmanager/"]))
def test_relay_other_paths_and_methods_get_json_errors(relay: RelayThread, method: str, path: str) -> None:
    status, ctype, answer = post(relay, b"{}", {"Content-Type": "application/json"}, path=path, method=method)
    if status == 200:  # GET /metrics-like paths that exist
        return
    assert_json_error(status, ctype, answer)


def test_relay_still_accepts_and_signs_a_valid_request_after_the_abuse(relay: RelayThread) -> None:
    # A model the fuzz never names, so no cooldown from the fuzz's own valid requests applies.
    raw = json.dumps(notification(alert(model="after-the-fuzz"))).encode()
    status, _, answer = post(relay, raw, {"Content-Type": "application/json", **signed(raw, "hmac")})
    assert status == 200, answer
    (result,) = json.loads(answer)["requests"]
    assert (result["model"], result["result"]) == ("after-the-fuzz", "enqueued")
    key = result["idempotency_key"]

    async def delivered() -> None:
        for _ in range(200):
            if any(json.loads(b).get("idempotency_key") == key for b, _ in relay.received):
                return
            await asyncio.sleep(0.02)

    relay.call(delivered())
    from monitor.relay import verify_signature

    assert any(verify_signature(RELAY_SECRET.encode(), b, h.get("X-Mlmon-Signature")) for b, h in relay.received
               if json.loads(b).get("idempotency_key") == key)


# Found by the fuzz above: each used to answer 500, so Alertmanager retried the notification until it gave up.
RELAY_5XX_BUGS = {
    "deep nesting: json.loads raises RecursionError": b"[" * 50_000,
    "lone surrogate escape in a label: UnicodeEncodeError": json.dumps(notification(alert(label="\ud800"))).encode(),
    "startsAt at year 1 with an offset: OverflowError in astimezone":
        json.dumps(notification({**alert(), "startsAt": "0001-01-01T00:00:00+01:00"})).encode(),
}


@pytest.mark.parametrize("case", sorted(RELAY_5XX_BUGS))
def test_relay_rejects_formerly_5xx_bodies_with_4xx(relay: RelayThread, case: str) -> None:
    body = RELAY_5XX_BUGS[case]
    status, ctype, answer = post(relay, body, {"Content-Type": "application/json", **signed(body, "hmac")})
    assert_json_error(status, ctype, answer)

