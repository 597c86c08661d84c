"""The expression language's limits, operator and function tables, and message helpers."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any, Final, NoReturn

from lrctl import _numeric, _render
from lrctl.errors import ExpressionError

__all__ = [
    "BINOPS",
    "COMPARISONS",
    "CONSTANTS",
    "FUNCTIONS",
    "FUNCTION_LIST",
    "MAGNITUDE_TEXT",
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_MAGNITUDE",
    "MAX_NODES",
    "PREFIX",
    "VARIABLES",
    "Fn",
    "Source",
    "fail",
    "shorten",
]

MAX_EXPRESSION_LENGTH: Final = 1000
"""Longest accepted expression text, in characters (after stripping whitespace)."""

MAX_NODES: Final = 200
"""Most expression nodes (numbers, names, operators, calls, ...) in one expression."""

MAX_DEPTH: Final = 32
"""Deepest nesting of expression nodes (``-(-(-1)))`` has depth 4)."""

MAX_MAGNITUDE: Final = 1e15
"""Largest absolute value of a number literal, and of the ``epoch`` an expression accepts."""

PREFIX: Final = "lr_lambda"
MAGNITUDE_TEXT: Final = f"{MAX_MAGNITUDE:.0e}".replace("+", "")  # "1e15"

# A compiled node: epoch -> value. Values are ints, floats or bools (ints, to Python);
# typed as float, which by PEP 484's numeric tower admits int and bool.
Fn = Callable[[float], float]

VARIABLES: Final = frozenset({"epoch", "step"})
CONSTANTS: Final[dict[str, float]] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _pow(a: float, b: float) -> float:
    """``a ** b`` as Python computes it, ``±inf`` past the float range (never a giant int)."""
    r = _numeric.power(int(a) if type(a) is bool else a, int(b) if type(b) is bool else b)
    if isinstance(r, complex):
        raise ValueError("negative base with a fractional exponent")
    return r


def _min(*args: float) -> float:
    return min(args)


def _max(*args: float) -> float:
    return max(args)


BINOPS: Final[dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", _pow),
}

COMPARISONS: Final[dict[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}

# name -> (minimum arguments, maximum arguments or None, implementation)
FUNCTIONS: Final[dict[str, tuple[int, int | None, Callable[..., float]]]] = {
    "abs": (1, 1, abs),
    "atan": (1, 1, math.atan),
    "ceil": (1, 1, _numeric.ceil),
    "cos": (1, 1, math.cos),
    "exp": (1, 1, _numeric.exp),
    "floor": (1, 1, _numeric.floor),
    "log": (1, 2, math.log),
    "log10": (1, 1, math.log10),
    "log2": (1, 1, math.log2),
    "max": (2, None, _max),
    "min": (2, None, _min),
    "pow": (2, 2, _pow),
    "round": (1, 1, _numeric.round_),
    "sin": (1, 1, math.sin),
    "sqrt": (1, 1, math.sqrt),
    "tan": (1, 1, math.tan),
    "tanh": (1, 1, math.tanh),
}

FUNCTION_LIST: Final = ", ".join(sorted(FUNCTIONS))


def shorten(text: str, limit: int = 80) -> str:
    """``text`` on one line, at most ``limit`` characters of it."""
    return _render.shorten(" ".join(text.split()), limit)


def fail(message: str) -> NoReturn:
    raise ExpressionError(f"{PREFIX}: {message}")


class Source:
    """The expression text, for quoting nodes and locating them."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines() or [""]

    def segment(self, node: ast.AST) -> str:
        seg = ast.get_source_segment(self.text, node)
        return shorten(seg if seg is not None else type(node).__name__, 60)

    def column(self, node: ast.AST) -> str:
        lineno = getattr(node, "lineno", 1)
        col = getattr(node, "col_offset", 0)
        line = self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""
        # ast offsets count UTF-8 bytes; report characters, 1-based.
        char = len(line.encode("utf-8")[:col].decode("utf-8", "replace")) + 1
        return f"column {char}" if lineno == 1 else f"line {lineno}, column {char}"

    def where(self, node: ast.AST) -> str:
        return f"in {self.segment(node)!r} ({self.column(node)})"
