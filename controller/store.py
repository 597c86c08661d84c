"""Durable job state: one SQLite file, written through before any write is acknowledged.

The file is opened in WAL mode with ``synchronous=FULL``: :meth:`Store.commit` returns only
after the transaction is on disk, so a ``kill -9`` (or power loss) right after an RPC
returns loses nothing the client was told about. The connection takes an exclusive lock,
so a second controller pointed at the same file fails at startup instead of handing out
duplicate versions.

Every SQLite call runs on one dedicated thread (a single-worker executor owns the
connection), so the event loop never blocks on fsync and the connection is never shared.

Tables (schema version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``):

* ``jobs``: one row per job id; ``version`` is the job's latest version and
  ``created_version`` the version at which the job was last (re)created.
* ``events``: the override log, primary key ``(job_id, version)``. Events of a job's earlier
  incarnations (``version <= created_version``) stay in the file but are not loaded.
* ``plateau_metrics``: every ``step(metric)`` value consumed for a ReduceLROnPlateau job, so
  the tracker is rebuilt exactly on restart.

Migrations are plain functions in :data:`MIGRATIONS`; migration *i* takes the schema from
version *i* to *i + 1* and runs in the same transaction that bumps ``user_version``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from lrctl.errors import LrctlError
from lrctl.overrides import Event, Op

__all__ = [
    "FINISHED",
    "MIGRATIONS",
    "RUNNING",
    "SCHEMA_VERSION",
    "Change",
    "ConsumedMetric",
    "JobRecord",
    "Store",
    "StoreError",
    "StoredJob",
    "migrate",
]

RUNNING = "running"
FINISHED = "finished"

T = TypeVar("T")


class StoreError(LrctlError):
    """The database cannot be opened, is locked by another controller, or is too new."""


@dataclass(frozen=True)
class JobRecord:
    """One row of ``jobs``: everything about a job except its event log.

    Attributes:
        job_id: The job's id.
        schedule: The initial spec, canonical text.
        base_lrs: One base LR per param group.
        version: Latest version (creation, every event and the finish bump it).
        created_version: Version at which this incarnation of the job was created.
        step: Latest step reported by rank 0, -1 before any report.
        state: :data:`RUNNING` or :data:`FINISHED`.
        verbose: Log every LR change.
        created_at: Unix time of (re)creation.
        updated_at: Unix time of the latest write.
        lrs: The LRs rank 0 last reported, or None.
    """

    job_id: str
    schedule: str
    base_lrs: tuple[float, ...]
    version: int
    created_version: int
    step: int = -1
    state: str = RUNNING
    verbose: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    lrs: tuple[float, ...] | None = None


class ConsumedMetric(NamedTuple):
    """One ``step(metric)`` value the plateau tracker consumed."""

    step: int
    value: float
    schedule_version: int


@dataclass(frozen=True)
class StoredJob:
    """A job as loaded at startup: its row, its current log and its consumed metrics."""

    record: JobRecord
    events: list[Event]
    plateau_metrics: list[ConsumedMetric]


@dataclass(frozen=True)
class Change:
    """One atomic write about one job.

    Attributes:
        job: The job's new row (inserted or replacing the old one).
        new_events: Events to append.
        applied: Existing events whose ``effective_step``/``applied_at`` are now set.
        plateau_metrics: Metrics consumed by the plateau tracker.
        reset: The job was recreated: forget its consumed plateau metrics.
    """

    job: JobRecord
    new_events: Sequence[Event] = ()
    applied: Sequence[Event] = ()
    plateau_metrics: Sequence[ConsumedMetric] = ()
    reset: bool = False


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


#: ``MIGRATIONS[i]`` upgrades a database at schema version ``i`` to ``i + 1``.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2)
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
    if found > SCHEMA_VERSION:
        raise StoreError(f"database schema version {found} is newer than this controller "
                         f"supports ({SCHEMA_VERSION}); upgrade lrctl")
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
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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


class Store:
    """The SQLite file, used only from its own thread. Build with :meth:`open`."""

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
        """Write ``change`` atomically; returns once it is durable on disk."""
        await self._run(lambda: self._commit(change))

    async def close(self) -> None:
        """Close the connection and stop the thread; safe to call twice."""
        if self._closed:
            return
        await self._run(self._conn.close)
        self._closed = True
        self._executor.shutdown(wait=True)

    def _load(self) -> list[StoredJob]:
        conn = self._conn
        events: dict[str, list[Event]] = {}
        rows = conn.execute(
            "SELECT e.job_id, e.version, e.op, e.value, e.schedule, e.param_group, "
            "e.effective_step, e.actor, e.reason, e.created_at, e.applied_at FROM events e "
            "JOIN jobs j ON j.job_id = e.job_id AND e.version > j.created_version "
            "ORDER BY e.job_id, e.version")
        for row in rows:
            events.setdefault(row[0], []).append(_event_from_row(row[1:]))
        metrics: dict[str, list[ConsumedMetric]] = {}
        for job_id, step, value, version in conn.execute(
                "SELECT job_id, step, value, schedule_version FROM plateau_metrics "
                "ORDER BY job_id, step"):
            # SQLite stores NaN as NULL; torch treats a NaN metric as "not better".
            metric = ConsumedMetric(step, math.nan if value is None else value, version)
            metrics.setdefault(job_id, []).append(metric)
        out = []
        for row in conn.execute("SELECT job_id, schedule, base_lrs, version, created_version, "
                                "step, state, verbose, created_at, updated_at, lrs FROM jobs "
                                "ORDER BY job_id"):
            record = _record_from_row(row)
            log = events.get(record.job_id, [])
            out.append(StoredJob(record, log, metrics.get(record.job_id, [])))
        return out

    def _commit(self, change: Change) -> None:
        conn, job = self._conn, change.job
        with _transaction(conn):
            conn.execute(
                "INSERT INTO jobs (job_id, schedule, base_lrs, version, created_version, step, "
                "state, verbose, created_at, updated_at, lrs) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (job_id) DO UPDATE SET schedule=excluded.schedule, "
                "base_lrs=excluded.base_lrs, version=excluded.version, "
                "created_version=excluded.created_version, step=excluded.step, "
                "state=excluded.state, verbose=excluded.verbose, "
                "created_at=excluded.created_at, updated_at=excluded.updated_at, "
                "lrs=excluded.lrs",
                (job.job_id, job.schedule, json.dumps(list(job.base_lrs)), job.version,
                 job.created_version, job.step, job.state, int(job.verbose), job.created_at,
                 job.updated_at, None if job.lrs is None else json.dumps(list(job.lrs))))
            if change.reset:
                conn.execute("DELETE FROM plateau_metrics WHERE job_id = ?", (job.job_id,))
            conn.executemany(
                "INSERT INTO events (job_id, version, op, value, schedule, param_group, "
                "effective_step, actor, reason, created_at, applied_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(job.job_id, e.version, e.op.value, e.value, e.schedule, e.group,
                  e.effective_step, e.actor, e.reason, e.created_at, e.applied_at)
                 for e in change.new_events])
            conn.executemany(
                "UPDATE events SET effective_step = ?, applied_at = ? "
                "WHERE job_id = ? AND version = ?",
                [(e.effective_step, e.applied_at, job.job_id, e.version) for e in change.applied])
            conn.executemany(
                "INSERT OR IGNORE INTO plateau_metrics (job_id, step, value, schedule_version) "
                "VALUES (?,?,?,?)",
                [(job.job_id, m.step, None if math.isnan(m.value) else m.value,
                  m.schedule_version) for m in change.plateau_metrics])


def _event_from_row(row: Sequence[Any]) -> Event:
    version, op, value, schedule, group, effective_step, actor, reason, created, applied = row
    return Event(version=version, op=Op(op), value=value, schedule=schedule, group=group,
                 effective_step=effective_step, actor=actor, reason=reason,
                 created_at=created, applied_at=applied)


def _record_from_row(row: Sequence[Any]) -> JobRecord:
    (job_id, schedule, base_lrs, version, created_version, step, state, verbose,
     created_at, updated_at, lrs) = row
    return JobRecord(job_id=job_id, schedule=schedule,
                     base_lrs=tuple(float(b) for b in json.loads(base_lrs)),
                     version=version, created_version=created_version, step=step,
                     state=state, verbose=bool(verbose), created_at=created_at,
                     updated_at=updated_at,
                     lrs=None if lrs is None else tuple(float(x) for x in json.loads(lrs)))

