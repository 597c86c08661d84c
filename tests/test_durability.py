"""Acknowledged writes survive ``kill -9``; state (plateau trackers included) survives restarts."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from controller.server import Controller
from lrctl.convert import events_from_proto
from lrctl.program import LRProgram
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests.procs import CLI, ROOT, checkout_env, serve_argv
from tests.test_server import PLATEAU_METRICS, PLATEAU_SPEC, torch_plateau_lrs

pb = lrctl_pb2
LISTENING = re.compile(r"lrctl controller listening on 127\.0\.0\.1:(\d+) \(metrics off, db (.+)\)")


@contextmanager
def controller_process(db: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run ``lrctl serve`` on a free port; yield it and its address."""
    proc = subprocess.Popen(
        [*CLI, *serve_argv(db, "--grace-seconds", "0", "--log-level", "warning", metrics_port=-1)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=checkout_env(),
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = LISTENING.search(line)
        assert match, f"unexpected first line from the controller: {line!r}"
        assert match.group(2) == str(db)
        yield proc, f"127.0.0.1:{match.group(1)}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_acknowledged_overrides_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "lrctl.db"
    acknowledged: list[tuple[int, float]] = []
    with controller_process(db) as (proc, address), grpc.insecure_channel(address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)
        stub.CreateJob(
            pb.CreateJobRequest(job_id="run-1", schedule="StepLR(step_size=5)", base_lrs=[0.1])
        )
        for i in range(20):
            reply = stub.Override(
                pb.OverrideRequest(
                    job_id="run-1", op=pb.OVERRIDE_OP_SCALE, value=1.0 - i / 100, reason=f"#{i}"
                )
            )
            acknowledged.append((reply.event.version, reply.event.value))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL

    with controller_process(db) as (proc, address), grpc.insecure_channel(address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)
        history = stub.History(pb.HistoryRequest(job_id="run-1"))
        assert [(e.version, e.value) for e in history.events] == acknowledged
        assert [e.reason for e in history.events] == [f"#{i}" for i in range(20)]
        assert stub.GetJob(pb.GetJobRequest(job_id="run-1")).version == 21
        after = stub.Override(pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_CLEAR))
        assert after.event.version == 22  # versions never go back
        proc.send_signal(signal.SIGTERM)  # graceful stop: exit code 0
        assert proc.wait(10) == 0


async def test_plateau_tracker_survives_restart(
    start_controller: Callable[..., Awaitable[Controller]],
) -> None:
    metrics = [pb.PlateauMetric(step=i + 1, value=m) for i, m in enumerate(PLATEAU_METRICS)]
    first = await start_controller(metrics_port=None)
    async with grpc.aio.insecure_channel(first.address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)
        await stub.CreateJob(
            pb.CreateJobRequest(job_id="run-1", schedule=PLATEAU_SPEC, base_lrs=[0.1, 0.01])
        )
        # Stop in the middle of a plateau (the tracker has bad epochs pending).
        await stub.Report(
            pb.ReportRequest(job_id="run-1", rank=0, step=9, plateau_metrics=metrics[:9])
        )
    await first.stop(0)
    second = await start_controller(metrics_port=None)
    async with grpc.aio.insecure_channel(second.address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)
        await stub.Report(
            pb.ReportRequest(job_id="run-1", rank=0, step=22, plateau_metrics=metrics[5:])
        )  # 6..9 again: skipped
        # Rank 0 applies each reduction right at the step whose metric triggered it.
        expected = torch_plateau_lrs(PLATEAU_METRICS)
        changed = [t for t in range(1, len(expected)) if expected[t] != expected[t - 1]]
        pending = (await stub.GetJob(pb.GetJobRequest(job_id="run-1"))).events
        assert len(pending) == len(changed)  # no reduction lost or repeated by the restart
        await stub.Report(
            pb.ReportRequest(
                job_id="run-1",
                rank=0,
                step=22,
                applied=[
                    pb.AppliedVersion(version=e.version, effective_step=s)
                    for e, s in zip(pending, changed)
                ],
            )
        )
        job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    program = LRProgram(PLATEAU_SPEC, [0.1, 0.01], events_from_proto(job.events))
    assert [program.lrs(t) for t in range(len(expected))] == expected
