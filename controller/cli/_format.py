"""Text output shared by the commands: tables, numbers, times, JSON."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any, TextIO

from lrctl._render import short_time

__all__ = ["fmt_lr", "fmt_lrs", "fmt_time", "print_json", "table"]


def fmt_lr(value: float) -> str:
    """Return an LR for people: 6 significant digits (JSON and CSV keep every digit)."""
    return f"{value:.6g}"


def fmt_lrs(values: Sequence[float]) -> str:
    """Return one LR per group, comma-separated."""
    return ", ".join(fmt_lr(v) for v in values) or "-"


def fmt_time(seconds: float | None) -> str:
    """Return Unix seconds as ``2025-01-31 12:00:00Z`` (UTC), or ``-`` when unset."""
    return short_time(seconds)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """Return rows as aligned columns under a header; columns in ``right`` align right."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def print_json(data: Any, out: TextIO, *, indent: int | None = 2) -> None:
    """Write ``data`` as JSON (floats keep every digit: ``json`` writes their ``repr``)."""
    out.write(json.dumps(data, indent=indent, allow_nan=True) + "\n")
