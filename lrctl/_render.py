"""How values leave the domain for people and JSON: times as ISO 8601, non-finite floats.

Every time in the domain is a float of Unix seconds; this is the one place that turns one
into text. :func:`shorten` cuts what a message quotes of an input (inputs can be huge).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone

__all__ = ["iso_time", "json_float", "json_floats", "short_time", "shorten"]


def iso_time(seconds: float | None) -> str | None:
    """Return Unix ``seconds`` as ISO 8601 UTC (``2025-01-31T12:00:05.250000+00:00``).

    None and 0.0 (a time never set) give None.
    """
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()


def short_time(seconds: float | None) -> str:
    """Return Unix ``seconds`` for a table, ``2025-01-31 12:00:05Z``; ``-`` when unset."""
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def json_float(value: float) -> float | str:
    """Return ``value`` for JSON: itself if finite, else ``"inf"``, ``"-inf"`` or ``"nan"``.

    JSON has no non-finite numbers; DESIGN.md fixes these strings for them.
    """
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def json_floats(values: Sequence[float]) -> list[float | str]:
    """Return :func:`json_float` of each value."""
    return [json_float(v) for v in values]


def shorten(text: str, limit: int = 64) -> str:
    """At most ``limit`` characters of ``text``, ending in ``...`` when cut (a message quotes
    a bounded prefix of its input, however large the input)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
