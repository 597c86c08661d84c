"""A job as the controller holds it in memory, and the pure rules about one job.

ListJobs page tokens, whether a CreateJob attaches, what an override and a report may say
(values, sizes: :class:`controller.limits.ServerLimits`) and which events a report applies,
and how large a job's log is once encoded. Job ids are checked by the core
(:func:`lrctl.model.check_job_id`).
"""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, replace

from controller.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Superseded
from controller.limits import ServerLimits
from controller.plateau import JobPlateau
from lrctl.errors import LrctlError
from lrctl.limits import DEFAULT_LIMITS, Limits
from lrctl.model import JOB_ID_PATTERN, Job, Report
from lrctl.overrides import Event, Op, event_version, validate_override
from lrctl.schedules import ReduceLROnPlateau, build_schedule, canonical_spec

__all__ = [
    "JobEntry",
    "check_epoch",
    "check_evaluable",
    "check_note",
    "check_override",
    "check_report",
    "create_conflict",
    "decode_token",
    "describe_error",
    "encode_token",
    "event_bytes",
    "head_bytes",
    "log_bytes",
    "mark_applied",
    "same_spec",
    "with_events",
]


@dataclass
class JobEntry:
    """One job in memory; its fields are replaced only after the write behind them is durable.

    Attributes:
        job: The job as stored, with its current log. ``job.lr`` holds the LRs rank 0 last
            reported; views show the LRs computed from the schedule instead
            (:class:`controller.projection.Projection`), and ``workers``/``watch_streams``
            are counted by the watch hub.
        plateau: ReduceLROnPlateau bookkeeping.
        persisted_at: When rank 0's bare progress was last written (throttled writes).
        broken: Why the job cannot be evaluated (a spec, base LRs or log this release
            refuses, found when it was loaded); None for a sound job. Such a job is listed,
            its log is readable and it can be finished or recreated; everything else about
            it is FAILED_PRECONDITION (:func:`check_evaluable`).
        log_size: ``(created_version, events counted, their bytes)``: :func:`log_bytes`'s
            running total, so an override costs the same at 10 events and at 10,000.
    """

    job: Job
    plateau: JobPlateau
    persisted_at: float = 0.0
    broken: str | None = None
    log_size: tuple[int, int, int] = (0, 0, 0)

    @property
    def running(self) -> bool:
        """True until the job is finished."""
        return not self.job.finished


def check_evaluable(entry: JobEntry) -> None:
    """Refuse to evaluate, watch or change a job that cannot be evaluated.

    Raises:
        FailedPrecondition: ``entry.broken``, with what to do about it.
    """
    if entry.broken is not None:
        raise FailedPrecondition(
            f"job {entry.job.job_id!r} cannot be evaluated: {entry.broken}; its log is still "
            f"readable (History); finish it (FinishJob) or recreate it (CreateJob with "
            f"replace)"
        )


def _prefix(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def check_note(actor: str, reason: str, limits: ServerLimits) -> None:
    """Check an override's ``actor`` and ``reason`` against ``limits``.

    Raises:
        ResourceExhausted: an actor or reason longer than the limit.
        InvalidArgument: control characters (newlines, escape sequences) in the actor.
    """
    if len(actor) > limits.max_actor_chars:
        raise ResourceExhausted(
            f"expected an actor of at most {limits.max_actor_chars} "
            f"characters, got {len(actor)}: {_prefix(actor)}"
        )
    if not actor.isprintable():
        raise InvalidArgument(
            f"expected an actor without control characters (newlines, "
            f"escape sequences), got {_prefix(actor)}"
        )
    size = len(reason.encode("utf-8", "surrogatepass"))
    if size > limits.max_reason_bytes:
        raise ResourceExhausted(
            f"expected a reason of at most {limits.max_reason_bytes} "
            f"bytes (UTF-8), got {size}: {_prefix(reason)}"
        )


#: Encoded size of an event beyond its strings, at most: version, op, value, group, effective
#: step, two timestamps, field tags and lengths, and its own tag in ``Job.events``.
_EVENT_OVERHEAD = 96


def event_bytes(event: Event) -> int:
    """An upper bound of ``event``'s size in a message, once it is applied."""
    return (
        _EVENT_OVERHEAD
        + len(event.actor.encode("utf-8", "surrogatepass"))
        + len(event.reason.encode("utf-8", "surrogatepass"))
        + len((event.schedule or "").encode("utf-8", "surrogatepass"))
    )


def head_bytes(job: Job) -> int:
    """An upper bound of the encoded size of ``job``'s head (no log): ListJobs pages by it."""
    return (
        256
        + len(job.job_id)
        + len(job.schedule.encode("utf-8", "surrogatepass"))
        + 20 * len(job.base_lrs)
    )


def log_bytes(entry: JobEntry) -> int:
    """An upper bound of the encoded size of ``entry``'s log (counts only new events)."""
    job = entry.job
    created, counted, total = entry.log_size
    events = job.events
    if created != job.created_version or counted > len(events):
        counted, total = 0, 0  # recreated: a new log
    total += sum(event_bytes(e) for e in events[counted:])
    entry.log_size = (job.created_version, len(events), total)
    return total


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """One bounded line saying what went wrong (``SpecError: ...``), for a broken job."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def encode_token(after: str) -> str:
    """Return the opaque ListJobs page token that resumes after job ``after``."""
    return base64.urlsafe_b64encode(after.encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    """Return the job id a page token resumes after ("" for the first page).

    Raises:
        InvalidArgument: a token this controller did not issue.
    """
    if not token:
        return ""
    try:
        after = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = ""
    if not JOB_ID_PATTERN.fullmatch(after):
        raise InvalidArgument(
            f"expected a page_token from a previous ListJobs, got {_prefix(token)}"
        )
    return after


def same_spec(a: str, b: str) -> bool:
    """Attach compares parsed specs: ``gamma=1`` and ``gamma=1.0`` are the same schedule."""
    try:
        return a == b or canonical_spec(a) == canonical_spec(b)
    except LrctlError:  # a stored spec this release no longer reads: not the same
        return False


def create_conflict(old: Job, schedule: str, base_lrs: tuple[float, ...]) -> str:
    """Say why CreateJob cannot attach to ``old`` (finished, or another spec/base LRs)."""
    if old.finished and same_spec(old.schedule, schedule) and old.base_lrs == base_lrs:
        return (
            f"job {old.job_id!r} is finished; expected a running job to attach to "
            f"(pass replace to start it again)"
        )
    return (
        f"job {old.job_id!r} exists with schedule {_prefix(old.schedule, 200)} and "
        f"base_lrs {_lrs(old.base_lrs)}; expected the same to attach, got "
        f"{_prefix(schedule, 200)} and base_lrs {_lrs(base_lrs)} (pass replace to "
        f"replace it)"
    )


def _lrs(values: Sequence[float], shown: int = 8) -> str:
    """Up to ``shown`` values of a list, and how many there are."""
    if len(values) <= shown:
        return str(list(values))
    head = ", ".join(repr(v) for v in values[:shown])
    return f"[{head}, ...] ({len(values)} groups)"


def check_override(
    op: Op,
    value: float | None,
    schedule: str | None,
    group: int | None,
    num_groups: int,
    limits: Limits = DEFAULT_LIMITS,
) -> str | None:
    """Check a client's override for a job with ``num_groups`` groups, under ``limits``
    (the LR ceiling, a replacement spec's size).

    Returns:
        The replacement spec in canonical text (REPLACE_SCHEDULE), else ``schedule``.

    Raises:
        InvalidArgument: a PLATEAU_REDUCE (only the controller decides those), no replacement
            spec, or a per-group ReduceLROnPlateau replacement.
        OverrideError, SpecError: bad value, group or replacement spec (from :mod:`lrctl`).
    """
    if not isinstance(op, Op) or op is Op.PLATEAU_REDUCE:
        raise InvalidArgument(
            f"expected an override op of scale, set, clear or "
            f"replace_schedule, got {getattr(op, 'value', op)!r}"
        )
    validate_override(op, value, group, num_groups, max_lr=limits.max_lr)
    if op is not Op.REPLACE_SCHEDULE:
        return schedule
    if not schedule:
        raise InvalidArgument("expected a schedule spec to replace with, got ''")
    built = build_schedule(schedule, num_groups, limits=limits)
    if group is not None and isinstance(built, ReduceLROnPlateau):
        raise InvalidArgument(
            "expected a job-wide ReduceLROnPlateau replacement (its metric "
            f"drives every group), got one for param group {group}"
        )
    return built.spec.to_text()


def check_epoch(job: Job, epoch: int) -> None:
    """Refuse a report from any run but the one attached last (``job.epoch``).

    Raises:
        Superseded: an older epoch (a newer rank 0 attached since: this one must stop
            reporting).
        FailedPrecondition: an epoch never handed out; the message names the current one.
    """
    if epoch == job.epoch:
        return
    if 0 < epoch < job.epoch:
        raise Superseded(
            f"job {job.job_id!r}: attach epoch {epoch} is superseded; the current epoch is "
            f"{job.epoch} (a newer rank 0 attached); this report changes nothing"
        )
    raise FailedPrecondition(
        f"job {job.job_id!r}: expected a report from attach epoch {job.epoch} (the current "
        f"one), got epoch {epoch}, which "
        + (
            "does not attach (send CreateJob with attach first)"
            if epoch == 0
            else "was never handed out"
        )
        + "; this report changes nothing"
    )


def check_report(job: Job, report: Report, pairs: Sequence[tuple[int, int]]) -> None:
    """Refuse a rank-0 report that does not fit ``job`` (LR count, versions from the future)."""
    n = job.num_groups
    if report.lrs and len(report.lrs) != n:
        raise InvalidArgument(f"expected {n} lrs (one per param group), got {len(report.lrs)}")
    for version, step in pairs:
        if version > job.version or step < 0:
            raise InvalidArgument(
                f"expected applied versions <= {job.version} with "
                f"effective_step >= 0, got version {version} at step {step}"
            )
    if report.applied_version > job.version:
        raise InvalidArgument(
            f"expected applied_version <= {job.version}, got {report.applied_version}"
        )


def mark_applied(
    events: Sequence[Event], pairs: Sequence[tuple[int, int]], now: float
) -> list[Event]:
    """Return the events that ``pairs`` apply for the first time (effective step set once).

    ``events`` is a log in version order: each pair finds its event by bisection, so a report
    costs the same whatever the log's length.
    """
    steps: dict[int, int] = {}
    for version, step in pairs:
        steps.setdefault(version, step)  # a version reported twice: the earliest step wins
    done = []
    for version in sorted(steps):
        i = bisect_left(events, version, key=event_version)
        if i == len(events) or events[i].version != version or events[i].applied_at is not None:
            continue
        event = events[i]
        effective = steps[version] if event.effective_step is None else event.effective_step
        done.append(replace(event, effective_step=effective, applied_at=now))
    return done


def with_events(
    events: tuple[Event, ...], changed: Sequence[Event], new: Sequence[Event] = ()
) -> tuple[Event, ...]:
    """Return the log ``events`` with each of ``changed`` in place of the event of its
    version, and ``new`` appended (one copy of the tuple, no Python work per event)."""
    if not changed:
        return events + tuple(new) if new else events
    log = list(events)
    for event in changed:
        i = bisect_left(log, event.version, key=event_version)
        if i < len(log) and log[i].version == event.version:
            log[i] = event
    log.extend(new)
    return tuple(log)
