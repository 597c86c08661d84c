"""Override events: the explicit, replayable way to change a running job's LR.

A job's LR is ``f(schedule spec, base_lrs, event log, step)``. Each event takes effect at
its ``effective_step`` (the scheduler step at which the new LR is first in
``param_groups``) and stays in force until a later event changes it:

========================  ===================================================================
``lr *= 0.1``, ``lr /= 2``  **scale**: multiply the scheduled LR from the effective step on;
                            scales compose (two ``lr /= 2`` give a quarter). While a *set*
                            holds, a scale multiplies the held LR instead.
``lr = 3e-4``               **set**: hold this absolute LR until cleared (drops earlier scales).
``--clear``                 **clear**: drop every scale and set; back to the schedule.
``--schedule SPEC``         **replace_schedule**: follow SPEC from the effective step on,
                            starting at SPEC's own step 0 there (as SequentialLR does at a
                            milestone); drops scales and sets.
(controller)                **plateau_reduce**: one ReduceLROnPlateau reduction.
========================  ===================================================================

Every event targets all param groups, or one (``group``). docs/overrides.md has a worked
example and the comparison with what torch does to a manual ``param_groups[0]['lr'] /= 2``.
"""

from __future__ import annotations

import dataclasses
import enum
import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lrctl._numeric import to_float
from lrctl._render import iso_time, json_float, short_time, shorten
from lrctl.constants import DEFAULT_MAX_LR
from lrctl.errors import OverrideError

__all__ = [
    "Event",
    "History",
    "Op",
    "event_version",
    "parse_override",
    "resolve_pending",
    "validate_override",
]


class Op(str, enum.Enum):
    """What an event does."""

    SCALE = "scale"
    SET = "set"
    CLEAR = "clear"
    REPLACE_SCHEDULE = "replace_schedule"
    PLATEAU_REDUCE = "plateau_reduce"


@dataclass(frozen=True)
class Event:
    """One entry of a job's override log.

    Attributes:
        version: The job version this event created (strictly increasing per job).
        op: What it does.
        value: The factor (SCALE) or the LR (SET); None otherwise.
        schedule: The new spec's canonical text (REPLACE_SCHEDULE); None otherwise.
        group: Target param group, or None for every group.
        effective_step: Step at which it is first in ``param_groups``; None while pending.
        actor: Who asked for it.
        reason: Why.
        created_at: Unix time the controller accepted it.
        applied_at: Unix time rank 0 reported it applied, or None.
    """

    version: int
    op: Op
    value: float | None = None
    schedule: str | None = None
    group: int | None = None
    effective_step: int | None = None
    actor: str = ""
    reason: str = ""
    created_at: float = 0.0
    applied_at: float | None = None

    @property
    def pending(self) -> bool:
        """True until the workers report the step at which it took effect."""
        return self.effective_step is None

    def describe(self) -> str:
        """Return the operator's notation: ``lr *= 0.5``, ``lr = 0.0003``, ``clear``, ..."""
        target = "" if self.group is None else f" (group {self.group})"
        if self.op is Op.SCALE:
            text = f"lr *= {self.value!r}"
        elif self.op is Op.SET:
            text = f"lr = {self.value!r}"
        elif self.op is Op.REPLACE_SCHEDULE:
            text = f"schedule = {self.schedule}"
        elif self.op is Op.PLATEAU_REDUCE:
            text = "plateau reduction"
        else:
            text = self.op.value
        return text + target

    def to_dict(self) -> dict[str, Any]:
        """Return the CLI's JSON form (``lrctl history --json``).

        ``op`` is the op's name (``"scale"``...), ``effective_step`` None while pending,
        times ISO 8601 UTC strings (None when unset), a non-finite value a string.
        """
        return {
            "version": self.version,
            "op": self.op.value,
            "value": None if self.value is None else json_float(self.value),
            "schedule": self.schedule,
            "group": self.group,
            "effective_step": self.effective_step,
            "actor": self.actor,
            "reason": self.reason,
            "created_at": iso_time(self.created_at),
            "applied_at": iso_time(self.applied_at),
        }


_HISTORY_COLUMNS = ("version", "change", "effective step", "actor", "reason", "created", "applied")


def event_version(event: Event) -> int:
    """An event's version: the order of a log (``bisect_right(log, v, key=event_version)``)."""
    return event.version


class History(tuple[Event, ...]):
    """A job's override log, oldest first: a tuple of :class:`Event` that renders as a table.

    In a notebook, ``client.history("run-42")`` shows an HTML table (no pandas needed);
    :meth:`rows` gives the same cells as text, :meth:`to_dicts` the JSON form.
    """

    __slots__ = ()

    def rows(self) -> list[list[str]]:
        """Return one row of text cells per event, in :data:`_HISTORY_COLUMNS` order."""
        return [
            [
                str(e.version),
                e.describe(),
                "pending" if e.effective_step is None else str(e.effective_step),
                e.actor or "-",
                e.reason or "-",
                short_time(e.created_at),
                short_time(e.applied_at),
            ]
            for e in self
        ]

    def to_dicts(self) -> list[dict[str, Any]]:
        """Return :meth:`Event.to_dict` of each event (``lrctl history --json``)."""
        return [e.to_dict() for e in self]

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in _HISTORY_COLUMNS)
        if not self:
            return (
                f"<table><thead><tr>{head}</tr></thead><tbody></tbody></table><p>no overrides</p>"
            )
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in self.rows()
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        return f"History({list(self)!r})"


_OVERRIDE_RE = re.compile(r"^\s*lr\s*(\*=|/=|=)\s*(\S+)\s*$")


#: Longest override statement accepted (``lr = 3e-4`` needs a dozen characters).
MAX_STATEMENT_LENGTH = 256


def parse_override(text: str, *, max_lr: float = DEFAULT_MAX_LR) -> tuple[Op, float]:
    """Parse ``lr /= 2``, ``lr *= 0.1`` or ``lr = 3e-4`` into ``(op, value)``.

    ``lr /= x`` becomes a SCALE by ``1 / x``.

    Args:
        text: The statement.
        max_lr: The ceiling of ``lr = X`` (DESIGN: configurable; 1e6 by default).

    Raises:
        OverrideError: not one of those forms, or a value that is not a usable number.
    """
    if not isinstance(text, str):
        raise OverrideError(f"expected an override like 'lr /= 2', got {type(text).__name__}")
    if len(text) > MAX_STATEMENT_LENGTH:
        raise OverrideError(
            f"expected an override like 'lr /= 2' of at most "
            f"{MAX_STATEMENT_LENGTH} characters, got {len(text)}: "
            f"{_quote(text)}"
        )
    match = _OVERRIDE_RE.match(text)
    if not match:
        raise OverrideError(
            f"expected an override like 'lr /= 2', 'lr *= 0.1' or 'lr = 3e-4', got {_quote(text)}"
        )
    operator, literal = match.groups()
    try:
        number = float(literal)
    except ValueError:
        raise OverrideError(
            f"expected a number after 'lr {operator}', got {_quote(literal)}"
        ) from None
    if operator == "=":
        validate_override(Op.SET, number, max_lr=max_lr)
        return Op.SET, number
    if operator == "/=":
        if not math.isfinite(number) or number <= 0:
            raise OverrideError(f"'lr /= x' needs a finite x > 0, got {_quote(literal)}")
        number = 1.0 / number
    validate_override(Op.SCALE, number)
    return Op.SCALE, number


def validate_override(
    op: Op,
    value: float | None = None,
    group: int | None = None,
    num_groups: int | None = None,
    *,
    max_lr: float = DEFAULT_MAX_LR,
) -> None:
    """Check an override's value and target before it is appended to a log.

    Raises:
        OverrideError: e.g. a scale that is not a finite number > 0, a negative or infinite
            LR, an LR above ``max_lr``, or a group the job does not have.
    """
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = to_float(value)
    if op is Op.SCALE and not 0 < number < math.inf:  # also refuses nan
        raise OverrideError(f"a scale factor must be a finite number > 0, got {_shown(value)}")
    if op is Op.SET:
        if not 0 <= number < math.inf:
            raise OverrideError(f"an LR must be a finite number >= 0, got {_shown(value)}")
        if number > max_lr:
            raise OverrideError(f"an LR must be >= 0 and <= {max_lr:g}, got {_shown(value)}")
    if group is not None:
        if isinstance(group, bool) or not isinstance(group, int) or group < 0:
            raise OverrideError(f"param group must be an integer >= 0, got {_shown(group)}")
        if num_groups is not None and group >= num_groups:
            raise OverrideError(
                f"param group {group} does not exist; the job has "
                f"{num_groups} group(s): 0..{num_groups - 1}"
            )


def _shown(value: object) -> str:
    """``repr(value)``, at most 64 characters of it."""
    return shorten(repr(value))


def _quote(text: str) -> str:
    """``repr`` of at most 64 characters of ``text``, for a message."""
    return repr(shorten(text))


def resolve_pending(events: Iterable[Event], step: int) -> list[Event]:
    """Return ``events`` with every pending one taking effect at ``step``.

    The controller uses this to show what the LR is about to be before the workers report.
    """
    return [dataclasses.replace(e, effective_step=step) if e.pending else e for e in events]


def applied(events: Sequence[Event]) -> list[Event]:
    """Return the events that took effect, in the order they apply."""
    done = [e for e in events if e.effective_step is not None]
    return sorted(done, key=lambda e: (e.effective_step, e.version))
