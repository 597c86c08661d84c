"""Golden LR lists for the seed's examples, spec parsing/validation, and warmup schedules."""

from __future__ import annotations

import json
import math
from itertools import pairwise

import pytest
import torch

from lrctl.errors import SpecError
from lrctl.program import LRProgram, preview
from lrctl.schedules import SCHEDULES, build_schedule
from lrctl.spec import Spec, parse_spec
from tests._cases import cases
from tests.test_parity import assert_rows_close

# -- golden lists ------------------------------------------------------------------------------


def test_steplr_halves_at_200_and_400() -> None:
    rows = preview("StepLR(step_size=200, gamma=0.5)", [0.1], 601)
    assert {r[0] for r in rows[:200]} == {0.1}  # lr = 0.1    if epoch < 200
    assert {r[0] for r in rows[200:400]} == {0.05}  # lr = 0.05   if 200 <= epoch < 400
    assert {r[0] for r in rows[400:600]} == {0.025}  # lr = 0.025  if 400 <= epoch < 600
    assert rows[600][0] == 0.0125


def test_multisteplr_halves_at_200_and_350() -> None:
    rows = preview("MultiStepLR(milestones=[200, 350], gamma=0.5)", [0.1], 500)
    assert {r[0] for r in rows[:200]} == {0.1}  # lr = 0.1   if epoch < 200
    assert {r[0] for r in rows[200:350]} == {0.05}  # lr = 0.05  if 200 <= epoch < 350
    assert {r[0] for r in rows[350:]} == {0.025}  # lr = 0.025 if epoch >= 350


def test_cyclic_triangular_up_50_down_100() -> None:
    rows = [
        r[0]
        for r in preview(
            "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=50, step_size_down=100)", [0.1], 301
        )
    ]
    assert rows[0] == 0.001  # starts at base_lr
    assert max(rows[:150]) == rows[50] == pytest.approx(0.1, rel=1e-15)  # peak at step 50
    assert rows[150] == pytest.approx(0.001, rel=1e-12)  # back at base at 150
    assert rows[200] == pytest.approx(0.1, rel=1e-12)  # next peak
    assert all(a < b for a, b in pairwise(rows[:51]))  # rising 0..50
    assert all(a > b for a, b in pairwise(rows[50:151]))  # falling 50..150


def test_cyclic_triangular2_halves_amplitude_each_cycle() -> None:
    rows = [
        r[0]
        for r in preview(
            "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=50, mode='triangular2')", [0.1], 400
        )
    ]
    amp = 0.1 - 0.001
    assert rows[50] == pytest.approx(0.001 + amp, rel=1e-12)  # cycle 1: full amplitude
    assert rows[150] == pytest.approx(0.001 + amp / 2, rel=1e-12)  # cycle 2: half
    assert rows[250] == pytest.approx(0.001 + amp / 4, rel=1e-12)  # cycle 3: quarter
    assert rows[100] == rows[200] == pytest.approx(0.001, rel=1e-12)


def test_cyclic_exp_range_decays_by_gamma_per_step() -> None:
    gamma = 0.99
    rows = [
        r[0]
        for r in preview(
            f"CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=50, "
            f"mode='exp_range', gamma={gamma})",
            [0.1],
            400,
        )
    ]
    for peak in (50, 150, 250, 350):  # at a peak, scale_factor is 1: amplitude * gamma**step
        assert rows[peak] == pytest.approx(0.001 + (0.1 - 0.001) * gamma**peak, rel=1e-12)


def test_warm_restarts_t0_50_tmult_2_restart_at_50_150_350() -> None:
    rows = [
        r[0]
        for r in preview("CosineAnnealingWarmRestarts(T_0=50, T_mult=2, eta_min=0.001)", [0.1], 400)
    ]
    restarts = [t for t in range(1, 400) if rows[t] > rows[t - 1]]
    assert restarts == [50, 150, 350]
    for t in (0, 50, 150, 350):
        assert rows[t] == 0.1
    # Each period is a half cosine: mid-period is halfway between base and eta_min.
    assert rows[25] == pytest.approx((0.1 + 0.001) / 2, rel=1e-12)
    assert rows[100] == pytest.approx((0.1 + 0.001) / 2, rel=1e-12)


# -- spec language -------------------------------------------------------------------------------

ROUND_TRIP = cases(
    {
        "step": "StepLR(step_size=200, gamma=0.5)",
        "sequential": (
            "SequentialLR(schedulers=[LinearLR(start_factor=0.1, total_iters=5), "
            "CosineAnnealingLR(T_max=95)], milestones=[5])"
        ),
        "lambda-text": "LambdaLR(lr_lambda='0.5 if epoch < 40 else 0.25')",
        "cyclic-per-group": (
            "CyclicLR(base_lr=[0.001, 0.002], max_lr=0.1, step_size_up=50, mode='triangular2', "
            "cycle_momentum=False)"
        ),
        "positional": "StepLR(200, 0.5)",
        "onecycle-floats": (
            "OneCycleLR(max_lr=0.1, total_steps=100, three_phase=True, final_div_factor=10000.0)"
        ),
        "empty-list-small-float": "MultiStepLR(milestones=[], gamma=1e-05)",
    }
)


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_spec_text_and_dict_round_trip(text: str) -> None:
    spec = parse_spec(text)
    assert parse_spec(spec.to_text()) == spec
    assert Spec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert parse_spec(spec.to_dict()) == spec
    build_schedule(spec, 2)  # and it is valid


def test_spec_text_is_canonical() -> None:
    spec = parse_spec("  StepLR( step_size = 200,gamma= .5 )")
    assert spec.to_text() == "StepLR(step_size=200, gamma=0.5)"
    assert spec.to_dict() == {"name": "StepLR", "args": {"step_size": 200, "gamma": 0.5}}


def test_positional_arguments_bind_like_torch() -> None:
    assert preview("StepLR(2, 0.5)", [1.0], 5) == preview(
        "StepLR(step_size=2, gamma=0.5)", [1.0], 5
    )


BAD_SPECS = cases(
    {
        "negative-step-size": (
            "StepLR(step_size=-1)",
            "StepLR: step_size must be a positive integer, got -1",
        ),
        "float-step-size": (
            "StepLR(step_size=2.5)",
            "step_size must be a positive integer, got 2.5",
        ),
        "unknown-name": ("FooLR(x=1)", "unknown scheduler 'FooLR'; expected one of"),
        "unknown-kwarg": ("StepLR(step_size=1, gama=0.5)", "unexpected keyword argument 'gama'"),
        "too-many-positional": ("StepLR(1, 0.5, 3)", "too many positional arguments"),
        "missing-required": ("StepLR(gamma=0.5)", "missing a required argument: 'step_size'"),
        "positional-and-keyword": (
            "StepLR(1, step_size=2)",
            "multiple values for argument 'step_size'",
        ),
        "duplicate-kwarg": ("StepLR(step_size=1, step_size=2)", "argument 'step_size' given twice"),
        "inf-literal": ("ExponentialLR(gamma=1e999)", "expected a finite number"),
        "nan": ("ExponentialLR(gamma=nan)", "expected a finite number, got 'nan'"),
        "negative": ("ExponentialLR(gamma=-0.5)", "gamma must be >= 0, got -0.5"),
        "negative-lr": ("CyclicLR(base_lr=-0.1, max_lr=0.1)", "base_lr must be >= 0, got -0.1"),
        "per-group-length": (
            "CyclicLR(base_lr=[0.1, 0.2, 0.3], max_lr=0.1)",
            "expected 2 values for base_lr, got 3",
        ),
        "last-epoch-in-spec": (
            "StepLR(step_size=1, last_epoch=5)",
            "pass last_epoch to RemoteLRScheduler",
        ),
        "call-in-arg": ("StepLR(step_size=len('ab'))", "expected a literal"),
        "name-in-arg": ("StepLR(step_size=x)", "expected a literal"),
        "not-a-call": ("StepLR(step_size=1) + 1", "must be a scheduler call"),
        "attribute-call": (
            "torch.optim.lr_scheduler.StepLR(step_size=1)",
            "expected a scheduler name",
        ),
        "double-star": ("StepLR(**{'step_size': 1})", "**arguments are not allowed"),
        "syntax": ("StepLR(step_size=1", "not valid syntax"),
        "empty": ("", "schedule spec is empty"),
        "python-lambda": ("LambdaLR(lr_lambda=lambda e: 1)", "expected a literal"),
        "unsafe-lambda": ("LambdaLR(lr_lambda=\"__import__('os')\")", "not allowed"),
        "sequential-milestones": (
            "SequentialLR(schedulers=[StepLR(step_size=1)], milestones=[3])",
            "one more than the number of milestone points",
        ),
        "nested-plateau": (
            "SequentialLR(schedulers=[StepLR(step_size=1), ReduceLROnPlateau()], milestones=[3])",
            "ReduceLROnPlateau: cannot be nested",
        ),
        "onecycle": ("OneCycleLR(max_lr=0.1)", "You must define either total_steps"),
        "constant-factor": ("ConstantLR(factor=1.5)", "factor must be > 0 and <= 1, got 1.5"),
        "cyclic-mode": (
            "CyclicLR(base_lr=0.1, max_lr=0.2, mode='sine')",
            "mode must be one of 'triangular', 'triangular2', 'exp_range', got 'sine'",
        ),
        "bool-as-number": ("StepLR(step_size=1, gamma=True)", "gamma must be a number, got True"),
        "too-long": ("X" * 20_000, "expected at most 4096 bytes"),
    }
)


@pytest.mark.parametrize(("text", "message"), BAD_SPECS)
def test_bad_specs_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        LRProgram(text, [0.1, 0.05])
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("base", [[], [-0.1], [float("nan")], [float("inf")], ["0.1"]])
def test_bad_base_lrs_are_refused(base: list[float]) -> None:
    with pytest.raises(SpecError, match="base"):
        LRProgram("StepLR(step_size=1)", base)


def test_onecycle_refuses_steps_past_total_like_torch() -> None:
    assert len(preview("OneCycleLR(max_lr=0.1, total_steps=100)", [0.1], 101)) == 101
    with pytest.raises(SpecError, match="total_steps=100"):
        preview("OneCycleLR(max_lr=0.1, total_steps=100)", [0.1], 102)
    with pytest.raises(SpecError, match="Tried to step 101 times"):
        LRProgram("OneCycleLR(max_lr=0.1, total_steps=100)", [0.1]).lrs(101)


def test_every_torch_scheduler_is_supported() -> None:
    torch_names = {
        name
        for name in dir(torch.optim.lr_scheduler)
        if name.endswith(("LR", "Scheduler", "Restarts", "Plateau"))
        and name not in {"LRScheduler", "_LRScheduler"}
        and isinstance(getattr(torch.optim.lr_scheduler, name), type)
    }
    assert torch_names <= set(SCHEDULES), torch_names - set(SCHEDULES)


# -- schedules beyond torch: Hugging Face transformers' definitions, transcribed -------------


def hf_cosine_with_min_lr(step: int, w: int, total: int, cycles: float, rate: float) -> float:
    if step < w:
        return float(step) / float(max(1, w))
    progress = float(step - w) / float(max(1, total - w))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(cycles) * 2.0 * progress))
    factor = factor * (1 - rate) + rate
    return max(0, factor)


def hf_inverse_sqrt(step: int, w: int, timescale: int | None = None) -> float:
    if timescale is None:
        timescale = w or 10_000
    if step < w:
        return float(step) / float(max(1, w))
    shift = timescale - w
    return 1.0 / math.sqrt((step + shift) / timescale)


def hf_wsd(
    step: int, w: int, stable: int, decay: int, wt: str, dt: str, r: float, cycles: float
) -> float:
    if step < w:
        p = float(step) / float(max(1, w))
        f = {
            "linear": p,
            "cosine": 0.5 * (1.0 - math.cos(math.pi * p)),
            "1-sqrt": 1.0 - math.sqrt(1.0 - p),
        }[wt]
        return max(0.0, f * (1.0 - r) + r)
    if step < w + stable:
        return 1.0
    if step < w + stable + decay:
        p = float(step - w - stable) / float(max(1, decay))
        f = {
            "linear": 1.0 - p,
            "cosine": 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * p)),
            "1-sqrt": 1.0 - math.sqrt(p),
        }[dt]
        return max(0.0, f * (1.0 - r) + r)
    return r


def torch_lambda_rows(fn: object, base: list[float], steps: int) -> list[list[float]]:
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b} for b in base]
    opt = torch.optim.SGD(params)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)  # type: ignore[arg-type]
    rows = [list(map(float, sched.get_last_lr()))]
    for _ in range(steps - 1):
        opt.step()
        sched.step()
        rows.append(list(map(float, sched.get_last_lr())))
    return rows


WARMUP_CASES = cases(
    {
        "cosine": (
            "WarmupCosineLR(num_warmup_steps=100, num_training_steps=1000)",
            lambda t: hf_cosine_with_min_lr(t, 100, 1000, 0.5, 0.0),
        ),
        "cosine-min-lr": (
            "WarmupCosineLR(num_warmup_steps=50, num_training_steps=800, "
            "min_lr_rate=0.1, num_cycles=1.5)",
            lambda t: hf_cosine_with_min_lr(t, 50, 800, 1.5, 0.1),
        ),
        "wsd": (
            "WarmupStableDecayLR(num_warmup_steps=100, "
            "num_decay_steps=200, num_training_steps=1000)",
            lambda t: hf_wsd(t, 100, 700, 200, "linear", "cosine", 0.0, 0.5),
        ),
        "wsd-sqrt": (
            "WarmupStableDecayLR(num_warmup_steps=30, num_decay_steps=300, "
            "num_stable_steps=400, warmup_type='1-sqrt', decay_type='1-sqrt', "
            "min_lr_ratio=0.05)",
            lambda t: hf_wsd(t, 30, 400, 300, "1-sqrt", "1-sqrt", 0.05, 0.5),
        ),
        "inverse-sqrt": ("InverseSqrtLR(num_warmup_steps=100)", lambda t: hf_inverse_sqrt(t, 100)),
        "inverse-sqrt-timescale": (
            "InverseSqrtLR(num_warmup_steps=0, timescale=50)",
            lambda t: hf_inverse_sqrt(t, 0, 50),
        ),
    }
)


@pytest.mark.parametrize(("spec", "fn"), WARMUP_CASES)
def test_warmup_schedules_match_hf_definitions_through_torch(spec: str, fn: object) -> None:
    base = [0.1, 0.03]
    assert_rows_close(preview(spec, base, 1100), torch_lambda_rows(fn, base, 1100), spec)
