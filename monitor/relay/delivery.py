"""Background delivery of outbox requests to the retraining webhook, with capped, jittered backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from monitor.relay.metrics import RelayMetrics
from monitor.relay.outbox import Entry, Outbox
from monitor.relay.signing import (
    ATTEMPT_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign_body,
)

log = logging.getLogger("monitor.relay.delivery")

# Request Timeout and Too Many Requests say "later", not "never".
_RETRYABLE_4XX = frozenset({408, 429})
# Even when idle, look at the outbox this often: an operator may re-queue a failed request by hand.
_IDLE_POLL = 5.0


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 60.0

    def delay(self, attempts: int, rng: random.Random) -> float:
        """Delay before attempt `attempts + 1`: doubling from `initial`, capped, with equal jitter.

        Half the delay is fixed so retries never collapse to zero; the other half is random so a fleet of
        relays (or one relay with many requests) does not hit a recovering receiver in lock step.
        """
        d = min(self.maximum, self.initial * 2.0 ** max(0, attempts - 1))
        return d / 2 + rng.uniform(0, d / 2)


def redact_url(url: str) -> str:
    """The URL without user:password or query string, safe for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # the HTTP-date form is rare from webhooks; the backoff covers it


class Deliverer:
    def __init__(
        self,
        outbox: Outbox,
        url: str,
        secret: bytes,
        metrics: RelayMetrics,
        backoff: Backoff,
        request_timeout: float,
        retention: float,
        user_agent: str,
    ) -> None:
        self._outbox = outbox
        self._url = url
        self._safe_url = redact_url(url)
        self._secret = secret
        self._metrics = metrics
        self._backoff = backoff
        self._timeout = request_timeout
        self._retention = retention
        self._user_agent = user_agent
        self._wake = asyncio.Event()
        self._stopping = False
        self._rng = random.Random()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        self._task = asyncio.create_task(self._run(), name="mlmon-relay-delivery")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Let an in-flight attempt finish (up to `grace` s) so a graceful stop does not cause a re-send."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        next_prune = 0.0
        while not self._stopping:
            # Clear before looking, so an enqueue that lands while we query is not slept through.
            self._wake.clear()
            now = time.time()
            try:
                if now >= next_prune:
                    await asyncio.to_thread(self._outbox.prune, now - self._retention)
                    next_prune = now + 3600
                batch = await asyncio.to_thread(self._outbox.due, now)
                for entry in batch:
                    if self._stopping:
                        return
                    await self._attempt(entry)
                if batch:
                    continue
                nxt = await asyncio.to_thread(self._outbox.next_attempt_at)
            except Exception:
                # A broken disk or a bug must not end delivery for good: log, wait, try again.
                log.exception("relay delivery loop error; retrying in %.1fs", self._backoff.maximum)
                nxt = time.time() + self._backoff.maximum
            wake_at = min(nxt if nxt is not None else next_prune, next_prune, time.time() + _IDLE_POLL)
            timeout = max(0.0, wake_at - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _attempt(self, entry: Entry) -> None:
        assert self._session is not None
        attempt = entry.attempts + 1
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self._user_agent,
            SIGNATURE_HEADER: sign_body(self._secret, entry.body),
            TIMESTAMP_HEADER: str(int(time.time())),
            IDEMPOTENCY_HEADER: entry.idempotency_key,
            ATTEMPT_HEADER: str(attempt),
        }
        retry_after: float | None = None
        try:
            post = self._session.post(self._url, data=entry.body, headers=headers, allow_redirects=False)
            async with post as resp:
                status = resp.status
                snippet = (await resp.content.read(300)).decode("utf-8", "replace")
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            status, result, error = 0, "timeout", f"no answer within {self._timeout:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            status, result, error = 0, "connection_error", f"{type(exc).__name__}: {exc}"
        else:
            error = f"HTTP {status}: {snippet}".strip()
            if 200 <= status < 300:
                result = "2xx"
            elif status in _RETRYABLE_4XX:
                result = "retryable_4xx"
            else:
                result = f"{status // 100}xx"
        self._metrics.attempts.labels(result).inc()
        now = time.time()
        if result == "2xx":
            await asyncio.to_thread(self._outbox.mark_delivered, entry.id, now)
            self._metrics.deliveries.labels("delivered").inc()
            self._metrics.latency.observe(now - entry.created_at)
            log.info(
                "retraining request delivered: model=%s key=%s attempt=%d status=%d after %.3fs",
                entry.model, entry.idempotency_key, attempt, status, now - entry.created_at,
            )
        elif result == "4xx":
            await asyncio.to_thread(self._outbox.mark_failed, entry.id, now, error)
            self._metrics.deliveries.labels("failed").inc()
            log.error(
                "retraining request rejected by %s, giving up: model=%s key=%s attempt=%d %s",
                self._safe_url, entry.model, entry.idempotency_key, attempt, error,
            )
        else:
            delay = self._backoff.delay(attempt, self._rng)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self._backoff.maximum))
            await asyncio.to_thread(self._outbox.reschedule, entry.id, now + delay, error)
            log.warning(
                "retraining request not delivered to %s (%s), retry %d in %.2fs: model=%s key=%s",
                self._safe_url, error, attempt, delay, entry.model, entry.idempotency_key,
            )
