"""Bounded evaluation: any step of any schedule answers in milliseconds, never a long replay.

A worker reports the step it is at; the controller evaluates the job's LR there. A report of
step 10**12 on a recurrence-based schedule (MultiplicativeLR, ChainedScheduler) must not
replay 10**12 steps: either a closed form answers, or a defined error (an ``LrctlError``)
says the step is out of reach, both in milliseconds.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from lrctl.errors import LrctlError
from lrctl.overrides import Event, Op
from lrctl.program import LRProgram

BASE = [0.1, 0.05]
FAST = 0.5  # seconds: generous for a loaded CI core; a replay of 10**12 steps never ends

SPECS = [
    pytest.param("StepLR(step_size=200, gamma=0.5)", id="step"),
    pytest.param("LambdaLR(lr_lambda='0.95 ** epoch')", id="lambda"),
    pytest.param("MultiplicativeLR(lr_lambda='0.99')", id="multiplicative-constant"),
    pytest.param("MultiplicativeLR(lr_lambda='0.999 if epoch < 100 else 0.99')",
                 id="multiplicative-piecewise"),
    pytest.param("MultiplicativeLR(lr_lambda='1 - 0.0005 * (epoch % 7)')",
                 id="multiplicative-recurrence"),
    pytest.param("ChainedScheduler(schedulers=[ConstantLR(factor=0.1, total_iters=2), "
                 "ExponentialLR(gamma=0.99)])", id="chained-multiplicative"),
    pytest.param("ChainedScheduler(schedulers=[MultiStepLR(milestones=[100, 400]), "
                 "LambdaLR(lr_lambda='0.95 ** epoch'), ExponentialLR(gamma=0.999)])",
                 id="chained-overwriting"),
    pytest.param("ChainedScheduler(schedulers=[CosineAnnealingLR(T_max=50, eta_min=0.001), "
                 "StepLR(step_size=120, gamma=0.5)])", id="chained-recurrence"),
    pytest.param("SequentialLR(schedulers=[MultiplicativeLR(lr_lambda='0.9 + 0.01 * epoch'), "
                 "CosineAnnealingWarmRestarts(T_0=50, T_mult=2)], milestones=[5])",
                 id="sequential"),
    pytest.param("CosineAnnealingWarmRestarts(T_0=3, T_mult=2)", id="warm-restarts"),
    pytest.param("CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=7, mode='exp_range', "
                 "gamma=0.99)", id="cyclic"),
]


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
