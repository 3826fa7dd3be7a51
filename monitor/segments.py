"""Reading an event's segment values (models[].segments): one string per segment, never an error.

The same function serves every decoder: the exact one calls it on the event object it validates, the
native fast path on the message it parsed again for this (engine.Engine), a mapped input on the event
object it built and the message body it read. So both engine paths see the same values.
"""

from __future__ import annotations

from typing import Any

from jmespath.exceptions import JMESPathError

from monitor.config import ModelConfig, compiled_expression
from monitor.conventions import SEGMENT_MISSING

# Longer values are cut: a label value is not the place for a document.
MAX_VALUE_LENGTH = 128


def segment_value(value: Any) -> str:
    """A value as its label text: strings as they are (cut to MAX_VALUE_LENGTH), integers and booleans
    as JSON writes them; anything else (absent, null, a number with a fraction, a list, an object)
    is "_missing"."""
    if type(value) is str:
        return value[:MAX_VALUE_LENGTH] if value else SEGMENT_MISSING
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    return SEGMENT_MISSING


class SegmentReader:
    """A model's segments: where each value comes from."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.features = [s.feature for s in cfg.segments]
        self.fields = [compiled_expression(s.field) if s.field is not None else None for s in cfg.segments]
        self.has_fields = any(f is not None for f in self.fields)

    def __bool__(self) -> bool:
        return bool(self.features)

    def read(self, event: Any, body: Any = None) -> tuple[str, ...]:
        """The values from a native event object (`feature` segments) and the message body a `field`
        segment reads (the event itself unless a mapping built it from another document)."""
        if body is None:
            body = event
        features = event.get("features") if type(event) is dict else None
        if type(features) is not dict:
            features = {}
        out = []
        for name, expr in zip(self.features, self.fields, strict=True):
            if expr is not None:
                try:
                    value = expr.search(body)
                except JMESPathError:  # a function's type error: no value, not a rejection
                    value = None
            else:
                value = features.get(name)
            out.append(segment_value(value))
        return tuple(out)
