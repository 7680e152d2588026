"""JSON text as the events and caches store it: compact, Decimals as plain strings."""

import json
from decimal import Decimal
from typing import Any


def plain(value: Decimal | None) -> str | None:
    """A Decimal as plain text (no exponent), None kept."""
    return None if value is None else format(value, "f")


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False)


def dumps(value: Any) -> str:
    """Compact JSON text; Decimals and dates as strings (one shared encoder: no set-up per call)."""
    return _ENCODER.encode(value)
