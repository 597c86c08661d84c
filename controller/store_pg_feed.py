"""The PostgreSQL store's change feed: other replicas' committed changes, as they happen.

Every commit sends ``NOTIFY lrctl_jobs, '<job_id> <rev>'`` (:data:`CHANNEL`); a
:class:`ChangeFeed` holds one LISTEN connection and calls its subscribers for each. A replica
whose listener connection drops reconnects and resyncs every job from the database (and checks
every :data:`controller.store_pg.RESYNC_SECONDS` anyway), so a missed notification delays a
change, never loses it. Used by :class:`controller.store_pg.PgStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

__all__ = ["CHANNEL", "ChangeFeed"]

_log = logging.getLogger("lrctl.controller.store")

#: The LISTEN/NOTIFY channel; payload ``"<job_id> <rev>"`` (job ids hold no spaces).
CHANNEL = "lrctl_jobs"


class ChangeFeed:
    """The LISTEN connection of one replica and its subscribers.

    Args:
        dsn: The database URL (with its password: the listener connects with it).
        pool: The store's connection pool (resyncs read through it).
        description: The URL without its password (logs).
        resync_seconds: Even with a healthy listener, every job's revision is compared this
            often.
        scrub: An exception as text without the password.
    """

    def __init__(
        self,
        dsn: str,
        pool: Any,
        description: str,
        resync_seconds: float,
        scrub: Callable[[BaseException], str],
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self.description = description
        self._resync_seconds = resync_seconds
        self._scrub = scrub
        self._callbacks: list[Callable[[str, int], None]] = []
        self._listener: Any = None
        self._listen_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._lost = asyncio.Event()
        self._closed = False

    async def connect(self) -> None:
        """Open the LISTEN connection (raises what asyncpg raises)."""
        await self._connect_listener()

    def start(self) -> None:
        """Keep the LISTEN connection alive from now on (:meth:`_keep_listening`)."""
        self._listen_task = asyncio.ensure_future(self._keep_listening())

    def subscribe(self, callback: Callable[[str, int], None]) -> None:
        """Call ``callback(job_id, rev)`` for every committed change (any replica), and once
        for every job now and after each reconnection of the listener (resync)."""
        self._callbacks.append(callback)
        self._tasks.add(task := asyncio.ensure_future(self._resync_quietly()))
        task.add_done_callback(self._tasks.discard)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        job_id, _, rev = payload.rpartition(" ")
        if job_id and rev.isdigit():
            self._announce(job_id, int(rev))

    def _announce(self, job_id: str, rev: int) -> None:
        for callback in self._callbacks:
            try:
                callback(job_id, rev)
            except Exception:  # one broken subscriber must not starve the others
                _log.exception("store change callback failed for job %s", job_id)

    async def _connect_listener(self) -> None:
        conn = await asyncpg.connect(
            self._dsn, server_settings={"application_name": "lrctl-controller-listener"}
        )
        await conn.add_listener(CHANNEL, self._on_notify)
        # A closed connection (server restart, network) wakes the keeper at once.
        conn.add_termination_listener(lambda _conn: self._lost.set())
        self._lost.clear()
        self._listener = conn

    async def _resync(self) -> None:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch("SELECT job_id, rev FROM lrctl_jobs")
        for row in rows:
            self._announce(row["job_id"], int(row["rev"]))

    async def _resync_quietly(self) -> None:
        try:
            await self._resync()
        except Exception as exc:
            _log.warning("resync from %s failed: %s", self.description, self._scrub(exc))

    async def _keep_listening(self) -> None:
        """Keep the LISTEN connection alive; after reconnecting, resync every job."""
        backoff = 0.1
        while not self._closed:
            conn = self._listener
            try:
                if conn is None or conn.is_closed():
                    await self._connect_listener()
                    _log.info("listening on %s again; resyncing every job", self.description)
                    await self._resync()
                    conn = self._listener
                    backoff = 0.1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._lost.wait(), self._resync_seconds)
                # A query proves the connection is alive (a half-open TCP connection would
                # otherwise swallow notifications silently), then compare every revision.
                await conn.fetchval("SELECT 1", timeout=10)
                await self._resync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return
                _log.warning(
                    "lost the change feed of %s (%s); reconnecting",
                    self.description,
                    self._scrub(exc),
                )
                if self._listener is not None:
                    with contextlib.suppress(Exception):
                        self._listener.terminate()
                    self._listener = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def close(self) -> None:
        """Stop listening: cancel the keeper and pending resyncs, close the connection."""
        self._closed = True
        for task in [self._listen_task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=5)
