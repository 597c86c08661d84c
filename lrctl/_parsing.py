"""The one way the core calls ``ast.parse``: serialised, with warnings as errors.

CPython 3.11's ``ast.parse`` keeps its recursion depth in per-interpreter state: two threads
parsing at once can raise ``SystemError: AST constructor recursion depth mismatch``. The
controller parses specs and ``lr_lambda`` expressions on worker threads, so every parse in
``lrctl`` goes through :func:`parse_eval`, under one lock. ``warnings.catch_warnings`` changes
process-wide state too, which the same lock keeps to one parse at a time.
"""

from __future__ import annotations

import ast
import threading
import warnings

__all__ = ["parse_eval"]

_PARSE_LOCK = threading.Lock()


def parse_eval(text: str) -> ast.Expression:
    """Return ``ast.parse(text, mode="eval")``; a warning (``"1if"``, an invalid escape)
    raises as an exception instead of being printed."""
    with _PARSE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error")
        return ast.parse(text, mode="eval")
