"""Schedule specs: torch-style text such as ``StepLR(step_size=200, gamma=0.5)``.

A :class:`Spec` is the parsed, *unvalidated* form of a schedule: a scheduler name and its
arguments, in the order written. Validation against the scheduler's signature and torch's
rules happens in :func:`lrctl.schedules.build_schedule`. The text is parsed with ``ast``:
only literals (numbers, strings, ``True``/``False``/``None``, lists and tuples of those)
and nested scheduler calls are accepted; nothing is evaluated.

Three interchangeable forms:

* text: ``SequentialLR(schedulers=[LinearLR(start_factor=0.1, total_iters=5),
  CosineAnnealingLR(T_max=95)], milestones=[5])``
* dict/JSON: ``{"name": "StepLR", "args": {"step_size": 200, "gamma": 0.5}}``; nested
  schedulers are dicts of the same shape. Positional arguments are not part of this form.
* :class:`Spec`: ``Spec("StepLR", (("step_size", 200), ("gamma", 0.5)))``.

``parse_spec(spec.to_text()) == spec`` and ``Spec.from_dict(spec.to_dict()) == spec`` hold
for every spec (floats are written with ``repr``, which round-trips exactly).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, Union

from lrctl._parsing import parse_eval
from lrctl._render import shorten
from lrctl.constants import DEFAULT_MAX_SPEC_BYTES
from lrctl.errors import SizeLimitError, SpecError

__all__ = ["Spec", "SpecValue", "parse_spec"]

#: How much of a bad input a message quotes (error messages never echo unbounded input).
QUOTE_LIMIT = 64
#: Deepest nesting of schedulers and lists accepted.
MAX_SPEC_DEPTH = 8

SpecValue: TypeAlias = Union[int, float, str, bool, "Spec", tuple["SpecValue", ...], None]


@dataclass(frozen=True)
class Spec:
    """A scheduler name and its arguments, as written.

    Attributes:
        name: The torch class name, e.g. ``"StepLR"``.
        args: Positional arguments (after torch's ``optimizer``), in order.
        kwargs: Keyword arguments, in the order written.
    """

    name: str
    kwargs: tuple[tuple[str, SpecValue], ...] = ()
    args: tuple[SpecValue, ...] = ()

    def to_text(self) -> str:
        """Return the canonical torch-style text; ``parse_spec`` reads it back equal."""
        parts = [_format_value(v) for v in self.args]
        parts += [f"{k}={_format_value(v)}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(parts)})"

    __str__ = to_text

    def __repr__(self) -> str:
        return f"Spec({self.to_text()!r})"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict form (positional arguments under ``"args_positional"``)."""
        out: dict[str, Any] = {"name": self.name, "args": {k: _to_json(v) for k, v in self.kwargs}}
        if self.args:
            out["args_positional"] = [_to_json(v) for v in self.args]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Spec:
        """Build a spec from its dict/JSON form.

        Raises:
            SpecError: the dict is not a spec.
        """
        return _from_json_spec(data, depth=0)

    def get(self, key: str, default: SpecValue = None) -> SpecValue:
        """Return keyword argument ``key``, or ``default``."""
        for k, v in self.kwargs:
            if k == key:
                return v
        return default


def parse_spec(
    text: str | Spec | Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_SPEC_BYTES
) -> Spec:
    """Parse torch-style spec text (or pass a :class:`Spec` / dict form through).

    Args:
        text: e.g. ``"CosineAnnealingLR(T_max=100, eta_min=0.001)"``.
        max_bytes: The longest text accepted, in UTF-8 bytes (DESIGN: 4 KiB); for the dict
            form, the longest canonical text.

    Returns:
        The parsed spec (not yet validated against the scheduler's signature).

    Raises:
        SizeLimitError: the text is longer than ``max_bytes``.
        SpecError: the text is not a scheduler call with literal arguments.
    """
    if isinstance(text, Spec):
        return text
    if isinstance(text, Mapping):
        spec = Spec.from_dict(text)
        _check_size(spec.to_text(), max_bytes)
        return spec
    if not isinstance(text, str):
        raise SpecError(
            f"schedule spec must be text such as 'StepLR(step_size=200)', got {type(text).__name__}"
        )
    _check_size(text, max_bytes)
    stripped = text.strip()
    if not stripped:
        raise SpecError("schedule spec is empty; expected e.g. 'StepLR(step_size=200, gamma=0.5)'")
    try:
        # A warning ("invalid decimal literal") is a syntax error here, never printed.
        tree = parse_eval(stripped)
    except Warning as exc:
        raise SpecError(
            f"schedule spec is not valid syntax ({shorten(str(exc))}); expected "
            f"e.g. 'StepLR(step_size=200, gamma=0.5)', got {_quote(stripped)}"
        ) from None
    except SyntaxError as exc:
        raise SpecError(
            f"schedule spec is not valid syntax at column {exc.offset}: "
            f"{shorten(exc.msg)}; expected e.g. 'StepLR(step_size=200, gamma=0.5)', "
            f"got {_quote(stripped)}"
        ) from None
    except (RecursionError, MemoryError):
        raise SpecError(
            f"schedule spec is nested too deeply; expected a flatter spec, got {_quote(stripped)}"
        ) from None
    except ValueError as exc:  # null bytes, lone surrogates, an int literal past 4,300 digits
        raise SpecError(
            f"schedule spec cannot be parsed ({shorten(str(exc))}); expected e.g. "
            f"'StepLR(step_size=200, gamma=0.5)', got {_quote(stripped)}"
        ) from None
    if not isinstance(tree.body, ast.Call):
        raise SpecError(
            f"schedule spec must be a scheduler call such as "
            f"'StepLR(step_size=200)', got {_quote(stripped)}"
        )
    return _spec_from_call(tree.body, depth=0)


def _quote(text: str) -> str:
    """``repr`` of at most :data:`QUOTE_LIMIT` characters of ``text``, for a message."""
    return repr(shorten(text, QUOTE_LIMIT))


def _unparse(node: ast.AST) -> str:
    return _quote(ast.unparse(node))


def _check_size(text: str, max_bytes: int) -> None:
    # Every character is at least one UTF-8 byte: a long text is refused without encoding.
    size = len(text) if len(text) > max_bytes else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        unit = "characters" if len(text) > max_bytes else "bytes"
        raise SizeLimitError(
            f"schedule spec too long: expected at most {max_bytes} bytes, got "
            f"{size} {unit}: {_quote(text)}"
        )


def _spec_from_call(node: ast.Call, depth: int) -> Spec:
    if depth > MAX_SPEC_DEPTH:
        raise SpecError(f"schedule spec nests more than {MAX_SPEC_DEPTH} levels deep")
    if not isinstance(node.func, ast.Name):
        raise SpecError(
            f"expected a scheduler name such as StepLR at column {node.col_offset}, "
            f"got {_unparse(node.func)}"
        )
    name = node.func.id
    args: list[SpecValue] = []
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise SpecError(f"{shorten(name)}: *arguments are not allowed, got {_unparse(arg)}")
        args.append(_literal(arg, shorten(name), depth))
    kwargs: list[tuple[str, SpecValue]] = []
    seen: set[str] = set()
    for kw in node.keywords:
        if kw.arg is None:
            raise SpecError(f"{shorten(name)}: **arguments are not allowed, got {_unparse(kw)}")
        if kw.arg in seen:
            raise SpecError(f"{shorten(name)}: argument {_quote(kw.arg)} given twice")
        seen.add(kw.arg)
        kwargs.append((kw.arg, _literal(kw.value, f"{shorten(name)}.{shorten(kw.arg)}", depth)))
    return Spec(name, tuple(kwargs), tuple(args))


def _literal(node: ast.expr, where: str, depth: int) -> SpecValue:
    """Convert a literal AST node; anything that is not a literal is refused."""
    if isinstance(node, ast.Call):
        return _spec_from_call(node, depth + 1)
    if isinstance(node, (ast.List, ast.Tuple)):
        if depth > MAX_SPEC_DEPTH:
            raise SpecError(f"{where}: nested more than {MAX_SPEC_DEPTH} levels deep")
        return tuple(_literal(e, where, depth + 1) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _literal(node.operand, where, depth)
        if isinstance(inner, bool) or not isinstance(inner, (int, float)):
            raise SpecError(f"{where}: unary minus needs a number, got {_unparse(node)}")
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{where}: expected a finite number, got {_unparse(node)}")
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
    if isinstance(node, ast.Name) and node.id in {"inf", "nan", "Infinity", "NaN"}:
        raise SpecError(f"{where}: expected a finite number, got {_quote(node.id)}")
    raise SpecError(
        f"{where}: expected a literal (number, string, True/False/None, list) "
        f"or a scheduler, got {_unparse(node)}"
    )


def _format_value(value: SpecValue) -> str:
    if isinstance(value, Spec):
        return value.to_text()
    if isinstance(value, tuple):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return repr(value)


def _to_json(value: SpecValue) -> Any:
    if isinstance(value, Spec):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any, where: str, depth: int) -> SpecValue:
    if depth > MAX_SPEC_DEPTH:
        raise SpecError(f"{where}: nested more than {MAX_SPEC_DEPTH} levels deep")
    if isinstance(value, Mapping):
        return _from_json_spec(value, depth + 1)
    if isinstance(value, (list, tuple)):
        return tuple(_from_json(v, where, depth + 1) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{where}: expected a finite number, got {_quote(repr(value))}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise SpecError(
        f"{where}: expected a JSON literal or a scheduler object, got {type(value).__name__}"
    )


def _from_json_spec(data: Mapping[str, Any], depth: int) -> Spec:
    if not isinstance(data, Mapping):
        raise SpecError(
            f"expected a scheduler object {{'name': ..., 'args': {{...}}}}, "
            f"got {type(data).__name__}"
        )
    unknown = set(data) - {"name", "args", "args_positional"}
    if unknown:
        raise SpecError(
            f"scheduler object has unknown keys {sorted(unknown)}; "
            "expected 'name', 'args' and optionally 'args_positional'"
        )
    name = data.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise SpecError(
            f"scheduler object needs a 'name' such as 'StepLR', got {_quote(repr(name))}"
        )
    kw = data.get("args", {})
    if not isinstance(kw, Mapping):
        raise SpecError(
            f"{shorten(name)}: 'args' must be an object of keyword arguments, "
            f"got {type(kw).__name__}"
        )
    pos = data.get("args_positional", [])
    if not isinstance(pos, Sequence) or isinstance(pos, str):
        raise SpecError(
            f"{shorten(name)}: 'args_positional' must be a list, got {type(pos).__name__}"
        )
    kwargs = []
    for k, v in kw.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise SpecError(
                f"{shorten(name)}: argument names must be identifiers, got {_quote(repr(k))}"
            )
        kwargs.append((k, _from_json(v, f"{shorten(name)}.{shorten(k)}", depth)))
    args = tuple(_from_json(v, shorten(name), depth) for v in pos)
    return Spec(name, tuple(kwargs), args)
