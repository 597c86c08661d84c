"""The domain service under cancellation and at large steps (real store, real SQLite)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller.errors import FailedPrecondition, ResourceExhausted
from controller.limits import ServerLimits
from controller.server import Controller
from lrctl.model import Report
from lrctl.overrides import Op


async def test_a_cancelled_override_is_either_fully_written_or_not_at_all(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = controller.service
    await service.create_job("run-1", "StepLR(step_size=10)", [0.1])
    store = service._store
    real_commit = store.commit
    entered = asyncio.Event()

    async def slow_commit(change: object) -> None:
        entered.set()
        await asyncio.sleep(0.2)  # the RPC is cancelled while SQLite is writing
        await real_commit(change)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "commit", slow_commit)
    task = asyncio.ensure_future(service.override("run-1", Op.SCALE, value=0.5))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.setattr(store, "commit", real_commit)
    # What reached the disk is also in memory: the next override gets the next version.
    event, job = await service.override("run-1", Op.SCALE, value=0.5)
    assert event.version == 3 and job.version == 3
    assert [e.version for e in service.history("run-1")] == [2, 3]


async def test_display_reuses_one_program_while_the_log_is_unchanged(
    controller: Controller,
) -> None:
    # A recurrence schedule (MultiplicativeLR) must advance incrementally between reports,
    # not replay from step 0 on every report and GetJob.
    service = controller.service
    await service.create_job("run-1", "MultiplicativeLR(lr_lambda='0.99999')", [0.1])
    await service.report(Report("run-1", step=20_000))
    display = service._projection._display["run-1"]
    program = display.program(20_000)
    for step in range(20_001, 20_101):
        await service.report(Report("run-1", step=step))
        service.get_job("run-1")
    assert service._projection._display["run-1"] is display
    assert display.program(20_100) is program
    assert service.get_job("run-1").lr == pytest.approx((0.1 * 0.99999**20_100,), rel=1e-9)
    await service.override("run-1", Op.SCALE, value=0.5)  # a new log: a new program
    assert display.program(20_100) is not program


async def test_refused_creates_leave_no_per_job_state(start_controller: Any) -> None:
    """Past --max-jobs (or with another spec), a CreateJob is refused and keeps nothing: a
    client sending fresh ids cannot grow the controller's memory."""
    ctl = await start_controller(limits=ServerLimits(max_jobs=1), metrics_port=None)
    service = ctl.service
    await service.create_job("kept", "StepLR(step_size=10)", [0.1])
    for i in range(200):
        with pytest.raises(ResourceExhausted):
            await service.create_job(f"refused-{i}", "StepLR(step_size=10)", [0.1])
        with pytest.raises(FailedPrecondition):
            await service.create_job("kept", "StepLR(step_size=3)", [0.1])
    table = service._table
    assert set(table.jobs) == {"kept"}
    assert set(table._locks) <= {"kept"} and not table._lock_users
