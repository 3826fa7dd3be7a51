"""Push generated dashboards to a Grafana over its HTTP API (grafana-client), idempotently.

Provisioning from files (deploy/grafana/) is the primary path; this is for a Grafana you do not control
the disk of. A push creates or renames the folder by uid, then for each dashboard compares what Grafana
holds with the file and writes only when they differ (with overwrite, so the uid wins over any edit made
in the UI). A second push of the same files therefore writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError

from monitor.dashboards import DEFAULT_FOLDER_TITLE, DEFAULT_FOLDER_UID

# Fields Grafana adds or bumps on every save; they say nothing about the dashboard's content.
_VOLATILE = ("id", "version")


@dataclass
class PushReport:
    folder: str = "unchanged"  # created | renamed | unchanged
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # Dashboards in the folder that this push did not come with (left alone: maybe someone else's).
    foreign: list[str] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return len(self.created) + len(self.updated) + (self.folder != "unchanged")


def redact_url(url: str) -> str:
    """The URL without user:password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def connect(url: str, token: str | None, timeout: float = 10.0) -> GrafanaApi:
    """A client for url; token (a service-account token) wins over user:password in the URL."""
    return GrafanaApi.from_url(url, credential=token or None, timeout=timeout)


def load_dashboards(directory: str | Path) -> list[dict[str, Any]]:
    """The dashboard files of a directory, in name order; each must carry a uid."""
    out = []
    for path in sorted(Path(directory).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not data.get("uid"):
            raise ValueError(f"{path}: not a dashboard with a uid")
        out.append(data)
    return out


def _is_not_found(exc: GrafanaClientError) -> bool:
    return getattr(exc, "status_code", None) == 404


def _content(dashboard: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dashboard.items() if k not in _VOLATILE}


def ensure_folder(api: GrafanaApi, uid: str, title: str) -> str:
    try:
        folder = api.folder.get_folder(uid)
    except GrafanaClientError as exc:
        if not _is_not_found(exc):
            raise
        api.folder.create_folder(title, uid=uid)
        return "created"
    if folder.get("title") != title:
        api.folder.update_folder(uid, title=title, overwrite=True)
        return "renamed"
    return "unchanged"


def push(
    api: GrafanaApi,
    dashboards: list[dict[str, Any]],
    folder_title: str = DEFAULT_FOLDER_TITLE,
    folder_uid: str = DEFAULT_FOLDER_UID,
) -> PushReport:
    report = PushReport(folder=ensure_folder(api, folder_uid, folder_title))
    for dashboard in dashboards:
        uid = dashboard["uid"]
        try:
            current = api.dashboard.get_dashboard(uid)
        except GrafanaClientError as exc:
            if not _is_not_found(exc):
                raise
            current = None
        if current is not None:
            same_folder = (current.get("meta") or {}).get("folderUid") == folder_uid
            if same_folder and _content(current.get("dashboard") or {}) == _content(dashboard):
                report.unchanged.append(uid)
                continue
        api.dashboard.update_dashboard(
            {
                "dashboard": {**_content(dashboard), "id": None},
                "folderUid": folder_uid,
                "overwrite": True,
                "message": "monitor dashboards push",
            }
        )
        (report.updated if current is not None else report.created).append(uid)

    pushed = {d["uid"] for d in dashboards}
    hits = api.search.search_dashboards(type_="dash-db", folder_uids=[folder_uid]) or []
    report.foreign = sorted(h["uid"] for h in hits if h.get("uid") and h["uid"] not in pushed)
    return report
