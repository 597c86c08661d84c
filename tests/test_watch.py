"""Watch: snapshot, ordered live events, resume without loss, RESYNC, heartbeats, FINISHED."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from controller.server import Controller
from lrctl.overrides import Op
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests.conftest import TEST_HEARTBEAT_SECONDS, expect_status

pb = lrctl_pb2
W = pb.WatchResponse
Stub = lrctl_pb2_grpc.LRControllerStub


async def create(stub: Stub, job_id: str = "run-1", **kw: Any) -> pb.CreateJobResponse:
    return await stub.CreateJob(
        pb.CreateJobRequest(
            job_id=job_id, schedule="StepLR(step_size=2, gamma=0.5)", base_lrs=[0.1], **kw
        )
    )


async def scale(stub: Stub, factor: float = 0.5, job_id: str = "run-1") -> int:
    response = await stub.Override(
        pb.OverrideRequest(job_id=job_id, op=pb.OVERRIDE_OP_SCALE, value=factor)
    )
    return int(response.event.version)


async def next_non_heartbeat(call: grpc.aio.UnaryStreamCall) -> W:
    while True:
        message = await asyncio.wait_for(call.read(), 5)
        assert message is not grpc.aio.EOF
        if message.kind != W.KIND_HEARTBEAT:
            return message


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_snapshot_then_live_events_in_order(stub: Stub) -> None:
    await create(stub)
    await scale(stub)
    call = stub.Watch(pb.WatchRequest(job_id="run-1", worker_id="rank-0"))
    snapshot = await call.read()
    assert snapshot.kind == W.KIND_SNAPSHOT and snapshot.version == 2
    assert [e.version for e in snapshot.job.events] == [2]
    versions = [await scale(stub, f) for f in (0.9, 0.8, 0.7)]
    received = [await next_non_heartbeat(call) for _ in versions]
    assert [(m.kind, m.version, m.event.version) for m in received] == [
        (W.KIND_EVENT, v, v) for v in versions
    ]
    assert received[1].event.value == pytest.approx(0.8)
    call.cancel()


async def test_resume_after_disconnect_loses_and_duplicates_nothing(stub: Stub) -> None:
    await create(stub)
    seen: list[int] = []
    first = stub.Watch(pb.WatchRequest(job_id="run-1"))
    held = (await first.read()).version
    for _ in range(2):
        await scale(stub)
        message = await next_non_heartbeat(first)
        seen.append(message.event.version)
        held = message.version
    first.cancel()
    missed = [await scale(stub, 0.9) for _ in range(5)]  # appended while disconnected
    second = stub.Watch(pb.WatchRequest(job_id="run-1", from_version=held))
    for _ in missed:
        message = await next_non_heartbeat(second)
        assert message.kind == W.KIND_EVENT
        seen.append(message.version)
    live = await scale(stub)
    seen.append((await next_non_heartbeat(second)).version)
    second.cancel()
    assert seen == list(range(2, live + 1))  # every version once, in order


async def test_resync_when_resume_point_is_gone(stub: Stub) -> None:
    await create(stub)
    await scale(stub)
    ahead = stub.Watch(pb.WatchRequest(job_id="run-1", from_version=99))
    message = await ahead.read()
    assert message.kind == W.KIND_RESYNC and message.version == 2 and message.job.version == 2
    ahead.cancel()
    live = stub.Watch(pb.WatchRequest(job_id="run-1", from_version=2))
    recreated = await stub.CreateJob(
        pb.CreateJobRequest(
            job_id="run-1", schedule="ConstantLR(factor=0.5)", base_lrs=[0.2], replace=True
        )
    )
    message = await next_non_heartbeat(live)
    assert message.kind == W.KIND_RESYNC and message.version == recreated.job.version == 3
    assert message.job.schedule == "ConstantLR(factor=0.5)" and not message.job.events
    live.cancel()
    stale = stub.Watch(pb.WatchRequest(job_id="run-1", from_version=2))  # old incarnation
    assert (await stale.read()).kind == W.KIND_RESYNC
    stale.cancel()


async def test_heartbeat_carries_the_current_version(stub: Stub) -> None:
    await create(stub)
    call = stub.Watch(pb.WatchRequest(job_id="run-1", from_version=1))
    started = time.monotonic()
    beat = await asyncio.wait_for(call.read(), 5)
    elapsed = time.monotonic() - started
    assert beat.kind == W.KIND_HEARTBEAT and beat.version == 1
    assert 0.5 * TEST_HEARTBEAT_SECONDS <= elapsed < 5 * TEST_HEARTBEAT_SECONDS
    call.cancel()


async def test_finished_ends_the_stream(stub: Stub) -> None:
    await create(stub)
    call = stub.Watch(pb.WatchRequest(job_id="run-1"))
    await call.read()
    await scale(stub)
    await stub.FinishJob(pb.FinishJobRequest(job_id="run-1"))
    assert (await next_non_heartbeat(call)).kind == W.KIND_EVENT
    finished = await next_non_heartbeat(call)
    assert finished.kind == W.KIND_FINISHED and finished.version == 3
    assert finished.job.state == pb.JOB_STATE_FINISHED
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    late = stub.Watch(pb.WatchRequest(job_id="run-1"))  # watching a finished job
    kinds = [m.kind async for m in late]
    assert kinds == [W.KIND_SNAPSHOT, W.KIND_FINISHED]


async def test_workers_and_streams_count_open_watchers(controller: Controller, stub: Stub) -> None:
    await create(stub)
    calls = [
        stub.Watch(pb.WatchRequest(job_id="run-1", worker_id=w))
        for w in ("rank-0", "rank-1", "rank-1", "")
    ]
    for call in calls:
        await call.read()

    async def open_are(workers: int, streams: int) -> bool:
        job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
        gauge = controller.registry.get_sample_value("lrctl_watch_streams", {"job_id": "run-1"})
        return (job.workers, job.watch_streams, gauge) == (workers, streams, streams)

    await wait_until(lambda: open_are(2, 4))  # rank-1 twice counts once; "" is not a rank
    calls[0].cancel()
    await wait_until(lambda: open_are(1, 3))
    for call in calls[1:]:
        call.cancel()
    await wait_until(lambda: open_are(0, 0))


async def test_lrctl_workers_is_the_world_size_rank_0_reports(
    controller: Controller, stub: Stub
) -> None:
    await create(stub)

    def workers() -> float | None:
        return controller.registry.get_sample_value("lrctl_workers", {"job_id": "run-1"})

    assert workers() == 0  # nothing attached yet
    await stub.Report(pb.ReportRequest(job_id="run-1", rank=0, step=3, world_size=4))
    job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    assert (job.world_size, workers()) == (4, 4)
    await stub.Report(pb.ReportRequest(job_id="run-1", rank=1, step=3, world_size=9))
    assert workers() == 4  # only rank 0 speaks for the run
    await stub.Report(
        pb.ReportRequest(job_id="run-1", rank=0, step=4, world_size=4, final=True)
    )  # the run closed its scheduler
    job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    assert (job.world_size, workers()) == (0, 0)


async def test_watch_errors(stub: Stub) -> None:
    await expect_status(
        stub.Watch(pb.WatchRequest(job_id="nope")).read(), grpc.StatusCode.NOT_FOUND
    )
    await expect_status(
        stub.Watch(pb.WatchRequest(job_id="bad id")).read(), grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_shutdown_ends_watches_with_unavailable(
    start_controller: Callable[..., Awaitable[Controller]],
) -> None:
    ctl = await start_controller(grace_seconds=5.0)
    async with grpc.aio.insecure_channel(ctl.address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)
        await create(stub)
        call = stub.Watch(pb.WatchRequest(job_id="run-1"))
        await call.read()
        started = time.monotonic()
        await ctl.stop()
        assert time.monotonic() - started < 2  # streams end at once, not after the grace
        await expect_status(next_non_heartbeat(call), grpc.StatusCode.UNAVAILABLE)


async def test_a_finish_is_viewed_and_encoded_once_for_all_its_streams(
    controller: Controller,
) -> None:
    """Every stream of a finishing job wakes at once: they get one FINISHED message (the
    job's final view, computed once) and the encoder encodes it once."""
    from controller.servicer import WatchEncoder
    from lrctl.model import WatchKind

    service = controller.service
    await service.create_job("run-1", "StepLR(step_size=2)", [0.1])
    for _ in range(50):
        await service.override("run-1", Op.SCALE, value=0.5)
    streams = [await service.watch("run-1") for _ in range(8)]
    for stream in streams:  # each past its snapshot
        assert (await anext(stream)).kind is WatchKind.SNAPSHOT
    await service.finish_job("run-1")
    finals = [await anext(stream) for stream in streams]
    assert {m.kind for m in finals} == {WatchKind.FINISHED}
    assert all(m is finals[0] for m in finals) and finals[0].job is not None
    assert len(finals[0].job.events) == 50 and finals[0].version == 52
    encode = WatchEncoder()
    first = encode(finals[0])
    assert all(encode(m) is first for m in finals)
    # A finished job's displayed LRs are computed once, then shown as they are.
    job = service.get_job("run-1")
    assert service.get_job("run-1").lr is job.lr
    for stream in streams:
        await stream.aclose()
