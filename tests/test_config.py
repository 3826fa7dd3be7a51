"""Config validation: every problem names the key, the value and what is allowed."""

from __future__ import annotations

import pytest

from monitor.config import ConfigError, load_config, parse_config, parse_duration


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    return exc.value.problems


def test_example_config_loads(example_config) -> None:
    m = example_config.models[0]
    assert m.threshold_for("violence") == 0.7 and m.threshold_for("spam") == 0.5
    assert example_config.window_names == ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"]
    assert m.reference is not None and m.reference.is_absolute() and m.reference.exists()


@pytest.mark.parametrize(("data", "expected"), [
    ({"models": []}, "models: "),
    ({"models": [{"name": "m"}]}, "models[0].labels: required key is missing"),
    ({"models": [{"name": "m", "labels": ["a"], "threshold": 1.5}]}, "models[0].threshold: 1.5 is not allowed"),
    ({"models": [{"name": "m", "labels": ["a", "a"]}]}, "labels ['a'] are listed twice"),
    ({"models": [{"name": "m", "labels": ["a"], "thresholds": {"b": 0.2}}]}, "thresholds: 'b' is not one of"),
    ({"models": [{"name": "m", "labels": ["a"], "task": "regression"}]}, "models[0].task: 'regression' is not allowed"),
    ({"models": [{"name": "m", "labels": ["a", "b"], "task": "binary"}]}, "binary needs exactly one label"),
    ({"models": [{"name": "m", "labels": ["a"], "slos": [{"label": "a", "objective": "recall", "target": 1}]}]},
     "models[0].slos[0].target: 1 is not allowed"),
    ({"models": [{"name": "m", "labels": ["a"], "slos": [{"label": "a", "objective": "recall", "target": 0.9,
                                                            "period": "7d"}]}]}, "must be one of the windows"),
    ({"models": [{"name": "m", "labels": ["a"]}], "windows": ["5m", "7h30m"]}, "windows[1]"),
    ({"models": [{"name": "m", "labels": ["a"]}], "windows": ["90s"]}, "not a whole number of minutes"),
    ({"models": [{"name": "m", "labels": ["a"]}], "join": {"ttl": "forever"}}, "join.ttl: 'forever' is not allowed"),
    ({"models": [{"name": "m", "labels": ["a"]}], "kafka": {"partitions": 0}}, "kafka.partitions: 0 is not allowed"),
    ({"models": [{"name": "m", "labels": ["a"]}], "extra": 1}, "extra: unknown key"),
    ({"models": [{"name": "m", "labels": ["a"]}, {"name": "m", "labels": ["b"]}]}, "two models share a name"),
])
def test_errors_name_the_key(data: dict, expected: str) -> None:
    assert any(expected in p for p in problems(data)), problems(data)


def test_durations() -> None:
    assert parse_duration("72h") == 72 * 3600 and parse_duration("30d") == 30 * 86400 and parse_duration(90) == 90
    with pytest.raises(ValueError):
        parse_duration("1.5h")


def test_unreadable_and_invalid_yaml(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
