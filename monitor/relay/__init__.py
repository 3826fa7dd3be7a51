"""`monitor relay`: Alertmanager webhooks in, signed retraining requests out, through a durable outbox.

Public API:
    start_relay(cfg, port, outbox_path, ...) -> RelayHandle   run the relay in the current event loop
    verify_signature(secret, body, header) -> bool            for receivers of the retraining webhook
    sign_body(secret, body) -> str                            the X-Mlmon-Signature value
See docs/relay.md.
"""

from monitor.relay.server import RelayHandle, RelaySettings, RelayStartupError, start_relay
from monitor.relay.signing import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign_body,
    verify_bearer,
    verify_signature,
)

__all__ = [
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "RelayHandle",
    "RelaySettings",
    "RelayStartupError",
    "sign_body",
    "start_relay",
    "verify_bearer",
    "verify_signature",
]
