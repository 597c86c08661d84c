"""The :class:`Expression` callable and :func:`compile_expression`."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import final

from lrctl._numeric import to_float
from lrctl.errors import ExpressionError
from lrctl.expressions._compile import Compiler, Failure
from lrctl.expressions._grammar import (
    MAGNITUDE_TEXT,
    MAX_EXPRESSION_LENGTH,
    MAX_MAGNITUDE,
    PREFIX,
    Fn,
    Source,
    fail,
    shorten,
)
from lrctl.expressions._validate import Validator, parse

__all__ = ["Expression", "compile_expression"]


def _translate(text: str) -> tuple[Fn, tuple[float, ...] | None]:
    if len(text) > MAX_EXPRESSION_LENGTH:
        fail(
            f"expression too long; expected at most {MAX_EXPRESSION_LENGTH} characters, "
            f"got {len(text)}: {shorten(text)!r}"
        )
    if not text:
        fail("empty expression; expected a formula such as '0.95 ** epoch'")
    tree = parse(text)
    source = Source(text)
    Validator(source).run(tree)
    compiled = Compiler(source).build(tree.body)
    pieces = compiled.thresholds
    return compiled.fn, None if pieces is None else tuple(sorted(pieces))


def _coerce_epoch(epoch: object) -> float:
    if isinstance(epoch, numbers.Integral):
        return int(epoch)
    if isinstance(epoch, numbers.Real):
        return float(epoch)
    raise TypeError(type(epoch).__name__)


@final
class Expression:
    """A compiled safe expression, usable as torch's ``lr_lambda``.

    Immutable; equal (and hashed) by :attr:`text`. Pickling and copying keep only the text
    and compile it again, so a pickled expression is re-validated when it is loaded.

    Args:
        text: The formula in ``epoch`` (alias ``step``), e.g. ``"0.95 ** epoch"``.
            Surrounding whitespace is stripped.

    Raises:
        ExpressionError: If the text is not an allowed expression (see the
            :mod:`lrctl.expressions` docstring for the grammar and limits).
    """

    # "__dict__" stays empty: torch's LambdaLR.state_dict() saves ``fn.__dict__`` of
    # callable objects, and this keeps that a harmless ``{}``.
    __slots__ = ("__dict__", "_fn", "_text", "_thresholds")

    _fn: Fn
    _text: str
    _thresholds: tuple[float, ...] | None

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            fail(
                f"expected an expression string such as '0.95 ** epoch', "
                f"got {type(text).__name__} {text!r}"
            )
        text = text.strip()
        fn, thresholds = _translate(text)
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_text", text)
        object.__setattr__(self, "_thresholds", thresholds)

    @property
    def text(self) -> str:
        """The expression's text, as given but with surrounding whitespace stripped."""
        return self._text

    @property
    def thresholds(self) -> tuple[float, ...] | None:
        """Where a piecewise-constant expression may change value, or None.

        ``()`` for a constant (``"0.99"``), ``(100,)`` for ``"0.999 if epoch < 100 else
        0.99"``: the value is constant between consecutive thresholds, because ``epoch``
        is only ever compared with constants. None when ``epoch`` enters the value any
        other way (``"1 - 0.0005 * (epoch % 7)"``). MultiplicativeLR's closed form uses it.
        """
        return self._thresholds

    def __call__(self, epoch: int | float) -> float:
        """Evaluate the expression.

        Args:
            epoch: The value of ``epoch`` (and ``step``): torch passes ``last_epoch``.

        Returns:
            The multiplier, a float ``>= 0``: ``inf`` where the value left the float range
            (``10 ** epoch`` at epoch 400), ``nan`` where IEEE arithmetic on such an
            ``inf`` gives it (``exp(epoch) - exp(epoch)``), as a torch tensor would.

        Raises:
            ExpressionError: If ``epoch`` is not a finite real number with
                ``|epoch| <= MAX_MAGNITUDE``, if evaluating fails (division by zero or a
                math domain error at finite values), or if the result is negative.
        """
        if type(epoch) is not int and type(epoch) is not float:
            try:
                epoch = _coerce_epoch(epoch)
            except TypeError:
                raise ExpressionError(
                    f"{PREFIX} {shorten(self._text)!r}: expected a real number as epoch, "
                    f"got {type(epoch).__name__} {epoch!r}"
                ) from None
        if not -MAX_MAGNITUDE <= epoch <= MAX_MAGNITUDE:
            raise ExpressionError(
                f"{PREFIX} {shorten(self._text)!r}: expected a finite epoch with "
                f"|epoch| <= {MAGNITUDE_TEXT}, got {epoch!r}"
            )
        try:
            value = self._fn(epoch)
        except Failure as exc:
            raise ExpressionError(
                f"{PREFIX} {shorten(self._text)!r}: {exc.what} {exc.where} at epoch {epoch!r}"
            ) from None
        result = value if type(value) is float else to_float(value)
        if result < 0.0:
            raise ExpressionError(
                f"{PREFIX} must return a number >= 0, got {value!r} at epoch "
                f"{epoch!r} (expression {shorten(self._text)!r})"
            )
        return result

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Expression):
            return NotImplemented
        return self._text == other._text

    def __hash__(self) -> int:
        return hash((Expression, self._text))

    def __repr__(self) -> str:
        return f"Expression({self._text!r})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Expression is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Expression is immutable; cannot delete {name!r}")

    def __reduce__(self) -> tuple[Callable[[str], Expression], tuple[str]]:
        return (compile_expression, (self._text,))

    def __copy__(self) -> Expression:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Expression:
        return self


def compile_expression(text: str) -> Expression:
    """Validate and compile a safe expression.

    Args:
        text: The formula in ``epoch`` (alias ``step``), e.g. ``"0.95 ** epoch"`` or
            ``"min(1.0, (epoch + 1) / 10)"``.

    Returns:
        The compiled :class:`Expression`; calling it with an epoch returns the multiplier.

    Raises:
        ExpressionError: If the text is not an allowed expression, is too long, too large
            or too deeply nested, or contains a constant part that always fails
            (``1 / 0``, ``10 ** 400``).
    """
    return Expression(text)
