"""One contract for every store: SQLite (a file) and PostgreSQL (a real server, tests/pg.py).

Tests taking ``store_url`` run against both; the ``shared`` ones need several processes on
one database, which only PostgreSQL allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from controller import store as sqlite_store
from controller import store_pg
from controller.rows import Change, ConsumedMetric, StoreError
from controller.store_api import JobStore, open_store, redact_url
from lrctl.model import Job
from lrctl.overrides import Event, Op
from tests import pg
from tests.pg import PASSWORD, USER, PostgresServer

RECORD = Job(
    job_id="run-1",
    schedule="StepLR(step_size=2)",
    base_lrs=(0.1, 0.01),
    version=1,
    created_version=1,
    created_at=10.0,
    updated_at=10.0,
)
SCALE = Event(
    version=2, op=Op.SCALE, value=0.5, group=1, actor="alice", reason="spike", created_at=11.0
)
REPLACE = Event(
    version=3, op=Op.REPLACE_SCHEDULE, schedule="ConstantLR(factor=0.5)", created_at=12.0
)
# A job and its event as schema version 1 stored them (both stores had the same columns then).
V1_JOB_ROW = ("old-job", "StepLR(step_size=2)", "[0.1]", 2, 1, 4, "running", 0, 1.0, 2.0, "[0.1]")
V1_EVENT_ROW = ("old-job", 2, "scale", 0.5, None, None, 3, "alice", "why", 1.5, 2.0)
V1_EVENT = Event(
    version=2,
    op=Op.SCALE,
    value=0.5,
    effective_step=3,
    actor="alice",
    reason="why",
    created_at=1.5,
    applied_at=2.0,
)

postgres = pg.postgres  # fixtures: one PostgreSQL server per session
pg_url = pg.pg_url


@pytest.fixture(
    params=[pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "lrctl.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def open_stores(store_url: str) -> AsyncIterator[Callable[[], Awaitable[JobStore]]]:
    """``await open_stores()`` opens the contract's database; all are closed at teardown."""
    opened: list[JobStore] = []

    async def factory() -> JobStore:
        store = await open_store(store_url)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


async def test_is_a_job_store(
    open_stores: Callable[[], Awaitable[JobStore]], store_url: str
) -> None:
    store = await open_stores()
    assert isinstance(store, JobStore)
    assert store.shared is store_url.startswith("postgresql://")
    assert PASSWORD not in store.description
    assert store.description == redact_url(store_url)


async def check_round_trip(open_: Callable[[], Awaitable[JobStore]], final: Job) -> None:
    """Commit RECORD, then SCALE and REPLACE with two consumed metrics (one NaN), then ``final``
    with SCALE applied; a store opened afresh must load exactly that."""
    store = await open_()
    try:
        await store.commit(Change(RECORD))
        await store.commit(
            Change(
                replace(RECORD, version=3),
                new_events=[SCALE, REPLACE],
                plateau_metrics=[ConsumedMetric(4, math.nan, 1), ConsumedMetric(5, 0.25, 1)],
            )
        )
        applied = replace(SCALE, effective_step=7, applied_at=13.0)
        await store.commit(Change(final, applied=[applied]))
    finally:
        await store.close()
    reopened = await open_()
    try:
        [job] = await reopened.load()
    finally:
        await reopened.close()
    assert job.record == final
    assert job.events == [applied, REPLACE]
    assert [m.step for m in job.plateau_metrics] == [4, 5]
    assert math.isnan(job.plateau_metrics[0].value)  # SQLite keeps NaN as NULL
    assert job.plateau_metrics[1] == ConsumedMetric(5, 0.25, 1)


async def _execute(store_url: str, sql: str) -> None:
    """Run ``sql`` on the contract's database from outside the store (tables without the
    ``lrctl_`` prefix; PostgreSQL's have it)."""
    if store_url.startswith("postgresql://"):
        sql = sql.replace("UPDATE ", "UPDATE lrctl_")
        conn = await asyncpg.connect(store_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    else:
        with contextlib.closing(sqlite3.connect(store_url)) as conn, conn:
            conn.execute(sql)


@pytest.mark.parametrize(
    ("poison", "what"),
    [
        pytest.param(
            "UPDATE jobs SET base_lrs = 'not json' WHERE job_id = 'run-1'",
            "its row does not read",
            id="job-row",
        ),
        pytest.param(
            "UPDATE events SET op = 'explode' WHERE job_id = 'run-1'",
            "event row 2 does not read",
            id="event-row",
        ),
    ],
)
async def test_rows_that_do_not_read_load_their_job_marked(
    open_stores: Callable[[], Awaitable[JobStore]], store_url: str, poison: str, what: str
) -> None:
    good = replace(RECORD, job_id="good")
    store = await open_stores()
    await store.commit(Change(replace(RECORD, version=2), new_events=[SCALE]))
    await store.commit(Change(good))
    await store.close()
    await _execute(store_url, poison)
    jobs = {job.record.job_id: job for job in await (await open_stores()).load()}
    assert sorted(jobs) == ["good", "run-1"]  # one job's rows never stop the load
    assert jobs["good"].problem == "" and jobs["good"].record == good
    bad = jobs["run-1"]
    assert what in bad.problem, bad.problem
    assert bad.record.version == 2  # versions never go back, whatever did not read


async def test_round_trip(store_url: str) -> None:
    final = replace(RECORD, version=3, step=9, lr=(0.05, 0.01), applied_version=2, world_size=8)
    await check_round_trip(lambda: open_store(store_url), final)


async def test_non_finite_values_round_trip(open_stores: Callable[[], Awaitable[JobStore]]) -> None:
    store = await open_stores()
    record = replace(RECORD, base_lrs=(0.1, 1e-300), lr=(math.inf, 0.0), version=2)
    event = Event(
        version=2, op=Op.SET, value=1e308, actor="a" * 256, reason="r\n" * 512, created_at=1.5
    )
    await store.commit(Change(record, new_events=[event]))
    [job] = await store.load()
    assert job.record == record and job.events == [event]


async def test_recreated_job_loads_its_new_incarnation_only(
    open_stores: Callable[[], Awaitable[JobStore]],
) -> None:
    store = await open_stores()
    await store.commit(Change(RECORD))
    await store.commit(
        Change(
            replace(RECORD, version=2),
            new_events=[SCALE],
            plateau_metrics=[ConsumedMetric(1, 0.5, 1)],
        )
    )
    again = replace(RECORD, schedule="ConstantLR()", base_lrs=(0.2,), version=3, created_version=3)
    await store.commit(Change(again, reset=True))
    clear = Event(version=4, op=Op.CLEAR, created_at=14.0)
    await store.commit(Change(replace(again, version=4), new_events=[clear]))
    [job] = await store.load()
    assert job.record == replace(again, version=4)
    assert job.events == [clear]  # the old incarnation's log stays in the database, unloaded
    assert job.plateau_metrics == []  # reset forgets the consumed metrics


async def test_plateau_metric_of_a_step_is_kept_once(
    open_stores: Callable[[], Awaitable[JobStore]],
) -> None:
    store = await open_stores()
    await store.commit(Change(RECORD, plateau_metrics=[ConsumedMetric(1, 0.5, 1)]))
    await store.commit(
        Change(RECORD, plateau_metrics=[ConsumedMetric(1, 9.0, 1), ConsumedMetric(2, 0.4, 1)])
    )
    [job] = await store.load()
    assert job.plateau_metrics == [ConsumedMetric(1, 0.5, 1), ConsumedMetric(2, 0.4, 1)]


async def test_lock_commits_or_rolls_back(open_stores: Callable[[], Awaitable[JobStore]]) -> None:
    store = await open_stores()
    async with store.lock("run-1", 0) as lk:
        assert lk.delta is None and lk.rev == 0  # no such job yet
        first = await lk.commit(Change(RECORD))
    async with store.lock("run-1", first) as lk:
        assert lk.delta is None  # we hold the latest revision
        second = await lk.commit(Change(replace(RECORD, version=2), new_events=[SCALE]))
    assert second > first
    with pytest.raises(RuntimeError, match="boom"):
        async with store.lock("run-1", second):
            raise RuntimeError("boom")
    async with store.lock("run-1", second) as lk:
        pass  # no commit: nothing written
    [job] = await store.load()
    assert job.record.version == 2 and job.events == [SCALE]


async def test_schema_is_versioned_like_sqlite(
    open_stores: Callable[[], Awaitable[JobStore]], store_url: str
) -> None:
    assert store_pg.SCHEMA_VERSION == sqlite_store.SCHEMA_VERSION
    await (await open_stores()).close()
    assert await _schema_version(store_url) == sqlite_store.SCHEMA_VERSION
    await (await open_stores()).close()  # reopening migrates nothing
    assert await _schema_version(store_url) == sqlite_store.SCHEMA_VERSION


async def test_newer_schema_is_refused(store_url: str) -> None:
    await (await open_store(store_url)).close()
    await _set_schema_version(store_url, sqlite_store.SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="newer than this controller"):
        await open_store(store_url)


def write_v1_sqlite(path: str | Path) -> None:
    """A SQLite file at schema version 1 holding ``V1_JOB_ROW`` and ``V1_EVENT_ROW``."""
    conn = sqlite_store.connect(path)
    assert sqlite_store.migrate(conn, target=1) == 0
    conn.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?)", V1_JOB_ROW)
    conn.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)", V1_EVENT_ROW)
    conn.close()


async def test_upgrade_from_schema_v1(store_url: str) -> None:
    if store_url.startswith("postgresql://"):
        conn = await asyncpg.connect(store_url)
        try:
            assert await store_pg.migrate(conn, target=1) == 0
            await conn.execute(
                "INSERT INTO lrctl_jobs VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
                "$9, $10, $11, 1, 1)",
                *V1_JOB_ROW,
            )
            await conn.execute(
                "INSERT INTO lrctl_events VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1)",
                *V1_EVENT_ROW,
            )
        finally:
            await conn.close()
    else:
        write_v1_sqlite(store_url)
    store = await open_store(store_url)
    try:
        [job] = await store.load()
        assert job.record.version == 2 and job.record.step == 4
        assert job.events == [V1_EVENT]
        await store.commit(Change(job.record, plateau_metrics=[ConsumedMetric(5, 1.0, 1)]))
        [job] = await store.load()
        assert job.plateau_metrics == [ConsumedMetric(5, 1.0, 1)]
    finally:
        await store.close()
    assert await _schema_version(store_url) == sqlite_store.SCHEMA_VERSION


# -- shared stores (PostgreSQL): several replicas on one database ------------------------------


async def test_replicas_migrate_an_empty_database_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(open_store(pg_url) for _ in range(6)))
    try:
        conn = await asyncpg.connect(pg_url)
        rows = await conn.fetch("SELECT version FROM lrctl_schema")
        await conn.close()
        assert [r["version"] for r in rows] == [store_pg.SCHEMA_VERSION]
        await stores[0].commit(Change(RECORD))
        assert [j.record for j in await stores[5].load()] == [RECORD]
    finally:
        for store in stores:
            await store.close()


async def test_since_returns_what_other_replicas_wrote(pg_url: str) -> None:
    a, b = await open_store(pg_url), await open_store(pg_url)
    try:
        assert await b.since("run-1", 0) is None  # no such job
        async with a.lock("run-1", 0) as lk:
            r1 = await lk.commit(Change(RECORD, plateau_metrics=[ConsumedMetric(1, 0.5, 1)]))
        full = await b.since("run-1", 0)
        assert full is not None and full.full and full.rev == r1
        assert full.record == RECORD and list(full.plateau_metrics) == [ConsumedMetric(1, 0.5, 1)]
        assert await b.since("run-1", r1) is None  # nothing new

        async with a.lock("run-1", r1) as lk:
            r2 = await lk.commit(Change(replace(RECORD, version=3), new_events=[SCALE, REPLACE]))
        applied = replace(SCALE, effective_step=5, applied_at=20.0)
        async with a.lock("run-1", r2) as lk:
            r3 = await lk.commit(
                Change(
                    replace(RECORD, version=3, step=6),
                    applied=[applied],
                    plateau_metrics=[ConsumedMetric(6, 0.4, 3)],
                )
            )
        delta = await b.since("run-1", r2)
        assert delta is not None and not delta.full and delta.rev == r3
        assert list(delta.events) == [applied]  # only the updated event
        assert list(delta.plateau_metrics) == [ConsumedMetric(6, 0.4, 3)]
        assert delta.record.step == 6

        again = replace(RECORD, base_lrs=(0.3,), version=4, created_version=4)
        async with a.lock("run-1", r3) as lk:
            r4 = await lk.commit(Change(again, reset=True))
        delta = await b.since("run-1", r3)
        assert delta is not None and delta.full and delta.rev == r4  # recreated: reload whole
        assert delta.record == again and not delta.events and not delta.plateau_metrics
    finally:
        await a.close()
        await b.close()


async def test_lock_serializes_replicas_and_hands_over_the_delta(pg_url: str) -> None:
    a, b = await open_store(pg_url), await open_store(pg_url)
    try:
        await a.commit(Change(RECORD))
        [loaded] = await b.load()
        rev = loaded.rev
        order: list[str] = []
        a_locked = asyncio.Event()

        async def writer_a() -> None:
            async with a.lock("run-1", rev) as lk:
                a_locked.set()
                await asyncio.sleep(0.3)  # b must wait for the row lock meanwhile
                order.append("a")
                await lk.commit(Change(replace(RECORD, version=2), new_events=[SCALE]))

        async def writer_b() -> None:
            await a_locked.wait()
            async with b.lock("run-1", rev) as lk:
                order.append("b")
                assert lk.delta is not None and [e.version for e in lk.delta.events] == [2]
                assert lk.delta.record.version == 2  # b hands out version 3, never 2 again
                await lk.commit(Change(replace(RECORD, version=3), new_events=[REPLACE]))

        await asyncio.gather(writer_a(), writer_b())
        assert order == ["a", "b"]
        [job] = await a.load()
        assert [e.version for e in job.events] == [2, 3]
    finally:
        await a.close()
        await b.close()


async def test_concurrent_creation_of_one_id_is_serialized(pg_url: str) -> None:
    stores = [await open_store(pg_url) for _ in range(3)]
    created: list[int] = []

    async def create(store: JobStore) -> None:
        async with store.lock("new-job", 0) as lk:
            version = 1 if lk.delta is None else lk.delta.record.version + 1
            created.append(version)
            await lk.commit(
                Change(
                    replace(RECORD, job_id="new-job", version=version, created_version=version),
                    reset=version > 1,
                )
            )

    try:
        await asyncio.gather(*(create(s) for s in stores))
        assert sorted(created) == [1, 2, 3]
    finally:
        for store in stores:
            await store.close()


async def test_stale_lock_holder_cannot_overwrite(pg_url: str) -> None:
    # A commit checks the row is still at the locked revision (belt and braces under FOR UPDATE).
    store = await open_store(pg_url)
    try:
        await store.commit(Change(RECORD))
        async with store.lock("run-1", 0) as lk:
            lk.rev += 1  # pretend we locked another revision
            with pytest.raises(StoreError, match="changed under its row lock"):
                await lk.commit(Change(replace(RECORD, version=2)))
        [job] = await store.load()
        assert job.record == RECORD
    finally:
        await store.close()


async def test_subscribers_hear_every_replica_within_milliseconds(pg_url: str) -> None:
    a, b = await open_store(pg_url), await open_store(pg_url)
    heard: asyncio.Queue[tuple[str, int, float]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    b.subscribe(lambda job_id, rev: heard.put_nowait((job_id, rev, loop.time())))
    try:
        await asyncio.sleep(0.1)
        while not heard.empty():
            heard.get_nowait()  # the subscription's initial resync (no jobs yet)
        delays = []
        for i in range(20):
            record = replace(RECORD, version=i + 1, job_id=f"job-{i % 3}")
            start = loop.time()
            async with a.lock(record.job_id, 0) as lk:
                rev = await lk.commit(Change(record))
            job_id, got, when = await asyncio.wait_for(heard.get(), 5)
            assert (job_id, got) == (record.job_id, rev)
            delays.append(when - start)
        assert max(delays) < 0.5, delays
    finally:
        await a.close()
        await b.close()


async def test_lost_listener_reconnects_and_resyncs(pg_url: str, postgres: PostgresServer) -> None:
    a = await open_store(pg_url)
    b = await store_pg.PgStore.open(pg_url, resync_seconds=0.2)
    heard: dict[str, int] = {}
    b.subscribe(lambda job_id, rev: heard.__setitem__(job_id, rev))
    try:
        # Kill b's listener connection on the server side, write while it is gone.
        db = pg_url.rsplit("/", 1)[1]
        postgres.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
            "application_name = 'lrctl-controller-listener' AND "
            f"datname = '{db}'"
        )
        await a.commit(Change(RECORD))
        for _ in range(200):
            if heard.get("run-1"):
                break
            await asyncio.sleep(0.05)
        [job] = await a.load()
        assert heard.get("run-1") == job.rev
    finally:
        await a.close()
        await b.close()


async def test_password_from_environment_and_passfile(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres.url(postgres.create_database(), password=False)
    assert PASSWORD not in url
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    await (await open_store(url)).close()
    monkeypatch.delenv("PGPASSWORD")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{postgres.host}:{postgres.port}:*:{USER}:{PASSWORD}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    store = await open_store(url)
    assert store.description == url
    await store.close()


@pytest.mark.parametrize("how", ["url", "env"])
async def test_wrong_password_error_never_shows_a_password(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    wrong = "Wr0ng-pw-" + os.urandom(4).hex()
    db = postgres.create_database()
    if how == "url":
        url = f"postgresql://{USER}:{wrong}@{postgres.host}:{postgres.port}/{db}"
    else:
        url = postgres.url(db, password=False)
        monkeypatch.setenv("PGPASSWORD", wrong)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    with pytest.raises(StoreError) as info:
        await open_store(url)
    message = str(info.value)
    assert "password authentication failed" in message
    assert wrong not in message and PASSWORD not in message
    assert f"postgresql://{USER}@{postgres.host}:{postgres.port}/{db}" in message


def test_redact_url() -> None:
    assert redact_url("postgresql://u:p%40ss@h:5/db") == "postgresql://u@h:5/db"
    assert (
        redact_url("postgres://u@h/db?password=x&sslmode=require")
        == "postgres://u@h/db?password=***&sslmode=require"
    )
    assert redact_url("lrctl.db") == "lrctl.db"


async def _schema_version(url: str) -> int:
    if url.startswith("postgresql://"):
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval("SELECT max(version) FROM lrctl_schema"))
        finally:
            await conn.close()
    conn = sqlite3.connect(url)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


async def _set_schema_version(url: str, version: int) -> None:
    if url.startswith("postgresql://"):
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("UPDATE lrctl_schema SET version = $1", version)
        finally:
            await conn.close()
        return
    conn = sqlite3.connect(url)
    conn.execute(f"PRAGMA user_version = {int(version)}")
    conn.close()
