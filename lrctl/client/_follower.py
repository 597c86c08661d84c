"""The one reconnecting Watch follower, used by the workers and by ``lrctl watch``."""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lrctl.client._client import Client, WatchStream
from lrctl.client._errors import ClientError
from lrctl.constants import DEFAULT_BACKOFF_INITIAL_S, DEFAULT_BACKOFF_MAX_S
from lrctl.model import Job, JobState, WatchKind, WatchMessage

__all__ = ["FollowUpdate", "WatchFollower"]


@dataclass(frozen=True)
class FollowUpdate:
    """One step of a :class:`WatchFollower`: a message applied, or the connection lost.

    Attributes:
        job: The job held after this step (None only before the first snapshot).
        previous: The job held before it; differs from ``job`` in ``created_version`` when
            the job was recreated (CreateJob with ``replace``).
        message: The message applied; None when the connection was lost.
        error: Why the stream broke (``message`` is None).
        retry_in: Seconds until the next attempt (``message`` is None).
        reconnected: The first message after a lost connection.
    """

    job: Job | None
    previous: Job | None = None
    message: WatchMessage | None = None
    error: ClientError | None = None
    retry_in: float = 0.0
    reconnected: bool = False

    @property
    def lost(self) -> bool:
        """The stream broke; the follower resumes after :attr:`retry_in` seconds."""
        return self.message is None

    @property
    def finished(self) -> bool:
        """The job is finished; the follower ends after this update."""
        return self.job is not None and self.job.finished


class WatchFollower:
    """Follows one job across disconnects: holds the newest :class:`~lrctl.model.Job`.

    It opens ``Watch(job, from_version)`` with the version it holds, applies every message
    (SNAPSHOT and RESYNC replace the job, EVENT appends one, HEARTBEAT says nothing is new,
    FINISHED ends it) and, when the stream breaks, reconnects after a jittered exponential
    backoff (``backoff_initial_s`` doubling up to ``backoff_max_s``, each wait drawn from
    50-150% of the step), resuming from the version it holds. An event that skips a version,
    or a heartbeat ahead of it, is a gap: it resumes after the shortest backoff to fetch
    what it missed.

    Iterate it (on any one thread) for a :class:`FollowUpdate` per message applied and per
    connection lost; iteration ends when the job is finished or after :meth:`close`, which
    any thread may call. :attr:`job` is safe to read from any thread (it is replaced whole).

    Args:
        client: The client whose channel it uses.
        job_id: The job to follow.
        job: The job already held (e.g. from CreateJob); following resumes after its version.
        worker_id: Set by training ranks only (``rank-0``...): counts towards ``workers``.
        retry: Whether to reconnect after an error; by default after transient ones
            (``error.transient``); other errors end the iteration by raising.
        raise_first: Raise the first error if no message ever arrived (the CLI: a wrong
            address should fail at once), whatever ``retry`` says.
        backoff_initial_s: First reconnect delay.
        backoff_max_s: Longest reconnect delay.
    """

    def __init__(
        self,
        client: Client,
        job_id: str,
        *,
        job: Job | None = None,
        worker_id: str = "",
        retry: Callable[[ClientError], bool] | None = None,
        raise_first: bool = False,
        backoff_initial_s: float = DEFAULT_BACKOFF_INITIAL_S,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
    ) -> None:
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError(
                f"expected 0 < backoff_initial_s <= backoff_max_s, got "
                f"{backoff_initial_s} and {backoff_max_s}"
            )
        self.client = client
        self.job_id = job_id
        self.job: Job | None = job
        self.worker_id = worker_id
        self.connected = False
        self._retry = retry if retry is not None else _transient
        self._raise_first = raise_first
        self._initial = backoff_initial_s
        self._max = backoff_max_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._ever_connected = False

    @property
    def version(self) -> int:
        """The version held; 0 before any."""
        job = self.job
        return 0 if job is None else job.version

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Stop following: the iteration ends. Safe from any thread, more than once."""
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()

    def __iter__(self) -> Iterator[FollowUpdate]:
        delay = self._initial
        lost = False
        while not self._stop.is_set():
            if self.job is not None and self.job.finished:
                return
            error: ClientError | None = None
            stream: WatchStream | None = None
            try:
                stream = self.client.watch(self.job_id, self.version, worker_id=self.worker_id)
                with self._lock:
                    self._stream = stream
                if self._stop.is_set():  # close() ran before it could cancel this stream
                    return
                for message in stream:
                    update = self._apply(message)
                    if update is None:  # a gap: resume from what is held
                        break
                    if lost or not self.connected:
                        update = dataclasses.replace(update, reconnected=self._ever_connected)
                    lost = False
                    self.connected = self._ever_connected = True
                    delay = self._initial
                    yield update
                    if update.finished:
                        return
                else:
                    if self._stop.is_set():
                        return
                    error = ClientError(
                        "UNAVAILABLE", "the Watch stream ended", self.client.address
                    )
            except ClientError as exc:
                error = exc
            finally:
                with self._lock:
                    self._stream = None
                if stream is not None:
                    stream.cancel()  # also when the consumer stops iterating
            if self._stop.is_set():
                return
            if error is None:  # a gap: resume soon (the shortest backoff; the server is up)
                if self._stop.wait(self._initial * random.uniform(0.5, 1.5)):
                    return
                continue
            if not self._retry(error) or (self._raise_first and not self._ever_connected):
                raise error
            wait = delay * random.uniform(0.5, 1.5)
            delay = min(delay * 2, self._max)
            self.connected = False
            lost = True
            yield FollowUpdate(job=self.job, previous=self.job, error=error, retry_in=wait)
            if self._stop.wait(wait):
                return

    def _apply(self, message: WatchMessage) -> FollowUpdate | None:
        """Fold ``message`` into the held job; None for a gap (resume to fill it)."""
        held = self.job
        kind = message.kind
        if kind in (WatchKind.SNAPSHOT, WatchKind.RESYNC, WatchKind.FINISHED):
            new = message.job if message.job is not None else held
            if new is None:
                return None
            if kind is WatchKind.FINISHED and not new.finished:
                new = dataclasses.replace(new, state=JobState.FINISHED)
        elif kind is WatchKind.EVENT:
            event = message.event
            if held is None or event is None:
                return None
            if event.version <= held.version:  # already held: nothing changes
                return FollowUpdate(job=held, previous=held, message=message)
            if event.version != held.version + 1:
                return None
            new = dataclasses.replace(held, version=event.version, events=(*held.events, event))
        else:  # HEARTBEAT (or a kind this version ignores)
            if held is not None and message.version > held.version:
                return None  # behind: resume to catch up
            new = held
        self.job = new
        return FollowUpdate(job=new, previous=held, message=message)


def _transient(error: ClientError) -> bool:
    return error.transient
