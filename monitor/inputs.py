"""Reading events as people have them, for every command that reads events (replay, report, reference, init).

One loader: plain, gzip or zstd JSON lines (recognised by their magic bytes, whatever the file is called),
`-` for standard input, a UTF-8 byte-order mark, CRLF line ends. Lines keep their line numbers so a
rejected event can be pointed at (`rejections.py` prints the summary).

Only click at import time: `monitor report --help` must not pull in numpy or the engine.
"""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import click

from monitor.spans import Spans

if TYPE_CHECKING:
    from monitor.config import MonitorConfig

F = TypeVar("F", bound=Callable[..., Any])
EXAMPLE = resources.files("monitor") / "examples"
STDIN = "-"

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class InputError(click.ClickException):
    """An input file that cannot be read as events at all (unreadable, corrupt archive, wrong encoding)."""


class InputLines(Sequence[bytes]):
    """The non-blank lines of one input, in order, each knowing its 1-based line number in the source.

    Either a list of lines, or (read from a file with the native core) the file's buffer and each line's
    byte span in it: the native decoder reads the spans (`spans()`) without a Python object per line, and
    a line becomes a `bytes` object only when something asks for it (the exact decoder, a rejection
    report, iteration)."""

    def __init__(self, lines: Iterable[bytes] = (), source: str = "", numbers: list[int] | None = None) -> None:
        self._items: list[bytes] | Spans = list(lines)
        self.source = source
        # None while no blank line was skipped: then line i is line number i + 1.
        self._numbers = numbers

    @classmethod
    def of_buffer(cls, data: bytes, starts: Any, ends: Any, source: str, numbers: list[int] | None) -> InputLines:
        """Lines as spans of `data` (int64 arrays of start and end offsets)."""
        out = cls((), source, numbers)
        out._items = Spans(data, starts, ends)
        return out

    def spans(self) -> tuple[bytes, Any, Any] | None:
        """(buffer, starts, ends) when the lines are spans of one buffer, else None."""
        return self._items.spans() if isinstance(self._items, Spans) else None

    def line_number(self, index: int) -> int:
        return self._numbers[index] if self._numbers is not None else index + 1

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return list(self._items[index])  # type: ignore[arg-type]
        return self._items[index]  # type: ignore[return-value]  # a line span is never missing

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._items)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (list, InputLines)) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"InputLines({self.source!r}, {len(self)} lines)"


@dataclass(frozen=True)
class Inputs:
    """What is evaluated: a config, the two files' lines and the evaluation time."""

    config: MonitorConfig
    predictions: InputLines
    ground_truth: InputLines
    at: float | None


def input_options(command: F) -> F:
    for option in reversed((
        click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
                     help="Config file (default: the bundled example)."),
        click.option("--predictions", type=click.Path(dir_okay=False, exists=True, allow_dash=True),
                     help="JSON lines of predictions: plain, .gz or .zst; '-' reads standard input."),
        click.option("--ground-truth", type=click.Path(dir_okay=False, exists=True, allow_dash=True),
                     help="JSON lines of ground truth: plain, .gz or .zst; '-' reads standard input."),
        click.option("--at", help="Evaluation time, RFC 3339 (default: the newest event time)."),
    )):
        command = option(command)
    return command


def display_name(path: str | Path) -> str:
    return "standard input" if str(path) == STDIN else str(path)


def read_bytes(path: str | Path) -> bytes:
    """The decompressed content of a file (or of standard input for '-')."""
    name = display_name(path)
    try:
        raw = sys.stdin.buffer.read() if str(path) == STDIN else _read_file(Path(path))
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror}") from None
    return decompress(raw, name)


def decompress(raw: bytes, name: str) -> bytes:
    """gzip and zstd by their magic bytes (a pipe has no file name); anything else is taken as it is."""
    if raw.startswith(_GZIP_MAGIC):
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise InputError(f"{name}: a gzip file that cannot be decompressed ({exc})") from None
    if raw.startswith(_ZSTD_MAGIC):
        try:
            import zstandard  # only here: a dependency few inputs need
        except ImportError:
            raise InputError(f"{name} is zstd-compressed: install the 'zstandard' package to read it") from None
        try:
            # The streaming reader copes with frames that do not record their decompressed size.
            with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as reader:
                return reader.read()
        except zstandard.ZstdError as exc:
            raise InputError(f"{name}: a zstd file that cannot be decompressed ({exc})") from None
    return raw


def split_lines(data: bytes, source: str) -> InputLines:
    """Non-blank lines without their line ends (LF or CRLF); a leading UTF-8 byte-order mark is dropped."""
    if data.startswith(_UTF16_BOMS):
        raise InputError(f"{source} is UTF-16 text; events must be UTF-8 JSON lines (convert it, for example "
                         f"with `iconv -f UTF-16 -t UTF-8`)")
    native = _native_split()
    if native is not None:
        starts, ends, numbers = native(data, len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0)
        return InputLines.of_buffer(data, starts, ends, source, None if numbers is None else numbers.tolist())
    data = data.removeprefix(_UTF8_BOM)
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    # Without a CR anywhere (one memchr over the buffer) no line needs its end trimmed.
    kept = [line.removesuffix(b"\r") for line in lines] if b"\r" in data else lines
    if all(map(bytes.strip, kept)):
        return InputLines(kept, source)
    numbers = [i + 1 for i, line in enumerate(kept) if line.strip()]
    return InputLines([kept[n - 1] for n in numbers], source, numbers)


def _read_file(path: Path) -> bytes:
    """A regular file is read by the native core on several threads (docs/native.md); anything else, or a
    file that changed size while being read, the ordinary way."""
    if os.environ.get("MLMON_NATIVE", "1") != "0":
        try:
            from monitor._native import read_file
        except ImportError:
            pass
        else:
            data = read_file(path)
            if data is not None:
                return data
    return path.read_bytes()


def _native_split() -> Callable[[bytes, int], tuple[Any, Any, Any]] | None:
    """The native core's line splitter (docs/native.md), unless it is not built or MLMON_NATIVE=0."""
    if os.environ.get("MLMON_NATIVE", "1") == "0":
        return None
    try:
        from monitor._native import Decoder
    except ImportError:
        return None
    split: Callable[[bytes, int], tuple[Any, Any, Any]] = Decoder.split_lines
    return split


def read_lines(path: str | Path) -> InputLines:
    """The events of one input file ('-' for standard input), see the module docstring."""
    return split_lines(read_bytes(path), display_name(path))


def parse_at(value: str | None) -> float | None:
    from monitor.events import InvalidEvent, parse_timestamp

    if value is None:
        return None
    try:
        return parse_timestamp(value, "--at")
    except InvalidEvent as exc:
        raise click.BadParameter(exc.detail, param_hint="--at") from None


def load_inputs(config_path: str | None, predictions: str | None, ground_truth: str | None,
                at: str | None, other_files: bool = False) -> Inputs:
    """No config means the bundled example and its two files; a config needs at least one file of events
    (`other_files`: the caller reads some, e.g. replay's --input for mapped topics)."""
    from concurrent.futures import ThreadPoolExecutor

    from monitor.config import ConfigError, load_config

    if predictions == STDIN and ground_truth == STDIN:
        raise click.UsageError("only one of --predictions and --ground-truth can read standard input ('-')")
    if config_path and not predictions and not ground_truth and not other_files:
        raise click.UsageError("no events to read: give --predictions (and --ground-truth) with --config")
    with resources.as_file(EXAMPLE) as example:
        config_file = Path(config_path) if config_path else example / "config.yaml"
        pred_file = predictions or (None if config_path else example / "predictions.jsonl")
        gt_file = ground_truth or (None if config_path else example / "ground_truth.jsonl")
        try:
            config = load_config(config_file)
        except ConfigError as exc:
            raise click.ClickException("\n".join([str(exc.source or config_file) + ":", *exc.problems])) from None
        # The two files are read side by side: reading, decompressing and splitting lines release the GIL.
        with ThreadPoolExecutor(max_workers=2) as pool:
            preds = pool.submit(read_lines, pred_file) if pred_file else None
            truths = pool.submit(read_lines, gt_file) if gt_file else None
            return Inputs(config, preds.result() if preds else InputLines(),
                          truths.result() if truths else InputLines(), parse_at(at))
