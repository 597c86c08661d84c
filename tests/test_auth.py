"""Roles: one method -> roles table, applied by a server interceptor (real server, real tokens)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from controller.auth import METHOD_ROLES, Authenticator
from controller.errors import PermissionDenied, Unauthenticated
from controller.server import SERVICE_NAME, Controller
from controller.tokens import ROLES
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests.conftest import expect_status

pb = lrctl_pb2
SPEC = "StepLR(step_size=2, gamma=0.5)"
TOKENS = {f"{role}-token": role for role in ROLES}
OK, DENIED = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED


def test_the_table_covers_every_method_and_names_only_known_roles() -> None:
    service = pb.DESCRIPTOR.services_by_name["LRController"]
    assert service.full_name == SERVICE_NAME
    assert set(METHOD_ROLES) == {m.name for m in service.methods}
    assert all(roles and roles <= set(ROLES) for roles in METHOD_ROLES.values())
    assert all("admin" in roles for roles in METHOD_ROLES.values())


def test_unknown_methods_fail_closed() -> None:
    auth = Authenticator({"t": "admin"})
    with pytest.raises(PermissionDenied, match="no role"):
        auth.check((("authorization", "Bearer t"),), "DropAllJobs")
    with pytest.raises(Unauthenticated):
        auth.check((("authorization", "bearer  "),), "GetJob")


@pytest.fixture
async def stubs(
    start_controller: Callable[..., Awaitable[Controller]],
) -> AsyncIterator[tuple[Controller, Any]]:
    ctl = await start_controller(tokens=TOKENS)
    async with grpc.aio.insecure_channel(ctl.address) as chan:
        yield ctl, lrctl_pb2_grpc.LRControllerStub(chan)  # type: ignore[no-untyped-call]


def _as(role: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {role}-token"),)


async def _code(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return OK


async def _watch_code(stub: Any, role: str) -> grpc.StatusCode:
    call = stub.Watch(pb.WatchRequest(job_id="run-1"), metadata=_as(role))
    try:
        await call.read()
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    call.cancel()
    return OK


# role -> what it may do. Calls run in this order, each on the job the previous ones left.
EXPECTED = {
    #         create  attach  replace report  get     list    history preview override finish
    "admin": (OK, OK, OK, OK, OK, OK, OK, OK, OK, OK),
    "operator": (OK, OK, OK, DENIED, OK, OK, OK, OK, OK, OK),
    "worker": (OK, OK, DENIED, OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED),
    "reader": (DENIED, DENIED, DENIED, DENIED, OK, OK, OK, OK, DENIED, DENIED),
}


@pytest.mark.parametrize("role", list(EXPECTED))
async def test_each_role_may_call_exactly_its_methods(
    stubs: tuple[Controller, Any], role: str
) -> None:
    ctl, stub = stubs
    md = _as(role)
    create = pb.CreateJobRequest(job_id=f"new-{role}", schedule=SPEC, base_lrs=[0.1])
    # run-1 exists (made by an admin) for the calls that need a job.
    await stub.CreateJob(
        pb.CreateJobRequest(job_id="run-1", schedule=SPEC, base_lrs=[0.1]), metadata=_as("admin")
    )
    attach = pb.CreateJobRequest(
        job_id="run-1", schedule=SPEC, base_lrs=[0.1], attach=True, world_size=2
    )
    recreate = pb.CreateJobRequest(
        job_id="run-1", schedule="ConstantLR()", base_lrs=[0.1], replace=True
    )
    created = await _code(stub.CreateJob(create, metadata=md))
    try:  # a report carries the epoch of the attach before it (run-1's first: epoch 1)
        attached, epoch = OK, (await stub.CreateJob(attach, metadata=md)).epoch
    except grpc.aio.AioRpcError as exc:
        attached, epoch = exc.code(), 0
    got = (
        created,
        attached,
        await _code(stub.CreateJob(recreate, metadata=md)),
        await _code(
            stub.Report(pb.ReportRequest(job_id="run-1", step=1, epoch=epoch), metadata=md)
        ),
        await _code(stub.GetJob(pb.GetJobRequest(job_id="run-1"), metadata=md)),
        await _code(stub.ListJobs(pb.ListJobsRequest(), metadata=md)),
        await _code(stub.History(pb.HistoryRequest(job_id="run-1"), metadata=md)),
        await _code(
            stub.Preview(pb.PreviewRequest(schedule=SPEC, base_lrs=[0.1], steps=2), metadata=md)
        ),
        await _code(
            stub.Override(pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_CLEAR), metadata=md)
        ),
        await _code(stub.FinishJob(pb.FinishJobRequest(job_id="run-1"), metadata=md)),
    )
    assert got == EXPECTED[role]
    assert await _watch_code(stub, role) == OK  # every role may follow a job
    # Refusals are counted with their code by the metrics interceptor (outermost).
    denied = ctl.registry.get_sample_value(
        "lrctl_grpc_server_handled_total",
        {"grpc_service": SERVICE_NAME, "grpc_method": "Override", "grpc_code": "PERMISSION_DENIED"},
    )
    assert denied == (1 if EXPECTED[role][8] == DENIED else None)


async def test_a_worker_cannot_recreate_and_the_message_says_who_can(
    stubs: tuple[Controller, Any],
) -> None:
    _, stub = stubs
    await stub.CreateJob(
        pb.CreateJobRequest(job_id="run-1", schedule=SPEC, base_lrs=[0.1]), metadata=_as("worker")
    )
    err = await expect_status(
        stub.CreateJob(
            pb.CreateJobRequest(
                job_id="run-1", schedule="ConstantLR()", base_lrs=[0.1], replace=True
            ),
            metadata=_as("worker"),
        ),
        DENIED,
    )
    assert err.details() == (
        "CreateJob with replace needs role 'admin' or 'operator'; the token has role 'worker'"
    )
    job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"), metadata=_as("reader"))
    assert job.schedule == SPEC and job.version == 1  # nothing changed


async def test_without_a_token_every_call_is_unauthenticated(stubs: tuple[Controller, Any]) -> None:
    ctl, stub = stubs
    for call in (
        stub.GetJob(pb.GetJobRequest(job_id="run-1")),
        stub.Report(pb.ReportRequest(job_id="run-1", step=1)),
        stub.Watch(pb.WatchRequest(job_id="run-1")).read(),
    ):
        await expect_status(call, grpc.StatusCode.UNAUTHENTICATED)
    assert (
        ctl.registry.get_sample_value(
            "lrctl_grpc_server_handled_total",
            {"grpc_service": SERVICE_NAME, "grpc_method": "GetJob", "grpc_code": "UNAUTHENTICATED"},
        )
        == 1
    )
