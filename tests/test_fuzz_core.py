"""Hypothesis over the core's inputs: specs, expressions, override statements, event logs.

Whatever comes in, only the defined errors come out (the ``LrctlError`` family: SpecError,
ExpressionError, SizeLimitError, StepLimitError, OverrideError), never OverflowError,
ZeroDivisionError, RecursionError, MemoryError, TypeError...; and every evaluation answers
in bounded time, at any step. Derandomized in CI (tests/conftest.py's "ci" profile).
"""

from __future__ import annotations

import math
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrctl.errors import LrctlError, OverrideError
from lrctl.expressions import compile_expression
from lrctl.overrides import Event, Op, parse_override, validate_override
from lrctl.program import LRProgram
from lrctl.schedules import SCHEDULES

BOUND = 2.0  # seconds for any one build or evaluation: generous for a loaded CI core (a replay
# of 10**6 steps takes longer; of 10**12, forever)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

STEPS = st.sampled_from([0, 1, 2, 7, 99, 1000, 10**6, 10**12, 2**63 - 1, 2**63, -1, 10**30])
PARAMS = sorted(
    {
        name
        for cls in SCHEDULES.values()
        for name in cls.setup.__code__.co_varnames[1 : cls.setup.__code__.co_argcount]
    }
)

NUMBERS = st.one_of(
    st.integers(-3, 3),
    st.integers(0, 10**4),
    st.sampled_from([0, 1, 2**63 - 1, 2**63, 10**40]),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0.0, 0.5, 1.0, 1.5, 1e-320, 1e300, -0.0, 5e-324]),
)
EXPRESSIONS = st.sampled_from(
    [
        "0.95 ** epoch",
        "10 ** epoch",
        "exp(epoch)",
        "1 / epoch",
        "log(epoch)",
        "epoch % 7",
        "0.5 if epoch < 40 else 2.0",
        "1 - 0.001 * epoch",
        "sqrt(epoch - 3)",
        "9 ** 9 ** 9",
        "__import__('os')",
        "(-2) ** epoch",
        "2 ** -epoch",
        "max(epoch, 1e15)",
        "tan(epoch)",
        "floor(exp(epoch))",
        "epoch ** 0.5",
        "1e308 * epoch",
        "0 ** -1",
        "round(1e15 * epoch)",
    ]
)


def literals(depth: int) -> st.SearchStrategy[str]:
    leaves = st.one_of(
        NUMBERS.map(repr),
        EXPRESSIONS.map(repr),
        st.sampled_from(
            [
                "True",
                "False",
                "None",
                "'cos'",
                "'min'",
                "'x'",
                "1e999",
                "-1e999",
                "nan",
                "inf",
                "[]",
            ]
        ),
    )
    if depth <= 0:
        return leaves
    return st.one_of(
        leaves,
        st.lists(literals(depth - 1), max_size=4).map(lambda v: f"[{', '.join(v)}]"),
        specs(depth - 1),
    )


def specs(depth: int = 2) -> st.SearchStrategy[str]:
    names = st.one_of(st.sampled_from(sorted(SCHEDULES)), st.sampled_from(["FooLR", "_x"]))

    @st.composite
    def build(draw: st.DrawFn) -> str:
        name = draw(names)
        args = draw(st.lists(literals(depth), max_size=2))
        keys = draw(
            st.lists(st.sampled_from([*PARAMS, "last_epoch", "bogus"]), max_size=5, unique=True)
        )
        kwargs = [f"{k}={draw(literals(depth))}" for k in keys]
        return f"{name}({', '.join([*args, *kwargs])})"

    return build()


_LR_VALUES = [0.0, 1e-3, 0.1, 1.0, 1e6, 2e6, -1.0, 1e-320]
_FACTORS = [0.0, 0.1, 0.5, 0.9, 0.99, 1.0, 1.5, 2.0, 1e300, 1e-300, -0.5, 0.3]
_INTS = [0, 1, 2, 7, 50, 1000, 2**62, 2**63, -1]
_CHOICES = {
    "mode": ["min", "max", "triangular", "triangular2", "exp_range", "cos"],
    "anneal_strategy": ["cos", "linear"],
    "threshold_mode": ["rel", "abs"],
    "scale_mode": ["cycle", "iterations"],
    "warmup_type": ["linear", "cosine", "1-sqrt"],
    "decay_type": ["linear", "cosine", "1-sqrt"],
}


@st.composite
def plausible_specs(draw: st.DrawFn, depth: int = 1) -> str:
    """Mostly valid specs of every scheduler, with edge values for every parameter."""
    import inspect

    name = draw(st.sampled_from(sorted(SCHEDULES)))
    params = list(inspect.signature(SCHEDULES[name].setup).parameters.values())[1:]
    parts = []
    for p in params:
        required = p.default is inspect.Parameter.empty
        if not required and not draw(st.booleans()):
            continue
        key = p.name
        if key == "schedulers":
            if depth <= 0:
                return "StepLR(step_size=2)"
            value = (
                "["
                + ", ".join(draw(st.lists(plausible_specs(depth - 1), min_size=1, max_size=3)))
                + "]"
            )
        elif key == "milestones":
            value = repr(sorted(draw(st.lists(st.sampled_from(_INTS[:6]), max_size=3))))
        elif key in ("lr_lambda", "scale_fn"):
            value = repr(draw(EXPRESSIONS))
        elif key in _CHOICES:
            value = repr(draw(st.sampled_from(_CHOICES[key])))
        elif key in ("cycle_momentum", "three_phase"):
            value = repr(draw(st.booleans()))
        elif "lr" in key or key == "eta_min":
            value = repr(draw(st.sampled_from(_LR_VALUES)))
        elif p.default is None or isinstance(p.default, int) or required:
            value = repr(draw(st.sampled_from([*_INTS, 0.5])))
        else:
            value = repr(draw(st.sampled_from(_FACTORS)))
        parts.append(f"{key}={value}")
    return f"{name}({', '.join(parts)})"


def bounded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; only LrctlError may escape, and only after a bounded time."""
    start = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    except LrctlError:
        return None
    finally:
        assert time.perf_counter() - start < BOUND, (fn, args)


def check_lrs(values: list[float] | None, groups: int) -> None:
    if values is None:
        return
    assert len(values) == groups
    for v in values:
        assert isinstance(v, float)


BASES = st.lists(
    st.one_of(st.sampled_from([0.1, 0.0, 1e-3, 3.0, 1e6]), st.floats(0, 1e6)),
    min_size=1,
    max_size=3,
)


@FUZZ
@given(
    spec=st.one_of(plausible_specs(), specs()),
    base=BASES,
    steps=st.lists(STEPS, min_size=1, max_size=4),
)
def test_any_spec_builds_or_refuses_and_evaluates_in_bounded_time(
    spec: str, base: list[float], steps: list[int]
) -> None:
    program = bounded(LRProgram, spec, base)
    if program is None:
        return
    assert program.max_step >= 0
    for step in steps:
        check_lrs(bounded(program.lrs, step), len(base))
        bounded(program.momenta, max(0, min(step, program.max_step)))
        assert bounded(program.cost, step) is None or program.cost(step) >= 0


@FUZZ
@given(
    text=st.text(alphabet="StepLRCosine()[]=,.'\"0123456789eE+-_ a{}:*", max_size=80), base=BASES
)
def test_random_spec_text_never_crashes(text: str, base: list[float]) -> None:
    program = bounded(LRProgram, text, base)
    if program is not None:
        check_lrs(bounded(program.lrs, 5), len(base))


@FUZZ
@given(
    spec=st.sampled_from(["StepLR(step_size=3)", "LambdaLR(lr_lambda='0.9 ** epoch')"]),
    base=st.lists(
        st.one_of(
            st.floats(),
            st.integers(-(10**40), 10**40),
            st.booleans(),
            st.none(),
            st.text(max_size=3),
        ),
        max_size=4,
    ),
)
def test_any_base_lrs_are_accepted_or_refused(spec: str, base: list[Any]) -> None:
    program = bounded(LRProgram, spec, base)
    if program is not None:
        assert all(0 <= b <= 1e6 for b in program.base_lrs)


@FUZZ
@given(
    text=st.one_of(
        EXPRESSIONS,
        st.text(alphabet="epoch()+-*/%<>=!.,0123456789ex_[]'abcdlgqrstnfi ", max_size=60),
    ),
    epoch=st.one_of(STEPS, st.floats(), st.integers(-(10**20), 10**20)),
)
def test_expressions_only_raise_expression_errors(text: str, epoch: Any) -> None:
    fn = bounded(compile_expression, text)
    if fn is None:
        return
    value = bounded(fn, epoch)
    assert value is None or isinstance(value, float)


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=40),
        st.builds(
            lambda op, num: f"lr {op} {num}",
            st.sampled_from(["=", "*=", "/=", "+="]),
            st.one_of(NUMBERS.map(repr), st.text(max_size=8)),
        ),
    ),
    max_lr=st.sampled_from([1e6, 1.0, math.inf]),
)
def test_override_statements_only_raise_override_errors(text: str, max_lr: float) -> None:
    try:
        op, value = parse_override(text, max_lr=max_lr)
    except OverrideError:
        return
    validate_override(op, value, max_lr=max_lr)
    assert math.isfinite(value) and value >= 0


SPEC_TEXTS = st.sampled_from(
    [
        "StepLR(step_size=3, gamma=0.5)",
        "ExponentialLR(gamma=1.5)",
        "OneCycleLR(max_lr=0.1, total_steps=50)",
        "ReduceLROnPlateau(factor=0.5)",
        "MultiplicativeLR(lr_lambda='1 - 0.001 * (epoch % 5)')",
        "Bogus()",
        "",
        "ChainedScheduler(schedulers=[CosineAnnealingLR(T_max=5, eta_min=0.01), StepLR(2)])",
    ]
)


@st.composite
def events(draw: st.DrawFn) -> list[Event]:
    out = []
    for version in range(2, 2 + draw(st.integers(0, 12))):
        out.append(
            Event(
                version,
                draw(st.sampled_from(list(Op))),
                value=draw(
                    st.one_of(
                        st.none(), NUMBERS, st.sampled_from([math.inf, math.nan, -1.0, 10**400])
                    )
                ),
                schedule=draw(st.one_of(st.none(), SPEC_TEXTS)),
                group=draw(st.sampled_from([None, None, 0, 1, -1, 5, 10**30])),
                effective_step=draw(
                    st.one_of(st.none(), st.integers(-5, 200), st.sampled_from([10**12, 10**30]))
                ),
            )
        )
    return out


@FUZZ
@given(spec=SPEC_TEXTS, log=events(), steps=st.lists(STEPS, min_size=1, max_size=4))
def test_any_event_log_builds_or_refuses_and_evaluates_in_bounded_time(
    spec: str, log: list[Event], steps: list[int]
) -> None:
    program = bounded(LRProgram, spec, [0.1, 0.05], log)
    if program is None:
        return
    for step in steps:
        check_lrs(bounded(program.lrs, step), 2)
        bounded(program.check_step, step)
