"""Report's fields (final, applied_version, world_size) and the Override response's job head."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from controller.errors import InvalidArgument
from controller.server import Controller
from controller.service import ControllerService
from controller.store import Store
from lrctl.model import Report
from lrctl.overrides import Op
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests._grpc_helpers import applied_report
from tests.conftest import expect_status

pb = lrctl_pb2
Stub = lrctl_pb2_grpc.LRControllerStub
SPEC = "StepLR(step_size=2, gamma=0.5)"


async def _reopen(path: Path) -> ControllerService:
    return await ControllerService.open(await Store.open(path))


async def test_a_final_report_is_durable_at_once(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    service = await _reopen(path)
    await service.create_job("run-1", SPEC, [0.1])
    await service.report(Report("run-1", step=1, applied_version=1, world_size=2))  # written
    await service.report(Report("run-1", step=5, world_size=2))  # bare progress: throttled
    await service._store.close()  # a crash: memory is lost, the disk is what it is
    service = await _reopen(path)
    assert service.get_job("run-1").step == 1  # the throttle at work (the control case)
    await service.report(Report("run-1", step=6, world_size=2))  # first after start: written
    await service.report(
        Report("run-1", step=7, lrs=(0.0125,), applied_version=1, world_size=2, final=True)
    )
    await service._store.close()
    service = await _reopen(path)
    job = service.get_job("run-1")
    assert (job.step, job.world_size, job.applied_version) == (7, 0, 1)
    await service._store.close()


async def test_applied_version_is_kept_and_pending_counts_until_every_rank_applied(
    controller: Controller, stub: Stub
) -> None:
    await stub.CreateJob(pb.CreateJobRequest(job_id="run-1", schedule=SPEC, base_lrs=[0.1]))
    first = (
        await stub.Override(pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_SCALE, value=0.5))
    ).event.version
    second = (
        await stub.Override(pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_CLEAR))
    ).event.version

    def pending() -> float | None:
        return controller.registry.get_sample_value("lrctl_overrides_pending", {"job_id": "run-1"})

    assert pending() == 2
    # Rank 0 saw the first take effect, but the ranks agreed only on version 1 so far.
    await stub.Report(applied_report("run-1", 3, first, applied_version=1))
    assert pending() == 2
    await stub.Report(pb.ReportRequest(job_id="run-1", rank=0, step=4, applied_version=first))
    assert pending() == 1
    await stub.Report(applied_report("run-1", 5, second, applied_version=second))
    assert pending() == 0
    job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    assert job.applied_version == second
    err = await expect_status(
        stub.Report(pb.ReportRequest(job_id="run-1", rank=0, step=6, applied_version=second + 1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert f"applied_version <= {second}" in (err.details() or "")
    await expect_status(
        stub.Report(pb.ReportRequest(job_id="run-1", rank=0, step=6, world_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_override_answers_with_the_job_head(stub: Stub) -> None:
    await stub.CreateJob(pb.CreateJobRequest(job_id="run-1", schedule=SPEC, base_lrs=[0.1]))
    for _ in range(3):
        reply = await stub.Override(
            pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_SCALE, value=0.5)
        )
    assert reply.job.version == reply.event.version == 4
    assert list(reply.job.events) == []  # the head: the response does not grow with history
    assert list(reply.job.lrs) == [0.1 * 0.5**3]


async def test_the_service_refuses_plateau_reductions_from_clients(controller: Controller) -> None:
    await controller.service.create_job("run-1", SPEC, [0.1])
    with pytest.raises(InvalidArgument, match="replace_schedule, got 'plateau_reduce'"):
        await controller.service.override("run-1", Op.PLATEAU_REDUCE)
    assert controller.service.get_job("run-1").version == 1
