"""Parsing expression text, and checking the tree against the allowlist and the limits."""

from __future__ import annotations

import ast
from typing import Any, Final, NoReturn

from lrctl._parsing import parse_eval
from lrctl.expressions._grammar import (
    BINOPS,
    COMPARISONS,
    CONSTANTS,
    FUNCTION_LIST,
    FUNCTIONS,
    MAGNITUDE_TEXT,
    MAX_DEPTH,
    MAX_MAGNITUDE,
    MAX_NODES,
    VARIABLES,
    Source,
    fail,
    shorten,
)

__all__ = ["Validator", "parse"]

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

_EXPECTED_NAME: Final = (
    f"expected the variable epoch (alias step), a number, a constant (pi, e, tau), "
    f"or a call of one of {FUNCTION_LIST}"
)
_EXPECTED_SYNTAX: Final = (
    "expected numbers, epoch (alias step), pi, e, tau, the operators + - * / // % **, "
    "comparisons, and/or/not, 'a if cond else b', and calls of " + FUNCTION_LIST
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

# Node types the walker accepts (each is checked further by Validator).
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


class Validator:
    """Checks a parsed tree against the allowlist and the limits, without recursion."""

    def __init__(self, source: Source) -> None:
        self.src = source

    def refuse(self, node: ast.AST, what: str, expected: str) -> NoReturn:
        fail(
            f"{what} is not allowed at {self.src.column(node)}; {expected}, "
            f"got {self.src.segment(node)!r}"
        )

    def run(self, tree: ast.Expression) -> None:
        nodes = 0
        stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_DEPTH:
                fail(
                    f"expression nested too deeply (more than {MAX_DEPTH} levels) at "
                    f"{self.src.column(node)}; expected a flatter expression, "
                    f"got {self.src.segment(node)!r}"
                )
            nodes += 1
            if nodes > MAX_NODES:
                fail(
                    f"expression too large (more than {MAX_NODES} nodes); expected a "
                    f"shorter expression, got {shorten(self.src.text)!r}"
                )
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
            if type(node.op) not in BINOPS:
                op = _REFUSED_OPERATORS.get(type(node.op), type(node.op).__name__)
                self.refuse(
                    node, f"operator {op!r}", "expected one of the operators + - * / // % **"
                )
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
                if type(cmp) not in COMPARISONS:
                    name = _REFUSED_OPERATORS.get(type(cmp), type(cmp).__name__)
                    self.refuse(
                        node,
                        f"comparison {name!r}",
                        "expected one of the comparisons < <= > >= == !=",
                    )
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
            kinds = {
                str: "string literal",
                bytes: "bytes literal",
                complex: "complex number",
                type(None): "None",
                type(...): "'...'",
            }
            what = kinds.get(type(value), f"constant of type {type(value).__name__}")
            self.refuse(node, what, "expected an int or float number")
        if not abs(value) <= MAX_MAGNITUDE:  # also refuses 1e400 (inf)
            fail(
                f"number {self.src.segment(node)} at {self.src.column(node)} is out of "
                f"range; expected |x| <= {MAGNITUDE_TEXT}, got {value!r}"
            )

    def check_name(self, node: ast.Name) -> None:
        name = node.id
        if name in VARIABLES or name in CONSTANTS:
            return
        if "__" in name:
            self.refuse(node, f"name {name!r} (double underscores)", _EXPECTED_NAME)
        if name in FUNCTIONS:
            self.refuse(
                node, f"function {name!r} without a call", f"expected a call such as {name}(epoch)"
            )
        if name in ("inf", "nan"):
            self.refuse(
                node, f"name {name!r} (the multiplier must be a finite number)", _EXPECTED_NAME
            )
        self.refuse(node, f"name {name!r}", _EXPECTED_NAME)

    def check_call(self, node: ast.Call) -> list[ast.expr]:
        func = node.func
        if not isinstance(func, ast.Name):
            self.refuse(
                node,
                "call of something other than a plain function name",
                f"expected a call of one of {FUNCTION_LIST}",
            )
        if func.id not in FUNCTIONS:
            what = f"call of {func.id!r}"
            if "__" in func.id:
                what += " (double underscores)"
            self.refuse(node, what, f"expected a call of one of {FUNCTION_LIST}")
        if node.keywords:
            kw = node.keywords[0]
            label = "'**' unpacking" if kw.arg is None else f"keyword argument {kw.arg!r}"
            self.refuse(node, f"{label} in {func.id}()", "expected positional arguments only")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self.refuse(
                    arg, f"'*' unpacking in {func.id}()", "expected positional arguments only"
                )
        low, high, _ = FUNCTIONS[func.id]
        n = len(node.args)
        if n < low or (high is not None and n > high):
            if high is None:
                want = f"at least {low} arguments"
            elif low == high:
                want = f"{low} argument" + ("s" if low > 1 else "")
            else:
                want = f"{low} to {high} arguments"
            fail(
                f"wrong number of arguments for {func.id}() at {self.src.column(node)}; "
                f"expected {want}, got {n} in {self.src.segment(node)!r}"
            )
        return list(node.args)


def parse(text: str) -> ast.Expression:
    """``ast.parse`` that turns every way it can fail into :class:`ExpressionError`."""
    try:
        # Warnings (invalid escapes, "1if") raise instead of leaking out; one parse at a
        # time (lrctl._parsing says why).
        return parse_eval(text)
    except SyntaxError as exc:
        lines = text.splitlines() or [""]
        lineno = exc.lineno if exc.lineno and 0 < exc.lineno <= len(lines) else len(lines)
        # offset 0 (or none) means the parser ran out of input.
        column = exc.offset if exc.offset else len(lines[lineno - 1]) + 1
        where = f"column {column}" if lineno == 1 else f"line {lineno}, column {column}"
        detail = "" if exc.msg == "invalid syntax" else f" ({exc.msg})"
        fail(
            f"invalid syntax at {where}{detail}; expected a Python-style arithmetic "
            f"expression such as '0.95 ** epoch', got {shorten(text)!r}"
        )
    except (RecursionError, MemoryError):
        fail(
            f"expression too complex to parse; expected at most {MAX_DEPTH} levels of "
            f"nesting, got {shorten(text)!r}"
        )
    except (ValueError, OverflowError, Warning) as exc:
        fail(f"cannot parse the expression ({exc}); got {shorten(text)!r}")
