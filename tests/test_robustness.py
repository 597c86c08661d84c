"""No input hurts the controller, and an RPC that fails has changed nothing (issue 10).

Over a real grpc.aio server on loopback and a real SQLite file:

* one job that cannot be evaluated (a stored spec this release refuses, too many groups,
  a bad replacement in its log) never keeps the controller from starting: it is loaded,
  marked, and its calls answer FAILED_PRECONDITION with a message, while ListJobs and every
  other job keep working;
* bytes that are not a protobuf message answer INVALID_ARGUMENT, never UNKNOWN;
* a job's log never outgrows a gRPC message: GetJob, History, Watch snapshots, attach and
  FinishJob keep working whatever clients sent, and a call that failed committed nothing;
* CPU-heavy validation and evaluation (1,024 groups, a long preview, a far step of a
  recurrence) never stall the event loop;
* every limit answers RESOURCE_EXHAUSTED or INVALID_ARGUMENT with a bounded message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.config import ServerConfig, add_server_arguments
from controller.jobs import JobEntry
from controller.limits import ServerLimits
from controller.plateau import JobPlateau
from controller.server import SERVICE_NAME, Controller
from controller.service import ControllerService
from controller.store import Store
from lrctl.constants import CLIENT_CHANNEL_OPTIONS
from lrctl.model import Job, JobState
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests._cases import cases
from tests.conftest import expect_status

pb = lrctl_pb2
Stub = lrctl_pb2_grpc.LRControllerStub
Start = Callable[..., Awaitable[Controller]]

#: The longest status message a client gets (a bounded prefix of any input it quotes).
MESSAGE_LIMIT = 1024
#: The most CPU time the event loop's own thread may spend between two ticks of a 2 ms timer
#: while heavy work runs (the loop's own work, not the OS scheduling it out on a busy machine).
BUSY_LIMIT_S = 0.05
#: The longest wall-clock gap between those ticks (a loaded 2-core CI machine included).
STALL_LIMIT_S = 0.5


@asynccontextmanager
async def connect(ctl: Controller) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(ctl.address, options=list(CLIENT_CHANNEL_OPTIONS)) as chan:
        yield lrctl_pb2_grpc.LRControllerStub(chan)  # type: ignore[no-untyped-call]


def step_job(
    job_id: str, base_lrs: list[float] | None = None, **fields: Any
) -> lrctl_pb2.CreateJobRequest:
    """A CreateJob request for a StepLR(step_size=2) job (base LR 0.1 unless given)."""
    return pb.CreateJobRequest(
        job_id=job_id,
        schedule="StepLR(step_size=2)",
        base_lrs=[0.1] if base_lrs is None else base_lrs,
        **fields,
    )


async def create_step_jobs(stub: Stub, *job_ids: str) -> None:
    for job_id in job_ids:
        await stub.CreateJob(step_job(job_id))


async def healthy(ctl: Controller) -> bool:
    async with grpc.aio.insecure_channel(ctl.address) as chan:
        reply = await health_pb2_grpc.HealthStub(chan).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def failure(call: Awaitable[Any]) -> grpc.aio.AioRpcError | None:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


class LoopWatch:
    """How long the controller's event loop went without running a 2 ms timer: the longest
    wall-clock gap, and the most CPU time its thread spent in one gap (its own work)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.busiest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last, busy = time.perf_counter(), time.thread_time()
        while True:
            await asyncio.sleep(0.002)
            now, cpu = time.perf_counter(), time.thread_time()
            self.longest = max(self.longest, now - last)
            self.busiest = max(self.busiest, cpu - busy)
            last, busy = now, cpu

    async def __aenter__(self) -> LoopWatch:
        self._task = asyncio.ensure_future(self._tick())
        await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


# -- one job that cannot be evaluated ----------------------------------------------------------


def _poison(db: str, sql: str, *params: Any) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql, params)
    conn.close()


POISONS = cases(
    {
        "spec-refused-today": (
            "UPDATE jobs SET schedule = 'StepLR(step_size=0)' WHERE job_id = 'bad'",
            (),
        ),
        "unknown-scheduler": (
            "UPDATE jobs SET schedule = 'NoSuchLR(gamma=2)' WHERE job_id = 'bad'",
            (),
        ),
        "negative-base-lr": (
            "UPDATE jobs SET base_lrs = ? WHERE job_id = 'bad'",
            (json.dumps([-1.0]),),
        ),
        "unreadable-base-lrs": ("UPDATE jobs SET base_lrs = 'not json' WHERE job_id = 'bad'", ()),
        "bad-replacement-in-log": (
            "UPDATE events SET schedule = "
            "'LambdaLR(lr_lambda=\"__import__(1)\")' WHERE job_id = 'bad'",
            (),
        ),
    }
)


@pytest.mark.parametrize(("sql", "params"), POISONS)
async def test_a_job_that_cannot_be_evaluated_is_loaded_marked_and_refused(
    start_controller: Start, server_config: ServerConfig, sql: str, params: tuple[Any, ...]
) -> None:
    first = await start_controller(metrics_port=None)
    async with connect(first) as stub:
        await create_step_jobs(stub, "bad", "good")
        await stub.Override(
            pb.OverrideRequest(
                job_id="bad", op=pb.OVERRIDE_OP_REPLACE_SCHEDULE, schedule="ConstantLR(factor=0.5)"
            )
        )
        await stub.Report(pb.ReportRequest(job_id="bad", rank=0, step=3, lrs=[0.05]))
    await first.stop(0)
    _poison(server_config.db, sql, *params)

    second = await start_controller()  # must start: one job never bricks the controller
    async with connect(second) as stub:
        listed = await stub.ListJobs(pb.ListJobsRequest())
        assert [j.job_id for j in listed.jobs] == ["bad", "good"]
        good = await stub.GetJob(pb.GetJobRequest(job_id="good"))
        assert list(good.lrs) == [0.1]
        await stub.Override(pb.OverrideRequest(job_id="good", op=pb.OVERRIDE_OP_SCALE, value=0.5))
        for call in (
            stub.GetJob(pb.GetJobRequest(job_id="bad")),
            stub.Override(pb.OverrideRequest(job_id="bad", op=pb.OVERRIDE_OP_SCALE, value=0.5)),
            stub.Report(pb.ReportRequest(job_id="bad", rank=0, step=4)),
            stub.Watch(pb.WatchRequest(job_id="bad")).read(),
            stub.CreateJob(step_job("bad")),
        ):
            err = await expect_status(call, grpc.StatusCode.FAILED_PRECONDITION)
            details = err.details() or ""
            assert "cannot be evaluated" in details and "'bad'" in details, details
            assert len(details) <= MESSAGE_LIMIT
        history = await stub.History(pb.HistoryRequest(job_id="bad"))  # the log stays readable
        assert [e.version for e in history.events] == [2]
        assert await healthy(second)
        # An operator can finish it, or recreate it with CreateJob replace.
        finished = await stub.FinishJob(pb.FinishJobRequest(job_id="bad"))
        assert finished.state == pb.JOB_STATE_FINISHED and finished.version == 3
        again = await stub.CreateJob(step_job("bad", replace=True))
        assert again.created and again.job.version == 4 and list(again.job.lrs) == [0.1]
        assert (await stub.GetJob(pb.GetJobRequest(job_id="bad"))).version == 4
    assert (
        second.registry.get_sample_value(
            "lrctl_learning_rate", {"job_id": "bad", "param_group": "0"}
        )
        == 0.1
    )


async def test_a_growing_schedule_past_the_float_range_is_served_as_inf(
    start_controller: Start,
) -> None:
    """The issue's poisoned job: ExponentialLR(gamma=1.5), repeated scales, a large step."""
    first = await start_controller(metrics_port=None)
    async with connect(first) as stub:
        await stub.CreateJob(
            pb.CreateJobRequest(job_id="exp", schedule="ExponentialLR(gamma=1.5)", base_lrs=[0.1])
        )
        await stub.CreateJob(step_job("other"))
        for _ in range(3):
            await stub.Override(
                pb.OverrideRequest(job_id="exp", op=pb.OVERRIDE_OP_SCALE, value=1e6)
            )
        await stub.Report(pb.ReportRequest(job_id="exp", rank=0, step=5000))
        assert list((await stub.GetJob(pb.GetJobRequest(job_id="exp"))).lrs) == [float("inf")]
        reply = await stub.Override(
            pb.OverrideRequest(job_id="exp", op=pb.OVERRIDE_OP_SCALE, value=2.0)
        )
        assert reply.event.version == 5
        assert len((await stub.ListJobs(pb.ListJobsRequest())).jobs) == 2
        assert (await stub.History(pb.HistoryRequest(job_id="exp"))).events[-1].version == 5
    await first.stop(0)
    second = await start_controller(metrics_port=None)  # a restart loads it
    async with connect(second) as stub:
        assert list((await stub.GetJob(pb.GetJobRequest(job_id="exp"))).lrs) == [float("inf")]
        done = await stub.FinishJob(pb.FinishJobRequest(job_id="exp"))
        assert done.version == 6


# -- non-protobuf bytes --------------------------------------------------------------------------

METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["LRController"].methods]
GARBAGE = cases(
    {
        "bad-varint": b"\xff\xff\xff\xff",
        "truncated-string": b"\x0a\x05ab",
        "invalid-utf8": b"\x0a\x02\xc3\x28\x12\x02\xc3\x28",  # fields 1 and 2
        "bad-wire-type": b"\x07",
    }
)


@pytest.mark.parametrize("payload", GARBAGE)
@pytest.mark.parametrize("method", METHODS)
async def test_non_protobuf_bytes_are_invalid_argument(
    controller: Controller, channel: grpc.aio.Channel, method: str, payload: bytes
) -> None:
    path = f"/{SERVICE_NAME}/{method}"
    if method == "Watch":
        call = channel.unary_stream(path)(payload).read()
    else:
        call = channel.unary_unary(path)(payload)
    err = await expect_status(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert len(err.details() or "") <= MESSAGE_LIMIT
    assert await healthy(controller)


@pytest.mark.parametrize(
    ("path", "kind"),
    cases(
        {
            "health-check": ("/grpc.health.v1.Health/Check", "unary"),
            "health-watch": ("/grpc.health.v1.Health/Watch", "stream"),
            "reflection": (
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                "bidi",
            ),
        }
    ),
)
async def test_non_protobuf_bytes_to_health_and_reflection_are_invalid_argument(
    controller: Controller, channel: grpc.aio.Channel, path: str, kind: str
) -> None:
    payload = b"\xff\xff\xff\xff"
    if kind == "unary":
        call: Awaitable[Any] = channel.unary_unary(path)(payload)
    elif kind == "stream":
        call = channel.unary_stream(path)(payload).read()
    else:
        stream = channel.stream_stream(path)()
        await stream.write(payload)
        await stream.done_writing()
        call = stream.read()
    await expect_status(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert await healthy(controller)


# -- a job's log never outgrows a message; a failed call committed nothing ------------------------


async def _readers_work(stub: Stub, job_id: str) -> list[int]:
    """GetJob, History, a Watch snapshot and an attach all answer; return the log's versions."""
    job = await stub.GetJob(pb.GetJobRequest(job_id=job_id))
    history = await stub.History(pb.HistoryRequest(job_id=job_id))
    watch = stub.Watch(pb.WatchRequest(job_id=job_id))
    snapshot = await watch.read()
    watch.cancel()
    assert snapshot.kind == pb.WatchResponse.KIND_SNAPSHOT
    attached = await stub.CreateJob(
        pb.CreateJobRequest(job_id=job_id, schedule=job.schedule, base_lrs=job.base_lrs)
    )
    assert not attached.created
    versions = [e.version for e in history.events]
    assert [e.version for e in job.events] == versions
    assert [e.version for e in snapshot.job.events] == versions
    return versions


async def test_huge_reasons_never_lock_readers_out_of_a_job(
    controller: Controller, stub: Stub
) -> None:
    await stub.CreateJob(step_job("run-1"))
    acknowledged = []
    for i in range(6):
        err = await failure(
            stub.Override(
                pb.OverrideRequest(
                    job_id="run-1",
                    op=pb.OVERRIDE_OP_SCALE,
                    value=0.5,
                    actor="mallory",
                    reason=f"{i}" + "x" * (3 << 20),
                )
            )
        )  # 3 MiB each, 18 MiB in all
        if err is None:
            acknowledged.append(i + 2)
        else:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert len(err.details() or "") <= MESSAGE_LIMIT
    assert await _readers_work(stub, "run-1") == acknowledged
    done = await stub.FinishJob(pb.FinishJobRequest(job_id="run-1"))
    assert done.state == pb.JOB_STATE_FINISHED


async def test_the_log_stays_under_the_message_size_and_failures_commit_nothing(
    start_controller: Start,
) -> None:
    """With 64 KiB messages, the largest events a client may send fill the log; then every
    write is RESOURCE_EXHAUSTED, changes nothing, and the log's readers keep working."""
    ctl = await start_controller(max_message_bytes=64 * 1024, metrics_port=None)
    async with connect(ctl) as stub:
        await stub.CreateJob(step_job("run-1", base_lrs=[0.1] * 1024))
        fat = "LambdaLR(lr_lambda='0.95 ** epoch if epoch < 10 else 0.5')" + " " * 3900
        acknowledged, refused = [], 0
        for i in range(40):
            request = pb.OverrideRequest(
                job_id="run-1",
                op=pb.OVERRIDE_OP_REPLACE_SCHEDULE,
                schedule=fat,
                actor="a" * 256,
                reason="r" * 1024,
            )
            err = await failure(stub.Override(request))
            if err is None:
                acknowledged.append(i)
                continue
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            refused += 1
            assert "message" in (err.details() or "") or "log" in (err.details() or "")
        assert acknowledged and refused, (acknowledged, refused)
        versions = await _readers_work(stub, "run-1")
        assert versions == list(range(2, 2 + len(acknowledged)))
        done = await stub.FinishJob(pb.FinishJobRequest(job_id="run-1"))
        assert done.version == 2 + len(acknowledged)


# -- CPU-heavy work never stalls the event loop ---------------------------------------------------


def _heavy_calls(address: str) -> None:
    """CreateJob of 1,024 groups (4 at once), a preview of a million values and reports of
    far steps of a recurrence, from a blocking client in another thread (so that decoding
    the answers is not counted as the controller's work on its loop)."""
    lam = "LambdaLR(lr_lambda='0.95 ** epoch if epoch < 1000 else 0.5 * cos(epoch) + 0.5')"
    mult = "MultiplicativeLR(lr_lambda='0.999 + 0.0001 * sin(epoch)')"
    with (
        grpc.insecure_channel(address, options=list(CLIENT_CHANNEL_OPTIONS)) as chan,
        ThreadPoolExecutor(4) as pool,
    ):
        stub = lrctl_pb2_grpc.LRControllerStub(chan)  # type: ignore[no-untyped-call]
        list(
            pool.map(
                lambda i: stub.CreateJob(
                    pb.CreateJobRequest(
                        job_id=f"wide-{i}", schedule=lam if i % 2 else mult, base_lrs=[0.1] * 1024
                    ),
                    timeout=30,
                ),
                range(4),
            )
        )
        rows = stub.Preview(
            pb.PreviewRequest(schedule=mult, base_lrs=[0.1] * 10, steps=100_000), timeout=30
        )
        assert len(rows.rows) == 100_000
        for step in (10**7, 10**12):
            stub.Report(pb.ReportRequest(job_id="wide-0", rank=0, step=step), timeout=30)
            assert len(stub.GetJob(pb.GetJobRequest(job_id="wide-0"), timeout=30).lrs) == 1024


async def test_heavy_validation_and_evaluation_never_stall_the_loop(controller: Controller) -> None:
    async with LoopWatch() as loop:
        await asyncio.to_thread(_heavy_calls, controller.address)
    assert loop.busiest < BUSY_LIMIT_S, f"the event loop was busy {loop.busiest * 1e3:.0f} ms"
    assert loop.longest < STALL_LIMIT_S, f"the event loop stalled {loop.longest * 1e3:.0f} ms"
    assert await healthy(controller)


# -- limits ------------------------------------------------------------------------------------


def _limits(**fields: Any) -> ServerLimits:
    return ServerLimits(**fields)


@pytest.mark.parametrize(
    ("fields", "code", "needle"),
    cases(
        {
            "actor": ({"actor": "a" * 257}, grpc.StatusCode.RESOURCE_EXHAUSTED, "256"),
            "reason": ({"reason": "r" * 1025}, grpc.StatusCode.RESOURCE_EXHAUSTED, "1024"),
            "reason-utf8-bytes": (
                {"reason": "é" * 600},
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "1024",
            ),
            "actor-control-character": (
                {"actor": "bob\x1b[31m"},
                grpc.StatusCode.INVALID_ARGUMENT,
                "control",
            ),
            "actor-newline": (
                {"actor": "bob\nop=finish"},
                grpc.StatusCode.INVALID_ARGUMENT,
                "control",
            ),
            "lr-above-the-ceiling": (
                {"op": pb.OVERRIDE_OP_SET, "value": 2e6},
                grpc.StatusCode.INVALID_ARGUMENT,
                "1e+06",
            ),
            "infinite-scale": (
                {"op": pb.OVERRIDE_OP_SCALE, "value": float("inf")},
                grpc.StatusCode.INVALID_ARGUMENT,
                "finite",
            ),
            "spec-too-long": (
                {"op": pb.OVERRIDE_OP_REPLACE_SCHEDULE, "schedule": "StepLR(1)" + " " * 5000},
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "4096",
            ),
        }
    ),
)
async def test_override_limits(
    stub: Stub, fields: dict[str, Any], code: grpc.StatusCode, needle: str
) -> None:
    await stub.CreateJob(step_job("run-1"))
    request = {"job_id": "run-1", "op": pb.OVERRIDE_OP_SCALE, "value": 0.5, **fields}
    err = await expect_status(stub.Override(pb.OverrideRequest(**request)), code)
    details = err.details() or ""
    assert needle in details and len(details) <= MESSAGE_LIMIT, details
    assert (await stub.GetJob(pb.GetJobRequest(job_id="run-1"))).version == 1


async def test_control_characters_in_a_reason_are_escaped_in_the_change_log(
    stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lrctl.controller.changes")
    await stub.CreateJob(step_job("run-1"))
    forged = "spike\n2025-01-01 INFO lrctl.controller.changes: job=run-1 version=9 op=finish"
    await stub.Override(
        pb.OverrideRequest(
            job_id="run-1", op=pb.OVERRIDE_OP_SCALE, value=0.5, reason=forged + "\r\x1b[2K\u2028"
        )
    )
    history = await stub.History(pb.HistoryRequest(job_id="run-1"))
    assert history.events[0].reason.startswith(forged)  # stored as sent
    lines = [r.getMessage() for r in caplog.records if r.name == "lrctl.controller.changes"]
    scale = [line for line in lines if "op=scale" in line]
    assert len(scale) == 1
    assert not any(ch in scale[0] for ch in "\n\r\x1b\u2028"), scale[0]
    assert "\\n" in scale[0] and "\\x1b" in scale[0]


@pytest.mark.parametrize(
    ("request_", "code"),
    cases(
        {
            "1025-groups": (
                step_job("wide", base_lrs=[0.1] * 1025),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ),
            "a-million-groups": (
                step_job("wide", base_lrs=[0.1] * 1_000_000),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ),
            "spec-over-4-kib": (
                pb.CreateJobRequest(
                    job_id="long", schedule="StepLR(1)" + " " * 5000, base_lrs=[0.1]
                ),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ),
            "base-lr-above-the-ceiling": (
                step_job("high", base_lrs=[2e6]),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            "100k-character-job-id": (
                step_job("x" * 100_000),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        }
    ),
)
async def test_create_limits(
    controller: Controller, stub: Stub, request_: pb.CreateJobRequest, code: grpc.StatusCode
) -> None:
    start = time.perf_counter()
    err = await expect_status(stub.CreateJob(request_), code)
    assert time.perf_counter() - start < 2.0
    assert len(err.details() or "") <= MESSAGE_LIMIT
    # No metric series for a refused job (a million groups would be a million series).
    assert not [s for m in controller.registry.collect() for s in m.samples if "job_id" in s.labels]
    listed = await stub.ListJobs(pb.ListJobsRequest(include_finished=True))
    assert not listed.jobs


async def test_messages_quote_a_bounded_prefix(stub: Stub) -> None:
    await stub.CreateJob(step_job("run-1", base_lrs=[0.123456789] * 1024))
    calls = [
        (
            stub.CreateJob(
                pb.CreateJobRequest(
                    job_id="run-1", schedule="StepLR(step_size=3)", base_lrs=[0.987654321] * 1024
                )
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            stub.ListJobs(pb.ListJobsRequest(page_token="x" * 100_000)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.Preview(
                pb.PreviewRequest(schedule="Nope(" + "1," * 2000 + ")", base_lrs=[0.1], steps=3)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.Report(pb.ReportRequest(job_id="run-1", rank=0, step=1, lrs=[0.1] * 5000)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for call, code in calls:
        # Not a transport error ("received metadata size exceeds hard limit"): the answer.
        err = await expect_status(call, code)
        assert len(err.details() or "") <= MESSAGE_LIMIT, len(err.details() or "")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_list_jobs_pages_cheaply_at_the_job_limit(tmp_path: Path) -> None:
    """100,000 jobs (DESIGN's default limit): a ListJobs page costs a few ms, not a sort of
    every id, and listing them leaves nothing behind. (The jobs are put in the service's table
    directly: creating 100,000 through the API would fsync 100,000 times.)"""
    store = await Store.open(tmp_path / "lrctl.db")
    service = await ControllerService.open(store)
    try:
        for i in range(100_000):
            job = Job(
                job_id=f"job-{i:06d}",
                schedule="StepLR(step_size=2)",
                base_lrs=(0.1,),
                version=1,
                state=JobState.FINISHED,
            )
            service._table.jobs[job.job_id] = JobEntry(job, JobPlateau.idle(job))
        jobs, token = service.list_jobs(include_finished=True)  # the first page sorts once
        start, seen = time.thread_time(), len(jobs)
        for _ in range(20):
            jobs, token = service.list_jobs(include_finished=True, page_token=token)
            seen += len(jobs)
        per_page = (time.thread_time() - start) / 20
        assert seen == 2100 and jobs[-1].job_id == "job-002099"
        assert per_page < 0.012, f"a ListJobs page took {per_page * 1e3:.1f} ms of CPU"
        # Listing finished jobs keeps nothing of them in memory (their displayed LRs are
        # computed when shown): 30,000 more heads, a few MiB at most.
        before = _rss_mib()
        for _ in range(30):
            jobs, token = service.list_jobs(1000, token, include_finished=True)
        assert _rss_mib() - before < 40, (before, _rss_mib())
    finally:
        service.close()
        await store.close()


async def test_events_per_job_and_jobs_are_limited(start_controller: Start) -> None:
    ctl = await start_controller(limits=_limits(max_events_per_job=3, max_jobs=2))
    async with connect(ctl) as stub:
        await create_step_jobs(stub, "a", "b")
        err = await expect_status(
            stub.CreateJob(step_job("c")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert "2 jobs" in (err.details() or "")
        # Attaching to and recreating existing jobs still work at the limit.
        await stub.CreateJob(step_job("a"))
        for _ in range(3):
            await stub.Override(pb.OverrideRequest(job_id="a", op=pb.OVERRIDE_OP_SCALE, value=0.5))
        err = await expect_status(
            stub.Override(pb.OverrideRequest(job_id="a", op=pb.OVERRIDE_OP_SCALE, value=0.5)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert "3 events" in (err.details() or "")
        assert (await stub.GetJob(pb.GetJobRequest(job_id="a"))).version == 4
        recreated = await stub.CreateJob(step_job("a", base_lrs=[0.2], replace=True))
        assert recreated.job.version == 5 and not recreated.job.events
        await stub.Override(pb.OverrideRequest(job_id="a", op=pb.OVERRIDE_OP_SCALE, value=0.5))


async def test_watch_streams_are_limited_per_job_and_in_total(start_controller: Start) -> None:
    ctl = await start_controller(limits=_limits(max_watch_streams_per_job=2, max_watch_streams=3))
    async with connect(ctl) as stub:
        await create_step_jobs(stub, "a", "b")
        streams = []
        for job_id in ("a", "a"):
            call = stub.Watch(pb.WatchRequest(job_id=job_id))
            assert (await call.read()).kind == pb.WatchResponse.KIND_SNAPSHOT
            streams.append(call)
        err = await expect_status(
            stub.Watch(pb.WatchRequest(job_id="a")).read(), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert "2 Watch streams" in (err.details() or "")
        call = stub.Watch(pb.WatchRequest(job_id="b"))
        assert (await call.read()).kind == pb.WatchResponse.KIND_SNAPSHOT
        streams.append(call)
        err = await expect_status(
            stub.Watch(pb.WatchRequest(job_id="b")).read(), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert "3 Watch streams" in (err.details() or "")
        streams.pop(0).cancel()
        for _ in range(100):  # the server sees the cancel shortly
            if (await stub.GetJob(pb.GetJobRequest(job_id="a"))).watch_streams == 1:
                break
            await asyncio.sleep(0.02)
        call = stub.Watch(pb.WatchRequest(job_id="a"))
        assert (await call.read()).kind == pb.WatchResponse.KIND_SNAPSHOT
        streams.append(call)
        for call in streams:
            call.cancel()


async def test_the_lr_ceiling_and_report_sizes_are_configurable(start_controller: Start) -> None:
    ctl = await start_controller(limits=_limits(max_lr=10.0, max_report_items=4))
    async with connect(ctl) as stub:
        await expect_status(
            stub.CreateJob(step_job("a", base_lrs=[20.0])),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        await stub.CreateJob(step_job("a", base_lrs=[5.0]))
        await expect_status(
            stub.Override(pb.OverrideRequest(job_id="a", op=pb.OVERRIDE_OP_SET, value=11.0)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        err = await expect_status(
            stub.Report(
                pb.ReportRequest(
                    job_id="a",
                    rank=0,
                    step=9,
                    plateau_metrics=[pb.PlateauMetric(step=i, value=1.0) for i in range(5)],
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        details = err.details() or ""
        assert "expected at most 4 applied versions" in details and "got 0, 5 and 0" in details
        assert (await stub.GetJob(pb.GetJobRequest(job_id="a"))).step == -1


def test_limits_come_from_flags_and_environment() -> None:
    defaults = ServerLimits()
    assert (
        defaults.max_events_per_job,
        defaults.max_jobs,
        defaults.max_watch_streams_per_job,
        defaults.max_param_groups,
        defaults.max_spec_bytes,
        defaults.max_actor_chars,
        defaults.max_reason_bytes,
        defaults.max_lr,
    ) == (10_000, 100_000, 1_024, 1_024, 4_096, 256, 1_024, 1e6)
    env = {
        "LRCTL_MAX_EVENTS_PER_JOB": "20000",
        "LRCTL_MAX_LR": "10",
        "LRCTL_MAX_MESSAGE_BYTES": "1048576",
    }
    config = ServerConfig.from_env(env)
    assert config.limits.max_events_per_job == 20_000 and config.limits.max_lr == 10.0
    assert config.max_message_bytes == 1 << 20
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    args = parser.parse_args(
        ["--max-jobs", "7", "--max-watch-streams", "9", "--max-events-per-job", "30000"]
    )
    config = ServerConfig.from_args(args, env)
    assert (
        config.limits.max_jobs,
        config.limits.max_watch_streams,
        config.limits.max_events_per_job,
    ) == (7, 9, 30_000)
    for bad in ({"LRCTL_MAX_JOBS": "0"}, {"LRCTL_MAX_LR": "nan"}, {"LRCTL_MAX_JOBS": "many"}):
        with pytest.raises(ValueError):
            ServerConfig.from_env(bad)
