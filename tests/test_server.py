"""Every LRController RPC and every status code, over a real grpc.aio server on loopback."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controller.config import ServerConfig, add_server_arguments
from controller.server import Controller
from controller.tokens import hash_token, load_tokens
from lrctl.convert import events_from_proto
from lrctl.program import LRProgram, preview
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests._grpc_helpers import applied_report
from tests.conftest import RunningServer, expect_status

pb = lrctl_pb2
Stub = lrctl_pb2_grpc.LRControllerStub
SPEC = "StepLR(step_size=2, gamma=0.5)"
UNSAFE_LAMBDA = "LambdaLR(lr_lambda=\"__import__('os')\")"


async def create(
    stub: Stub,
    job_id: str = "run-1",
    schedule: str = SPEC,
    base_lrs: tuple[float, ...] = (0.1, 0.01),
    **kw: Any,
) -> pb.CreateJobResponse:
    return await stub.CreateJob(
        pb.CreateJobRequest(job_id=job_id, schedule=schedule, base_lrs=base_lrs, **kw)
    )


async def scale(stub: Stub, factor: float, job_id: str = "run-1", **kw: Any) -> pb.OverrideResponse:
    return await stub.Override(
        pb.OverrideRequest(
            job_id=job_id, op=pb.OVERRIDE_OP_SCALE, value=factor, actor="alice", **kw
        )
    )


# -- jobs ------------------------------------------------------------------------------------


async def test_create_get_and_attach_is_idempotent(stub: Stub) -> None:
    first = await create(stub, schedule="StepLR(gamma=0.5, step_size=2)")
    assert first.created
    assert first.job.schedule == "StepLR(step_size=2, gamma=0.5)"  # torch's parameter order
    assert (first.job.version, first.job.step, list(first.job.lrs)) == (1, -1, [0.1, 0.01])
    assert first.job.state == pb.JOB_STATE_RUNNING
    again = await create(stub, schedule="StepLR( 2,gamma=0.5 )")  # same canonical spec
    assert not again.created
    assert again.job.version == 1
    got = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    assert got.job_id == "run-1" and got.version == 1 and got.created_at.seconds > 0


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"schedule": "StepLR(step_size=3, gamma=0.5)"}, id="other-spec"),
        pytest.param({"base_lrs": (0.2, 0.01)}, id="other-base-lrs"),
        pytest.param({"base_lrs": (0.1,)}, id="other-group-count"),
    ],
)
async def test_create_conflict_is_failed_precondition_unless_replace(
    stub: Stub, change: dict[str, Any]
) -> None:
    await create(stub)
    await scale(stub, 0.5)
    err = await expect_status(create(stub, **change), grpc.StatusCode.FAILED_PRECONDITION)
    assert "expected the same to attach" in (err.details() or "")
    replaced = await create(stub, replace=True, **change)
    assert replaced.created
    assert replaced.job.version == 3  # 1 create, 2 override, 3 recreate: never goes back
    assert list(replaced.job.events) == []


async def test_finished_job_refuses_attach_and_overrides(stub: Stub) -> None:
    await create(stub)
    done = await stub.FinishJob(pb.FinishJobRequest(job_id="run-1"))
    assert done.state == pb.JOB_STATE_FINISHED and done.version == 2
    again = await stub.FinishJob(pb.FinishJobRequest(job_id="run-1"))  # idempotent
    assert again.version == 2
    await expect_status(create(stub), grpc.StatusCode.FAILED_PRECONDITION)
    await expect_status(scale(stub, 0.5), grpc.StatusCode.FAILED_PRECONDITION)
    restarted = await create(stub, replace=True)
    assert restarted.created and restarted.job.state == pb.JOB_STATE_RUNNING
    assert restarted.job.version == 3


async def test_list_jobs_pages_with_opaque_tokens(stub: Stub) -> None:
    for i in range(5):
        await create(stub, job_id=f"job-{i}")
    await stub.FinishJob(pb.FinishJobRequest(job_id="job-2"))
    seen, token = [], ""
    while True:
        page = await stub.ListJobs(pb.ListJobsRequest(page_size=2, page_token=token))
        seen += [j.job_id for j in page.jobs]
        assert all(not j.events for j in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert seen == ["job-0", "job-1", "job-3", "job-4"]
    everything = await stub.ListJobs(pb.ListJobsRequest(include_finished=True))
    assert [j.job_id for j in everything.jobs] == [f"job-{i}" for i in range(5)]
    await expect_status(
        stub.ListJobs(pb.ListJobsRequest(page_token="not a token!")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_status(
        stub.ListJobs(pb.ListJobsRequest(page_size=-1)), grpc.StatusCode.INVALID_ARGUMENT
    )


# -- overrides -------------------------------------------------------------------------------


async def test_override_ops_history_and_lr(stub: Stub) -> None:
    await create(stub)
    await stub.Report(pb.ReportRequest(job_id="run-1", rank=0, step=3))
    halved = await scale(stub, 0.5, reason="loss spike", param_group=0)
    assert halved.event.version == 2 and halved.event.op == pb.OVERRIDE_OP_SCALE
    assert not halved.event.HasField("effective_step")  # pending until rank 0 applies it
    # Shown as if taking effect now: StepLR at step 3 is 0.05 / 0.005; group 0 halved.
    assert list(halved.job.lrs) == pytest.approx([0.025, 0.005])
    held = await stub.Override(
        pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_SET, value=3e-4, actor="bob")
    )
    assert list(held.job.lrs) == pytest.approx([3e-4, 3e-4])
    cleared = await stub.Override(pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_CLEAR))
    assert list(cleared.job.lrs) == pytest.approx([0.05, 0.005])
    replaced = await stub.Override(
        pb.OverrideRequest(
            job_id="run-1", op=pb.OVERRIDE_OP_REPLACE_SCHEDULE, schedule="ConstantLR( factor=0.5)"
        )
    )
    assert replaced.event.schedule == "ConstantLR(factor=0.5)"
    history = await stub.History(pb.HistoryRequest(job_id="run-1"))
    assert [e.version for e in history.events] == [2, 3, 4, 5]
    assert [(e.actor, e.reason) for e in history.events][:2] == [
        ("alice", "loss spike"),
        ("bob", ""),
    ]
    assert history.events[0].param_group == 0 and not history.events[1].HasField("param_group")
    job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    assert job.version == 5 and len(job.events) == 4


async def test_expected_version_conflict_is_aborted(stub: Stub) -> None:
    await create(stub)
    ok = await scale(stub, 0.5, expected_version=1)
    assert ok.job.version == 2
    err = await expect_status(scale(stub, 0.5, expected_version=1), grpc.StatusCode.ABORTED)
    assert "version 2" in (err.details() or "")
    assert (await stub.GetJob(pb.GetJobRequest(job_id="run-1"))).version == 2


def _refused(case: str, message: str, op: int, **fields: Any) -> Any:
    """An override the server must refuse: its request's fields and a part of the error."""
    return pytest.param({"op": op, **fields}, message, id=case)


SCALE, SET, REPLACE = pb.OVERRIDE_OP_SCALE, pb.OVERRIDE_OP_SET, pb.OVERRIDE_OP_REPLACE_SCHEDULE
REFUSED_OVERRIDES = [
    _refused("scale-0", "scale factor", SCALE, value=0.0),
    _refused("scale-inf", "finite", SCALE, value=float("inf")),
    _refused("scale-nan", "finite", SCALE, value=float("nan")),
    _refused("set-negative", ">= 0", SET, value=-1.0),
    _refused("set-inf", "finite", SET, value=float("inf")),
    _refused("bad-group", "group 2 does not exist", SCALE, value=0.5, param_group=2),
    _refused("negative-group", "param group", SCALE, value=0.5, param_group=-1),
    _refused("bad-spec", "unknown scheduler", REPLACE, schedule="NoSuchLR()"),
    _refused("unsafe-expression", "double underscores", REPLACE, schedule=UNSAFE_LAMBDA),
    _refused("empty-spec", "expected a schedule", REPLACE, schedule=""),
    _refused("missing-argument", "ExponentialLR", REPLACE, schedule="ExponentialLR()"),
    _refused("op-unspecified", "OVERRIDE_OP_UNSPECIFIED", pb.OVERRIDE_OP_UNSPECIFIED),
    # The wire op converts; the service refuses it (only the controller decides reductions).
    _refused("op-plateau-from-client", "got 'plateau_reduce'", pb.OVERRIDE_OP_PLATEAU_REDUCE),
    _refused("op-unknown", "got 42", 42),
]


@pytest.mark.parametrize(("fields", "message"), REFUSED_OVERRIDES)
async def test_refused_override_is_invalid_argument_and_changes_nothing(
    stub: Stub, fields: dict[str, Any], message: str
) -> None:
    await create(stub)
    await scale(stub, 0.5)
    before = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    err = await expect_status(
        stub.Override(pb.OverrideRequest(job_id="run-1", **fields)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert message in (err.details() or "")
    after = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    assert after.version == before.version == 2
    assert list(after.events) == list(before.events)


@pytest.mark.parametrize(
    ("schedule", "base_lrs", "message"),
    [
        pytest.param(UNSAFE_LAMBDA, (0.1,), "double underscores", id="unsafe-expression"),
        pytest.param("LambdaLR(lr_lambda='10 ** 10 ** 10')", (0.1,), "overflow", id="huge-power"),
        pytest.param("StepLR(step_size=0)", (0.1,), "step_size", id="bad-argument"),
        pytest.param("StepLR(step_size=2", (0.1,), "syntax", id="syntax"),
        pytest.param("", (0.1,), "empty", id="empty-spec"),
        pytest.param(SPEC, (), "at least one base LR", id="no-base-lr"),
        pytest.param(SPEC, (-0.1,), "base_lrs[0]", id="negative-base-lr"),
    ],
)
async def test_create_refuses_bad_specs(
    stub: Stub, schedule: str, base_lrs: tuple[float, ...], message: str
) -> None:
    err = await expect_status(
        create(stub, schedule=schedule, base_lrs=base_lrs), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert message in (err.details() or "")
    await expect_status(stub.GetJob(pb.GetJobRequest(job_id="run-1")), grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize(
    "job_id",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 129, id="too-long"),
        pytest.param("run 42", id="space"),
        pytest.param("run*42", id="glob"),  # token scopes match ids with fnmatch patterns
        pytest.param("-run", id="leading-dash"),
    ],
)
async def test_bad_job_ids_are_invalid_argument(stub: Stub, job_id: str) -> None:
    err = await expect_status(create(stub, job_id=job_id), grpc.StatusCode.INVALID_ARGUMENT)
    assert (err.details() or "").startswith("expected a job id of 1-128 characters")
    await expect_status(
        stub.GetJob(pb.GetJobRequest(job_id=job_id)), grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_job_ids_follow_the_design_charset(stub: Stub) -> None:
    # The one rule (lrctl.model.JOB_ID_PATTERN) the worker checks its default ids with too.
    for job_id in ("alice@host/run+1:2", "r" * 128):
        assert (await create(stub, job_id=job_id)).created
    err = await expect_status(create(stub, job_id="x" * 100_000), grpc.StatusCode.INVALID_ARGUMENT)
    assert len(err.details() or "") < 300  # the message does not echo unbounded input


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.GetJob(pb.GetJobRequest(job_id="nope")), id="GetJob"),
        pytest.param(lambda s: s.FinishJob(pb.FinishJobRequest(job_id="nope")), id="FinishJob"),
        pytest.param(lambda s: s.History(pb.HistoryRequest(job_id="nope")), id="History"),
        pytest.param(
            lambda s: s.Override(pb.OverrideRequest(job_id="nope", op=pb.OVERRIDE_OP_CLEAR)),
            id="Override",
        ),
        pytest.param(lambda s: s.Report(pb.ReportRequest(job_id="nope", step=1)), id="Report"),
    ],
)
async def test_unknown_job_is_not_found(
    stub: Stub, call: Callable[[Stub], Awaitable[object]]
) -> None:
    err = await expect_status(call(stub), grpc.StatusCode.NOT_FOUND)
    assert "no job 'nope'" in (err.details() or "")


async def test_preview_matches_the_program(stub: Stub) -> None:
    spec = "OneCycleLR(max_lr=0.1, total_steps=20)"
    got = await stub.Preview(pb.PreviewRequest(schedule=spec, base_lrs=[0.01, 0.02], steps=21))
    assert got.schedule == spec
    assert [list(r.lr) for r in got.rows] == preview(spec, [0.01, 0.02], 21)
    for bad in (
        pb.PreviewRequest(schedule=spec, base_lrs=[0.01], steps=22),
        pb.PreviewRequest(schedule=spec, base_lrs=[0.01], steps=0),
        pb.PreviewRequest(schedule="Nope()", base_lrs=[0.01], steps=3),
        pb.PreviewRequest(schedule=spec, base_lrs=[0.01, 0.1], steps=600_000),
    ):
        await expect_status(stub.Preview(bad), grpc.StatusCode.INVALID_ARGUMENT)


async def test_unexpected_failure_is_internal_not_unknown(
    controller: Controller,
    stub: Stub,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await create(stub)

    async def broken(change: object) -> None:  # a bug, not a fault of the database
        raise RuntimeError("unexpected")

    monkeypatch.setattr(controller.service._store, "commit", broken)
    err = await expect_status(scale(stub, 0.5), grpc.StatusCode.INTERNAL)
    assert "RuntimeError" in (err.details() or "") and "controller log" in (err.details() or "")
    assert any(r.exc_info for r in caplog.records if r.name == "lrctl.controller.rpc")
    job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))  # nothing half-applied
    assert job.version == 1 and not job.events
    monkeypatch.undo()
    await controller.service._store.close()  # the database goes away under the service
    err = await expect_status(scale(stub, 0.5), grpc.StatusCode.UNAVAILABLE)
    assert "closed" in (err.details() or "") and "nothing was written" in (err.details() or "")
    assert (await stub.GetJob(pb.GetJobRequest(job_id="run-1"))).version == 1


# -- reports ---------------------------------------------------------------------------------


async def test_only_rank_0_sets_effective_steps_once(controller: Controller, stub: Stub) -> None:
    await create(stub)
    v = (await scale(stub, 0.5)).event.version
    await stub.Report(applied_report("run-1", 5, v, rank=1))
    assert (
        not (await stub.History(pb.HistoryRequest(job_id="run-1")))
        .events[0]
        .HasField("effective_step")
    )
    await stub.Report(applied_report("run-1", 6, v, lrs=[0.025, 0.0025]))
    await stub.Report(applied_report("run-1", 9, v))
    event = (await stub.History(pb.HistoryRequest(job_id="run-1"))).events[0]
    assert event.effective_step == 6 and event.applied_at.seconds > 0
    job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    assert job.step == 9
    program = LRProgram(SPEC, [0.1, 0.01], events_from_proto(job.events))
    assert list(job.lrs) == program.lrs(9)
    assert controller.registry.get_sample_value("lrctl_override_apply_seconds_count") == 1


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        pytest.param(
            pb.ReportRequest(job_id="run-1", rank=0, step=1, lrs=[0.1]),
            "expected 2 lrs",
            id="lrs-per-group",
        ),
        pytest.param(applied_report("run-1", 1, 9), "applied versions <= 1", id="future-version"),
        pytest.param(
            pb.ReportRequest(job_id="run-1", rank=-1, step=1), "rank >= 0", id="negative-rank"
        ),
    ],
)
async def test_bad_reports_are_invalid_argument(
    stub: Stub, request_: pb.ReportRequest, message: str
) -> None:
    await create(stub)
    err = await expect_status(stub.Report(request_), grpc.StatusCode.INVALID_ARGUMENT)
    assert message in (err.details() or "")


async def test_state_changes_and_verbose_lr_changes_are_logged(
    stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lrctl")
    await create(stub, verbose=True)
    await scale(stub, 0.5, reason="loss spike")
    await stub.Report(pb.ReportRequest(job_id="run-1", rank=0, step=1, lrs=[0.1, 0.01]))
    await stub.Report(pb.ReportRequest(job_id="run-1", rank=0, step=2, lrs=[0.05, 0.01]))
    lines = [r.getMessage() for r in caplog.records]
    assert 'job=run-1 version=2 op=scale actor=alice reason="loss spike" value=0.5' in lines
    assert "job=run-1 step=2: adjusting learning rate of group 0 to 5.0000e-02." in lines
    assert not any("group 1 to" in line and "step=2" in line for line in lines)


# -- auth ------------------------------------------------------------------------------------

TOKENS = {"admin-token": "admin", "reader-token": "reader"}


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_tokens_authenticate_and_roles_authorize(
    start_controller: Callable[..., Awaitable[Controller]],
) -> None:
    ctl = await start_controller(tokens=TOKENS)
    async with grpc.aio.insecure_channel(ctl.address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)
        req = pb.CreateJobRequest(job_id="run-1", schedule=SPEC, base_lrs=[0.1])
        await expect_status(stub.CreateJob(req), grpc.StatusCode.UNAUTHENTICATED)
        await expect_status(
            stub.CreateJob(req, metadata=_bearer("guess")), grpc.StatusCode.UNAUTHENTICATED
        )
        await expect_status(
            stub.CreateJob(req, metadata=(("authorization", "Basic x"),)),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        err = await expect_status(
            stub.CreateJob(req, metadata=_bearer("reader-token")), grpc.StatusCode.PERMISSION_DENIED
        )
        assert "CreateJob needs role 'admin'" in (err.details() or "")
        assert (await stub.CreateJob(req, metadata=_bearer("admin-token"))).created
        reader = _bearer("reader-token")
        assert (await stub.GetJob(pb.GetJobRequest(job_id="run-1"), metadata=reader)).version
        await stub.ListJobs(pb.ListJobsRequest(), metadata=reader)
        await stub.History(pb.HistoryRequest(job_id="run-1"), metadata=reader)
        await stub.Preview(
            pb.PreviewRequest(schedule=SPEC, base_lrs=[0.1], steps=2), metadata=reader
        )
        watch = stub.Watch(pb.WatchRequest(job_id="run-1"), metadata=reader)
        assert (await watch.read()).kind == pb.WatchResponse.KIND_SNAPSHOT
        watch.cancel()
        for call in (
            stub.Override(
                pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_CLEAR), metadata=reader
            ),
            stub.FinishJob(pb.FinishJobRequest(job_id="run-1"), metadata=reader),
            stub.Report(pb.ReportRequest(job_id="run-1", step=1), metadata=reader),
        ):
            await expect_status(call, grpc.StatusCode.PERMISSION_DENIED)
        await expect_status(
            stub.Watch(pb.WatchRequest(job_id="run-1")).read(), grpc.StatusCode.UNAUTHENTICATED
        )
        health = health_pb2_grpc.HealthStub(chan)  # health checks never need a token
        status = await health.Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING


# -- health and reflection -------------------------------------------------------------------


async def test_health_serving_then_not_serving_during_shutdown(
    controller: Controller, channel: grpc.aio.Channel
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "lrctl.v1.LRController"):
        got = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert got.status == health_pb2.HealthCheckResponse.SERVING
    updates = health.Watch(health_pb2.HealthCheckRequest(service="lrctl.v1.LRController"))
    assert (await updates.read()).status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(controller.stop(grace=0.5))
    assert (await updates.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    await stopping


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflect.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {s.name for s in response.list_services_response.service}
    assert {"lrctl.v1.LRController", "grpc.health.v1.Health"} <= names


# -- ReduceLROnPlateau -----------------------------------------------------------------------

PLATEAU_SPEC = "ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1, min_lr=[0.0, 0.004])"
# Loss per step(metric) call: improves, stalls (reduction), improves, stalls again (two
# reductions, the cooldown delaying the second), NaN (never "better"), and so on.
PLATEAU_METRICS = [
    1.0,
    0.9,
    0.95,
    0.95,
    0.95,
    0.95,
    0.8,
    0.85,
    0.85,
    0.85,
    0.85,
    0.85,
    float("nan"),
    0.85,
    0.7,
    0.7,
    0.7,
    0.7,
    0.7,
    0.7,
    0.69999,
    0.7,
]


def torch_plateau_lrs(metrics: list[float]) -> list[list[float]]:
    """Row t: each group's LR after t calls of torch's ``ReduceLROnPlateau.step(metric)``."""
    import torch

    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": 0.01}])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=2, cooldown=1, min_lr=[0.0, 0.004]
    )
    rows = [[g["lr"] for g in opt.param_groups]]
    for metric in metrics:
        sched.step(metric)
        rows.append([g["lr"] for g in opt.param_groups])
    return rows


async def test_plateau_reductions_match_torch(stub: Stub) -> None:
    await create(stub, schedule=PLATEAU_SPEC)
    metrics = [pb.PlateauMetric(step=i + 1, value=m) for i, m in enumerate(PLATEAU_METRICS)]
    # Batches as rank 0 would send them, one retried (overlapping steps are consumed once)
    # and one out of order; rank 1's metrics are ignored.
    await stub.Report(
        pb.ReportRequest(
            job_id="run-1", rank=1, step=22, plateau_metrics=[pb.PlateauMetric(step=1, value=100.0)]
        )
    )
    for batch in (metrics[:7][::-1], metrics[4:14], metrics[14:]):
        reply = await stub.Report(
            pb.ReportRequest(job_id="run-1", rank=0, step=batch[-1].step, plateau_metrics=batch)
        )
    job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    assert reply.version == job.version
    events = events_from_proto(job.events)
    assert {(e.op.value, e.actor) for e in events} == {("plateau_reduce", "plateau")}
    assert all(e.pending for e in events)  # until rank 0 reports the step it applied them

    # Rank 0 applies each reduction right at the step whose metric triggered it, as torch
    # does inside step(metric); the reason names the metric.
    expected = torch_plateau_lrs(PLATEAU_METRICS)
    changed = [t for t in range(1, len(expected)) if expected[t] != expected[t - 1]]
    await stub.Report(
        pb.ReportRequest(
            job_id="run-1",
            rank=0,
            step=len(PLATEAU_METRICS),
            applied=[
                pb.AppliedVersion(version=e.version, effective_step=s)
                for e, s in zip(events, changed)
            ],
        )
    )
    job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    events = events_from_proto(job.events)
    program = LRProgram(PLATEAU_SPEC, [0.1, 0.01], events)
    assert [program.lrs(t) for t in range(len(expected))] == expected  # same float ops
    changed = [t for t in range(1, len(expected)) if expected[t] != expected[t - 1]]
    assert [e.effective_step for e in events] == changed
    assert list(job.lrs) == expected[-1]


async def test_pending_override_shows_before_any_report(stub: Stub) -> None:
    await create(stub)
    halved = await scale(stub, 0.5)  # step is -1: shown as if taking effect at step 0
    assert list(halved.job.lrs) == pytest.approx([0.05, 0.005])


# -- the thread-hosted fixture other test modules use ----------------------------------------


@pytest.mark.parametrize("running_server", [{"tokens": {"secret": "admin"}}], indirect=True)
def test_running_server_serves_blocking_clients(running_server: RunningServer) -> None:
    with grpc.insecure_channel(running_server.address) as chan:
        sync_stub = lrctl_pb2_grpc.LRControllerStub(chan)
        with pytest.raises(grpc.RpcError) as info:
            sync_stub.GetJob(pb.GetJobRequest(job_id="run-1"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        sync_stub.CreateJob(
            pb.CreateJobRequest(job_id="run-1", schedule=SPEC, base_lrs=[0.1]),
            metadata=_bearer("secret"),
        )
    job = running_server.call(running_server.controller.service.finish_job("run-1"))
    assert job.finished and job.version == 2


# -- configuration ---------------------------------------------------------------------------


def test_config_from_flags_env_and_token_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"s3cret": "admin", "peek": "reader"}))
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    args = parser.parse_args(["--port", "0", "--metrics-port", "-1", "--token-file", str(tokens)])
    env = {"LRCTL_PORT": "7000", "LRCTL_DB": "/data/lrctl.db", "LRCTL_HEARTBEAT_SECONDS": "2"}
    config = ServerConfig.from_args(args, environ=env)
    assert (config.port, config.metrics_port, config.db) == (0, None, "/data/lrctl.db")
    assert config.heartbeat_seconds == 2.0
    # The older {"TOKEN": "ROLE"} form: kept as hashes, named by the hash's first 12 digits.
    assert [(e.sha256, e.role) for e in config.token_entries] == [
        (hash_token("s3cret"), "admin"),
        (hash_token("peek"), "reader"),
    ]
    assert config.token_entries[0].name == "sha256:" + hash_token("s3cret")[:12]
    assert ServerConfig.from_env({}) == ServerConfig()


async def test_reprs_show_no_password_and_no_token_hash(start_controller: Any) -> None:
    config = ServerConfig(db="postgresql://lrctl:s3cret-pw@db:5432/lrctl", tokens={"tok": "admin"})
    shown = repr(config)
    assert "s3cret-pw" not in shown and hash_token("tok") not in shown, shown
    assert "postgresql://lrctl@db:5432/lrctl" in shown and "port=50051" in shown, shown
    ctl = await start_controller(tokens={"tok": "admin"}, metrics_port=None)
    assert hash_token("tok") not in repr(ctl) and f"port={ctl.port}" in repr(ctl), repr(ctl)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param('["admin"]', "JSON object", id="not-an-object"),
        pytest.param('{"t": "root"}', "expected a role", id="bad-role"),
        pytest.param('{"": "admin"}', "non-empty string", id="empty-token"),
        pytest.param("{", "not JSON", id="not-json"),
    ],
)
def test_bad_token_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_tokens(path)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"port": 70000}, id="port"),
        pytest.param({"metrics_port": -1}, id="metrics-port"),
        pytest.param({"heartbeat_seconds": 0}, id="heartbeat"),
        pytest.param({"grace_seconds": float("inf")}, id="grace"),
        pytest.param({"host": ""}, id="host"),
    ],
)
def test_invalid_config_values_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="expected"):
        ServerConfig(**fields)


async def test_set_without_a_value_is_refused(stub: Stub) -> None:
    await create(stub)
    before = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    err = await expect_status(
        stub.Override(pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_SET)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "got None" in (err.details() or "")
    after = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
    assert after.version == before.version and len(after.events) == 0
