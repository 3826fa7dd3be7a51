"""Dashboards: checked-in JSON equals a fresh generation, Grafana's schemas accept it, every panel is
described, every query is valid PromQL (promtool) and returns data from a real Prometheus scraping the
bundled example's metrics, and `push` is idempotent against a stand-in for Grafana's HTTP API.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from monitor import conventions as C
from monitor.config import MonitorConfig, parse_config
from monitor.dashboards import DEFAULT_FOLDER_UID, generate, panel_queries, promql
from monitor.dashboards.cli import dashboards_group
from monitor.dashboards.common import DATASOURCE_UID, encode
from monitor.rules import names as n
from monitor.rules.recording import recording_groups
from monitor.services import Prometheus, StaticMetrics, binary
from tests.needs import needs_prometheus, needs_promtool

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = Path(__file__).parent / "data" / "grafana-schema"
DASHBOARD_DIR = ROOT / "dashboards"
EXAMPLE_VARIABLES: dict[str, str | list[str]] = {
    "model": "moderation",
    "version": "v7",
    "label": ["violence", "spam"],
    "window": "1h",
}


@pytest.fixture(scope="module")
def dashboards(example_config: MonitorConfig) -> dict[str, dict[str, Any]]:
    return generate.build_all(example_config)


def _all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", []) or []


def _visual_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _all_panels(dashboard) if p["type"] != "row"]


# --- generation --------------------------------------------------------------------------------------------

def test_checked_in_dashboards_equal_a_fresh_generation(example_config: MonitorConfig) -> None:
    stale = generate.stale(example_config, DASHBOARD_DIR)
    assert not stale, f"regenerate with `monitor dashboards generate -o dashboards`: {stale}"


def test_generation_is_deterministic_sorted_and_indented(example_config: MonitorConfig) -> None:
    first, second = generate.render(example_config), generate.render(example_config)
    assert first == second
    for text in first.values():
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_stable_uids_and_file_names(dashboards: dict[str, dict[str, Any]]) -> None:
    assert set(dashboards) == {"mlmon-executive", "mlmon-oncall", "mlmon-debug"}
    for uid, data in dashboards.items():
        assert data["uid"] == uid
        assert (DASHBOARD_DIR / f"{uid}.json").exists()


def test_panel_ids_unique_and_targets_have_ref_ids(dashboards: dict[str, dict[str, Any]]) -> None:
    for data in dashboards.values():
        ids = [p["id"] for p in _all_panels(data)]
        assert len(ids) == len(set(ids)) and all(i > 0 for i in ids)
        for panel in _visual_panels(data):
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)) and all(refs)


# --- Grafana's JSON schemas ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registry() -> Registry:
    resources = []
    for path in SCHEMA_DIR.glob("*.jsonschema.json"):
        contents = json.loads(path.read_text(encoding="utf-8"))
        name = path.name.removesuffix(".jsonschema.json")
        resources.append((f"urn:grafana:{name}", Resource.from_contents(contents, DRAFT7)))
    return Registry().with_resources(resources)


def _errors(registry: Registry, ref: str, instance: Any) -> list[str]:
    validator = Draft7Validator({"$ref": ref}, registry=registry)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(instance)]


def _definitions(panel_type: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{panel_type}.jsonschema.json").read_text(encoding="utf-8"))["definitions"]


def test_dashboards_validate_against_grafana_dashboard_schema(
    registry: Registry, dashboards: dict[str, dict[str, Any]]
) -> None:
    for uid, data in dashboards.items():
        assert _errors(registry, "urn:grafana:dashboard", data) == [], uid


def test_panel_options_field_config_and_targets_validate_against_their_type_schemas(
    registry: Registry, dashboards: dict[str, dict[str, Any]]
) -> None:
    for uid, data in dashboards.items():
        for panel in _visual_panels(data):
            where = f"{uid} / {panel['title']}"
            kind = panel["type"]
            assert (SCHEMA_DIR / f"{kind}.jsonschema.json").exists(), f"{where}: no schema for {kind}"
            assert "options" in panel, where
            assert _errors(registry, f"urn:grafana:{kind}#/definitions/Options", panel["options"]) == [], where
            custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
            if "FieldConfig" in _definitions(kind):
                errors = _errors(registry, f"urn:grafana:{kind}#/definitions/FieldConfig", custom or {})
                assert errors == [], where
            else:
                assert custom is None, f"{where}: {kind} takes no custom field config"
            for target in panel["targets"]:
                assert _errors(registry, "urn:grafana:prometheus", target) == [], where


def test_schema_validation_catches_a_wrong_option(registry: Registry, dashboards: dict[str, Any]) -> None:
    panel = next(p for p in _visual_panels(dashboards["mlmon-oncall"]) if p["type"] == "timeseries")
    broken = {**panel["options"], "legend": {**panel["options"]["legend"], "placement": "nowhere"}}
    assert _errors(registry, "urn:grafana:timeseries#/definitions/Options", broken)


# --- content -------------------------------------------------------------------------------------------------

def test_every_panel_has_title_description_and_unit(dashboards: dict[str, dict[str, Any]]) -> None:
    for uid, data in dashboards.items():
        for panel in _visual_panels(data):
            assert panel.get("title"), uid
            assert len(panel.get("description", "")) >= 40, f"{uid} / {panel['title']}"
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{uid} / {panel['title']}"


def test_template_variables(example_config: MonitorConfig, dashboards: dict[str, dict[str, Any]]) -> None:
    for uid, data in dashboards.items():
        variables = {v["name"]: v for v in data["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for name in ("model", "version"):
            assert variables[name]["type"] == "query"
            assert variables[name]["query"].startswith("label_values(")
            assert variables[name]["datasource"]["uid"] == "${datasource}"
        window = variables["window"]
        assert window["type"] == "custom"
        assert window["query"].split(",") == example_config.window_names
        assert window["current"]["value"] in example_config.window_names
        # Every panel that reads a window gauge follows the window variable.
        for panel in _visual_panels(data):
            for target in panel["targets"]:
                if 'window="' in target["expr"] or "window=~" in target["expr"]:
                    assert "$window" in target["expr"] or panel["title"].endswith("burn rate by window") \
                        or "tiers" in panel["title"], f"{uid} / {panel['title']}"
        if uid != "mlmon-executive":
            assert variables["label"]["query"].startswith("label_values(")


def test_every_panel_reads_recorded_series(example_config: MonitorConfig,
                                           dashboards: dict[str, dict[str, Any]]) -> None:
    """Panels read only series the recording rules define (never a worker's own series), so N workers show
    what one would and the panels show what the alerts use; each of those series is read by some panel."""
    segmented_config = parse_config({"models": [{"name": "m", "labels": ["a", "b"], "segments": [
        {"name": "country", "feature": "country"}], "slos": [
        {"label": "a", "objective": "recall", "target": 0.9, "per_segment": "country"}]}]})
    recorded = {r["record"] for cfg in (example_config, segmented_config)
                for g in recording_groups(cfg) for r in g["rules"]}
    multiclass = generate.build_all(parse_config({"models": [{"name": "router", "task": "multiclass",
                                                              "labels": ["a", "b"]}]}))
    segmented = generate.build_all(segmented_config)
    read: set[str] = set()
    router = {**EXAMPLE_VARIABLES, "model": "router", "label": "a"}
    by_country = {**EXAMPLE_VARIABLES, "model": "m", "label": "a", "segment": "country", "segment_value": "$__all"}
    for data, variables in [*((d, EXAMPLE_VARIABLES) for d in dashboards.values()),
                            *((d, router) for d in multiclass.values()),
                            *((d, by_country) for d in segmented.values())]:
        for title, expr in panel_queries(data, variables):
            if expr.startswith(("ALERTS", "count(ALERTS")):
                continue
            assert not re.findall(r"\bmlmon_\w+", expr), (title, expr)
            names = set(re.findall(r"\bmlmon:[\w:]+", expr))
            assert names and names <= recorded, (title, names - recorded)
            read |= names
    dashboard_inputs = {q.name for q in promql.RECORDED}
    assert dashboard_inputs <= read, dashboard_inputs - read


def test_slo_panels_follow_the_config(example_config: MonitorConfig, dashboards: dict[str, Any]) -> None:
    titles = [p["title"] for p in _visual_panels(dashboards["mlmon-oncall"])]
    for model in example_config.models:
        for slo in model.slos:
            assert any(f"{slo.label} {slo.objective} (SLO" in t for t in titles)
            assert any(f"{slo.name} burn rate" in t for t in titles)


def test_other_configs_generate_valid_dashboards(registry: Registry) -> None:
    config = parse_config(
        {
            "windows": ["5m", "1h", "1d"],
            "models": [
                {"name": "router", "task": "multiclass", "labels": ["a", "b", "c"]},
                {"name": "fraud", "task": "binary", "labels": ["fraud"], "threshold": 0.3},
            ],
        }
    )
    built = generate.build_all(config)
    debug_titles = [p["title"] for p in _visual_panels(built["mlmon-debug"])]
    assert "Confusion matrix" in debug_titles and "Accuracy" in debug_titles
    assert "Hamming loss and subset accuracy" not in debug_titles
    oncall_titles = [p["title"] for p in _visual_panels(built["mlmon-oncall"])]
    assert not any("burn rate by window" in t for t in oncall_titles)  # no SLOs configured
    for data in built.values():
        assert _errors(registry, "urn:grafana:dashboard", data) == []
        window = next(v for v in data["templating"]["list"] if v["name"] == "window")
        assert window["query"] == "5m,1h,1d"


# --- panel_queries ---------------------------------------------------------------------------------------------

def test_panel_queries_expands_variables_like_grafana(dashboards: dict[str, dict[str, Any]]) -> None:
    queries = panel_queries(dashboards["mlmon-oncall"], {**EXAMPLE_VARIABLES, "__rate_interval": "30s"})
    assert queries
    for title, expr in queries:
        assert "$" not in expr and "$" not in title, (title, expr)
    exprs = "\n".join(e for _, e in queries)
    assert 'label=~"(violence|spam)"' in exprs
    assert 'model=~"moderation"' in exprs and 'window="1h"' in exprs
    executive = panel_queries(dashboards["mlmon-executive"], {**EXAMPLE_VARIABLES, "__range": "2h"})
    assert any("[2h]" in e and "* 3600" not in e for _, e in executive)  # $__range and $__range_s agree
    assert any("[2h]" in e and "* 7200" in e for _, e in executive)


def test_panel_queries_repeats_per_value_and_handles_all(dashboards: dict[str, dict[str, Any]]) -> None:
    debug = dashboards["mlmon-debug"]
    queries = panel_queries(debug, EXAMPLE_VARIABLES)
    titles = {t for t, _ in queries}
    assert {"Reliability diagram · violence", "Reliability diagram · spam"} <= titles
    assert any('label=~"spam"' in e for t, e in queries if t == "Reliability diagram · spam")
    # Version defaults to the saved 'All', which expands to the variable's allValue.
    no_version = {k: v for k, v in EXAMPLE_VARIABLES.items() if k != "version"}
    assert all('version=~".*"' in e for _, e in panel_queries(debug, no_version) if "version=~" in e)
    with pytest.raises(ValueError, match="label"):
        panel_queries(debug, {**EXAMPLE_VARIABLES, "label": "$__all"})  # cannot repeat over 'All'
    with pytest.raises(KeyError, match="model"):
        panel_queries(debug, {k: v for k, v in EXAMPLE_VARIABLES.items() if k != "model"})


def test_panel_queries_regex_escapes_multi_values() -> None:
    dashboard = {
        "templating": {"list": [{"name": "label", "multi": True, "includeAll": True, "allValue": ".*"}]},
        "panels": [{"type": "timeseries", "title": "t", "targets": [{"expr": 'x{label=~"$label"}'}]}],
    }
    assert panel_queries(dashboard, {"label": ["a.b", "c"]}) == [("t", 'x{label=~"(a\\\\.b|c)"}')]
    assert panel_queries(dashboard, {"label": "All"}) == [("t", 'x{label=~".*"}')]


# --- PromQL validity (promtool) ----------------------------------------------------------------------------------

def _variable_selectors(data: dict[str, Any]) -> list[str]:
    """The series selectors inside the label_values(...) variable queries."""
    out = []
    for variable in data["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.*), *\w+\)", str(variable.get("query", "")))
        if m:
            out.append(m.group(1))
    return out


@needs_promtool
def test_every_query_is_valid_promql(dashboards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    promtool = binary("promtool")
    assert promtool is not None
    rules = []
    variable_sets = [EXAMPLE_VARIABLES, {**EXAMPLE_VARIABLES, "version": ["v7", "v8"], "label": "violence"}]
    for uid, data in dashboards.items():
        exprs = [e for variables in variable_sets for _, e in panel_queries(data, variables)]
        exprs += [s.replace("$model", "moderation") for s in _variable_selectors(data)]
        for i, expr in enumerate(dict.fromkeys(exprs)):
            rules.append({"record": f"dashboard:{uid.replace('-', '_')}:{i}", "expr": expr})
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


# --- every query returns data from a real Prometheus ---------------------------------------------------------

@needs_prometheus
@pytest.mark.slow
def test_panel_queries_return_data_from_prometheus(
    example_config: MonitorConfig, dashboards: dict[str, dict[str, Any]], example_exposition: bytes, tmp_path: Path
) -> None:
    """The bundled example replayed, its metrics scraped by a real Prometheus, every panel queried.

    A static exposition cannot show rates (counters do not move) or worker-only series (consumer lag);
    those panels are listed and must still parse and run. The full check of every panel
    against the live pipeline belongs to the end-to-end tests.
    """
    rules = tmp_path / "rules.yml"
    rules.write_text(
        yaml.safe_dump({"groups": [{"name": "t", "rules": [{"alert": C.ALERT_DOWN, "expr": "vector(1)"}]}]})
    )
    recording = tmp_path / "recording.yml"
    recording.write_text(yaml.safe_dump({"groups": recording_groups(example_config)}))
    with StaticMetrics(example_exposition) as target, \
            Prometheus([target.target], [rules, recording], interval="200ms", workdir=tmp_path / "prometheus") as prom:
        # rate() needs two samples inside its range: wait until the recorded rates exist.
        prom.wait_for(f"count_over_time({n.PREDICTIONS_RATE}[2s]) >= 2", timeout=30, interval=0.3)
        prom.wait_for("ALERTS", timeout=30, interval=0.3)
        # Worker-only series (consumer lag) and rates of counters that do not move.
        static_exposition_gaps = {"Consumer lag", "Traffic share by version"}
        empty = []
        for data in dashboards.values():
            for title, expr in panel_queries(data, {**EXAMPLE_VARIABLES, "__rate_interval": "2s"}):
                if not prom.query(expr) and title not in static_exposition_gaps:
                    empty.append((title, expr))
        assert not empty


# --- CLI ------------------------------------------------------------------------------------------------------

def test_cli_generate_and_check(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "dash"
    result = runner.invoke(dashboards_group, ["generate", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{u}.json" for u in generate.BUILDERS)
    assert runner.invoke(dashboards_group, ["generate", "-o", str(out), "--check"]).exit_code == 0
    (out / "mlmon-debug.json").write_text("{}\n")
    result = runner.invoke(dashboards_group, ["generate", "-o", str(out), "--check"])
    assert result.exit_code == 1 and "mlmon-debug.json" in result.output


def test_cli_queries(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        dashboards_group,
        ["queries", str(DASHBOARD_DIR / "mlmon-executive.json"), "-v", "model=moderation", "-v", "window=1d"],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines and all("\t" in line and "$" not in line.split("\t")[1] for line in lines)


# --- push against a stand-in Grafana -------------------------------------------------------------------------

class FakeGrafana:
    """The slice of Grafana's HTTP API that grafana-client uses for a push, recording every call."""

    def __init__(self) -> None:
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.auth: set[str] = set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"null")

            def _handle(self, method: str) -> None:
                path = urllib.parse.urlsplit(self.path)
                fake.calls.append((method, path.path))
                fake.auth.add(self.headers.get("Authorization", ""))
                status, body = fake.route(method, path.path, urllib.parse.parse_qs(path.query),
                                          self._body() if method in ("POST", "PUT") else None)
                self._reply(status, body)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if m := re.fullmatch(r"/api/folders/([\w-]+)", path):
            folder = self.folders.get(m.group(1))
            if folder is None:
                return 404, {"message": "folder not found"}
            if method == "PUT":
                folder.update(title=body["title"], version=folder["version"] + 1)
            return 200, folder
        if path == "/api/folders" and method == "POST":
            if body["uid"] in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            self.folders[body["uid"]] = {"id": len(self.folders) + 1, "uid": body["uid"], "title": body["title"],
                                         "version": 1}
            return 200, self.folders[body["uid"]]
        if m := re.fullmatch(r"/api/dashboards/uid/([\w-]+)", path):
            stored = self.dashboards.get(m.group(1))
            if stored is None:
                return 404, {"message": "Dashboard not found"}
            return 200, {"dashboard": stored["dashboard"], "meta": {"folderUid": stored["folderUid"]}}
        if path == "/api/dashboards/db" and method == "POST":
            dashboard = body["dashboard"]
            old = self.dashboards.get(dashboard["uid"])
            if old is not None and not body.get("overwrite"):
                return 412, {"message": "version-mismatch"}
            version = old["dashboard"]["version"] + 1 if old else 1
            stored = {**dashboard, "id": old["dashboard"]["id"] if old else len(self.dashboards) + 1,
                      "version": version}
            self.dashboards[dashboard["uid"]] = {"dashboard": stored, "folderUid": body.get("folderUid")}
            return 200, {"status": "success", "uid": dashboard["uid"], "version": version}
        if path == "/api/search" and method == "GET":
            folders = set(query.get("folderUIDs", []))
            return 200, [
                {"uid": uid, "title": d["dashboard"].get("title"), "type": "dash-db", "folderUid": d["folderUid"]}
                for uid, d in self.dashboards.items()
                if not folders or d["folderUid"] in folders
            ]
        return 404, {"message": f"not implemented: {method} {path}"}

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] != "GET"]


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    fake = FakeGrafana()
    yield fake
    fake.server.shutdown()


def test_push_creates_then_changes_nothing(grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "glsa_secret_token_value"
    monkeypatch.setenv("GRAFANA_TOKEN", token)
    runner = CliRunner()
    args = ["push", "--grafana-url", grafana.url, "--dir", str(DASHBOARD_DIR)]

    first = runner.invoke(dashboards_group, args)
    assert first.exit_code == 0, first.output
    assert "created 3" in first.output and token not in first.output
    assert grafana.auth == {f"Bearer {token}"}
    assert grafana.writes() == [("POST", "/api/folders")] + [("POST", "/api/dashboards/db")] * 3
    assert set(grafana.dashboards) == set(generate.BUILDERS)
    assert {d["folderUid"] for d in grafana.dashboards.values()} == {"mlmon"}
    assert grafana.folders["mlmon"]["title"] == "ML monitor"
    assert ("GET", "/api/search") in grafana.calls
    stored = grafana.dashboards["mlmon-oncall"]["dashboard"]
    assert {k: v for k, v in stored.items() if k not in ("id", "version")} == json.loads(
        (DASHBOARD_DIR / "mlmon-oncall.json").read_text()
    )

    grafana.calls.clear()
    second = runner.invoke(dashboards_group, args)
    assert second.exit_code == 0, second.output
    assert "unchanged 3" in second.output
    assert grafana.writes() == []  # idempotent: a second push writes nothing
    assert {d["dashboard"]["version"] for d in grafana.dashboards.values()} == {1}


def test_push_updates_changed_dashboards_and_renames_folder(
    grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", "t")
    runner = CliRunner()
    for name in ("mlmon-executive.json", "mlmon-debug.json"):
        shutil.copy(DASHBOARD_DIR / name, tmp_path / name)
    first = runner.invoke(dashboards_group, ["push", "--grafana-url", grafana.url, "--dir", str(tmp_path)])
    assert first.exit_code == 0, first.output
    grafana.dashboards["someone-else"] = {"dashboard": {"uid": "someone-else", "version": 1}, "folderUid": "mlmon"}

    edited = json.loads((tmp_path / "mlmon-debug.json").read_text())
    edited["title"] = "Debug (edited)"
    (tmp_path / "mlmon-debug.json").write_text(encode(edited))
    grafana.calls.clear()
    result = runner.invoke(
        dashboards_group, ["push", "--grafana-url", grafana.url, "--dir", str(tmp_path), "--folder", "Quality"]
    )
    assert result.exit_code == 0, result.output
    assert grafana.writes() == [("PUT", "/api/folders/mlmon"), ("POST", "/api/dashboards/db")]
    assert grafana.folders["mlmon"]["title"] == "Quality"
    assert grafana.dashboards["mlmon-debug"]["dashboard"]["title"] == "Debug (edited)"
    assert grafana.dashboards["mlmon-debug"]["dashboard"]["version"] == 2
    assert "updated 1, unchanged 1" in result.output
    assert "someone-else" in result.output  # reported, not deleted
    assert "someone-else" in grafana.dashboards


def test_push_needs_a_token(grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    result = CliRunner().invoke(dashboards_group, ["push", "--grafana-url", grafana.url, "--dir", str(DASHBOARD_DIR)])
    assert result.exit_code != 0 and "GRAFANA_TOKEN" in result.output
    assert grafana.calls == []


def test_push_reports_grafana_errors_without_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "glsa_do_not_print"
    monkeypatch.setenv("GRAFANA_TOKEN", token)
    fake = FakeGrafana()
    fake.route = lambda *a: (401, {"message": "invalid API key"})  # type: ignore[method-assign]
    try:
        result = CliRunner().invoke(
            dashboards_group, ["push", "--grafana-url", fake.url, "--dir", str(DASHBOARD_DIR)]
        )
    finally:
        fake.server.shutdown()
    assert result.exit_code != 0
    assert token not in result.output
    assert "Unauthorized" in result.output or "401" in result.output


# --- provisioning files -------------------------------------------------------------------------------------

def test_provisioning_matches_the_dashboards() -> None:
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["uid"] == DATASOURCE_UID
    providers = yaml.safe_load((provisioning / "dashboards" / "mlmon.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["folderUid"] == DEFAULT_FOLDER_UID
    assert provider["options"]["path"].startswith("/var/lib/grafana/dashboards")
