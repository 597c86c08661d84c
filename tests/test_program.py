"""Overrides on top of schedules: semantics, replay, and ReduceLROnPlateau against torch."""

from __future__ import annotations

import random

import pytest
import torch

from lrctl.errors import OverrideError, SpecError
from lrctl.overrides import Event, Op, parse_override, resolve_pending, validate_override
from lrctl.program import LRProgram
from lrctl.schedules import ReduceLROnPlateau, build_schedule
from tests.test_parity import assert_rows_close

STEP = "StepLR(step_size=10, gamma=0.5)"


def ev(
    version: int,
    op: Op,
    step: int | None,
    value: float | None = None,
    group: int | None = None,
    schedule: str | None = None,
) -> Event:
    return Event(
        version=version, op=op, value=value, group=group, schedule=schedule, effective_step=step
    )


@pytest.mark.parametrize(
    ("text", "op", "value"),
    [
        pytest.param("lr /= 2", Op.SCALE, 0.5, id="divide"),
        pytest.param("lr *= 0.1", Op.SCALE, 0.1, id="multiply"),
        pytest.param("lr = 3e-4", Op.SET, 3e-4, id="set"),
        pytest.param("  lr=0 ", Op.SET, 0.0, id="set-zero-no-spaces"),
    ],
)
def test_parse_override(text: str, op: Op, value: float) -> None:
    assert parse_override(text) == (op, value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("lr /= 0", "finite x > 0, got '0'", id="divide-by-zero"),
        pytest.param("lr /= -2", "finite x > 0", id="divide-negative"),
        pytest.param(
            "lr *= 0", "scale factor must be a finite number > 0, got 0.0", id="scale-zero"
        ),
        pytest.param(
            "lr *= inf", "scale factor must be a finite number > 0, got inf", id="scale-inf"
        ),
        pytest.param("lr = -1", "LR must be a finite number >= 0, got -1.0", id="negative-lr"),
        pytest.param("lr = inf", "LR must be a finite number >= 0, got inf", id="inf-lr"),
        pytest.param("lr = nan", "got nan", id="nan-lr"),
        pytest.param("lr += 1", "expected an override like 'lr /= 2'", id="plus-equals"),
        pytest.param("momentum = 0.9", "expected an override like", id="not-lr"),
        pytest.param("lr = 1/3", "expected a number after 'lr ='", id="expression"),
        pytest.param("", "expected an override like", id="empty"),
    ],
)
def test_bad_overrides_are_refused(text: str, message: str) -> None:
    with pytest.raises(OverrideError) as info:
        parse_override(text)
    assert message in str(info.value)


def test_group_out_of_range_is_refused() -> None:
    with pytest.raises(OverrideError, match="group 2 does not exist; the job has 2 group"):
        validate_override(Op.SCALE, 0.5, group=2, num_groups=2)


def test_worked_example_from_docs() -> None:
    # docs/overrides.md: StepLR(step_size=10, gamma=0.5), base 0.1, two groups (0.1, 0.01).
    events = [
        ev(2, Op.SCALE, 5, 0.5),  # step 5: lr /= 2           (all groups)
        ev(3, Op.SCALE, 8, 0.1, group=1),  # step 8: lr *= 0.1         (group 1)
        ev(4, Op.SET, 12, 3e-4),  # step 12: lr = 3e-4        (holds)
        ev(5, Op.SCALE, 14, 0.5),  # step 14: lr /= 2 while set: halves the held LR
        ev(6, Op.CLEAR, 16),  # step 16: back to the schedule
        ev(7, Op.REPLACE_SCHEDULE, 18, schedule="ExponentialLR(gamma=0.9)"),
    ]
    p = LRProgram(STEP, [0.1, 0.01], events)
    assert p.lrs(4) == [0.1, 0.01]  # schedule only
    assert p.lrs(5) == [0.05, 0.005]  # halved
    assert p.lrs(8) == pytest.approx([0.05, 0.0005])  # group 1 also * 0.1
    assert p.lrs(10) == pytest.approx([0.025, 0.00025])  # StepLR decays under the scales
    assert p.lrs(12) == [3e-4, 3e-4]  # absolute, scales dropped
    assert p.lrs(14) == [1.5e-4, 1.5e-4]  # the held LR halved
    assert p.lrs(16) == [0.05, 0.005]  # schedule again (step 16: gamma^1)
    assert p.lrs(18) == [0.1, 0.01]  # new schedule at its own step 0
    assert p.lrs(20) == pytest.approx([0.1 * 0.81, 0.01 * 0.81])


def test_scales_compose_and_persist() -> None:
    p = LRProgram(STEP, [0.1], [ev(2, Op.SCALE, 3, 0.5), ev(3, Op.SCALE, 3, 0.5)])
    assert p.lrs(2) == [0.1]
    assert p.lrs(3) == [0.025]
    assert p.lrs(25) == [0.1 * 0.25 * 0.25]  # StepLR: two decays by 25, still quartered


def test_pending_events_are_ignored_until_resolved() -> None:
    events = [ev(2, Op.SCALE, None, 0.5)]
    assert LRProgram(STEP, [0.1], events).lrs(7) == [0.1]
    resolved = resolve_pending(events, 7)
    assert resolved[0].effective_step == 7
    assert LRProgram(STEP, [0.1], resolved).lrs(7) == [0.05]


def test_replay_is_exact() -> None:
    rng = random.Random(7)
    events = []
    for version in range(2, 40):
        op = rng.choice([Op.SCALE, Op.SET, Op.CLEAR, Op.SCALE])
        value = rng.uniform(0.1, 2.0) if op is Op.SCALE else rng.uniform(0, 1e-3)
        events.append(
            ev(version, op, rng.randrange(0, 2000), value, group=rng.choice([None, 0, 1]))
        )
    spec = "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=50)"
    first = LRProgram(spec, [0.1, 0.2], events).rows(2000)
    # A resumed worker builds its program from the log in another order: same sequence.
    again = LRProgram(spec, [0.1, 0.2], list(reversed(events)))
    assert [again.lrs(t) for t in range(1500, 2000)] == first[1500:]


def test_replace_schedule_for_one_group() -> None:
    events = [ev(2, Op.REPLACE_SCHEDULE, 100, group=1, schedule="ConstantLR(factor=0.5)")]
    p = LRProgram("ExponentialLR(gamma=0.99)", [0.1, 0.1], events)
    assert p.lrs(100)[1] == 0.05
    assert p.lrs(100)[0] == pytest.approx(0.1 * 0.99**100, rel=1e-12)


def test_invalid_replacement_spec_is_refused() -> None:
    with pytest.raises(SpecError):
        LRProgram(STEP, [0.1], [ev(2, Op.REPLACE_SCHEDULE, 3, schedule="Nope()")])


def test_momentum_follows_replacement() -> None:
    cyc = "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=10)"
    p = LRProgram(STEP, [0.1], [ev(2, Op.REPLACE_SCHEDULE, 50, schedule=cyc)])
    assert p.momenta(10) is None  # StepLR phase: nothing cycles momentum
    assert p.momenta(55) == build_schedule(cyc, 1).momenta(5)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("ReduceLROnPlateau(patience=2, factor=0.5)", id="min-rel"),
        pytest.param(
            "ReduceLROnPlateau(mode='max', threshold=0.1, threshold_mode='abs', "
            "patience=1, cooldown=2, min_lr=[0.01, 0.004])",
            id="max-abs-cooldown-min-lr",
        ),
        pytest.param("ReduceLROnPlateau(factor=0.1, patience=0, eps=0.002)", id="eps"),
    ],
)
def test_plateau_reductions_match_torch(spec: str) -> None:
    rng = random.Random(3)
    metrics = [1.0 / (1 + 0.1 * i) + rng.uniform(-0.05, 0.05) for i in range(120)]
    metrics += [metrics[-1]] * 40  # a long plateau
    base = [0.1, 0.05]

    # torch: row k = LR after k calls of step(metric).
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b} for b in base]
    opt = torch.optim.SGD(params)
    kwargs = dict(build_schedule(spec, 2).spec.kwargs)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    )
    theirs = [list(map(float, sched.get_last_lr()))]
    for m in metrics:
        opt.step()
        sched.step(m)
        theirs.append(list(map(float, sched.get_last_lr())))

    # lrctl: the tracker decides; each reduction is an event at that step.
    schedule = build_schedule(spec, 2)
    assert isinstance(schedule, ReduceLROnPlateau)
    tracker = schedule.tracker()
    events = [
        ev(k + 2, Op.PLATEAU_REDUCE, k + 1) for k, m in enumerate(metrics) if tracker.observe(m)
    ]
    assert events, "the metric sequence must trigger reductions"
    ours = LRProgram(spec, base, events).rows(len(metrics) + 1)
    assert_rows_close(ours, theirs, spec)


def test_event_at_step_zero_applies() -> None:
    # An override made before any worker reported takes effect at step 0.
    assert LRProgram(STEP, [0.1], [ev(2, Op.SCALE, 0, 0.5)]).lrs(0) == [0.05]


def test_rebuilt_programs_reuse_built_schedules_and_their_caches() -> None:
    # A worker rebuilds its program on every new version; passing the same dict keeps a
    # recurrence schedule's checkpoints, so a new version does not replay from step 0.
    spec = "MultiplicativeLR(lr_lambda='0.9999')"
    built: dict = {}
    first = LRProgram(spec, [0.1], (), built)
    value = first.lrs(50_000)
    second = LRProgram(spec, [0.1], [ev(2, Op.SCALE, 50_001, 0.5)], built)
    assert second.schedule is first.schedule
    assert second.lrs(50_000) == value
    assert second.lrs(50_001) == pytest.approx([0.1 * 0.9999**50_001 * 0.5], rel=1e-9)
