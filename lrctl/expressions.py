"""Safe expressions, the text form of torch's ``lr_lambda``.

``LambdaLR(lr_lambda="0.95 ** epoch")`` cannot ship a Python function between the
controller and the workers, so an ``lr_lambda`` is a short formula in ``epoch``, checked
against an allowlist and compiled once into a tree of small closures::

    >>> f = compile_expression("0.5 if epoch < 40 else 0.5 ** 2 if epoch < 70 else 0.5 ** 3")
    >>> f(10), f(50), f(80)
    (0.5, 0.25, 0.125)

User text is never given to ``eval`` or ``exec``, never turned into a code object, and never
unpickled: it is parsed with ``ast.parse(text, mode="eval")`` (a syntax tree only), every
node is checked against the allowlist below *before* anything runs, and the checked tree is
turned into plain Python closures, so a call does no parsing (about half a microsecond for
``0.95 ** epoch``).

Grammar
=======

============================  ========================================================
Syntax                        Allowed
============================  ========================================================
numbers                       int and float literals with ``|x| <= 1e15``; ``True`` /
                              ``False`` count as 1 / 0. No strings, bytes, complex
                              (``1j``), ``None`` or ``...``.
names                         ``epoch`` (alias ``step``): the argument; constants
                              ``pi``, ``e``, ``tau``. ``inf`` / ``nan`` are refused.
arithmetic                    ``+ - * / // % **``, unary ``+ -``
comparisons                   ``< <= > >= == !=`` (chained, as in Python)
logic                         ``and or not``, ``a if cond else b``
calls                         ``abs(x) min(x, y, ...) max(x, y, ...) floor(x) ceil(x)
                              round(x) sqrt(x) exp(x) log(x[, base]) log2(x) log10(x)
                              sin(x) cos(x) tan(x) atan(x) tanh(x) pow(x, y)``;
                              positional arguments only
everything else               refused: attributes, subscripts, lambdas, comprehensions,
                              containers, ``:=``, f-strings, ``*args``, keywords,
                              ``await``/``yield``, ``is``/``in``, bit operators, ...
============================  ========================================================

============================  ========================================================
Limit                         Value
============================  ========================================================
text length                   :data:`MAX_EXPRESSION_LENGTH` = 1000 characters (checked
                              before parsing)
syntax tree size              :data:`MAX_NODES` = 200 expression nodes
nesting depth                 :data:`MAX_DEPTH` = 32 (checked without recursion)
literal magnitude             :data:`MAX_MAGNITUDE` = 1e15
intermediate results          finite and ``|x| <= 1e300``, checked after every
                              operator and call
``epoch``                     a finite real number with ``|epoch| <= 1e15``
result                        a finite number ``>= 0`` (it multiplies a learning rate)
============================  ========================================================

Functions come from :mod:`math` (``floor``, ``ceil``, ``sqrt``, ``exp``, ``log``, ...) or
are Python's builtins (``abs``, ``min``, ``max``, ``round`` with one argument, ``pow`` with
two arguments, which is ``x ** y``). A constant sub-expression that always fails
(``1 / 0``, ``10 ** 400``, ``9 ** 9 ** 9``) is refused when the expression is compiled,
even in a branch that might never be taken.

Exactness: Python semantics, ints kept
======================================

An expression computes *exactly* what the Python function ``lambda epoch: <same text>``
computes (the functions above imported from :mod:`math`, ``pow`` being the builtin), bit
for bit, whenever it succeeds: values keep
their Python types, ``int`` op ``int`` stays an exact ``int`` (``epoch // 30``,
``2 ** epoch``, ``(epoch + 1) % 10``), ``/`` is Python's correctly rounded true division,
and float operations are Python's own. The result is returned as ``float(value)``, which is
what torch's ``base_lr * lr_lambda(epoch)`` does with an ``int`` anyway.

Safety does not need floats: every operand is already bounded by ``1e300`` (about 997
bits), so ``+ - * // %`` on ints cost at most a 2000-bit product and the result is
range-checked right after. The one operator that could build a giant int, ``int ** int``
with a non-negative exponent, is checked *before* it runs: if ``exp * log2(|base|)``
exceeds 997 bits it fails (``9 ** 9 ** 9`` fails on ``9 ** 387420489`` without computing
it). Float overflow (``2 ** 1e9``, ``exp(1e4)``), division by zero, math domain errors and
negative bases with fractional exponents (which Python turns into ``complex``) all raise
:class:`~lrctl.errors.ExpressionError` naming the sub-expression, its column and the
epoch.
"""

from __future__ import annotations

import ast
import math
import numbers
import operator
import warnings
from collections.abc import Callable
from typing import Any, Final, NoReturn, cast, final

from lrctl.errors import ExpressionError

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_MAGNITUDE",
    "MAX_NODES",
    "Expression",
    "compile_expression",
]

MAX_EXPRESSION_LENGTH: Final = 1000
"""Longest accepted expression text, in characters (after stripping whitespace)."""

MAX_NODES: Final = 200
"""Most expression nodes (numbers, names, operators, calls, ...) in one expression."""

MAX_DEPTH: Final = 32
"""Deepest nesting of expression nodes (``-(-(-1)))`` has depth 4)."""

MAX_MAGNITUDE: Final = 1e15
"""Largest absolute value of a number literal, and of the ``epoch`` an expression accepts."""

# Largest absolute value of any intermediate result (ints included): about 2**996.6.
_MAX_INTERMEDIATE: Final = 1e300
# log2(_MAX_INTERMEDIATE): an int ** int whose result would need more bits is refused.
_MAX_POW_BITS: Final = math.log2(_MAX_INTERMEDIATE)

_PREFIX: Final = "lr_lambda"
_MAGNITUDE_TEXT: Final = f"{MAX_MAGNITUDE:.0e}".replace("+", "")  # "1e15"

# A compiled node: epoch -> value. Values are ints, floats or bools (ints, to Python);
# typed as float, which by PEP 484's numeric tower admits int and bool.
_Fn = Callable[[float], float]

_VARIABLES: Final = frozenset({"epoch", "step"})
_CONSTANTS: Final[dict[str, float]] = {"pi": math.pi, "e": math.e, "tau": math.tau}


class _Failure(Exception):
    """Raised by compiled closures; turned into :class:`ExpressionError` by the caller."""

    def __init__(self, what: str, where: str) -> None:
        super().__init__(what, where)
        self.what = what
        self.where = where


def _pow(a: float, b: float) -> float:
    """``a ** b`` as Python computes it, refusing results that cannot be small enough."""
    # int ** positive int is an exact int: refuse before building a giant one.
    if (isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1
            and b * math.log2(abs(a)) > _MAX_POW_BITS):
        raise OverflowError("result too large")
    r = a**b
    if isinstance(r, complex):
        raise ValueError("negative base with a fractional exponent")
    result: float = r
    return result


def _round(x: float) -> float:
    return round(x)


def _min(*args: float) -> float:
    return min(args)


def _max(*args: float) -> float:
    return max(args)


_BINOPS: Final[dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", _pow),
}

_REFUSED_OPERATORS: Final[dict[type[ast.AST], str]] = {
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.Invert: "~",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}

_COMPARISONS: Final[dict[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}

# name -> (minimum arguments, maximum arguments or None, implementation)
_FUNCTIONS: Final[dict[str, tuple[int, int | None, Callable[..., float]]]] = {
    "abs": (1, 1, abs),
    "atan": (1, 1, math.atan),
    "ceil": (1, 1, math.ceil),
    "cos": (1, 1, math.cos),
    "exp": (1, 1, math.exp),
    "floor": (1, 1, math.floor),
    "log": (1, 2, math.log),
    "log10": (1, 1, math.log10),
    "log2": (1, 1, math.log2),
    "max": (2, None, _max),
    "min": (2, None, _min),
    "pow": (2, 2, _pow),
    "round": (1, 1, _round),
    "sin": (1, 1, math.sin),
    "sqrt": (1, 1, math.sqrt),
    "tan": (1, 1, math.tan),
    "tanh": (1, 1, math.tanh),
}

_FUNCTION_LIST: Final = ", ".join(sorted(_FUNCTIONS))
_EXPECTED_NAME: Final = (
    f"expected the variable epoch (alias step), a number, a constant (pi, e, tau), "
    f"or a call of one of {_FUNCTION_LIST}"
)
_EXPECTED_SYNTAX: Final = (
    "expected numbers, epoch (alias step), pi, e, tau, the operators + - * / // % **, "
    "comparisons, and/or/not, 'a if cond else b', and calls of " + _FUNCTION_LIST
)

# Node types that are refused, with what to call them in the message.
_REFUSED_NODES: Final[dict[type[ast.AST], str]] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript",
    ast.Slice: "slice",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehension",
    ast.SetComp: "comprehension",
    ast.DictComp: "comprehension",
    ast.GeneratorExp: "generator expression",
    ast.Starred: "'*' unpacking",
    ast.Dict: "dict display",
    ast.List: "list display",
    ast.Tuple: "tuple",
    ast.Set: "set display",
    ast.NamedExpr: "assignment expression ':='",
    ast.JoinedStr: "f-string",
    ast.FormattedValue: "f-string",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield from",
}

# Node types the walker accepts (each is checked further by _Validator).
_ALLOWED_NODES: Final = (
    ast.Expression,
    ast.Constant,
    ast.Name,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
)


def _shorten(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(message: str) -> NoReturn:
    raise ExpressionError(f"{_PREFIX}: {message}")


class _Source:
    """The expression text, for quoting nodes and locating them."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines() or [""]

    def segment(self, node: ast.AST) -> str:
        seg = ast.get_source_segment(self.text, node)
        return _shorten(seg if seg is not None else type(node).__name__, 60)

    def column(self, node: ast.AST) -> str:
        lineno = getattr(node, "lineno", 1)
        col = getattr(node, "col_offset", 0)
        line = self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""
        # ast offsets count UTF-8 bytes; report characters, 1-based.
        char = len(line.encode("utf-8")[:col].decode("utf-8", "replace")) + 1
        return f"column {char}" if lineno == 1 else f"line {lineno}, column {char}"

    def where(self, node: ast.AST) -> str:
        return f"in {self.segment(node)!r} ({self.column(node)})"


class _Validator:
    """Checks a parsed tree against the allowlist and the limits, without recursion."""

    def __init__(self, source: _Source) -> None:
        self.src = source

    def refuse(self, node: ast.AST, what: str, expected: str) -> NoReturn:
        _fail(f"{what} is not allowed at {self.src.column(node)}; {expected}, "
              f"got {self.src.segment(node)!r}")

    def run(self, tree: ast.Expression) -> None:
        nodes = 0
        stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_DEPTH:
                _fail(f"expression nested too deeply (more than {MAX_DEPTH} levels) at "
                      f"{self.src.column(node)}; expected a flatter expression, "
                      f"got {self.src.segment(node)!r}")
            nodes += 1
            if nodes > MAX_NODES:
                _fail(f"expression too large (more than {MAX_NODES} nodes); expected a "
                      f"shorter expression, got {_shorten(self.src.text)!r}")
            for child in self.check(node):
                stack.append((child, depth + 1))

    def check(self, node: ast.AST) -> list[ast.expr]:
        """Validate one node; return the child expressions still to be checked."""
        if not isinstance(node, _ALLOWED_NODES):
            what = _REFUSED_NODES.get(type(node), f"syntax {type(node).__name__}")
            self.refuse(node, what, _EXPECTED_SYNTAX)
        if isinstance(node, ast.Constant):
            self.check_constant(node)
            return []
        if isinstance(node, ast.Name):
            self.check_name(node)
            return []
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                op = _REFUSED_OPERATORS.get(type(node.op), type(node.op).__name__)
                self.refuse(node, f"operator {op!r}",
                            "expected one of the operators + - * / // % **")
            return [node.left, node.right]
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.UAdd, ast.USub, ast.Not)):
                op = _REFUSED_OPERATORS.get(type(node.op), type(node.op).__name__)
                self.refuse(node, f"operator {op!r}", "expected unary + - or not")
            return [node.operand]
        if isinstance(node, ast.BoolOp):
            return list(node.values)
        if isinstance(node, ast.Compare):
            for cmp in node.ops:
                if type(cmp) not in _COMPARISONS:
                    name = _REFUSED_OPERATORS.get(type(cmp), type(cmp).__name__)
                    self.refuse(node, f"comparison {name!r}",
                                "expected one of the comparisons < <= > >= == !=")
            return [node.left, *node.comparators]
        if isinstance(node, ast.IfExp):
            return [node.test, node.body, node.orelse]
        if isinstance(node, ast.Call):
            return self.check_call(node)
        # Only ast.Expression is left, and it is never pushed.
        self.refuse(node, f"syntax {type(node).__name__}", _EXPECTED_SYNTAX)

    def check_constant(self, node: ast.Constant) -> None:
        value: Any = node.value
        if type(value) not in (int, float, bool):
            kinds = {str: "string literal", bytes: "bytes literal", complex: "complex number",
                     type(None): "None", type(...): "'...'"}
            what = kinds.get(type(value), f"constant of type {type(value).__name__}")
            self.refuse(node, what, "expected an int or float number")
        if not abs(value) <= MAX_MAGNITUDE:  # also refuses 1e400 (inf)
            _fail(f"number {self.src.segment(node)} at {self.src.column(node)} is out of "
                  f"range; expected |x| <= {_MAGNITUDE_TEXT}, got {value!r}")

    def check_name(self, node: ast.Name) -> None:
        name = node.id
        if name in _VARIABLES or name in _CONSTANTS:
            return
        if "__" in name:
            self.refuse(node, f"name {name!r} (double underscores)", _EXPECTED_NAME)
        if name in _FUNCTIONS:
            self.refuse(node, f"function {name!r} without a call",
                        f"expected a call such as {name}(epoch)")
        if name in ("inf", "nan"):
            self.refuse(node, f"name {name!r} (the multiplier must be a finite number)",
                        _EXPECTED_NAME)
        self.refuse(node, f"name {name!r}", _EXPECTED_NAME)

    def check_call(self, node: ast.Call) -> list[ast.expr]:
        func = node.func
        if not isinstance(func, ast.Name):
            self.refuse(node, "call of something other than a plain function name",
                        f"expected a call of one of {_FUNCTION_LIST}")
        if func.id not in _FUNCTIONS:
            what = f"call of {func.id!r}"
            if "__" in func.id:
                what += " (double underscores)"
            self.refuse(node, what, f"expected a call of one of {_FUNCTION_LIST}")
        if node.keywords:
            kw = node.keywords[0]
            label = "'**' unpacking" if kw.arg is None else f"keyword argument {kw.arg!r}"
            self.refuse(node, f"{label} in {func.id}()", "expected positional arguments only")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self.refuse(arg, f"'*' unpacking in {func.id}()",
                            "expected positional arguments only")
        low, high, _ = _FUNCTIONS[func.id]
        n = len(node.args)
        if n < low or (high is not None and n > high):
            if high is None:
                want = f"at least {low} arguments"
            elif low == high:
                want = f"{low} argument" + ("s" if low > 1 else "")
            else:
                want = f"{low} to {high} arguments"
            _fail(f"wrong number of arguments for {func.id}() at {self.src.column(node)}; "
                  f"expected {want}, got {n} in {self.src.segment(node)!r}")
        return list(node.args)


class _Compiled:
    """One compiled node: its closure, and its value when it is a constant."""

    __slots__ = ("constant", "fn", "value")

    def __init__(self, fn: _Fn, constant: bool = False, value: float = 0.0) -> None:
        self.fn = fn
        self.constant = constant
        self.value = value


def _describe(exc: Exception, detail: str) -> str:
    if isinstance(exc, ZeroDivisionError):
        return f"division by zero ({detail})"
    if isinstance(exc, OverflowError):
        return f"overflow ({detail})"
    return f"{exc} ({detail})"


def _range_failure(value: float, where: str) -> _Failure:
    return _Failure(f"intermediate result {value!r} is not finite or exceeds "
                    "1e300 in magnitude", where)


def _num(value: float) -> str:
    """A value for a message, parenthesized when negative: ``(-8) ** 0.5``."""
    return f"({value!r})" if value < 0 else repr(value)


def _identity(x: float) -> float:
    return x


class _Compiler:
    """Turns a validated tree into closures; folds constant sub-expressions."""

    def __init__(self, source: _Source) -> None:
        self.src = source

    def fold(self, node: ast.expr, fn: _Fn) -> _Compiled:
        """Evaluate a constant sub-expression now; refuse it if it always fails."""
        try:
            value = fn(0)
        except _Failure as exc:
            _fail(f"{exc.what} {exc.where}; this constant part of the expression always fails")
        return _Compiled(lambda x: value, True, value)

    def build(self, node: ast.expr) -> _Compiled:
        if isinstance(node, ast.Constant):
            value = cast(float, node.value)  # an int, float or bool: checked by _Validator
            return _Compiled(lambda x: value, True, value)
        if isinstance(node, ast.Name):
            if node.id in _VARIABLES:
                return _Compiled(_identity)
            const = _CONSTANTS[node.id]
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
            ops = [_COMPARISONS[type(op)] for op in node.ops]
            fn = self.compare(ops, [p.fn for p in parts])
        elif isinstance(node, ast.IfExp):
            parts = [self.build(node.test), self.build(node.body), self.build(node.orelse)]
            fn = self.ifexp(parts[0].fn, parts[1].fn, parts[2].fn)
        elif isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            parts = [self.build(a) for a in node.args]
            fn = self.call(node, node.func.id, [p.fn for p in parts])
        else:  # pragma: no cover - the validator refuses everything else
            raise AssertionError(type(node).__name__)
        if all(p.constant for p in parts):
            return self.fold(node, fn)
        return _Compiled(fn)

    def binop(self, node: ast.BinOp, left: _Fn, right: _Fn) -> _Fn:
        symbol, op = _BINOPS[type(node.op)]
        where = self.src.where(node)
        lim = _MAX_INTERMEDIATE

        def run(x: float) -> float:
            a = left(x)
            b = right(x)
            try:
                r = op(a, b)
            except (ArithmeticError, ValueError) as exc:
                raise _Failure(_describe(exc, f"{_num(a)} {symbol} {_num(b)}"), where) from None
            if not -lim <= r <= lim:
                raise _range_failure(r, where)
            return r  # type: ignore[no-any-return]

        return run

    @staticmethod
    def unaryop(op: ast.unaryop, operand: _Fn) -> _Fn:
        # Operands are bounded, so neither can fail.
        if isinstance(op, ast.USub):
            return lambda x: -operand(x)
        if isinstance(op, ast.UAdd):
            return lambda x: +operand(x)
        return lambda x: not operand(x)

    @staticmethod
    def boolop(is_and: bool, values: list[_Fn]) -> _Fn:
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
    def compare(ops: list[Callable[[Any, Any], Any]], operands: list[_Fn]) -> _Fn:
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
    def ifexp(test: _Fn, body: _Fn, orelse: _Fn) -> _Fn:
        return lambda x: body(x) if test(x) else orelse(x)

    def call(self, node: ast.Call, name: str, args: list[_Fn]) -> _Fn:
        impl = _FUNCTIONS[name][2]
        where = self.src.where(node)
        lim = _MAX_INTERMEDIATE

        def check(r: float) -> float:
            if not -lim <= r <= lim:
                raise _range_failure(r, where)
            return r

        def failure(exc: Exception, values: tuple[float, ...]) -> _Failure:
            shown = ", ".join(repr(v) for v in values)
            return _Failure(_describe(exc, f"{name}({shown})"), where)

        if len(args) == 1:
            (arg,) = args

            def run1(x: float) -> float:
                a = arg(x)
                try:
                    r = impl(a)
                except (ArithmeticError, ValueError) as exc:
                    raise failure(exc, (a,)) from None
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
                    raise failure(exc, (a, b)) from None
                return check(r)

            return run2

        def run(x: float) -> float:
            values = tuple(f(x) for f in args)
            try:
                r = impl(*values)
            except (ArithmeticError, ValueError) as exc:
                raise failure(exc, values) from None
            return check(r)

        return run


def _parse(text: str) -> ast.Expression:
    """``ast.parse`` that turns every way it can fail into :class:`ExpressionError`."""
    try:
        # Warnings (invalid escapes, "1if") become SyntaxErrors instead of leaking out. This
        # touches the process-wide warning filters for the duration of one parse only.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return ast.parse(text, mode="eval")
    except SyntaxError as exc:
        lines = text.splitlines() or [""]
        lineno = exc.lineno if exc.lineno and 0 < exc.lineno <= len(lines) else len(lines)
        # offset 0 (or none) means the parser ran out of input.
        column = exc.offset if exc.offset else len(lines[lineno - 1]) + 1
        where = f"column {column}" if lineno == 1 else f"line {lineno}, column {column}"
        detail = "" if exc.msg == "invalid syntax" else f" ({exc.msg})"
        _fail(f"invalid syntax at {where}{detail}; expected a Python-style arithmetic "
              f"expression such as '0.95 ** epoch', got {_shorten(text)!r}")
    except (RecursionError, MemoryError):
        _fail(f"expression too complex to parse; expected at most {MAX_DEPTH} levels of "
              f"nesting, got {_shorten(text)!r}")
    except (ValueError, OverflowError, Warning) as exc:
        _fail(f"cannot parse the expression ({exc}); got {_shorten(text)!r}")


def _translate(text: str) -> _Fn:
    if len(text) > MAX_EXPRESSION_LENGTH:
        _fail(f"expression too long; expected at most {MAX_EXPRESSION_LENGTH} characters, "
              f"got {len(text)}: {_shorten(text)!r}")
    if not text:
        _fail("empty expression; expected a formula such as '0.95 ** epoch'")
    tree = _parse(text)
    source = _Source(text)
    _Validator(source).run(tree)
    return _Compiler(source).build(tree.body).fn


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
        ExpressionError: If the text is not an allowed expression (see the module
            docstring for the grammar and limits).
    """

    # "__dict__" stays empty: torch's LambdaLR.state_dict() saves ``fn.__dict__`` of
    # callable objects, and this keeps that a harmless ``{}``.
    __slots__ = ("__dict__", "_fn", "_text")

    _fn: _Fn
    _text: str

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            _fail(f"expected an expression string such as '0.95 ** epoch', "
                  f"got {type(text).__name__} {text!r}")
        text = text.strip()
        object.__setattr__(self, "_fn", _translate(text))
        object.__setattr__(self, "_text", text)

    @property
    def text(self) -> str:
        """The expression's text, as given but with surrounding whitespace stripped."""
        return self._text

    def __call__(self, epoch: int | float) -> float:
        """Evaluate the expression.

        Args:
            epoch: The value of ``epoch`` (and ``step``): torch passes ``last_epoch``.

        Returns:
            The multiplier, a finite float ``>= 0``.

        Raises:
            ExpressionError: If ``epoch`` is not a finite real number with
                ``|epoch| <= MAX_MAGNITUDE``, if evaluating fails (division by zero,
                overflow, a math domain error), or if the result is negative.
        """
        if type(epoch) is not int and type(epoch) is not float:
            try:
                epoch = _coerce_epoch(epoch)
            except TypeError:
                raise ExpressionError(
                    f"{_PREFIX} {_shorten(self._text)!r}: expected a real number as epoch, "
                    f"got {type(epoch).__name__} {epoch!r}") from None
        if not -MAX_MAGNITUDE <= epoch <= MAX_MAGNITUDE:
            raise ExpressionError(
                f"{_PREFIX} {_shorten(self._text)!r}: expected a finite epoch with "
                f"|epoch| <= {_MAGNITUDE_TEXT}, got {epoch!r}")
        try:
            value = self._fn(epoch)
        except _Failure as exc:
            raise ExpressionError(
                f"{_PREFIX} {_shorten(self._text)!r}: {exc.what} {exc.where} "
                f"at epoch {epoch!r}") from None
        result = value if type(value) is float else float(value)
        if not 0.0 <= result <= _MAX_INTERMEDIATE:
            raise ExpressionError(
                f"{_PREFIX} must return a finite number >= 0, got {value!r} at epoch "
                f"{epoch!r} (expression {_shorten(self._text)!r})")
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
