"""The synchronous client of the lrctl controller: :class:`Client`."""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from lrctl._closing import Closing
from lrctl.client._errors import ClientError, from_rpc_error
from lrctl.client._tls import TLSConfig
from lrctl.constants import (
    ADDRESS_ENV_VAR,
    CLIENT_CHANNEL_OPTIONS,
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT_S,
    TOKEN_ENV_VAR,
)
from lrctl.convert import (
    OP_TO_PROTO,
    event_from_proto,
    job_from_proto,
    report_to_proto,
    watch_from_proto,
)
from lrctl.endpoints import channel_target
from lrctl.errors import OverrideError
from lrctl.limits import NO_LIMITS
from lrctl.model import Job, Report, WatchMessage
from lrctl.overrides import Event, History, Op, parse_override
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc

__all__ = ["Client", "CreateResult", "OverrideResult", "WatchStream"]

_STUB_CLASS: Any = lrctl_pb2_grpc.LRControllerStub  # generated, untyped


@dataclass(frozen=True)
class CreateResult:
    """What :meth:`Client.create_job` returns.

    Attributes:
        job: The job, new or existing.
        created: False when an existing job with the same spec was attached to.
        epoch: With ``attach=True``, the attach epoch the controller gave this run
            (reports carry it); 0 otherwise or from a controller without epochs.
    """

    job: Job
    created: bool
    epoch: int = 0


@dataclass(frozen=True)
class OverrideResult:
    """What :meth:`Client.override` returns.

    Attributes:
        event: The event appended to the log (pending until the workers apply it).
        job: The job after the event, without its log (its head).
    """

    event: Event
    job: Job


class WatchStream(Iterator[WatchMessage]):
    """One open Watch call: iterate for :class:`~lrctl.model.WatchMessage`, :meth:`cancel`.

    Iteration ends after a FINISHED message, or after :meth:`cancel` (callable from any
    thread); a broken stream raises :class:`ClientError`. It does not reconnect: see
    :class:`~lrctl.client.WatchFollower` for that.
    """

    def __init__(self, call: Any, address: str) -> None:
        self._call = call
        self._address = address
        self._cancelled = False

    def __iter__(self) -> WatchStream:
        return self

    def __next__(self) -> WatchMessage:
        try:
            msg = next(self._call)
        except grpc.RpcError as error:
            if self._cancelled:
                raise StopIteration from None
            raise from_rpc_error(error, self._address) from error
        return watch_from_proto(msg)

    def cancel(self) -> None:
        """End the stream; safe from any thread, more than once."""
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()


class Client(Closing):
    """A synchronous, thread-safe connection to the lrctl controller.

    ::

        from lrctl.client import Client

        with Client() as client:                         # LRCTL_ADDRESS, LRCTL_TOKEN
            client.create_job("run-42", "StepLR(step_size=200, gamma=0.5)", [0.1])
            client.override("run-42", "lr /= 2", reason="loss spike")
            client.get_job("run-42").lr                  # (0.05,)

    Args:
        address: ``HOST:PORT`` of the controller, or ``HOST:PORT,HOST:PORT,...`` for
            replicas (see :mod:`lrctl.endpoints`). None reads ``LRCTL_ADDRESS``, else
            ``127.0.0.1:50051``.
        token: Bearer token sent with every call. None reads ``LRCTL_TOKEN``.
        tls: A :class:`TLSConfig`; True for TLS against the system's roots; False for
            plaintext; None reads ``LRCTL_TLS_CA/CERT/KEY`` (plaintext when none is set).
        timeout: Deadline of each unary call, in seconds (Watch streams have none).
        environ: Where None arguments are read from; ``os.environ`` by default.

    Every failed call raises :class:`ClientError`. The client is a context manager;
    :meth:`close` releases the channel.

    Raises:
        ClientError: INVALID_ARGUMENT for a malformed address or unreadable TLS files.
    """

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        *,
        tls: TLSConfig | bool | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.address = address or env.get(ADDRESS_ENV_VAR) or DEFAULT_ADDRESS
        token = token or env.get(TOKEN_ENV_VAR) or None
        if tls is None:
            tls = TLSConfig.from_env(env)
        elif isinstance(tls, bool):
            tls = TLSConfig() if tls else None
        self.tls: TLSConfig | None = tls
        self.timeout = timeout
        try:
            target, extra = channel_target(self.address)
        except ValueError as error:
            raise ClientError("INVALID_ARGUMENT", str(error), self.address) from None
        options: list[tuple[str, Any]] = [*CLIENT_CHANNEL_OPTIONS, *extra]
        self._metadata: tuple[tuple[str, str], ...] = ()
        if self.tls is None:
            # Plaintext: gRPC refuses call credentials here, so the token is metadata.
            self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            credentials = self.tls.credentials()
            if token:
                credentials = grpc.composite_channel_credentials(
                    credentials, grpc.access_token_call_credentials(token)
                )
            if self.tls.server_name:
                options.append(("grpc.ssl_target_name_override", self.tls.server_name))
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = _STUB_CLASS(self._channel)

    @classmethod
    def from_env(
        cls,
        address: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        environ: Mapping[str, str] | None = None,
    ) -> Client:
        """The same as ``Client(address, token, timeout=..., environ=...)`` (older name)."""
        return cls(address, token, timeout=timeout, environ=environ)

    # -- jobs ----------------------------------------------------------------------------------

    def create_job(
        self,
        job_id: str,
        schedule: str,
        base_lrs: Sequence[float],
        *,
        replace: bool = False,
        verbose: bool = False,
        attach: bool = False,
        world_size: int = 0,
        timeout: float | None = None,
        wait_for_ready: bool = False,
    ) -> CreateResult:
        """Create a job, or attach to an existing one with the same spec and base LRs.

        Args:
            job_id: The job's id, e.g. ``"run-42"``.
            schedule: Spec text, e.g. ``"StepLR(step_size=200, gamma=0.5)"``.
            base_lrs: One base LR per param group.
            replace: Replace the schedule of an existing job with a different spec
                (otherwise that is FAILED_PRECONDITION).
            verbose: Workers log every LR change.
            attach: This is rank 0 of a training run attaching: the controller gives it a
                new attach epoch (:attr:`CreateResult.epoch`).
            world_size: With ``attach``, the run's world size.
            timeout: This call's deadline; :attr:`timeout` when None.
            wait_for_ready: Wait (up to the deadline) for an unreachable controller to come
                up instead of failing at once.

        Raises:
            ClientError: e.g. INVALID_ARGUMENT for a bad spec, FAILED_PRECONDITION for a job
                that exists with another spec.
        """
        response = self._unary(
            "CreateJob",
            lrctl_pb2.CreateJobRequest(
                job_id=job_id,
                schedule=schedule,
                base_lrs=list(base_lrs),
                replace=replace,
                verbose=verbose,
                attach=attach,
                world_size=world_size,
            ),
            timeout=timeout,
            wait_for_ready=wait_for_ready,
        )
        return CreateResult(
            job_from_proto(response.job), bool(response.created), int(response.epoch)
        )

    def get_job(self, job_id: str) -> Job:
        """Return the job with its full event log.

        Raises:
            ClientError: NOT_FOUND for an unknown job.
        """
        return job_from_proto(self._unary("GetJob", lrctl_pb2.GetJobRequest(job_id=job_id)))

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
            response = self._unary(
                "ListJobs",
                lrctl_pb2.ListJobsRequest(
                    page_size=page_size, page_token=token, include_finished=include_finished
                ),
            )
            jobs.extend(job_from_proto(j) for j in response.jobs)
            token = str(response.next_page_token)
            if not token or token in seen:
                return jobs
            seen.add(token)

    def finish_job(self, job_id: str) -> Job:
        """Mark the job finished (its metric series are removed; it stays readable)."""
        return job_from_proto(self._unary("FinishJob", lrctl_pb2.FinishJobRequest(job_id=job_id)))

    # -- overrides -----------------------------------------------------------------------------

    def override(
        self,
        job: str,
        statement: str | None = None,
        *,
        clear: bool = False,
        schedule: str | None = None,
        group: int | None = None,
        reason: str = "",
        expected_version: int | None = None,
        actor: str | None = None,
    ) -> OverrideResult:
        """Append an override to the job's log: exactly one of ``statement``, ``clear`` and
        ``schedule``.

        Args:
            job: The job's id.
            statement: What the CLI takes: ``"lr /= 2"``, ``"lr *= 0.1"`` or ``"lr = 3e-4"``
                (parsed by :func:`lrctl.overrides.parse_override`).
            clear: Drop every scale and set: back to the schedule.
            schedule: Follow this spec from the effective step on.
            group: Only this param group; every group when None.
            reason: Why, for the history.
            expected_version: Fail with ABORTED unless the job is at this version.
            actor: Who; the local user name when None.

        Returns:
            The new event and the job's head after it.

        Raises:
            OverrideError: a malformed statement, or not exactly one of the three forms
                (before any network call).
            ClientError: e.g. INVALID_ARGUMENT (a group the job does not have), NOT_FOUND,
                ABORTED (``expected_version`` is stale).
        """
        forms = (statement is not None) + bool(clear) + (schedule is not None)
        if forms != 1:
            raise OverrideError(
                "expected exactly one of a statement ('lr /= 2', 'lr *= 0.1', "
                f"'lr = 3e-4'), clear=True or schedule=SPEC; got {forms}"
            )
        value: float | None = None
        if statement is not None:
            # The controller holds the value to its configured ceiling (INVALID_ARGUMENT).
            op, value = parse_override(statement, max_lr=NO_LIMITS.max_lr)
        elif clear:
            op = Op.CLEAR
        else:
            op = Op.REPLACE_SCHEDULE
        request = lrctl_pb2.OverrideRequest(
            job_id=job,
            op=OP_TO_PROTO[op],  # type: ignore[arg-type]
            schedule=schedule or "",
            reason=reason,
            actor=_default_actor() if actor is None else actor,
        )
        if value is not None:
            request.value = value
        if group is not None:
            request.param_group = group
        if expected_version is not None:
            request.expected_version = expected_version
        response = self._unary("Override", request)
        return OverrideResult(event_from_proto(response.event), job_from_proto(response.job).head())

    def history(self, job: str) -> History:
        """Return the job's override log, oldest first (a table in a notebook).

        Raises:
            ClientError: NOT_FOUND for an unknown job.
        """
        response = self._unary("History", lrctl_pb2.HistoryRequest(job_id=job))
        return History(event_from_proto(e) for e in response.events)

    def preview(self, schedule: str, base_lrs: Sequence[float], steps: int) -> list[list[float]]:
        """Evaluate a spec on the controller: row t is each group's LR after t steps.

        :func:`lrctl.program.preview` computes the same rows locally, without a controller;
        :func:`lrctl.plot.preview_figure` draws them.
        """
        response = self._unary(
            "Preview",
            lrctl_pb2.PreviewRequest(schedule=schedule, base_lrs=list(base_lrs), steps=steps),
        )
        return [[float(x) for x in row.lr] for row in response.rows]

    # -- streams and workers -------------------------------------------------------------------

    def watch(self, job: str, from_version: int = 0, *, worker_id: str = "") -> WatchStream:
        """Open one Watch stream: a snapshot (or resync, or the events after
        ``from_version``), then every new version; it does not reconnect.

        Args:
            job: The job's id.
            from_version: Last version held; 0 for a fresh snapshot.
            worker_id: Set by training ranks only (it counts towards ``workers``).

        Returns:
            An iterator of :class:`~lrctl.model.WatchMessage`; cancel it (or use ``with``).
        """
        call = self._stub.Watch(
            lrctl_pb2.WatchRequest(job_id=job, from_version=from_version, worker_id=worker_id),
            metadata=self._metadata,
        )
        return WatchStream(call, self.address)

    def report(self, report: Report, *, timeout: float | None = None) -> int:
        """Send rank 0's progress; return the job's version on the controller.

        Raises:
            ClientError: ``error.transient`` tells whether a retry may succeed.
        """
        response = self._unary("Report", report_to_proto(report), timeout=timeout)
        return int(response.version)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel; open streams end. Idempotent."""
        self._channel.close()

    def __repr__(self) -> str:
        return f"Client(address={self.address!r}, tls={self.tls is not None})"

    def _unary(
        self,
        method: str,
        request: Any,
        *,
        timeout: float | None = None,
        wait_for_ready: bool = False,
    ) -> Any:
        try:
            return getattr(self._stub, method)(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
                wait_for_ready=wait_for_ready,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.address) from error


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in some containers
        return "unknown"
