"""Tests for lrctl.expressions: safe ``lr_lambda`` expressions."""

from __future__ import annotations

import ast
import builtins
import contextlib
import copy
import io
import math
import pickle
from collections.abc import Callable
from math import atan, ceil, cos, exp, floor, log, log2, log10, pi, sin, sqrt, tan, tanh, tau
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrctl.errors import ExpressionError, SpecError
from lrctl.expressions import (
    MAX_DEPTH,
    MAX_EXPRESSION_LENGTH,
    MAX_MAGNITUDE,
    MAX_NODES,
    Expression,
    compile_expression,
)

EPOCHS = [0, 1, 2, 3, 5, 9, 10, 29, 30, 31, 39, 40, 41, 69, 70, 71, 99, 100, 101, 1000, 12345]
FLOAT_EPOCHS = [0.0, 0.5, 2.5, 39.999, 70.0, 1e6]

PyFn = Callable[[Any], Any]


def same(got: float, expected: Any) -> bool:
    """Bit-identical (so 0.0 and -0.0 differ), after torch's implicit float()."""
    return type(got) is float and got.hex() == float(expected).hex()


# --------------------------------------------------------------------------- valid


VALID = [
    pytest.param("0.95 ** epoch", lambda epoch: 0.95**epoch, id="exponential"),
    pytest.param(
        "0.5 if epoch < 40 else 0.5 ** 2 if epoch < 70 else 0.5 ** 3",
        lambda epoch: 0.5 if epoch < 40 else 0.5**2 if epoch < 70 else 0.5**3,
        id="piecewise",
    ),
    pytest.param(
        "min(1.0, (epoch + 1) / 10)", lambda epoch: min(1.0, (epoch + 1) / 10), id="warmup"
    ),
    pytest.param(
        "1 / sqrt(max(epoch, 1))", lambda epoch: 1 / sqrt(max(epoch, 1)), id="inverse-sqrt"
    ),
    pytest.param("0.1 ** (epoch // 30)", lambda epoch: 0.1 ** (epoch // 30), id="step-decay"),
    pytest.param("0.1 ** (step // 30)", lambda step: 0.1 ** (step // 30), id="step-alias"),
    pytest.param("min(step, epoch) + 1", lambda step: min(step, step) + 1, id="both-names"),
    pytest.param(
        "(1 - min(epoch, 100) / 100) ** 0.9",
        lambda epoch: (1 - min(epoch, 100) / 100) ** 0.9,
        id="polynomial",
    ),
    pytest.param(
        "0.5 * (1 + cos(pi * min(epoch, 50) / 50))",
        lambda epoch: 0.5 * (1 + cos(pi * min(epoch, 50) / 50)),
        id="cosine",
    ),
    pytest.param("exp(-0.01 * epoch)", lambda epoch: exp(-0.01 * epoch), id="exp"),
    pytest.param(
        "max(0.0, 1 - epoch / 50)", lambda epoch: max(0.0, 1 - epoch / 50), id="linear-to-zero"
    ),
    pytest.param("log(epoch + 1) + 1", lambda epoch: log(epoch + 1) + 1, id="log"),
    pytest.param("log(epoch + 2, 2)", lambda epoch: log(epoch + 2, 2), id="log-base"),
    pytest.param(
        "log2(epoch + 1) + log10(epoch + 1)",
        lambda epoch: log2(epoch + 1) + log10(epoch + 1),
        id="log2-log10",
    ),
    pytest.param(
        "abs(sin(epoch)) + tanh(epoch / 10) + atan(epoch)",
        lambda epoch: abs(sin(epoch)) + tanh(epoch / 10) + atan(epoch),
        id="trig",
    ),
    pytest.param(
        "tan(min(epoch, 1000) / 1000)", lambda epoch: tan(min(epoch, 1000) / 1000), id="tan"
    ),
    pytest.param(
        "floor(epoch / 10) + ceil(epoch / 7)",
        lambda epoch: floor(epoch / 10) + ceil(epoch / 7),
        id="floor-ceil",
    ),
    pytest.param("round(epoch / 3)", lambda epoch: round(epoch / 3), id="round"),
    pytest.param("pow(0.9, epoch)", lambda epoch: pow(0.9, epoch), id="pow"),
    pytest.param("2 ** -(epoch // 10)", lambda epoch: 2 ** -(epoch // 10), id="int-negative-power"),
    pytest.param(
        "2 ** min(epoch, 900) / 2 ** 900",
        lambda epoch: 2 ** min(epoch, 900) / 2**900,
        id="big-exact-int",
    ),
    pytest.param(
        "3 ** (epoch % 40) / 3 ** 39",
        lambda epoch: 3 ** (epoch % 40) / 3**39,
        id="int-power-beyond-2-53",
    ),
    pytest.param("epoch % 7 + 1", lambda epoch: epoch % 7 + 1, id="modulo"),
    pytest.param("(epoch > 10) + 0.5", lambda epoch: (epoch > 10) + 0.5, id="bool-arith"),
    pytest.param(
        "0 < epoch <= 50 and 1.0 or 0.1",
        lambda epoch: (0 < epoch <= 50 and 1.0) or 0.1,
        id="and-or",
    ),
    pytest.param(
        "epoch != 3 and epoch == epoch",
        lambda epoch: epoch != 3 and epoch == epoch,
        id="compare-bool-result",
    ),
    pytest.param("not epoch", lambda epoch: not epoch, id="not"),
    pytest.param("-(-epoch) + (+1)", lambda epoch: epoch + 1, id="unary"),
    pytest.param("True", lambda epoch: True, id="true"),
    pytest.param("0", lambda epoch: 0, id="zero"),
    pytest.param("e ** -(epoch / tau)", lambda epoch: math.e ** -(epoch / tau), id="constants"),
    pytest.param("1e-3 * epoch + 1e-4", lambda epoch: 1e-3 * epoch + 1e-4, id="scientific"),
    pytest.param("(epoch + 1) / 3", lambda epoch: (epoch + 1) / 3, id="int-true-division"),
    pytest.param(
        "1000000000000000 * epoch / 1e15",
        lambda epoch: 1000000000000000 * epoch / 1e15,
        id="max-literal",
    ),
    pytest.param("  (0.9 **\n  epoch)  ", lambda epoch: 0.9**epoch, id="multiline"),
]


@pytest.mark.parametrize(("text", "py"), VALID)
def test_matches_python_lambda_exactly(text: str, py: PyFn) -> None:
    f = compile_expression(text)
    for epoch in EPOCHS + FLOAT_EPOCHS:
        got = f(epoch)
        expected = py(epoch)
        assert same(got, expected), (text, epoch, got, expected)


@pytest.mark.parametrize(
    ("base", "exponent"),
    [
        pytest.param(0.95, 3, id="0.95^3"),
        pytest.param(0.95, 37, id="0.95^37"),
        pytest.param(0.1, 3, id="0.1^3"),
        pytest.param(0.999, 12345, id="0.999^12345"),
        pytest.param(1.0001, 777, id="1.0001^777"),
        pytest.param(0.5, 1074, id="0.5^1074"),
    ],
)
def test_float_power_of_int_epoch_is_python_float_pow(base: float, exponent: int) -> None:
    # Python's float ** int converts the int to float first; the expression must agree.
    assert float(base) ** float(exponent) == base**exponent
    assert same(compile_expression(f"{base!r} ** epoch")(exponent), base**exponent)


def test_int_semantics_kept() -> None:
    # 3 ** 39 > 2 ** 53: an exact int, as in Python, not a rounded float power.
    f = compile_expression("3 ** epoch - (3 ** epoch - 1)")
    assert f(39) == 1.0
    assert compile_expression("epoch // 30")(65) == 2.0
    assert compile_expression("epoch // 30")(65.5) == 2.0


def test_float_epoch_and_numeric_types() -> None:
    f = compile_expression("0.95 ** epoch")
    assert f(2.5) == 0.95**2.5
    assert f(True) == 0.95
    assert isinstance(f(3), float)
    assert compile_expression("epoch > 2")(3) == 1.0  # booleans count as 1 / 0


def test_torch_lambdalr_parity() -> None:
    torch = pytest.importorskip("torch")
    texts = [
        "0.95 ** epoch",
        "0.5 if epoch < 40 else 0.5 ** 2 if epoch < 70 else 0.5 ** 3",
        "min(1.0, (epoch + 1) / 10)",
        "1 / sqrt(max(epoch, 1))",
    ]
    pys: list[PyFn] = [
        lambda epoch: 0.95**epoch,
        lambda epoch: 0.5 if epoch < 40 else 0.5**2 if epoch < 70 else 0.5**3,
        lambda epoch: min(1.0, (epoch + 1) / 10),
        lambda epoch: 1 / sqrt(max(epoch, 1)),
    ]
    for scheduler in (torch.optim.lr_scheduler.LambdaLR, torch.optim.lr_scheduler.MultiplicativeLR):
        for text, py in zip(texts, pys, strict=True):
            runs = []
            for fn in (py, compile_expression(text)):
                param = torch.nn.Parameter(torch.zeros(1))
                opt = torch.optim.SGD([param], lr=0.1)
                sched = scheduler(opt, fn)
                lrs = [sched.get_last_lr()[0]]
                for _ in range(100):
                    opt.step()
                    sched.step()
                    lrs.append(sched.get_last_lr()[0])
                runs.append(lrs)
            assert runs[0] == runs[1], (scheduler.__name__, text)


def test_torch_state_dict_round_trip() -> None:
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, compile_expression("0.95 ** epoch"))
    for _ in range(5):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert state["lr_lambdas"] == [{}]  # nothing of the closure leaks into checkpoints
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    sched.load_state_dict(torch.load(buf, weights_only=True))
    assert sched.get_last_lr() == [0.1 * 0.95**5]


# --------------------------------------------------------------------------- API


def test_expression_api() -> None:
    f = compile_expression("  0.95 ** epoch\n")
    assert isinstance(f, Expression)
    assert f.text == "0.95 ** epoch"
    assert repr(f) == "Expression('0.95 ** epoch')"
    assert f == Expression("0.95 ** epoch")
    assert f != compile_expression("0.95**epoch")  # equal by text, not by meaning
    assert f != "0.95 ** epoch"
    assert hash(f) == hash(compile_expression("0.95 ** epoch"))
    assert len({f, compile_expression("0.95 ** epoch")}) == 1


def test_expression_is_immutable() -> None:
    f = compile_expression("0.95 ** epoch")
    with pytest.raises(AttributeError):
        f.text = "1"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        f._fn = lambda x: 1.0
    with pytest.raises(AttributeError):
        del f._text
    assert f(1) == 0.95


def test_pickle_and_copy_keep_only_the_text() -> None:
    f = compile_expression("0.95 ** epoch")
    g = pickle.loads(pickle.dumps(f))
    assert g == f
    assert g(7) == f(7)
    assert copy.copy(f) is f
    assert copy.deepcopy(f) is f
    assert f.__reduce__() == (compile_expression, ("0.95 ** epoch",))


def test_limits() -> None:
    assert MAX_EXPRESSION_LENGTH == 1000
    assert MAX_NODES == 200
    assert MAX_DEPTH == 32
    assert MAX_MAGNITUDE == 1e15


def test_limit_boundaries() -> None:
    pad = MAX_EXPRESSION_LENGTH - len("epoch + 1")
    ok = "epoch +" + " " * pad + " 1"
    assert len(ok) == MAX_EXPRESSION_LENGTH
    assert compile_expression(ok)(1) == 2.0
    with pytest.raises(ExpressionError, match="too long"):
        compile_expression("epoch +" + " " * (pad + 1) + " 1")

    # Nodes: a call counts itself and its arguments.
    args = "epoch" + ",1" * (MAX_NODES - 2)
    assert compile_expression(f"max({args})")(2) == 2.0
    with pytest.raises(ExpressionError, match="too large"):
        compile_expression(f"max({args}, 1)")

    # Depth: 31 unary operators around a name is 32 levels.
    assert compile_expression("+" * (MAX_DEPTH - 1) + "epoch")(3) == 3.0
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_expression("+" * MAX_DEPTH + "epoch")

    assert compile_expression("1e15")(0) == 1e15
    with pytest.raises(ExpressionError, match="out of range"):
        compile_expression("1000000000000001")


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        compile_expression("os")
    assert issubclass(ExpressionError, SpecError)


def test_non_string_refused() -> None:
    with pytest.raises(ExpressionError, match="expected an expression string"):
        compile_expression(0.95)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- refused


def _deep(n: int) -> str:
    return "(" * n + "1" + ")" * n


REFUSED = [
    pytest.param("__import__('os').system('x')", id="import-os"),
    pytest.param("().__class__.__bases__[0].__subclasses__()", id="subclasses"),
    pytest.param("(lambda: 1)()", id="lambda-call"),
    pytest.param("[x for x in ()]", id="listcomp"),
    pytest.param("{x for x in ()}", id="setcomp"),
    pytest.param("{x: 1 for x in ()}", id="dictcomp"),
    pytest.param("(x for x in ()).gi_frame", id="genexp-frame"),
    pytest.param("sum(x for x in ())", id="genexp-arg"),
    pytest.param("epoch.__class__", id="dunder-attr"),
    pytest.param("epoch.real", id="attr"),
    pytest.param("open('/etc/passwd')", id="open"),
    pytest.param("getattr(epoch, 'real')", id="getattr"),
    pytest.param("globals()", id="globals"),
    pytest.param("locals()", id="locals"),
    pytest.param("vars()", id="vars"),
    pytest.param("eval('1')", id="eval"),
    pytest.param("exec('1')", id="exec"),
    pytest.param("compile('1','','eval')", id="compile"),
    pytest.param("breakpoint()", id="breakpoint"),
    pytest.param("type(1)", id="type"),
    pytest.param("{}", id="empty-dict"),
    pytest.param("[1][0]", id="subscript"),
    pytest.param("[1][0:1]", id="slice"),
    pytest.param("f'{epoch}'", id="fstring"),
    pytest.param('"a"', id="str"),
    pytest.param("'a' * 10", id="str-mult"),
    pytest.param('b"a"', id="bytes"),
    pytest.param("1j", id="complex"),
    pytest.param("epoch * 1j", id="complex-mult"),
    pytest.param("(x := 1)", id="walrus"),
    pytest.param("min(*[1])", id="star-args"),
    pytest.param("min(*epoch)", id="star-name"),
    pytest.param("max(x=1)", id="keyword"),
    pytest.param("max(1, **{})", id="double-star"),
    pytest.param("__builtins__", id="builtins"),
    pytest.param("__name__", id="dunder-name"),
    pytest.param("_", id="underscore"),
    pytest.param("os", id="os"),
    pytest.param("math.pi", id="module-attr"),
    pytest.param("9 ** 9 ** 9", id="9^9^9"),
    pytest.param("10 ** 10 ** 10", id="10^10^10"),
    pytest.param("2 ** 1e9", id="2^1e9"),
    pytest.param("2 ** 10000", id="2^10000"),
    pytest.param("(-8) ** 0.5", id="complex-pow"),
    pytest.param("1 / 0", id="constant-division-by-zero"),
    pytest.param("1e400", id="inf-literal"),
    pytest.param("1" + "0" * 400, id="huge-int-literal"),
    pytest.param("10**400", id="huge-power"),
    pytest.param("1e16", id="literal-over-limit"),
    pytest.param(_deep(5000), id="parens-5000"),
    pytest.param(_deep(300), id="parens-300"),
    pytest.param("-" * 20000 + "1", id="unary-20000"),
    pytest.param("-" * 999 + "1", id="unary-999"),
    pytest.param("not " * 5000 + "1", id="not-5000"),
    pytest.param("not " * 249 + "1", id="not-249"),
    pytest.param("epoch + " * 250 + "1", id="long-2000"),
    pytest.param("+".join(["epoch"] * 150), id="deep-left-chain"),
    pytest.param("1 if epoch else __import__('os')", id="import-in-untaken-branch"),
    pytest.param("[epoch]", id="list"),
    pytest.param("(epoch,)", id="tuple"),
    pytest.param("epoch,", id="bare-tuple"),
    pytest.param("{epoch}", id="set"),
    pytest.param("{1: 2}", id="dict"),
    pytest.param("...", id="ellipsis"),
    pytest.param("None", id="none"),
    pytest.param("inf", id="inf"),
    pytest.param("nan", id="nan"),
    pytest.param("float('nan')", id="float-nan"),
    pytest.param("float('inf')", id="float-inf"),
    pytest.param("int(epoch)", id="int-call"),
    pytest.param("yield", id="yield"),
    pytest.param("(yield)", id="yield-paren"),
    pytest.param("(yield from ())", id="yield-from"),
    pytest.param("await x", id="await"),
    pytest.param("lambda: 0", id="lambda"),
    pytest.param("epoch is 1", id="is"),
    pytest.param("epoch in (1, 2)", id="in"),
    pytest.param("~epoch", id="invert"),
    pytest.param("epoch << 2", id="shift"),
    pytest.param("epoch & 1", id="bitand"),
    pytest.param("epoch @ epoch", id="matmul"),
    pytest.param("min", id="function-not-called"),
    pytest.param("min(1)", id="min-one-arg"),
    pytest.param("round(epoch, 2)", id="round-ndigits"),
    pytest.param("log(1, 2, 3)", id="log-three-args"),
    pytest.param("pow(2, 3, 5)", id="pow-three-args"),
    pytest.param("sqrt()", id="no-args"),
    pytest.param("epoch()", id="call-variable"),
    pytest.param("min(1, 2)(3)", id="call-result"),
    pytest.param("", id="empty"),
    pytest.param("   \n ", id="blank"),
    pytest.param("epoch +", id="syntax"),
    pytest.param("epoch = 1", id="assignment"),
    pytest.param("import os", id="import-statement"),
    pytest.param("1\n2", id="two-lines"),
    pytest.param("'\\d'", id="invalid-escape"),
    pytest.param("1if epoch else 2", id="invalid-decimal-literal"),
    pytest.param("epoch\x00", id="null-byte"),
    pytest.param("ｅｖａｌ('1')", id="fullwidth-eval"),
    pytest.param("Ellipsis", id="ellipsis-name"),
]


@pytest.mark.parametrize("text", REFUSED)
def test_refused(text: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    message = str(info.value)
    assert message.startswith("lr_lambda")
    assert "expected" in message or "always fails" in message, message


def test_min_with_paren_name_is_a_plain_call() -> None:
    # "(min)(1, 2)" is ast-identical to "min(1, 2)": allowed, nothing special about it.
    assert compile_expression("(min)(1, 2)")(0) == 1.0


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        pytest.param(
            "os",
            r"name 'os' is not allowed at column 1; expected the variable epoch "
            r"\(alias step\), .*abs, .*got 'os'",
            id="name",
        ),
        pytest.param("epoch + os", r"name 'os' .* column 9", id="name-column"),
        pytest.param("(1 +\n os)", r"line 2, column 2", id="line-column"),
        pytest.param("epoch.real", r"attribute access .*got 'epoch.real'", id="attribute"),
        pytest.param(
            "open('/etc/passwd')", r"call of 'open' .*got \"open\('/etc/passwd'\)\"", id="call"
        ),
        pytest.param("max(x=1)", r"keyword argument 'x' in max\(\)", id="keyword"),
        pytest.param(
            "9 ** 9 ** 9",
            r"overflow \(9 \*\* 387420489\) in '9 \*\* 9 \*\* 9' "
            r"\(column 1\); this constant part",
            id="power",
        ),
        pytest.param(
            "1e400",
            r"number 1e400 at column 1 is out of range; expected \|x\| <= 1e15",
            id="magnitude",
        ),
        pytest.param(
            "-" * 40 + "1", r"nested too deeply \(more than 32 levels\) at column 33", id="depth"
        ),
        pytest.param(
            "x" * 2000, r"too long; expected at most 1000 characters, got 2000", id="length"
        ),
        pytest.param(
            "log(1, 2, 3)",
            r"arguments for log\(\) at column 1; expected 1 to 2 arguments, got 3",
            id="arity",
        ),
        pytest.param("epoch +", r"invalid syntax at column 8; expected", id="syntax"),
        pytest.param("epoch = 1", r"invalid syntax at column 7; expected", id="syntax-column"),
        pytest.param("1\n2", r"invalid syntax at line 2, column 1; expected", id="syntax-line"),
        pytest.param(
            '"a"', r"string literal is not allowed .*expected an int or float number", id="string"
        ),
    ],
)
def test_refusal_messages(text: str, pattern: str) -> None:
    with pytest.raises(ExpressionError, match=pattern):
        compile_expression(text)


def test_payload_never_runs(tmp_path: Path) -> None:
    target = tmp_path / "pwned_lrctl"
    touch = f"__import__('pathlib').Path({str(target)!r}).touch()"
    payloads = [
        touch,
        f"1 if epoch else {touch}",
        f"min(1, {touch})",
        f"(lambda: {touch})()",
        f"[{touch} for _ in [1]]",
        f"epoch and {touch}",
        f"open({str(target)!r}, 'w')",
    ]
    for payload in payloads:
        with pytest.raises(ExpressionError):
            compile_expression(payload)(1)
    assert not target.exists()


def test_no_eval_exec_or_code_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation never calls eval/exec, and compile() is only ever asked for an AST.

    ``ast.parse`` is ``compile(..., flags=PyCF_ONLY_AST)``: parsing only, no code object.
    """
    real_compile = builtins.compile
    calls: list[int] = []

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("eval/exec must never be used")

    def ast_only_compile(
        source: Any, filename: Any, mode: Any, flags: int = 0, *args: Any, **kwargs: Any
    ) -> Any:
        if not flags & ast.PyCF_ONLY_AST:
            raise AssertionError("compile() to a code object must never be used")
        calls.append(flags)
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "compile", ast_only_compile)
    for param in VALID:
        text, py = param.values
        f = compile_expression(str(text))
        for epoch in (0, 3, 50, 2.5):
            assert same(f(epoch), py(epoch))  # type: ignore[operator]
    assert len(calls) == len(VALID)  # one parse per expression, none per call


# --------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize(
    ("text", "epoch", "pattern"),
    [
        pytest.param(
            "1 / epoch",
            0,
            r"division by zero \(1 / 0\) in '1 / epoch' \(column 1\) "
            r"at epoch 0",
            id="division-by-zero",
        ),
        pytest.param("epoch % (epoch - 3)", 3, r"division by zero .* at epoch 3", id="modulo"),
        pytest.param(
            "1 - epoch / 2",
            3,
            r"lr_lambda must return a number >= 0, "
            r"got -0.5 at epoch 3",
            id="negative",
        ),
        pytest.param("-1", 0, r"got -1 at epoch 0", id="negative-constant"),
        pytest.param("log(epoch)", 0, r"math domain error \(log\(0\)\) .* at epoch 0", id="log0"),
        pytest.param("sqrt(epoch - 5)", 2, r"sqrt\(-3\)\) .* at epoch 2", id="sqrt-negative"),
        pytest.param("1 - exp(epoch)", 1000, r"got -inf at epoch 1000", id="negative-inf"),
        pytest.param("(epoch - 10) ** 0.5", 1, r"negative base .* at epoch 1", id="complex-pow"),
        pytest.param("0.0 ** -epoch", 1, r"division by zero .* at epoch 1", id="zero-pow"),
        pytest.param("log(2, epoch)", 1, r"division by zero .* at epoch 1", id="log-base-1"),
        pytest.param("1 if epoch < 5 else 1 / (epoch - 10)", 10, r"at epoch 10", id="branch-taken"),
    ],
)
def test_evaluation_errors(text: str, epoch: int, pattern: str) -> None:
    f = compile_expression(text)
    with pytest.raises(ExpressionError, match=pattern):
        f(epoch)


@pytest.mark.parametrize(
    ("text", "epoch", "expected"),
    [
        pytest.param("exp(epoch)", 10000, math.inf, id="exp-overflow"),
        pytest.param("2 ** epoch", 5000, math.inf, id="int-pow-overflow"),
        pytest.param("-((-2) ** epoch)", 5001, math.inf, id="int-pow-negative-overflow"),
        pytest.param("2.0 ** epoch", 5000, math.inf, id="float-pow-overflow"),
        pytest.param("1e15 * 1e15 ** (epoch / 20)", 400, math.inf, id="float-mult-overflow"),
        pytest.param("3 ** epoch * 3 ** epoch", 600, math.inf, id="int-product-past-float"),
        pytest.param("2 ** epoch // 2 ** (epoch - 1)", 1100, math.nan, id="inf-floordiv-inf"),
        pytest.param("1 / 2 ** epoch", 1100, 0.0, id="divided-by-inf"),
        pytest.param("round(exp(epoch)) + ceil(exp(epoch))", 1000, math.inf, id="round-ceil-inf"),
        pytest.param("tan(exp(epoch)) + 1", 1000, math.nan, id="domain-of-inf-is-nan"),
        pytest.param("exp(epoch) % 2", 1000, math.nan, id="inf-modulo"),
        pytest.param("1 / (exp(epoch) - exp(epoch))", 1000, math.nan, id="nan-propagates"),
        pytest.param("exp(epoch) / 0", 1000, math.inf, id="inf-divided-by-zero"),
        pytest.param("0.5 ** epoch", 5000, 0.0, id="underflow"),
    ],
)
def test_overflow_gives_ieee_values(text: str, epoch: int, expected: float) -> None:
    # Python raises OverflowError here; a torch tensor gives inf, 0.0 or nan, and so does
    # the expression (the value of an LR that left the float range).
    got = compile_expression(text)(epoch)
    assert same(got, expected) or (math.isnan(expected) and math.isnan(got)), got


def test_errors_of_the_formula_stay_errors_at_finite_values() -> None:
    # Overflow is not an error, but a division by zero or a domain error of finite
    # operands is (Python raises there too).
    with pytest.raises(ExpressionError, match="division by zero"):
        compile_expression("1 / (0.5 ** epoch)")(5000)  # 0.0 after underflow: still 1 / 0
    with pytest.raises(ExpressionError, match="math domain error"):
        compile_expression("log(epoch - 10)")(3)


@pytest.mark.parametrize(
    "epoch",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(1e16, id="too-large"),
        pytest.param(10**400, id="huge-int"),
        pytest.param("3", id="string"),
        pytest.param(None, id="none"),
        pytest.param(1j, id="complex"),
    ],
)
def test_bad_epoch(epoch: Any) -> None:
    with pytest.raises(ExpressionError, match="epoch"):
        compile_expression("0.95 ** epoch")(epoch)


def test_untaken_branch_does_not_fail() -> None:
    f = compile_expression("1 if epoch < 5 else 1 / (epoch - 10)")
    assert f(0) == 1.0
    assert f(11) == 1.0


def test_many_calls() -> None:
    f = compile_expression("0.95 ** epoch")
    total = 0.0
    for epoch in range(10_000):
        total += f(epoch)
    assert total == pytest.approx(sum(0.95**epoch for epoch in range(10_000)))


# --------------------------------------------------------------------------- hypothesis

Node = tuple[str, PyFn]

_LEAVES: st.SearchStrategy[Node] = st.one_of(
    st.integers(0, 100).map(lambda n: (str(n), lambda epoch, n=n: n)),
    st.floats(0, 1e6, allow_nan=False, allow_infinity=False).map(
        lambda v: (repr(v), lambda epoch, v=v: v)
    ),
    st.just(("epoch", lambda epoch: epoch)),
    st.just(("step", lambda epoch: epoch)),
)

_OPS: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("+", lambda a, b: a + b),
    ("-", lambda a, b: a - b),
    ("*", lambda a, b: a * b),
    ("/", lambda a, b: a / b),
]


def _extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    def binop(t: tuple[tuple[str, Callable[[Any, Any], Any]], Node, Node]) -> Node:
        (sym, op), (lt, lf), (rt, rf) = t
        return f"({lt} {sym} {rt})", lambda epoch: op(lf(epoch), rf(epoch))

    def call(t: tuple[tuple[str, Callable[..., Any]], list[Node]]) -> Node:
        (name, fn), args = t
        text = f"{name}({', '.join(a for a, _ in args)})"
        return text, lambda epoch: fn(*(f(epoch) for _, f in args))

    def neg(child: Node) -> Node:
        text, f = child
        return f"(-{text})", lambda epoch: -f(epoch)

    return st.one_of(
        st.tuples(st.sampled_from(_OPS), children, children).map(binop),
        st.tuples(
            st.sampled_from([("min", min), ("max", max)]),
            st.lists(children, min_size=2, max_size=3),
        ).map(call),
        children.map(neg),
    )


_EXPRESSIONS = st.recursive(_LEAVES, _extend, max_leaves=12)


@settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    node=_EXPRESSIONS, epoch=st.one_of(st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False))
)
def test_matches_python_or_refuses(node: Node, epoch: float) -> None:
    text, py = node
    try:
        expected: Any = py(epoch)
    except (ArithmeticError, ValueError):
        expected = None
    try:
        got = compile_expression(text)(epoch)
    except ExpressionError:
        return  # refusing is allowed; any other exception is a bug
    # Whenever the expression succeeds with a finite value, Python succeeds with the very
    # same value (overflow is inf or nan here, where Python may raise OverflowError).
    if not math.isfinite(got):
        assert math.isnan(got) or got == math.inf, (text, epoch, got)
        return
    assert expected is not None, (text, epoch, got)
    assert same(got, expected), (text, epoch, got, expected)
    assert got >= 0


_TEXT_ALPHABET = "epochstmaxinlgqrbdf_()[]{}+-*/%<>=!.,:'\"\\ \n0123456789ejxyz@&|~^"


@settings(max_examples=400, deadline=None, database=None)
@given(text=st.text(alphabet=_TEXT_ALPHABET, max_size=40), epoch=st.integers(-1000, 1000))
def test_fuzz_text_never_crashes(text: str, epoch: int) -> None:
    try:
        f = compile_expression(text)
    except ExpressionError:
        return
    try:
        result = f(epoch)
    except ExpressionError:
        return
    assert isinstance(result, float)
    assert result >= 0 or math.isnan(result)


# --------------------------------------------------------------------------- advisory corpus

# Bypass classes from public advisories for Python expression sandboxes (simpleeval's
# generator-frame escape, asteval's format-string and __reduce__ escapes, RestrictedPython's
# str.format/format_map and gi_frame CVEs, numexpr's and pandas.eval's eval of user text,
# Jinja's format_map escape), plus the DoS classes those projects fixed. Each must be refused
# at compile time with an ExpressionError, quickly, with a bounded message, and never run.
ADVISORY_CORPUS = [
    # format strings: attribute traversal inside a string literal (RestrictedPython, Jinja)
    pytest.param("'{0.__class__}'.format(epoch)", id="str-format-traversal"),
    pytest.param("'{0.__globals__}'.format_map({'0': min})", id="format-map"),
    pytest.param("str.format('{0.__class__}', epoch)", id="unbound-str-format"),
    pytest.param("format(epoch, '{0.__class__}')", id="format-builtin"),
    pytest.param("'%s' % epoch", id="percent-format"),
    pytest.param("f'{epoch.__class__}'", id="fstring-attribute"),
    pytest.param("f'{epoch!r:{epoch}}'", id="fstring-conversion-nested-spec"),
    pytest.param('f\'{__import__("os").system("id")}\'', id="fstring-import"),
    # generator / coroutine / lambda frames (simpleeval #138, RestrictedPython CVE-2023-37271)
    pytest.param("(x for x in [1]).gi_frame.f_back.f_globals", id="genexp-frame-globals"),
    pytest.param("(lambda: (yield))().gi_frame", id="lambda-generator-frame"),
    pytest.param("(lambda x=__import__('os'): x)()", id="lambda-default-import"),
    pytest.param("[f for f in [min]][0].__self__", id="listcomp-self"),
    pytest.param("max(x for x in [1])", id="genexp-argument"),
    pytest.param("min(lambda: 1, 2)", id="lambda-argument"),
    # attributes of allowed functions and values (asteval __reduce__, getattr chains)
    pytest.param("abs.__reduce__()", id="reduce"),
    pytest.param("min.__self__", id="builtin-self"),
    pytest.param("sqrt.__self__.__loader__", id="module-loader"),
    pytest.param("exp(1).hex()", id="method-of-result"),
    pytest.param("abs(epoch).real", id="attribute-of-result"),
    pytest.param("epoch.conjugate()", id="method-of-epoch"),
    pytest.param("(1).__class__.__base__.__subclasses__()", id="int-subclasses"),
    pytest.param("True.__class__.__mro__", id="bool-mro"),
    pytest.param("1 .real", id="int-attribute-space"),
    pytest.param("getattr(abs, '__self__')", id="getattr"),
    pytest.param("vars(abs)", id="vars"),
    pytest.param("dir()", id="dir"),
    pytest.param("type(epoch)", id="type"),
    pytest.param("object.__subclasses__()", id="object-subclasses"),
    # names that reach builtins
    pytest.param("__loader__", id="loader"),
    pytest.param("__spec__", id="spec"),
    pytest.param("__debug__", id="debug"),
    pytest.param("help()", id="help"),
    pytest.param("input()", id="input"),
    pytest.param("exit()", id="exit"),
    pytest.param("print(epoch)", id="print"),
    pytest.param("memoryview(b'a')", id="memoryview"),
    pytest.param("super()", id="super"),
    pytest.param("NotImplemented", id="notimplemented"),
    # strings built at runtime to dodge name checks
    pytest.param("chr(95) * 2 + 'import' + chr(95) * 2", id="chr-concat"),
    pytest.param("'__imp' + 'ort__'", id="string-concat"),
    pytest.param("b'__import__'.decode()", id="bytes-decode"),
    # subscripts, containers, unpacking, walrus
    pytest.param("'abc'[0]", id="subscript-string"),
    pytest.param("(1, 2)[0]", id="subscript-tuple"),
    pytest.param("{1: 2}[1]", id="subscript-dict"),
    pytest.param("epoch[0]", id="subscript-epoch"),
    pytest.param("[*[1]]", id="starred-list"),
    pytest.param("max(*[1, 2])", id="starred-call"),
    pytest.param("max(epoch, key=abs)", id="keyword-key"),
    pytest.param("[y := 1, y]", id="walrus-in-list"),
    pytest.param("(epoch := 5)", id="walrus-rebind-epoch"),
    pytest.param("[x for x in [1] if (y := x)]", id="walrus-in-comprehension"),
    pytest.param("{**{}}", id="dict-unpacking"),
    # await / yield / async comprehensions
    pytest.param("[x async for x in y]", id="async-comprehension"),
    pytest.param("(await epoch)", id="await"),
    # unicode identifiers: NFKC folds these to eval / exec / __import__ / __class__
    pytest.param("ｅｖａｌ('1')", id="nfkc-fullwidth-eval"),
    pytest.param("𝐞𝐯𝐚𝐥('1')", id="nfkc-bold-eval"),
    pytest.param("ᵉval('1')", id="nfkc-modifier-eval"),
    pytest.param("ℯxec('1')", id="nfkc-script-exec"),
    pytest.param("__ｉｍｐｏｒｔ__('os')", id="nfkc-import"),
    pytest.param("epoch.__𝓬𝓵𝓪𝓼𝓼__", id="nfkc-class-attribute"),
    pytest.param("ерoch", id="cyrillic-homoglyph"),
    pytest.param("１e400", id="fullwidth-digits"),
    # source tricks: encodings, continuations, invisible characters
    pytest.param("# coding: utf-7\n+AF8AXw-import+AF8AXw-('os')", id="utf7-cookie"),
    pytest.param("1 +\\\n __import__('os')", id="line-continuation"),
    pytest.param("\ufeffepoch", id="bom"),
    pytest.param("epoch\u200b", id="zero-width-space"),
    pytest.param("epoch\ud800", id="lone-surrogate"),
    pytest.param("epoch\x00 + 1", id="null-byte-inside"),
    pytest.param("epoch\r__import__('os')", id="carriage-return"),
    # resource exhaustion (DoS)
    pytest.param("'a' * 10 ** 9", id="string-repetition"),
    pytest.param("[0] * 10 ** 9", id="list-repetition"),
    pytest.param("2 ** (2 ** 64)", id="power-tower"),
    pytest.param("pow(10, 10 ** 10)", id="pow-builtin-huge"),
    pytest.param("1 << 10 ** 9", id="shift"),
    pytest.param("max(range(10 ** 9))", id="range"),
    pytest.param("1" + "0" * 4400, id="int-literal-past-str-digits-limit"),
    pytest.param("exp(1e308)", id="constant-exp-overflow"),
    pytest.param("(1e308 * 10) ** 10 ** 9", id="constant-inf-power"),
    pytest.param("(" * 100_000 + "1" + ")" * 100_000, id="parens-100k"),
    pytest.param("[" * 5_000 + "]" * 5_000, id="lists-5k"),
    pytest.param("abs(" * 50 + "1" + ")" * 50, id="calls-50-deep"),
    pytest.param("1 if 1 else " * 40 + "1", id="ifexp-40-deep"),
    pytest.param("epoch < " * 300 + "1", id="comparison-chain-300"),
    pytest.param("+".join(["epoch"] * 100_000), id="additions-100k"),
]


@pytest.mark.parametrize("text", ADVISORY_CORPUS)
def test_advisory_corpus_is_refused_quickly_and_never_runs(text: str) -> None:
    import time

    from lrctl.program import LRProgram

    start = time.perf_counter()
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    assert time.perf_counter() - start < 1.0
    assert len(str(info.value)) < 600
    # The same through a spec: refused as a SpecError, never anything else.
    with pytest.raises(SpecError):
        LRProgram(f"LambdaLR(lr_lambda={text!r})", [0.1])


def test_nfkc_normalisation_is_harmless_for_allowed_names() -> None:
    # Python folds identifiers with NFKC before the allowlist sees them: a full-width
    # ``ｅｐｏｃｈ`` is ``epoch`` and ``ｅｘｐ`` is ``exp`` (benign), while ``ｅｖａｌ`` is ``eval``
    # and refused (the corpus above).
    assert compile_expression("ｅｘｐ(-ｅｐｏｃｈ)")(1) == math.exp(-1)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("epoch ** epoch ** epoch", id="tower-of-epochs"),
        pytest.param("(epoch + 1) ** 100000", id="int-power-big-exponent"),
        pytest.param("exp(exp(exp(epoch)))", id="exp-tower"),
        pytest.param(
            "epoch * epoch * epoch * epoch * epoch * epoch * epoch * epoch", id="int-product"
        ),
        pytest.param("floor(epoch ** 30) % 7 + 1", id="modulo-of-huge"),
        pytest.param("round(epoch ** 40) // 3 + 1", id="floordiv-of-huge"),
    ],
)
def test_epoch_dependent_growth_evaluates_in_microseconds(text: str) -> None:
    # Runtime ints never grow past the float range: a huge intermediate is inf at once.
    import time

    f = compile_expression(text)
    start = time.perf_counter()
    for epoch in (0, 1, 7, 10**6, 10**15):
        with contextlib.suppress(ExpressionError):
            value = f(epoch)
            assert value >= 0 or math.isnan(value)
    assert time.perf_counter() - start < 0.5
