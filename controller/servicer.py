"""The gRPC adapter: proto in, :class:`~controller.service.ControllerService` call, proto out.

Each method only translates: conversions are :mod:`lrctl.convert`'s, validation is the
domain's, errors become status codes in :class:`controller.interceptors.StatusInterceptor`
and authentication happens before in :class:`controller.auth.AuthInterceptor` (which puts the
caller's token name in :data:`controller.auth.CALLER` and in an Override's ``actor``).
"""

from __future__ import annotations

from contextlib import aclosing
from itertools import islice
from typing import Any

from controller.auth import CALLER, SCOPE
from controller.errors import InvalidArgument
from controller.service import ControllerService
from lrctl.convert import (
    PROTO_TO_OP,
    event_to_proto,
    job_to_proto,
    report_from_proto,
    watch_to_proto,
)
from lrctl.model import WatchKind, WatchMessage
from lrctl.overrides import Op
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc

__all__ = ["LRControllerServicer", "WatchEncoder"]

pb = lrctl_pb2
#: The servicer context (its generic parameters carry nothing the adapter uses).
Context = Any


def _op(op: int) -> Op:
    """The domain op of an ``OverrideRequest.op`` (the service decides which it accepts)."""
    known = PROTO_TO_OP.get(op)
    if known is None:
        name = "OVERRIDE_OP_UNSPECIFIED" if op == 0 else str(op)
        raise InvalidArgument(
            f"expected op OVERRIDE_OP_SCALE, OVERRIDE_OP_SET, "
            f"OVERRIDE_OP_CLEAR or OVERRIDE_OP_REPLACE_SCHEDULE, got {name}"
        )
    return known


class LRControllerServicer(lrctl_pb2_grpc.LRControllerServicer):
    """``lrctl.v1.LRController`` on top of a :class:`ControllerService`.

    Args:
        service: The domain service.
    """

    def __init__(self, service: ControllerService) -> None:
        self.service = service
        self._encode = WatchEncoder()

    async def CreateJob(
        self, request: pb.CreateJobRequest, context: Context
    ) -> pb.CreateJobResponse:
        job, created = await self.service.create_job(
            request.job_id,
            request.schedule,
            list(request.base_lrs),
            replace_existing=request.replace,
            verbose=request.verbose,
            attach=request.attach,
            world_size=request.world_size if request.attach else 0,
            actor=CALLER.get(),
        )
        return pb.CreateJobResponse(
            job=job_to_proto(job), created=created, epoch=job.epoch if request.attach else 0
        )

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.Job:
        await self.service.sync(request.job_id)  # read your writes across replicas
        return job_to_proto(self.service.get_job(request.job_id))

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        jobs, token = self.service.list_jobs(
            request.page_size,
            request.page_token,
            include_finished=request.include_finished,
            visible=SCOPE.get(),  # a scoped token pages through its own jobs only
        )
        return pb.ListJobsResponse(
            jobs=[job_to_proto(j, events=False) for j in jobs], next_page_token=token
        )

    async def FinishJob(self, request: pb.FinishJobRequest, context: Context) -> pb.Job:
        return job_to_proto(await self.service.finish_job(request.job_id, actor=CALLER.get()))

    async def Override(self, request: pb.OverrideRequest, context: Context) -> pb.OverrideResponse:
        op = _op(request.op)
        event, head = await self.service.override(
            request.job_id,
            op,
            value=request.value if request.HasField("value") else None,
            schedule=request.schedule if op is Op.REPLACE_SCHEDULE else None,
            group=request.param_group if request.HasField("param_group") else None,
            actor=request.actor,
            reason=request.reason,
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
        )
        return pb.OverrideResponse(
            event=event_to_proto(event), job=job_to_proto(head, events=False)
        )

    async def History(self, request: pb.HistoryRequest, context: Context) -> pb.HistoryResponse:
        await self.service.sync(request.job_id)
        events = self.service.history(request.job_id)
        return pb.HistoryResponse(events=[event_to_proto(e) for e in events])

    async def Preview(  # type: ignore[override]
        self, request: pb.PreviewRequest, context: Context
    ) -> bytes:
        # Up to a million values to compute and encode (~9 MB): off the event loop, within
        # the evaluation deadline, so watches and heartbeats keep flowing. The response goes
        # out as the bytes made there (controller.interceptors lets bytes through).
        return await self.service.offload(self._preview, request)

    def _preview(self, request: pb.PreviewRequest) -> bytes:
        schedule, rows = self.service.preview(
            request.schedule, list(request.base_lrs), request.steps
        )
        # Computed and encoded a thousand rows at a time: each call into protobuf holds the
        # GIL (the event loop waits for it), and few rows live at once (a full garbage
        # collection over a million values would stall the loop too). Repeated fields encode
        # as the concatenation of their parts.
        parts = []
        while chunk := list(islice(rows, 1000)):
            parts.append(
                pb.PreviewResponse(rows=[pb.LRRow(lr=r) for r in chunk]).SerializeToString()
            )
        parts.append(pb.PreviewResponse(schedule=schedule).SerializeToString())
        return b"".join(parts)

    async def Watch(  # type: ignore[override]
        self, request: pb.WatchRequest, context: Context
    ) -> None:
        # Written, not yielded: no generator layer per interceptor. Each message goes out
        # encoded (bytes pass the response serializer: controller.interceptors), an event
        # once for every stream of its job.
        stream = await self.service.watch(request.job_id, request.from_version, request.worker_id)
        encode, write = self._encode, context.write
        async with aclosing(stream):
            async for message in stream:
                await write(encode(message))

    async def Report(self, request: pb.ReportRequest, context: Context) -> pb.ReportResponse:
        version = await self.service.report(report_from_proto(request))
        return pb.ReportResponse(version=version)


class WatchEncoder:
    """Encodes Watch messages to ``WatchResponse`` bytes; an EVENT or HEARTBEAT message, one
    object handed to every stream of its job (:class:`controller.watch.WatchHub`), is encoded
    once.

    Args:
        size: Event messages kept encoded (the latest; each is held with its bytes, so its
            identity cannot be reused while cached).
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._cache: dict[int, tuple[WatchMessage, bytes]] = {}
        self._final: tuple[WatchMessage, bytes] | None = None  # the latest FINISHED

    def __call__(self, message: WatchMessage) -> bytes:
        if message.job is not None:
            # A job's FINISHED is one object for all its streams, encoded one after another:
            # kept alone (it may be large). Snapshots and RESYNCs are one per stream.
            final = self._final
            if final is not None and final[0] is message:
                return final[1]
            data = watch_to_proto(message).SerializeToString()
            if message.kind is WatchKind.FINISHED:
                self._final = (message, data)
            return data
        hit = self._cache.get(id(message))
        if hit is not None and hit[0] is message:
            return hit[1]
        data = watch_to_proto(message).SerializeToString()
        self._cache[id(message)] = (message, data)
        if len(self._cache) > self._size:
            del self._cache[next(iter(self._cache))]  # the oldest
        return data
