"""A controller whose work per change does not grow with history: behaviour, not timings.

The incremental display (controller.display) must show exactly what a rebuild over the whole
log shows; an override on a long log returns the event, the head and the right LRs.
(The timings are in benchmarks/RESULTS.md, section controller.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from controller import servicer
from controller.projection import pending_count
from controller.rows import Change
from controller.server import Controller
from controller.store import Store
from controller.watch import WatchHub
from lrctl import convert
from lrctl.model import Job, Report, WatchKind, WatchMessage
from lrctl.overrides import Event, Op, resolve_pending
from lrctl.program import LRProgram
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc

pb = lrctl_pb2
SPEC = "StepLR(step_size=3, gamma=0.5)"


def rebuilt_lr(job: Job) -> list[float]:
    """What docs/controller.md says a job shows, computed the slow way."""
    step = max(job.step, 0)
    return LRProgram(job.schedule, job.base_lrs, resolve_pending(job.events, step)).lrs(step)


async def test_displayed_lrs_and_pending_counts_equal_a_rebuild_over_the_log(
    controller: Controller, registry: CollectorRegistry
) -> None:
    service, rng = controller.service, random.Random(13)
    await service.create_job("run-1", SPEC, [0.1, 0.02, 0.3])
    step = 0
    for _ in range(300):
        job = service.get_job("run-1")
        pending = [e.version for e in job.events if e.effective_step is None]
        action = rng.random()
        if action < 0.45:
            op = rng.choice([Op.SCALE, Op.SCALE, Op.SET, Op.CLEAR, Op.REPLACE_SCHEDULE])
            await service.override(
                "run-1",
                op,
                value={Op.SCALE: rng.choice([0.5, 2.0]), Op.SET: 0.05}.get(op),
                schedule="ExponentialLR(gamma=0.9)" if op is Op.REPLACE_SCHEDULE else None,
                group=rng.choice([None, None, 0, 2]),
            )
        else:
            step += rng.choice([0, 1, 4])
            applied = []
            if pending and rng.random() < 0.7:
                # Usually in order at the current step; sometimes at an earlier step (a
                # display that cannot extend must rebuild, and still be right).
                earlier = rng.random() < 0.1
                for version in pending[: rng.randint(1, len(pending))]:
                    applied.append((version, rng.randint(0, step) if earlier else step))
            await service.report(
                Report(
                    "run-1",
                    step=step,
                    applied=tuple(applied),
                    applied_version=max([v for v, _ in applied], default=job.applied_version),
                )
            )
        job = service.get_job("run-1")
        assert list(job.lr) == rebuilt_lr(job)  # bit for bit
        assert registry.get_sample_value(
            "lrctl_overrides_pending", {"job_id": "run-1"}
        ) == pending_count(job)


async def _job_with_log(path: Path, events: int) -> None:
    store = await Store.open(path)
    now = time.time()
    log = [
        Event(
            version=2 + i,
            op=Op.SCALE if i % 3 else Op.SET,
            value=(0.5 if i % 2 else 2.0) if i % 3 else 0.01 * (1 + i % 7),
            group=None if i % 4 else i % 2,
            effective_step=10 * i,
            actor="seed",
            created_at=now,
            applied_at=now,
        )
        for i in range(events)
    ]
    job = Job(
        job_id="long",
        schedule=SPEC,
        base_lrs=(0.1, 0.2),
        version=1 + events,
        step=10 * events,
        created_at=now,
        updated_at=now,
        applied_version=1 + events,
    )
    await store.commit(Change(job, log))
    await store.close()


async def test_an_override_on_a_log_of_10000_events_returns_the_event_the_head_and_the_lrs(
    tmp_path: Path, start_controller: Callable[..., Awaitable[Controller]]
) -> None:
    db = tmp_path / "long.db"
    await _job_with_log(db, 9_990)  # (the default limit is 10,000 events per job)
    ctl = await start_controller(db=str(db))
    async with grpc.aio.insecure_channel(ctl.address) as channel:
        stub = lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]
        for value in (0.5, 0.25):
            reply = await stub.Override(
                pb.OverrideRequest(job_id="long", op=pb.OVERRIDE_OP_SCALE, value=value, actor="op")
            )
            job = ctl.service.get_job("long")
            assert reply.event.version == job.version and not reply.event.HasField("effective_step")
            assert reply.job.version == job.version and len(reply.job.events) == 0  # the head
            assert list(reply.job.lrs) == rebuilt_lr(job)
        assert len(job.events) == 9_992
        # rank 0 applies both: the shown LRs follow, still equal to a rebuild
        await stub.Report(
            pb.ReportRequest(
                job_id="long",
                rank=0,
                step=100_010,
                applied_version=job.version,
                applied=[
                    pb.AppliedVersion(version=v, effective_step=100_005)
                    for v in (job.version - 1, job.version)
                ],
            )
        )
        got = await stub.GetJob(pb.GetJobRequest(job_id="long"))
        job = ctl.service.get_job("long")
        assert [e.effective_step for e in job.events[-2:]] == [100_005, 100_005]
        assert list(got.lrs) == rebuilt_lr(job)


async def test_every_stream_gets_the_same_event_bytes_encoded_once(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[int] = []
    real = servicer.watch_to_proto

    def counting(message: WatchMessage) -> pb.WatchResponse:
        if message.kind is WatchKind.EVENT:
            encoded.append(message.version)
        return real(message)

    monkeypatch.setattr(servicer, "watch_to_proto", counting)
    async with grpc.aio.insecure_channel(controller.address) as channel:
        stub = lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]
        await stub.CreateJob(pb.CreateJobRequest(job_id="fan", schedule=SPEC, base_lrs=[0.1, 0.2]))
        calls = [stub.Watch(pb.WatchRequest(job_id="fan")) for _ in range(6)]
        for call in calls:
            assert (await call.read()).kind == pb.WatchResponse.KIND_SNAPSHOT
        for value in (0.5, 2.0, 0.25):
            await stub.Override(
                pb.OverrideRequest(
                    job_id="fan",
                    op=pb.OVERRIDE_OP_SCALE,
                    value=value,
                    param_group=1,
                    reason="fan-out",
                )
            )
        received = []
        for call in calls:
            got = []
            while len(got) < 3:
                message = await asyncio.wait_for(call.read(), 5)
                if message.kind != pb.WatchResponse.KIND_HEARTBEAT:
                    got.append(message.SerializeToString())
            received.append(got)
            call.cancel()
    job = controller.service.get_job("fan")
    expected = [
        convert.watch_to_proto(
            WatchMessage(WatchKind.EVENT, e.version, event=e)
        ).SerializeToString()
        for e in job.events
    ]
    assert all(got == expected for got in received)  # identical bytes on every stream
    assert sorted(encoded) == [e.version for e in job.events]  # each event encoded once


async def test_heartbeats_come_after_a_quiet_interval_only() -> None:
    # The heartbeat timer is armed once per quiet interval (not per event): a stream busy
    # with events gets none, and one arrives about one interval after the last event.
    hub = WatchHub(0.2)
    state = {"job": Job(job_id="hb", schedule=SPEC, base_lrs=(0.1,), version=1)}
    stream = hub.follow("hb", 1, "", lambda: state["job"], lambda: state["job"])
    received: list[tuple[WatchKind, float]] = []

    async def read() -> None:
        async for message in stream:
            received.append((message.kind, time.monotonic()))

    reader = asyncio.ensure_future(read())
    for _ in range(12):  # an event every 50 ms for 0.6 s: three heartbeat intervals
        await asyncio.sleep(0.05)
        job = state["job"]
        event = Event(version=job.version + 1, op=Op.SCALE, value=0.5)
        state["job"] = dataclasses.replace(job, version=event.version, events=(*job.events, event))
        hub.notify("hb")
    last = time.monotonic()
    await asyncio.sleep(0.45)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    kinds = [kind for kind, _ in received]
    assert kinds[:12] == [WatchKind.EVENT] * 12
    beats = [at - last for kind, at in received if kind is WatchKind.HEARTBEAT]
    assert beats and 0.1 <= beats[0] <= 0.3, beats  # 0.15-0.2 s after the last event
