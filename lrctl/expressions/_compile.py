"""Compiling a validated tree into closures, with the runtime guards on every operation."""

from __future__ import annotations

import ast
import itertools
import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, cast

from lrctl._numeric import MAX_FLOAT_INT, div, to_float
from lrctl.expressions._grammar import (
    BINOPS,
    COMPARISONS,
    CONSTANTS,
    FUNCTIONS,
    VARIABLES,
    Fn,
    Source,
    fail,
)

__all__ = ["Compiler", "Failure"]


class Failure(Exception):
    """Raised by compiled closures; turned into :class:`ExpressionError` by the caller."""

    def __init__(self, what: str, where: str) -> None:
        super().__init__(what, where)
        self.what = what
        self.where = where


@dataclass(slots=True)
class _Compiled:
    """One compiled node: its closure, its value when it is a constant, and its pieces.

    ``thresholds`` is None when the node's value depends on ``epoch`` other than through
    comparisons of ``epoch`` with constants; otherwise it is the set of those constants,
    and the value is constant on every interval between them (empty for a constant).
    """

    fn: Fn
    constant: bool = False
    value: float = 0.0
    _: KW_ONLY
    thresholds: frozenset[float] | None = frozenset()
    is_epoch: bool = False


def _pieces(node: ast.expr, parts: list[_Compiled]) -> frozenset[float] | None:
    """The thresholds of a node whose parts are compiled (see :class:`_Compiled`)."""
    found: set[float] = set()
    if isinstance(node, ast.Compare):
        for a, b in itertools.pairwise(parts):
            if a.is_epoch and b.is_epoch:
                return None
            if a.is_epoch or b.is_epoch:
                other = b if a.is_epoch else a
                if not other.constant:
                    return None
                found.add(other.value)
    for p in parts:
        if p.is_epoch:
            if isinstance(node, ast.Compare):
                continue
            return None
        if p.thresholds is None:
            return None
        found |= p.thresholds
    return frozenset(found)


def _describe(exc: Exception, detail: str) -> str:
    if isinstance(exc, ZeroDivisionError):
        return f"division by zero ({detail})"
    if isinstance(exc, OverflowError):
        return f"overflow ({detail})"
    return f"{exc} ({detail})"


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _ieee(symbol: str, a: float, b: float) -> float:
    """What IEEE-754 gives for ``a <symbol> b`` where Python raised, one operand non-finite."""
    if symbol == "/":
        return div(a, b)
    return math.nan  # inf // 0, inf % 0, ...: invalid operations


def _num(value: float) -> str:
    """A value for a message, parenthesized when negative: ``(-8) ** 0.5``."""
    return f"({value!r})" if value < 0 else repr(value)


def _identity(x: float) -> float:
    return x


class Compiler:
    """Turns a validated tree into closures; folds constant sub-expressions."""

    def __init__(self, source: Source) -> None:
        self.src = source

    def fold(self, node: ast.expr, fn: Fn, parts: list[_Compiled]) -> _Compiled:
        """Evaluate a constant sub-expression now; refuse it if it always fails.

        A constant that overflows (``10 ** 400``, ``9 ** 9 ** 9``, ``exp(1000)``) is
        refused too: only values that depend on ``epoch`` may leave the float range.
        """
        try:
            value = fn(0)
        except Failure as exc:
            fail(f"{exc.what} {exc.where}; this constant part of the expression always fails")
        if not math.isfinite(value):
            args = [p.value for p in parts]
            if isinstance(node, ast.BinOp):
                detail = f"{_num(args[0])} {BINOPS[type(node.op)][0]} {_num(args[1])}"
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                detail = f"{node.func.id}({', '.join(repr(a) for a in args)})"
            else:  # pragma: no cover - finite operands of other nodes stay finite
                detail = repr(value)
            fail(
                f"overflow ({detail}) {self.src.where(node)}; this constant part of the "
                "expression always fails (expected a finite number)"
            )
        return _Compiled(lambda x: value, True, value)

    def build(self, node: ast.expr) -> _Compiled:
        if isinstance(node, ast.Constant):
            value = cast(float, node.value)  # an int, float or bool: checked by Validator
            return _Compiled(lambda x: value, True, value)
        if isinstance(node, ast.Name):
            if node.id in VARIABLES:
                return _Compiled(_identity, thresholds=None, is_epoch=True)
            const = CONSTANTS[node.id]
            return _Compiled(lambda x: const, True, const)
        if isinstance(node, ast.BinOp):
            parts = [self.build(node.left), self.build(node.right)]
            fn = self.binop(node, parts[0].fn, parts[1].fn)
        elif isinstance(node, ast.UnaryOp):
            parts = [self.build(node.operand)]
            fn = self.unaryop(node.op, parts[0].fn)
        elif isinstance(node, ast.BoolOp):
            parts = [self.build(v) for v in node.values]
            fn = self.boolop(isinstance(node.op, ast.And), [p.fn for p in parts])
        elif isinstance(node, ast.Compare):
            parts = [self.build(node.left), *(self.build(c) for c in node.comparators)]
            ops = [COMPARISONS[type(op)] for op in node.ops]
            fn = self.compare(ops, [p.fn for p in parts])
        elif isinstance(node, ast.IfExp):
            parts = [self.build(node.test), self.build(node.body), self.build(node.orelse)]
            fn = self.ifexp(parts[0].fn, parts[1].fn, parts[2].fn)
        elif isinstance(node, ast.Call):
            func = node.func
            if not isinstance(func, ast.Name):  # pragma: no cover - refused by the validator
                raise AssertionError(type(func).__name__)
            parts = [self.build(a) for a in node.args]
            fn = self.call(node, func.id, [p.fn for p in parts])
        else:  # pragma: no cover - the validator refuses everything else
            raise AssertionError(type(node).__name__)
        if all(p.constant for p in parts):
            return self.fold(node, fn, parts)
        return _Compiled(fn, thresholds=_pieces(node, parts))

    def binop(self, node: ast.BinOp, left: Fn, right: Fn) -> Fn:
        symbol, op = BINOPS[type(node.op)]
        where = self.src.where(node)
        lim = MAX_FLOAT_INT

        def run(x: float) -> float:
            a, b = left(x), right(x)
            try:
                r = op(a, b)
            except (ArithmeticError, ValueError) as exc:
                if not _finite(a, b):  # continuing from an overflow: IEEE, not an error
                    return _ieee(symbol, a, b)
                raise Failure(_describe(exc, f"{_num(a)} {symbol} {_num(b)}"), where) from None
            if type(r) is int and not -lim <= r <= lim:
                return to_float(r)  # an exact int past the float range is +-inf
            return r  # type: ignore[no-any-return]

        return run

    @staticmethod
    def unaryop(op: ast.unaryop, operand: Fn) -> Fn:
        # Operands are bounded, so neither can fail.
        if isinstance(op, ast.USub):
            return lambda x: -operand(x)
        if isinstance(op, ast.UAdd):
            return lambda x: +operand(x)
        return lambda x: not operand(x)

    @staticmethod
    def boolop(is_and: bool, values: list[Fn]) -> Fn:
        first, rest = values[0], values[1:]

        def run_and(x: float) -> float:
            v = first(x)
            for f in rest:
                if not v:
                    return v
                v = f(x)
            return v

        def run_or(x: float) -> float:
            v = first(x)
            for f in rest:
                if v:
                    return v
                v = f(x)
            return v

        return run_and if is_and else run_or

    @staticmethod
    def compare(ops: list[Callable[[Any, Any], Any]], operands: list[Fn]) -> Fn:
        first = operands[0]
        if len(ops) == 1:
            op, second = ops[0], operands[1]
            return lambda x: op(first(x), second(x))
        pairs = list(zip(ops, operands[1:], strict=True))

        def run(x: float) -> float:
            a = first(x)
            for op, f in pairs:
                b = f(x)
                if not op(a, b):
                    return False
                a = b
            return True

        return run

    @staticmethod
    def ifexp(test: Fn, body: Fn, orelse: Fn) -> Fn:
        return lambda x: body(x) if test(x) else orelse(x)

    def call(self, node: ast.Call, name: str, args: list[Fn]) -> Fn:
        impl = FUNCTIONS[name][2]
        where = self.src.where(node)
        lim = MAX_FLOAT_INT

        def check(r: float) -> float:
            if type(r) is int and not -lim <= r <= lim:
                return to_float(r)
            return r

        def failure(exc: Exception, values: tuple[float, ...]) -> float:
            # A math domain error at an infinite or nan argument (sin(inf), log(-inf)) is
            # IEEE's invalid operation, nan; at finite arguments it is the formula's error.
            if not _finite(*values):
                return math.nan
            shown = ", ".join(repr(v) for v in values)
            raise Failure(_describe(exc, f"{name}({shown})"), where)

        if len(args) == 1:
            (arg,) = args

            def run1(x: float) -> float:
                a = arg(x)
                try:
                    r = impl(a)
                except (ArithmeticError, ValueError) as exc:
                    return failure(exc, (a,))
                return check(r)

            return run1
        if len(args) == 2:
            arg1, arg2 = args

            def run2(x: float) -> float:
                a = arg1(x)
                b = arg2(x)
                try:
                    r = impl(a, b)
                except (ArithmeticError, ValueError) as exc:
                    return failure(exc, (a, b))
                return check(r)

            return run2

        def run(x: float) -> float:
            values = tuple(f(x) for f in args)
            try:
                r = impl(*values)
            except (ArithmeticError, ValueError) as exc:
                return failure(exc, values)
            return check(r)

        return run
