"""The one entry point, `monitor`. Thin: each verb lives in the module that does the work.

Sub-commands are imported only when invoked, so `monitor replay` never pays for aiokafka or
grafana-foundation-sdk at start-up.
"""

from __future__ import annotations

import importlib
import os

# numpy's OpenBLAS starts a thread per core when it is loaded, and those threads spin for a while after
# start-up and after each BLAS call. Nothing this tool computes is a large matrix product, and the
# spinning takes CPU from the threads that decode and apply events. Set before anything loads numpy; a
# value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click

from monitor.gc_pause import collector_paused

# verb -> "module:attribute" of a click command.
_COMMANDS: dict[str, str] = {
    "replay": "monitor.replay_cli:replay_command",
    "init": "monitor.init_cli:init_command",
    "reference": "monitor.reference_cli:reference_command",
    "check-config": "monitor.config_cli:check_config_command",
    "worker": "monitor.stream.worker:worker_command",
    "broker": "monitor.stream.broker:broker_command",
    "rules": "monitor.rules.cli:rules_command",
    "relay": "monitor.relay.cli:relay_command",
    "dashboards": "monitor.dashboards.cli:dashboards_group",
    "demo": "monitor.demo:demo_command",
    "report": "monitor.report:report_command",
    "backtest": "monitor.backtest.cli:backtest_command",
}

_HELP = {
    "replay": "Replay JSON-lines files through the engine: a summary on a terminal, else the metrics.",
    "init": "Write a commented starter config from a sample of your predictions.",
    "reference": "Build a drift reference (frozen bins) from a JSON-lines sample.",
    "check-config": "Validate a config file: every problem at once, or 'ok'.",
    "worker": "Run the Kafka stream worker, serving /metrics.",
    "broker": "Start a local single-node Apache Kafka (KRaft) and block.",
    "rules": "Generate and check Prometheus rules and their promtool tests.",
    "relay": "Relay Alertmanager webhooks to the signed retraining webhook.",
    "dashboards": "Generate or push the Grafana dashboards.",
    "demo": "Run the whole product locally with simulated traffic.",
    "report": "Write a self-contained HTML report of one evaluation.",
    "backtest": "Which alerts would have fired over a history (real Prometheus).",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            with collector_paused():  # see monitor.gc_pause
                module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("monitor"):
                raise
            return _missing(cmd_name)
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing help must not import every sub-command's heavy dependencies.
        with formatter.section("Commands"):
            formatter.write_dl([(name, _HELP.get(name, "")) for name in self.list_commands(ctx)])


def _missing(name: str) -> click.Command:
    @click.command(name=name, help=_HELP.get(name, ""))
    def _cmd() -> None:
        raise click.ClickException(f"'monitor {name}' is not available in this build")

    return _cmd


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlmon", prog_name="monitor")
def main() -> None:
    """Streaming quality monitor for classification models."""


def run() -> None:
    """The `monitor` console script and `python -m monitor.cli`: `main` in a process of its own, which a
    one-shot command may end without tearing it down once its output is written (monitor.fast_exit)."""
    from monitor.fast_exit import claim_process

    claim_process()
    main()


if __name__ == "__main__":
    run()
