"""The one pure function: ``lr(group, step) = f(spec, base_lrs, event log, step)``.

:class:`LRProgram` is what the controller (GetJob, metrics, preview) and every worker (each
``step()``) evaluate. It is immutable: a new event log means a new program, built once per
version off the training thread, so ``lrs(step)`` costs a bisect and the schedule's closed
form.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, replace

from lrctl.errors import SpecError
from lrctl.overrides import Event, Op, applied
from lrctl.schedules import ReduceLROnPlateau, Schedule, build_schedule
from lrctl.spec import Spec, parse_spec

__all__ = ["LRProgram", "preview"]


@dataclass(frozen=True)
class _Group:
    """What one param group follows from some step on."""

    schedule: Schedule
    origin: int  # the step at which `schedule` is at its own step 0
    scale: float = 1.0
    held: float | None = None
    plateau_lr: float | None = None  # ReduceLROnPlateau level after reductions


class LRProgram:
    """A job's LR at every step, from its schedule, base LRs and applied events.

    Args:
        schedule: The job's initial spec (text, :class:`Spec` or dict form).
        base_lrs: One base LR per param group (torch's ``initial_lr``).
        events: The job's log; pending events (no ``effective_step``) are ignored.
        schedules: Built schedules to reuse, by canonical spec text, filled as it goes. A
            holder that rebuilds its program on every new version passes the same dict
            each time, so recurrence schedules keep their cached checkpoints instead of
            replaying from step 0.

    Raises:
        SpecError: invalid spec, base LRs or a replacement spec in the log.
    """

    def __init__(self, schedule: str | Spec, base_lrs: Sequence[float],
                 events: Sequence[Event] = (),
                 schedules: dict[str, Schedule] | None = None) -> None:
        self.base_lrs = _check_base_lrs(base_lrs)
        n = len(self.base_lrs)
        built: dict[str, Schedule] = {} if schedules is None else schedules
        self.schedule = _build(schedule, n, built)
        state = [_Group(self.schedule, 0, plateau_lr=b) for b in self.base_lrs]
        self._starts: list[int] = [0]
        self._states: list[tuple[_Group, ...]] = [tuple(state)]
        log = applied(events)
        for event in log:
            step = event.effective_step
            if step is None:  # applied() returns only events with a step
                continue
            targets = range(n) if event.group is None else [event.group]
            for g in targets:
                if g >= n:
                    continue
                state[g] = _apply(state[g], event, step, self.base_lrs[g], built, n, g)
            if self._starts[-1] == step:
                self._states[-1] = tuple(state)
            else:
                self._starts.append(step)
                self._states.append(tuple(state))
        self._simple = not log  # no event applies: the schedule alone

    @property
    def num_groups(self) -> int:
        return len(self.base_lrs)

    def lrs(self, step: int) -> list[float]:
        """Return each group's LR after ``step`` calls of ``step()``."""
        if self._simple:
            return self.schedule.lrs(step, self.base_lrs)
        states = self._states[bisect_right(self._starts, step) - 1]
        out = []
        cache: dict[tuple[int, int], list[float]] = {}
        for g, st in enumerate(states):
            if st.held is not None:
                out.append(st.held)
                continue
            if st.plateau_lr is not None and isinstance(st.schedule, ReduceLROnPlateau):
                out.append(st.plateau_lr * st.scale)
                continue
            key = (id(st.schedule), st.origin)
            if key not in cache:
                cache[key] = st.schedule.lrs(step - st.origin, self.base_lrs)
            out.append(cache[key][g] * st.scale)
        return out

    def momenta(self, step: int) -> list[float] | None:
        """Return each group's momentum/beta1 at ``step``, or None if nothing cycles it.

        A group whose schedule does not cycle momentum gets None in the list.
        """
        if self._simple:
            return self.schedule.momenta(step)
        states = self._states[bisect_right(self._starts, step) - 1]
        if not any(st.schedule.cycles_momentum for st in states):
            return None
        out: list[float] = []
        for g, st in enumerate(states):
            m = st.schedule.momenta(step - st.origin)
            out.append(float("nan") if m is None else m[g])
        return out

    def rows(self, steps: int) -> list[list[float]]:
        """Return rows 0..steps-1 of :meth:`lrs` (preview's table)."""
        return [self.lrs(t) for t in range(steps)]

    @property
    def cycles_momentum(self) -> bool:
        return any(st.schedule.cycles_momentum for states in self._states for st in states)


def _apply(st: _Group, event: Event, step: int, base: float, built: dict[str, Schedule],
           num_groups: int, group: int) -> _Group:
    if event.op is Op.SCALE:
        factor = float(event.value or 0.0)
        if st.held is not None:
            return replace(st, held=st.held * factor)
        return replace(st, scale=st.scale * factor)
    if event.op is Op.SET:
        return replace(st, held=float(event.value or 0.0), scale=1.0)
    if event.op is Op.CLEAR:
        return replace(st, held=None, scale=1.0)
    if event.op is Op.REPLACE_SCHEDULE:
        text = event.schedule or ""
        return _Group(_build(text, num_groups, built), step, plateau_lr=base)
    if event.op is Op.PLATEAU_REDUCE:
        if isinstance(st.schedule, ReduceLROnPlateau) and st.plateau_lr is not None:
            lrs = [st.plateau_lr] * num_groups
            return replace(st, plateau_lr=st.schedule.reduce(lrs, group)[group])
        return st
    raise SpecError(f"unknown event op {event.op!r}")  # pragma: no cover


def _build(spec: str | Spec, num_groups: int, built: dict[str, Schedule]) -> Schedule:
    """Build ``spec`` once per text and group count (schedules are immutable but for caches)."""
    key = f"{num_groups}:{spec if isinstance(spec, str) else parse_spec(spec).to_text()}"
    schedule = built.get(key)
    if schedule is None:
        schedule = built[key] = build_schedule(spec, num_groups)
    return schedule


def _check_base_lrs(base_lrs: Sequence[float]) -> list[float]:
    if isinstance(base_lrs, (str, bytes)) or not isinstance(base_lrs, Sequence):
        raise SpecError(f"base_lrs must be a list of numbers, got {base_lrs!r}")
    if not base_lrs:
        raise SpecError("expected at least one base LR (one per param group), got none")
    out = []
    for i, b in enumerate(base_lrs):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
            raise SpecError(f"base_lrs[{i}] must be a finite number >= 0, got {b!r}")
        out.append(float(b))
    return out


def preview(schedule: str | Spec, base_lrs: Sequence[float], steps: int) -> list[list[float]]:
    """Return ``steps`` rows: row t is ``get_last_lr()`` after t calls of ``step()``.

    Raises:
        SpecError: invalid spec or base LRs, ``steps`` out of range, or a schedule that
            ends before (OneCycleLR's ``total_steps``).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1_000_000:
        raise SpecError(f"steps must be an integer from 1 to 1000000, got {steps!r}")
    program = LRProgram(schedule, base_lrs)
    last = program.schedule.max_step()
    if last is not None and steps - 1 > last:
        raise SpecError(f"{program.schedule.name} is defined for steps 0..{last} "
                        f"(total_steps={last}); asked for {steps} rows")
    return program.rows(steps)
