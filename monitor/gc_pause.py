"""Keep Python's cyclic garbage collector off what a command builds while it starts.

Importing numpy and pydantic, building the config models and the engine allocate a few hundred thousand
long-lived objects (modules, classes, functions, schemas, arrays). Each allocation burst triggers a
generational pass that re-scans them and frees almost nothing. Pausing the collector alone only defers
that work: the first pass after resuming scans everything allocated meanwhile (about 13 ms after a
replay). So what survives the block is frozen (`gc.freeze()`: moved to the permanent generation, which
collections skip; reference counting still frees those objects), and the collector resumes with an empty
young generation. Cycles created inside the block are not collected later; the blocks are start-up
imports and one-shot batch commands, where that is nothing worth a scan. A long-running worker unfreezes
on its own schedule (monitor.stream.gc_policy).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic GC off for the block; its survivors frozen; the GC then back as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
