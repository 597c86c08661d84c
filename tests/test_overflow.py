"""Schedules past the float range: the values torch gives (inf, 0.0), never an exception.

torch's recursive schedulers overflow quietly: ``ExponentialLR(gamma=1.5)`` reaches ``inf``
around step 1,750 and ``step()`` goes on; shrinking ones reach 0.0. lrctl must give the same
values at the same steps, at any later step (10**6, 10**12), and never raise
``OverflowError``. Where torch's own Python arithmetic raises (``gamma ** step`` in CyclicLR's
``exp_range``, a ``math.exp`` in a lambda), lrctl continues with the IEEE-754 value, as a
tensor computation would (docs/parity.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler

from lrctl.overrides import Event, Op
from lrctl.program import LRProgram
from tests._cases import cases
from tests.test_parity import assert_rows_close
from tests.torch_ref import lr_rows

BASE = [0.1, 0.05]


def torch_rows(
    make: Callable[[torch.optim.Optimizer], Any], base: list[float], steps: int
) -> list[list[float]]:
    """Rows of torch's ``get_last_lr()``; group 1 holds a float64 tensor LR."""
    groups = [
        {
            "params": [torch.nn.Parameter(torch.zeros(1))],
            "lr": torch.tensor(b, dtype=torch.float64) if i == 1 else b,
        }
        for i, b in enumerate(base)
    ]
    opt = torch.optim.SGD(groups, lr=0.001)
    return lr_rows(make(opt), opt, steps)


# spec, the same scheduler in torch, rows: long enough to leave the float range.
PAST_THE_RANGE = cases(
    {
        "exponential-grows-to-inf": (
            "ExponentialLR(gamma=1.5)",
            lambda o: lr_scheduler.ExponentialLR(o, 1.5),
            2000,
        ),
        "exponential-shrinks-to-zero": (
            "ExponentialLR(gamma=0.5)",
            lambda o: lr_scheduler.ExponentialLR(o, 0.5),
            1200,
        ),
        "step-grows-to-inf": (
            "StepLR(step_size=3, gamma=2.0)",
            lambda o: lr_scheduler.StepLR(o, 3, 2.0),
            3200,
        ),
        "multiplicative-grows-to-inf": (
            "MultiplicativeLR(lr_lambda='1.5')",
            lambda o: lr_scheduler.MultiplicativeLR(o, lambda e: 1.5),
            2000,
        ),
        "multiplicative-piecewise-to-inf": (
            "MultiplicativeLR(lr_lambda='1.01 if epoch < 100 else 1.5')",
            lambda o: lr_scheduler.MultiplicativeLR(o, lambda e: 1.01 if e < 100 else 1.5),
            2000,
        ),
        "chained-grows-to-inf": (
            "ChainedScheduler(schedulers=[ExponentialLR(gamma=1.5), "
            "StepLR(step_size=100, gamma=2.0)])",
            lambda o: lr_scheduler.ChainedScheduler(
                [lr_scheduler.ExponentialLR(o, 1.5), lr_scheduler.StepLR(o, 100, 2.0)]
            ),
            1800,
        ),
        "sequential-grows-to-inf": (
            "SequentialLR(schedulers=[ConstantLR(factor=0.5, total_iters=10), "
            "ExponentialLR(gamma=1.5)], milestones=[100])",
            lambda o: lr_scheduler.SequentialLR(
                o, [lr_scheduler.ConstantLR(o, 0.5, 10), lr_scheduler.ExponentialLR(o, 1.5)], [100]
            ),
            2000,
        ),
    }
)


@pytest.mark.parametrize(("spec", "make", "steps"), PAST_THE_RANGE)
def test_same_values_as_torch_past_the_float_range(spec: str, make: Any, steps: int) -> None:
    theirs = torch_rows(make, BASE, steps)
    assert any(math.isinf(v) or v == 0.0 for v in theirs[-1]), "torch must leave the range"
    ours = LRProgram(spec, BASE).rows(steps)
    assert_rows_close(ours, theirs, spec)


@pytest.mark.parametrize(
    ("spec", "expected"),
    cases(
        {
            "exponential-inf": ("ExponentialLR(gamma=1.5)", math.inf),
            "exponential-zero": ("ExponentialLR(gamma=0.5)", 0.0),
            "step-inf": ("StepLR(step_size=1, gamma=1e300)", math.inf),
            "multistep-repeated-milestone-inf": (
                "MultiStepLR(milestones=[1, 1, 1], gamma=1e200)",
                math.inf,
            ),
            "multiplicative-inf": ("MultiplicativeLR(lr_lambda='1.5')", math.inf),
            "lambda-int-power-inf": ("LambdaLR(lr_lambda='10 ** epoch')", math.inf),
            "lambda-exp-inf": ("LambdaLR(lr_lambda='exp(epoch)')", math.inf),
            "lambda-float-power-inf": ("LambdaLR(lr_lambda='2.0 ** epoch')", math.inf),
            "lambda-zero": ("LambdaLR(lr_lambda='0.5 ** epoch')", 0.0),
            "cyclic-exp-range-inf": (
                "CyclicLR(base_lr=0.0, max_lr=0.1, step_size_up=7, mode='exp_range', "
                "gamma=1.5, cycle_momentum=False)",
                math.inf,
            ),
            "polynomial-zero": ("PolynomialLR(total_iters=1000000000000, power=1e300)", 0.0),
        }
    ),
)
@pytest.mark.parametrize("step", [5_000, 1_000_003])
def test_far_steps_give_inf_or_zero_without_raising(spec: str, expected: float, step: int) -> None:
    assert LRProgram(spec, BASE).lrs(step) == [expected, expected]


def test_exponential_at_step_10_to_the_12() -> None:
    assert LRProgram("ExponentialLR(gamma=1.5)", BASE).lrs(10**12) == [math.inf, math.inf]
    assert LRProgram("ExponentialLR(gamma=0.5)", BASE).lrs(10**12) == [0.0, 0.0]
    assert LRProgram("StepLR(step_size=7, gamma=3.0)", BASE).lrs(10**12) == [math.inf] * 2


def test_zero_base_lr_stays_zero_as_in_torch() -> None:
    # torch's recursion multiplies 0.0 by gamma: 0.0 forever, never 0 * inf = nan.
    theirs = torch_rows(lambda o: lr_scheduler.ExponentialLR(o, 1.5), [0.0, 0.1], 1800)
    ours = LRProgram("ExponentialLR(gamma=1.5)", [0.0, 0.1]).rows(1800)
    assert_rows_close(ours, theirs, "zero base")
    assert LRProgram("ExponentialLR(gamma=1.5)", [0.0]).lrs(10**6) == [0.0]


def test_triangular2_amplitude_underflows_to_base_lr() -> None:
    # 1 / 2 ** (cycle - 1) past cycle 1,025: torch raises OverflowError; the amplitude is 0.
    program = LRProgram(
        "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=5, "
        "mode='triangular2', cycle_momentum=False)",
        BASE,
    )
    assert program.lrs(10**6 + 5) == [0.001, 0.001]


def test_repeated_scales_overflow_to_inf() -> None:
    events = [Event(v, Op.SCALE, 1e300, effective_step=v) for v in range(2, 6)]
    program = LRProgram("ExponentialLR(gamma=1.5)", BASE, events)
    assert program.lrs(2) == pytest.approx([0.1 * 1.5**2 * 1e300, 0.05 * 1.5**2 * 1e300])
    assert program.lrs(3) == [math.inf, math.inf]
    assert program.lrs(10**6) == [math.inf, math.inf]
    held = LRProgram(
        "StepLR(step_size=10)", BASE, [Event(2, Op.SET, 1e6, effective_step=1), *events]
    )
    assert held.lrs(10**9) == [math.inf, math.inf]


# The expression language's own values past the float range (inf, 0.0, nan, never an
# OverflowError) are checked case by case in tests/test_expressions.py
# (test_overflow_gives_ieee_values).


def test_no_raw_power_or_exp_left_in_the_evaluation_code() -> None:
    # The class of bug, not one case: every power/exponential goes through lrctl._numeric.
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "lrctl"
    # The expressions' function table wraps math's functions with its own IEEE rules.
    files = [*root.glob("schedules/*.py"), *root.glob("expressions/*.py"), root / "program.py"]
    files = [f for f in files if f.name != "_grammar.py"]
    # Also the functions that raise ValueError at an infinite argument (cos(inf)).
    banned = {
        "exp",
        "pow",
        "ldexp",
        "expm1",
        "cosh",
        "sinh",
        "gamma",
        "factorial",
        "cos",
        "sin",
        "tan",
        "sqrt",
    }
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
                found.append(f"{path.name}:{node.lineno}: **")
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "math"
                and node.attr in banned
            ):
                found.append(f"{path.name}:{node.lineno}: math.{node.attr}")
    assert not found, found


@pytest.mark.parametrize(
    "spec",
    cases(
        {
            "warmup-cosine": (
                "WarmupCosineLR(num_warmup_steps=0, num_training_steps=1, num_cycles=1e300)"
            ),
            "wsd": (
                "WarmupStableDecayLR(num_warmup_steps=0, num_decay_steps=1000000000000, "
                "num_stable_steps=0, num_cycles=1e308)"
            ),
        }
    ),
)
def test_cosine_of_an_overflowed_angle_is_nan_not_an_error(spec: str) -> None:
    # num_cycles * progress overflows to inf; math.cos(inf) raises ValueError, IEEE says nan,
    # and HF's max(0.0, factor) then gives 0.0.
    assert LRProgram(spec, [0.1]).lrs(5 * 10**11) == [0.0]
