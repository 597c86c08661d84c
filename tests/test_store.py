"""The SQLite store: durability settings, round trips, migrations, restarts."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from controller.rows import Change, ConsumedMetric, StoreError
from controller.service import ControllerService
from controller.store import SCHEMA_VERSION, Store
from lrctl.model import JobState
from lrctl.overrides import Op
from tests.test_store_contract import (
    RECORD,
    V1_EVENT,
    check_round_trip,
    write_v1_sqlite,
)


async def test_durability_pragmas(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "a.db")
    try:
        conn = store._conn
        pragmas = await store._run(
            lambda: (
                conn.execute("PRAGMA journal_mode").fetchone()[0],
                conn.execute("PRAGMA synchronous").fetchone()[0],
                conn.execute("PRAGMA user_version").fetchone()[0],
            )
        )
        assert pragmas == ("wal", 2, SCHEMA_VERSION)  # synchronous 2 = FULL
    finally:
        await store.close()
        await store.close()  # idempotent


async def test_round_trip(tmp_path: Path) -> None:
    final = replace(
        RECORD,
        version=3,
        step=9,
        lr=(0.05, 0.01),
        applied_version=3,
        world_size=4,
        state=JobState.FINISHED,
    )
    await check_round_trip(lambda: Store.open(tmp_path / "a.db"), final)


async def test_upgrade_from_schema_v1(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    write_v1_sqlite(path)
    store = await Store.open(path)
    [job] = await store.load()
    assert job.record.version == 2 and job.record.step == 4 and job.record.lr == (0.1,)
    # v3 and v4 columns of an old row: nothing reported yet, never attached.
    assert (job.record.applied_version, job.record.world_size, job.record.epoch) == (0, 0, 0)
    assert job.events == [V1_EVENT]
    await store.commit(
        Change(
            replace(job.record, applied_version=2, world_size=8, epoch=3),
            plateau_metrics=[ConsumedMetric(5, 1.0, 1)],
        )
    )
    version = await store._run(lambda: store._conn.execute("PRAGMA user_version").fetchone()[0])
    assert version == SCHEMA_VERSION == 4
    await store.close()
    store = await Store.open(path)
    [job] = await store.load()
    await store.close()
    assert (job.record.applied_version, job.record.world_size, job.record.epoch) == (2, 8, 3)


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this controller"):
        await Store.open(path)


async def test_one_controller_per_file(tmp_path: Path) -> None:
    first = await Store.open(tmp_path / "a.db")
    with pytest.raises(StoreError, match="another controller"):
        await Store.open(tmp_path / "a.db")
    await first.close()
    second = await Store.open(tmp_path / "a.db")  # released on close
    await second.close()


async def test_versions_never_go_back_across_restarts(tmp_path: Path) -> None:
    service = await ControllerService.open(await Store.open(tmp_path / "a.db"))
    await service.create_job("run-1", "StepLR(step_size=2)", [0.1])
    for _ in range(3):
        await service.override("run-1", Op.SCALE, value=0.5)
    await service.create_job("run-1", "ConstantLR()", [0.1, 0.2], replace_existing=True)
    await service.override("run-1", Op.SET, value=0.01, group=1)
    await service._store.close()

    service = await ControllerService.open(await Store.open(tmp_path / "a.db"))
    job = service.get_job("run-1")
    assert (job.version, job.schedule, job.base_lrs) == (6, "ConstantLR()", (0.1, 0.2))
    assert [e.version for e in job.events] == [6]  # the old incarnation's log is not loaded
    event, _ = await service.override("run-1", Op.CLEAR)
    assert event.version == 7
    await service._store.close()
