"""Per-segment SLOs (models[].slos[].per_segment): the config names a segment, the generated rules pass
promtool, and real promtool fires the burn alert once per burning segment value, with its labels.

The scenarios are the generated ones (monitor.rules.promtool_tests._segment_burn_cases): their expected
alerts come from the tier conditions evaluated in Python (monitor.rules.tier_state), and promtool checks
the PromQL against them. Only the per-segment cases run here: the rest of the file is what the other rule
tests already run.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor import conventions as c
from monitor.config import ConfigError, check_config, parse_config
from monitor.dashboards import debug, panel_queries
from monitor.rules import ALERTS_FILE, RECORDING_FILE, TESTS_FILE, RuleOptions
from monitor.rules import names as n
from monitor.rules.alerts import alert_groups
from monitor.rules.check import check
from monitor.rules.promql import series
from monitor.rules.promtool_tests import cases, promtool_test_file
from monitor.rules.recording import recording_groups
from monitor.rules.render import dump
from tests.needs import needs_promtool

MAX_VALUES = 2  # so the four values of the scenarios (v0, v1, _other, _missing) are max_values + 2
SPEC: dict[str, Any] = {
    "name": "m", "labels": ["a", "b"], "min_events": 50,
    "segments": [{"name": "country", "feature": "country", "max_values": MAX_VALUES},
                 {"name": "tier", "field": "customer.tier"}],
    "slos": [{"label": "a", "objective": "recall", "target": 0.9, "severity": "page", "per_segment": "country"},
             {"label": "b", "objective": "precision", "target": 0.95}],
}
# `for: 1m` everywhere: the scenarios hold from the first sample, so only the evaluation time changes.
OPTIONS = RuleOptions(for_overrides={"*": "1m"})
PER_COUNTRY = " per country: "


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    return exc.value.problems


def test_per_segment_must_name_one_of_the_models_segments() -> None:
    bad = {**SPEC, "slos": [{**SPEC["slos"][0], "per_segment": "countri"}]}
    assert _problems({"models": [bad]}) == [
        "models[0]: slos[0].per_segment: 'countri' is not one of the segments ['country', 'tier'] "
        "(models[].segments names them)"]
    no_segments = {k: v for k, v in bad.items() if k != "segments"}
    assert any("'countri' is not one of the segments []" in p for p in _problems({"models": [no_segments]}))
    assert parse_config({"models": [SPEC]}).models[0].slos[0].per_segment == "country"


def test_check_config_names_the_unknown_segment_with_every_other_problem(tmp_path: Path) -> None:
    """A broken segment (bad max_values) is reported once; an SLO naming it is not wrong too, and an SLO
    naming no segment is, in the same run."""
    model = {**SPEC, "segments": [{"name": "country", "feature": "country", "max_values": 0}],
             "slos": [{**SPEC["slos"][0]}, {**SPEC["slos"][1], "per_segment": "platform"},
                      {"label": "zz", "objective": "recall", "target": 0.9}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"models": [model]}))
    problems = check_config(path)
    assert any(p.startswith("models[0].segments[0].max_values: 0 is not allowed") for p in problems), problems
    assert "models[0]: slos[1].per_segment: 'platform' is not one of the segments ['country'] " \
           "(models[].segments names them)" in problems
    assert any("slos[2].label: 'zz' is not one of the labels" in p for p in problems), problems
    assert not any("slos[0].per_segment" in p for p in problems), problems


def test_a_config_without_per_segment_slos_gets_no_per_segment_rules() -> None:
    plain = {**SPEC, "slos": [{k: v for k, v in s.items() if k != "per_segment"} for s in SPEC["slos"]]}
    cfg = parse_config({"models": [plain]})
    recording, alerts = yaml.safe_dump(recording_groups(cfg, OPTIONS)), yaml.safe_dump(alert_groups(cfg, OPTIONS))
    assert ":segment_slo" not in recording and n.SEGMENT_LABEL_OUTCOMES_SUM in recording
    assert c.L_SEGMENT_VALUE not in alerts


@functools.cache
def _generated() -> tuple[dict[str, str], dict[str, Any]]:
    """The rule files as `monitor rules` writes them (monitor.rules.generate.generate, without the
    headers), and its promtool tests cut down to the per-segment cases (the YAML of all of them takes
    seconds to write and read)."""
    cfg = parse_config({"models": [SPEC]})
    recording, alerts = recording_groups(cfg, OPTIONS), alert_groups(cfg, OPTIONS)
    tests = promtool_test_file(cfg, OPTIONS, rule_files=[f"../{RECORDING_FILE}", f"../{ALERTS_FILE}"],
                               group_order=[g["name"] for g in recording + alerts])
    tests["tests"] = [t for t in tests["tests"] if PER_COUNTRY in t["name"]]
    return {RECORDING_FILE: dump({"groups": recording}, ""), ALERTS_FILE: dump({"groups": alerts}, "")}, tests


def _write(tmp_path: Path, files: dict[str, str], tests: dict[str, Any]) -> None:
    for rel, text in {**files, TESTS_FILE: dump(tests, "")}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)


@functools.cache
def _debug_dashboard() -> dict[str, Any]:
    return debug.build(parse_config({"models": [SPEC]}))


def _burn_panel(value: str, window: str) -> str:
    """The debug dashboard's per-segment burn panel query, for one segment value."""
    dashboard = _debug_dashboard()
    variables = {"model": "m", "label": "a", "version": "$__all", "window": window, "segment": "country",
                 "segment_value": value}
    return next(expr for title, expr in panel_queries(dashboard, variables) if title == "SLO burn rate by country")


def _segment_tests() -> dict[str, Any]:
    """The per-segment cases, plus a count of the recorded burn-rate series (one per segment value fed,
    max_values + 2, never one per worker) and the dashboard's burn panel per value (the recorded burn the
    case checks)."""
    tests = copy.deepcopy(_generated()[1])
    first = tests["tests"][0]
    at = first["alert_rule_test"][0]["eval_time"]
    window = "5m"
    checks = first.setdefault("promql_expr_test", [])
    case = next(case for case in cases(parse_config({"models": [SPEC]}), OPTIONS) if case.name == first["name"])
    burns = [(labels, value) for name, labels, value in case.checks if name == n.SEGMENT_ERROR_BUDGET_BURN_RATE]
    assert len(burns) == MAX_VALUES + 2 and all(labels[c.L_WINDOW] == window for labels, _ in burns)
    for labels, value in burns:
        panel = _burn_panel(labels[c.L_SEGMENT_VALUE], window)
        checks.append({"expr": f"abs(({panel}) - {value!r}) < bool 1e-9", "eval_time": at,
                       "exp_samples": [{"labels": series("", labels), "value": 1}]})
    checks.append({"expr": f'count({n.SEGMENT_ERROR_BUDGET_BURN_RATE}{{window="{window}"}})', "eval_time": at,
                   "exp_samples": [{"labels": "{}", "value": MAX_VALUES + 2}]})
    return tests


def test_the_generated_scenarios_expect_alerts_only_for_the_burning_value() -> None:
    """What promtool is asked to confirm: the collapsed value alerts with its segment labels, the healthy
    ones and the (diluted) whole model do not."""
    cases = {t["name"].split(PER_COUNTRY)[1]: t for t in _generated()[1]["tests"]}
    assert len(cases) == 4

    def fired(prefix: str) -> set[tuple[str | None, str]]:
        case = next(t for name, t in cases.items() if name.startswith(prefix))
        return {(a["exp_labels"].get(c.L_SEGMENT_VALUE), a["exp_labels"][c.L_BURNRATE_TIER])
                for a in case["alert_rule_test"][0]["exp_alerts"]}

    tiers = {"page_fast", "page_slow", "ticket_fast", "ticket_slow"}
    assert fired("v0 collapsed") == {("v0", t) for t in tiers}
    assert fired(f"{c.SEGMENT_OTHER} collapsed") == {(c.SEGMENT_OTHER, t) for t in tiers}
    every = fired("every value collapsed")
    assert every == {(v, t) for v in ("v0", "v1", c.SEGMENT_OTHER, c.SEGMENT_MISSING, None) for t in tiers}
    case = next(t for name, t in cases.items() if name.startswith("v0 collapsed"))
    alert = case["alert_rule_test"][0]["exp_alerts"][0]
    assert alert["exp_labels"] == {
        c.L_BURNRATE_TIER: alert["exp_labels"][c.L_BURNRATE_TIER], c.L_LABEL: "a", c.L_MODEL: "m",
        c.L_SEGMENT: "country", c.L_SEGMENT_VALUE: "v0", c.L_SEVERITY: alert["exp_labels"][c.L_SEVERITY],
        c.L_SLO: "a-recall"}
    assert alert["exp_annotations"]["summary"].startswith("m/a country=v0: a-recall is burning")


@needs_promtool
def test_per_segment_burn_alerts_fire_per_value_in_promtool(tmp_path: Path) -> None:
    _write(tmp_path, _generated()[0], _segment_tests())
    results = check(tmp_path)
    assert [r.ok for r in results] == [True, True], "\n".join(r.output for r in results)


@needs_promtool
@pytest.mark.parametrize("where", [ALERTS_FILE, RECORDING_FILE])
def test_rules_without_the_segment_grouping_fail_the_scenarios(tmp_path: Path, where: str) -> None:
    """The same scenarios against rules that lost the per-value grouping (alerts taking the max over the
    values, or recorded burn summed over them): promtool must reject them."""
    files = dict(_generated()[0])
    grouped = f", {c.L_SEGMENT_VALUE}"
    assert grouped in files[where]
    files[where] = files[where].replace(grouped, "")
    tests = _segment_tests()
    tests["tests"] = tests["tests"][:1]  # v0 collapsed: one case is enough to fail, and quicker
    _write(tmp_path, files, tests)
    results = check(tmp_path)
    assert results[0].ok and not results[-1].ok, results[-1].output
    assert "FAILED" in results[-1].output
