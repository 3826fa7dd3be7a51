"""`monitor demo`: the whole product on this machine, without Docker, with traffic that goes wrong.

A local Kafka, the worker, Prometheus with the generated rules, Alertmanager with deploy/alertmanager.yml's
routing, the retraining relay and stand-ins for the pager, the ticket system and the retraining webhook,
all through monitor.stack.LocalStack. A simulator (monitor.simulate) sends predictions with delayed ground
truth, then shifts the inputs and breaks the model's violence recall; the terminal shows what the
monitor sees and what reaches whom. docs/demo.md explains what to look at.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import click
import yaml
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from monitor import conventions as c
from monitor.config import MINUTE, MonitorConfig, format_duration, parse_config
from monitor.rules import RuleOptions, tiers_for
from monitor.services import ServiceError
from monitor.simulate import TrafficSpec
from monitor.stack import PAGER_PATH, TICKET_PATH, Feeder, LocalStack, Received, StackError, simulated_events
from monitor.stream.broker import BrokerError
from monitor.stream.kafka_setup import SetupError

MODEL = "moderation"
RATE = 20.0  # predictions per second


@dataclass(frozen=True)
class Timeline:
    """Seconds after the live traffic starts; `history` seconds of healthy traffic are sent at once first."""

    history: float
    drift_at: float
    degrade_at: float
    duration: float
    stop_when_done: bool  # --fast ends once everything it promises has happened


def timeline(fast: bool, duration: float | None) -> Timeline:
    if fast:
        return Timeline(history=300, drift_at=10, degrade_at=15, duration=duration or 120, stop_when_done=True)
    return Timeline(history=300, drift_at=60, degrade_at=120, duration=duration or 360, stop_when_done=False)


def demo_config() -> MonitorConfig:
    """The bundled example with windows of minutes instead of days (docs/demo.md says why each change)."""
    base = resources.files("monitor") / "examples"
    data = yaml.safe_load((base / "config.yaml").read_text(encoding="utf-8"))
    data["windows"] = ["2m", "5m", "10m", "30m", "1h", "2h"]
    data["join"] = {"ttl": "15m"}  # longer than the history sent at start-up
    (model,) = data["models"]
    model["reference"] = str(Path(str(base / model["reference"])).resolve())
    # 0.7 puts the simulated model's healthy violence recall (about 0.67) below its 0.85 target.
    model["thresholds"] = {}
    model["min_events"] = 30
    for slo in model["slos"]:
        slo["period"] = "2h"
    return parse_config(data)


# Alerts fire on the first evaluation, on 2m windows; MLMonitorDown keeps a short `for:` because
# `absent(up)` is true until Prometheus' first scrape, which would page at start-up.
# Runbook links point at this checkout's docs/runbooks/, so they open on this machine.
_RUNBOOKS = Path(__file__).resolve().parent.parent / "docs" / "runbooks"
DEMO_RULES = RuleOptions(for_overrides={"*": "0s", c.ALERT_DOWN: "15s"}, fast_window=2 * MINUTE,
                         drift_window=2 * MINUTE, slow_window=2 * MINUTE,
                         runbook_base=_RUNBOOKS.as_uri() + "/" if _RUNBOOKS.is_dir() else RuleOptions.runbook_base)


# --- what the demo watches ----------------------------------------------------------------------------------


@dataclass
class Summary:
    injected: dict[str, float]  # what -> seconds into the live traffic
    fired: dict[str, float] = field(default_factory=dict)  # alert -> first firing, seconds into the live traffic
    page_after_injection: float | None = None  # burn-rate page at the pager, seconds after the degradation
    retraining_after_injection: float | None = None  # first retraining request, seconds after the shift
    # Distinct alerts that reached the pager / the ticket webhook, as the event log lists them; Alertmanager
    # delivers each several times (group updates, repeats, resolutions), counted apart.
    pages: int = 0
    tickets: int = 0
    pager_deliveries: int = 0
    ticket_deliveries: int = 0
    retraining_requests: int = 0
    retraining_verified: bool = False
    retraining_signals: list[str] = field(default_factory=list)
    # What reached the pager and the ticket webhook, as the event log names them, and the PagerDuty
    # routing keys the pages carried.
    paged: list[str] = field(default_factory=list)
    ticketed: list[str] = field(default_factory=list)
    routing_keys: list[str] = field(default_factory=list)
    events_sent: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False

    def missing(self) -> list[str]:
        """What the demo promised and did not see."""
        out = []
        if self.page_after_injection is None:
            out.append(f"a {c.ALERT_LABEL_ERROR_BUDGET_BURN} page at the pager")
        if c.ALERT_FEATURE_DRIFT not in self.fired:
            out.append(f"{c.ALERT_FEATURE_DRIFT} firing")
        if self.retraining_requests != 1 or not self.retraining_verified:
            out.append(f"exactly one signed retraining request (got {self.retraining_requests})")
        return out


def _is_burn_page(r: Received) -> bool:
    body = r.json()
    firing = str(body.get("payload", {}).get("custom_details", {}).get("firing", ""))
    return body.get("event_action") == "trigger" and f"alertname = {c.ALERT_LABEL_ERROR_BUDGET_BURN}" in firing \
        and "severity = page" in firing


class Observer:
    """Polls Prometheus and the receivers once a second; keeps the figures, the firing alerts and a log."""

    def __init__(self, stack: LocalStack, cfg: MonitorConfig, plan: Timeline, t0: float,
                 say: Callable[[str], None]) -> None:
        self.stack, self.plan, self.t0, self.say = stack, plan, t0, say
        slo = next(s for s in cfg.models[0].slos if s.label == "violence")
        self.page_tier = next(t for t in tiers_for(slo, cfg.windows) if t.name == "page_fast")
        self.drift_window = DEMO_RULES.windows(cfg).drift
        self.figures: dict[str, str] = {}
        self.firing: list[str] = []
        self.log: list[str] = []
        self.summary = Summary(injected={"feature shift": plan.drift_at, "violence degradation": plan.degrade_at})
        self._seen_alerts: set[str] = set()
        self._paged: set[str] = set()
        self._ticketed: set[str] = set()
        self._seen_received = 0
        self._announced: set[str] = set()
        self._done_since: float | None = None

    def now(self) -> float:
        return time.time() - self.t0

    def note(self, text: str) -> None:
        line = f"{self.now():6.1f}s  {text}"
        self.log.append(line)
        self.say(line)

    def _value(self, expr: str, fmt: str = "{:.3f}") -> str:
        try:
            result = self.stack.query(expr)
        except (OSError, ServiceError):
            return "?"
        return ", ".join(fmt.format(float(r["value"][1])) for r in result) or "-"

    def poll(self, feeder: Feeder) -> None:
        for what, at in self.summary.injected.items():
            if self.now() >= at and what not in self._announced:
                self._announced.add(what)
                self.note(f"injected: {what}")
        w, tier = self.drift_window, self.page_tier
        window = format_duration(tier.long_window)
        self.figures = {
            "events sent (predictions / ground truth)": f"{feeder.sent['prediction']} / {feeder.sent['ground_truth']}",
            "violence recall, 5m": self._value(f'mlmon:label_recall{{model="{MODEL}", label="violence", '
                                               'window="5m"}'),
            f"violence-recall burn rate, {window} (pages above {tier.threshold:g}x)":
                self._value(f'mlmon:error_budget_burn_rate{{model="{MODEL}", slo="violence-recall", '
                            f'window="{window}"}}', "{:.2f}x"),
            f"feature PSI text_length / lang, {w} (significant >= 0.25)":
                " / ".join(self._value(f'mlmon:feature_psi{{model="{MODEL}", feature="{f}", window="{w}"}}')
                           for f in ("text_length", "lang")),
        }
        try:
            alerts = self.stack.query('ALERTS{alertstate="firing"}')
        except (OSError, ServiceError):
            alerts = []
        self.firing = sorted({_alert_text(a["metric"]) for a in alerts})
        for a in alerts:
            name = a["metric"]["alertname"]
            if name not in self.summary.fired:
                self.summary.fired[name] = round(self.now(), 1)
            text = _alert_text(a["metric"])
            if text not in self._seen_alerts:
                self._seen_alerts.add(text)
                self.note(f"firing: {text}")
        self._receipts()
        self.summary.events_sent = dict(feeder.sent)

    def _receipts(self) -> None:
        assert self.stack.receiver is not None
        received = self.stack.receiver.received()
        for r in received[self._seen_received:]:
            body = r.json()
            if r.path == PAGER_PATH:
                self.summary.pager_deliveries += 1
                if body.get("event_action") == "trigger" and body["payload"]["summary"] not in self._paged:
                    self._paged.add(body["payload"]["summary"])
                    self.summary.pages = len(self._paged)
                    self.summary.paged = sorted(self._paged)
                    self.summary.routing_keys = sorted({*self.summary.routing_keys, str(body.get("routing_key"))})
                    self.note(f"page at the pager: {body['payload']['summary']}")
                if self.summary.page_after_injection is None and _is_burn_page(r):
                    self.summary.page_after_injection = round(r.at - self.t0 - self.plan.degrade_at, 1)
            elif r.path == TICKET_PATH:
                self.summary.ticket_deliveries += 1
                for alert in body.get("alerts", []):
                    text = "ticket: " + _alert_text(alert["labels"])
                    if alert["status"] == "firing" and text not in self._ticketed:
                        self._ticketed.add(text)
                        self.summary.tickets = len(self._ticketed)
                        self.summary.ticketed = sorted(self._ticketed)
                        self.note(text)
            else:
                self.summary.retraining_requests += 1
                self.summary.retraining_verified = self.summary.retraining_requests == 1 and bool(r.verified)
                signals = sorted({a["labels"].get("signal", "?") for a in body.get("alerts", [])})
                self.summary.retraining_signals = signals
                if self.summary.retraining_after_injection is None:
                    self.summary.retraining_after_injection = round(r.at - self.t0 - self.plan.drift_at, 1)
                self.note(f"retraining request at the webhook: model {body.get('model')}, signal "
                          f"{', '.join(signals)}, signature {'verified' if r.verified else 'INVALID'}")
        self._seen_received = len(received)

    def done(self, linger: float = 10.0) -> bool:
        """Everything promised has happened, and `linger` seconds have passed since, so that Alertmanager's
        repeats are seen reaching the relay without a second request."""
        if self.summary.missing():
            self._done_since = None
            return False
        if self._done_since is None:
            self._done_since = self.now()
        return self.now() - self._done_since >= linger


def _alert_text(labels: dict[str, str]) -> str:
    detail = [labels[k] for k in (c.L_LABEL, c.L_FEATURE, c.L_BURNRATE_TIER, "signal") if k in labels]
    return f"{labels['alertname']} ({labels.get(c.L_SEVERITY, '?')}) {' '.join(detail)}".strip()


# --- display ------------------------------------------------------------------------------------------------


def _where(stack: LocalStack) -> list[tuple[str, str]]:
    urls = stack.urls
    return [
        ("worker metrics", urls["metrics"]),
        ("Prometheus", urls["prometheus"] + "/alerts"),
        ("Alertmanager", urls["alertmanager"] + "/#/alerts"),
        ("relay", urls["relay"] + "/metrics"),
        ("pager / tickets / retraining webhook", urls["receiver"] + " (in this process)"),
    ]


def _render(obs: Observer, stack: LocalStack) -> RenderableType:
    where = Table.grid(padding=(0, 2))
    for name, url in _where(stack):
        where.add_row(name, url)
    figures = Table(show_header=False, expand=True)
    for name, value in obs.figures.items():
        figures.add_row(name, value)
    s = obs.summary
    figures.add_row("pages / tickets / retraining requests", f"{s.pages} / {s.tickets} / {s.retraining_requests}")
    alerts = "\n".join(obs.firing) or "none"
    return Group(
        Panel(where, title=f"mlmon demo  {obs.now():.0f}s of {obs.plan.duration:.0f}s", border_style="blue"),
        Panel(figures, title="what Prometheus sees"),
        Panel(alerts, title="firing alerts"),
        Panel("\n".join(obs.log[-10:]) or "waiting for traffic", title="events"),
    )


def _print_summary(console: Console, s: Summary) -> None:
    console.print("\n[bold]summary[/bold]")
    for what, at in s.injected.items():
        console.print(f"  injected {what} at {at:.0f}s")
    for name, at in sorted(s.fired.items(), key=lambda kv: kv[1]):
        console.print(f"  fired {name} at {at:.0f}s")
    if s.page_after_injection is not None:
        console.print(f"  burn-rate page at the pager {s.page_after_injection:.1f}s after the degradation")
    if s.retraining_after_injection is not None:
        console.print(f"  retraining request {s.retraining_after_injection:.1f}s after the feature shift "
                      f"(signature {'verified' if s.retraining_verified else 'NOT verified'}, "
                      f"signal {', '.join(s.retraining_signals)})")
    console.print(f"  received: {s.pages} page(s) ({s.pager_deliveries} pager deliveries, counting Alertmanager's "
                  f"updates, repeats and resolutions), {s.tickets} ticket(s) ({s.ticket_deliveries} notifications), "
                  f"{s.retraining_requests} retraining request(s); events sent {s.events_sent}")
    missing = s.missing()
    if missing:
        console.print(f"  [red]not seen: {'; '.join(missing)}[/red]")
    else:
        console.print("  [green]everything the demo promised happened[/green]")


# --- the command --------------------------------------------------------------------------------------------


def run_demo(plan: Timeline, console: Console, tui: bool, bootstrap: str | None = None, keep: bool = False) -> Summary:
    cfg = demo_config()
    say: Callable[[str], None] = (lambda line: None) if tui else console.print
    with LocalStack(cfg, bootstrap=bootstrap, rule_options=DEMO_RULES,
                    progress=lambda m: console.print(f"[dim]{m}[/dim]")) as stack:
        console.print("[bold]where to look[/bold]")
        for name, url in _where(stack):
            console.print(f"  {name:38} {url}")
        console.print(f"  {'config (short windows)':38} {stack.config_path}")
        t0 = time.time()
        events = simulated_events(TrafficSpec(
            n=int(RATE * (plan.history + plan.duration + 5)), start=t0 - plan.history, rate=RATE, mean_delay=5.0,
            drift_at=plan.history + plan.drift_at, degrade_at=plan.history + plan.degrade_at, seed=7))
        console.print(f"sending {plan.history:.0f}s of healthy history, then {RATE:.0f} predictions/s live; "
                      f"feature shift at {plan.drift_at:.0f}s, violence degradation at {plan.degrade_at:.0f}s")
        obs = Observer(stack, cfg, plan, t0, say)
        feeder = Feeder(stack.producer(), events).start()
        try:
            live = Live(_render(obs, stack), console=console, refresh_per_second=2) if tui else None
            last_status = 0.0
            with live or contextlib.nullcontext():
                while obs.now() < plan.duration:
                    if feeder.error is not None:
                        raise click.ClickException(f"the traffic simulator failed: {feeder.error}")
                    obs.poll(feeder)
                    if live is not None:
                        live.update(_render(obs, stack))
                    elif obs.now() - last_status >= 10:
                        last_status = obs.now()
                        console.print(f"{obs.now():6.1f}s  " + "; ".join(f"{k}: {v}" for k, v in obs.figures.items()))
                    if plan.stop_when_done and obs.done():
                        obs.note("everything promised has happened; stopping")
                        break
                    time.sleep(1.0)
        except KeyboardInterrupt:
            obs.summary.interrupted = True
        finally:
            feeder.stop()
        if keep and not obs.summary.interrupted:
            _print_summary(console, obs.summary)
            _keep_running(console, stack)
        console.print("[dim]stopping the stack[/dim]")
    return obs.summary


def _keep_running(console: Console, stack: LocalStack) -> None:
    """--keep: the stack stays up (traffic stopped) for a look around, until Ctrl-C or SIGTERM."""
    console.print("\n[bold]the stack keeps running[/bold] (the traffic has stopped); Ctrl-C stops it")
    for name, url in _where(stack):
        console.print(f"  {name:38} {url}")
    console.print(f"  {'config (short windows)':38} {stack.config_path}")
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(1.0)


@click.command("demo")
@click.option("--fast", is_flag=True, help="Inject early and stop once everything has fired (about a minute).")
@click.option("--duration", type=click.FloatRange(min=20), default=None,
              help="Seconds of live traffic [default: 360; with --fast at most 120].")
@click.option("--no-tui", is_flag=True, help="Plain lines instead of the live terminal display.")
@click.option("--bootstrap", default=None, metavar="HOST:PORT",
              help="Use this Kafka instead of starting a local one (topics get a unique suffix).")
@click.option("--keep", is_flag=True,
              help="After the story, keep the stack running with its URLs printed until Ctrl-C.")
@click.option("--json-summary", type=click.Path(dir_okay=False, path_type=Path), default=None, hidden=True,
              help="Also write the summary as JSON (tests).")
def demo_command(fast: bool, duration: float | None, no_tui: bool, bootstrap: str | None, keep: bool,
                 json_summary: Path | None) -> None:
    """Run the whole product locally with simulated traffic that degrades and drifts.

    Starts Kafka, the worker, Prometheus, Alertmanager and the retraining relay, sends predictions with
    delayed ground truth, shifts the inputs and breaks the violence label, and shows what fires and what
    reaches the pager and the retraining webhook. Exits 0 when everything promised happened.
    """
    # Plain lines are meant for logs and pipes: never wrap them at the terminal width.
    console = Console(soft_wrap=no_tui)
    plan = timeline(fast, duration)
    # SIGTERM ends the demo like Ctrl-C, so the stack is always stopped in order.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = run_demo(plan, console, tui=not no_tui and console.is_terminal, bootstrap=bootstrap, keep=keep)
    except (StackError, ServiceError, BrokerError, SetupError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted while starting") from None
    if not keep or summary.interrupted:
        _print_summary(console, summary)
    if json_summary is not None:
        json_summary.write_text(json.dumps({**asdict(summary), "missing": summary.missing()}, indent=2) + "\n")
    if summary.interrupted:
        raise SystemExit(130)
    if summary.missing():
        raise SystemExit(1)
