"""Every job in memory, in step with the store: one writer per job, writes a cancel cannot split.

:class:`JobTable` owns the in-memory jobs (:class:`~controller.jobs.JobEntry`), the per-job
locks and the store. A mutation runs inside :meth:`JobTable.lock` and persists with
:meth:`JobTable.write`, which commits and only then applies the change in memory.

With a shared store (PostgreSQL replicas) the lock is also the job's row-lock transaction:
what other replicas wrote since the revision this process holds is applied first
(:func:`controller.replica.apply_delta`), so every decision is made on the database's state;
and the store's change feed refreshes the jobs other replicas change (:meth:`JobTable.sync`).
The service is told about every job taken from the database (``on_synced``) to update its
metrics and wake watchers. With SQLite all of that is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TypeVar

from controller.errors import NotFound
from controller.jobs import JobEntry, describe_error
from controller.plateau import JobPlateau
from controller.replica import apply_delta
from controller.rows import Change, StoredJob
from controller.store_api import Delta, JobLock, JobStore
from lrctl.model import check_job_id

__all__ = ["JobTable"]

T = TypeVar("T")

_log = logging.getLogger("lrctl.controller.service")

#: ``on_synced(entry, was_running, fresh)``: a job was taken from the database; it was running
#: before; ``fresh``: new to this process or reloaded whole (recreated by another replica).
Synced = Callable[[JobEntry, bool, bool], None]


class JobTable:
    """The controller's jobs and the discipline of writing them.

    Args:
        store: The open database.
        on_synced: Called after a job was brought up to what the database holds.
    """

    def __init__(self, store: JobStore, on_synced: Synced) -> None:
        self.store = store
        self.jobs: dict[str, JobEntry] = {}
        self._on_synced = on_synced
        # One lock per job id: mutations of a job are serialized.
        self._locks: dict[str, asyncio.Lock] = {}
        # Shared store (replicas): each job's revision held here, the open row-lock
        # transaction of each job being mutated, and the refreshes the change feed started.
        self._revs: dict[str, int] = {}
        self._txn: dict[str, JobLock] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._stale: set[str] = set()
        self._lock_users: Counter[str] = Counter()

    def load(self, stored: Iterable[StoredJob]) -> list[JobEntry]:
        """Take the jobs the store loaded at startup; follow the change feed if shared.

        One job never keeps the others from loading: a job whose bookkeeping cannot be
        built (a spec this release refuses) is loaded marked ``broken`` (logged at ERROR).
        """
        entries = []
        for item in stored:
            top = max([item.record.version, *(e.version for e in item.events)])
            job = replace(item.record, version=top, events=tuple(item.events))
            try:
                if item.problem:
                    raise ValueError(item.problem)
                entry = JobEntry(job, JobPlateau(job, item.events, item.plateau_metrics))
            except Exception as exc:  # any value of any job: the others must load
                entry = JobEntry(job, JobPlateau.idle(job), broken=describe_error(exc))
                _log.error(
                    "job %s cannot be evaluated and is served marked: %s", job.job_id, entry.broken
                )
            self.jobs[job.job_id] = entry
            self._revs[job.job_id] = item.rev
            entries.append(entry)
        if self.store.shared:
            self.store.subscribe(self._on_change)
        return entries

    def get(self, job_id: str) -> JobEntry:
        """Return the job ``job_id``.

        Raises:
            JobIdError: malformed job id.
            NotFound: no such job.
        """
        check_job_id(job_id)
        entry = self.jobs.get(job_id)
        if entry is None:
            raise NotFound(f"no job {job_id!r}; create it with CreateJob (lrctl job create)")
        return entry

    @asynccontextmanager
    async def lock(self, job_id: str, *, create: bool = False) -> AsyncIterator[None]:
        """Serialize the mutations of ``job_id`` (``create``: the job need not exist yet).

        With a shared store the block also runs inside the job's row-lock transaction, after
        the job was brought up to the database's state, and :meth:`write` commits in it: every
        decision (next version, ``expected_version``, effective steps, plateau reductions) is
        made on the database's state, once, whichever replica received the call.
        """
        if not self.store.shared:
            if not create:
                self.get(job_id)
            # A refused CreateJob (past --max-jobs, another spec) leaves no lock behind.
            async with self._job_lock(job_id):
                yield
            return
        async with (
            self._job_lock(check_job_id(job_id)),
            self.store.lock(job_id, self._revs.get(job_id, 0)) as txn,
        ):
            if txn.delta is not None:
                self._apply(job_id, txn.delta)
            self._txn[job_id] = txn
            try:
                yield
            finally:
                del self._txn[job_id]

    async def write(self, change: Change, apply: Callable[[], T]) -> T:
        """Commit ``change``, then ``apply`` it in memory, as one step a cancel cannot split.

        A cancelled RPC (deadline, client gone, shutdown) must not leave a commit on disk
        that memory never saw: the next version would collide with it. So the write runs as
        its own task; a cancel waits for it to finish (holding the job's lock) and then
        propagates.
        """

        async def commit_and_apply() -> T:
            txn = self._txn.get(change.job.job_id)
            if txn is None:
                await self.store.commit(change)
            else:
                self._revs[change.job.job_id] = await txn.commit(change)
            return apply()

        task = asyncio.ensure_future(commit_and_apply())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                await asyncio.wait([task])
            raise

    async def sync(self, job_id: str) -> None:
        """Bring ``job_id`` up to what the shared database holds now (no-op for SQLite)."""
        if not self.store.shared:
            return
        async with self._job_lock(check_job_id(job_id)):
            delta = await self.store.since(job_id, self._revs.get(job_id, 0))
            if delta is not None:
                self._apply(job_id, delta)

    def close(self) -> None:
        """Stop the refreshes the change feed started; idempotent."""
        for task in self._refreshing.values():
            task.cancel()

    def _on_change(self, job_id: str, rev: int) -> None:
        """The store's change feed: some replica committed revision ``rev`` of ``job_id``."""
        if self._revs.get(job_id, 0) >= rev:
            return  # our own write, or already seen
        if job_id in self._refreshing:
            self._stale.add(job_id)  # the running refresh goes round once more
            return
        task = asyncio.ensure_future(self._refresh(job_id))
        self._refreshing[job_id] = task
        task.add_done_callback(lambda _: self._refreshing.pop(job_id, None))

    async def _refresh(self, job_id: str) -> None:
        try:
            while True:
                self._stale.discard(job_id)
                await self.sync(job_id)
                if job_id not in self._stale:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store resyncs after reconnecting; say why meanwhile
            _log.warning("cannot refresh job %s from the database: %s", job_id, exc)

    def _apply(self, job_id: str, delta: Delta) -> None:
        """Take what other replicas wrote (:func:`controller.replica.apply_delta`)."""
        old = self.jobs.get(job_id)
        was_running = old is not None and old.running  # before: apply_delta updates in place
        entry, _ = apply_delta(old, delta)
        self.jobs[job_id] = entry
        self._revs[job_id] = delta.rev
        self._on_synced(entry, was_running, old is None or delta.full)

    @asynccontextmanager
    async def _job_lock(self, job_id: str) -> AsyncIterator[None]:
        """Hold ``job_id``'s asyncio lock; forget the lock after its last user if no such
        job exists, so unknown ids cannot grow the dict."""
        lock = self._locks.setdefault(job_id, asyncio.Lock())
        self._lock_users[job_id] += 1
        try:
            async with lock:
                yield
        finally:
            self._lock_users[job_id] -= 1
            if not self._lock_users[job_id]:
                del self._lock_users[job_id]
                if job_id not in self.jobs:
                    self._locks.pop(job_id, None)
