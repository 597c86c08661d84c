"""The gRPC adapter: proto in, :class:`~controller.service.ControllerService` call, proto out.

Two things happen here and nowhere else:

* **Errors -> status codes** (:func:`status_for`): each domain error has one code; a
  ``SpecError``/``OverrideError`` that reaches this layer is INVALID_ARGUMENT; anything
  unexpected is INTERNAL with a short message (the traceback goes to the server log),
  never UNKNOWN.
* **Authentication** (:class:`Authenticator`): with tokens configured, every LRController
  call needs ``authorization: Bearer <token>``; ``reader`` tokens may call GetJob,
  ListJobs, History, Preview and Watch only. Health checks and reflection never need one.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TypeVar

import grpc

from controller.config import ROLES
from controller.errors import (
    Conflict,
    ControllerError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from controller.service import ControllerService, JobView, WatchKind, WatchMessage
from lrctl.errors import LrctlError
from lrctl.overrides import Op
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from lrctl.wire import PROTO_TO_OP, event_to_proto

__all__ = ["Authenticator", "LRControllerServicer", "job_to_proto", "status_for"]

_log = logging.getLogger("lrctl.controller.servicer")

_CODES: tuple[tuple[type[ControllerError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Conflict, grpc.StatusCode.ABORTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
)

_WATCH_KINDS = {
    WatchKind.SNAPSHOT: lrctl_pb2.WatchResponse.KIND_SNAPSHOT,
    WatchKind.EVENT: lrctl_pb2.WatchResponse.KIND_EVENT,
    WatchKind.RESYNC: lrctl_pb2.WatchResponse.KIND_RESYNC,
    WatchKind.HEARTBEAT: lrctl_pb2.WatchResponse.KIND_HEARTBEAT,
    WatchKind.FINISHED: lrctl_pb2.WatchResponse.KIND_FINISHED,
}
_CLIENT_OPS = (lrctl_pb2.OVERRIDE_OP_SCALE, lrctl_pb2.OVERRIDE_OP_SET, lrctl_pb2.OVERRIDE_OP_CLEAR,
               lrctl_pb2.OVERRIDE_OP_REPLACE_SCHEDULE)


def status_for(exc: BaseException, method: str = "") -> tuple[grpc.StatusCode, str]:
    """Return the status code and message a client gets for ``exc``.

    Unexpected exceptions are logged with their traceback and become INTERNAL.
    """
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, str(exc)
    if isinstance(exc, LrctlError) and isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    _log.error("internal error in %s", method or "an RPC", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {method or 'the controller'} " \
                                     f"({type(exc).__name__}); see the controller log"


class Authenticator:
    """Checks bearer tokens against ``tokens`` (token -> role); no tokens, no checks."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = dict(tokens)

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None, method: str,
              mutating: bool) -> None:
        """Raise unless the call's metadata may call ``method``.

        Raises:
            Unauthenticated: no ``authorization: Bearer`` header, or an unknown token.
            PermissionDenied: a ``reader`` token calling a mutating RPC.
        """
        if not self._tokens:
            return
        header = ""
        for key, value in metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("expected metadata 'authorization: Bearer <token>', got "
                                  + ("none" if not header else "another scheme"))
        role = None
        for known, known_role in self._tokens.items():
            # Compare every token in constant time: no timing hints about valid prefixes.
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                role = known_role
        if role is None:
            raise Unauthenticated("expected a known bearer token, got an unknown one")
        if mutating and not ROLES[role]:
            raise PermissionDenied(f"role {role!r} may call GetJob, ListJobs, History, Preview "
                                   f"and Watch; {method} needs role 'admin'")


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Unary = Callable[["LRControllerServicer", Req, grpc.aio.ServicerContext[Req, Resp]],
                 Awaitable[Resp]]
Stream = Callable[["LRControllerServicer", Req, grpc.aio.ServicerContext[Req, Resp]],
                  AsyncIterator[Resp]]


async def _abort(context: grpc.aio.ServicerContext[Req, Resp], exc: Exception,
                 method: str) -> None:
    code, message = status_for(exc, method)
    await context.abort(code, message)


def _unary(*, mutating: bool) -> Callable[[Unary[Req, Resp]], Unary[Req, Resp]]:
    """Authenticate, run, and map any exception to its status code (unary RPCs)."""
    def decorate(fn: Unary[Req, Resp]) -> Unary[Req, Resp]:
        @functools.wraps(fn)
        async def handler(self: LRControllerServicer, request: Req,
                          context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
            try:
                self.auth.check(context.invocation_metadata(), fn.__name__, mutating)
                return await fn(self, request, context)
            except Exception as exc:
                await _abort(context, exc, fn.__name__)
                raise  # unreachable: abort raises
        return handler
    return decorate


def _stream(fn: Stream[Req, Resp]) -> Stream[Req, Resp]:
    """Authenticate (reader), run, and map any exception to its status code (streams)."""
    @functools.wraps(fn)
    async def handler(self: LRControllerServicer, request: Req,
                      context: grpc.aio.ServicerContext[Req, Resp]) -> AsyncIterator[Resp]:
        try:
            self.auth.check(context.invocation_metadata(), fn.__name__, False)
            async for message in fn(self, request, context):
                yield message
        except Exception as exc:
            await _abort(context, exc, fn.__name__)
    return handler


def _stamp(msg: object, field: str, seconds: float) -> None:
    if seconds:
        getattr(msg, field).FromNanoseconds(int(seconds * 1e9))


def job_to_proto(view: JobView) -> lrctl_pb2.Job:
    """Convert a :class:`JobView` (events included if the view has them)."""
    msg = lrctl_pb2.Job(
        job_id=view.job_id, schedule=view.schedule, base_lrs=view.base_lrs,
        version=view.version, step=view.step, lrs=view.lrs, verbose=view.verbose,
        state=lrctl_pb2.JOB_STATE_FINISHED if view.finished else lrctl_pb2.JOB_STATE_RUNNING,
        events=[event_to_proto(e) for e in view.events], workers=view.workers,
        created_version=view.created_version)
    _stamp(msg, "created_at", view.created_at)
    _stamp(msg, "updated_at", view.updated_at)
    return msg


def _watch_to_proto(message: WatchMessage) -> lrctl_pb2.WatchResponse:
    msg = lrctl_pb2.WatchResponse(kind=_WATCH_KINDS[message.kind], version=message.version)
    if message.job is not None:
        msg.job.CopyFrom(job_to_proto(message.job))
    if message.event is not None:
        msg.event.CopyFrom(event_to_proto(message.event))
    return msg


def _client_op(op: int) -> Op:
    if op not in _CLIENT_OPS:
        name = lrctl_pb2.OverrideOp.Name(op) if op in PROTO_TO_OP or op == 0 else str(op)
        raise InvalidArgument(f"expected op OVERRIDE_OP_SCALE, OVERRIDE_OP_SET, "
                              f"OVERRIDE_OP_CLEAR or OVERRIDE_OP_REPLACE_SCHEDULE, got {name}")
    return PROTO_TO_OP[op]


class LRControllerServicer(lrctl_pb2_grpc.LRControllerServicer):
    """``lrctl.v1.LRController`` on top of a :class:`ControllerService`.

    Args:
        service: The domain service.
        tokens: Bearer token -> role; empty disables authentication.
    """

    def __init__(self, service: ControllerService, tokens: Mapping[str, str] | None = None
                 ) -> None:
        self.service = service
        self.auth = Authenticator(tokens or {})

    @_unary(mutating=True)
    async def CreateJob(self, request: lrctl_pb2.CreateJobRequest,
                        context: grpc.aio.ServicerContext[lrctl_pb2.CreateJobRequest,
                                                          lrctl_pb2.CreateJobResponse],
                        ) -> lrctl_pb2.CreateJobResponse:
        job, created = await self.service.create_job(
            request.job_id, request.schedule, list(request.base_lrs),
            replace_existing=request.replace, verbose=request.verbose)
        return lrctl_pb2.CreateJobResponse(job=job_to_proto(job), created=created)

    @_unary(mutating=False)
    async def GetJob(self, request: lrctl_pb2.GetJobRequest,
                     context: grpc.aio.ServicerContext[lrctl_pb2.GetJobRequest, lrctl_pb2.Job],
                     ) -> lrctl_pb2.Job:
        return job_to_proto(self.service.get_job(request.job_id))

    @_unary(mutating=False)
    async def ListJobs(self, request: lrctl_pb2.ListJobsRequest,
                       context: grpc.aio.ServicerContext[lrctl_pb2.ListJobsRequest,
                                                         lrctl_pb2.ListJobsResponse],
                       ) -> lrctl_pb2.ListJobsResponse:
        jobs, token = self.service.list_jobs(request.page_size, request.page_token,
                                             include_finished=request.include_finished)
        return lrctl_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs],
                                          next_page_token=token)

    @_unary(mutating=True)
    async def FinishJob(self, request: lrctl_pb2.FinishJobRequest,
                        context: grpc.aio.ServicerContext[lrctl_pb2.FinishJobRequest,
                                                          lrctl_pb2.Job],
                        ) -> lrctl_pb2.Job:
        return job_to_proto(await self.service.finish_job(request.job_id))

    @_unary(mutating=True)
    async def Override(self, request: lrctl_pb2.OverrideRequest,
                       context: grpc.aio.ServicerContext[lrctl_pb2.OverrideRequest,
                                                         lrctl_pb2.OverrideResponse],
                       ) -> lrctl_pb2.OverrideResponse:
        op = _client_op(request.op)
        event, job = await self.service.override(
            request.job_id, op,
            value=request.value if request.HasField("value") else None,
            schedule=request.schedule if op is Op.REPLACE_SCHEDULE else None,
            group=request.param_group if request.HasField("param_group") else None,
            actor=request.actor, reason=request.reason,
            expected_version=(request.expected_version
                              if request.HasField("expected_version") else None))
        return lrctl_pb2.OverrideResponse(event=event_to_proto(event), job=job_to_proto(job))

    @_unary(mutating=False)
    async def History(self, request: lrctl_pb2.HistoryRequest,
                      context: grpc.aio.ServicerContext[lrctl_pb2.HistoryRequest,
                                                        lrctl_pb2.HistoryResponse],
                      ) -> lrctl_pb2.HistoryResponse:
        events = self.service.history(request.job_id)
        return lrctl_pb2.HistoryResponse(events=[event_to_proto(e) for e in events])

    @_unary(mutating=False)
    async def Preview(self, request: lrctl_pb2.PreviewRequest,
                      context: grpc.aio.ServicerContext[lrctl_pb2.PreviewRequest,
                                                        lrctl_pb2.PreviewResponse],
                      ) -> lrctl_pb2.PreviewResponse:
        # Up to a million values: off the event loop, so watches and heartbeats keep flowing.
        schedule, rows = await asyncio.to_thread(
            self.service.preview, request.schedule, list(request.base_lrs), request.steps)
        return lrctl_pb2.PreviewResponse(rows=[lrctl_pb2.LRRow(lr=r) for r in rows],
                                         schedule=schedule)

    @_stream
    async def Watch(self, request: lrctl_pb2.WatchRequest,
                    context: grpc.aio.ServicerContext[lrctl_pb2.WatchRequest,
                                                      lrctl_pb2.WatchResponse],
                    ) -> AsyncIterator[lrctl_pb2.WatchResponse]:
        async for message in self.service.watch(request.job_id, request.from_version,
                                                request.worker_id):
            yield _watch_to_proto(message)

    @_unary(mutating=True)
    async def Report(self, request: lrctl_pb2.ReportRequest,
                     context: grpc.aio.ServicerContext[lrctl_pb2.ReportRequest,
                                                       lrctl_pb2.ReportResponse],
                     ) -> lrctl_pb2.ReportResponse:
        version = await self.service.report(
            request.job_id, rank=request.rank, step=request.step, lrs=list(request.lrs),
            applied=[(a.version, a.effective_step) for a in request.applied],
            plateau_metrics=[(m.step, m.value) for m in request.plateau_metrics],
            divergences=len(request.divergences))
        return lrctl_pb2.ReportResponse(version=version)
