"""The only conversion between protobuf messages (``lrctl.v1``) and the domain model.

The servicer, the client and the worker all convert here, so a field added to the proto is
mapped once. Times are float Unix seconds on the domain side and ``Timestamp`` on the wire
(unset when the domain has 0.0 / None).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from lrctl.model import Divergence, Job, JobState, Report, WatchKind, WatchMessage
from lrctl.overrides import Event, Op
from lrctl.v1 import lrctl_pb2

_T = TypeVar("_T")

__all__ = [
    "OP_TO_PROTO",
    "PROTO_TO_OP",
    "event_from_proto",
    "event_to_proto",
    "events_from_proto",
    "job_delta_from_proto",
    "job_delta_to_proto",
    "job_from_proto",
    "job_to_proto",
    "report_from_proto",
    "report_to_proto",
    "watch_from_proto",
    "watch_to_proto",
]

OP_TO_PROTO: dict[Op, int] = {
    Op.SCALE: lrctl_pb2.OVERRIDE_OP_SCALE,
    Op.SET: lrctl_pb2.OVERRIDE_OP_SET,
    Op.CLEAR: lrctl_pb2.OVERRIDE_OP_CLEAR,
    Op.REPLACE_SCHEDULE: lrctl_pb2.OVERRIDE_OP_REPLACE_SCHEDULE,
    Op.PLATEAU_REDUCE: lrctl_pb2.OVERRIDE_OP_PLATEAU_REDUCE,
}
PROTO_TO_OP: dict[int, Op] = {v: k for k, v in OP_TO_PROTO.items()}

_STATE_TO_PROTO: dict[JobState, int] = {
    JobState.RUNNING: lrctl_pb2.JOB_STATE_RUNNING,
    JobState.FINISHED: lrctl_pb2.JOB_STATE_FINISHED,
}
_KIND = lrctl_pb2.WatchResponse
_KIND_TO_PROTO: dict[WatchKind, int] = {
    WatchKind.SNAPSHOT: _KIND.KIND_SNAPSHOT,
    WatchKind.EVENT: _KIND.KIND_EVENT,
    WatchKind.RESYNC: _KIND.KIND_RESYNC,
    WatchKind.HEARTBEAT: _KIND.KIND_HEARTBEAT,
    WatchKind.FINISHED: _KIND.KIND_FINISHED,
}
_PROTO_TO_KIND: dict[int, WatchKind] = {v: k for k, v in _KIND_TO_PROTO.items()}


def _seconds(msg: Any, field: str) -> float | None:
    """Return a ``Timestamp`` field as Unix seconds, None when unset."""
    if not msg.HasField(field):
        return None
    stamp = getattr(msg, field)
    return float(stamp.seconds) + float(stamp.nanos) / 1e9


def _stamp(msg: Any, field: str, seconds: float | None) -> None:
    """Set a ``Timestamp`` field from Unix seconds; None and 0.0 leave it unset."""
    if seconds:
        whole = math.floor(seconds)
        nanos = round((seconds - whole) * 1e9)  # exact for times with few decimals
        if nanos >= 1_000_000_000:
            whole, nanos = whole + 1, nanos - 1_000_000_000
        stamp = getattr(msg, field)
        stamp.seconds, stamp.nanos = whole, nanos


#: Fields of the same name and type on both sides, copied as they are (:func:`_same`).
_JOB_SAME = [
    "job_id",
    "schedule",
    "version",
    "step",
    "verbose",
    "workers",
    "epoch",
    "world_size",
    "watch_streams",
    "applied_version",
]
_REPORT_SAME = ["job_id", "rank", "step", "applied_version", "final", "epoch", "world_size"]


def _same(source: Any, names: Iterable[str]) -> dict[str, Any]:
    """``{name: source.name}`` for the fields both sides name and type alike."""
    return {name: getattr(source, name) for name in names}


def _known(table: Mapping[int, _T], number: int, what: str) -> _T:
    """``table[number]``, or ValueError naming ``what`` for a number this version does not
    know (a newer controller's)."""
    found = table.get(number)
    if found is None:
        raise ValueError(f"expected a known {what}, got {number}")
    return found


# -- events ------------------------------------------------------------------------------------


def event_from_proto(msg: lrctl_pb2.OverrideEvent) -> Event:
    """Convert an ``OverrideEvent`` message to the domain :class:`Event`.

    Raises:
        ValueError: an op this version does not know (a newer controller).
    """
    op = _known(PROTO_TO_OP, msg.op, "override op")
    return Event(
        version=msg.version,
        op=op,
        value=msg.value if op in (Op.SCALE, Op.SET) else None,
        schedule=msg.schedule or None,
        group=msg.param_group if msg.HasField("param_group") else None,
        effective_step=msg.effective_step if msg.HasField("effective_step") else None,
        actor=msg.actor,
        reason=msg.reason,
        created_at=_seconds(msg, "created_at") or 0.0,
        applied_at=_seconds(msg, "applied_at"),
    )


def events_from_proto(msgs: Iterable[lrctl_pb2.OverrideEvent]) -> tuple[Event, ...]:
    """Convert a repeated ``OverrideEvent`` field, oldest first."""
    return tuple(event_from_proto(m) for m in msgs)


def event_to_proto(event: Event) -> lrctl_pb2.OverrideEvent:
    """Convert a domain :class:`Event` to its ``OverrideEvent`` message."""
    msg = lrctl_pb2.OverrideEvent(
        version=event.version,
        op=OP_TO_PROTO[event.op],  # type: ignore[arg-type]
        value=event.value or 0.0,
        schedule=event.schedule or "",
        actor=event.actor,
        reason=event.reason,
    )
    if event.group is not None:
        msg.param_group = event.group
    if event.effective_step is not None:
        msg.effective_step = event.effective_step
    _stamp(msg, "created_at", event.created_at)
    _stamp(msg, "applied_at", event.applied_at)
    return msg


# -- jobs --------------------------------------------------------------------------------------


def job_from_proto(msg: lrctl_pb2.Job) -> Job:
    """Convert a ``Job`` message (with or without its event log) to the domain :class:`Job`."""
    return Job(
        **_same(msg, _JOB_SAME),
        base_lrs=tuple(msg.base_lrs),
        created_version=msg.created_version or 1,
        lr=tuple(msg.lrs),
        state=(
            JobState.FINISHED if msg.state == lrctl_pb2.JOB_STATE_FINISHED else JobState.RUNNING
        ),
        created_at=_seconds(msg, "created_at") or 0.0,
        updated_at=_seconds(msg, "updated_at") or 0.0,
        events=events_from_proto(msg.events),
    )


def job_to_proto(job: Job, *, events: bool = True) -> lrctl_pb2.Job:
    """Convert a domain :class:`Job`; ``events=False`` sends its head only."""
    msg = lrctl_pb2.Job(
        **_same(job, _JOB_SAME),
        base_lrs=job.base_lrs,
        created_version=job.created_version,
        lrs=job.lr,
        state=_STATE_TO_PROTO[job.state],  # type: ignore[arg-type]
        events=[event_to_proto(e) for e in job.events] if events else [],
    )
    _stamp(msg, "created_at", job.created_at)
    _stamp(msg, "updated_at", job.updated_at)
    return msg


# -- watch -------------------------------------------------------------------------------------


def job_delta_to_proto(job: Job, since_version: int) -> lrctl_pb2.Job:
    """Encode what ``job`` adds to the same incarnation held at ``since_version``.

    Only the version, the state and the events after ``since_version`` (how rank 0 sends a
    new version to the other ranks of a ``torch.distributed`` run).
    """
    msg = lrctl_pb2.Job(version=job.version, state=_STATE_TO_PROTO[job.state])  # type: ignore[arg-type]
    msg.events.extend(event_to_proto(e) for e in job.events if e.version > since_version)
    return msg


def job_delta_from_proto(msg: lrctl_pb2.Job, base: Job) -> Job:
    """Apply :func:`job_delta_to_proto`'s message to ``base`` (the job it was made against)."""
    state = JobState.FINISHED if msg.state == lrctl_pb2.JOB_STATE_FINISHED else base.state
    return dataclasses.replace(
        base, version=msg.version, state=state, events=base.events + events_from_proto(msg.events)
    )


def watch_from_proto(msg: lrctl_pb2.WatchResponse) -> WatchMessage:
    """Convert a ``WatchResponse``.

    Raises:
        ValueError: a kind this version does not know (a newer controller).
    """
    kind = _known(_PROTO_TO_KIND, msg.kind, "Watch message kind")
    return WatchMessage(
        kind=kind,
        version=msg.version,
        job=job_from_proto(msg.job) if msg.HasField("job") else None,
        event=event_from_proto(msg.event) if msg.HasField("event") else None,
    )


def watch_to_proto(message: WatchMessage) -> lrctl_pb2.WatchResponse:
    """Convert a :class:`WatchMessage` to a ``WatchResponse``."""
    msg = lrctl_pb2.WatchResponse(
        kind=_KIND_TO_PROTO[message.kind],  # type: ignore[arg-type]
        version=message.version,
    )
    if message.job is not None:
        msg.job.CopyFrom(job_to_proto(message.job))
    if message.event is not None:
        msg.event.CopyFrom(event_to_proto(message.event))
    return msg


# -- reports -----------------------------------------------------------------------------------


def report_to_proto(report: Report) -> lrctl_pb2.ReportRequest:
    """Convert a :class:`Report` to a ``ReportRequest``."""
    return lrctl_pb2.ReportRequest(
        **_same(report, _REPORT_SAME),
        lrs=report.lrs,
        applied=[lrctl_pb2.AppliedVersion(version=v, effective_step=s) for v, s in report.applied],
        plateau_metrics=[
            lrctl_pb2.PlateauMetric(step=s, value=x) for s, x in report.plateau_metrics
        ],
        divergences=[
            lrctl_pb2.Divergence(
                step=d.step, version=d.version, lr_checksums=d.lr_checksums, detail=d.detail
            )
            for d in report.divergences
        ],
    )


def report_from_proto(msg: lrctl_pb2.ReportRequest) -> Report:
    """Convert a ``ReportRequest`` to a :class:`Report`."""
    return Report(
        **_same(msg, _REPORT_SAME),
        lrs=tuple(msg.lrs),
        applied=tuple((a.version, a.effective_step) for a in msg.applied),
        plateau_metrics=tuple((m.step, m.value) for m in msg.plateau_metrics),
        divergences=tuple(
            Divergence(
                step=d.step, version=d.version, lr_checksums=tuple(d.lr_checksums), detail=d.detail
            )
            for d in msg.divergences
        ),
    )
