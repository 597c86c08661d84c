"""The controller's limits: how much one client may make it hold, do or send back.

DESIGN "Default limits" and "Values". Past a size or count limit a call answers
RESOURCE_EXHAUSTED; a value out of range is INVALID_ARGUMENT; either way the call changed
nothing and its message names the limit and quotes at most a bounded prefix of the input.
Every limit is a ``lrctl serve`` flag and an ``LRCTL_<FLAG>`` variable (names and defaults in
:mod:`lrctl.constants`); the table is in docs/controller.md ("Limits").

The spec, group and LR limits are the core's (:class:`lrctl.limits.Limits`,
:attr:`ServerLimits.core`): they guard what clients send. Jobs already stored are evaluated
without them, so lowering a limit never makes an existing job unreadable.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from lrctl import constants as c
from lrctl.limits import Limits

__all__ = ["ServerLimits", "add_limit_arguments"]


@dataclass(frozen=True)
class ServerLimits:
    """Every limit of one controller (DESIGN's defaults)."""

    max_jobs: int = c.DEFAULT_MAX_JOBS
    """Jobs held, finished ones included; a CreateJob of a new id past it is refused."""

    max_events_per_job: int = c.DEFAULT_MAX_EVENTS_PER_JOB
    """Events in a job's log (its current incarnation); overrides past it are refused,
    plateau reductions past it are not appended (logged)."""

    max_watch_streams_per_job: int = c.DEFAULT_MAX_WATCH_STREAMS_PER_JOB
    """Watch streams open on one job at once."""

    max_watch_streams: int = c.DEFAULT_MAX_WATCH_STREAMS
    """Watch streams open at once, all jobs together."""

    max_param_groups: int = c.DEFAULT_MAX_PARAM_GROUPS
    """Param groups (base LRs) of a job or a preview."""

    max_spec_bytes: int = c.DEFAULT_MAX_SPEC_BYTES
    """A schedule spec's text, in UTF-8 bytes (safe expressions included)."""

    max_actor_chars: int = c.DEFAULT_MAX_ACTOR_CHARS
    """An override's ``actor``, in characters (no control characters)."""

    max_reason_bytes: int = c.DEFAULT_MAX_REASON_BYTES
    """An override's ``reason``, in UTF-8 bytes (control characters are escaped in logs)."""

    max_lr: float = c.DEFAULT_MAX_LR
    """Ceiling of a base LR, ``lr = X`` and an LR argument of a spec."""

    max_report_items: int = c.DEFAULT_MAX_REPORT_ITEMS
    """Items of one Report in each of ``applied``, ``plateau_metrics`` and ``divergences``."""

    eval_deadline_seconds: float = c.DEFAULT_EVAL_DEADLINE_SECONDS
    """Longest CPU-heavy validation or evaluation (run off the event loop)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"expected {f.name} to be an integer >= 1, got {value!r}")
            elif (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"expected {f.name} to be a finite number > 0, got {value!r}")

    @property
    def core(self) -> Limits:
        """The spec, group and LR limits as :mod:`lrctl.program` takes them."""
        return Limits(
            max_spec_bytes=self.max_spec_bytes,
            max_param_groups=self.max_param_groups,
            max_lr=float(self.max_lr),
        )

    def reserved_bytes(self) -> int:
        """Room a job's fields other than its log take in a message, at most: the spec and
        two values per group (base LRs and LRs), plus the id and the scalars."""
        return 2 * self.max_spec_bytes + 20 * self.max_param_groups + 4096

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> ServerLimits:
        """Read ``LRCTL_MAX_*`` and ``LRCTL_EVAL_DEADLINE_SECONDS``; ``overrides`` win.

        Raises:
            ValueError: a variable that does not parse, or a limit out of range.
        """
        values: dict[str, Any] = {}
        for name, (var, convert, _flag, _help) in _SETTINGS.items():
            if environ.get(var):
                try:
                    values[name] = convert(environ[var])
                except ValueError:
                    raise ValueError(
                        f"expected {var} to be {convert.__name__}, got {environ[var][:64]!r}"
                    ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> ServerLimits:
        """Flags of :func:`add_limit_arguments`, then the environment, then the defaults."""
        return cls.from_env(environ, **{name: getattr(args, name, None) for name in _SETTINGS})


def _number(text: str) -> float:
    return float(text)


_number.__name__ = "a number"

#: field -> (variable, converter, flag, help)
_SETTINGS: dict[str, tuple[str, Callable[[str], Any], str, str]] = {
    "max_jobs": (c.MAX_JOBS_ENV_VAR, int, "--max-jobs", "jobs held, finished ones included"),
    "max_events_per_job": (
        c.MAX_EVENTS_PER_JOB_ENV_VAR,
        int,
        "--max-events-per-job",
        "events in a job's log",
    ),
    "max_watch_streams_per_job": (
        c.MAX_WATCH_STREAMS_PER_JOB_ENV_VAR,
        int,
        "--max-watch-streams-per-job",
        "Watch streams of one job",
    ),
    "max_watch_streams": (
        c.MAX_WATCH_STREAMS_ENV_VAR,
        int,
        "--max-watch-streams",
        "Watch streams in all",
    ),
    "max_param_groups": (
        c.MAX_PARAM_GROUPS_ENV_VAR,
        int,
        "--max-param-groups",
        "param groups of a job",
    ),
    "max_spec_bytes": (
        c.MAX_SPEC_BYTES_ENV_VAR,
        int,
        "--max-spec-bytes",
        "bytes of a schedule spec",
    ),
    "max_actor_chars": (
        c.MAX_ACTOR_CHARS_ENV_VAR,
        int,
        "--max-actor-chars",
        "characters of an override's actor",
    ),
    "max_reason_bytes": (
        c.MAX_REASON_BYTES_ENV_VAR,
        int,
        "--max-reason-bytes",
        "bytes of an override's reason",
    ),
    "max_lr": (
        c.MAX_LR_ENV_VAR,
        _number,
        "--max-lr",
        "ceiling of base LRs, 'lr = X' and LRs in specs",
    ),
    "max_report_items": (
        c.MAX_REPORT_ITEMS_ENV_VAR,
        int,
        "--max-report-items",
        "applied versions, plateau metrics or divergences in one report",
    ),
    "eval_deadline_seconds": (
        c.EVAL_DEADLINE_SECONDS_ENV_VAR,
        _number,
        "--eval-deadline-seconds",
        "longest validation or evaluation of one call",
    ),
}


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the limit flags (and ``--max-message-bytes``) to ``lrctl serve``."""
    group = parser.add_argument_group(
        "limits",
        "Past a size or count limit a call answers RESOURCE_EXHAUSTED, a value out "
        "of range INVALID_ARGUMENT (docs/controller.md, 'Limits').",
    )
    defaults = ServerLimits()
    for name, (var, convert, flag, text) in _SETTINGS.items():
        group.add_argument(
            flag,
            type=float if convert is _number else int,
            metavar="N",
            help=f"{text} (default {getattr(defaults, name):g}; {var})",
        )
    group.add_argument(
        "--max-message-bytes",
        type=int,
        metavar="N",
        help=f"largest gRPC message sent or received (default "
        f"{c.DEFAULT_MAX_MESSAGE_BYTES}; {c.MAX_MESSAGE_BYTES_ENV_VAR})",
    )
