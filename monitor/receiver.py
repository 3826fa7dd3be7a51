"""A stand-in for the systems downstream of Alertmanager and the relay, for docker-compose: logs every
webhook it receives and checks the retraining request's signature as a real receiver must.

    python -m monitor.receiver --port 8790     # secret from RETRAIN_WEBHOOK_SECRET
"""

from __future__ import annotations

import logging
import os

import click
from aiohttp import web

from monitor.relay.signing import verify_signature

log = logging.getLogger("mlmon.receiver")


def app(secret: bytes | None) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if request.path.startswith("/retrain"):
            ok = secret is not None and verify_signature(secret, body, request.headers.get("X-Mlmon-Signature"))
            log.info("retraining request %s (%d bytes, signature %s)", request.headers.get("Idempotency-Key"),
                     len(body), "valid" if ok else "INVALID")
            return web.json_response({"accepted": ok}, status=200 if ok else 401)
        log.info("webhook on %s (%d bytes)", request.path, len(body))
        return web.json_response({"accepted": True})

    application = web.Application(client_max_size=1 << 20)
    application.router.add_post("/{tail:.*}", receive)
    return application


@click.command()
@click.option("--port", type=int, default=8790, show_default=True)
@click.option("--bind", default="0.0.0.0", show_default=True)
@click.option("--secret-env", default="RETRAIN_WEBHOOK_SECRET", show_default=True)
def main(port: int, bind: str, secret_env: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    secret = os.environ.get(secret_env)
    web.run_app(app(secret.encode() if secret else None), host=bind, port=port, print=None)


if __name__ == "__main__":
    main()
