"""Bounded evaluation: any step of any schedule answers in milliseconds, never a long replay.

A worker reports the step it is at; the controller evaluates the job's LR there. A report of
step 10**12 on a recurrence-based schedule (MultiplicativeLR, ChainedScheduler) must not
replay 10**12 steps: either a closed form answers, or a defined error (an ``LrctlError``)
says the step is out of reach, both in milliseconds.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrctl.errors import LrctlError, SpecError, StepLimitError
from lrctl.limits import NO_LIMITS
from lrctl.overrides import Event, Op
from lrctl.program import LRProgram
from lrctl.schedules import REPLAY_STEP_OVERHEAD
from lrctl.schedules._recurrence import MAX_CHECKPOINTS, Recurrence
from tests._cases import cases

BASE = [0.1, 0.05]
FAST = 2.0  # seconds: generous for a loaded CI core (they take ~1 ms); a replay never ends

SPECS = cases(
    {
        "step": "StepLR(step_size=200, gamma=0.5)",
        "lambda": "LambdaLR(lr_lambda='0.95 ** epoch')",
        "multiplicative-constant": "MultiplicativeLR(lr_lambda='0.99')",
        "multiplicative-piecewise": "MultiplicativeLR(lr_lambda='0.999 if epoch < 100 else 0.99')",
        "multiplicative-recurrence": "MultiplicativeLR(lr_lambda='1 - 0.0005 * (epoch % 7)')",
        "chained-multiplicative": (
            "ChainedScheduler(schedulers=[ConstantLR(factor=0.1, total_iters=2), "
            "ExponentialLR(gamma=0.99)])"
        ),
        "chained-overwriting": (
            "ChainedScheduler(schedulers=[MultiStepLR(milestones=[100, 400]), "
            "LambdaLR(lr_lambda='0.95 ** epoch'), ExponentialLR(gamma=0.999)])"
        ),
        "chained-recurrence": (
            "ChainedScheduler(schedulers=[CosineAnnealingLR(T_max=50, eta_min=0.001), "
            "StepLR(step_size=120, gamma=0.5)])"
        ),
        "sequential": (
            "SequentialLR(schedulers=[MultiplicativeLR(lr_lambda='0.9 + 0.01 * epoch'), "
            "CosineAnnealingWarmRestarts(T_0=50, T_mult=2)], milestones=[5])"
        ),
        "warm-restarts": "CosineAnnealingWarmRestarts(T_0=3, T_mult=2)",
        "cyclic": (
            "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=7, mode='exp_range', gamma=0.99)"
        ),
    }
)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("step", [10**7, 10**12])
def test_a_far_step_answers_in_milliseconds(spec: str, step: int) -> None:
    program = LRProgram(spec, BASE)
    start = time.perf_counter()
    with contextlib.suppress(LrctlError):  # out of reach, said at once (INVALID_ARGUMENT)
        program.lrs(step)
    assert time.perf_counter() - start < FAST
    # ... and nearby steps still answer at once afterwards.
    start = time.perf_counter()
    program.lrs(10)
    assert time.perf_counter() - start < FAST


@pytest.mark.timeout(60)
def test_a_long_log_on_many_groups_builds_fast() -> None:
    # 10,000 events (DESIGN's minimum per job) on 1,024 groups (its maximum).
    events = [Event(v, Op.SCALE, 0.999, effective_step=v) for v in range(2, 10_002)]
    start = time.perf_counter()
    program = LRProgram("StepLR(step_size=10)", [0.1] * 1024, events)
    program.lrs(5_000)
    assert time.perf_counter() - start < 2.0


# -- the API the controller uses to bound evaluation ------------------------------------------

RECURRENCE = "MultiplicativeLR(lr_lambda='1 - 0.0005 * (epoch % 7)')"
MAX_STEP = 2**63 - 1


def ev(
    version: int,
    op: Op,
    step: int,
    value: float | None = None,
    group: int | None = None,
    schedule: str | None = None,
) -> Event:
    return Event(version, op, value, schedule, group, effective_step=step)


@pytest.mark.parametrize(
    ("spec", "events", "expected"),
    cases(
        {
            "closed-form": ("StepLR(step_size=10)", [], MAX_STEP),
            "onecycle": ("OneCycleLR(max_lr=0.1, total_steps=100)", [], 100),
            "expression": ("LambdaLR(lr_lambda='0.95 ** epoch')", [], 10**15),
            "expression-then-closed": (
                "SequentialLR(schedulers=[LambdaLR(lr_lambda='0.9'), StepLR(step_size=5)], "
                "milestones=[10])",
                [],
                MAX_STEP,
            ),
            "onecycle-replaced-in-time": (
                "OneCycleLR(max_lr=0.1, total_steps=100)",
                [ev(2, Op.REPLACE_SCHEDULE, 50, schedule="StepLR(step_size=5)")],
                MAX_STEP,
            ),
            "onecycle-from-step-50": (
                "StepLR(step_size=5)",
                [ev(2, Op.REPLACE_SCHEDULE, 50, schedule="OneCycleLR(max_lr=0.1, total_steps=20)")],
                70,
            ),
        }
    ),
)
def test_max_step(spec: str, events: list[Event], expected: int) -> None:
    program = LRProgram(spec, BASE, events)
    assert program.max_step == expected
    program.check_step(expected)
    if expected < MAX_STEP:
        with pytest.raises(StepLimitError):
            program.check_step(expected + 1)
        with pytest.raises(StepLimitError):
            program.lrs(expected + 1)


def test_a_held_lr_outlives_the_schedule() -> None:
    # OneCycleLR ends at 100 (torch raises past it); an operator's `lr = X` holds after.
    program = LRProgram("OneCycleLR(max_lr=0.1, total_steps=100)", BASE, [ev(2, Op.SET, 150, 1e-3)])
    assert program.max_step == 100
    with pytest.raises(StepLimitError, match="Tried to step 120 times"):
        program.lrs(120)
    assert program.lrs(10**12) == [1e-3, 1e-3]


@pytest.mark.parametrize("step", [-1, 2**63, 10**100, 1.5, True, "3", None])
def test_steps_that_are_not_steps_are_refused(step: object) -> None:
    program = LRProgram("StepLR(step_size=10)", BASE)
    with pytest.raises(StepLimitError) as info:
        program.lrs(step)  # type: ignore[arg-type]
    assert isinstance(info.value, SpecError) and isinstance(info.value, ValueError)
    assert len(str(info.value)) < 200


def test_cost_says_what_a_step_would_replay_before_anything_runs() -> None:
    closed = LRProgram("StepLR(step_size=10)", BASE)
    assert closed.closed_form and closed.cost(10**18) == 0
    program = LRProgram(RECURRENCE, BASE)
    assert not program.closed_form
    per_step = len(BASE) + REPLAY_STEP_OVERHEAD
    assert program.cost(0) == 0
    assert program.cost(50_000) == 50_000 * per_step
    with pytest.raises(StepLimitError, match="too far beyond"):
        program.check_step(50_000, max_cost=1_000)
    with pytest.raises(StepLimitError, match="too far beyond"):
        program.lrs(10**12)  # the default budget: refused at once
    assert program.cost(50_000) == 50_000 * per_step  # nothing ran
    value = program.lrs(50_000, max_cost=None)  # a worker resuming: whatever it costs
    assert program.cost(50_000) == 0
    assert program.cost(50_001) == per_step  # the next step of a training loop
    assert program.cost(1_000) <= 256 * per_step  # back in time: from a checkpoint
    assert LRProgram(RECURRENCE, BASE).lrs(50_000, max_cost=None) == value


def test_stepping_forward_never_hits_the_budget() -> None:
    program = LRProgram(RECURRENCE, BASE)
    rows = program.rows(3_000)  # the default budget, one step at a time
    assert len(rows) == 3_000
    lr = list(BASE)
    for t in range(1, 3_000):  # torch's recursion, by hand
        lr = [x * (1 - 0.0005 * (t % 7)) for x in lr]
    assert rows[-1] == lr


def test_recurrence_memory_is_bounded() -> None:
    rec = Recurrence((1.0,), lambda t, prev: (prev[0] * 0.99999,))
    far = rec.at(300_000)
    assert len(rec._checkpoints) <= MAX_CHECKPOINTS + 1
    assert rec.cost(299_999) <= rec._stride
    fresh = Recurrence((1.0,), lambda t, prev: (prev[0] * 0.99999,))
    assert rec.at(123_457) == fresh.at(123_457)
    assert rec.at(300_000) == far


@st.composite
def piecewise(draw: st.DrawFn) -> tuple[str, Any]:
    """A piecewise-constant lr_lambda and the same as a Python function."""
    k1, k2 = sorted(draw(st.lists(st.integers(0, 300), min_size=2, max_size=2)))
    half = draw(st.sampled_from([0, 0.5]))
    c = [
        draw(st.sampled_from([0.5, 0.9, 0.999, 1.0, 1.01, 1.5, 2.0, 1e10, 1e-10, 0.0]))
        for _ in range(3)
    ]
    op = draw(st.sampled_from(["<", "<=", "==", ">"]))
    text = f"{c[0]!r} if epoch {op} {k1 + half} else ({c[1]!r} if epoch < {k2} else {c[2]!r})"
    ops = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        "==": lambda a, b: a == b,
        ">": lambda a, b: a > b,
    }

    def fn(epoch: int) -> float:
        if ops[op](epoch, k1 + half):
            return c[0]
        return c[1] if epoch < k2 else c[2]

    return text, fn


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=piecewise(),
    base=st.lists(st.sampled_from([0.0, 1e-300, 0.1, 3.0, 1e300]), min_size=1, max_size=3),
)
def test_piecewise_closed_form_is_torchs_recursion(
    case: tuple[str, Any], base: list[float]
) -> None:
    text, fn = case
    program = LRProgram(f"MultiplicativeLR(lr_lambda={text!r})", base, limits=NO_LIMITS)
    assert program.closed_form
    lr = list(base)
    subnormal = [False] * len(base)
    for t in range(0, 700):
        if t:
            lr = [x * fn(t) for x in lr]  # torch: group["lr"] * lmbda(epoch)
        ours = program.lrs(t)
        for g, (a, b) in enumerate(zip(ours, lr)):
            # Below the normal range torch's recursion keeps a few digits only; a value that
            # grows back from there carries its rounding (docs/parity.md): not compared.
            subnormal[g] = subnormal[g] or 0 < b < 2.2250738585072014e-308
            if subnormal[g] and b != 0:
                continue
            assert (
                a == b
                or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
                or (math.isnan(a) and math.isnan(b))
            ), (text, base, t, ours, lr)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "kind", ["split-then-job-wide", "per-group", "split-and-set", "replace-per-group"]
)
def test_logs_that_tell_every_group_apart_build_fast(kind: str) -> None:
    n = 1024
    if kind == "split-then-job-wide":  # every group its own state, then job-wide events
        events = [ev(v, Op.SCALE, v + 1, 0.5, group=v - 2) for v in range(2, n + 2)]
        events += [ev(v, Op.SCALE, v + 1, 0.999) for v in range(n + 2, 10_002)]
    elif kind == "per-group":
        events = [ev(v, Op.SCALE, v, 0.5, group=v % n) for v in range(2, 10_002)]
    elif kind == "split-and-set":
        events = [
            ev(v, Op.SCALE, v, 0.5, group=v % n) if v % 2 else ev(v, Op.SET, v, 1e-3)
            for v in range(2, 10_002)
        ]
    else:
        events = [
            ev(v, Op.REPLACE_SCHEDULE, v, group=v % n, schedule="ExponentialLR(gamma=0.99)")
            if v % 2
            else ev(v, Op.SCALE, v, 0.5)
            for v in range(2, 10_002)
        ]
    start = time.perf_counter()
    program = LRProgram("StepLR(step_size=10)", [0.1] * n, events)
    lrs = program.lrs(9_000)
    assert time.perf_counter() - start < 2.0
    assert len(lrs) == n
