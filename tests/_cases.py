"""Helpers the test modules share: parameter tables written as data, and their common checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest


def cases(table: Mapping[str, Any]) -> list[Any]:
    """One ``pytest.param`` per entry of ``{test id: arguments}``, in the table's order.

    A tuple is the test's arguments; any other value is its one argument. A dict literal
    cannot hold one id twice without ruff's F601 saying so, so no case is lost to a repeat.
    """
    return [
        pytest.param(*(args if isinstance(args, tuple) else (args,)), id=name)
        for name, args in table.items()
    ]
