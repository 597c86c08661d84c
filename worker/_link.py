"""The worker's connection to the controller: attach, Watch in the background, report.

The training thread never waits on the network. Two daemon threads do the I/O:

* the watcher holds ``Watch(job, from_version)`` and stores the newest :class:`JobState` in
  a slot (one attribute, replaced whole); on a broken stream it reconnects with jittered
  exponential backoff and resumes from the last version it holds;
* the reporter (rank 0 only) sends the newest progress at most every
  ``report_interval_s``, plus the steps at which versions took effect, which it keeps until
  the controller has acknowledged them.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from lrctl.overrides import Event
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from lrctl.wire import CLIENT_CHANNEL_OPTIONS, auth_metadata, event_from_proto, events_from_proto
from worker._config import WorkerConfig, WorkerError

__all__ = ["ControllerLink", "JobState"]

log = logging.getLogger("lrctl.worker")

_KIND = lrctl_pb2.WatchResponse
# Report failures worth retrying; anything else is dropped (and logged).
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL})


@dataclass(frozen=True)
class JobState:
    """What a worker holds of its job: the spec, base LRs and the event log at ``version``."""

    version: int
    schedule: str
    base_lrs: tuple[float, ...]
    events: tuple[Event, ...] = ()
    finished: bool = False
    created_version: int = 1
    previous: JobState | None = None
    """The incarnation before a recreation (CreateJob with replace), until none needs it."""

    @classmethod
    def from_proto(cls, job: lrctl_pb2.Job) -> JobState:
        return cls(version=job.version, schedule=job.schedule, base_lrs=tuple(job.base_lrs),
                   events=events_from_proto(job.events),
                   finished=job.state == lrctl_pb2.JOB_STATE_FINISHED,
                   created_version=job.created_version or 1)

    def at(self, version: int) -> JobState:
        """Return the state as of ``version`` (events up to it).

        A version from before a recreation is answered by the previous incarnation, so a
        rank that already holds the new one agrees with a rank that does not yet.
        """
        if version < self.created_version and self.previous is not None:
            return self.previous.at(version)
        if version >= self.version:
            return self
        return dataclasses.replace(self, version=version,
                                   events=tuple(e for e in self.events if e.version <= version))


# (step, applied version, LRs): a plain tuple, built on the training thread every step.
_Progress = tuple[int, int, Sequence[float]]


class ControllerLink:
    """One rank's channel to the controller for one job."""

    def __init__(self, config: WorkerConfig, *, rank: int, schedule: str,
                 base_lrs: Sequence[float], verbose: bool = False) -> None:
        self.config = config
        self.rank = rank
        self._schedule = schedule
        self._base_lrs = list(base_lrs)
        self._verbose = verbose
        self._metadata = auth_metadata(config.token)
        self._channel = grpc.insecure_channel(config.address, options=list(CLIENT_CHANNEL_OPTIONS))
        self._stub = lrctl_pb2_grpc.LRControllerStub(self._channel)  # type: ignore[no-untyped-call]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._call: Any = None
        self.state: JobState | None = None  # the slot the training thread reads
        self.connected = False
        self._progress: _Progress | None = None
        self._sent: _Progress | None = None
        self._applied: collections.deque[tuple[int, int]] = collections.deque()
        self._plateau: collections.deque[tuple[int, float]] = collections.deque()

    # -- construction ------------------------------------------------------------------------

    def attach(self) -> JobState:
        """Create the job or attach to it; wait at most ``connect_timeout_s`` for the controller.

        Raises:
            WorkerError: unreachable controller, or the job exists with another schedule.
        """
        request = lrctl_pb2.CreateJobRequest(job_id=self.config.job, schedule=self._schedule,
                                             base_lrs=self._base_lrs, verbose=self._verbose)
        try:
            response = self._stub.CreateJob(request, timeout=self.config.connect_timeout_s,
                                            wait_for_ready=True, metadata=self._metadata)
        except grpc.RpcError as exc:
            self._channel.close()
            code, details = exc.code(), exc.details()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise WorkerError(
                    f"cannot reach the lrctl controller at {self.config.address} within "
                    f"{self.config.connect_timeout_s:g}s (set LRCTL_ADDRESS; is `lrctl serve` "
                    "running?)") from None
            raise WorkerError(f"cannot attach to job {self.config.job!r}: {code.name}: "
                              f"{details}") from None
        self.state = JobState.from_proto(response.job)
        self.connected = True
        return self.state

    def start(self) -> None:
        """Start the watcher (every rank) and the reporter (rank 0)."""
        targets = [self._watch_loop] + ([self._report_loop] if self.rank == 0 else [])
        for target in targets:
            name = f"lrctl-{target.__name__.strip('_')}-{self.config.job}"
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    # -- called by the training thread: slot writes only -------------------------------------

    def post_progress(self, step: int, version: int, lrs: Sequence[float]) -> None:
        """Publish progress; ``lrs`` must not be mutated afterwards (the caller's fresh list)."""
        self._progress = (step, version, lrs)

    def post_applied(self, version: int, step: int) -> None:
        self._applied.append((version, step))

    def post_plateau_metric(self, step: int, value: float) -> None:
        self._plateau.append((step, value))

    # -- shutdown ----------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads, flush the final report (rank 0), close the channel. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        for thread in self._threads:
            thread.join(timeout)
        if self.rank == 0:
            self._send_report(final=True, timeout=timeout)
        self._channel.close()

    # -- background threads ------------------------------------------------------------------

    def _watch_loop(self) -> None:
        delay = self.config.backoff_initial_s
        while not self._stop.is_set():
            state = self.state
            if state is None:  # attach() failed; nothing to follow
                return
            request = lrctl_pb2.WatchRequest(job_id=self.config.job, from_version=state.version,
                                             worker_id=f"rank-{self.rank}")
            try:
                call = self._call = self._stub.Watch(request, metadata=self._metadata)
                if self._stop.is_set():  # close() ran before it could cancel this call
                    call.cancel()
                    return
                for msg in call:
                    if not self.connected:
                        log.info("lrctl: reconnected to %s (job %s, version %d)",
                                 self.config.address, self.config.job, msg.version)
                    self.connected = True
                    delay = self.config.backoff_initial_s
                    if not self._on_message(msg):
                        call.cancel()  # a gap, or finished: do not leave the stream open
                        break
                if self._stop.is_set() or (self.state is not None and self.state.finished):
                    return
            except Exception as exc:  # this thread must outlive any error
                if self._stop.is_set():
                    return
                if not isinstance(exc, grpc.RpcError):
                    log.exception("lrctl: unexpected error following job %s; retrying",
                                  self.config.job)
                    self.connected = False
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.config.backoff_max_s)
                    continue
                if self._stop.is_set():
                    return
                if self.connected:
                    log.warning("lrctl: lost the controller at %s (%s); training continues on "
                                "the schedule held at version %d, reconnecting",
                                self.config.address, exc.code().name,
                                self.state.version if self.state else 0)
                self.connected = False
            self._stop.wait(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, self.config.backoff_max_s)

    def _on_message(self, msg: lrctl_pb2.WatchResponse) -> bool:
        """Update the slot; return False to reconnect (a gap) or stop (finished)."""
        state = self.state
        if state is None:
            return False
        if msg.kind in (_KIND.KIND_SNAPSHOT, _KIND.KIND_RESYNC, _KIND.KIND_FINISHED):
            new = JobState.from_proto(msg.job)
            if msg.kind == _KIND.KIND_FINISHED:
                new = dataclasses.replace(new, finished=True)
            if new.created_version > state.created_version:  # the job was recreated
                if len(new.base_lrs) != len(state.base_lrs):
                    log.error("lrctl: job %s was recreated with %d param groups; this optimizer "
                              "has %d: keeping the schedule held at version %d",
                              self.config.job, len(new.base_lrs), len(state.base_lrs),
                              state.version)
                    self._stop.set()  # nothing more to follow
                    return False
                new = dataclasses.replace(new, previous=state)
            elif state.previous is not None:
                new = dataclasses.replace(new, previous=state.previous)
            self.state = new
            return msg.kind != _KIND.KIND_FINISHED
        if msg.kind == _KIND.KIND_EVENT:
            event = event_from_proto(msg.event)
            if event.version <= state.version:
                return True  # already held
            if event.version != state.version + 1:
                return False  # a gap: resume from what we hold
            self.state = dataclasses.replace(state, version=event.version,
                                             events=(*state.events, event))
            return True
        if msg.kind == _KIND.KIND_HEARTBEAT:
            return msg.version <= state.version  # behind: resume to catch up
        return True

    def _report_loop(self) -> None:
        while not self._stop.wait(self.config.report_interval_s):
            try:
                self._send_report()
            except Exception:  # this thread must outlive any error
                log.exception("lrctl: unexpected error reporting job %s", self.config.job)

    def _send_report(self, final: bool = False, timeout: float = 5.0) -> None:
        progress = self._progress
        applied = _drain(self._applied)
        plateau = _drain(self._plateau)
        if progress is None or (progress is self._sent and not applied and not plateau
                                and not final):
            return
        request = lrctl_pb2.ReportRequest(
            job_id=self.config.job, rank=self.rank, step=progress[0],
            applied_version=progress[1], lrs=progress[2], final=final,
            applied=[lrctl_pb2.AppliedVersion(version=v, effective_step=s) for v, s in applied],
            plateau_metrics=[lrctl_pb2.PlateauMetric(step=s, value=x) for s, x in plateau],
        )
        try:
            self._stub.Report(request, timeout=timeout, metadata=self._metadata)
            self._sent = progress
        except grpc.RpcError as exc:
            code = exc.code()
            if code in _TRANSIENT:
                # Keep what must arrive (effective steps, plateau metrics) for the next one.
                self._applied.extendleft(reversed(applied))
                self._plateau.extendleft(reversed(plateau))
            else:  # retrying cannot help, and would block every later report
                log.warning("lrctl: the controller refused a report for job %s (%s: %s); "
                            "dropped it", self.config.job, code.name, exc.details())


def _drain(queue: collections.deque[Any]) -> list[Any]:
    out = []
    while True:
        try:
            out.append(queue.popleft())
        except IndexError:
            return out
