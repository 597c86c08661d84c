"""What the controller needs from a database, and how ``--db`` picks one.

Two implementations:

* :class:`controller.store.Store`: one SQLite file, exclusive to one controller process
  (the embedded default: ``--db lrctl.db``).
* :class:`controller.store_pg.PgStore`: PostgreSQL, shared by several controller replicas
  (``--db postgresql://USER@HOST:PORT/DB``).

A *shared* store can be written by other processes at any time, so the service treats the
database as the source of truth: every mutation of a job runs inside :meth:`JobStore.lock`
(a transaction holding the job's row lock), first applies what other replicas wrote since
the revision it holds (:class:`Delta`), then decides and commits. Revisions (``rev``) count
the writes of one job row; they are the store's bookkeeping, never shown to clients.
Changes committed by any replica are announced through :meth:`JobStore.subscribe`.

For SQLite, ``lock`` is a no-op with ``delta = None`` and ``subscribe`` never calls back:
the single-process code path is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from controller.rows import Change, ConsumedMetric, StoredJob
from controller.store import Store
from lrctl.model import Job
from lrctl.overrides import Event

__all__ = [
    "Delta",
    "JobLock",
    "JobStore",
    "is_postgres_url",
    "open_store",
    "redact_url",
]


@dataclass(frozen=True)
class Delta:
    """What changed in one job's rows after a revision this process holds.

    Attributes:
        record: The job's row now (no events: they are in ``events``).
        rev: The row's revision now.
        events: Events of the current incarnation added or updated (effective step set)
            after the revision asked about, in version order; all of them when ``full``.
        plateau_metrics: Metrics consumed after that revision (all when ``full``), step order.
        full: The job is new to the asking process or was recreated since: ``events`` and
            ``plateau_metrics`` replace everything it holds about the job.
    """

    record: Job
    rev: int
    events: Sequence[Event]
    plateau_metrics: Sequence[ConsumedMetric]
    full: bool


class JobLock(Protocol):
    """A write transaction holding one job's row lock (see :meth:`JobStore.lock`)."""

    @property
    def delta(self) -> Delta | None:
        """The job as the database holds it when it moved past the caller's revision;
        else None."""
        ...

    @property
    def rev(self) -> int:
        """The job's revision inside this transaction (0: no row yet)."""
        ...

    async def commit(self, change: Change) -> int:
        """Write ``change`` and commit (durably, announced to every replica).

        Returns:
            The job's new revision.
        """
        ...


@runtime_checkable
class JobStore(Protocol):
    """The database behind one controller process."""

    @property
    def shared(self) -> bool:
        """Other controller processes write the same database (PostgreSQL replicas)."""
        ...

    @property
    def description(self) -> str:
        """Where it is, printable (a PostgreSQL URL without its password)."""
        ...

    async def load(self) -> list[StoredJob]:
        """Return every job: its row, current log, consumed plateau metrics and revision."""
        ...

    async def commit(self, change: Change) -> None:
        """Write one job's ``change`` atomically; returns once it is durable."""
        ...

    def lock(self, job_id: str, rev: int) -> AbstractAsyncContextManager[JobLock]:
        """Open a write transaction on ``job_id`` holding its row lock until it ends.

        Args:
            job_id: The job (which may not exist yet: creation is serialized too).
            rev: The job's revision the caller holds (0: none).

        Leaving the block without :meth:`JobLock.commit` rolls back.
        """
        ...

    async def since(self, job_id: str, rev: int) -> Delta | None:
        """Return what changed in ``job_id`` after ``rev`` (None: nothing, or no such job)."""
        ...

    def subscribe(self, callback: Callable[[str, int], None]) -> None:
        """Call ``callback(job_id, rev)`` on the event loop for every change any process
        commits; after a lost connection, for every job (resync). Never for SQLite."""
        ...

    async def close(self) -> None:
        """Release the database; safe to call twice."""
        ...


_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(db: str) -> bool:
    """True when ``--db`` names a PostgreSQL database rather than a SQLite file."""
    return db.startswith(_SCHEMES)


def redact_url(db: str) -> str:
    """Return ``db`` safe to print: a PostgreSQL URL loses its password (netloc and query)."""
    if not is_postgres_url(db):
        return db
    try:
        parts = urlsplit(db)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}@{hostport}"
        query = re.sub(r"(^|&)(password|passfile)=[^&]*", r"\1\2=***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return db.split("://", 1)[0] + "://***"


async def open_store(db: str) -> JobStore:
    """Open (and migrate) the store ``--db`` names.

    Args:
        db: A SQLite file path, or ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`` (the
            password may also come from ``PGPASSWORD`` or ``PGPASSFILE``).

    Raises:
        StoreError: the database cannot be opened or migrated (messages never hold a
            password).
    """
    if is_postgres_url(db):
        from controller.store_pg import PgStore  # asyncpg: only needed for PostgreSQL

        return await PgStore.open(db)
    return await Store.open(db)
