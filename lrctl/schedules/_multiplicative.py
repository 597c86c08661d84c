"""LambdaLR and torch's chainable (multiplicative) schedulers, in closed form.

Each chainable scheduler is torch's recursion ``lr_t = lr_{t-1} * ratio(t)`` (with
``ratio(0)`` the factor applied at construction). Its closed form is the product of those
ratios, ``lr_t = base_lr * factor(t)``; both are written out below so that
:class:`~lrctl.schedules.ChainedScheduler` can compose the recursion exactly as torch does.
Products of ``t`` floats differ from torch's running product by at most about
``t * 2**-53`` relative (see docs/parity.md). Past the float range they give what torch's
recursion gives, ``inf`` or 0.0, never ``OverflowError`` (:mod:`lrctl._numeric`).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from typing import Any

from lrctl._numeric import div, mul_pow, power, scale_by_power
from lrctl.expressions import Expression, compile_expression
from lrctl.schedules._base import (
    EXPRESSION_MAX_STEP,
    REPLAY_STEP_OVERHEAD,
    Schedule,
    register,
)
from lrctl.schedules._recurrence import Recurrence

__all__ = [
    "ConstantLR",
    "ExponentialLR",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "PolynomialLR",
    "StepLR",
]


class _Lambdas(Schedule):
    """Shared argument handling: one expression, or one per param group."""

    def _lambdas(self, value: Any) -> list[Expression]:
        if isinstance(value, tuple):
            if len(value) != self.num_groups:
                raise self._fail(f"Expected {self.num_groups} lr_lambdas, but got {len(value)}")
            items = list(value)
        else:
            items = [value] * self.num_groups
        compiled: dict[str, Expression] = {}  # one compile per distinct text, not per group
        out = []
        for item in items:
            if not isinstance(item, str):
                raise self._fail(
                    f"lr_lambda must be an expression string such as '0.95 ** epoch', got {item!r}"
                )
            if item not in compiled:
                compiled[item] = compile_expression(item)
            out.append(compiled[item])
        return out


@register
class LambdaLR(_Lambdas):
    r"""``lr = base_lr * lr_lambda(t)``.

    .. math:: \eta_t = \eta_0 \cdot f(t)
    """

    name = "LambdaLR"

    def setup(self, lr_lambda: Any) -> None:
        self.fns = self._lambdas(lr_lambda)
        # One text for every group (the usual case) is one Expression: evaluate it once.
        first = self.fns[0]
        self._shared = first if all(f is first for f in self.fns) else None

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        shared = self._shared
        if shared is not None:
            value = shared(step)
            return [b * value for b in base_lrs]
        return [b * f(step) for b, f in zip(base_lrs, self.fns)]

    def max_step(self) -> int | None:
        return EXPRESSION_MAX_STEP


@register
class MultiplicativeLR(_Lambdas):
    r"""``lr_t = lr_{t-1} * lr_lambda(t)`` for ``t > 0``.

    .. math:: \eta_t = \eta_0 \prod_{u=1}^{t} f(u)

    An ``lr_lambda`` that is piecewise constant in ``epoch`` (a constant such as ``'0.99'``,
    or ``'0.999 if epoch < 100 else 0.99'``: ``epoch`` only compared with constants) has a
    closed form, one power per piece; any step costs O(pieces) at most. Any other
    ``lr_lambda`` runs torch's recursion per group, cached (:class:`Recurrence`): one call
    per step stepping forward, at most a few hundred for a step already passed, and
    :meth:`cost` says what a step further ahead would take. Either way a value that leaves
    the float range turns ``inf`` or 0.0 at torch's step and stays there.
    """

    name = "MultiplicativeLR"
    chainable = True
    multiplicative = True

    def setup(self, lr_lambda: Any) -> None:
        self.fns = self._lambdas(lr_lambda)
        self._pieces = {f: _Pieces(f) for f in dict.fromkeys(self.fns) if f.thresholds is not None}
        # Groups whose lr_lambda has no closed form: they share one recurrence.
        self._replayed = [g for g, f in enumerate(self.fns) if f not in self._pieces]
        self._cache: dict[tuple[float, ...], Recurrence] = {}

    @property
    def replays(self) -> bool:
        return bool(self._replayed)

    def max_step(self) -> int | None:
        return EXPRESSION_MAX_STEP

    def _recurrence(self, base_lrs: Sequence[float]) -> Recurrence:
        key = tuple(base_lrs[g] for g in self._replayed)
        rec = self._cache.get(key)
        if rec is None:
            if len(self._cache) >= 4:  # bounded: a job's base LRs do not change
                self._cache.clear()
            fns = [self.fns[g] for g in self._replayed]
            distinct = list(dict.fromkeys(fns))
            index = [distinct.index(f) for f in fns]

            def advance(t: int, prev: tuple[float, ...]) -> tuple[float, ...]:
                values = [f(t) for f in distinct]
                return tuple([lr * values[i] for lr, i in zip(prev, index)])

            rec = self._cache[key] = Recurrence(key, advance)
        return rec

    def cost(self, step: int, base_lrs: Sequence[float]) -> int:
        if not self._replayed:
            return 0
        steps = self._recurrence(base_lrs).cost(step)
        return steps * (len(self._replayed) + REPLAY_STEP_OVERHEAD) if steps else 0

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        out = list(base_lrs)
        if step == 0:
            return out
        for f, pieces in self._pieces.items():
            groups = [g for g, h in enumerate(self.fns) if h is f]
            for g, lr in zip(groups, pieces.lrs(step, [base_lrs[g] for g in groups])):
                out[g] = lr
        if self._replayed:
            for g, lr in zip(self._replayed, self._recurrence(base_lrs).at(step)):
                out[g] = lr
        return out

    def step_lrs(self, step: int, lrs: Sequence[float], base_lrs: Sequence[float]) -> list[float]:
        if step == 0:
            return list(lrs)
        return [lr * f(step) for lr, f in zip(lrs, self.fns)]


class _Pieces:
    """MultiplicativeLR's closed form for a piecewise-constant ``lr_lambda`` ``f``.

    Between consecutive change points ``s_j <= t < s_{j+1}`` (integers next to the
    constants ``epoch`` is compared with) ``f(t) = c_j``, so torch's recursion is
    ``lr_t = lr_{s_j - 1} * c_j ** (t - s_j + 1)``: one :func:`mul_pow` per piece, each
    rounded once, so an LR that left the float range stays ``inf``/0.0 in later pieces as
    torch's does.
    """

    def __init__(self, fn: Expression) -> None:
        self.fn = fn
        points: set[int] = set()
        for c in fn.thresholds or ():
            for p in (math.floor(c), math.floor(c) + 1, math.ceil(c), math.ceil(c) + 1):
                if 1 < p <= EXPRESSION_MAX_STEP:
                    points.add(p)
        self.starts = [1, *sorted(points)]
        self._values: list[float] = []  # f at each start, filled as needed
        self._before: dict[float, list[float]] = {}  # base -> lr at s_j - 1, as needed

    def _value(self, j: int) -> float:
        while len(self._values) <= j:
            self._values.append(self.fn(self.starts[len(self._values)]))
        return self._values[j]

    def _lr_before(self, base: float, j: int) -> float:
        lrs = self._before.get(base)
        if lrs is None:
            if len(self._before) >= 4096:  # bounded: one entry per distinct base LR
                self._before.clear()
            lrs = self._before[base] = [base]
        while len(lrs) <= j:
            k = len(lrs) - 1
            lrs.append(mul_pow(lrs[k], self._value(k), self.starts[k + 1] - self.starts[k]))
        return lrs[j]

    def lrs(self, step: int, bases: Sequence[float]) -> list[float]:
        j = bisect_right(self.starts, step) - 1
        c = self._value(j)
        return scale_by_power([self._lr_before(b, j) for b in bases], c, step - self.starts[j] + 1)


class _Chainable(Schedule):
    """A scheduler whose every group follows ``base_lr * factor(t)``."""

    chainable = True
    multiplicative = True

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def ratio(self, step: int) -> float:
        raise NotImplementedError

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        f = self.factor(step)
        return [b * f for b in base_lrs]

    def step_lrs(self, step: int, lrs: Sequence[float], base_lrs: Sequence[float]) -> list[float]:
        r = self.ratio(step)
        return list(lrs) if r == 1.0 else [lr * r for lr in lrs]


@register
class StepLR(_Chainable):
    r"""Decay by ``gamma`` every ``step_size`` steps.

    .. math:: \eta_t = \eta_0 \cdot \gamma^{\lfloor t / \text{step\_size} \rfloor}

    Example, ``StepLR(step_size=30, gamma=0.1)`` with base 0.05: 0.05 for t < 30, 0.005 for
    30 <= t < 60, 0.0005 for 60 <= t < 90.
    """

    name = "StepLR"

    def setup(self, step_size: Any, gamma: Any = 0.1) -> None:
        self.step_size = self._int("step_size", step_size, minimum=1)
        self.gamma = self._float("gamma", gamma)

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        return scale_by_power(base_lrs, self.gamma, step // self.step_size)

    def ratio(self, step: int) -> float:
        return self.gamma if step > 0 and step % self.step_size == 0 else 1.0


@register
class MultiStepLR(_Chainable):
    r"""Decay by ``gamma`` at each milestone (a repeated milestone decays again).

    .. math:: \eta_t = \eta_0 \cdot \gamma^{|\{m \in \text{milestones} : m \le t\}|}
    """

    name = "MultiStepLR"

    def setup(self, milestones: Any, gamma: Any = 0.1) -> None:
        if not isinstance(milestones, tuple):
            raise self._fail(f"milestones must be a list of integers, got {milestones!r}")
        self.milestones = sorted(self._int(f"milestones[{i}]", m) for i, m in enumerate(milestones))
        self.counts = Counter(self.milestones)
        self.gamma = self._float("gamma", gamma)

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        return scale_by_power(base_lrs, self.gamma, bisect_right(self.milestones, step))

    def ratio(self, step: int) -> float:
        n = self.counts.get(step, 0)
        return power(self.gamma, n) if n else 1.0


@register
class ConstantLR(_Chainable):
    r"""Multiply by ``factor`` until ``total_iters``, then back to the base LR.

    .. math:: \eta_t = \eta_0 \cdot (\text{factor if } t < T \text{ else } 1)

    As in torch's recursion, ``total_iters=0`` keeps ``factor`` forever.
    """

    name = "ConstantLR"

    def setup(self, factor: Any = 1.0 / 3, total_iters: Any = 5) -> None:
        self.factor_value = self._float("factor", factor, minimum=0.0, maximum=1.0, strict_min=True)
        self.total_iters = self._int("total_iters", total_iters)

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        # torch's two products exactly: ``lr * factor``, later ``* (1 / factor)``.
        f = self.factor_value
        if self.total_iters == 0 or step < self.total_iters:
            return [b * f for b in base_lrs]
        back = 1.0 / f
        return [b * f * back for b in base_lrs]

    def ratio(self, step: int) -> float:
        if step == 0:
            return self.factor_value
        return 1.0 / self.factor_value if step == self.total_iters else 1.0


@register
class LinearLR(_Chainable):
    r"""Linear ramp of the factor from ``start_factor`` to ``end_factor`` over ``total_iters``.

    .. math:: \eta_t = \eta_0 \left(s + (e - s)\frac{\min(t, T)}{T}\right)
    """

    name = "LinearLR"

    def setup(
        self, start_factor: Any = 1.0 / 3, end_factor: Any = 1.0, total_iters: Any = 5
    ) -> None:
        self.start = self._float(
            "start_factor", start_factor, minimum=0.0, maximum=1.0, strict_min=True
        )
        self.end = self._float("end_factor", end_factor, minimum=0.0, maximum=1.0)
        self.total_iters = self._int("total_iters", total_iters)

    def factor(self, step: int) -> float:
        if self.total_iters == 0:
            return self.start
        t, n = min(step, self.total_iters), self.total_iters
        # Exact at both ends (start at 0, end at total_iters): with end_factor=0 the LR is 0.0
        # there, not the -1e-16 that start + (end - start) * t / n can round to.
        return (self.start * (n - t) + self.end * t) / n

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        f, s = self.factor(step), self.start
        # An LR that underflowed to 0.0 at construction (base * start_factor) stays 0.0 in
        # torch's recursion, which only multiplies it from then on.
        return [b * f if b * s != 0.0 else b * s for b in base_lrs]

    def ratio(self, step: int) -> float:
        if step == 0:
            return self.start
        if step > self.total_iters:
            return 1.0
        s, e, n = self.start, self.end, self.total_iters
        return 1.0 + div(e - s, n * s + (step - 1) * (e - s))


@register
class ExponentialLR(_Chainable):
    r"""Decay by ``gamma`` every step.

    .. math:: \eta_t = \eta_0 \cdot \gamma^{t}
    """

    name = "ExponentialLR"

    def setup(self, gamma: Any) -> None:
        self.gamma = self._float("gamma", gamma)

    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        return scale_by_power(base_lrs, self.gamma, step)

    def ratio(self, step: int) -> float:
        return 1.0 if step == 0 else self.gamma


@register
class PolynomialLR(_Chainable):
    r"""Polynomial decay to exactly 0 at ``total_iters``.

    .. math:: \eta_t = \eta_0 \left(1 - \frac{\min(t, T)}{T}\right)^{p}
    """

    name = "PolynomialLR"

    def setup(self, total_iters: Any = 5, power: Any = 1.0) -> None:
        self.total_iters = self._int("total_iters", total_iters)
        self.power = self._float("power", power)

    def factor(self, step: int) -> float:
        if self.total_iters == 0:
            return 1.0
        return power(1.0 - min(self.total_iters, step) / self.total_iters, self.power)

    def ratio(self, step: int) -> float:
        if step == 0 or step > self.total_iters:
            return 1.0
        n = self.total_iters
        return power(div(1.0 - step / n, 1.0 - (step - 1) / n), self.power)
