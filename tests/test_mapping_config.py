"""The `input:` section of a model (docs/attach.md): expressions compiled on load, errors naming the key,
and the simple-path steps the native fast path shares with the exact decoder."""

from __future__ import annotations

import jmespath
import pytest

from monitor.config import ConfigError, literal_value, parse_config, simple_path


def _config(inputs: dict, **more: object) -> dict:
    return {"models": [{"name": "m", "labels": ["a", "b"], "input": inputs}], **more}


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    return exc.value.problems


def test_defaults_are_the_native_fields() -> None:
    cfg = parse_config(_config({"predictions": {"topic": "log", "fields": {"scores": "outputs[0].data"}}}))
    fields = cfg.models[0].input.predictions.fields  # type: ignore[union-attr]
    assert fields.scores == "outputs[0].data" and fields.prediction_id == "prediction_id"
    assert cfg.models[0].input.ground_truth is None  # type: ignore[union-attr]
    assert cfg.sources() == [("predictions", "predictions"), ("ground_truth", "ground-truth"), ("predictions", "log")]


def test_every_bad_expression_is_named_at_once() -> None:
    found = problems(_config({"predictions": {"fields": {"scores": "outputs[0", "prediction_id": "a..b"}},
                              "ground_truth": {"fields": {"labels": ""}}}))
    assert any(p.startswith("models[0].input.predictions.fields.scores: 'outputs[0' is not allowed: invalid JMESPath")
               for p in found), found
    assert any(p.startswith("models[0].input.predictions.fields.prediction_id:") for p in found), found
    assert any(p.startswith("models[0].input.ground_truth.fields.labels:") for p in found), found


@pytest.mark.parametrize(("inputs", "expected"), [
    ({"predictions": {"fields": {"scores": "x", "colour": "y"}}},
     "models[0].input.predictions.fields.colour: unknown key"),
    ({"predictions": {"topic": "log", "fields": {"model": "'other'"}}},
     "models[0].input.predictions.fields.model: the literal 'other' must be this model's name 'm'"),
    ({"ground_truth": {"topic": "predictions"}}, "topic 'predictions' is read both as predictions and as ground truth"),
])
def test_mapping_errors_name_the_key(inputs: dict, expected: str) -> None:
    assert any(expected in p for p in problems(_config(inputs))), problems(_config(inputs))


def test_a_literal_model_needs_its_own_topic() -> None:
    data = {"models": [{"name": "m", "labels": ["a"], "input": {"predictions": {"fields": {"model": "'m'"}}}},
                       {"name": "n", "labels": ["a"]}]}
    assert any("claims every message of topic 'predictions'" in p for p in problems(data))
    data["models"][0]["input"]["predictions"]["topic"] = "m-log"
    assert parse_config(data).topic_of(parse_config(data).models[0], "predictions") == "m-log"


@pytest.mark.parametrize(("expression", "steps"), [
    ("id", ("id",)),
    ("outputs[0].data", ("outputs", 0, "data")),
    ('request."text length"', ("request", "text length")),
    ("a[1][2].b", ("a", 1, 2, "b")),
    ("a[-1]", None),
    ("'m'", None),
    ("outputs[*].data", None),
    ("length(a)", None),
    ("a || b", None),
])
def test_simple_paths(expression: str, steps: tuple | None) -> None:
    assert simple_path(expression) == steps
    if steps is not None:  # walking the steps is what JMESPath itself does, on hits and misses
        docs = [{"id": 1, "outputs": [{"data": [0.1]}], "request": {"text length": 3}, "a": [0, [1, 2, {"b": 4}]]},
                {"outputs": {"0": 1}}, {"a": "str"}, {}]
        for doc in docs:
            value = doc
            for step in steps:
                ok = (isinstance(step, str) and isinstance(value, dict)) or (
                    isinstance(step, int) and isinstance(value, list) and step < len(value))
                value = value[step] if ok and (isinstance(step, int) or step in value) else None  # type: ignore[index]
                if value is None:
                    break
            assert value == jmespath.search(expression, doc)


def test_literals() -> None:
    assert literal_value("'m'") == (True, "m") and literal_value('`"m"`') == (True, "m")
    assert literal_value("m") == (False, None)


@pytest.mark.parametrize("expression", ["id", "outputs[0].data", 'request."text length"', "a[1][2].b", "a[5]",
                                        "a[-1]", "outputs[?name=='x'] | [0].data", "x || 'd'", "length(a)"])
def test_the_decoders_evaluator_is_jmespath(expression: str) -> None:
    from monitor.mapping import evaluator

    docs = [{"id": 1, "outputs": [{"data": [0.1]}, {"name": "x", "data": 2}], "request": {"text length": 3},
             "a": [0, [1, 2, {"b": 4}]], "x": ""}, {"outputs": {"0": 1}}, {"a": "str", "id": None},
            {"a": {"1": 2}}, {}, {"request": [1]}, {"outputs": [None]}]
    get = evaluator(expression)
    for doc in docs:
        try:
            want = jmespath.search(expression, doc)
        except jmespath.exceptions.JMESPathError:
            continue  # a function given the wrong type: the library raises, for both
        assert get(doc) == want, (expression, doc)
