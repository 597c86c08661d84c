"""A small synchronous client for the lrctl controller.

Wraps the generated ``LRControllerStub`` and returns plain Python values (frozen
dataclasses), so scripts, notebooks and the ``lrctl`` CLI never touch protobuf::

    from controller.client import Client

    with Client.from_env() as client:            # LRCTL_ADDRESS, LRCTL_TOKEN
        client.create_job("run-42", "StepLR(step_size=200, gamma=0.5)", [0.1])
        client.override("run-42", "scale", 0.5, reason="loss spike")
        print(client.get_job("run-42").lr)        # (0.05,)

Every failed call raises :class:`ClientError` (one clear line, ``.code`` and ``.details``).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]

from controller.config import CLIENT_CHANNEL_OPTIONS
from lrctl.errors import LrctlError, OverrideError
from lrctl.overrides import Event as CoreEvent
from lrctl.overrides import Op
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from lrctl.wire import ADDRESS_ENV_VAR, DEFAULT_ADDRESS, TOKEN_ENV_VAR, event_from_proto

__all__ = [
    "ADDRESS_ENV_VAR",
    "CHANNEL_OPTIONS",
    "DEFAULT_ADDRESS",
    "DEFAULT_TIMEOUT_SECONDS",
    "TOKEN_ENV_VAR",
    "Client",
    "ClientError",
    "CreateResult",
    "Event",
    "Job",
    "OverrideResult",
    "Update",
    "WatchStream",
]

#: Deadline of every unary call, in seconds. Watch streams have none.
DEFAULT_TIMEOUT_SECONDS = 10.0

#: gRPC channel arguments: keepalive (a frozen controller surfaces as UNAVAILABLE within
#: ~15 s, even on an idle Watch stream), reconnect backoff capped at 5 s, and message sizes.
#: The numbers are a contract with the server's ping policy; see :mod:`controller.config`.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = CLIENT_CHANNEL_OPTIONS

_STUB_CLASS: Any = lrctl_pb2_grpc.LRControllerStub  # generated, untyped


class ClientError(LrctlError):
    """A call to the controller failed.

    ``str(error)`` is one line meant for people: ``NOT_FOUND: job 'run-9' not found``, or
    ``cannot reach the lrctl controller at 127.0.0.1:50051 (is 'lrctl serve' running?)``.

    Attributes:
        code: The gRPC status code's name, e.g. ``"NOT_FOUND"``, ``"INVALID_ARGUMENT"``.
        details: The controller's message, verbatim.
        address: The controller address the call went to.
    """

    def __init__(self, code: str, details: str, address: str = "") -> None:
        self.code = code
        self.details = details
        self.address = address
        super().__init__(_describe(code, details, address))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.details, self.address))


def _describe(code: str, details: str, address: str) -> str:
    details = " ".join(details.split())  # one line, whatever the server sent
    where = address or "its address"
    if code == "UNAVAILABLE":
        return f"cannot reach the lrctl controller at {where} (is 'lrctl serve' running?)"
    if code == "DEADLINE_EXCEEDED":
        return f"DEADLINE_EXCEEDED: the lrctl controller at {where} did not answer in time"
    return f"{code}: {details}" if details else code


@dataclass(frozen=True)
class Event:
    """One entry of a job's override log.

    Attributes:
        version: The job version this event created.
        op: ``"scale"``, ``"set"``, ``"clear"``, ``"replace_schedule"`` or
            ``"plateau_reduce"``.
        value: The factor (scale) or the LR (set); None otherwise.
        schedule: The new spec (replace_schedule); None otherwise.
        group: Target param group; None for every group.
        effective_step: Step at which it is first in ``param_groups``; None while pending.
        actor: Who asked for it.
        reason: Why.
        created_at: When the controller accepted it (UTC).
        applied_at: When rank 0 reported it applied (UTC), or None.
    """

    version: int
    op: str
    value: float | None
    schedule: str | None
    group: int | None
    effective_step: int | None
    actor: str
    reason: str
    created_at: datetime | None
    applied_at: datetime | None

    @property
    def pending(self) -> bool:
        """True until the workers report the step at which it took effect."""
        return self.effective_step is None

    def describe(self) -> str:
        """Return the operator's notation: ``lr *= 0.5``, ``lr = 0.0003``, ``clear``, ...

        ``lr /= 2`` is stored as the scale it means, so it reads ``lr *= 0.5``.
        """
        return CoreEvent(self.version, Op(self.op), self.value, self.schedule,
                         self.group).describe()

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (times as ISO 8601 strings)."""
        return {
            "version": self.version,
            "op": self.op,
            "value": self.value,
            "schedule": self.schedule,
            "group": self.group,
            "effective_step": self.effective_step,
            "actor": self.actor,
            "reason": self.reason,
            "created_at": _iso(self.created_at),
            "applied_at": _iso(self.applied_at),
        }

    @classmethod
    def from_proto(cls, msg: Any) -> Event:
        """Build from an ``lrctl.v1.OverrideEvent``."""
        core = event_from_proto(msg)
        return cls(
            version=core.version, op=core.op.value, value=core.value, schedule=core.schedule,
            group=core.group, effective_step=core.effective_step, actor=core.actor,
            reason=core.reason, created_at=_time(msg, "created_at"),
            applied_at=_time(msg, "applied_at"),
        )


@dataclass(frozen=True)
class Job:
    """A job as the controller holds it.

    Attributes:
        job_id: The job's id.
        schedule: Canonical spec text, e.g. ``StepLR(step_size=200, gamma=0.5)``.
        base_lrs: One base LR per param group.
        version: Strictly increasing; bumped by creation, every event and finishing.
        step: Latest step reported by rank 0; -1 before any report.
        lr: Each group's LR at ``step`` (at step 0 before any report), pending events
            included.
        state: ``"running"`` or ``"finished"``.
        workers: Ranks with an open Watch stream.
        verbose: Whether workers log every LR change (torch's ``verbose``).
        events: The override log, oldest first (empty in :meth:`Client.list_jobs`).
        created_at: When the job was created (UTC).
        updated_at: When it last changed (UTC).
    """

    job_id: str
    schedule: str
    base_lrs: tuple[float, ...]
    version: int
    step: int
    lr: tuple[float, ...]
    state: str
    workers: int
    verbose: bool
    events: tuple[Event, ...]
    created_at: datetime | None
    updated_at: datetime | None

    def to_dict(self, *, events: bool = True) -> dict[str, Any]:
        """Return a JSON-ready dict; ``events=False`` leaves the log out."""
        data: dict[str, Any] = {
            "job_id": self.job_id,
            "version": self.version,
            "step": self.step,
            "lr": list(self.lr),
            "schedule": self.schedule,
            "base_lrs": list(self.base_lrs),
            "state": self.state,
            "workers": self.workers,
            "verbose": self.verbose,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }
        if events:
            data["events"] = [e.to_dict() for e in self.events]
        return data

    @classmethod
    def from_proto(cls, msg: Any) -> Job:
        """Build from an ``lrctl.v1.Job``."""
        return cls(
            job_id=str(msg.job_id),
            schedule=str(msg.schedule),
            base_lrs=tuple(float(x) for x in msg.base_lrs),
            version=int(msg.version),
            step=int(msg.step),
            lr=tuple(float(x) for x in msg.lrs),
            state=_enum_name(lrctl_pb2.JobState, msg.state, "JOB_STATE_"),
            workers=int(msg.workers),
            verbose=bool(msg.verbose),
            events=tuple(Event.from_proto(e) for e in msg.events),
            created_at=_time(msg, "created_at"),
            updated_at=_time(msg, "updated_at"),
        )


@dataclass(frozen=True)
class CreateResult:
    """What :meth:`Client.create_job` returns.

    Attributes:
        job: The job, new or existing.
        created: False when an existing job with the same spec was attached to.
    """

    job: Job
    created: bool


@dataclass(frozen=True)
class OverrideResult:
    """What :meth:`Client.override` returns.

    Attributes:
        event: The event appended to the log (pending until the workers apply it).
        job: The job after the event.
    """

    event: Event
    job: Job


@dataclass(frozen=True)
class Update:
    """One message of a Watch stream.

    Attributes:
        kind: ``"snapshot"`` (first message), ``"event"`` (one new event), ``"resync"``
            (full state: the resume point is gone), ``"heartbeat"`` (nothing new) or
            ``"finished"`` (final state; the stream then ends).
        version: The job's version after this message.
        job: Full job state (snapshot, resync, finished; may be present otherwise).
        event: The new event (``kind == "event"``).
    """

    kind: str
    version: int
    job: Job | None
    event: Event | None

    @classmethod
    def from_proto(cls, msg: Any) -> Update:
        """Build from an ``lrctl.v1.WatchResponse``."""
        return cls(
            kind=_enum_name(lrctl_pb2.WatchResponse.Kind, msg.kind, "KIND_"),
            version=int(msg.version),
            job=Job.from_proto(msg.job) if msg.HasField("job") else None,
            event=Event.from_proto(msg.event) if msg.HasField("event") else None,
        )


class WatchStream(Iterator[Update]):
    """An open Watch call: iterate for :class:`Update` messages, :meth:`cancel` to stop.

    Iteration ends after a ``"finished"`` update, or after :meth:`cancel` (which may be
    called from another thread); a broken stream raises :class:`ClientError`.
    """

    def __init__(self, call: Any, address: str) -> None:
        self._call = call
        self._address = address
        self._cancelled = False

    def __iter__(self) -> WatchStream:
        return self

    def __next__(self) -> Update:
        try:
            msg = next(self._call)
        except grpc.RpcError as error:
            if self._cancelled:
                raise StopIteration from None
            raise _wrap(error, self._address) from error
        return Update.from_proto(msg)

    def cancel(self) -> None:
        """End the stream; safe to call from any thread, more than once."""
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()


class Client:
    """A synchronous connection to the lrctl controller.

    Args:
        address: ``HOST:PORT`` of the controller; :data:`DEFAULT_ADDRESS` when None.
        token: Bearer token sent as ``authorization`` metadata; none when None.
        timeout: Deadline of each unary call, in seconds.

    Use :meth:`from_env` to read ``LRCTL_ADDRESS`` / ``LRCTL_TOKEN``. The client is a
    context manager; :meth:`close` releases the channel.
    """

    def __init__(self, address: str | None = None, token: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.address = address or DEFAULT_ADDRESS
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        self._channel = grpc.insecure_channel(self.address, options=list(CHANNEL_OPTIONS))
        self._stub = _STUB_CLASS(self._channel)

    @classmethod
    def from_env(cls, address: str | None = None, token: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 environ: Mapping[str, str] | None = None) -> Client:
        """Build a client; arguments left as None come from the environment.

        Args:
            address: Overrides ``LRCTL_ADDRESS``.
            token: Overrides ``LRCTL_TOKEN``.
            timeout: Deadline of each unary call, in seconds.
            environ: Where to read the variables; ``os.environ`` by default.

        Returns:
            A connected client.
        """
        env = os.environ if environ is None else environ
        return cls(address or env.get(ADDRESS_ENV_VAR) or None,
                   token or env.get(TOKEN_ENV_VAR) or None, timeout=timeout)

    def create_job(self, job_id: str, schedule: str, base_lrs: Sequence[float], *,
                   replace: bool = False, verbose: bool = False) -> CreateResult:
        """Create a job, or attach to an existing one with the same spec.

        Args:
            job_id: The job's id, e.g. ``"run-42"``.
            schedule: Spec text, e.g. ``"StepLR(step_size=200, gamma=0.5)"``.
            base_lrs: One base LR per param group.
            replace: Replace the schedule of an existing job with a different spec
                (otherwise that is FAILED_PRECONDITION).
            verbose: Workers log every LR change.

        Returns:
            The job and whether it was created.

        Raises:
            ClientError: e.g. INVALID_ARGUMENT for a bad spec.
        """
        response = self._unary("CreateJob", lrctl_pb2.CreateJobRequest(
            job_id=job_id, schedule=schedule, base_lrs=list(base_lrs), replace=replace,
            verbose=verbose))
        return CreateResult(Job.from_proto(response.job), bool(response.created))

    def get_job(self, job_id: str) -> Job:
        """Return the job with its full event log.

        Raises:
            ClientError: NOT_FOUND for an unknown job.
        """
        return Job.from_proto(self._unary("GetJob", lrctl_pb2.GetJobRequest(job_id=job_id)))

    def list_jobs(self, *, include_finished: bool = False, page_size: int = 100) -> list[Job]:
        """Return every job (following pages), without event logs.

        Args:
            include_finished: Include finished jobs.
            page_size: Jobs per request.
        """
        jobs: list[Job] = []
        token = ""
        seen: set[str] = set()
        while True:
            response = self._unary("ListJobs", lrctl_pb2.ListJobsRequest(
                page_size=page_size, page_token=token, include_finished=include_finished))
            jobs.extend(Job.from_proto(j) for j in response.jobs)
            token = str(response.next_page_token)
            if not token or token in seen:
                return jobs
            seen.add(token)

    def finish_job(self, job_id: str) -> Job:
        """Mark the job finished (its metric series are removed; it stays readable)."""
        return Job.from_proto(self._unary("FinishJob",
                                          lrctl_pb2.FinishJobRequest(job_id=job_id)))

    def override(self, job_id: str, op: Op | str, value: float | None = None, *,
                 schedule: str | None = None, group: int | None = None, reason: str = "",
                 actor: str | None = None,
                 expected_version: int | None = None) -> OverrideResult:
        """Append an override event to the job's log.

        The value is validated by the controller (INVALID_ARGUMENT), not here; parse
        operator text such as ``'lr /= 2'`` with :func:`lrctl.overrides.parse_override`.

        Args:
            job_id: The job.
            op: ``"scale"`` (``lr *= value``), ``"set"`` (``lr = value``), ``"clear"`` or
                ``"replace_schedule"`` (an :class:`lrctl.overrides.Op` works too).
            value: The factor (scale) or the LR (set).
            schedule: The new spec (replace_schedule).
            group: Target param group; every group when None.
            reason: Why, for the history.
            actor: Who; the local user name when None.
            expected_version: Fail with ABORTED unless the job is at this version.

        Returns:
            The new event and the job after it.

        Raises:
            OverrideError: an unknown op, or scale/set without a value, or
                replace_schedule without a schedule.
            ClientError: e.g. INVALID_ARGUMENT, NOT_FOUND, ABORTED.
        """
        name = op.value if isinstance(op, Op) else str(op).lower()
        if name not in ("scale", "set", "clear", "replace_schedule"):
            raise OverrideError(f"expected op scale, set, clear or replace_schedule, "
                                f"got {op!r}")
        if name in ("scale", "set") and value is None:
            raise OverrideError(f"op {name!r} needs a value")
        if name == "replace_schedule" and not schedule:
            raise OverrideError("op 'replace_schedule' needs a schedule")
        request = lrctl_pb2.OverrideRequest(
            job_id=job_id, op="OVERRIDE_OP_" + name.upper(),
            schedule=schedule or "",
            actor=_default_actor() if actor is None else actor, reason=reason)
        if value is not None:
            request.value = float(value)
        if group is not None:
            request.param_group = group
        if expected_version is not None:
            request.expected_version = expected_version
        response = self._unary("Override", request)
        return OverrideResult(Event.from_proto(response.event), Job.from_proto(response.job))

    def history(self, job_id: str) -> list[Event]:
        """Return the job's override log, oldest first."""
        response = self._unary("History", lrctl_pb2.HistoryRequest(job_id=job_id))
        return [Event.from_proto(e) for e in response.events]

    def preview(self, schedule: str, base_lrs: Sequence[float], steps: int
                ) -> list[list[float]]:
        """Evaluate a spec on the controller: row t is each group's LR after t steps.

        :func:`lrctl.program.preview` computes the same rows locally, without a controller.
        """
        response = self._unary("Preview", lrctl_pb2.PreviewRequest(
            schedule=schedule, base_lrs=list(base_lrs), steps=steps))
        return [[float(x) for x in row.lr] for row in response.rows]

    def watch(self, job_id: str, from_version: int = 0, *, worker_id: str = ""
              ) -> WatchStream:
        """Open a Watch stream: a snapshot (or resync), then every new version.

        Args:
            job_id: The job.
            from_version: Last version held; 0 for a fresh snapshot.
            worker_id: Set by training ranks only (it counts towards ``workers``).

        Returns:
            An iterator of :class:`Update`; cancel it (or use ``with``) to stop.
        """
        call = self._stub.Watch(
            lrctl_pb2.WatchRequest(job_id=job_id, from_version=from_version,
                                   worker_id=worker_id),
            metadata=self._metadata)
        return WatchStream(call, self.address)

    def close(self) -> None:
        """Close the channel; open streams end."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(address={self.address!r})"

    def _unary(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout,
                                               metadata=self._metadata)
        except grpc.RpcError as error:
            raise _wrap(error, self.address) from error


def _wrap(error: Any, address: str) -> ClientError:
    if isinstance(error, grpc.Call):
        return ClientError(error.code().name, error.details() or "", address)
    return ClientError("UNKNOWN", str(error), address)


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in some containers
        return "unknown"


def _enum_name(enum_type: Any, number: int, prefix: str) -> str:
    try:
        name = str(enum_type.Name(number))
    except ValueError:
        return "unspecified"
    return name.removeprefix(prefix).lower()


def _time(msg: Any, field: str) -> datetime | None:
    if not msg.HasField(field):
        return None
    stamp = getattr(msg, field)
    if not stamp.seconds and not stamp.nanos:
        return None
    moment: datetime = stamp.ToDatetime(tzinfo=timezone.utc)
    return moment


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
