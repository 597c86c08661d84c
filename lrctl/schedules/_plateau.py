"""ReduceLROnPlateau as a metric-driven schedule.

The schedule itself is constant (the base LRs). Reductions come from the ordered metric
reports: :class:`PlateauTracker` replays torch's ``ReduceLROnPlateau.step(metric)`` decision
(mode, threshold, threshold_mode, patience, cooldown) and says after which report the LR
drops. The controller appends each drop to the job's log as a ``plateau_reduce`` event;
:meth:`ReduceLROnPlateau.reduce` applies it (``new = max(old * factor, min_lr)``, skipped
when ``old - new <= eps``), so the LR at any step follows from the log alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lrctl.schedules._base import Schedule, register

__all__ = ["PlateauTracker", "ReduceLROnPlateau"]


@register
class ReduceLROnPlateau(Schedule):
    """Constant base LRs, reduced by ``factor`` when the metric stops improving."""

    name = "ReduceLROnPlateau"

    def setup(
        self,
        mode: Any = "min",
        factor: Any = 0.1,
        patience: Any = 10,
        threshold: Any = 1e-4,
        threshold_mode: Any = "rel",
        cooldown: Any = 0,
        min_lr: Any = 0,
        eps: Any = 1e-8,
    ) -> None:
        self.mode = self._choice("mode", mode, ("min", "max"))
        self.factor = self._float("factor", factor)
        if self.factor >= 1.0:
            raise self._fail(f"Factor should be < 1.0., got {factor!r}")
        self.patience = self._int("patience", patience)
        self.threshold = self._float("threshold", threshold)
        self.threshold_mode = self._choice("threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = self._int("cooldown", cooldown)
        self.min_lrs = self._per_group("min_lr", min_lr, self._lr)
        self.eps = self._float("eps", eps)

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        return list(base_lrs)

    def reduce(self, lrs: Sequence[float], group: int | None = None) -> list[float]:
        """Apply one reduction to ``lrs`` (every group, or only ``group``)."""
        return [
            old if group is not None and i != group else self.reduce_one(old, i)
            for i, old in enumerate(lrs)
        ]

    def reduce_one(self, old: float, group: int) -> float:
        """Group ``group``'s LR after one reduction from ``old``, as torch decides it."""
        new = max(old * self.factor, self.min_lrs[group])
        return new if old - new > self.eps else old

    def tracker(self) -> PlateauTracker:
        """Return a fresh tracker with this schedule's parameters."""
        return PlateauTracker(
            self.mode, self.threshold, self.threshold_mode, self.patience, self.cooldown
        )


@dataclass
class PlateauTracker:
    """torch's ReduceLROnPlateau bookkeeping; :meth:`observe` says when to reduce."""

    mode: str
    threshold: float
    threshold_mode: str
    patience: int
    cooldown: int
    best: float = field(init=False)
    num_bad_epochs: int = field(default=0, init=False)
    cooldown_counter: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def observe(self, metric: float) -> bool:
        """Consume one ``step(metric)``; return True if the LR is reduced at this step."""
        current = float(metric)
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
            return True
        return False
