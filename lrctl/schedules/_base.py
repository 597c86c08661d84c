"""The schedule interface, argument validation and the registry of scheduler names.

A :class:`Schedule` is the closed form of one torch scheduler: ``lrs(t, base_lrs)`` is what
torch's ``get_last_lr()`` returns after ``t`` calls of ``step()`` (row 0 = at construction)
for an optimizer whose groups started at ``base_lrs``. It holds no mutable state beyond
caches, so the controller and every worker evaluate any step in any order.
"""

from __future__ import annotations

import functools
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from lrctl._numeric import to_float
from lrctl._render import shorten
from lrctl.errors import SizeLimitError, SpecError
from lrctl.expressions import MAX_MAGNITUDE
from lrctl.limits import DEFAULT_LIMITS, NO_LIMITS, Limits
from lrctl.spec import Spec, SpecValue, parse_spec

__all__ = [
    "EXPRESSION_MAX_STEP",
    "MAX_STEP",
    "REPLAY_STEP_OVERHEAD",
    "SCHEDULES",
    "Schedule",
    "build_schedule",
    "canonical_spec",
    "check_num_groups",
    "register",
    "stored_spec_text",
]

#: The largest step (and integer argument) lrctl handles: int64's maximum, as steps travel
#: on the wire. Larger steps are a :class:`~lrctl.errors.StepLimitError`.
MAX_STEP = 9_223_372_036_854_775_807  # 2**63 - 1
#: The last step of a schedule driven by a safe expression: its largest ``epoch`` (1e15).
EXPRESSION_MAX_STEP = int(MAX_MAGNITUDE)
#: What one replayed recurrence step costs beyond its per-group updates, in those units.
REPLAY_STEP_OVERHEAD = 16

SCHEDULES: dict[str, type[Schedule]] = {}
"""Scheduler name -> implementing class."""

# Arguments that belong to the scheduler object, not to the schedule.
_OBJECT_ARGS = {
    "optimizer": "the optimizer is the one RemoteLRScheduler is given",
    "last_epoch": "pass last_epoch to RemoteLRScheduler (or the job's resume step)",
    "verbose": "pass verbose to RemoteLRScheduler or to `lrctl job create --verbose`",
}


class Schedule(ABC):
    """Closed-form LR schedule for ``num_groups`` param groups.

    Subclasses define ``setup(self, <torch's arguments>)`` (validated, stored) and
    :meth:`lrs`. Chainable schedulers also override :meth:`step_lrs`, torch's recursive
    ``get_lr``, which :class:`ChainedScheduler` composes.
    """

    name: ClassVar[str]
    #: True for torch's chainable (multiplicative, recursive) schedulers.
    chainable: ClassVar[bool] = False
    #: True when :meth:`step_lrs` multiplies the current LR by a ratio and
    #: ``lrs(t, base_lrs)`` is ``base_lrs * factor(t)`` (ChainedScheduler composes those).
    multiplicative: ClassVar[bool] = False

    @classmethod
    def overwrites(cls) -> bool:
        """Whether :meth:`step_lrs` ignores the current LR (torch's closed-form get_lr)."""
        return cls.step_lrs is Schedule.step_lrs

    def __init__(self, spec: Spec, num_groups: int, limits: Limits = DEFAULT_LIMITS) -> None:
        self.num_groups = num_groups
        self.limits = limits
        bound = _bind(type(self), spec)
        for key, value in bound.arguments.items():
            if key != "schedulers" and _contains_spec(value):
                raise SpecError(
                    f"{spec.name}.{key}: expected a literal (number, string, "
                    f"True/False/None, list), got {shorten(_text(value))}"
                )
        self.setup(*bound.args, **bound.kwargs)  # type: ignore[attr-defined]
        #: The validated spec in its normal form (see :func:`canonical_spec`).
        self.spec = _normal_form(spec.name, bound)

    @abstractmethod
    def lrs(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        """Return each group's LR after ``step`` calls of ``step()`` (closed form)."""

    def step_lrs(self, step: int, lrs: Sequence[float], base_lrs: Sequence[float]) -> list[float]:
        """Return torch's ``get_lr()`` at ``step`` given the groups' current ``lrs``.

        The default suits closed-form schedulers, which ignore the current LR.
        """
        return self.lrs(step, base_lrs)

    def momenta(self, step: int) -> list[float] | None:
        """Return each group's momentum (or Adam's beta1) at ``step``; None if not cycled."""
        return None

    @property
    def cycles_momentum(self) -> bool:
        """Whether this schedule writes momentum/betas (CyclicLR, OneCycleLR)."""
        return False

    def max_step(self) -> int | None:
        """Return the last step this schedule evaluates, or None if it has no end.

        OneCycleLR ends at ``total_steps`` (torch raises past it); a schedule driven by a
        safe expression at :data:`lrctl.expressions.MAX_MAGNITUDE` (its largest epoch).
        """
        return None

    def past_end(self, step: int) -> str:
        """The message for a ``step`` past :meth:`max_step`."""
        return (
            f"{self.name} is defined for steps 0..{self.max_step()} (the largest epoch of "
            f"its safe expression), got step {step}"
        )

    @property
    def replays(self) -> bool:
        """Whether some step may need a replay (a recurrence without a closed form)."""
        return False

    def cost(self, step: int, base_lrs: Sequence[float]) -> int:
        """Return the work :meth:`lrs` would do at ``step`` now, beyond a closed form.

        0 for closed forms. For a recurrence: the steps it must replay from the nearest
        value it holds, times (the param groups it updates + :data:`REPLAY_STEP_OVERHEAD`),
        i.e. about one unit per float update; a unit costs 0.1-0.2 µs.
        """
        return 0

    # -- helpers for subclasses -------------------------------------------------------------

    def _fail(self, message: str) -> SpecError:
        return SpecError(f"{self.name}: {message}")

    def _int(self, key: str, value: Any, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise self._fail(f"{key} must be {what}, got {shorten(repr(value))}")
        if value > MAX_STEP:
            raise self._fail(f"{key} must be at most 2**63 - 1, got {shorten(repr(value))}")
        return value

    def _float(
        self,
        key: str,
        value: Any,
        *,
        minimum: float | None = 0.0,
        maximum: float | None = None,
        strict_min: bool = False,
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(f"{key} must be a number, got {shorten(repr(value))}")
        v = to_float(value)
        if not math.isfinite(v):
            raise self._fail(f"{key} must be finite, got {shorten(repr(value))}")
        low_bad = minimum is not None and (v <= minimum if strict_min else v < minimum)
        high_bad = maximum is not None and v > maximum
        if low_bad or high_bad:
            lo = "" if minimum is None else ("> " if strict_min else ">= ") + f"{minimum:g}"
            hi = "" if maximum is None else f"<= {maximum:g}"
            rng = " and ".join(p for p in (lo, hi) if p)
            raise self._fail(f"{key} must be {rng}, got {shorten(repr(value))}")
        return v

    def _lr(self, key: str, value: Any) -> float:
        """An LR argument (``max_lr``, ``eta_min``...): finite, >= 0, at most the ceiling."""
        v = self._float(key, value)
        if v > self.limits.max_lr:
            raise self._fail(
                f"{key} must be <= {self.limits.max_lr:g} (the LR ceiling), "
                f"got {shorten(repr(value))}"
            )
        return v

    def _choice(self, key: str, value: Any, choices: Sequence[str]) -> str:
        if value not in choices:
            raise self._fail(
                f"{key} must be one of {', '.join(map(repr, choices))}, got {shorten(repr(value))}"
            )
        return str(value)

    def _bool(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self._fail(f"{key} must be True or False, got {shorten(repr(value))}")
        return value

    def _per_group(self, key: str, value: Any, convert: Callable[[str, Any], float]) -> list[float]:
        """Accept one value or one per param group, as torch's ``_format_param`` does."""
        if isinstance(value, tuple):
            if len(value) != self.num_groups:
                raise self._fail(f"expected {self.num_groups} values for {key}, got {len(value)}")
            return [convert(f"{key}[{i}]", v) for i, v in enumerate(value)]
        return [convert(key, value)] * self.num_groups


def _contains_spec(value: Any) -> bool:
    if isinstance(value, tuple):
        return any(_contains_spec(v) for v in value)
    return isinstance(value, Spec)


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return value.to_text() if isinstance(value, Spec) else repr(value)


@functools.cache
def _signature(cls: type[Schedule]) -> inspect.Signature:
    """``cls.setup``'s signature without ``self``: torch's parameters after the optimizer."""
    sig = inspect.signature(cls.setup)  # type: ignore[attr-defined]
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def _bind(cls: type[Schedule], spec: Spec) -> inspect.BoundArguments:
    """Bind ``spec``'s arguments to torch's signature, as torch's constructor would."""
    for key, _ in spec.kwargs:
        if key in _OBJECT_ARGS:
            raise SpecError(
                f"{spec.name}: {key!r} is not part of a schedule spec; {_OBJECT_ARGS[key]}"
            )
    sig = _signature(cls)
    try:
        return sig.bind(*spec.args, **dict(spec.kwargs))
    except TypeError as exc:
        params = ", ".join(sig.parameters)
        raise SpecError(
            f"{spec.name}: {shorten(str(exc))}; expected arguments ({params}), "
            f"got {shorten(spec.to_text())}"
        ) from None


def _normal_form(name: str, bound: inspect.BoundArguments) -> Spec:
    kwargs = []
    for key, value in bound.arguments.items():  # in signature order
        default = bound.signature.parameters[key].default
        if default is not inspect.Parameter.empty and _is_default(value, default):
            continue
        kwargs.append((key, _normal_value(value)))
    return Spec(name, tuple(kwargs))


def _normal_value(value: SpecValue) -> SpecValue:
    if isinstance(value, Spec):
        return canonical_spec(value)
    if isinstance(value, tuple):
        return tuple(_normal_value(v) for v in value)
    return value


def _is_default(value: SpecValue, default: Any) -> bool:
    """Whether ``value`` means the default: the same kind of literal and equal to it.

    ``0`` for a default of ``0.0`` is the default; ``0`` for ``False`` (or ``1`` for
    ``True``) is not, so dropping a default never turns a refused spec into an accepted one.
    """
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool) and value == default
    if isinstance(value, (int, float)) and isinstance(default, (int, float)):
        return value == default
    return type(value) is type(default) and value == default


def canonical_spec(spec: str | Spec | Mapping[str, Any]) -> Spec:
    """Return ``spec`` in its one normal form, whose ``to_text()`` is the canonical text.

    Positional arguments are bound to their names, keyword arguments follow torch's
    parameter order, arguments equal to torch's default are dropped, and nested schedulers
    are normalised the same way: ``StepLR(2, 0.5)`` and ``StepLR(gamma=0.5, step_size=2)``
    both become ``StepLR(step_size=2, gamma=0.5)``; ``StepLR(step_size=2, gamma=0.1)``
    becomes ``StepLR(step_size=2)``. Values are kept as written (``gamma=1`` and
    ``gamma=1.0`` are equal specs). The values themselves are not validated:
    ``build_schedule(spec, n).spec`` is the validated normal form.

    It compares specs that were checked against their limits already (the controller's
    configured ones), so it holds them to none.

    Raises:
        SpecError: not a spec, an unknown scheduler, or arguments torch's signature refuses.
    """
    parsed = parse_spec(spec, max_bytes=NO_LIMITS.max_spec_bytes)
    cls = SCHEDULES.get(parsed.name)
    if cls is None:
        known = ", ".join(sorted(SCHEDULES))
        raise SpecError(f"unknown scheduler {shorten(repr(parsed.name))}; expected one of {known}")
    return _normal_form(parsed.name, _bind(cls, parsed))


def stored_spec_text(text: str) -> str:
    """Return a spec stored by an older release in today's canonical text.

    For a store's load path: a text that no longer reads as a spec is returned unchanged
    (building it reports the problem where the job is used).
    """
    try:
        return canonical_spec(text).to_text()
    except SpecError:
        return text


S = TypeVar("S", bound=type[Schedule])


def register(cls: S) -> S:
    """Class decorator: make ``cls`` buildable from specs under ``cls.name``."""
    SCHEDULES[cls.name] = cls
    return cls


def build_schedule(
    spec: str | Spec | dict[str, Any], num_groups: int, *, limits: Limits = DEFAULT_LIMITS
) -> Schedule:
    """Parse and validate ``spec`` for an optimizer with ``num_groups`` param groups.

    Raises:
        SizeLimitError: the spec text or the number of groups is past ``limits``.
        SpecError: unknown scheduler, bad arguments, or values torch would refuse.
    """
    check_num_groups(num_groups, limits)
    parsed = parse_spec(spec, max_bytes=limits.max_spec_bytes)
    cls = SCHEDULES.get(parsed.name)
    if cls is None:
        known = ", ".join(sorted(SCHEDULES))
        raise SpecError(f"unknown scheduler {shorten(repr(parsed.name))}; expected one of {known}")
    return cls(parsed, num_groups, limits)


def check_num_groups(num_groups: int, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise unless ``num_groups`` is a number of param groups a job may have.

    Raises:
        SizeLimitError: more than ``limits.max_param_groups``.
        SpecError: not an integer >= 1.
    """
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise SpecError(
            f"expected at least one param group (base LR), got {shorten(repr(num_groups))}"
        )
    if num_groups > limits.max_param_groups:
        raise SizeLimitError(
            f"expected at most {limits.max_param_groups} param groups, got {num_groups}"
        )


def child_schedules(
    parent: str, value: SpecValue, num_groups: int, limits: Limits = DEFAULT_LIMITS
) -> list[Schedule]:
    """Build the nested schedulers of SequentialLR / ChainedScheduler."""
    if not isinstance(value, tuple) or not value:
        raise SpecError(
            f"{parent}: schedulers must be a non-empty list of schedulers, "
            f"got {shorten(repr(value))}"
        )
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Spec):
            raise SpecError(
                f"{parent}: schedulers[{i}] must be a scheduler such as "
                f"StepLR(step_size=10), got {shorten(repr(item))}"
            )
        out.append(build_schedule(item, num_groups, limits=limits))
    return out
