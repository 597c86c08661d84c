"""Schedules large-model trainers use beyond torch's family.

Parameters and formulas follow Hugging Face transformers' ``optimization.py``
(``get_cosine_with_min_lr_schedule_with_warmup``, ``get_wsd_schedule``,
``get_inverse_sqrt_schedule``), which Megatron-LM's ``cosine``/``WSD``/``inverse-square-root``
styles match up to naming. Each is ``base_lr * factor(t)``, i.e. a LambdaLR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lrctl._numeric import cos, sqrt
from lrctl.schedules._base import Schedule, register

__all__ = ["InverseSqrtLR", "WarmupCosineLR", "WarmupStableDecayLR"]


class _Factor(Schedule):
    def factor(self, step: int) -> float:
        raise NotImplementedError

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        f = self.factor(step)
        return [b * f for b in base_lrs]


@register
class WarmupCosineLR(_Factor):
    r"""Linear warmup from 0, then cosine down to ``min_lr_rate * base_lr``.

    .. math:: f(t) = \frac{t}{w} \text{ if } t < w, \text{ else }
              r + (1 - r)\cdot\frac{1}{2}\left(1 + \cos(2\pi c\, p)\right),\;
              p = \frac{t - w}{\max(1, T - w)}

    ``num_warmup_steps`` (w), ``num_training_steps`` (T), ``num_cycles`` (c, 0.5 = one half
    cosine), ``min_lr_rate`` (r). As HF's ``get_cosine_with_min_lr_schedule_with_warmup``
    (with ``min_lr_rate=0``: ``get_cosine_schedule_with_warmup``).
    """

    name = "WarmupCosineLR"

    def setup(
        self,
        num_warmup_steps: Any,
        num_training_steps: Any,
        num_cycles: Any = 0.5,
        min_lr_rate: Any = 0.0,
    ) -> None:
        self.warmup = self._int("num_warmup_steps", num_warmup_steps)
        self.total = self._int("num_training_steps", num_training_steps, minimum=1)
        self.cycles = self._float("num_cycles", num_cycles)
        self.min_rate = self._float("min_lr_rate", min_lr_rate, maximum=1.0)

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return float(step) / float(max(1, self.warmup))
        progress = float(step - self.warmup) / float(max(1, self.total - self.warmup))
        f = 0.5 * (1.0 + cos(math.pi * self.cycles * 2.0 * progress))
        return max(0.0, f * (1 - self.min_rate) + self.min_rate)


@register
class WarmupStableDecayLR(_Factor):
    r"""Warmup-stable-decay (WSD, https://arxiv.org/abs/2404.06395), as HF's ``get_wsd_schedule``.

    Warmup over ``num_warmup_steps`` (``warmup_type`` linear, cosine or 1-sqrt) from
    ``min_lr_ratio``, hold 1.0 for ``num_stable_steps`` (default: what
    ``num_training_steps`` leaves), decay over ``num_decay_steps`` (``decay_type``) to
    ``min_lr_ratio``, then stay there.
    """

    name = "WarmupStableDecayLR"

    def setup(
        self,
        num_warmup_steps: Any,
        num_decay_steps: Any,
        num_training_steps: Any = None,
        num_stable_steps: Any = None,
        warmup_type: Any = "linear",
        decay_type: Any = "cosine",
        min_lr_ratio: Any = 0.0,
        num_cycles: Any = 0.5,
    ) -> None:
        self.warmup = self._int("num_warmup_steps", num_warmup_steps)
        self.decay = self._int("num_decay_steps", num_decay_steps)
        if num_stable_steps is None:
            if num_training_steps is None:
                raise self._fail(
                    "Either num_training_steps or num_stable_steps must be specified, got neither"
                )
            total = self._int("num_training_steps", num_training_steps)
            if total < self.warmup + self.decay:
                raise self._fail(
                    f"num_training_steps ({total}) must be >= num_warmup_steps + "
                    f"num_decay_steps ({self.warmup + self.decay})"
                )
            self.stable = total - self.warmup - self.decay
        else:
            self.stable = self._int("num_stable_steps", num_stable_steps)
        kinds = ("linear", "cosine", "1-sqrt")
        self.warmup_type = self._choice("warmup_type", warmup_type, kinds)
        self.decay_type = self._choice("decay_type", decay_type, kinds)
        self.min_ratio = self._float("min_lr_ratio", min_lr_ratio, maximum=1.0)
        self.cycles = self._float("num_cycles", num_cycles)

    def factor(self, step: int) -> float:
        r = self.min_ratio
        if step < self.warmup:
            p = float(step) / float(max(1, self.warmup))
            if self.warmup_type == "linear":
                f = p
            elif self.warmup_type == "cosine":
                f = 0.5 * (1.0 - cos(math.pi * p))
            else:
                f = 1.0 - sqrt(1.0 - p)
            return max(0.0, f * (1.0 - r) + r)
        if step < self.warmup + self.stable:
            return 1.0
        if step < self.warmup + self.stable + self.decay:
            p = float(step - self.warmup - self.stable) / float(max(1, self.decay))
            if self.decay_type == "linear":
                f = 1.0 - p
            elif self.decay_type == "cosine":
                f = 0.5 * (1.0 + cos(math.pi * self.cycles * 2.0 * p))
            else:
                f = 1.0 - sqrt(p)
            return max(0.0, f * (1.0 - r) + r)
        return r


@register
class InverseSqrtLR(_Factor):
    r"""Linear warmup, then decay with the inverse square root of the step.

    .. math:: f(t) = \frac{t}{w} \text{ if } t < w \text{ else } \sqrt{\frac{\tau}{t - w + \tau}}

    ``timescale`` (tau) defaults to ``num_warmup_steps`` or 10,000, as HF's
    ``get_inverse_sqrt_schedule``.
    """

    name = "InverseSqrtLR"

    def setup(self, num_warmup_steps: Any, timescale: Any = None) -> None:
        self.warmup = self._int("num_warmup_steps", num_warmup_steps)
        if timescale is None:
            timescale = self.warmup or 10_000
        self.timescale = self._int("timescale", timescale, minimum=1)

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return float(step) / float(max(1, self.warmup))
        shift = self.timescale - self.warmup
        return 1.0 / sqrt((step + shift) / self.timescale)
