"""lrctl's closed forms against installed torch, step by step, at relative 1e-12.

Every case runs two param groups, the second with a tensor LR, for at least 1,000 rows, and
checks momentum too where the scheduler cycles it.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrctl.program import LRProgram, preview
from tests._cases import cases
from tests.torch_ref import torch_rows

REL = 1e-12
# Where the closed form is exactly 0 (LinearLR to end_factor=0, PolynomialLR at total_iters)
# torch's recursion lands a few ulps of the LR's scale off instead (1.2e-16 seen for a base
# LR of 1.0; +-1e-19 for small ones): relative error is meaningless there, so the absolute
# tolerance is this many times the largest LR at step 0 (1e-16 for the usual 0.1).
ABS_PER_LR = 1e-15
# torch's CosineAnnealingLR recursion reaches eta_min a few ulps of the base LR off; at
# T_max + 1 it re-anchors by adding (base - eta_min)(1 - cos(pi/T_max))/2, a tiny term, so
# that absolute error becomes a relative one (1.3e-12 seen for T_max=243) that the
# following multiplicative steps carry on. Random cosine cases are held to this; the closed
# form is checked against torch's own at 1e-12 (test_matches_torch_closed_form_over_10k_steps).
REL_COSINE_RECURSION = 1e-11
BASE = [0.1, 0.05]
STEPS = 1000


def assert_rows_close(
    ours: list[list[float]], theirs: list[list[float]], what: str, rel: float = REL
) -> None:
    assert len(ours) == len(theirs)
    scale = max((abs(x) for x in theirs[0]), default=0.0) if theirs else 0.0
    for t, (a_row, b_row) in enumerate(zip(ours, theirs)):
        for g, (a, b) in enumerate(zip(a_row, b_row)):
            if not math.isclose(a, b, rel_tol=rel, abs_tol=ABS_PER_LR * scale):
                raise AssertionError(
                    f"{what}: step {t} group {g}: lrctl {a!r} != torch {b!r} "
                    f"(rel {abs(a - b) / max(abs(b), 1e-300):.3g})"
                )


CASES = cases(
    {
        "lambda-exp": "LambdaLR(lr_lambda='0.95 ** epoch')",
        "lambda-piecewise": (
            "LambdaLR(lr_lambda='0.5 if epoch < 40 else 0.5 ** 2 if epoch < 70 else 0.5 ** 3')"
        ),
        "lambda-per-group": (
            "LambdaLR(lr_lambda=['min(1.0, (epoch + 1) / 10)', '1 / sqrt(max(step, 1))'])"
        ),
        "mult": "MultiplicativeLR(lr_lambda='0.999 if epoch < 100 else 0.99')",
        "mult-per-group": "MultiplicativeLR(lr_lambda=['0.99', '1.0 - 0.0005 * (epoch % 7)'])",
        "step-seed": "StepLR(step_size=200, gamma=0.5)",
        "step-default-gamma": "StepLR(step_size=7)",
        "multistep-seed": "MultiStepLR(milestones=[200, 350], gamma=0.5)",
        "multistep-repeat": "MultiStepLR(milestones=[80, 30, 30, 0], gamma=0.7)",
        "constant": "ConstantLR(factor=0.5, total_iters=4)",
        "constant-defaults": "ConstantLR()",
        "constant-zero-iters": "ConstantLR(factor=0.25, total_iters=0)",
        "linear-warmup": "LinearLR(start_factor=0.1, total_iters=5)",
        "linear-decay": "LinearLR(start_factor=1.0, end_factor=0.0, total_iters=700)",
        "exponential": "ExponentialLR(gamma=0.995)",
        "poly": "PolynomialLR(total_iters=600, power=2.0)",
        "poly-sqrt": "PolynomialLR(total_iters=300, power=0.5)",
        "cosine": "CosineAnnealingLR(T_max=100, eta_min=0.001)",
        "cosine-short": "CosineAnnealingLR(T_max=7)",
        "cyclic-triangular": (
            "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=50, step_size_down=100)"
        ),
        "cyclic-triangular2": (
            "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=50, mode='triangular2')"
        ),
        "cyclic-exp-range": (
            "CyclicLR(base_lr=[0.001, 0.002], max_lr=[0.1, 0.05], step_size_up=30, "
            "mode='exp_range', gamma=0.999)"
        ),
        "cyclic-scale-fn-cycle": (
            "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=20, "
            "scale_fn='0.5 ** (epoch - 1)', scale_mode='cycle')"
        ),
        "cyclic-scale-fn-iterations": (
            "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=20, "
            "scale_fn='1 / (1 + 0.001 * epoch)', scale_mode='iterations', "
            "base_momentum=0.7, max_momentum=[0.95, 0.9])"
        ),
        "cyclic-no-momentum": (
            "CyclicLR(base_lr=0.01, max_lr=0.1, step_size_up=10, cycle_momentum=False)"
        ),
        # torch's own test_lrscheduler cycles momentum between 1 and 5 (and up to 22): any
        # finite momentum is the optimizer's business, not the scheduler's.
        "cyclic-momentum-1-to-5": (
            "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=40, base_momentum=1, max_momentum=5)"
        ),
        "onecycle-momentum-1-to-22": (
            "OneCycleLR(max_lr=0.1, total_steps=1000, base_momentum=1, max_momentum=22)"
        ),
        "warm-restarts-seed": "CosineAnnealingWarmRestarts(T_0=50, T_mult=2, eta_min=0.001)",
        "warm-restarts-mult1": "CosineAnnealingWarmRestarts(T_0=13)",
        "onecycle": "OneCycleLR(max_lr=0.1, total_steps=1000)",
        "onecycle-linear": (
            "OneCycleLR(max_lr=[0.1, 0.3], total_steps=1200, "
            "anneal_strategy='linear', pct_start=0.25)"
        ),
        "onecycle-three-phase": (
            "OneCycleLR(max_lr=0.1, epochs=10, steps_per_epoch=100, three_phase=True, "
            "div_factor=10.0, final_div_factor=100.0)"
        ),
        "sequential-design": (
            "SequentialLR(schedulers=[LinearLR(start_factor=0.1, total_iters=5), "
            "CosineAnnealingLR(T_max=95)], milestones=[5])"
        ),
        "sequential-three": (
            "SequentialLR(schedulers=[ConstantLR(factor=0.1, total_iters=10), "
            "ExponentialLR(gamma=0.99), StepLR(step_size=50, gamma=0.5)], "
            "milestones=[20, 300])"
        ),
        "sequential-cyclic": (
            "SequentialLR(schedulers=[LinearLR(start_factor=0.5, total_iters=10), "
            "CyclicLR(base_lr=0.01, max_lr=0.1, step_size_up=25)], milestones=[40])"
        ),
        "sequential-restarts": (
            "SequentialLR(schedulers=[LambdaLR(lr_lambda='0.95 ** epoch'), "
            "CosineAnnealingWarmRestarts(T_0=30)], milestones=[60])"
        ),
        "chained-torch-doc": (
            "ChainedScheduler(schedulers=[ConstantLR(factor=0.1, total_iters=2), "
            "ExponentialLR(gamma=0.99)])"
        ),
        "chained-cosine-step-linear": (
            "ChainedScheduler(schedulers=[CosineAnnealingLR(T_max=50, eta_min=0.001), "
            "StepLR(step_size=120, gamma=0.5), LinearLR(start_factor=0.2, total_iters=9)])"
        ),
        "chained-lambda-middle": (
            "ChainedScheduler(schedulers=[MultiStepLR(milestones=[100, 400]), "
            "LambdaLR(lr_lambda='0.95 ** epoch'), ExponentialLR(gamma=0.999)])"
        ),
        "chained-mult-poly": (
            "ChainedScheduler(schedulers=[MultiplicativeLR(lr_lambda='0.99'), "
            "PolynomialLR(total_iters=800, power=1.5)])"
        ),
    }
)


@pytest.mark.parametrize("spec", CASES)
def test_matches_torch(spec: str) -> None:
    theirs, their_momenta = torch_rows(spec, BASE, STEPS)
    ours = preview(spec, BASE, STEPS)
    assert_rows_close(ours, theirs, spec)
    program = LRProgram(spec, BASE)
    if program.cycles_momentum:
        momenta = [program.momenta(t) for t in range(STEPS)]
        assert all(m is not None for m in momenta)
        assert_rows_close(momenta, their_momenta, spec + " momentum")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spec",
    cases(
        {
            "cyclic": "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=40)",
            "onecycle": "OneCycleLR(max_lr=0.01, total_steps=1000, three_phase=True)",
        }
    ),
)
def test_momentum_cycles_adam_beta1(spec: str) -> None:
    theirs, their_betas = torch_rows(spec, BASE, STEPS, kind="adam")
    program = LRProgram(spec, BASE)
    assert_rows_close(program.rows(STEPS), theirs, spec)
    assert_rows_close(
        [program.momenta(t) for t in range(STEPS)],  # type: ignore[misc]
        their_betas,
        spec + " beta1",
    )


@pytest.mark.parametrize(
    "spec",
    cases(
        {
            "cyclic": (
                "CyclicLR(base_lr=0.01, max_lr=0.1, step_size_up=10, cycle_momentum=False, "
                "base_momentum=5, max_momentum=[1, 2, 3])"
            ),
            "onecycle": (
                "OneCycleLR(max_lr=0.1, total_steps=1000, cycle_momentum=False, "
                "base_momentum=22, max_momentum=-1)"
            ),
        }
    ),
)
def test_momentum_arguments_are_ignored_without_cycle_momentum(spec: str) -> None:
    # torch never reads base_momentum/max_momentum when cycle_momentum=False (not even
    # their count), and leaves the optimizer's momentum alone.
    theirs, their_momenta = torch_rows(spec, BASE, STEPS)
    program = LRProgram(spec, BASE)
    assert_rows_close(program.rows(STEPS), theirs, spec)
    assert not program.cycles_momentum and program.momenta(0) is None
    assert {m for row in their_momenta for m in row} == {0.9}  # the optimizer's own value


def test_any_step_without_replay_matches_sequential() -> None:
    # Random access (controller) equals forward stepping (worker) for the cached recurrences.
    for spec in (
        "MultiplicativeLR(lr_lambda='0.999 if epoch < 100 else 0.99')",
        "ChainedScheduler(schedulers=[CosineAnnealingLR(T_max=50), "
        "StepLR(step_size=120, gamma=0.5)])",
    ):
        forward = LRProgram(spec, BASE).rows(2000)
        jumping = LRProgram(spec, BASE)
        for t in (1999, 3, 1500, 0, 700, 701, 256, 255, 1024):
            assert jumping.lrs(t) == forward[t]


# -- hypothesis-drawn parameters -------------------------------------------------------------

lrs = st.floats(1e-4, 1.0)
gammas = st.floats(0.5, 1.0)


def _call(draw: st.DrawFn, name: str, args: dict[str, object]) -> str:
    """``name(arg=value, ...)``: each strategy drawn, in order; a plain value as given."""
    values = (draw(v) if isinstance(v, st.SearchStrategy) else v for v in args.values())
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in zip(args, values))})"


#: kind: the scheduler and its arguments (strategies); cyclic, sequential and chained below.
DRAWN: dict[str, tuple[str, dict[str, object]]] = {
    "step": ("StepLR", {"step_size": st.integers(1, 100), "gamma": gammas}),
    "multistep": (
        "MultiStepLR",
        {"milestones": st.lists(st.integers(0, 400), max_size=6), "gamma": gammas},
    ),
    "exp": ("ExponentialLR", {"gamma": st.floats(0.9, 1.0)}),
    "cos": ("CosineAnnealingLR", {"T_max": st.integers(1, 500), "eta_min": st.floats(0, 1e-3)}),
    "restarts": (
        "CosineAnnealingWarmRestarts",
        {"T_0": st.integers(1, 100), "T_mult": st.integers(1, 3), "eta_min": st.floats(0, 1e-4)},
    ),
    "onecycle": (
        "OneCycleLR",
        {
            "max_lr": lrs,
            "total_steps": st.integers(300, 600),
            "pct_start": st.floats(0.05, 0.45),
            "anneal_strategy": st.sampled_from(["cos", "linear"]),
            "three_phase": st.booleans(),
            "div_factor": st.floats(2, 100),
        },
    ),
    "linear": (
        "LinearLR",
        {
            "start_factor": st.floats(0.01, 1.0),
            "end_factor": st.floats(0.0, 1.0),
            "total_iters": st.integers(0, 300),
        },
    ),
    "poly": ("PolynomialLR", {"total_iters": st.integers(0, 300), "power": st.floats(0.0, 3.0)}),
    "constant": (
        "ConstantLR",
        {"factor": st.floats(0.01, 1.0), "total_iters": st.integers(0, 50)},
    ),
}


@st.composite
def random_specs(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from([*DRAWN, "cyclic", "sequential", "chained"]))
    if kind in DRAWN:
        return _call(draw, *DRAWN[kind])
    if kind == "cyclic":
        b = draw(lrs)
        return _call(
            draw,
            "CyclicLR",
            {
                "base_lr": b,
                "max_lr": b * draw(st.floats(1.0, 100.0)),
                "step_size_up": st.integers(1, 200),
                "step_size_down": st.integers(1, 200),
                "mode": st.sampled_from(["triangular", "triangular2", "exp_range"]),
                "gamma": st.floats(0.99, 1.0),
                "base_momentum": st.floats(0.5, 0.85),
            },
        )
    if kind == "sequential":
        warmup = _call(
            draw,
            "LinearLR",
            {"start_factor": st.floats(0.01, 1.0), "total_iters": st.integers(1, 50)},
        )
        cosine = _call(draw, "CosineAnnealingLR", {"T_max": st.integers(1, 300)})
        milestone = draw(st.integers(0, 200))
        return f"SequentialLR(schedulers=[{warmup}, {cosine}], milestones=[{milestone}])"
    chained = [
        _call(draw, "ExponentialLR", {"gamma": st.floats(0.99, 1.0)}),
        _call(draw, "CosineAnnealingLR", {"T_max": st.integers(1, 300)}),
        _call(draw, *DRAWN["step"]),
    ]
    return f"ChainedScheduler(schedulers=[{', '.join(chained)}])"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=random_specs(), base=st.lists(lrs, min_size=1, max_size=3))
def test_random_parameters_match_torch(spec: str, base: list[float]) -> None:
    steps = 300
    theirs, their_momenta = torch_rows(spec, base, steps, tensor_group=len(base) - 1)
    program = LRProgram(spec, base)
    rel = REL_COSINE_RECURSION if "CosineAnnealingLR" in spec else REL
    assert_rows_close(program.rows(steps), theirs, spec, rel)
    if program.cycles_momentum:
        assert_rows_close(
            [program.momenta(t) for t in range(steps)],  # type: ignore[misc]
            their_momenta,
            spec + " momentum",
        )


CLOSED_FORM_CASES = [
    "StepLR(step_size=7, gamma=0.9)",
    "MultiStepLR(milestones=[100, 2000, 5000], gamma=0.3)",
    "ConstantLR(factor=0.3, total_iters=50)",
    "LinearLR(start_factor=0.001, total_iters=5000)",
    "ExponentialLR(gamma=0.9995)",
    "PolynomialLR(total_iters=9000, power=2.0)",
    "CosineAnnealingLR(T_max=100, eta_min=0.001)",
    "CosineAnnealingLR(T_max=7)",
]


@pytest.mark.parametrize("spec", CLOSED_FORM_CASES)
def test_matches_torch_closed_form_over_10k_steps(spec: str) -> None:
    # torch's recursion drifts (CosineAnnealingLR: ~3e-12 relative by step 10,000, see
    # docs/parity.md); its own closed form (_get_closed_form_lr) is the exact reference.
    from tests.torch_ref import build_torch, make_optimizer

    sched = build_torch(spec, make_optimizer(BASE, tensor_group=None))
    program = LRProgram(spec, BASE)
    for t in range(0, 10_000, 7):
        sched.last_epoch = t
        theirs = [float(x) for x in sched._get_closed_form_lr()]
        assert_rows_close([program.lrs(t)], [theirs], f"{spec} at {t}")
