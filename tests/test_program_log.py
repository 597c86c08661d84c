"""LRProgram against a plain per-group model of the override log, on random logs.

LRProgram keeps groups that no event told apart in one shared state (so a job-wide event
costs O(distinct states), not O(groups)); this checks it against the obvious model, which
replays every event on every group, at every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrctl.overrides import Event, Op, applied
from lrctl.program import LRProgram
from lrctl.schedules import ReduceLROnPlateau, Schedule, build_schedule

SPECS = [
    "StepLR(step_size=7, gamma=0.5)",
    "CosineAnnealingLR(T_max=20, eta_min=0.001)",
    "ReduceLROnPlateau(factor=0.5, min_lr=[0.01, 0.0, 0.002], eps=0.001)",
    "MultiplicativeLR(lr_lambda=['0.99', '1 - 0.001 * (epoch % 3)', '0.9'])",
]
BASE = [0.1, 0.05, 0.02]


@dataclass
class _Model:
    schedule: Schedule
    origin: int
    base: float
    scale: float = 1.0
    held: float | None = None
    plateau: float = 0.0

    def apply(self, event: Event, group: int, step: int) -> None:
        if event.op is Op.SCALE:
            if self.held is not None:
                self.held *= event.value or 0.0
            else:
                self.scale *= event.value or 0.0
        elif event.op is Op.SET:
            self.held, self.scale = event.value, 1.0
        elif event.op is Op.CLEAR:
            self.held, self.scale = None, 1.0
        elif event.op is Op.REPLACE_SCHEDULE:
            self.schedule = build_schedule(event.schedule or "", len(BASE))
            self.origin, self.scale, self.held, self.plateau = step, 1.0, None, self.base
        elif event.op is Op.PLATEAU_REDUCE and isinstance(self.schedule, ReduceLROnPlateau):
            self.plateau = self.schedule.reduce_one(self.plateau, group)

    def lr(self, step: int, group: int) -> float:
        if self.held is not None:
            return self.held
        if isinstance(self.schedule, ReduceLROnPlateau):
            return self.plateau * self.scale
        return self.schedule.lrs(step - self.origin, BASE)[group] * self.scale


def model_rows(spec: str, events: list[Event], steps: int) -> list[list[float]]:
    first = build_schedule(spec, len(BASE))
    groups = [_Model(first, 0, b, plateau=b) for b in BASE]
    log = applied(events)
    rows, i = [], 0
    for t in range(steps):
        while i < len(log) and log[i].effective_step == t:
            e = log[i]
            for g in range(len(BASE)) if e.group is None else [e.group]:
                groups[g].apply(e, g, t)
            i += 1
        rows.append([m.lr(t, g) for g, m in enumerate(groups)])
    return rows


@st.composite
def logs(draw: st.DrawFn) -> list[Event]:
    events = []
    for version in range(2, 2 + draw(st.integers(0, 25))):
        op = draw(st.sampled_from(list(Op)))
        value: Any = None
        schedule = None
        if op is Op.SCALE:
            value = draw(st.sampled_from([0.5, 2.0, 0.1, 1e300]))
        elif op is Op.SET:
            value = draw(st.sampled_from([0.0, 1e-3, 0.2]))
        elif op is Op.REPLACE_SCHEDULE:
            schedule = draw(st.sampled_from(SPECS))
        events.append(
            Event(
                version,
                op,
                value,
                schedule,
                draw(st.sampled_from([None, None, 0, 1, 2])),
                effective_step=draw(st.integers(0, 60)),
            )
        )
    return events


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from(SPECS), events=logs())
def test_program_matches_the_per_group_model(spec: str, events: list[Event]) -> None:
    steps = 70
    expected = model_rows(spec, events, steps)
    program = LRProgram(spec, BASE, events)
    for t in range(steps):
        ours = program.lrs(t)
        for a, b in zip(ours, expected[t]):
            assert a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300), (
                t,
                ours,
                expected[t],
            )
