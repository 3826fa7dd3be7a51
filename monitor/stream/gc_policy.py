"""Keep Python's cyclic GC off the engine's long-lived objects in a long-running worker.

The join table holds one small acyclic object graph per prediction for the whole TTL. The generational
collector re-scans them on every older-generation pass and finds nothing (replay simply pauses the
collector; bench profiles showed the same cost in the worker). A worker cannot pause it for good:
asyncio and aiokafka make reference cycles (futures, tracebacks) that only the collector frees. So after
each batch the survivors are frozen (`gc.freeze()`: the collector ignores them; reference counting still
frees them when the join drops them), and every `full_every` seconds everything is unfrozen and one full
collection frees whatever cycles were frozen meanwhile.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


class GcPolicy:
    def __init__(self, full_every: float = 600.0) -> None:
        self.full_every = full_every
        self._next_full = time.monotonic() + full_every

    def after_batch(self) -> None:
        now = time.monotonic()
        if now >= self._next_full:
            started = time.monotonic()
            gc.unfreeze()
            found = gc.collect()
            log.debug("full GC pass: %d unreachable objects, %.2f s", found, time.monotonic() - started)
            self._next_full = now + self.full_every
        gc.freeze()

    def close(self) -> None:
        gc.unfreeze()
