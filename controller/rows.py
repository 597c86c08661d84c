"""What every store writes and reads: the change and row types, and the row converters.

The SQLite store (:mod:`controller.store`) and the PostgreSQL store (:mod:`controller.store_pg`)
hold the same rows; these are the one definition of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from lrctl.errors import LrctlError
from lrctl.model import Job, JobState
from lrctl.overrides import Event, Op
from lrctl.schedules import stored_spec_text

__all__ = [
    "EVENT_COLUMNS",
    "JOB_COLUMNS",
    "Change",
    "ConsumedMetric",
    "StoreError",
    "StoredJob",
    "check_schema_version",
    "event_from_row",
    "event_to_row",
    "job_from_row",
    "job_to_row",
    "salvage_job_row",
    "stored_jobs",
]

#: Columns of ``jobs``, in the order of :func:`job_to_row`.
JOB_COLUMNS = (
    "job_id",
    "schedule",
    "base_lrs",
    "version",
    "created_version",
    "step",
    "state",
    "verbose",
    "created_at",
    "updated_at",
    "lrs",
    "applied_version",
    "world_size",
    "epoch",
)
#: Columns of ``events`` after ``job_id``, in the order of :func:`event_to_row`.
EVENT_COLUMNS = (
    "version",
    "op",
    "value",
    "schedule",
    "param_group",
    "effective_step",
    "actor",
    "reason",
    "created_at",
    "applied_at",
)


class StoreError(LrctlError):
    """The database cannot be opened, is locked by another controller, or is too new."""


def check_schema_version(found: int, supported: int) -> None:
    """Raise :class:`StoreError` when the database's schema version ``found`` is newer than
    the ``supported`` one of this code."""
    if found > supported:
        raise StoreError(
            f"database schema version {found} is newer than this controller "
            f"supports ({supported}); upgrade lrctl"
        )


class ConsumedMetric(NamedTuple):
    """One ``step(metric)`` value the plateau tracker consumed."""

    step: int
    value: float
    schedule_version: int


@dataclass(frozen=True)
class StoredJob:
    """A job as loaded at startup: its row, its current log and its consumed metrics.

    Attributes:
        record: The job without its log (``lr``: what rank 0 last reported).
        events: The current incarnation's log, oldest first.
        plateau_metrics: The metrics the plateau tracker consumed, step order.
        rev: The row's revision in a shared store (0 for SQLite, its only writer).
        problem: What the store could not read of the job ("" when it read all of it); such
            a job is loaded marked as one that cannot be evaluated.
    """

    record: Job
    events: list[Event]
    plateau_metrics: list[ConsumedMetric]
    rev: int = 0
    problem: str = ""


@dataclass(frozen=True)
class Change:
    """One atomic write about one job.

    Attributes:
        job: The job's new row (inserted or replacing the old one); its events are not
            written (``new_events`` and ``applied`` are).
        new_events: Events to append.
        applied: Existing events whose ``effective_step``/``applied_at`` are now set.
        plateau_metrics: Metrics consumed by the plateau tracker.
        reset: The job was recreated: forget its consumed plateau metrics.
    """

    job: Job
    new_events: Sequence[Event] = ()
    applied: Sequence[Event] = ()
    plateau_metrics: Sequence[ConsumedMetric] = ()
    reset: bool = False


def job_to_row(job: Job) -> tuple[Any, ...]:
    """Return the ``jobs`` row of ``job`` (:data:`JOB_COLUMNS`; its events are not in it)."""
    return (
        job.job_id,
        job.schedule,
        json.dumps(list(job.base_lrs)),
        job.version,
        job.created_version,
        job.step,
        job.state.value,
        int(job.verbose),
        job.created_at,
        job.updated_at,
        json.dumps(list(job.lr)) if job.lr else None,
        job.applied_version,
        job.world_size,
        job.epoch,
    )


def job_from_row(row: Sequence[Any]) -> Job:
    """Return the job (without events) of a ``jobs`` row in :data:`JOB_COLUMNS` order.

    A spec stored by an older release is read back in today's canonical text.
    """
    (
        job_id,
        schedule,
        base_lrs,
        version,
        created_version,
        step,
        state,
        verbose,
        created_at,
        updated_at,
        lrs,
        applied_version,
        world_size,
        epoch,
    ) = row
    return Job(
        job_id=job_id,
        schedule=stored_spec_text(schedule),
        base_lrs=tuple(float(b) for b in json.loads(base_lrs)),
        version=int(version),
        created_version=int(created_version),
        step=int(step),
        state=JobState(state),
        verbose=bool(verbose),
        created_at=float(created_at),
        updated_at=float(updated_at),
        lr=() if lrs is None else tuple(float(x) for x in json.loads(lrs)),
        applied_version=int(applied_version),
        world_size=int(world_size),
        epoch=int(epoch),
    )


def salvage_job_row(row: Sequence[Any]) -> Job:
    """Return what can be read of a ``jobs`` row :func:`job_from_row` refused.

    The id and versions are kept (versions never go back); a value that does not read is
    left empty (no base LRs, no spec), so the job loads and is marked as one that cannot be
    evaluated instead of keeping the controller from starting.
    """
    values = dict(zip(JOB_COLUMNS, row))

    def get(name: str, convert: Any, default: Any) -> Any:
        try:
            return convert(values[name])
        except Exception:
            return default

    def floats(text: Any) -> tuple[float, ...]:
        return tuple(float(x) for x in json.loads(text))

    return Job(
        job_id=str(values["job_id"]),
        schedule=get("schedule", str, ""),
        base_lrs=get("base_lrs", floats, ()),
        version=get("version", int, 0),
        created_version=get("created_version", int, 1),
        step=get("step", int, -1),
        state=get("state", JobState, JobState.RUNNING),
        verbose=get("verbose", bool, False),
        created_at=get("created_at", float, 0.0),
        updated_at=get("updated_at", float, 0.0),
        lr=get("lrs", floats, ()),
        applied_version=get("applied_version", int, 0),
        world_size=get("world_size", int, 0),
        epoch=get("epoch", int, 0),
    )


def event_to_row(e: Event) -> tuple[Any, ...]:
    """Return the ``events`` row of ``e`` after ``job_id`` (:data:`EVENT_COLUMNS`)."""
    return (
        e.version,
        e.op.value,
        e.value,
        e.schedule,
        e.group,
        e.effective_step,
        e.actor,
        e.reason,
        e.created_at,
        e.applied_at,
    )


def event_from_row(row: Sequence[Any]) -> Event:
    """Return the event of an ``events`` row in :data:`EVENT_COLUMNS` order.

    A replacement spec stored by an older release is read back in today's canonical text.
    """
    version, op, value, schedule, group, effective_step, actor, reason, created, applied = row
    return Event(
        version=version,
        op=Op(op),
        value=value,
        schedule=None if schedule is None else stored_spec_text(schedule),
        group=group,
        effective_step=effective_step,
        actor=actor,
        reason=reason,
        created_at=created,
        applied_at=applied,
    )


def stored_jobs(
    jobs: Iterable[tuple[Sequence[Any], int]],
    events: Iterable[Sequence[Any]],
    metrics: Mapping[str, list[ConsumedMetric]],
) -> list[StoredJob]:
    """The jobs a store loads at startup, from its rows.

    One job's unreadable rows never stop the load: the job comes with its ``problem`` (what
    did not read; it is served marked as one that cannot be evaluated) and the others load
    as usual.

    Args:
        jobs: Each job's ``jobs`` row (:data:`JOB_COLUMNS`) and its revision.
        events: The current incarnations' ``(job_id, *EVENT_COLUMNS)`` rows, version order.
        metrics: Each job's consumed plateau metrics, step order.
    """
    problems: dict[str, str] = {}
    logs: dict[str, list[Event]] = {}
    for row in events:
        try:
            logs.setdefault(row[0], []).append(event_from_row(row[1:]))
        except Exception as exc:
            problems.setdefault(
                row[0], f"event row {row[1]!r} does not read ({type(exc).__name__}: {exc})"
            )
    out = []
    for row, rev in jobs:
        try:
            record = job_from_row(row)
        except Exception as exc:
            record = salvage_job_row(row)
            problems.setdefault(
                record.job_id, f"its row does not read ({type(exc).__name__}: {exc})"
            )
        job_id = record.job_id
        log, consumed = logs.get(job_id, []), list(metrics.get(job_id, []))
        out.append(StoredJob(record, log, consumed, rev=rev, problem=problems.get(job_id, "")))
    return out
