"""Simulated live traffic to Kafka, for docker-compose's traffic service and for trying the worker by hand.

    python -m monitor.traffic --bootstrap kafka:9092 --config /etc/mlmon/config.yaml \
        --rate 20 --duration 3600 --degrade-after 900 --drift-after 1500

Events are stamped with the wall clock and sent when their time comes (ground truth after its delay), the
way a serving system logs them; the model degrades (violence recall) and the inputs drift after the
given number of seconds.
"""

from __future__ import annotations

import time

import click

from monitor.config import load_config
from monitor.simulate import TrafficSpec


@click.command()
@click.option("--bootstrap", required=True, help="Kafka bootstrap servers.")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--rate", type=float, default=20.0, show_default=True, help="Predictions per second.")
@click.option("--duration", type=float, default=3600.0, show_default=True, help="Seconds of traffic.")
@click.option("--degrade-after", type=float, default=None, help="Seconds until violence recall collapses.")
@click.option("--drift-after", type=float, default=None, help="Seconds until the inputs drift.")
@click.option("--mean-delay", type=float, default=60.0, show_default=True, help="Mean ground-truth delay (s).")
@click.option("--seed", type=int, default=7, show_default=True)
def main(bootstrap: str, config_path: str, rate: float, duration: float, degrade_after: float | None,
         drift_after: float | None, mean_delay: float, seed: int) -> None:
    from monitor.stack import EventProducer, Feeder, simulated_events

    config = load_config(config_path)
    spec = TrafficSpec(n=int(rate * duration), start=time.time(), rate=rate, mean_delay=mean_delay,
                       degrade_at=degrade_after, drift_at=drift_after, seed=seed, model=config.models[0].name)
    events = simulated_events(spec)
    with EventProducer(bootstrap, config.kafka) as producer:
        feeder = Feeder(producer, events).start()
        while not feeder.done.wait(10):
            click.echo(f"sent {dict(feeder.sent)}", err=True)
        if feeder.error is not None:
            raise click.ClickException(f"sending failed: {feeder.error}")
    click.echo(f"done: {dict(feeder.sent)}", err=True)


if __name__ == "__main__":
    main()
