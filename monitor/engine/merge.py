"""One view over several engines' states: the figures of N partition engines as if they were one.

Every statistic is additive, so the merged view sums: window blocks per (version name, bucket) — the
version indexes of two engines differ, the names do not —, cumulative blocks, and the counters,
histograms and pending counts of monitor.engine.tallies (which says how each one adds).
`figures.model_figures` then computes every ratio (precision, ECE, PSI, burn rates) from the sums, never
by averaging the engines' ratios. The view holds no join entries: it is for
evaluation only and must not be fed events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from monitor.config import ModelConfig, MonitorConfig
from monitor.engine.engine import Engine
from monitor.engine.figures import Figures
from monitor.engine.model_state import ModelState, segment_key
from monitor.engine.snapshot import empty_join_columns
from monitor.engine.tallies import JoinCounters
from monitor.engine.windows import BlockStore
from monitor.reference import Reference


def merge_model_states(config: MonitorConfig, cfg: ModelConfig, reference: Reference | None,
                       states: Sequence[ModelState]) -> ModelState:
    """A fresh ModelState whose statistics are the sums of `states` (all of the same model)."""
    out = ModelState(config, cfg, reference)
    join = JoinCounters.zero()
    watermark = float("-inf")
    for s in states:
        if s.layout.size != out.layout.size:
            raise ValueError(f"model {cfg.name!r}: states with different statistics layouts cannot be merged")
        vmap = [out.version_index(name) for name in s.version_names]
        # Block keys: versions by name, segment values by name (admitted under the merged state's cap).
        keymap = dict(enumerate(vmap))
        for seg, values in enumerate(s.segment_values):
            for i, value in enumerate(values):
                keymap[segment_key(seg, i)] = segment_key(seg, out.segment_value_index(seg, value))
        out.tallies.add(s.tallies, vmap)
        _add_store(out.store, s.store, keymap)
        join.add(JoinCounters.of(s.join))
        watermark = max(watermark, s.join.watermark)
    # The view's join holds the summed counters and no entries.
    join.restore(out.join, [], empty_join_columns(out.n_labels), 0, watermark)
    return out


def _add_store(out: BlockStore, src: BlockStore, vmap: dict[int, int]) -> None:
    out.newest_fine = max(out.newest_fine, src.newest_fine)
    for target, blocks in ((out.fine, src.fine), (out.coarse, src.coarse)):
        for v, per_version in blocks.items():
            dest = target.setdefault(vmap[v], {})
            for bucket, block in per_version.items():
                have = dest.get(bucket)
                if have is None:
                    dest[bucket] = block.copy()
                else:
                    have += block
    for v, block in src.total.items():
        have = out.total.get(vmap[v])
        if have is None:
            out.total[vmap[v]] = block.copy()
        else:
            have += block


def merged_engine(config: MonitorConfig, references: dict[str, Reference | None],
                  engines: Sequence[Engine]) -> Engine:
    """A read-only Engine over the sums of `engines`: its `evaluate(at)` is what one engine that had seen
    every engine's events would report (`at` defaults to the newest event time over all of them)."""
    for e in engines:
        e.flush()
    # The view holds no join entries: with a memory budget its joins would each open (and delete) an
    # on-disk store on every scrape.
    config = config.model_copy(update={"join": config.join.model_copy(update={"memory_entries": None})})
    out = Engine(config, references)
    out.models = {cfg.name: merge_model_states(config, cfg, references.get(cfg.name),
                                               [e.models[cfg.name] for e in engines])
                  for cfg in config.models}
    invalid: Counter[tuple[str, str]] = Counter()
    for e in engines:
        invalid.update(e.invalid)
    out.invalid = invalid
    return out


def merged_figures(config: MonitorConfig, references: dict[str, Reference | None], engines: Sequence[Engine],
                   at: float | None = None) -> Figures:
    return merged_engine(config, references, engines).evaluate(at)


def block_count(engines: Sequence[Engine]) -> int:
    """Window blocks held over all engines (a size gauge for docs and benchmarks)."""
    return int(np.sum([len(pv) for e in engines for s in e.models.values()
                       for store in (s.store.fine, s.store.coarse) for pv in store.values()]))
