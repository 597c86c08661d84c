"""The watch hub: per-job change notification, Watch streams with heartbeats, stream counts.

A stream follows one job (etcd-style): a snapshot (or RESYNC when the resume point is gone),
every later event in version order, a heartbeat after a quiet interval, and FINISHED when the
job is finished. Writers call :meth:`WatchHub.notify` after a change is durable and in
memory; no stream ever polls. Plain asyncio; never imports grpc.

Fan-out costs what the transport costs: every stream of a job is handed the *same*
:class:`WatchMessage` object for an event, or a heartbeat at one version (so an encoder can
encode it once for all of them),
and a stream waits on the job's one shared future, with a heartbeat timer armed once per
quiet interval: no task of its own per event (``asyncio.wait_for`` would make one).
"""

from __future__ import annotations

import asyncio
import random
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import AsyncGenerator, Callable

from controller.errors import ResourceExhausted, Unavailable
from lrctl.constants import DEFAULT_MAX_WATCH_STREAMS, DEFAULT_MAX_WATCH_STREAMS_PER_JOB
from lrctl.model import Job, WatchKind, WatchMessage
from lrctl.overrides import Event, event_version

__all__ = ["WatchHub"]

#: Event messages kept per watched job for its streams to share (the latest versions).
SHARED_MESSAGES = 64


class WatchHub:
    """Every open Watch stream of one controller.

    Args:
        heartbeat_seconds: Idle streams get a heartbeat about this often (jittered down by
            up to 25%, so thousands of streams do not beat in step).
        on_count: Called with a job id whenever its stream counts change.
        max_streams_per_job: Streams one job may have open at once.
        max_streams: Streams open at once, all jobs together.
    """

    def __init__(
        self,
        heartbeat_seconds: float,
        on_count: Callable[[str], None] | None = None,
        *,
        max_streams_per_job: int = DEFAULT_MAX_WATCH_STREAMS_PER_JOB,
        max_streams: int = DEFAULT_MAX_WATCH_STREAMS,
    ) -> None:
        self._heartbeat = heartbeat_seconds
        self._on_count = on_count
        self._changed: dict[str, asyncio.Future[None]] = {}
        self._messages: dict[str, dict[int, WatchMessage]] = {}  # job -> version -> message
        self._beats: dict[str, WatchMessage] = {}  # job -> its latest heartbeat
        self._finals: dict[str, WatchMessage] = {}  # job -> its FINISHED message
        self._streams: Counter[str] = Counter()
        self._workers: dict[str, Counter[str]] = {}
        self._closing = False
        self._max_per_job, self._max_total = max_streams_per_job, max_streams
        self._total = 0

    def notify(self, job_id: str) -> None:
        """Wake every stream of ``job_id`` (after its change is in memory)."""
        old = self._changed.pop(job_id, None)
        if old is not None and not old.done():
            old.set_result(None)

    def close(self) -> None:
        """End every stream with :class:`Unavailable` (shutdown); idempotent."""
        self._closing = True
        for job_id in list(self._changed):
            self.notify(job_id)

    def streams(self, job_id: str) -> int:
        """Open Watch streams on ``job_id`` (any client)."""
        return self._streams[job_id]

    def workers(self, job_id: str) -> int:
        """Distinct non-empty worker ids with at least one open stream on ``job_id``."""
        return len(self._workers.get(job_id, ()))

    async def follow(
        self,
        job_id: str,
        from_version: int,
        worker_id: str,
        current: Callable[[], Job],
        snapshot: Callable[[], Job],
    ) -> AsyncGenerator[WatchMessage, None]:
        """Stream one job until it is finished, the caller goes away or the hub closes.

        Args:
            job_id: The job.
            from_version: The last version the caller holds; 0 for a fresh snapshot.
            worker_id: Counted in :meth:`workers` while the stream is open (empty: not).
            current: Returns the job as stored now, with its log.
            snapshot: Returns the job as a client sees it (SNAPSHOT, RESYNC, FINISHED).

        Raises:
            Unavailable: the hub is closing (reconnect and resume).
            ResourceExhausted: the job, or the hub, has as many streams open as allowed.
        """
        self._admit(job_id)
        self._count(job_id, worker_id, +1)
        sleeper: _Sleeper | None = None
        try:
            sent = from_version
            if from_version == 0:
                head = snapshot()
                yield WatchMessage(WatchKind.SNAPSHOT, head.version, job=head)
                sent = head.version
            sleeper = _Sleeper(self._next_heartbeat())
            while True:
                if self._closing:
                    raise Unavailable("controller is shutting down; reconnect and resume")
                # Taken before reading the state, so a change in between is not missed.
                changed = self._changed.get(job_id)
                if changed is None:
                    changed = self._changed[job_id] = asyncio.get_running_loop().create_future()
                job = current()
                if sent > job.version or sent < job.created_version:
                    # The resume point is gone: ahead of us, or from an earlier incarnation.
                    head = snapshot()
                    yield WatchMessage(WatchKind.RESYNC, head.version, job=head)
                    sent = head.version
                    sleeper.deadline = self._next_heartbeat()
                    continue
                events = job.events
                if events and events[-1].version > sent:  # (no search when none is new)
                    for event in events[bisect_right(events, sent, key=event_version) :]:
                        yield self._message(job_id, event)
                        sent = event.version
                    sleeper.deadline = self._next_heartbeat()
                    continue
                if job.finished:
                    yield self._final(job_id, job.version, snapshot)
                    return
                sent = max(sent, job.version)
                if not await sleeper.wait(changed):
                    yield self._beat(job_id, current().version)
                    sleeper.deadline = self._next_heartbeat()
        finally:
            if sleeper is not None:
                sleeper.close()
            self._count(job_id, worker_id, -1)

    def _message(self, job_id: str, event: Event) -> WatchMessage:
        """The EVENT message of ``event``: one object for every stream of the job."""
        shared = self._messages.get(job_id)
        if shared is None:
            shared = self._messages[job_id] = {}
        message = shared.get(event.version)
        if message is None or message.event is not event:  # new, or its effective step set
            message = shared[event.version] = WatchMessage(
                WatchKind.EVENT, event.version, event=event
            )
            if len(shared) > SHARED_MESSAGES:
                del shared[min(shared)]
        return message

    def _admit(self, job_id: str) -> None:
        """Refuse a stream past the per-job or the total limit."""
        if self._streams[job_id] >= self._max_per_job:
            raise ResourceExhausted(
                f"job {job_id!r} has {self._streams[job_id]} Watch streams open, the most one "
                f"job may have (lrctl serve --max-watch-streams-per-job); close one first"
            )
        if self._total >= self._max_total:
            raise ResourceExhausted(
                f"this controller has {self._total} Watch streams open, the most it serves "
                f"(lrctl serve --max-watch-streams); close one first"
            )

    def _beat(self, job_id: str, version: int) -> WatchMessage:
        """A HEARTBEAT at ``version``: one object for every stream of the job at that version."""
        beat = self._beats.get(job_id)
        if beat is None or beat.version != version:
            beat = self._beats[job_id] = WatchMessage(WatchKind.HEARTBEAT, version)
        return beat

    def _final(self, job_id: str, version: int, snapshot: Callable[[], Job]) -> WatchMessage:
        """The FINISHED message at ``version``: the job's final state, viewed once for every
        stream of the job (a finish wakes them all at once)."""
        final = self._finals.get(job_id)
        if final is None or final.version != version:
            head = snapshot()
            final = self._finals[job_id] = WatchMessage(WatchKind.FINISHED, head.version, job=head)
        return final

    def _count(self, job_id: str, worker_id: str, delta: int) -> None:
        self._streams[job_id] += delta
        self._total += delta
        if self._streams[job_id] <= 0:
            del self._streams[job_id]
            self._messages.pop(job_id, None)
            self._beats.pop(job_id, None)
            self._finals.pop(job_id, None)
        if worker_id:
            workers = self._workers.setdefault(job_id, Counter())
            workers[worker_id] += delta
            if workers[worker_id] <= 0:
                del workers[worker_id]
            if not workers:
                del self._workers[job_id]
        if self._on_count is not None:
            self._on_count(job_id)

    def _next_heartbeat(self) -> float:
        return time.monotonic() + self._heartbeat * random.uniform(0.75, 1.0)


class _Sleeper:
    """One stream's wait for its job's next change or its heartbeat deadline.

    The heartbeat timer is armed once per quiet interval, not once per wait: a stream that
    sent events since only moves :attr:`deadline`, and the timer, when it fires early, arms
    itself again for the rest. A wait then costs one future and no task.
    """

    __slots__ = ("_at", "_loop", "_timer", "_woken", "deadline")

    def __init__(self, deadline: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0
        self._woken: asyncio.Future[None] | None = None
        self.deadline = deadline  # time.monotonic() of the next heartbeat

    async def wait(self, changed: asyncio.Future[None]) -> bool:
        """Wait until ``changed`` is done (True) or the deadline passes (False)."""
        if changed.done():
            return True
        if self._timer is not None and self._at > self.deadline:
            self._timer.cancel()  # the deadline moved earlier (jitter): arm again
            self._timer = None
        if self._timer is None:
            self._arm()
        woken = self._woken = self._loop.create_future()
        changed.add_done_callback(self._wake)
        try:
            await woken
        finally:
            self._woken = None
            changed.remove_done_callback(self._wake)
        return changed.done()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self._at = self.deadline
        self._timer = self._loop.call_later(max(self.deadline - time.monotonic(), 0.0), self._fire)

    def _fire(self) -> None:
        self._timer = None
        if time.monotonic() < self.deadline:
            self._arm()  # events were sent since it was armed: the rest of the interval
        else:
            self._wake()

    def _wake(self, _: object = None) -> None:
        woken = self._woken
        if woken is not None and not woken.done():
            woken.set_result(None)
