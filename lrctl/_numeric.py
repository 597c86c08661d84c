"""Float arithmetic that never raises for leaving the float range: IEEE-754 results.

torch's recursive schedulers multiply Python floats, which overflow quietly: an LR past
``1.8e308`` becomes ``inf``, one below ``5e-324`` becomes ``0.0``, and ``step()`` goes on.
Python's other float operations raise instead: ``x ** y`` and ``math.exp``/``math.pow``/
``math.ldexp`` (``OverflowError``), ``float(n)`` of an int past the float range, and
``math.floor`` of an infinity. Every power, exponential and rounding in
``lrctl/schedules`` and ``lrctl/expressions`` goes through these helpers instead
(``tests/test_overflow.py`` fails if a raw ``**``, ``math.exp``, ``math.pow`` or
``math.ldexp`` appears there again), so evaluating a schedule never raises
``OverflowError``: it gives what a torch tensor would, ``inf``, ``0.0`` or ``nan``.

Errors of a formula itself are not range errors and still raise: ``ZeroDivisionError``
for a division by exactly zero and ``ValueError`` for a math domain error at a finite
argument (``log(0)``, ``sqrt(-1)``), as Python does (the expression evaluator turns both
into :class:`~lrctl.errors.ExpressionError`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

__all__ = [
    "EXT_ONE",
    "MAX_FLOAT_INT",
    "Ext",
    "ceil",
    "cos",
    "div",
    "exp",
    "ext_mul",
    "floor",
    "ldexp",
    "mul_pow",
    "mul_ratio",
    "power",
    "round_",
    "scale_by_power",
    "sqrt",
    "to_float",
]

INF = math.inf
NAN = math.nan
#: The largest int that converts to a finite float; past it ``float(n)`` raises.
MAX_FLOAT_INT = int(sys.float_info.max)
_TINY = sys.float_info.min  # smallest normal float: below it products lose precision
# An exact ``int ** int`` needs about ``exponent * log2(|base|)`` bits; past the float
# range it is replaced by a signed infinity *before* Python builds the (maybe giant) int.
_MAX_INT_BITS = MAX_FLOAT_INT.bit_length()


def to_float(x: float) -> float:
    """``float(x)``; an int past the float range becomes ``±inf`` instead of raising."""
    if type(x) is float:
        return x
    if type(x) is int and not -MAX_FLOAT_INT <= x <= MAX_FLOAT_INT:
        return INF if x > 0 else -INF
    return float(x)


def power(x: float, y: float) -> float:
    """Python's ``x ** y``, with ``±inf`` where Python raises ``OverflowError``.

    ``int ** int`` (positive exponent) stays an exact int while it fits a float and is
    ``±inf`` past that, decided before Python builds the int (``9 ** 387420489`` costs
    nothing). Everything else is Python's: ``0.0 ** -1`` raises ``ZeroDivisionError`` and
    a negative base with a fractional exponent gives a ``complex`` (or raises
    ``ValueError`` where Python's complex power would overflow).
    """
    if type(x) is int and type(y) is int and y > 0 and (x > 1 or x < -1):
        if y * math.log2(abs(x)) > _MAX_INT_BITS + 1:
            return INF if x > 0 or y % 2 == 0 else -INF
        result: float = x**y
        return result if -MAX_FLOAT_INT <= result <= MAX_FLOAT_INT else to_float(result)
    try:
        return x**y  # type: ignore[no-any-return]
    except OverflowError:
        # |x| > 1 with y > 0, or |x| < 1 with y < 0: the magnitude overflows. The sign is
        # negative only for a negative base with an odd integer exponent.
        if x >= 0:
            return INF
        if type(y) is float and not y.is_integer():
            raise ValueError("negative base with a fractional exponent") from None
        return -INF if math.fmod(y, 2) != 0 else INF


def exp(x: float) -> float:
    """``math.exp(x)``, ``inf`` instead of ``OverflowError``."""
    try:
        return math.exp(x)
    except OverflowError:
        return INF


def ldexp(m: float, e: int) -> float:
    """``m * 2 ** e`` (``math.ldexp``), ``±inf`` instead of ``OverflowError``."""
    try:
        return math.ldexp(m, e)
    except OverflowError:
        return math.copysign(INF, m)


def cos(x: float) -> float:
    """``math.cos(x)``; ``nan`` for an infinite ``x`` (IEEE) where Python raises."""
    return math.cos(x) if math.isfinite(x) else math.nan


def sqrt(x: float) -> float:
    """``math.sqrt(x)``; ``nan`` for ``x < 0`` (IEEE) where Python raises."""
    return math.sqrt(x) if x >= 0 else math.nan


def floor(x: float) -> float:
    """``math.floor(x)`` (an exact int); ``inf``/``nan`` stay themselves, as IEEE's floor."""
    return math.floor(x) if math.isfinite(x) else x


def ceil(x: float) -> float:
    """``math.ceil(x)`` (an exact int); ``inf``/``nan`` stay themselves, as IEEE's ceil."""
    return math.ceil(x) if math.isfinite(x) else x


def round_(x: float) -> float:
    """``round(x)`` (an exact int); ``inf``/``nan`` stay themselves."""
    return round(x) if math.isfinite(x) else x


def div(a: float, b: float) -> float:
    """``a / b`` as IEEE-754 divides: ``±inf`` (``nan`` for 0/0) where Python raises.

    For divisions inside a schedule's own arithmetic whose divisor can only reach zero by
    rounding (torch would raise ``ZeroDivisionError`` there; a tensor gives ``inf``).
    """
    try:
        return a / b
    except ZeroDivisionError:
        if a == 0 or a != a:
            return NAN
        return INF if (a > 0) == (math.copysign(1.0, b) > 0) else -INF


def _frexp_pow(x: float, n: int) -> tuple[float, int]:
    """``x ** n`` as ``(m, e)`` with ``x ** n ≈ m * 2 ** e``, never over- or underflowing.

    ``x`` finite and > 0, ``n >= 0``. Binary powering of the mantissa, renormalized after
    every product: about ``2 * log2(n)`` roundings (relative error below 1e-14 for any
    step a schedule meets) and ``log2(n)`` iterations, so ``n = 10**12`` costs 40.
    """
    m, e = math.frexp(x)
    rm, re = 1.0, 0
    while n:
        if n & 1:
            rm, k = math.frexp(rm * m)
            re += e + k
        n >>= 1
        if n:
            m, k = math.frexp(m * m)
            e = 2 * e + k
    return rm, re


def mul_pow(b: float, x: float, n: int) -> float:
    """``b * x ** n`` for ``x >= 0`` and an int ``n >= 0``, rounded to a float once.

    No intermediate over- or underflow: the result is ``inf`` exactly when the product
    exceeds the float range and 0.0 when it falls below it, as torch's recursion
    ``lr *= x`` turns inf or 0.0 (it never passes through ``0 * inf = nan`` for a zero
    base). A non-finite ``b`` (an LR that already overflowed) continues as torch's
    recursion does: ``inf * x`` each step.
    """
    if n == 0:
        return b
    if not math.isfinite(b) or not math.isfinite(x):
        return b * x  # inf * x ... stays inf for x > 0; 0 * inf or inf * 0 is nan
    try:
        p = x**n
    except OverflowError:
        p = INF
    if _TINY <= p < INF:
        return b * p
    if b == 0.0 or x == 0.0:
        return b * 0.0
    mb, eb = math.frexp(b)
    mp, ep = _frexp_pow(x, n)
    m, k = math.frexp(mb * mp)
    return ldexp(m, eb + ep + k)


def scale_by_power(bases: Sequence[float], x: float, n: int) -> list[float]:
    """``[b * x ** n for b in bases]`` with :func:`mul_pow`'s semantics; ``x ** n`` once."""
    if n == 0:
        return list(bases)
    try:
        p = x**n
    except OverflowError:
        p = INF
    if _TINY <= p < INF:
        return [b * p for b in bases]
    return [mul_pow(b, x, n) for b in bases]


Ext = tuple[float, int]
"""An extended-range float ``m * 2 ** e`` (``math.frexp`` form): never over- or underflows."""

EXT_ONE: Ext = (0.5, 1)


def ext_mul(p: Ext, x: float) -> Ext:
    """``p * x`` for a finite ``x > 0``, renormalized (one rounding, no over/underflow)."""
    m, e = math.frexp(p[0] * x)
    return m, p[1] + e


def mul_ratio(x: float, num: Ext, den: Ext) -> float:
    """``x * num / den`` rounded to a float once at the end (``±inf``/0.0 past the range)."""
    if x == 0.0 or not math.isfinite(x):
        return x
    m, e = math.frexp(x * (num[0] / den[0]))
    return ldexp(m, e + num[1] - den[1])
