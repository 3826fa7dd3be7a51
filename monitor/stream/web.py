"""The worker's HTTP side: GET /metrics (Prometheus text 0.0.4) and GET /healthz.

Handlers run on the worker's event loop, between batches, so every scrape renders one consistent
snapshot of the partition engines without a lock: no batch is ever half applied when a handler runs.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class WebServer:
    def __init__(self, registry: CollectorRegistry, health: Callable[[], tuple[bool, str]], bind: str,
                 port: int) -> None:
        self.registry = registry
        self.health = health
        self.bind = bind
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind, self.port)
        await site.start()
        if self.port == 0:  # an ephemeral port was asked for: report the real one
            server = site._server
            if server is not None and server.sockets:
                self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, detail = self.health()
        return web.json_response({"status": "ok" if ok else "unavailable", "detail": detail},
                                 status=200 if ok else 503)
