"""The relay's own Prometheus metrics, in a registry per relay (tests run several relays in one process).

Names are defined here rather than in monitor/conventions.py because only the relay and its docs use them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

WEBHOOKS_RECEIVED: Final = "mlmon_relay_webhooks_received_total"
WEBHOOKS_REJECTED: Final = "mlmon_relay_webhooks_rejected_total"
ALERTS_IGNORED: Final = "mlmon_relay_alerts_ignored_total"
REQUESTS_ENQUEUED: Final = "mlmon_relay_requests_enqueued_total"
DUPLICATES: Final = "mlmon_relay_duplicates_total"
COOLDOWN_SUPPRESSED: Final = "mlmon_relay_cooldown_suppressions_total"
DELIVERIES: Final = "mlmon_relay_deliveries_total"
DELIVERY_ATTEMPTS: Final = "mlmon_relay_delivery_attempts_total"
DELIVERY_LATENCY: Final = "mlmon_relay_delivery_latency_seconds"
OUTBOX_DEPTH: Final = "mlmon_relay_outbox_depth"
OUTBOX_OLDEST_AGE: Final = "mlmon_relay_outbox_oldest_pending_age_seconds"

# Model label values come from alert labels; anything not in the config is folded into one series so a
# misbehaving sender cannot create unbounded series.
OTHER_MODEL: Final = "_other"


class _OutboxCollector(Collector):
    def __init__(self, stats: Callable[[], tuple[int, float | None]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        depth, oldest = self._stats()
        g = GaugeMetricFamily(OUTBOX_DEPTH, "Retraining requests in the outbox waiting for delivery.")
        g.add_metric([], depth)
        yield g
        a = GaugeMetricFamily(
            OUTBOX_OLDEST_AGE, "Age of the oldest undelivered request (0 when the outbox is drained)."
        )
        a.add_metric([], 0.0 if oldest is None else max(0.0, time.time() - oldest))
        yield a


class RelayMetrics:
    def __init__(self, models: Iterable[str], outbox_stats: Callable[[], tuple[int, float | None]]) -> None:
        self.models = frozenset(models)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # prometheus-client appends _total to counter names itself.
        self.received = Counter(
            WEBHOOKS_RECEIVED.removesuffix("_total"), "Webhook requests received on /alertmanager.",
            registry=r,
        )
        self.rejected = Counter(
            WEBHOOKS_REJECTED.removesuffix("_total"), "Webhook requests rejected with a 4xx, by reason.",
            ["reason"], registry=r,
        )
        self.ignored = Counter(
            ALERTS_IGNORED.removesuffix("_total"),
            "Alerts in accepted webhooks that start no request (other alert, resolved, no model label).",
            ["reason"], registry=r,
        )
        self.enqueued = Counter(
            REQUESTS_ENQUEUED.removesuffix("_total"), "Retraining requests written to the outbox.", ["model"],
            registry=r,
        )
        self.duplicates = Counter(
            DUPLICATES.removesuffix("_total"),
            "Notifications ignored because every alert in them was already relayed (Alertmanager repeats).",
            ["model"], registry=r,
        )
        self.suppressed = Counter(
            COOLDOWN_SUPPRESSED.removesuffix("_total"),
            "Notifications with a new alert suppressed by the model's retraining cooldown.", ["model"],
            registry=r,
        )
        self.deliveries = Counter(
            DELIVERIES.removesuffix("_total"),
            "Requests that left the outbox: delivered (2xx) or failed (non-retryable 4xx).", ["outcome"],
            registry=r,
        )
        self.attempts = Counter(
            DELIVERY_ATTEMPTS.removesuffix("_total"),
            "Delivery attempts by result (2xx, 4xx, 5xx, retryable_4xx, 3xx, timeout, connection_error).",
            ["result"], registry=r,
        )
        self.latency = Histogram(
            DELIVERY_LATENCY,
            "Time from writing a request to the outbox to the receiver's 2xx.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 6 * 3600, 86400),
            registry=r,
        )
        for outcome in ("delivered", "failed"):
            self.deliveries.labels(outcome)
        r.register(_OutboxCollector(outbox_stats))

    def model(self, name: str) -> str:
        return name if name in self.models else OTHER_MODEL
