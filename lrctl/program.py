"""The one pure function: ``lr(group, step) = f(spec, base_lrs, event log, step)``.

:class:`LRProgram` is what the controller (GetJob, metrics, preview) and every worker (each
``step()``) evaluate. It is immutable: a new event log means a new program, built once per
version off the training thread, so ``lrs(step)`` costs a bisect and the schedule's closed
form.

Bounded evaluation (docs/schedules.md): every schedule has a closed form except a few
recurrences (MultiplicativeLR with an ``lr_lambda`` that is not piecewise constant, a
ChainedScheduler composing a cosine with other children). Those cost one replayed step per
step beyond what they have computed, so :meth:`LRProgram.lrs` refuses, with a
:class:`~lrctl.errors.StepLimitError` and before replaying anything, a step whose
:meth:`LRProgram.cost` exceeds its ``max_cost``; :meth:`LRProgram.check_step` asks the same
question without evaluating. Building a program costs O(events) whatever the number of
param groups; evaluating a step O(groups).
"""

from __future__ import annotations

import math
import weakref
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any, NamedTuple

from lrctl._numeric import EXT_ONE, Ext, ext_mul, mul_ratio, to_float
from lrctl._render import shorten
from lrctl.errors import SpecError, StepLimitError
from lrctl.limits import DEFAULT_LIMITS, Limits
from lrctl.overrides import Event, Op, applied
from lrctl.schedules import (
    MAX_STEP,
    ReduceLROnPlateau,
    Schedule,
    build_schedule,
    check_num_groups,
)
from lrctl.spec import Spec, parse_spec

__all__ = ["DEFAULT_MAX_COST", "LRProgram", "preview"]

#: The replay work :meth:`LRProgram.lrs` accepts by default (:meth:`LRProgram.cost`'s
#: units, 0.1-0.2 µs each): about 25-50 ms on one core. A closed form costs 0; a
#: recurrence stepping forward costs one step; a report of a step far ahead of what a
#: recurrence has computed costs more and is refused. Pass ``max_cost=None`` to evaluate
#: whatever it costs (a worker resuming at a late step does).
DEFAULT_MAX_COST = 250_000


class _State(NamedTuple):
    """What a class of param groups follows since its last own change (see LRProgram)."""

    schedule: Schedule
    origin: int  # the step at which `schedule` is at its own step 0
    scale: float = 1.0
    held: float | None = None
    reductions: int = 0  # ReduceLROnPlateau reductions since `origin`, up to `mark`
    mark: int = 0  # the job-wide layer's index at this state's last change


# A persistent vector: a tuple of tuples of _CHUNK items, so a changed item copies one chunk
# and the outer tuple (O(32 + n / 32)), not all n items.
_CHUNK = 32
_Vec = tuple[tuple[Any, ...], ...]


class _Segment(NamedTuple):
    """What evaluating one timeline entry needs (:meth:`LRProgram._segment`)."""

    entry: int  # the timeline entry
    states: list[_State]  # each class's effective state
    members: _Vec  # group -> class, in chunks
    live: list[tuple[int, Schedule, int]]  # (class, schedule, origin) of schedule-driven classes
    group_classes: list[int]  # each group's class
    cycles: bool  # some class's schedule cycles momentum
    # (schedule, origin, scale) when one schedule drives every group at one scale (the job
    # after a job-wide override): the LRs are its own, scaled, with no per-group lookup.
    uniform: tuple[Schedule, int, float] | None


def _vec(items: Sequence[Any]) -> _Vec:
    return tuple(tuple(items[i : i + _CHUNK]) for i in range(0, len(items), _CHUNK))


def _vec_set(vec: _Vec, i: int, value: Any) -> _Vec:
    k, j = divmod(i, _CHUNK)
    chunk = list(vec[k]) if k < len(vec) else []
    if j < len(chunk):
        chunk[j] = value
    else:
        chunk.append(value)
    out = list(vec)
    if k < len(out):
        out[k] = tuple(chunk)
    else:
        out.append(tuple(chunk))
    return tuple(out)


def _vec_list(vec: _Vec) -> list[Any]:
    return [item for chunk in vec for item in chunk]


class _Layer:
    """The job-wide events, in order: O(1) each, whatever the number of group classes.

    Index 0 is the start. ``scales[i]`` is the product of the job-wide scale factors up to
    event i (extended range), ``plateaus[i]`` the number of job-wide plateau reductions,
    ``reset[i]`` the index of the last job-wide ``set``/``clear`` (-1 if none) and
    ``held[i]`` what it held (None for a clear).
    """

    def __init__(self) -> None:
        self.scales: list[Ext] = [EXT_ONE]
        self.plateaus: list[int] = [0]
        self.reset: list[int] = [-1]
        self.held: list[float | None] = [None]

    @property
    def now(self) -> int:
        return len(self.scales) - 1

    def copy(self, size: int) -> _Layer:
        """The first ``size`` indices, in a layer of their own."""
        out = _Layer()
        out.scales, out.plateaus = self.scales[:size], self.plateaus[:size]
        out.reset, out.held = self.reset[:size], self.held[:size]
        return out

    def trim(self, size: int) -> None:
        for items in (self.scales, self.plateaus, self.reset, self.held):
            del items[size:]

    def push(
        self,
        *,
        factor: float = 1.0,
        plateau: bool = False,
        reset: bool = False,
        held: float | None = None,
    ) -> int:
        self.scales.append(ext_mul(self.scales[-1], factor) if factor != 1.0 else self.scales[-1])
        self.plateaus.append(self.plateaus[-1] + plateau)
        self.reset.append(len(self.reset) if reset else self.reset[-1])
        self.held.append(held if reset else None)
        return self.now

    def effective(self, st: _State, w: int) -> _State:
        """``st`` with the job-wide events after its mark, up to index ``w``, applied."""
        if st.mark == w:
            return st
        r = self.reset[w]
        if r > st.mark:  # a job-wide set/clear since: it replaced held and scale
            held, scale, since = self.held[r], 1.0, r
        else:
            held, scale, since = st.held, st.scale, st.mark
        num, den = self.scales[w], self.scales[since]
        if num != den:
            if held is not None:
                held = mul_ratio(held, num, den)
            else:
                scale = mul_ratio(scale, num, den)
        reductions = st.reductions
        if isinstance(st.schedule, ReduceLROnPlateau):
            reductions += self.plateaus[w] - self.plateaus[st.mark]
        return st._replace(scale=scale, held=held, reductions=reductions, mark=w)


_Entry = tuple[_Vec, int, _Vec, int]  # (classes, count, members, layer index)


class _Trail:
    """The append-only lists a program shares with the programs extended from it.

    A program reads only the items it was built with (its ``lengths``), so an extension
    appending here leaves it unchanged. Once a program was extended, extending it again
    (another branch) reuses the tail only if no program using it is alive; else it copies.
    """

    def __init__(
        self,
        layer: _Layer,
        starts: list[int],
        timeline: list[_Entry],
        seen: list[tuple[_State, int]],
    ) -> None:
        self.layer = layer
        self.starts = starts
        self.timeline = timeline
        self.seen = seen
        self.users: weakref.WeakSet[LRProgram] = weakref.WeakSet()

    def lengths(self) -> tuple[int, int, int]:
        return len(self.starts), len(self.layer.scales), len(self.seen)

    def branch(self, lengths: tuple[int, int, int]) -> _Trail:
        """This trail cut to ``lengths`` to append to: itself (trimmed if no live program
        uses the rest) or a copy."""
        if self.lengths() == lengths:
            return self
        starts, layer, seen = lengths
        if not any(user._lengths > lengths for user in self.users):
            del self.starts[starts:], self.timeline[starts:], self.seen[seen:]
            self.layer.trim(layer)
            return self
        return _Trail(
            self.layer.copy(layer), self.starts[:starts], self.timeline[:starts], self.seen[:seen]
        )


class _Builder:
    """Applies events in order to a program's classes, layer and timeline (see LRProgram).

    Entries before ``floor`` in the timeline belong to programs already built and are never
    changed; later ones may be (several events at one step keep one entry).
    """

    def __init__(
        self,
        trail: _Trail,
        entry: _Entry,
        sizes: list[int],
        n: int,
        built: dict[str, Schedule],
        limits: Limits,
    ) -> None:
        self.trail = trail
        self.classes, self.count, self.members, _ = entry
        self.sizes = sizes
        self.n = n
        self.built = built
        self.limits = limits
        self.floor = len(trail.starts)
        self.applied = 0

    @property
    def entry(self) -> _Entry:
        return self.classes, self.count, self.members, self.trail.layer.now

    def push(self, event: Event, step: int) -> None:
        """Apply ``event``, effective at ``step`` (not before any event pushed so far)."""
        layer, seen, n = self.trail.layer, self.trail.seen, self.n
        group, op = event.group, event.op
        if group is None:
            if op is Op.SCALE and _positive(event.value):
                layer.push(factor=to_float(event.value or 0.0))
            elif op is Op.PLATEAU_REDUCE:
                layer.push(plateau=True)
            elif op in (Op.SET, Op.CLEAR):
                layer.push(reset=True, held=to_float(event.value or 0.0) if op is Op.SET else None)
            else:  # a replacement (or an invalid scale): every class, then one class
                w = layer.push()
                states = [layer.effective(st, w) for st in _vec_list(self.classes)]
                new = [
                    _apply(st, event, step, self.built, n, self.limits)._replace(mark=w)
                    for st in states
                ]
                if op is Op.REPLACE_SCHEDULE:
                    self.classes, self.count = _vec(new[:1]), 1
                    self.members, self.sizes = _vec([0] * n), [n]
                else:
                    self.classes = _vec(new)
                seen.extend((st, step) for st in new[: self.count])
        elif 0 <= group < n:
            w = layer.now
            c = self.members[group // _CHUNK][group % _CHUNK]
            st = layer.effective(self.classes[c // _CHUNK][c % _CHUNK], w)
            new_state = _apply(st, event, step, self.built, n, self.limits)._replace(mark=w)
            if self.sizes[c] == 1:
                self.classes = _vec_set(self.classes, c, new_state)
            else:  # the group leaves its class for a state of its own
                self.sizes[c] -= 1
                self.sizes.append(1)
                self.members = _vec_set(self.members, group, self.count)
                self.classes = _vec_set(self.classes, self.count, new_state)
                self.count += 1
            seen.append((new_state, step))
        else:
            return
        self.applied += 1
        starts, timeline = self.trail.starts, self.trail.timeline
        if starts[-1] == step and len(starts) - 1 >= self.floor:
            timeline[-1] = self.entry
        else:
            starts.append(step)
            timeline.append(self.entry)


class LRProgram:
    """A job's LR at every step, from its schedule, base LRs and applied events.

    Args:
        schedule: The job's initial spec (text, :class:`Spec` or dict form).
        base_lrs: One base LR per param group (torch's ``initial_lr``).
        events: The job's log; pending events (no ``effective_step``) are ignored, as are
            events for a param group the job does not have.
        schedules: Built schedules to reuse, by canonical spec text, filled as it goes. A
            holder that rebuilds its program on every new version passes the same dict
            each time, so recurrence schedules keep their cached checkpoints instead of
            replaying from step 0.
        limits: Spec size, param groups and LR ceiling to enforce (DESIGN's defaults); a
            worker following the controller's state passes :data:`lrctl.limits.NO_LIMITS`.

    Raises:
        SizeLimitError: the spec text or the number of param groups is past ``limits``.
        SpecError: invalid spec, base LRs or a replacement spec in the log.
    """

    def __init__(
        self,
        schedule: str | Spec,
        base_lrs: Sequence[float],
        events: Sequence[Event] = (),
        schedules: dict[str, Schedule] | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.base_lrs = _check_base_lrs(base_lrs, limits)
        n = len(self.base_lrs)
        built: dict[str, Schedule] = {} if schedules is None else schedules
        self.limits = limits
        self.schedule = _build(schedule, n, built, limits)
        # Groups no event told apart share a class (one state). Job-wide events go to one
        # layer (O(1) each); an event for one group gives it a class of its own (O(1) with
        # persistent vectors). From starts[i] on, group g follows
        # layer.effective(classes[members[g]], w) for timeline[i] = (classes, count,
        # members, w), in the trail this program shares with its extensions (extend).
        first = _State(self.schedule, 0)
        entry: _Entry = (_vec([first]), 1, _vec([0] * n), 0)
        trail = _Trail(_Layer(), [0], [entry], [(first, 0)])
        builder = _Builder(trail, entry, [n], n, built, limits)
        builder.floor = 0  # the start entry is this program's own
        last: tuple[int, int] | None = None
        for event in applied(events):
            if event.effective_step is not None:  # applied() returns only events with a step
                builder.push(event, event.effective_step)
                last = (event.effective_step, event.version)
        self._plateau_levels: dict[
            tuple[int, float, float], tuple[ReduceLROnPlateau, list[float]]
        ] = {}
        self._finish(builder, simple=not builder.applied, last=last, seen_from=0)

    def _finish(
        self, builder: _Builder, *, simple: bool, last: tuple[int, int] | None, seen_from: int
    ) -> None:
        """Take the builder's state: the trail's lengths are this program's."""
        trail = self._trail = builder.trail
        self._tip = builder.entry
        self._sizes = builder.sizes
        self._built = builder.built
        self._lengths = trail.lengths()
        self._kept: _Segment | None = None
        trail.users.add(self)
        new = trail.seen[seen_from:]
        old = getattr(self, "_replays", False), getattr(self, "_cycles", False)
        self._replays = old[0] or any(st.schedule.replays for st, _ in new)
        self._cycles = old[1] or any(st.schedule.cycles_momentum for st, _ in new)
        self._bounded = getattr(self, "_bounded", 0) + sum(
            1
            for st, _ in new
            if st.schedule.max_step() is not None and not isinstance(st.schedule, ReduceLROnPlateau)
        )
        self._simple = simple  # no event applies: the schedule alone
        self._last = last
        self._max_step = -1  # _last_step() asks check_step(), exactly
        self._max_step = self._last_step()

    def extend(self, events: Sequence[Event]) -> LRProgram:
        """Return this program with ``events`` taking effect after every event it holds.

        The same program as ``LRProgram(spec, base_lrs, log + events)`` for the log this
        one was built from, in O(len(events)) instead of O(log): the new program shares
        this one's structure, and this one stays valid and unchanged.

        Args:
            events: Each with an ``effective_step``, in the order they apply: sorted by
                ``(effective_step, version)``, none before the last event applied so far
                (:meth:`can_extend`).

        Raises:
            ValueError: an event without an effective step or out of that order (build
                the program from the whole log instead).
            SpecError: an invalid replacement spec.
        """
        if not events:
            return self
        key = self._last
        for event in events:
            if event.effective_step is None:
                raise ValueError(
                    f"expected events with an effective step, got version {event.version} pending"
                )
            nxt = (event.effective_step, event.version)
            if key is not None and nxt < key:
                raise ValueError(f"expected events after (step, version) {key}, got {nxt}")
            key = nxt
        trail = self._trail.branch(self._lengths)
        seen_from = len(trail.seen)
        builder = _Builder(
            trail, self._tip, list(self._sizes), self.num_groups, self._built, self.limits
        )
        for event in events:
            builder.push(event, event.effective_step or 0)
        out = object.__new__(LRProgram)
        out.base_lrs, out.limits, out.schedule = self.base_lrs, self.limits, self.schedule
        out._plateau_levels = self._plateau_levels
        out._replays, out._cycles, out._bounded = self._replays, self._cycles, self._bounded
        out._finish(
            builder, simple=self._simple and not builder.applied, last=key, seen_from=seen_from
        )
        return out

    def can_extend(self, event: Event) -> bool:
        """True when :meth:`extend` takes ``event`` (applied, not before the last one)."""
        step = event.effective_step
        return step is not None and (self._last is None or (step, event.version) >= self._last)

    def _states(self, step: int) -> tuple[list[_State], _Vec]:
        """The classes' effective states at ``step`` and the group -> class vector (callers
        only read them)."""
        segment = self._segment(step)
        return segment.states, segment.members

    def _segment(self, step: int) -> _Segment:
        """What :meth:`lrs` and :meth:`momenta` need at ``step``.

        It is the same for every step of one timeline entry, and the entries below this
        program's lengths never change: the last entry's is kept, so a worker stepping
        through one segment computes it once, not at every step.
        """
        trail = self._trail
        index = bisect_right(trail.starts, step, 0, self._lengths[0]) - 1
        kept = self._kept
        if kept is None or kept.entry != index:
            classes, count, members, w = trail.timeline[index]
            layer = trail.layer
            states = [layer.effective(st, w) for st in _vec_list(classes)[:count]]
            live = [
                (c, st.schedule, st.origin)
                for c, st in enumerate(states)
                if st.held is None and not isinstance(st.schedule, ReduceLROnPlateau)
            ]
            group_classes = _vec_list(members)
            first = states[group_classes[0]]
            uniform = (
                (first.schedule, first.origin, first.scale)
                if len(live) == len(states)
                and all(
                    st.schedule is first.schedule
                    and st.origin == first.origin
                    and st.scale == first.scale
                    for st in states
                )
                else None
            )
            kept = self._kept = _Segment(
                index,
                states,
                members,
                live,
                group_classes,
                any(st.schedule.cycles_momentum for st in states),
                uniform,
            )
        return kept

    @property
    def num_groups(self) -> int:
        return len(self.base_lrs)

    @property
    def max_step(self) -> int:
        """The last step of the program's first run of evaluable steps.

        Every step from 0 to ``max_step`` evaluates (cost aside): ``2**63 - 1`` unless a
        schedule ends earlier (OneCycleLR at ``total_steps``, as torch; a safe expression
        at epoch 1e15).
        """
        return self._max_step

    @property
    def closed_form(self) -> bool:
        """True when every step costs O(1): no schedule in the log needs a replay."""
        return not self._replays

    def cost(self, step: int) -> int:
        """The replay work :meth:`lrs` would do at ``step`` now (0 for closed forms).

        Units: one float update, about 0.1-0.2 µs (see :data:`DEFAULT_MAX_COST`). Cheap:
        nothing is evaluated. It changes as evaluations fill the recurrences' caches.
        """
        if not self._replays or step < 0:
            return 0
        total = 0
        seen: set[tuple[int, int]] = set()
        for st in self._states(step)[0]:
            key = (id(st.schedule), st.origin)
            if st.held is None and st.schedule.replays and key not in seen:
                seen.add(key)
                total += st.schedule.cost(step - st.origin, self.base_lrs)
        return total

    def check_step(self, step: int, max_cost: int | None = DEFAULT_MAX_COST) -> None:
        """Raise :class:`StepLimitError` unless :meth:`lrs` evaluates ``step``.

        The controller's question before evaluating a reported step: an integer from 0 to
        ``2**63 - 1`` that the program's schedules are defined at (OneCycleLR ends at
        ``total_steps``), and whose :meth:`cost` is at most ``max_cost`` (None: no limit).
        Nothing is evaluated.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise StepLimitError(
                f"expected an integer step, got {type(step).__name__} {shorten(repr(step))}"
            )
        if not 0 <= step <= MAX_STEP:
            raise StepLimitError(f"expected a step from 0 to 2**63 - 1, got {shorten(str(step))}")
        if step > self._max_step:
            for st in self._states(step)[0]:
                last = st.schedule.max_step()
                if (
                    st.held is None
                    and not isinstance(st.schedule, ReduceLROnPlateau)
                    and last is not None
                    and step - st.origin > last
                ):
                    raise StepLimitError(st.schedule.past_end(step - st.origin))
        if max_cost is not None and self._replays:
            cost = self.cost(step)
            if cost > max_cost:
                raise StepLimitError(
                    f"step {step} is too far beyond what this job's recurrence has computed "
                    f"(evaluating it would replay work {cost} > {max_cost}, about "
                    f"{cost * 0.15e-6:.1f} s); expected a step near the job's progress"
                )

    def lrs(self, step: int, *, max_cost: int | None = DEFAULT_MAX_COST) -> list[float]:
        """Return each group's LR after ``step`` calls of ``step()``.

        Args:
            step: 0 for the LR at construction.
            max_cost: The most replay work to accept (:meth:`cost`); None for no limit.

        Raises:
            StepLimitError: see :meth:`check_step`.
            ExpressionError: a safe expression fails at this step (division by zero...).
        """
        # A step inside the program's evaluable run, with no replay budget to check, needs
        # nothing more (a training loop's every step); anything else goes through check_step.
        if not (type(step) is int and 0 <= step <= self._max_step) or (
            max_cost is not None and self._replays
        ):
            self.check_step(step, max_cost)
        if self._simple:
            return self.schedule.lrs(step, self.base_lrs)
        segment = self._segment(step)
        if segment.uniform is not None:
            schedule, origin, scale = segment.uniform
            row = schedule.lrs(step - origin, self.base_lrs)
            return row if scale == 1.0 else [v * scale for v in row]
        states = segment.states
        values: list[list[float] | None] = [None] * len(states)
        shared: dict[tuple[int, int], list[float]] = {}  # one evaluation per schedule, origin
        for c, schedule, origin in segment.live:
            key = (id(schedule), origin)
            vals = shared.get(key)
            if vals is None:
                vals = shared[key] = schedule.lrs(step - origin, self.base_lrs)
            values[c] = vals
        out = []
        for g, c in enumerate(segment.group_classes):
            st = states[c]
            if st.held is not None:
                out.append(st.held)
            else:
                vals = values[c]
                if vals is None:  # ReduceLROnPlateau: the reduced level
                    out.append(self._plateau_level(st, g) * st.scale)
                else:
                    out.append(vals[g] * st.scale)
        return out

    def momenta(self, step: int) -> list[float] | None:
        """Return each group's momentum/beta1 at ``step``, or None if nothing cycles it.

        A group whose schedule does not cycle momentum gets NaN in the list.
        """
        if self._simple:
            return self.schedule.momenta(step)
        segment = self._segment(step)
        if not segment.cycles:
            return None
        if segment.uniform is not None:
            schedule, origin, _ = segment.uniform
            return schedule.momenta(step - origin)
        states = segment.states
        out: list[float] = []
        shared: dict[tuple[int, int], list[float] | None] = {}  # one per schedule, origin
        for g, c in enumerate(segment.group_classes):
            st = states[c]
            key = (id(st.schedule), st.origin)
            if key in shared:
                m = shared[key]
            else:
                m = shared[key] = st.schedule.momenta(step - st.origin)
            out.append(math.nan if m is None else m[g])
        return out

    def rows(self, steps: int) -> list[list[float]]:
        """Return rows 0..steps-1 of :meth:`lrs` (preview's table)."""
        return [self.lrs(t) for t in range(steps)]

    @property
    def cycles_momentum(self) -> bool:
        return self._cycles

    def _plateau_level(self, st: _State, group: int) -> float:
        """ReduceLROnPlateau's LR after ``st.reductions`` reductions, as torch applies them."""
        plateau = st.schedule
        if not isinstance(plateau, ReduceLROnPlateau):  # pragma: no cover - callers check
            raise TypeError(type(plateau).__name__)
        base = self.base_lrs[group]
        # Groups with the same base and min_lr share the sequence of levels.
        key = (id(plateau), base, plateau.min_lrs[group])
        found = self._plateau_levels.get(key)
        if found is None or found[0] is not plateau:  # extensions share the cache
            found = self._plateau_levels[key] = (plateau, [base])
        levels = found[1]
        while len(levels) <= st.reductions:
            old = levels[-1]
            new = plateau.reduce_one(old, group)
            if new == old:  # torch's rule never moves it again: stop here
                return old
            levels.append(new)
        return levels[st.reductions]

    def _last_step(self) -> int:
        """Every step up to this one evaluates (see :attr:`max_step`).

        A state whose schedule ends (OneCycleLR) limits the program from its end on, unless
        a later event replaced or held it first: each such candidate step is checked
        exactly, the first 64 of them (past those, the answer stays conservative).
        """
        if not self._bounded:
            return MAX_STEP
        seen = self._trail.seen[: self._lengths[2]]
        candidates = sorted(
            {
                max(start, st.origin + last + 1)
                for st, start in seen
                if (last := st.schedule.max_step()) is not None
                and not isinstance(st.schedule, ReduceLROnPlateau)
            }
        )
        for checked, step in enumerate(c for c in candidates if c <= MAX_STEP):
            if checked == 64:
                return step - 1
            try:
                self.check_step(step, None)
            except StepLimitError:
                return step - 1
        return MAX_STEP


def _apply(
    st: _State, event: Event, step: int, built: dict[str, Schedule], num_groups: int, limits: Limits
) -> _State:
    if event.op is Op.SCALE:
        factor = to_float(event.value or 0.0)
        if st.held is not None:
            return st._replace(held=st.held * factor)
        return st._replace(scale=st.scale * factor)
    if event.op is Op.SET:
        return st._replace(held=to_float(event.value or 0.0), scale=1.0)
    if event.op is Op.CLEAR:
        return st._replace(held=None, scale=1.0)
    if event.op is Op.REPLACE_SCHEDULE:
        return _State(_build(event.schedule or "", num_groups, built, limits), step)
    if event.op is Op.PLATEAU_REDUCE:
        if isinstance(st.schedule, ReduceLROnPlateau):
            return st._replace(reductions=st.reductions + 1)
        return st
    raise SpecError(f"unknown event op {event.op!r}")  # pragma: no cover


def _build(
    spec: str | Spec, num_groups: int, built: dict[str, Schedule], limits: Limits
) -> Schedule:
    """Build ``spec`` once per text and group count (schedules are immutable but for caches)."""
    text = (
        spec
        if isinstance(spec, str)
        else parse_spec(spec, max_bytes=limits.max_spec_bytes).to_text()
    )
    key = f"{num_groups}:{text}"
    schedule = built.get(key)
    if schedule is None:
        schedule = build_schedule(spec, num_groups, limits=limits)
        built[key] = schedule
    return schedule


def _positive(value: float | None) -> bool:
    """A scale factor the job-wide layer takes: finite and > 0 (anything else is applied
    to every class, as it always was)."""
    return value is not None and not isinstance(value, bool) and 0 < value < math.inf


def _check_base_lrs(base_lrs: Sequence[float], limits: Limits) -> list[float]:
    if isinstance(base_lrs, (str, bytes)) or not isinstance(base_lrs, Sequence):
        raise SpecError(f"base_lrs must be a list of numbers, got {type(base_lrs).__name__}")
    if not base_lrs:
        raise SpecError("expected at least one base LR (one per param group), got none")
    check_num_groups(len(base_lrs), limits)  # before looking at each of them
    out = []
    ceiling = limits.max_lr
    for i, b in enumerate(base_lrs):
        value = math.nan if isinstance(b, bool) or not isinstance(b, (int, float)) else to_float(b)
        if not 0 <= value <= ceiling:  # also refuses nan
            raise SpecError(
                f"base_lrs[{i}] must be a finite number >= 0 and <= {ceiling:g}, "
                f"got {shorten(repr(b))}"
            )
        out.append(value)
    return out


def preview(
    schedule: str | Spec, base_lrs: Sequence[float], steps: int, *, limits: Limits = DEFAULT_LIMITS
) -> list[list[float]]:
    """Return ``steps`` rows: row t is ``get_last_lr()`` after t calls of ``step()``.

    Raises:
        SizeLimitError: the spec text or the number of groups is past ``limits``.
        SpecError: invalid spec or base LRs, ``steps`` out of range, or a schedule that
            ends before (OneCycleLR's ``total_steps``).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1_000_000:
        raise SpecError(f"steps must be an integer from 1 to 1000000, got {shorten(repr(steps))}")
    program = LRProgram(schedule, base_lrs, limits=limits)
    last = program.max_step
    if steps - 1 > last:
        raise StepLimitError(
            f"{program.schedule.name} is defined for steps 0..{last} "
            f"(total_steps={last}); asked for {steps} rows"
        )
    return program.rows(steps)
