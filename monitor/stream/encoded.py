"""Changelog entries as Kafka record batches encoded by the native core, handed whole to aiokafka.

A checkpoint writes one record per changed join entry, millions after a burst, and aiokafka appends
records one Python call at a time. `monitor._native.encode_record_batches` encodes the same transactional
v2 batches from the entries' keys and fixed-width values (the `kafka-protocol` crate's encoder), and
`EncodedBatch` hands each to `AIOKafkaProducer.send_batch` as aiokafka's own `BatchBuilder` would: its
sender writes the producer id, epoch and base sequence into the header when it drains the batch
(`_set_producer_state`, after which the CRC is recomputed) and sends the bytes `_build` returns. So
idempotence, transactions and retries stay aiokafka's.

This leans on that builder's interface (`_set_producer_state`, `_build`, `size`, `record_count`,
`closed`, `close`); `supported()` checks it is still there, and without it (or without the native core,
or with `MLMON_NATIVE=0`) the records are appended one by one as before.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
from aiokafka.producer.message_accumulator import BatchBuilder, MessageBatch

from monitor.engine import native

try:
    from monitor import _native
except ImportError:  # the pure-Python install
    _native = None  # type: ignore[assignment]


def supported() -> bool:
    """The native core is in use (`MLMON_NATIVE=0` turns it off, as everywhere) and aiokafka's producer
    still drives batches through the interface `EncodedBatch` provides."""
    return native.enabled() and _aiokafka_interface()


@functools.cache
def _aiokafka_interface() -> bool:
    return (hasattr(_native, "encode_record_batches")
            and all(callable(getattr(BatchBuilder, name, None))
                    for name in ("_set_producer_state", "_build", "size", "record_count", "closed", "close"))
            and all(callable(getattr(MessageBatch, name, None)) for name in ("set_producer_state", "get_data_buffer")))


class EncodedBatch(BatchBuilder):
    """One encoded batch in the shape of aiokafka's BatchBuilder (closed: nothing more is appended)."""

    def __init__(self, raw: bytearray, count: int) -> None:  # no super().__init__: there is no builder
        self._raw = raw
        self._count = count
        self._closed = True
        self._buffer = None

    def append(self, *, timestamp: Any, key: Any, value: Any, headers: Any = None) -> None:
        return None  # full: aiokafka then starts a batch of its own

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        _native.set_producer_state(self._raw, producer_id, producer_epoch, base_sequence)

    def _build(self) -> bytearray:
        return self._raw

    def size(self) -> int:
        return len(self._raw)

    def record_count(self) -> int:
        return self._count


def id_bytes(ids: list[str]) -> tuple[bytes, np.ndarray]:
    """The ids UTF-8 encoded end to end, and where each ends."""
    keys = [pid.encode("utf-8", "surrogatepass") for pid in ids]
    return b"".join(keys), np.cumsum(np.fromiter(map(len, keys), dtype=np.int64, count=len(keys)))


def entry_batches(prefix: bytes, blob: bytes, ends: np.ndarray, rows: bytes | None, width: int,
                  max_bytes: int) -> tuple[list[EncodedBatch], int]:
    """Batches of records `prefix + id` -> the id's `width`-byte row of `rows` (tombstones when `rows` is
    None), id i being blob[ends[i-1]:ends[i]] (`id_bytes`), and their key and value bytes."""
    raw = _native.encode_record_batches(prefix, blob, ends, rows, width, max_bytes, int(time.time() * 1000))
    size = len(prefix) * len(ends) + len(blob) + (len(rows) if rows is not None else 0)
    return [EncodedBatch(b, n) for b, n in raw], size
