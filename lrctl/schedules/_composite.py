"""SequentialLR and ChainedScheduler: schedules made of other schedules."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from lrctl.schedules._base import Schedule, child_schedules, register
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


def _children(parent: str, schedulers: Any, num_groups: int) -> list[Schedule]:
    children = child_schedules(parent, schedulers, num_groups)
    for i, child in enumerate(children):
        if child.name in _NOT_NESTABLE:
            raise child._fail(f"cannot be nested in {parent} (schedulers[{i}]): "
                              f"{_NOT_NESTABLE[child.name]}")
    return children


@register
class SequentialLR(Schedule):
    r"""Run ``schedulers[i]`` from ``milestones[i-1]`` on, each restarted at its own step 0.

    .. math:: \eta_t = S_i(t - m_{i-1}),\quad i = |\{m \in \text{milestones}: m \le t\}|
    """

    name = "SequentialLR"

    def setup(self, schedulers: Any, milestones: Any) -> None:
        self.children = _children(self.name, schedulers, self.num_groups)
        if not isinstance(milestones, tuple):
            raise self._fail(f"milestones must be a list of integers, got {milestones!r}")
        self.milestones = [self._int(f"milestones[{i}]", m) for i, m in enumerate(milestones)]
        if len(self.milestones) != len(self.children) - 1:
            raise self._fail(
                "Sequential Schedulers expects number of schedulers provided to be one more "
                "than the number of milestone points, but got number of schedulers "
                f"{len(self.children)} and the number of milestones to be equal to "
                f"{len(self.milestones)}")
        if self.milestones != sorted(self.milestones):
            raise self._fail(f"milestones must be increasing, got {list(self.milestones)}")
        for i, child in enumerate(self.children[1:], start=1):
            if child.name == "MultiplicativeLR":
                raise child._fail(
                    f"cannot follow a milestone in SequentialLR (schedulers[{i}]): torch "
                    "continues it from the previous scheduler's LR; use LambdaLR instead")

    def _active(self, step: int) -> tuple[int, int]:
        i = bisect_right(self.milestones, step)
        return i, step - (self.milestones[i - 1] if i else 0)

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        i, local = self._active(step)
        return self.children[i].lrs(local, base_lrs)

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

    Chainable children multiply the current LR, closed-form ones overwrite it. The result
    is torch's recursion, evaluated with cached checkpoints (:class:`Recurrence`).
    """

    name = "ChainedScheduler"

    def setup(self, schedulers: Any) -> None:
        self.children = _children(self.name, schedulers, self.num_groups)
        self._cache: dict[tuple[float, ...], Recurrence[list[float]]] = {}

    def _advance(self, step: int, lrs: list[float], base: Sequence[float]) -> list[float]:
        for child in self.children:
            lrs = child.step_lrs(step, lrs, base)
        return lrs

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        key = tuple(base_lrs)
        rec = self._cache.get(key)
        if rec is None:
            if len(self._cache) > 64:  # bounded: base LRs rarely change
                self._cache.clear()
            rec = Recurrence(self._advance(0, list(key), key),
                             lambda t, prev: self._advance(t, prev, key))
            self._cache[key] = rec
        return list(rec.at(step))

    @property
    def cycles_momentum(self) -> bool:
        return any(c.cycles_momentum for c in self.children)

    def momenta(self, step: int) -> list[float] | None:
        for child in reversed(self.children):
            if child.cycles_momentum:
                return child.momenta(step)
        return None
