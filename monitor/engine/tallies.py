"""A model's counters and histograms, and its join's counters, as values: one place that says how each one
adds (the merged view of partition engines, monitor.engine.merge), dumps and loads (checkpoints,
monitor.engine.snapshot) and compares.

Each field of `ModelTallies` and `JoinCounters` names its `Kind`; merge and snapshot iterate the fields, so
adding a counter is one line here. A field a checkpoint does not hold (written before the field existed)
loads as zero, which is what it would have counted had it existed.

Checkpoint layout (unchanged since the fields were listed by hand, tests/test_snapshot_format.py): every
field goes to the model's JSON under its own name, except histograms, whose counts are an npz member
`<model prefix>.<name>` and whose sums go to the JSON as `<name>_sum`.

Per-version fields are lists indexed by the model's version index (ModelState.version_index); adding
another model's tallies maps its indexes through `vmap` (its version index -> this one's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar, Protocol, TypeVar, get_type_hints

import numpy as np

from monitor.conventions import (
    GROUND_TRUTH_DELAY_BUCKETS,
    LATENCY_BUCKETS,
    SIDE_GROUND_TRUTH,
    SIDE_JOINED,
    SIDE_PREDICTION,
)

T = TypeVar("T")
Meta = dict[str, Any]
Arrays = dict[str, np.ndarray]


class StateError(ValueError):
    """A dumped state that does not fit the state loading it (another configuration, a wrong shape, an
    unknown version); checkpoints and the changelog report it with their own error type."""


class TalliesError(StateError):
    """A dumped value that does not fit (wrong shape, wrong length)."""


class Histogram:
    """Cumulative-at-export histogram counts (the Prometheus shape) kept as a numpy vector."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1)
        self.sum = 0.0

    def observe(self, values: np.ndarray) -> None:
        # side="left": a value equal to a bound belongs to that bound's bucket (le="bound").
        self.counts += np.bincount(np.searchsorted(self.buckets, values, side="left"), minlength=self.counts.size)
        self.sum += float(np.sum(values))

    def add(self, other: Histogram) -> None:
        if other.counts.shape != self.counts.shape:
            raise TalliesError("histogram buckets differ")
        self.counts += other.counts
        self.sum += other.sum

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Histogram) and np.array_equal(self.buckets, other.buckets)
                and np.array_equal(self.counts, other.counts) and self.sum == other.sum)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Histogram(counts={self.counts.tolist()}, sum={self.sum})"


# --- kinds: how one field adds, dumps and loads ---------------------------------------------------------
class Kind(Protocol[T]):
    per_version: bool

    def zero(self) -> T: ...

    def add(self, mine: T, other: T, vmap: Sequence[int]) -> T:
        """The sum (may update `mine` in place and return it)."""

    def dump(self, name: str, value: T, meta: Meta, arrays: Arrays) -> None: ...

    def load(self, name: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_versions: int) -> T: ...


class Count:
    """An integer that adds."""

    per_version = False

    def zero(self) -> int:
        return 0

    def add(self, mine: int, other: int, vmap: Sequence[int]) -> int:
        return mine + other

    def dump(self, name: str, value: int, meta: Meta, arrays: Arrays) -> None:
        meta[name] = value

    def load(self, name: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_versions: int) -> int:
        return int(meta.get(name, 0))


@dataclass(frozen=True)
class Keyed:
    """Integers by key (a side, a topic) that add key by key; `keys` are always present (their figures are
    exported at zero)."""

    keys: tuple[str, ...]
    per_version: ClassVar[bool] = False

    def zero(self) -> dict[str, int]:
        return dict.fromkeys(self.keys, 0)

    def add(self, mine: dict[str, int], other: Mapping[str, int], vmap: Sequence[int]) -> dict[str, int]:
        for k, n in other.items():
            mine[k] = mine.get(k, 0) + n
        return mine

    def dump(self, name: str, value: dict[str, int], meta: Meta, arrays: Arrays) -> None:
        meta[name] = dict(value)

    def load(self, name: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
             n_versions: int) -> dict[str, int]:
        return {**self.zero(), **{str(k): int(v) for k, v in meta.get(name, {}).items()}}


class Latest:
    """Times by key that combine by max (the newest event time per topic)."""

    per_version = False

    def zero(self) -> dict[str, float]:
        return {}

    def add(self, mine: dict[str, float], other: Mapping[str, float], vmap: Sequence[int]) -> dict[str, float]:
        for k, ts in other.items():
            mine[k] = max(mine.get(k, ts), ts)
        return mine

    def dump(self, name: str, value: dict[str, float], meta: Meta, arrays: Arrays) -> None:
        meta[name] = dict(value)

    def load(self, name: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
             n_versions: int) -> dict[str, float]:
        return {str(k): float(v) for k, v in meta.get(name, {}).items()}


class PerVersionCount:
    """An integer per model version."""

    per_version = True

    def zero(self) -> list[int]:
        return []

    def grow(self, value: list[int]) -> None:
        value.append(0)

    def add(self, mine: list[int], other: list[int], vmap: Sequence[int]) -> list[int]:
        for v, n in enumerate(other):
            mine[vmap[v]] += n
        return mine

    def dump(self, name: str, value: list[int], meta: Meta, arrays: Arrays) -> None:
        meta[name] = list(value)

    def load(self, name: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
             n_versions: int) -> list[int]:
        out = [int(x) for x in meta.get(name, [0] * n_versions)]
        if len(out) != n_versions:
            raise TalliesError(f"{name} has {len(out)} values for {n_versions} versions")
        return out


@dataclass(frozen=True)
class Histograms:
    """One histogram (a model's), its counts an npz member and its sum in the JSON."""

    buckets: tuple[float, ...]
    per_version: ClassVar[bool] = False

    def zero(self) -> Histogram:
        return Histogram(self.buckets)

    def add(self, mine: Histogram, other: Histogram, vmap: Sequence[int]) -> Histogram:
        mine.add(other)
        return mine

    def dump(self, name: str, value: Histogram, meta: Meta, arrays: Arrays) -> None:
        arrays[name] = value.counts.copy()
        meta[f"{name}_sum"] = value.sum

    def load(self, name: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_versions: int) -> Histogram:
        h = self.zero()
        if name in arrays:
            _fill(h, arrays[name], meta[f"{name}_sum"])
        return h


@dataclass(frozen=True)
class PerVersionHistograms:
    """A histogram per model version: the counts stacked in one npz member, the sums a JSON list."""

    buckets: tuple[float, ...]
    per_version: ClassVar[bool] = True

    def zero(self) -> list[Histogram]:
        return []

    def grow(self, value: list[Histogram]) -> None:
        value.append(Histogram(self.buckets))

    def add(self, mine: list[Histogram], other: list[Histogram], vmap: Sequence[int]) -> list[Histogram]:
        for v, h in enumerate(other):
            mine[vmap[v]].add(h)
        return mine

    def dump(self, name: str, value: list[Histogram], meta: Meta, arrays: Arrays) -> None:
        arrays[name] = (np.stack([h.counts for h in value]) if value
                        else np.zeros((0, len(self.buckets) + 1)))
        meta[f"{name}_sum"] = [h.sum for h in value]

    def load(self, name: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
             n_versions: int) -> list[Histogram]:
        out = [Histogram(self.buckets) for _ in range(n_versions)]
        if name in arrays:
            counts, sums = arrays[name], meta[f"{name}_sum"]
            if len(counts) != n_versions or len(sums) != n_versions:
                raise TalliesError(f"{name} has {len(counts)} histograms for {n_versions} versions")
            for h, c, s in zip(out, counts, sums, strict=True):
                _fill(h, c, s)
        return out


def _fill(h: Histogram, counts: np.ndarray, total: Any) -> None:
    if counts.shape != h.counts.shape:
        raise TalliesError("histogram buckets changed")
    h.counts[:] = counts
    h.sum = float(total)


_KINDS: dict[type, list[tuple[str, Kind[Any]]]] = {}


def kinds(cls: type) -> list[tuple[str, Kind[Any]]]:
    """The fields of a value class and their kinds (`name: Annotated[type, kind]`), in declaration order."""
    got = _KINDS.get(cls)
    if got is None:
        hints = get_type_hints(cls, include_extras=True)
        got = _KINDS[cls] = [(f.name, hints[f.name].__metadata__[0]) for f in fields(cls)]
    return got


V = TypeVar("V", bound="Values")


class Values:
    """What `ModelTallies` and `JoinCounters` share: zero, add, dump, load and (from dataclass) equality."""

    @classmethod
    def zero(cls: type[V]) -> V:
        return cls(**{name: kind.zero() for name, kind in kinds(cls)})

    def add(self, other: Values, vmap: Sequence[int] = ()) -> None:
        """Add `other` into this value; `vmap` maps other's version indexes to this value's."""
        for name, kind in kinds(type(self)):
            setattr(self, name, kind.add(getattr(self, name), getattr(other, name), vmap))

    def dump(self) -> tuple[Meta, Arrays]:
        """JSON-able fields and numpy arrays, by field name (histogram sums as `<name>_sum`)."""
        meta: Meta = {}
        arrays: Arrays = {}
        for name, kind in kinds(type(self)):
            kind.dump(name, getattr(self, name), meta, arrays)
        return meta, arrays

    @classmethod
    def load(cls: type[V], meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None,
             n_versions: int = 0) -> V:
        """The value `dump` wrote (fields it lacks are zero); TalliesError when a field does not fit."""
        got = arrays or {}
        return cls(**{name: kind.load(name, meta, got, n_versions) for name, kind in kinds(cls)})


@dataclass
class ModelTallies(Values):
    """A model's counters and histograms outside the window blocks. Updated once per batch or flush by
    ModelState (never per event), read by monitor.engine.figures."""

    predictions_total: Annotated[list[int], PerVersionCount()]
    latency: Annotated[list[Histogram], PerVersionHistograms(LATENCY_BUCKETS)]
    delay: Annotated[Histogram, Histograms(GROUND_TRUTH_DELAY_BUCKETS)]
    ground_truth_total: Annotated[int, Count()]
    ignored_scores: Annotated[int, Count()]
    late: Annotated[dict[str, int], Keyed(("predictions", "ground_truth"))]
    last_event: Annotated[dict[str, float], Latest()]

    def add_version(self) -> None:
        """Room for one more model version in every per-version field."""
        for name, kind in kinds(type(self)):
            if kind.per_version:
                kind.grow(getattr(self, name))  # type: ignore[attr-defined]

    def seen(self, topic: str, ts: float) -> None:
        self.last_event[topic] = max(self.last_event.get(topic, ts), ts)


class JoinLike(Protocol):
    """What `JoinCounters` reads and restores: monitor.engine.join.JoinTable and monitor._native.Join."""

    watermark: float

    @property
    def pending(self) -> Mapping[str, int]: ...
    @property
    def expired(self) -> Mapping[str, int]: ...
    @property
    def evicted(self) -> Mapping[str, int]: ...
    @property
    def duplicates(self) -> Mapping[str, int]: ...
    @property
    def corrections(self) -> int: ...
    @property
    def joined(self) -> int: ...

    def restore(self, *args: Any, **kwargs: Any) -> None: ...


_SIDES = (SIDE_PREDICTION, SIDE_GROUND_TRUTH)


@dataclass
class JoinCounters(Values):
    """A join table's counters, as both joins report them. The field names are the joins' attribute names
    and `restore` keyword names (tests/test_tallies.py checks both joins), so a counter added to the joins
    is added here and nowhere else in Python."""

    pending: Annotated[dict[str, int], Keyed(_SIDES)]
    expired: Annotated[dict[str, int], Keyed(_SIDES)]
    # Absent from checkpoints written before the counter existed (then zero).
    evicted: Annotated[dict[str, int], Keyed((*_SIDES, SIDE_JOINED))]
    duplicates: Annotated[dict[str, int], Keyed(_SIDES)]
    corrections: Annotated[int, Count()]
    joined: Annotated[int, Count()]

    @classmethod
    def of(cls, join: JoinLike) -> JoinCounters:
        """A copy of the join's counters (every key present)."""
        out = cls.zero()
        for name, kind in kinds(cls):
            value = getattr(join, name)
            setattr(out, name, {**kind.zero(), **value} if isinstance(value, Mapping) else int(value))
        return out

    def restore(self, join: JoinLike, ids: list[str], columns: Mapping[str, np.ndarray], seq: int,
                watermark: float) -> None:
        """Replace the join's table with these entries (`export` columns) and these counters."""
        join.restore(ids, columns, seq, watermark,
                     **{name: dict(v) if isinstance(v := getattr(self, name), dict) else v
                        for name, _ in kinds(type(self))})
