"""Evaluate a recurrence ``x(t) = advance(t, x(t - 1))`` at any step without replaying from 0.

torch's recursive schedulers have no closed form in a few cases (MultiplicativeLR with an
``lr_lambda`` that is not piecewise constant, a ChainedScheduler whose cosine child composes
with others). :class:`Recurrence` keeps the last value it computed and at most
:data:`MAX_CHECKPOINTS` checkpoints, spaced ``stride`` steps apart (the stride doubles
whenever they would exceed that), so:

* a training loop stepping forward costs one ``advance`` per step;
* any step at or before the furthest one computed costs at most ``stride`` advances;
* a step beyond it costs one advance per step in between: :meth:`Recurrence.cost` says how
  many before anything runs, so a caller can refuse it (``LRProgram.lrs`` does, past its
  ``max_cost``) instead of replaying.

Memory stays bounded by ``MAX_CHECKPOINTS`` values however far it runs.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

__all__ = ["MAX_CHECKPOINTS", "Recurrence"]

#: Most checkpoints one recurrence keeps (each holds one float per param group).
MAX_CHECKPOINTS = 256

Values = tuple[float, ...]


class Recurrence:
    """``x(0) = first``; ``x(t) = advance(t, x(t - 1))`` for ``t > 0``; values are floats."""

    def __init__(
        self, first: Values, advance: Callable[[int, Values], Values], stride: int = 256
    ) -> None:
        self._advance = advance
        self._stride = stride
        self._checkpoints: list[array[float]] = [array("d", first)]  # x(k * stride)
        self._last: tuple[int, Values] = (0, tuple(first))

    def _start(self, step: int) -> int:
        """The known step the replay to ``step`` would start from."""
        last_step = self._last[0]
        k = min(step // self._stride, len(self._checkpoints) - 1)
        start = k * self._stride
        return last_step if start <= last_step <= step else start

    def cost(self, step: int) -> int:
        """How many ``advance`` calls :meth:`at` would make for ``step`` now."""
        return step - self._start(step)

    def at(self, step: int) -> Values:
        """Return x(step) for ``step >= 0``."""
        start = self._start(step)
        if start == self._last[0]:
            value = self._last[1]
        else:
            value = tuple(self._checkpoints[start // self._stride])
        advance, stride, checkpoints = self._advance, self._stride, self._checkpoints
        t = start
        while t < step:
            t += 1
            value = advance(t, value)
            if t % stride == 0 and t // stride == len(checkpoints):
                checkpoints.append(array("d", value))
                if len(checkpoints) > MAX_CHECKPOINTS:
                    del checkpoints[1::2]  # keep x(0), x(2 * stride), ...
                    stride = self._stride = 2 * stride
        self._last = (t, value)
        return value
