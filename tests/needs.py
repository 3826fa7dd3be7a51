"""Skip markers for tests that run Debian's Prometheus tools: each carries the `prometheus` marker and skips
the test when the binary is not on PATH (found the way monitor.services finds it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from monitor.services import binary

F = TypeVar("F", bound=Callable[..., Any])


def needs(*names: str, package: str) -> Callable[[F], F]:
    """Mark a test (or fixture-using test) `prometheus` and skip it unless one of `names` is on PATH."""
    skip = pytest.mark.skipif(binary(*names) is None, reason=f"{names[0]} not on PATH (apt-get install {package})")

    def mark(test: F) -> F:
        return pytest.mark.prometheus(skip(test))

    return mark


needs_prometheus = needs("prometheus", package="prometheus")
needs_promtool = needs("promtool", package="prometheus")
needs_amtool = needs("amtool", package="prometheus-alertmanager")
needs_alertmanager = needs("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager")
