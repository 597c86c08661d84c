"""Cosine annealing, warm restarts, CyclicLR and OneCycleLR, in closed form."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lrctl._numeric import cos, div, power
from lrctl.errors import StepLimitError
from lrctl.expressions import Expression, compile_expression
from lrctl.schedules._base import EXPRESSION_MAX_STEP, Schedule, register

__all__ = ["CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR"]


@register
class CosineAnnealingLR(Schedule):
    r"""Cosine from the base LR down to ``eta_min`` over ``T_max`` steps, then back up.

    .. math:: \eta_t = \eta_{min} + \frac{1}{2}(\eta_0 - \eta_{min})
              \left(1 + \cos\frac{t\pi}{T_{max}}\right)

    torch computes this recursively; the closed form above differs from its recursion by
    under 1e-12 relative over 2,000 steps (docs/parity.md has the measured figures).
    """

    name = "CosineAnnealingLR"

    def setup(self, T_max: Any, eta_min: Any = 0.0) -> None:
        self.T_max = self._int("T_max", T_max, minimum=1)
        self.eta_min = self._lr("eta_min", eta_min)

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        c = (1 + cos(math.pi * step / self.T_max)) / 2
        e = self.eta_min
        return [e + (b - e) * c for b in base_lrs]

    def step_lrs(self, step: int, lrs: Sequence[float], base_lrs: Sequence[float]) -> list[float]:
        # torch's recursive get_lr, for composition inside ChainedScheduler.
        e, n = self.eta_min, self.T_max
        if step == 0:
            return list(lrs)
        if (step - 1 - n) % (2 * n) == 0:
            return [lr + (b - e) * (1 - cos(math.pi / n)) / 2 for lr, b in zip(lrs, base_lrs)]
        # At huge steps 1 + cos(...) can round to exactly 0 where no re-anchor happens:
        # torch divides by zero there; this gives the IEEE value instead of raising.
        r = div(1 + cos(math.pi * step / n), 1 + cos(math.pi * (step - 1) / n))
        return [r * (lr - e) + e for lr in lrs]


@register
class CosineAnnealingWarmRestarts(Schedule):
    r"""SGDR: cosine annealing restarted every ``T_i`` steps, ``T_i = T_0 \cdot T_{mult}^i``.

    .. math:: \eta_t = \eta_{min} + \frac{1}{2}(\eta_0 - \eta_{min})
              \left(1 + \cos\frac{T_{cur}\pi}{T_i}\right)

    Example, ``T_0=50, T_mult=2``: restarts at steps 50, 150, 350, ...
    """

    name = "CosineAnnealingWarmRestarts"

    def setup(self, T_0: Any, T_mult: Any = 1, eta_min: Any = 0.0) -> None:
        self.T_0 = self._int("T_0", T_0, minimum=1)
        self.T_mult = self._int("T_mult", T_mult, minimum=1)
        self.eta_min = self._lr("eta_min", eta_min)
        self._cycle = (0, self.T_0)  # (start, length) of the last cycle found

    def position(self, step: int) -> tuple[int, int]:
        """Return ``(T_cur, T_i)`` at ``step``."""
        t0, m = self.T_0, self.T_mult
        if m == 1:
            return step % t0, t0
        # Steps mostly advance by one: search on from the last cycle found, not from 0.
        start, length = self._cycle
        if step < start:
            start, length = 0, t0
        while step >= start + length:
            start += length
            length *= m
        self._cycle = (start, length)
        return step - start, length

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        t_cur, t_i = self.position(step)
        c = (1 + cos(math.pi * t_cur / t_i)) / 2
        e = self.eta_min
        return [e + (b - e) * c for b in base_lrs]


class _MomentumCycling(Schedule):
    """Shared handling of ``cycle_momentum``, ``base_momentum`` and ``max_momentum``.

    As torch: any finite momentum is accepted (torch's own tests cycle between 1 and 5;
    only the optimizer decides what momentum is valid), and both are ignored, unchecked,
    when ``cycle_momentum=False``.
    """

    def _momentum_args(self, cycle_momentum: Any, base_momentum: Any, max_momentum: Any) -> None:
        self.cycle_momentum = self._bool("cycle_momentum", cycle_momentum)
        self.base_momentums: list[float] = []
        self.max_momentums: list[float] = []
        if not self.cycle_momentum:
            return
        self.base_momentums = self._per_group(
            "base_momentum", base_momentum, lambda k, v: self._float(k, v, minimum=None)
        )
        self.max_momentums = self._per_group(
            "max_momentum", max_momentum, lambda k, v: self._float(k, v, minimum=None)
        )

    @property
    def cycles_momentum(self) -> bool:
        return self.cycle_momentum


@register
class CyclicLR(_MomentumCycling):
    r"""Cyclical LR between ``base_lr`` and ``max_lr`` (Smith, https://arxiv.org/abs/1506.01186).

    .. math:: \text{cycle} = \lfloor 1 + t / (up + down) \rfloor,\quad
              x = 1 + t/(up + down) - \text{cycle}

    Up-phase while ``x <= up / (up + down)``. ``triangular2`` halves the amplitude every
    cycle; ``exp_range`` scales it by ``gamma ** t``. ``scale_fn`` may be a safe expression
    in which ``epoch`` (alias ``step``) stands for torch's ``x`` (the cycle number when
    ``scale_mode='cycle'``, the step when ``'iterations'``). Momentum cycles inversely
    between ``max_momentum`` and ``base_momentum`` when ``cycle_momentum`` (the default).
    """

    name = "CyclicLR"

    _last_phase: tuple[int | None, tuple[float, float]] = (None, (0.0, 0.0))

    def setup(
        self,
        base_lr: Any,
        max_lr: Any,
        step_size_up: Any = 2000,
        step_size_down: Any = None,
        mode: Any = "triangular",
        gamma: Any = 1.0,
        scale_fn: Any = None,
        scale_mode: Any = "cycle",
        cycle_momentum: Any = True,
        base_momentum: Any = 0.8,
        max_momentum: Any = 0.9,
    ) -> None:
        self.base_lrs = self._per_group("base_lr", base_lr, self._lr)
        self.max_lrs = self._per_group("max_lr", max_lr, self._lr)
        up = float(self._int("step_size_up", step_size_up, minimum=1))
        down = (
            up
            if step_size_down is None
            else float(self._int("step_size_down", step_size_down, minimum=1))
        )
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        self.gamma = self._float("gamma", gamma)
        self.scale_fn: Expression | None = None
        if scale_fn is not None:
            if not isinstance(scale_fn, str):
                raise self._fail(
                    f"scale_fn must be an expression string such as "
                    f"'0.5 ** (epoch - 1)', got {scale_fn!r}"
                )
            self.scale_fn = compile_expression(scale_fn)
            self.mode = str(mode)
            self.scale_mode = self._choice("scale_mode", scale_mode, ("cycle", "iterations"))
        else:
            self.mode = self._choice("mode", mode, ("triangular", "triangular2", "exp_range"))
            # As torch's _init_scale_fn: built-in modes fix their scale_mode.
            self._choice("scale_mode", scale_mode, ("cycle", "iterations"))
            self.scale_mode = "iterations" if self.mode == "exp_range" else "cycle"
        self._momentum_args(cycle_momentum, base_momentum, max_momentum)

    def max_step(self) -> int | None:
        return EXPRESSION_MAX_STEP if self.scale_fn is not None else None

    def _scale(self, x: float) -> float:
        if self.scale_fn is not None:
            return self.scale_fn(x)
        if self.mode == "triangular":
            return 1.0
        # torch's 1 / 2.0 ** (x - 1) and gamma ** x raise OverflowError past the float
        # range; here the amplitude goes to 0.0 (or inf) as a tensor's would.
        if self.mode == "triangular2":
            return 1 / power(2.0, x - 1)
        return power(self.gamma, x)

    def _phase(self, step: int) -> tuple[float, float]:
        """Return torch's ``(scale_factor, scale_fn(...))`` at ``step``."""
        last = self._last_phase  # lrs(t) then momenta(t): computed once
        if last[0] == step:
            return last[1]
        cycle = math.floor(1 + step / self.total_size)
        x = 1.0 + step / self.total_size - cycle
        if x <= self.step_ratio:
            scale_factor = x / self.step_ratio
        else:
            scale_factor = (x - 1) / (self.step_ratio - 1)
        scale = self._scale(cycle if self.scale_mode == "cycle" else step)
        self._last_phase = (step, (scale_factor, scale))
        return scale_factor, scale

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        f, s = self._phase(step)
        return [b + (m - b) * f * s for b, m in zip(self.base_lrs, self.max_lrs)]

    def momenta(self, step: int) -> list[float] | None:
        if not self.cycle_momentum:
            return None
        f, s = self._phase(step)
        return [m - (m - b) * f * s for b, m in zip(self.base_momentums, self.max_momentums)]


@register
class OneCycleLR(_MomentumCycling):
    r"""1cycle policy (Smith & Topin, https://arxiv.org/abs/1708.07120).

    Warm up from ``max_lr / div_factor`` to ``max_lr`` over ``pct_start`` of
    ``total_steps``, then anneal to ``max_lr / div_factor / final_div_factor``
    (``three_phase``: back to the initial LR first). The optimizer's own LRs are ignored,
    as in torch. Stepping past ``total_steps`` raises, as in torch.
    """

    name = "OneCycleLR"

    _last_where: tuple[int | None, tuple[tuple[float, int, int, int, int], float]] = (
        None,
        ((0.0, 0, 0, 0, 0), 0.0),
    )

    def setup(
        self,
        max_lr: Any,
        total_steps: Any = None,
        epochs: Any = None,
        steps_per_epoch: Any = None,
        pct_start: Any = 0.3,
        anneal_strategy: Any = "cos",
        cycle_momentum: Any = True,
        base_momentum: Any = 0.85,
        max_momentum: Any = 0.95,
        div_factor: Any = 25.0,
        final_div_factor: Any = 1e4,
        three_phase: Any = False,
    ) -> None:
        if total_steps is not None:
            self.total_steps = self._int("total_steps", total_steps, minimum=1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = self._int("epochs", epochs, minimum=1) * self._int(
                "steps_per_epoch", steps_per_epoch, minimum=1
            )
        else:
            raise self._fail("You must define either total_steps OR (epochs AND steps_per_epoch)")
        pct = self._float("pct_start", pct_start, maximum=1.0)
        self.anneal = self._choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
        self.div_factor = self._float("div_factor", div_factor, strict_min=True)
        self.final_div_factor = self._float("final_div_factor", final_div_factor, strict_min=True)
        self.three_phase = self._bool("three_phase", three_phase)
        max_lrs = self._per_group("max_lr", max_lr, self._lr)
        self.max_lrs = max_lrs
        self.initial_lrs = [m / self.div_factor for m in max_lrs]
        self.min_lrs = [i / self.final_div_factor for i in self.initial_lrs]
        self._momentum_args(cycle_momentum, base_momentum, max_momentum)
        n = self.total_steps
        # (end_step, lr start, lr end, momentum start, momentum end) as torch's phases,
        # with values indexing [initial, max, min] and [max_momentum, base_momentum].
        if self.three_phase:
            self.phases = [
                (float(pct * n) - 1, 0, 1, 0, 1),
                (float(2 * pct * n) - 2, 1, 0, 1, 0),
                (n - 1.0, 0, 2, 0, 0),
            ]
        else:
            self.phases = [(float(pct * n) - 1, 0, 1, 0, 1), (n - 1.0, 1, 2, 1, 0)]
        start = 0.0
        for i, (end, *_rest) in enumerate(self.phases):
            if end - start == 0:
                raise self._fail(
                    f"phase {i} of total_steps={n} with pct_start={pct} is empty "
                    "(torch divides by zero there); choose a larger total_steps "
                    "or another pct_start"
                )
            start = end

    def max_step(self) -> int | None:
        return self.total_steps

    def past_end(self, step: int) -> str:
        return (
            f"Tried to step {step} times. The specified number of total steps is {self.total_steps}"
        )

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal == "cos":
            return end + (start - end) / 2.0 * (cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _where(self, step: int) -> tuple[tuple[float, int, int, int, int], float]:
        last = self._last_where  # lrs(t) then momenta(t): computed once
        if last[0] == step:
            return last[1]
        if step > self.total_steps:
            raise StepLimitError(self.past_end(step))
        start = 0.0
        for i, phase in enumerate(self.phases):
            if step <= phase[0] or i == len(self.phases) - 1:
                where = phase, (step - start) / (phase[0] - start)
                self._last_where = (step, where)
                return where
            start = phase[0]
        raise AssertionError("unreachable")  # pragma: no cover

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        (_, a, b, _, _), pct = self._where(step)
        out = []
        for g in range(self.num_groups):
            values = (self.initial_lrs[g], self.max_lrs[g], self.min_lrs[g])
            out.append(self._anneal(values[a], values[b], pct))
        return out

    def momenta(self, step: int) -> list[float] | None:
        if not self.cycle_momentum:
            return None
        (_, _, _, a, b), pct = self._where(step)
        out = []
        for g in range(self.num_groups):
            values = (self.max_momentums[g], self.base_momentums[g])
            out.append(self._anneal(values[a], values[b], pct))
        return out
