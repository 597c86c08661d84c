"""The metrics dashboards and alerts read: override info, pending overrides, streams, divergence.

A real controller on loopback, real gRPC calls, the real HTTP exposition (see
tests/test_metrics.py for the job gauges); deploy/ (docs/operations.md) depends on these.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from controller.metrics import INFO_PER_JOB, INFO_REASON_CHARS
from controller.server import Controller
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests._grpc_helpers import applied_report
from tests.test_metrics import Samples, promtool_check, samples, scrape, value

pb = lrctl_pb2
SPEC = "StepLR(step_size=10, gamma=0.5)"


def info_series(found: Samples, job_id: str) -> dict[str, dict[str, str]]:
    """version -> labels of every ``lrctl_override_info`` series of ``job_id``."""
    series = {}
    for (name, labels), _ in found.items():
        label_map = dict(labels)
        if name == "lrctl_override_info" and label_map["job_id"] == job_id:
            series[label_map["version"]] = label_map
    return series


async def test_override_info_pending_and_removal(controller: Controller) -> None:
    async with grpc.aio.insecure_channel(controller.address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)
        await stub.CreateJob(
            pb.CreateJobRequest(job_id="run-1", schedule=SPEC, base_lrs=[0.1, 0.01])
        )
        found = samples(await scrape(controller.metrics_port))
        assert value(found, "lrctl_overrides_pending", job_id="run-1") == 0
        assert value(found, "lrctl_rank_divergence_total", job_id="run-1") == 0
        assert value(found, "lrctl_watch_streams", job_id="run-1") == 0
        assert info_series(found, "run-1") == {}

        long_reason = "loss spike " * 40
        first = await stub.Override(
            pb.OverrideRequest(
                job_id="run-1",
                op=pb.OVERRIDE_OP_SCALE,
                value=0.5,
                actor="alice",
                reason="loss spike",
            )
        )
        second = await stub.Override(
            pb.OverrideRequest(
                job_id="run-1",
                op=pb.OVERRIDE_OP_SET,
                value=3e-4,
                param_group=1,
                actor="bob",
                reason=long_reason,
            )
        )
        found = samples(await scrape(controller.metrics_port))
        assert value(found, "lrctl_overrides_pending", job_id="run-1") == 2
        info = info_series(found, "run-1")
        assert set(info) == {"2", "3"}
        assert info["2"] == {
            "job_id": "run-1",
            "version": "2",
            "op": "scale",
            "actor": "alice",
            "reason": "loss spike",
        }
        assert info["3"]["op"] == "set" and info["3"]["actor"] == "bob"
        assert len(info["3"]["reason"]) == INFO_REASON_CHARS
        assert info["3"]["reason"] == long_reason[: INFO_REASON_CHARS - 1] + "…"
        # The value is the creation time in Unix seconds, as History reports it.
        for event, version in ((first.event, "2"), (second.event, "3")):
            created = event.created_at.ToNanoseconds() / 1e9
            assert value(found, "lrctl_override_info", **info[version]) == pytest.approx(
                created, abs=1e-3
            )
        promtool_check(await scrape(controller.metrics_port))

        # Rank 0 applies the first (every rank agreed on version 2): one left pending.
        await stub.Report(applied_report("run-1", 3, 2, applied_version=2))
        found = samples(await scrape(controller.metrics_port))
        assert value(found, "lrctl_overrides_pending", job_id="run-1") == 1
        await stub.Report(applied_report("run-1", 4, 3, applied_version=3))
        found = samples(await scrape(controller.metrics_port))
        assert value(found, "lrctl_overrides_pending", job_id="run-1") == 0
        assert set(info_series(found, "run-1")) == {"2", "3"}  # applied overrides stay

        # Recreated with another spec: the old incarnation's overrides are gone.
        await stub.CreateJob(
            pb.CreateJobRequest(
                job_id="run-1", schedule="StepLR(step_size=5)", base_lrs=[0.1], replace=True
            )
        )
        found = samples(await scrape(controller.metrics_port))
        assert info_series(found, "run-1") == {}
        await stub.Override(
            pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_CLEAR, reason="back")
        )
        found = samples(await scrape(controller.metrics_port))
        assert [i["op"] for i in info_series(found, "run-1").values()] == ["clear"]

        await stub.FinishJob(pb.FinishJobRequest(job_id="run-1"))
        found = samples(await scrape(controller.metrics_port))
        assert not [key for key in found if ("job_id", "run-1") in key[1]]


async def test_override_info_keeps_the_latest_per_job(controller: Controller) -> None:
    async with grpc.aio.insecure_channel(controller.address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)
        await stub.CreateJob(pb.CreateJobRequest(job_id="many", schedule=SPEC, base_lrs=[0.1]))
        total = INFO_PER_JOB + 5
        for i in range(total):
            await stub.Override(
                pb.OverrideRequest(
                    job_id="many", op=pb.OVERRIDE_OP_SCALE, value=0.99, reason=f"r{i}"
                )
            )
        found = samples(await scrape(controller.metrics_port))
        info = info_series(found, "many")
        # Versions 2 .. total+1 exist; the latest INFO_PER_JOB are exported.
        assert sorted(int(v) for v in info) == list(range(total + 2 - INFO_PER_JOB, total + 2))
        assert value(found, "lrctl_overrides_total", job_id="many", op="scale") == total
        assert value(found, "lrctl_overrides_pending", job_id="many") == total


async def test_watch_streams_workers_and_divergence(controller: Controller) -> None:
    async with grpc.aio.insecure_channel(controller.address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)
        await stub.CreateJob(pb.CreateJobRequest(job_id="w", schedule=SPEC, base_lrs=[0.1]))
        # Two streams of one worker and one of a viewer (no worker id, e.g. `lrctl watch`).
        calls = [
            stub.Watch(pb.WatchRequest(job_id="w", worker_id=worker))
            for worker in ("rank-0", "rank-0", "")
        ]
        for call in calls:
            await call.read()  # the snapshot: the stream is open
        found = samples(await scrape(controller.metrics_port))
        assert value(found, "lrctl_watch_streams", job_id="w") == 3
        # lrctl_workers is the world size rank 0 reports (DESIGN), not a stream count.
        assert value(found, "lrctl_workers", job_id="w") == 0
        await stub.Report(pb.ReportRequest(job_id="w", rank=0, step=0, world_size=1))
        calls[0].cancel()
        calls[2].cancel()
        for _ in range(100):  # the server sees the cancellations asynchronously
            found = samples(await scrape(controller.metrics_port))
            if value(found, "lrctl_watch_streams", job_id="w") == 1:
                break
            await asyncio.sleep(0.02)
        assert value(found, "lrctl_watch_streams", job_id="w") == 1
        assert value(found, "lrctl_workers", job_id="w") == 1

        divergence = pb.Divergence(step=7, version=1, lr_checksums=[0.1, 0.2], detail="x")
        await stub.Report(
            pb.ReportRequest(job_id="w", rank=0, step=7, divergences=[divergence, divergence])
        )
        await stub.Report(
            pb.ReportRequest(job_id="w", rank=1, step=7, divergences=[divergence])
        )  # only rank 0 counts
        found = samples(await scrape(controller.metrics_port))
        assert value(found, "lrctl_rank_divergence_total", job_id="w") == 2
        calls[1].cancel()
