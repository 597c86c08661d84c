"""LRProgram.extend: the same program as a rebuild over the whole log, without the rebuild."""

from __future__ import annotations

import gc
import random

import pytest

from lrctl.overrides import Event, Op
from lrctl.program import LRProgram

SPECS = [
    pytest.param("StepLR(step_size=7, gamma=0.5)", id="StepLR"),
    pytest.param("CosineAnnealingLR(T_max=50, eta_min=0.001)", id="cosine"),
    pytest.param("OneCycleLR(max_lr=0.5, total_steps=400)", id="OneCycleLR-bounded"),
    pytest.param("ReduceLROnPlateau(factor=0.5, patience=1)", id="plateau"),
]
BASE = [0.1, 0.05, 0.2]
STEPS = [0, 1, 5, 9, 17, 33, 60, 99, 150, 230, 399]


def random_log(rng: random.Random, count: int, plateau: bool) -> list[Event]:
    """``count`` applied events in apply order: every op, job-wide and per group."""
    events, step = [], 0
    for i in range(count):
        step += rng.choice([0, 0, 1, 3, 10])
        op = rng.choice(
            [Op.SCALE, Op.SCALE, Op.SET, Op.CLEAR, Op.REPLACE_SCHEDULE]
            + ([Op.PLATEAU_REDUCE] * 2 if plateau else [])
        )
        group = None if op is Op.PLATEAU_REDUCE or rng.random() < 0.5 else rng.randrange(3)
        value = {Op.SCALE: rng.choice([0.5, 2.0, 0.9]), Op.SET: rng.choice([0.01, 0.3])}.get(op)
        schedule = (
            rng.choice(["ExponentialLR(gamma=0.99)", "ConstantLR(factor=0.5)"])
            if op is Op.REPLACE_SCHEDULE
            else None
        )
        if op is Op.REPLACE_SCHEDULE and group is not None and rng.random() < 0.5:
            group = None
        events.append(
            Event(
                version=2 + i,
                op=op,
                value=value,
                schedule=schedule,
                group=group,
                effective_step=step,
            )
        )
    return events


def same(a: LRProgram, b: LRProgram) -> None:
    assert a.max_step == b.max_step
    assert a.closed_form == b.closed_form and a.cycles_momentum == b.cycles_momentum
    for step in STEPS:
        if step <= a.max_step:
            assert a.lrs(step) == b.lrs(step), step  # bit for bit
            assert a.momenta(step) == b.momenta(step), step


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("seed", range(6))
def test_extend_equals_rebuild(spec: str, seed: int) -> None:
    rng = random.Random(seed)
    log = random_log(rng, 40, plateau="Plateau" in spec)
    program = LRProgram(spec, BASE, log[:5])
    at = 5
    while at < len(log):
        take = rng.choice([1, 1, 2, 5])
        program = program.extend(log[at : at + take])
        at += take
        same(program, LRProgram(spec, BASE, log[:at]))


def test_extending_twice_from_one_program_keeps_every_branch_right() -> None:
    rng = random.Random(7)
    log = random_log(rng, 30, plateau=False)
    spec = "StepLR(step_size=7, gamma=0.5)"
    base = LRProgram(spec, BASE, log[:10])
    before = [base.lrs(s) for s in STEPS]
    left = base.extend(log[10:20])
    other = [
        Event(
            version=100 + i,
            op=Op.SCALE,
            value=0.25,
            group=i % 3,
            effective_step=log[9].effective_step + 1 + i,
        )
        for i in range(5)
    ]
    right = base.extend(other)  # `left` is alive: the trail is copied, not overwritten
    same(left, LRProgram(spec, BASE, log[:20]))
    same(right, LRProgram(spec, BASE, [*log[:10], *other]))
    assert [base.lrs(s) for s in STEPS] == before
    del left, right
    gc.collect()
    again = base.extend(log[10:30])  # no live branch beyond `base`: its tail is reused
    same(again, LRProgram(spec, BASE, log[:30]))
    assert [base.lrs(s) for s in STEPS] == before


def test_extend_refuses_events_out_of_order_or_pending() -> None:
    log = [Event(version=2, op=Op.SCALE, value=0.5, effective_step=10)]
    program = LRProgram("StepLR(step_size=7, gamma=0.5)", BASE, log)
    earlier = Event(version=3, op=Op.SCALE, value=0.5, effective_step=9)
    assert not program.can_extend(earlier)
    with pytest.raises(ValueError, match="after"):
        program.extend([earlier])
    pending = Event(version=3, op=Op.SCALE, value=0.5)
    assert not program.can_extend(pending)
    with pytest.raises(ValueError, match="pending"):
        program.extend([pending])
    same_step = Event(version=3, op=Op.SET, value=0.01, effective_step=10)
    assert program.can_extend(same_step)
    same(
        program.extend([same_step]),
        LRProgram("StepLR(step_size=7, gamma=0.5)", BASE, [*log, same_step]),
    )
