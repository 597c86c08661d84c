"""Durable job state: one SQLite file, written through before any write is acknowledged.

The file is opened in WAL mode with ``synchronous=FULL``: :meth:`Store.commit` returns only
after the transaction is on disk, so a ``kill -9`` (or power loss) right after an RPC
returns loses nothing the client was told about. The connection takes an exclusive lock,
so a second controller pointed at the same file fails at startup instead of handing out
duplicate versions.

Every SQLite call runs on one dedicated thread (a single-worker executor owns the
connection), so the event loop never blocks on fsync and the connection is never shared.

Tables (schema version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``):

* ``jobs``: one row per job id, a :class:`lrctl.model.Job` without its log; ``version`` is
  the job's latest version, ``created_version`` the version at which the job was last
  (re)created, and ``lrs`` the LRs rank 0 last reported (``Job.lr`` as stored; views
  recompute the displayed LR from the schedule).
* ``events``: the override log, primary key ``(job_id, version)``. Events of a job's earlier
  incarnations (``version <= created_version``) stay in the file but are not loaded.
* ``plateau_metrics``: every ``step(metric)`` value consumed for a ReduceLROnPlateau job, so
  the tracker is rebuilt exactly on restart.

Migrations are plain functions in :data:`MIGRATIONS`; migration *i* takes the schema from
version *i* to *i + 1* and runs in the same transaction that bumps ``user_version``. Version 3
adds ``jobs.applied_version`` and ``jobs.world_size`` (what rank 0 last reported); version 4
adds ``jobs.epoch`` (the attach epoch of the run allowed to report).

The rows, the :class:`~controller.rows.Change` type and the row converters are
:mod:`controller.rows`'s, so that every store writes the same rows.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import TypeVar

from controller.errors import StorageFull, StorageUnavailable
from controller.rows import (
    EVENT_COLUMNS,
    JOB_COLUMNS,
    Change,
    ConsumedMetric,
    StoredJob,
    StoreError,
    check_schema_version,
    event_to_row,
    job_to_row,
    stored_jobs,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Store", "connect", "migrate"]

T = TypeVar("T")


def _v1(conn: sqlite3.Connection) -> None:
    conn.execute("""
        CREATE TABLE jobs (
            job_id TEXT PRIMARY KEY,
            schedule TEXT NOT NULL,
            base_lrs TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_version INTEGER NOT NULL,
            step INTEGER NOT NULL,
            state TEXT NOT NULL,
            verbose INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            lrs TEXT
        )""")
    conn.execute("""
        CREATE TABLE events (
            job_id TEXT NOT NULL REFERENCES jobs(job_id),
            version INTEGER NOT NULL,
            op TEXT NOT NULL,
            value REAL,
            schedule TEXT,
            param_group INTEGER,
            effective_step INTEGER,
            actor TEXT NOT NULL,
            reason TEXT NOT NULL,
            created_at REAL NOT NULL,
            applied_at REAL,
            PRIMARY KEY (job_id, version)
        )""")


def _v2(conn: sqlite3.Connection) -> None:
    # ReduceLROnPlateau support: the consumed metrics, so the tracker survives restarts.
    # schedule_version: the version that installed the job-wide schedule the metric fed
    # (created_version, or a REPLACE_SCHEDULE event's), so a replaced schedule starts afresh.
    conn.execute("""
        CREATE TABLE plateau_metrics (
            job_id TEXT NOT NULL REFERENCES jobs(job_id),
            step INTEGER NOT NULL,
            value REAL,
            schedule_version INTEGER NOT NULL,
            PRIMARY KEY (job_id, step)
        )""")


def _v3(conn: sqlite3.Connection) -> None:
    # Reports: the agreed version every rank applied, and the run's world size.
    conn.execute("ALTER TABLE jobs ADD COLUMN applied_version INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE jobs ADD COLUMN world_size INTEGER NOT NULL DEFAULT 0")


def _v4(conn: sqlite3.Connection) -> None:
    # Attach epochs: only the newest rank-0 attach of a job may report (docs/security.md).
    conn.execute("ALTER TABLE jobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")


#: ``MIGRATIONS[i]`` upgrades a database at schema version ``i`` to ``i + 1``.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3, _v4)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Upgrade the schema behind ``conn`` to ``target`` in one transaction.

    Args:
        conn: An autocommit connection (``isolation_level=None``).
        target: Schema version to reach (tests build old databases with a lower one).

    Returns:
        The schema version found before upgrading.

    Raises:
        StoreError: the database is newer than this code.
    """
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    check_schema_version(found, SCHEMA_VERSION)
    if found >= target:
        return found
    with _transaction(conn):
        for step in MIGRATIONS[found:target]:
            step(conn)
        # PRAGMA takes no parameters; target is an int we computed.
        conn.execute(f"PRAGMA user_version = {int(target)}")
    return found


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (a full disk, I/O)
            with suppress(sqlite3.Error):  # the original error says more
                conn.execute("ROLLBACK")
        raise


def _write_error(path: str, exc: sqlite3.Error) -> Exception:
    """The controller's error for a write SQLite refused: nothing of it was stored."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
    if code == sqlite3.SQLITE_FULL:
        return StorageFull(
            f"database {path!r} is full ({exc}); nothing was written. Free "
            f"disk space: writes resume by themselves, reads are still served"
        )
    if code == sqlite3.SQLITE_READONLY:
        return StorageUnavailable(
            f"database {path!r} is read-only ({exc}); nothing was written. Reads are still served"
        )
    return StorageUnavailable(
        f"cannot write database {path!r} ({exc}); nothing was written. Reads are still served"
    )


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open ``path`` with the controller's durability settings (no migration)."""
    conn = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 200")
    # Exclusive: one controller per file (a second one fails in Store.open, not later).
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: the WAL is fsynced at every commit, so an acknowledged write survives power loss.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class _ExclusiveLock:
    """The ``JobLock`` of a store no other process writes: nothing to lock or reload."""

    delta: None = None

    def __init__(self, store: Store, rev: int) -> None:
        self._store = store
        self.rev = rev

    async def commit(self, change: Change) -> int:
        await self._store.commit(change)
        self.rev += 1  # revisions count writes, as in a shared store
        return self.rev


class Store:
    """The SQLite file, used only from its own thread. Build with :meth:`open`.

    A :class:`controller.store_api.JobStore` that is not ``shared``: one process owns the file
    (its exclusive lock), so :meth:`lock` locks nothing, :meth:`since` finds nothing new and
    :meth:`subscribe` never calls back.
    """

    shared = False

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor, path: str) -> None:
        self._conn = conn
        self._executor = executor
        self.path = path
        self._closed = False

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> Store:
        """Open (creating if needed) and migrate the database at ``path``.

        Raises:
            StoreError: unreadable file, another controller holds it, or a newer schema.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lrctl-sqlite")
        loop = asyncio.get_running_loop()

        def setup() -> sqlite3.Connection:
            conn = connect(path)
            try:
                migrate(conn)
                # Take the exclusive lock now (a write transaction keeps it in EXCLUSIVE mode).
                with _transaction(conn):
                    pass
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await loop.run_in_executor(executor, setup)
        except sqlite3.OperationalError as exc:
            executor.shutdown(wait=False)
            hint = " (is another controller using it?)" if "locked" in str(exc) else ""
            raise StoreError(f"cannot open database {os.fspath(path)!r}: {exc}{hint}") from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(conn, executor, os.fspath(path))

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StoreError(f"database {self.path!r} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def load(self) -> list[StoredJob]:
        """Return every job with its current log and consumed plateau metrics."""
        return await self._run(self._load)

    async def commit(self, change: Change) -> None:
        """Write ``change`` atomically; returns once it is durable on disk.

        Raises:
            StorageFull: the disk is full (RESOURCE_EXHAUSTED); nothing was written.
            StorageUnavailable: a read-only file, an I/O error (UNAVAILABLE); nothing was
                written.
            StoreError: the store is closed.
        """
        try:
            await self._run(lambda: self._commit(change))
        except sqlite3.Error as exc:
            raise _write_error(self.path, exc) from exc

    @property
    def description(self) -> str:
        """The file's path."""
        return self.path

    @asynccontextmanager
    async def lock(self, job_id: str, rev: int) -> AsyncIterator[_ExclusiveLock]:
        """No row lock: the service's per-job asyncio lock serializes this process."""
        yield _ExclusiveLock(self, rev)

    async def since(self, job_id: str, rev: int) -> None:
        """Nothing: no other process writes the file."""
        return None

    def subscribe(self, callback: Callable[[str, int], None]) -> None:
        """Nothing to announce: no other process writes the file."""

    async def close(self) -> None:
        """Close the connection and stop the thread; safe to call twice."""
        if self._closed:
            return
        await self._run(self._conn.close)
        self._closed = True
        self._executor.shutdown(wait=True)

    def _load(self) -> list[StoredJob]:
        conn = self._conn
        columns = ", ".join(f"e.{c}" for c in EVENT_COLUMNS)
        events = conn.execute(
            f"SELECT e.job_id, {columns} FROM events e "
            "JOIN jobs j ON j.job_id = e.job_id AND e.version > j.created_version "
            "ORDER BY e.job_id, e.version"
        ).fetchall()
        metrics: dict[str, list[ConsumedMetric]] = {}
        for job_id, step, value, version in conn.execute(
            "SELECT job_id, step, value, schedule_version FROM plateau_metrics "
            "ORDER BY job_id, step"
        ):
            # SQLite stores NaN as NULL; torch treats a NaN metric as "not better".
            metric = ConsumedMetric(step, math.nan if value is None else value, version)
            metrics.setdefault(job_id, []).append(metric)
        jobs = conn.execute(f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs ORDER BY job_id")
        return stored_jobs(((row, 0) for row in jobs), events, metrics)

    def _commit(self, change: Change) -> None:
        conn, job = self._conn, change.job
        with _transaction(conn):
            conn.execute(_UPSERT_JOB, job_to_row(job))
            if change.reset:
                conn.execute("DELETE FROM plateau_metrics WHERE job_id = ?", (job.job_id,))
            conn.executemany(
                _INSERT_EVENT, [(job.job_id, *event_to_row(e)) for e in change.new_events]
            )
            conn.executemany(
                "UPDATE events SET effective_step = ?, applied_at = ? "
                "WHERE job_id = ? AND version = ?",
                [(e.effective_step, e.applied_at, job.job_id, e.version) for e in change.applied],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO plateau_metrics (job_id, step, value, schedule_version) "
                "VALUES (?,?,?,?)",
                [
                    (
                        job.job_id,
                        m.step,
                        None if math.isnan(m.value) else m.value,
                        m.schedule_version,
                    )
                    for m in change.plateau_metrics
                ],
            )


_UPSERT_JOB = (
    f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({', '.join('?' * len(JOB_COLUMNS))}) "
    "ON CONFLICT (job_id) DO UPDATE SET " + ", ".join(f"{c}=excluded.{c}" for c in JOB_COLUMNS[1:])
)
_INSERT_EVENT = (
    f"INSERT INTO events (job_id, {', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(EVENT_COLUMNS) + 1))})"
)
