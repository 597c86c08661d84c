"""The PostgreSQL store: one database shared by several controller replicas.

``lrctl serve --db postgresql://USER@HOST:PORT/DB`` opens it. The password comes from the
URL, ``PGPASSWORD`` or ``PGPASSFILE`` (libpq's rules, as implemented by asyncpg) and never
appears in a log line or an error message (:func:`controller.store_api.redact_url`).

Tables (prefixed ``lrctl_`` so the database can be shared with other applications) hold the
same rows as the SQLite store's, plus two bookkeeping columns:

* ``lrctl_jobs.rev`` counts the writes of the job's row; every ``lrctl_events`` and
  ``lrctl_plateau_metrics`` row records the ``rev`` that last wrote it, so a replica loads
  exactly what changed after the revision it holds (:meth:`PgStore.since`);
* ``lrctl_jobs.created_rev`` is the revision of the job's latest (re)creation: a replica
  holding an older revision reloads the job whole.

Writes (:meth:`PgStore.lock`): ``BEGIN; SELECT ... FOR UPDATE`` on the job's row (plus a
transaction-scoped advisory lock on the job id while the row does not exist, so two replicas
cannot both create it), then the service applies what other replicas wrote, decides, and
:meth:`_PgLock.commit` writes, checks that the row is still at the revision it locked,
``NOTIFY lrctl_jobs, '<job_id> <rev>'`` and ``COMMIT``. The notification is delivered at
commit to every replica's listener connection; a replica whose listener connection drops
reconnects and resyncs every job from the database (and checks every
:data:`RESYNC_SECONDS` anyway), so a missed notification delays a change, never loses it,
and the log a replica serves is always a gap-free prefix of the database's.

Migrations (``MIGRATIONS``, :func:`migrate` under a database-wide advisory lock) and the SQL
text of the queries are in :mod:`controller.store_pg_schema`; re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("PostgreSQL support needs asyncpg: pip install 'lrctl[controller]'") from exc

from controller.errors import FailedPrecondition, StorageFull, StorageUnavailable, Unavailable
from controller.rows import (
    Change,
    ConsumedMetric,
    StoredJob,
    StoreError,
    event_from_row,
    event_to_row,
    job_from_row,
    job_to_row,
    stored_jobs,
)
from controller.store_api import Delta, redact_url
from controller.store_pg_feed import CHANNEL, ChangeFeed
from controller.store_pg_schema import (
    EVENT_COLUMNS_SQL,
    INSERT_EVENT,
    JOB_COLUMNS_SQL,
    MIGRATIONS,
    SCHEMA_VERSION,
    SELECT_JOB,
    UPSERT_JOB,
    migrate,
)

__all__ = ["CHANNEL", "MIGRATIONS", "RESYNC_SECONDS", "SCHEMA_VERSION", "PgStore", "migrate"]

_log = logging.getLogger("lrctl.controller.store")

#: Failures that say the database is out of reach (not that a request is wrong): the RPC
#: fails UNAVAILABLE, so clients retry, possibly on another replica.
_UNREACHABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    # A session the server ended mid-call (a restart, pg_terminate_backend) can leave asyncpg
    # "in another operation" (MagicStack/asyncpg#784): a lost connection too.
    asyncpg.exceptions.InternalClientError,
)
#: Even with a healthy listener, every job's revision is compared this often.
RESYNC_SECONDS = 30.0
#: Advisory lock key of the per-job creation locks (two ints: this class id and
#: ``hashtext(job_id)``; a key space apart from the migration lock's one bigint).
_JOB_LOCK_CLASS = 0x6C726374  # "lrct"


class _PgLock:
    """One job's write transaction; see :meth:`PgStore.lock`."""

    def __init__(self, store: PgStore, conn: Any, job_id: str) -> None:
        self._store = store
        self._conn = conn
        self._job_id = job_id
        self.rev = 0
        self.delta: Delta | None = None
        self.committed = False

    async def commit(self, change: Change) -> int:
        job = change.job
        if job.job_id != self._job_id:
            raise StoreError(f"expected a change of job {self._job_id!r}, got {job.job_id!r}")
        conn = self._conn
        rev = await conn.fetchval(UPSERT_JOB, *job_to_row(job), self.rev)
        if rev is None:
            # Cannot happen while every writer holds the row lock; refuse rather than guess.
            raise StoreError(
                f"job {job.job_id!r} changed under its row lock (revision {self.rev}); not written"
            )
        if change.reset:
            await conn.execute("DELETE FROM lrctl_plateau_metrics WHERE job_id = $1", job.job_id)
        if change.new_events:
            await conn.executemany(
                INSERT_EVENT, [(job.job_id, *event_to_row(e), rev) for e in change.new_events]
            )
        if change.applied:
            await conn.executemany(
                "UPDATE lrctl_events SET effective_step = $1, applied_at = $2, rev = $3 "
                "WHERE job_id = $4 AND version = $5",
                [
                    (e.effective_step, e.applied_at, rev, job.job_id, e.version)
                    for e in change.applied
                ],
            )
        if change.plateau_metrics:
            await conn.executemany(
                "INSERT INTO lrctl_plateau_metrics (job_id, step, value, schedule_version, rev) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                [
                    (job.job_id, m.step, m.value, m.schedule_version, rev)
                    for m in change.plateau_metrics
                ],
            )
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{job.job_id} {rev}")
        await conn.execute("COMMIT")
        self.committed = True
        self.rev = int(rev)
        return self.rev


class PgStore:
    """A PostgreSQL database shared by controller replicas. Build with :meth:`open`.

    Attributes:
        shared: Always True: other replicas write the same database.
        description: The URL without its password.
    """

    shared = True

    def __init__(self, dsn: str, pool: Any, *, resync_seconds: float = RESYNC_SECONDS) -> None:
        self._dsn = dsn
        self._pool = pool
        self.description = redact_url(dsn)
        self._feed = ChangeFeed(
            dsn, pool, self.description, resync_seconds, lambda exc: _scrub(exc, dsn)
        )
        self._closed = False

    @classmethod
    async def open(
        cls, dsn: str, *, pool_size: int = 10, resync_seconds: float = RESYNC_SECONDS
    ) -> PgStore:
        """Connect, migrate, and start listening for other replicas' changes.

        Raises:
            StoreError: unreachable server, authentication failure, a newer schema.
        """
        description = redact_url(dsn)
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=pool_size,
                server_settings={
                    "application_name": "lrctl-controller",
                    # A replica that dies mid-transaction must not hold a row
                    # lock for long (the server also notices the closed socket).
                    "idle_in_transaction_session_timeout": "30000",
                },
            )
        except Exception as exc:  # asyncpg raises OSError, PostgresError, ValueError, ...
            raise StoreError(f"cannot open database {description}: {_scrub(exc, dsn)}") from None
        store = cls(dsn, pool, resync_seconds=resync_seconds)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            await store._feed.connect()
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, StoreError) or not isinstance(exc, Exception):
                raise
            raise StoreError(f"cannot open database {description}: {_scrub(exc, dsn)}") from None
        store._feed.start()
        return store

    # -- reads ---------------------------------------------------------------------------------

    async def load(self) -> list[StoredJob]:
        """Return every job (current incarnation's log, consumed metrics, revision)."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            columns = ", ".join("e." + c for c in EVENT_COLUMNS_SQL.split(", "))
            events = await conn.fetch(
                f"SELECT e.job_id, {columns} "
                "FROM lrctl_events e JOIN lrctl_jobs j ON j.job_id = e.job_id "
                "AND e.version > j.created_version ORDER BY e.job_id, e.version"
            )
            metrics: dict[str, list[ConsumedMetric]] = {}
            for row in await conn.fetch(
                "SELECT job_id, step, value, schedule_version "
                "FROM lrctl_plateau_metrics ORDER BY job_id, step"
            ):
                metrics.setdefault(row[0], []).append(_metric_from_row(tuple(row)[1:]))
            jobs = await conn.fetch(
                f"SELECT {JOB_COLUMNS_SQL}, rev FROM lrctl_jobs ORDER BY job_id"
            )
        # One job's unreadable rows never stop the load (rows.stored_jobs), as with SQLite.
        return stored_jobs(
            ((tuple(row)[:-1], int(row["rev"])) for row in jobs),
            (tuple(row) for row in events),
            metrics,
        )

    async def since(self, job_id: str, rev: int) -> Delta | None:
        """Return what changed in ``job_id`` after ``rev`` (one consistent snapshot).

        Raises:
            Unavailable: the database cannot be reached.
        """
        with self._reachable():
            try:
                return await self._since(job_id, rev)
            except _UNREACHABLE:
                # A pooled connection the server closed (restart, idle timeout): a read is
                # safe to repeat, and the pool hands out a fresh connection.
                return await self._since(job_id, rev)

    async def _since(self, job_id: str, rev: int) -> Delta | None:
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(SELECT_JOB, job_id)
            if row is None or int(row["rev"]) == rev:
                return None
            return await _delta(conn, row, rev)

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        """Map the database's failures to the controller's errors (never INTERNAL): out of
        reach is UNAVAILABLE; a full disk RESOURCE_EXHAUSTED and a read-only database (or one
        out of other resources) UNAVAILABLE, with nothing written (the transaction rolled
        back) and reads still served, as with SQLite."""
        try:
            yield
        except asyncpg.exceptions.InternalClientError as exc:
            # asyncpg's own state, e.g. after the server ended the session mid-call: the
            # connection is dropped (_locked_conn) and a retry gets a fresh one.
            raise Unavailable(
                f"the session with the database {self.description} broke "
                f"({_scrub(exc, self._dsn)}); retry"
            ) from None
        except _UNREACHABLE as exc:
            # A commit cut off here may or may not have happened: the next write or refresh
            # of the job reads the database's answer (its revision) either way.
            raise Unavailable(
                f"cannot reach the database {self.description} ({_scrub(exc, self._dsn)}); retry"
            ) from None
        except asyncpg.exceptions.DiskFullError as exc:
            raise StorageFull(
                f"database {self.description} is full ({_scrub(exc, self._dsn)}); nothing was "
                f"written. Free disk space on the database server: writes resume by "
                f"themselves, reads are still served"
            ) from None
        except asyncpg.exceptions.ReadOnlySQLTransactionError as exc:
            raise StorageUnavailable(
                f"database {self.description} is read-only ({_scrub(exc, self._dsn)}); nothing "
                f"was written. Reads are still served"
            ) from None
        except asyncpg.exceptions.InsufficientResourcesError as exc:
            raise StorageUnavailable(
                f"database {self.description} is out of resources ({_scrub(exc, self._dsn)}); "
                f"nothing of this call was done; retry"
            ) from None

    # -- writes --------------------------------------------------------------------------------

    @asynccontextmanager
    async def lock(self, job_id: str, rev: int) -> AsyncIterator[_PgLock]:
        """Hold ``job_id``'s row lock in a transaction; ``.delta`` is what moved past ``rev``."""
        async with self._locked(job_id, rev, want_delta=True) as lk:
            yield lk

    async def commit(self, change: Change) -> None:
        """Write ``change`` in its own locked transaction (no staleness check by the caller)."""
        async with self._locked(change.job.job_id, 0, want_delta=False) as lk:
            await lk.commit(change)

    @asynccontextmanager
    async def _locked(self, job_id: str, rev: int, *, want_delta: bool) -> AsyncIterator[_PgLock]:
        if self._closed:
            raise StoreError(f"database {self.description} is closed")
        with self._reachable():
            async with self._locked_conn(job_id, rev, want_delta=want_delta) as lk:
                yield lk

    @asynccontextmanager
    async def _locked_conn(
        self, job_id: str, rev: int, *, want_delta: bool
    ) -> AsyncIterator[_PgLock]:
        async with self._pool.acquire() as conn:
            lk = _PgLock(self, conn, job_id)
            await conn.execute("BEGIN")
            try:
                row = await conn.fetchrow(SELECT_JOB + " FOR UPDATE", job_id)
                if row is None:
                    # No row to lock yet: serialize creations of this id instead, then look
                    # again (a replica may have created it while we waited).
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock($1, hashtext($2))", _JOB_LOCK_CLASS, job_id
                    )
                    row = await conn.fetchrow(SELECT_JOB + " FOR UPDATE", job_id)
                if row is not None:
                    lk.rev = int(row["rev"])
                    if want_delta and lk.rev != rev:
                        lk.delta = await _delta(conn, row, rev)
                yield lk
            finally:
                if not lk.committed and not conn.is_closed():
                    try:
                        await conn.execute("ROLLBACK")
                    except Exception:  # a session cut off mid-call: never hand it out again
                        conn.terminate()

    # -- other replicas' changes ---------------------------------------------------------------

    def subscribe(self, callback: Callable[[str, int], None]) -> None:
        """Call ``callback(job_id, rev)`` for every committed change (any replica), and once
        for every job now and after each reconnection of the listener (resync)."""
        self._feed.subscribe(callback)

    async def close(self) -> None:
        """Stop listening and close every connection; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._feed.close()
        await self._pool.close()


@contextlib.contextmanager
def _readable(job_id: str) -> Iterator[None]:
    """A row of ``job_id`` this release cannot read (a newer release's, a hand edit) fails the
    call FAILED_PRECONDITION, never INTERNAL; the job's older copy in memory stays."""
    try:
        yield
    except (ValueError, TypeError, KeyError) as exc:
        raise FailedPrecondition(
            f"job {job_id!r} has a row in the database this controller cannot read "
            f"({type(exc).__name__}: {exc}); expected rows this release reads (are all "
            f"replicas on the same release?)"
        ) from None


async def _delta(conn: Any, row: Any, rev: int) -> Delta:
    """What changed after ``rev`` in the job of ``row`` (read within the caller's snapshot)."""
    with _readable(row["job_id"]):
        return await _read_delta(conn, row, rev)


async def _read_delta(conn: Any, row: Any, rev: int) -> Delta:
    job_id, now = row["job_id"], int(row["rev"])
    full = rev <= 0 or rev < int(row["created_rev"]) or rev > now
    cond = "" if full else " AND rev > $3"
    args: list[Any] = [job_id, int(row["created_version"])] + ([] if full else [rev])
    events = [
        event_from_row(tuple(r))
        for r in await conn.fetch(
            f"SELECT {EVENT_COLUMNS_SQL} FROM lrctl_events"
            f" WHERE job_id = $1 AND version > $2{cond} ORDER BY version",
            *args,
        )
    ]
    mcond = "" if full else " AND rev > $2"
    margs: list[Any] = [job_id] + ([] if full else [rev])
    metrics = [
        _metric_from_row(tuple(r))
        for r in await conn.fetch(
            f"SELECT step, value, schedule_version FROM lrctl_plateau_metrics WHERE job_id = $1"
            f"{mcond} ORDER BY step",
            *margs,
        )
    ]
    record = job_from_row(tuple(row)[:-2])
    return Delta(record=record, rev=now, events=events, plateau_metrics=metrics, full=full)


def _metric_from_row(row: Sequence[Any]) -> ConsumedMetric:
    step, value, version = row
    return ConsumedMetric(int(step), math.nan if value is None else float(value), int(version))


def _scrub(exc: BaseException, dsn: str) -> str:
    """``exc`` as text without the password of ``dsn`` or ``PGPASSWORD`` (defence in depth:
    asyncpg's messages do not carry it, but a parse error may echo the URL)."""
    text = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
    secrets = [os.environ.get("PGPASSWORD", "")]
    try:
        parts = urlsplit(dsn)
        if parts.password:
            secrets += [parts.password, unquote(parts.password)]
    except ValueError:
        pass
    text = text.replace(dsn, redact_url(dsn))
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
