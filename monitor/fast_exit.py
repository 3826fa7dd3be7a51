"""Ending a one-shot command's process without tearing the interpreter down.

A replay of a million events ends holding about a gigabyte in hundreds of thousands of objects. Tearing
that down (every object freed one by one, then the interpreter's own finalisation) is work nobody waits
for: the kernel takes the whole address space back at exit anyway. So once a command has written its
output it may end the process at once, as compilers do with their own process (clang's -disable-free).

Only when this process is the command line's own (`monitor.cli.run`): a command invoked in-process, by
a test or by a program that imports monitor.cli, returns as usual.
"""

from __future__ import annotations

import os
import sys

_own_process = False


def claim_process() -> None:
    """Called by the command line's entry point: the process ends with its command."""
    global _own_process
    _own_process = True


def exit_now(code: int = 0) -> None:
    """Flushes standard output and error and the log handlers, then ends the process with `code`, when the
    process is the command line's own; otherwise returns. Also returns, leaving the ordinary ending to
    report it, when standard output cannot be flushed (a closed pipe)."""
    if not _own_process:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    logging = sys.modules.get("logging")  # not imported: no handler to flush
    if logging is not None:
        logging.shutdown()
    os._exit(code)
