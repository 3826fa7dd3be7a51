"""Keep Python's cyclic garbage collector off what a command builds while it starts.

Importing numpy and pydantic and building the config models allocate a few hundred thousand long-lived
objects (modules, classes, functions, schemas). Each allocation burst triggers a generational pass that
re-scans them and frees almost nothing. Pausing the collector alone only defers that work: the first pass
after resuming scans everything allocated meanwhile. So what survives the block is frozen (`gc.freeze()`:
moved to the permanent generation, which collections skip; reference counting still frees those objects)
and the collector resumes with an empty young generation. Cycles that became garbage inside the block are
frozen too and never collected, so the blocks are imports and what a command keeps until it exits (a
replay's config and input lines), not work that drops cyclic garbage. A long-running worker unfreezes on
its own schedule (monitor.stream.gc_policy).
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
