"""PostgreSQL storage faults answer like SQLite's (tests/test_faults.py): a read-only database
refuses writes with UNAVAILABLE and a full disk with RESOURCE_EXHAUSTED, nothing of a refused
call is stored, reads are still served, and writes resume at the next version; never INTERNAL.

The read-only database is real (``default_transaction_read_only`` on the test's database, its
sessions restarted), and so is the full disk where a tmpfs can be mounted (root, as in CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import grpc
import pytest

from controller.errors import StorageFull
from controller.server import Controller
from controller.store_pg import PgStore
from lrctl.v1 import lrctl_pb2 as pb
from lrctl.v1 import lrctl_pb2_grpc
from tests import pg
from tests.conftest import expect_status
from tests.pg import PostgresServer
from tests.test_faults import tmpfs

postgres = pg.postgres  # fixtures: one PostgreSQL server per session
pg_url = pg.pg_url

pytestmark = pytest.mark.slow

Start = Callable[..., Awaitable[Controller]]
SCALE = pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_SCALE, value=0.5)


def _restart_sessions(postgres: PostgresServer, database: str) -> None:
    """End every session on ``database`` but psql's own: the pool reconnects, and new
    sessions take the database's settings."""
    postgres.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )


async def test_a_read_only_database_refuses_writes_and_serves_reads(
    start_controller: Start, postgres: PostgresServer, pg_url: str
) -> None:
    database = urlsplit(pg_url).path.lstrip("/")
    ctl = await start_controller(db=pg_url, metrics_port=None)
    async with grpc.aio.insecure_channel(ctl.address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)  # type: ignore[no-untyped-call]
        await stub.CreateJob(
            pb.CreateJobRequest(job_id="run-1", schedule="StepLR(step_size=2)", base_lrs=[0.1])
        )
        acknowledged = [(await stub.Override(SCALE)).event.version]
        postgres.psql(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        _restart_sessions(postgres, database)
        details = []
        for _ in range(20):  # the first calls may meet a terminated session: UNAVAILABLE too
            try:
                acknowledged.append((await stub.Override(SCALE)).event.version)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                details.append(err.details() or "")
                if "read-only" in details[-1]:
                    break
        assert "read-only" in details[-1], details
        assert "nothing was written" in details[-1], details[-1]
        assert acknowledged == [2], acknowledged  # no write went through
        for call in (
            stub.FinishJob(pb.FinishJobRequest(job_id="run-1")),
            stub.CreateJob(
                pb.CreateJobRequest(job_id="run-2", schedule="StepLR(step_size=2)", base_lrs=[0.1])
            ),
        ):
            err = await expect_status(call, grpc.StatusCode.UNAVAILABLE)
            assert "read-only" in (err.details() or ""), err.details()
        job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))  # reads are still served
        assert job.version == 2 and job.state == pb.JOB_STATE_RUNNING
        assert len((await stub.ListJobs(pb.ListJobsRequest(include_finished=True))).jobs) == 1

        postgres.psql(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        _restart_sessions(postgres, database)
        clear, version = pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_CLEAR), 0
        for _ in range(20):
            try:
                version = (await stub.Override(clear)).event.version
                break
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        assert version == 3  # the next version: nothing of the refused calls was stored
    await ctl.stop(0)
    again = await start_controller(db=pg_url, metrics_port=None)
    async with grpc.aio.insecure_channel(again.address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)  # type: ignore[no-untyped-call]
        history = await stub.History(pb.HistoryRequest(job_id="run-1"))
        assert [e.version for e in history.events] == [2, 3]
        assert len((await stub.ListJobs(pb.ListJobsRequest(include_finished=True))).jobs) == 1


async def test_a_full_disk_refuses_writes_and_serves_reads(
    start_controller: Start, postgres: PostgresServer, pg_url: str, tmp_path: Path
) -> None:
    """The database's tables on a tablespace in a small tmpfs (root), filled up: writes are
    RESOURCE_EXHAUSTED with nothing stored, reads go on, writes resume at the next version
    once there is space. Where no mount is allowed, PostgreSQL's own error (SQLSTATE 53100)
    is raised where the store's queries run instead."""
    database = urlsplit(pg_url).path.lstrip("/")
    space = postgres.root / f"space-{database}"
    with tmpfs(space, "1m") as real:
        if not real:
            await _full_disk_error_is_mapped(pg_url)
            return
        if os.geteuid() == 0:
            shutil.chown(space, "nobody")  # the server's user (tests/pg.py)
        space.chmod(0o700)
        tablespace = f"space_{database}"
        postgres.psql(f"CREATE TABLESPACE {tablespace} LOCATION '{space}'")
        postgres.psql(f"ALTER DATABASE {database} SET default_tablespace = {tablespace}")
        try:
            ctl = await start_controller(db=pg_url, metrics_port=None)
            await _fill_and_free(ctl, space)
            await ctl.stop(0)
        finally:
            postgres.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            postgres.psql(f"DROP TABLESPACE {tablespace}")


async def _fill_and_free(ctl: Controller, space: Path) -> None:
    async with grpc.aio.insecure_channel(ctl.address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)  # type: ignore[no-untyped-call]
        await stub.CreateJob(
            pb.CreateJobRequest(job_id="run-1", schedule="StepLR(step_size=2)", base_lrs=[0.1])
        )
        ballast = space / "ballast"
        with contextlib.suppress(OSError), open(ballast, "wb") as out:
            while True:  # the file system full, up to the last page
                out.write(b"\0" * 4096)
                out.flush()
        acknowledged, refused = [], 0
        for i in range(300):
            request = pb.OverrideRequest(
                job_id="run-1", op=pb.OVERRIDE_OP_SCALE, value=0.5, reason=f"{i} " + "x" * 1000
            )
            try:
                acknowledged.append((await stub.Override(request)).event.version)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                assert "is full" in (err.details() or "") and "nothing was written" in (
                    err.details() or ""
                ), err.details()
                refused += 1
                if refused >= 3:
                    break
        assert refused >= 3, acknowledged
        job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))  # reads are still served
        assert [e.version for e in job.events] == acknowledged
        ballast.unlink()  # space comes back: writes resume by themselves, at the next version
        reply = await stub.Override(pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_CLEAR))
        assert reply.event.version == (acknowledged[-1] if acknowledged else 1) + 1
        acknowledged.append(reply.event.version)
        history = await stub.History(pb.HistoryRequest(job_id="run-1"))
        assert [e.version for e in history.events] == acknowledged


async def _full_disk_error_is_mapped(pg_url: str) -> None:
    store = await PgStore.open(pg_url)
    try:
        full = asyncpg.exceptions.DiskFullError(
            'could not extend file "base/16384/16390": No space left on device'
        )
        with pytest.raises(StorageFull) as info, store._reachable():
            raise full
        text = str(info.value)
        assert "is full" in text and "nothing was written" in text, text
        assert store.description in text and pg.PASSWORD not in text, text
    finally:
        await store.close()


async def test_a_row_a_replica_cannot_read_fails_its_calls_not_the_replica(
    start_controller: Start, postgres: PostgresServer, pg_url: str
) -> None:
    """What a newer release might write (an op this one does not know) reaches running
    replicas as FAILED_PRECONDITION for that job's calls, never INTERNAL; other jobs go on,
    and the job serves again once its rows read."""
    database = urlsplit(pg_url).path.lstrip("/")
    replicas = [await start_controller(db=pg_url, metrics_port=None) for _ in range(2)]
    channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
    try:
        stubs = [lrctl_pb2_grpc.LRControllerStub(c) for c in channels]  # type: ignore[no-untyped-call]
        for job in ("run-1", "other"):
            await stubs[0].CreateJob(
                pb.CreateJobRequest(job_id=job, schedule="StepLR(step_size=2)", base_lrs=[0.1])
            )
        await stubs[0].Override(SCALE)  # version 2, seen by both replicas

        def rewrite_op(op: str) -> None:  # a new revision of the job, as a writer makes it
            postgres.psql(
                "UPDATE lrctl_jobs SET rev = rev + 1 WHERE job_id = 'run-1'; "
                f"UPDATE lrctl_events SET op = '{op}', rev = (SELECT rev FROM lrctl_jobs "
                "WHERE job_id = 'run-1') WHERE job_id = 'run-1'",
                database,
            )

        rewrite_op("explode")
        for stub in stubs:
            err = await expect_status(stub.Override(SCALE), grpc.StatusCode.FAILED_PRECONDITION)
            assert "cannot read" in (err.details() or "") and "'run-1'" in (err.details() or "")
            other = pb.OverrideRequest(job_id="other", op=pb.OVERRIDE_OP_SCALE, value=0.5)
            assert (await stub.Override(other)).event.op == pb.OVERRIDE_OP_SCALE
        rewrite_op("scale")
        assert (await stubs[1].Override(SCALE)).event.version == 3
        history = await stubs[0].History(pb.HistoryRequest(job_id="run-1"))
        assert [e.version for e in history.events] == [2, 3]
    finally:
        for channel in channels:
            await channel.close()
