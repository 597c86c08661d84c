"""Evaluate a recurrence ``x(t) = advance(t, x(t - 1))`` at any step without replaying from 0.

torch's recursive schedulers (MultiplicativeLR, ChainedScheduler of chainable children) have
no closed form in general. :class:`Recurrence` keeps a checkpoint every ``stride`` steps and
the last value it computed, so a training loop stepping forward costs one ``advance`` per
step, and any other step costs at most ``stride`` advances after the first visit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Recurrence"]

V = TypeVar("V")


class Recurrence(Generic[V]):
    """``x(0) = first``; ``x(t) = advance(t, x(t - 1))`` for ``t > 0``."""

    def __init__(self, first: V, advance: Callable[[int, V], V], stride: int = 256) -> None:
        self._advance = advance
        self._stride = stride
        self._checkpoints: list[V] = [first]  # x(k * stride)
        self._last: tuple[int, V] = (0, first)

    def at(self, step: int) -> V:
        """Return x(step) for ``step >= 0``."""
        last_step, value = self._last
        k = min(step // self._stride, len(self._checkpoints) - 1)
        if not k * self._stride <= last_step <= step:
            last_step, value = k * self._stride, self._checkpoints[k]
        advance, stride, checkpoints = self._advance, self._stride, self._checkpoints
        while last_step < step:
            last_step += 1
            value = advance(last_step, value)
            if last_step % stride == 0 and last_step // stride == len(checkpoints):
                checkpoints.append(value)
        self._last = (last_step, value)
        return value
