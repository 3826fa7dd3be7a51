"""Byte strings as spans of one buffer: a file's lines (monitor.inputs) or a fetch's record values and
keys (monitor.stream.fetched). `spans()` hands the native decoder the buffer and its spans without a
Python object per item; an item becomes a `bytes` object only when something asks for it.

No numpy at import time: `monitor.inputs` is on the CLI's start-up path; the spans are numpy arrays made
by the native core, and numpy is loaded by then.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload


class Spans(Sequence[bytes | None]):
    """Item i is data[starts[i]:ends[i]] (int64 arrays); a start of -1 is a missing item, read as
    `missing` (None unless given)."""

    def __init__(self, data: bytes, starts: Any, ends: Any, missing: bytes | None = None) -> None:
        self._data = data
        self._starts = starts
        self._ends = ends
        self._missing = missing

    def spans(self) -> tuple[bytes, Any, Any]:
        """(buffer, starts, ends) for the native decoder; a missing item reads as an empty span."""
        none = self._starts < 0
        if none.any():
            import numpy as np

            return self._data, np.where(none, 0, self._starts), np.where(none, 0, self._ends)
        return self._data, self._starts, self._ends

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> bytes | None: ...
    @overload
    def __getitem__(self, index: slice) -> Spans: ...

    def __getitem__(self, index: int | slice) -> bytes | Spans | None:
        if isinstance(index, slice):
            return Spans(self._data, self._starts[index], self._ends[index], self._missing)
        start = int(self._starts[index])
        return self._missing if start < 0 else self._data[start:int(self._ends[index])]

    def __iter__(self) -> Iterator[bytes | None]:
        data, missing = self._data, self._missing
        return (missing if a < 0 else data[a:b] for a, b in zip(self._starts.tolist(), self._ends.tolist(),
                                                                 strict=True))


class TextSpans(Sequence[str]):
    """UTF-8 strings as spans of one buffer (bytes or a uint8 array): item i is data[starts[i]:ends[i]]
    decoded like `bytes.decode("utf-8", "surrogatepass")`. The native decoder hands a batch's prediction
    ids this way, and a changelog restore millions of them, to the native join (`spans()`), which reads
    them without a str per id; a `str` is made only when something iterates or indexes."""

    def __init__(self, data: Any, starts: Any, ends: Any) -> None:
        self._data = data
        self._starts = starts
        self._ends = ends

    @staticmethod
    def concat(a: TextSpans, b: TextSpans) -> TextSpans:
        """a's strings, then b's, in one buffer."""
        import numpy as np

        (da, sa, ea), (db, sb, eb) = a.spans(), b.spans()
        shift = len(da)
        return TextSpans(np.concatenate([da, db]), np.concatenate([sa, sb + shift]), np.concatenate([ea, eb + shift]))

    def spans(self) -> tuple[Any, Any, Any]:
        """(uint8 buffer, starts, ends)."""
        import numpy as np

        data = self._data
        buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
        return buf, self._starts, self._ends

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> TextSpans: ...

    def __getitem__(self, index: int | slice) -> str | TextSpans:
        if isinstance(index, slice):
            return TextSpans(self._data, self._starts[index], self._ends[index])
        return bytes(self._data[int(self._starts[index]):int(self._ends[index])]).decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        data = self._data if isinstance(self._data, bytes) else bytes(self._data)
        return (data[a:b].decode("utf-8", "surrogatepass")
                for a, b in zip(self._starts.tolist(), self._ends.tolist(), strict=True))
