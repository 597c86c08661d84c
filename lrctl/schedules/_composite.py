"""SequentialLR and ChainedScheduler: schedules made of other schedules."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from lrctl.schedules._base import REPLAY_STEP_OVERHEAD, Schedule, child_schedules, register
from lrctl.schedules._recurrence import Recurrence

__all__ = ["ChainedScheduler", "SequentialLR"]

# Children that torch cannot compose, or composes with side effects on the optimizer
# (OneCycleLR rewrites every group's initial_lr at construction); refused with a reason.
_NOT_NESTABLE = {
    "ReduceLROnPlateau": "it needs step(metric)",
    "OneCycleLR": "it rewrites the optimizer's initial_lr for the other schedulers",
    "SequentialLR": "nesting composite schedulers is not supported",
    "ChainedScheduler": "nesting composite schedulers is not supported",
}


def _children(parent: Schedule, schedulers: Any) -> list[Schedule]:
    children = child_schedules(parent.name, schedulers, parent.num_groups, parent.limits)
    for i, child in enumerate(children):
        if child.name in _NOT_NESTABLE:
            raise child._fail(
                f"cannot be nested in {parent.name} (schedulers[{i}]): {_NOT_NESTABLE[child.name]}"
            )
    return children


@register
class SequentialLR(Schedule):
    r"""Run ``schedulers[i]`` from ``milestones[i-1]`` on, each restarted at its own step 0.

    .. math:: \eta_t = S_i(t - m_{i-1}),\quad i = |\{m \in \text{milestones}: m \le t\}|
    """

    name = "SequentialLR"

    def setup(self, schedulers: Any, milestones: Any) -> None:
        self.children = _children(self, schedulers)
        if not isinstance(milestones, tuple):
            raise self._fail(f"milestones must be a list of integers, got {milestones!r}")
        self.milestones = [self._int(f"milestones[{i}]", m) for i, m in enumerate(milestones)]
        if len(self.milestones) != len(self.children) - 1:
            raise self._fail(
                "Sequential Schedulers expects number of schedulers provided to be one more "
                "than the number of milestone points, but got number of schedulers "
                f"{len(self.children)} and the number of milestones to be equal to "
                f"{len(self.milestones)}"
            )
        if self.milestones != sorted(self.milestones):
            raise self._fail(f"milestones must be increasing, got {list(self.milestones)}")
        for i, child in enumerate(self.children[1:], start=1):
            if child.name == "MultiplicativeLR":
                raise child._fail(
                    f"cannot follow a milestone in SequentialLR (schedulers[{i}]): torch "
                    "continues it from the previous scheduler's LR; use LambdaLR instead"
                )

    def _active(self, step: int) -> tuple[int, int]:
        i = bisect_right(self.milestones, step)
        return i, step - (self.milestones[i - 1] if i else 0)

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        i, local = self._active(step)
        return self.children[i].lrs(local, base_lrs)

    @property
    def replays(self) -> bool:
        return any(c.replays for c in self.children)

    def cost(self, step: int, base_lrs: Sequence[float]) -> int:
        i, local = self._active(step)
        return self.children[i].cost(local, base_lrs)

    def max_step(self) -> int | None:
        # The first step at which the active child is past its own end.
        starts = [0, *self.milestones]
        ends = [*self.milestones, None]
        for child, start, end in zip(self.children, starts, ends):
            last = child.max_step()
            if last is not None and (end is None or start + last < end - 1):
                return start + last
        return None

    @property
    def cycles_momentum(self) -> bool:
        return any(c.cycles_momentum for c in self.children)

    def momenta(self, step: int) -> list[float] | None:
        if not self.cycles_momentum:
            return None
        i, local = self._active(step)
        if self.children[i].cycles_momentum:
            return self.children[i].momenta(local)
        # The optimizer keeps what the last cycling scheduler wrote: an earlier segment's
        # final step, or else (construction order) the last cycling child's step 0.
        for j in range(i - 1, -1, -1):
            if self.children[j].cycles_momentum:
                start = self.milestones[j - 1] if j else 0
                return self.children[j].momenta(self.milestones[j] - 1 - start)
        last = max(j for j, c in enumerate(self.children) if c.cycles_momentum)
        return self.children[last].momenta(0)


@register
class ChainedScheduler(Schedule):
    r"""Step every scheduler each step, in order, as torch's ChainedScheduler does.

    Chainable children multiply the current LR, closed-form ones overwrite it. The result is
    torch's recursion, which has a closed form in two cases:

    * a child overwrites the LR (LambdaLR, CyclicLR, CosineAnnealingWarmRestarts, ...): the
      last such child's value at ``t``, passed through the children after it for step ``t``
      only;
    * every child multiplies (StepLR, MultiStepLR, ConstantLR, LinearLR, ExponentialLR,
      PolynomialLR, a MultiplicativeLR with a closed form): the base LR times each child's
      factor at ``t``.

    Otherwise (a CosineAnnealingLR composed with other children, a MultiplicativeLR without
    a closed form) torch's recursion runs with cached checkpoints (:class:`Recurrence`).
    """

    name = "ChainedScheduler"

    def setup(self, schedulers: Any) -> None:
        self.children = _children(self, schedulers)
        self._cache: dict[tuple[float, ...], Recurrence] = {}
        overwriting = [i for i, c in enumerate(self.children) if c.overwrites()]
        if overwriting:
            self._mode = "tail"
            self._head = overwriting[-1]
        elif (
            all(c.multiplicative and not c.replays for c in self.children)
            and sum(c.name == "MultiplicativeLR" for c in self.children) <= 1
        ):
            self._mode = "product"
            # The MultiplicativeLR (if any) first: its closed form caches per base LR.
            self._order = sorted(self.children, key=lambda c: c.name != "MultiplicativeLR")
        else:
            self._mode = "recurrence"

    @property
    def replays(self) -> bool:
        return self._mode == "recurrence"

    def max_step(self) -> int | None:
        ends = [m for c in self.children if (m := c.max_step()) is not None]
        return min(ends) if ends else None

    def _advance(self, step: int, lrs: list[float], base: Sequence[float]) -> list[float]:
        for child in self.children:
            lrs = child.step_lrs(step, lrs, base)
        return lrs

    def _recurrence(self, base_lrs: Sequence[float]) -> Recurrence:
        key = tuple(base_lrs)
        rec = self._cache.get(key)
        if rec is None:
            if len(self._cache) >= 4:  # bounded: a job's base LRs do not change
                self._cache.clear()
            rec = Recurrence(
                tuple(self._advance(0, list(key), key)),
                lambda t, prev: tuple(self._advance(t, list(prev), key)),
            )
            self._cache[key] = rec
        return rec

    def cost(self, step: int, base_lrs: Sequence[float]) -> int:
        if self._mode != "recurrence":
            return 0
        steps = self._recurrence(base_lrs).cost(step)
        return steps * (self.num_groups + REPLAY_STEP_OVERHEAD) if steps else 0

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        if self._mode == "tail":
            lrs = self.children[self._head].lrs(step, base_lrs)
            for child in self.children[self._head + 1 :]:
                lrs = child.step_lrs(step, lrs, base_lrs)
            return lrs
        if self._mode == "product":
            lrs = list(base_lrs)
            for child in self._order:
                lrs = child.lrs(step, lrs)
            return lrs
        return list(self._recurrence(base_lrs).at(step))

    @property
    def cycles_momentum(self) -> bool:
        return any(c.cycles_momentum for c in self.children)

    def momenta(self, step: int) -> list[float] | None:
        for child in reversed(self.children):
            if child.cycles_momentum:
                return child.momenta(step)
        return None
