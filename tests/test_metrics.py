"""Prometheus exposition over real HTTP, checked by the real ``promtool``."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.request
from collections.abc import Awaitable, Callable

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.server import Controller
from lrctl.convert import events_from_proto
from lrctl.program import LRProgram
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests.conftest import expect_status

pb = lrctl_pb2
SPEC = "CosineAnnealingLR(T_max=10, eta_min=0.001)"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int | None) -> str:
    assert port is not None
    url = f"http://127.0.0.1:{port}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            return str(response.read().decode())

    return await asyncio.to_thread(get)


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package 'prometheus'); it is required")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


async def test_job_metrics_match_the_program_and_pass_promtool(controller: Controller) -> None:
    async with grpc.aio.insecure_channel(controller.address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)
        for job_id in ("run-1", "run-2"):
            await stub.CreateJob(
                pb.CreateJobRequest(job_id=job_id, schedule=SPEC, base_lrs=[0.1, 0.01])
            )
        override = await stub.Override(
            pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_SCALE, value=0.5, param_group=0)
        )
        await stub.Report(
            pb.ReportRequest(
                job_id="run-1",
                rank=0,
                step=4,
                applied=[pb.AppliedVersion(version=override.event.version, effective_step=3)],
            )
        )
        await expect_status(stub.GetJob(pb.GetJobRequest(job_id="nope")), grpc.StatusCode.NOT_FOUND)
        watch = stub.Watch(pb.WatchRequest(job_id="run-1", worker_id="rank-0"))
        await watch.read()
        watch.cancel()
        job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
        text = await scrape(controller.metrics_port)

        found = samples(text)
        expected = LRProgram(SPEC, [0.1, 0.01], events_from_proto(job.events)).lrs(4)
        for group in (0, 1):
            got = value(found, "lrctl_learning_rate", job_id="run-1", param_group=str(group))
            assert got == expected[group] == job.lrs[group]
        assert value(found, "lrctl_step", job_id="run-1") == 4
        assert value(found, "lrctl_schedule_version", job_id="run-1") == 2
        assert value(found, "lrctl_overrides_total", job_id="run-1", op="scale") == 1
        assert value(found, "lrctl_override_apply_seconds_count") == 1
        assert value(found, "lrctl_workers", job_id="run-2") == 0
        rpc = {"grpc_service": "lrctl.v1.LRController"}
        assert (
            value(
                found,
                "lrctl_grpc_server_handled_total",
                **rpc,
                grpc_method="CreateJob",
                grpc_code="OK",
            )
            == 2
        )
        assert (
            value(
                found,
                "lrctl_grpc_server_handled_total",
                **rpc,
                grpc_method="GetJob",
                grpc_code="NOT_FOUND",
            )
            == 1
        )
        assert (
            value(found, "lrctl_grpc_server_handling_seconds_count", **rpc, grpc_method="Report")
            == 1
        )
        assert not any("job" in dict(labels) for _, labels in found)  # job_id, never job
        promtool_check(text)

        await stub.FinishJob(pb.FinishJobRequest(job_id="run-1"))
        for _ in range(50):  # the stream's end is counted when its handler unwinds
            text = await scrape(controller.metrics_port)
            if 'grpc_method="Watch"' in text:
                break
            await asyncio.sleep(0.02)
        after = samples(text)
        assert not [key for key in after if ("job_id", "run-1") in key[1]]
        assert value(after, "lrctl_learning_rate", job_id="run-2", param_group="0") == 0.1
        assert (
            value(
                after,
                "lrctl_grpc_server_handled_total",
                **rpc,
                grpc_method="Watch",
                grpc_code="CANCELLED",
            )
            == 1
        )
        promtool_check(text)


async def test_running_jobs_are_exported_after_restart(
    start_controller: Callable[..., Awaitable[Controller]],
) -> None:
    first = await start_controller()
    async with grpc.aio.insecure_channel(first.address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)
        await stub.CreateJob(pb.CreateJobRequest(job_id="kept", schedule=SPEC, base_lrs=[0.1]))
        await stub.CreateJob(pb.CreateJobRequest(job_id="done", schedule=SPEC, base_lrs=[0.1]))
        await stub.Report(pb.ReportRequest(job_id="kept", rank=0, step=5))
        await stub.FinishJob(pb.FinishJobRequest(job_id="done"))
    await first.stop(0)
    second = await start_controller()
    found = samples(await scrape(second.metrics_port))
    assert value(found, "lrctl_step", job_id="kept") == 5
    assert value(found, "lrctl_learning_rate", job_id="kept", param_group="0") == pytest.approx(
        LRProgram(SPEC, [0.1]).lrs(5)[0]
    )
    assert value(found, "lrctl_step", job_id="done") is None
