"""One view over several engines' states: the figures of N partition engines as if they were one.

Every statistic is additive, so the merged view sums: window blocks per (version name, bucket) — the
version indexes of two engines differ, the names do not —, cumulative blocks, and the counters,
histograms and pending counts of monitor.engine.tallies (which says how each one adds).
`figures.model_figures` then computes every ratio (precision, ECE, PSI, burn rates) from the sums, never
by averaging the engines' ratios. The view holds no join entries: it is for
evaluation only and must not be fed events.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from monitor.config import MonitorConfig
from monitor.engine.engine import Engine
from monitor.engine.figures import Figures
from monitor.reference import Reference


def merged_engine(config: MonitorConfig, references: dict[str, Reference | None],
                  engines: Sequence[Engine]) -> Engine:
    """A read-only Engine over the sums of `engines`: its `evaluate(at)` is what one engine that had seen
    every engine's events would report (`at` defaults to the newest event time over all of them)."""
    # The view holds no join entries: with a memory budget its joins would each open (and delete) an
    # on-disk store on every scrape.
    config = config.model_copy(update={"join": config.join.model_copy(update={"memory_entries": None})})
    out = Engine(config, references)
    for e in engines:
        e.flush()
        out.add(e)
    return out


def merged_figures(config: MonitorConfig, references: dict[str, Reference | None], engines: Sequence[Engine],
                   at: float | None = None) -> Figures:
    return merged_engine(config, references, engines).evaluate(at)


def block_count(engines: Sequence[Engine]) -> int:
    """Window blocks held over all engines (a size gauge for docs and benchmarks)."""
    return int(np.sum([len(pv) for e in engines for s in e.models.values()
                       for store in (s.store.fine, s.store.coarse) for pv in store.values()]))
