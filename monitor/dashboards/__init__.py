"""Grafana dashboards (executive, on-call, debug) generated from the config, and their push to Grafana.

Modules: common/promql (shared panel and query builders), executive/oncall/debug (one dashboard each),
generate (config -> JSON files), queries (`panel_queries`, every panel query with variables expanded),
push (idempotent upload with grafana-client), cli (`monitor dashboards ...`).

This package's import is kept light: the SDK and grafana-client load only in the modules that need them.
"""

from __future__ import annotations

from monitor.dashboards.queries import panel_queries

DEFAULT_FOLDER_TITLE = "ML monitor"
DEFAULT_FOLDER_UID = "mlmon"
TOKEN_ENV = "GRAFANA_TOKEN"

__all__ = ["DEFAULT_FOLDER_TITLE", "DEFAULT_FOLDER_UID", "TOKEN_ENV", "panel_queries"]
