"""`monitor relay`: the click command. Parses, then runs monitor.relay.server until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from monitor.config import ConfigError, load_config
from monitor.relay.server import DEFAULT_PORT, RelaySettings, RelayStartupError, start_relay


async def _serve(config: Path, port: int, bind: str, outbox: Path | None, settings: RelaySettings) -> None:
    cfg = load_config(config)
    if outbox is None and cfg.retraining is not None and cfg.retraining.outbox is not None:
        # Config paths are relative to the config file (docs/configuration.md); config.py resolves only
        # `reference`, so resolve the outbox here.
        outbox = cfg.retraining.outbox
        if not outbox.is_absolute():
            outbox = config.resolve().parent / outbox
    handle = await start_relay(cfg, port, outbox, bind=bind, settings=settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        logging.getLogger("monitor.relay").info("stopping relay")
        await handle.close()


@click.command(name="relay")
@click.option("--config", "config", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Monitor config (YAML) with a `retraining` section.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port for /alertmanager, /healthz and /metrics (0 picks a free one).")
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--outbox", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite outbox file [default: retraining.outbox, else ./mlmon-relay-outbox.sqlite3].")
@click.option("--retry-initial", type=click.FloatRange(0.001), default=1.0, show_default=True,
              help="First retry delay in seconds; doubles per attempt (with jitter).")
@click.option("--retry-max", type=click.FloatRange(0.001), default=60.0, show_default=True,
              help="Cap on the retry delay in seconds.")
@click.option("--timeout", "request_timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Timeout of one delivery attempt in seconds.")
@click.option("--max-body", type=click.IntRange(1024), default=1 << 20, show_default=True,
              help="Largest accepted webhook body in bytes (413 beyond).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def relay_command(
    config: Path,
    port: int,
    bind: str,
    outbox: Path | None,
    retry_initial: float,
    retry_max: float,
    request_timeout: float,
    max_body: int,
    log_level: str,
) -> None:
    """Relay Alertmanager webhooks to the signed retraining webhook (docs/relay.md)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = RelaySettings(
        retry_initial=retry_initial,
        retry_max=max(retry_max, retry_initial),
        request_timeout=request_timeout,
        max_body_bytes=max_body,
    )
    try:
        asyncio.run(_serve(config, port, bind, outbox, settings))
    except (ConfigError, RelayStartupError) as exc:
        raise click.ClickException(str(exc)) from None
