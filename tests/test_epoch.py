"""Attach epochs: only the rank 0 that attached last may report (real servers, real stores).

Every CreateJob with ``attach`` hands out a new epoch, one above the last, stored with the job;
a report carrying any other epoch is FAILED_PRECONDITION and changes nothing: not the step,
not the LRs, not an effective step, not a plateau metric. Checked on the wire, across a
restart, across PostgreSQL replicas (the epoch is handed out under the job's row lock), and
with two real training processes on one job.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.server import Controller
from lrctl.client import Client
from lrctl.constants import REASON_METADATA_KEY, REASON_SUPERSEDED
from lrctl.v1 import lrctl_pb2 as pb
from lrctl.v1 import lrctl_pb2_grpc
from tests import pg
from tests.conftest import expect_status
from tests.procs import ControllerProcess, attach_loop, read_jsonl, reap, until

Start = Callable[..., Awaitable[Controller]]
SPEC = "StepLR(step_size=10, gamma=0.5)"
PLATEAU = "ReduceLROnPlateau(factor=0.5, patience=0)"
FAILED = grpc.StatusCode.FAILED_PRECONDITION

postgres = pg.postgres  # one PostgreSQL server per session (only the replica test uses it)
pg_url = pg.pg_url


def _stub(channel: grpc.aio.Channel) -> Any:
    return lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]


def _attach(job: str = "run-1", spec: str = SPEC, world_size: int = 2) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        job_id=job, schedule=spec, base_lrs=[0.1], attach=True, world_size=world_size
    )


def _state(job: pb.Job) -> tuple[Any, ...]:
    """Everything a report could move."""
    return (
        job.version,
        job.step,
        list(job.lrs),
        job.applied_version,
        job.world_size,
        job.epoch,
        [(e.version, e.op, e.HasField("effective_step") and e.effective_step) for e in job.events],
    )


async def test_the_newest_attach_wins_and_older_reports_change_nothing(stub: Any) -> None:
    first = await stub.CreateJob(_attach(world_size=2))
    assert (first.created, first.epoch, first.job.epoch) == (True, 1, 1)
    await stub.Report(pb.ReportRequest(job_id="run-1", step=3, epoch=1, world_size=2))
    second = await stub.CreateJob(_attach(world_size=4))  # a restarted worker group
    assert (second.created, second.epoch, second.job.epoch) == (False, 2, 2)
    assert second.job.version == first.job.version  # an attach adds no version
    assert second.job.world_size == 4
    event = (
        await stub.Override(pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_SCALE, value=0.5))
    ).event
    before = _state(await stub.GetJob(pb.GetJobRequest(job_id="run-1")))

    # The superseded run (epoch 1) tries everything a report can do.
    stale = pb.ReportRequest(
        job_id="run-1",
        rank=0,
        step=900,
        epoch=1,
        lrs=[0.001],
        applied_version=event.version,
        world_size=2,
        applied=[pb.AppliedVersion(version=event.version, effective_step=900)],
    )
    err = await expect_status(stub.Report(stale), FAILED)
    assert err.details() == (
        "job 'run-1': attach epoch 1 is superseded; the current epoch is "
        "2 (a newer rank 0 attached); this report changes nothing"
    )
    # Only this refusal says "superseded" in the trailing metadata: the worker stops reporting
    # on that, never on another FAILED_PRECONDITION (a job that cannot be evaluated, say).
    assert _reason(err) == REASON_SUPERSEDED
    for epoch, says in ((0, "does not attach"), (3, "never handed out"), (99, "never")):
        stale.epoch = epoch
        err = await expect_status(stub.Report(stale), FAILED)
        assert "expected a report from attach epoch 2" in (err.details() or "")
        assert says in (err.details() or "")
        assert _reason(err) == ""
    stale.final = True  # a final report of the old run does not detach the new one either
    stale.epoch = 1
    await expect_status(stub.Report(stale), FAILED)
    assert _state(await stub.GetJob(pb.GetJobRequest(job_id="run-1"))) == before

    # The current run's report does change the job, and pins the effective step.
    reply = await stub.Report(
        pb.ReportRequest(
            job_id="run-1",
            rank=0,
            step=12,
            epoch=2,
            applied_version=event.version,
            world_size=4,
            applied=[pb.AppliedVersion(version=event.version, effective_step=11)],
        )
    )
    job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    assert reply.version == job.version
    assert (job.step, job.applied_version, job.world_size) == (12, event.version, 4)
    assert job.events[-1].effective_step == 11


async def test_superseded_plateau_metrics_are_not_consumed(stub: Any) -> None:
    await stub.CreateJob(_attach(spec=PLATEAU))
    await stub.CreateJob(_attach(spec=PLATEAU))  # epoch 2
    worse = [pb.PlateauMetric(step=s, value=float(s)) for s in range(1, 6)]  # never better
    await expect_status(
        stub.Report(pb.ReportRequest(job_id="run-1", step=5, epoch=1, plateau_metrics=worse)),
        FAILED,
    )
    assert len((await stub.GetJob(pb.GetJobRequest(job_id="run-1"))).events) == 0
    await stub.Report(pb.ReportRequest(job_id="run-1", step=5, epoch=2, plateau_metrics=worse))
    assert len((await stub.GetJob(pb.GetJobRequest(job_id="run-1"))).events) > 0  # control


async def test_before_any_attach_epoch_0_reports_and_recreation_keeps_the_epoch(stub: Any) -> None:
    # A job an operator created, not attached yet: its epoch is 0 and so is the report's.
    await stub.CreateJob(pb.CreateJobRequest(job_id="run-1", schedule=SPEC, base_lrs=[0.1]))
    await stub.Report(pb.ReportRequest(job_id="run-1", step=2))
    assert (await stub.GetJob(pb.GetJobRequest(job_id="run-1"))).step == 2
    attach = await stub.CreateJob(_attach())
    assert attach.epoch == 1
    await expect_status(stub.Report(pb.ReportRequest(job_id="run-1", step=3)), FAILED)
    # An operator recreates the job under the running worker: its epoch still reports.
    recreated = await stub.CreateJob(
        pb.CreateJobRequest(job_id="run-1", schedule="ConstantLR()", base_lrs=[0.1], replace=True)
    )
    assert (recreated.created, recreated.job.epoch, recreated.epoch) == (True, 1, 0)
    await stub.Report(pb.ReportRequest(job_id="run-1", step=4, epoch=1))
    assert (await stub.GetJob(pb.GetJobRequest(job_id="run-1"))).step == 4
    # Attaching with another spec is refused and hands out nothing.
    await expect_status(stub.CreateJob(_attach()), FAILED)
    assert (await stub.GetJob(pb.GetJobRequest(job_id="run-1"))).epoch == 1
    await expect_status(
        stub.CreateJob(_attach(job="run-2", world_size=-1)), grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_the_epoch_survives_a_restart(start_controller: Start, tmp_path: Path) -> None:
    db = str(tmp_path / "epoch.db")
    ctl = await start_controller(db=db)
    async with grpc.aio.insecure_channel(ctl.address) as channel:
        assert (await _stub(channel).CreateJob(_attach())).epoch == 1
        assert (await _stub(channel).CreateJob(_attach())).epoch == 2
    await ctl.stop(0)
    ctl = await start_controller(db=db)
    async with grpc.aio.insecure_channel(ctl.address) as channel:
        stub = _stub(channel)
        assert (await stub.GetJob(pb.GetJobRequest(job_id="run-1"))).epoch == 2
        await expect_status(stub.Report(pb.ReportRequest(job_id="run-1", step=1, epoch=1)), FAILED)
        await stub.Report(pb.ReportRequest(job_id="run-1", step=1, epoch=2))
        assert (await stub.CreateJob(_attach())).epoch == 3  # never hands out 2 again


@pytest.mark.slow
async def test_replicas_hand_out_each_epoch_once_and_the_newest_wins(
    start_controller: Start, pg_url: str
) -> None:
    replicas = [await start_controller(db=pg_url, metrics_port=None) for _ in range(3)]
    channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
    stubs = [_stub(c) for c in channels]
    try:
        assert (await stubs[0].CreateJob(_attach())).epoch == 1
        assert (await stubs[1].CreateJob(_attach())).epoch == 2  # another replica: next one
        # Replica 0 has not been asked since: the report takes the row lock and sees epoch 2.
        await expect_status(
            stubs[0].Report(pb.ReportRequest(job_id="run-1", step=5, epoch=1)), FAILED
        )
        # Attaches racing on every replica: each epoch is handed out once.
        replies = await asyncio.gather(*(stubs[i % 3].CreateJob(_attach()) for i in range(9)))
        epochs = sorted(r.epoch for r in replies)
        assert epochs == list(range(3, 12))
        for i, stub in enumerate(stubs):
            err = await expect_status(
                stub.Report(pb.ReportRequest(job_id="run-1", step=7, epoch=10)), FAILED
            )
            assert "the current epoch is 11" in (err.details() or ""), i
        await stubs[2].Report(pb.ReportRequest(job_id="run-1", step=8, epoch=11))
        assert (await stubs[2].GetJob(pb.GetJobRequest(job_id="run-1"))).step == 8
        assert (await stubs[0].GetJob(pb.GetJobRequest(job_id="run-1"))).epoch == 11
    finally:
        for channel in channels:
            await channel.close()


# -- two real training processes on one job ----------------------------------------------------


@pytest.fixture
def controller_proc(tmp_path: Path) -> Iterator[ControllerProcess]:
    with ControllerProcess(tmp_path / "lrctl.db") as proc:
        yield proc


def _run(
    job: str, out: Path, stop: Path, sleep: float, address: str, **env: str
) -> subprocess.Popen[str]:
    env = {**os.environ, "LRCTL_ADDRESS": address, "LRCTL_REPORT_INTERVAL": "0.05", **env}
    return attach_loop(job, out, stop, sleep, env)


@pytest.mark.slow
def test_a_second_process_attaching_takes_over_and_the_first_changes_nothing(
    controller_proc: ControllerProcess, tmp_path: Path
) -> None:
    """Process A attaches and reports; process B attaches the same job; from then on A's
    reports change nothing (A logs it once and trains on), B's do."""
    a_out, b_out, stop = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "stop"
    client = Client(controller_proc.address)
    a = _run("run-1", a_out, stop, 0.002, controller_proc.address)
    b = None
    try:
        until(
            lambda: client.list_jobs() != [] and client.get_job("run-1").step >= 300,
            60,
            "process A to report step 300",
        )
        assert client.get_job("run-1").epoch == 1
        b = _run("run-1", b_out, stop, 0.05, controller_proc.address)
        until(lambda: client.get_job("run-1").epoch == 2, 60, "process B to attach")
        a_at_attach = read_jsonl(a_out)[-1]["step"]
        # A keeps training (hundreds of steps ahead of B), B reports slowly from step 0.
        seen: list[int] = []
        until(lambda: len(read_jsonl(b_out)) >= 20, 60, "process B to train")
        for _ in range(20):
            seen.append(client.get_job("run-1").step)
            time.sleep(0.05)
        b_now = read_jsonl(b_out)[-1]["step"]
        assert max(seen) <= b_now + 1 < a_at_attach, (seen, b_now, a_at_attach)
        assert seen[-1] > seen[0]  # B's reports do move the job
        # An override: both apply it; the effective step recorded is B's, not A's.
        event = client.override("run-1", "lr /= 2", reason="take-over test").event
        until(
            lambda: client.get_job("run-1").events[-1].effective_step is not None,
            30,
            "the override's effective step",
        )
        effective = client.get_job("run-1").events[-1].effective_step
        assert effective is not None and effective <= read_jsonl(b_out)[-1]["step"] < a_at_attach
        until(
            lambda: any(r.get("version", 0) >= event.version for r in read_jsonl(a_out)),
            30,
            "process A to follow the override too",
        )
        a_rows = [r for r in read_jsonl(a_out) if "step" in r]
        assert a_rows[-1]["superseded"] and a_rows[-1]["step"] > a_at_attach  # trains on
        stop.touch()
        assert a.wait(60) == 0 and b.wait(60) == 0
        a_log = a.stdout.read() if a.stdout else ""
        assert a_log.count("stops reporting") == 1, a_log  # logged once, clearly
        assert "attach epoch 1 is superseded; the current epoch is 2" in a_log
        # A's final report was not sent (nor would it count); B's detached the job.
        job = client.get_job("run-1")
        assert job.world_size == 0 and job.step == read_jsonl(b_out)[-2]["step"]
    finally:
        stop.touch()
        reap([proc for proc in (a, b) if proc is not None])
        client.close()


def _reason(err: Any) -> str:
    """The ``lrctl-reason`` trailing metadata of a failed call."""
    return dict(err.trailing_metadata() or ()).get(REASON_METADATA_KEY, "")
