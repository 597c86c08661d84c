"""The controller's domain service: jobs, override logs, reports and watches.

Plain Python and asyncio; never imports grpc (the servicer adapts it). Every job lives in
memory and in the :class:`~controller.store.Store`. A mutation is serialized per job, written
through to SQLite, and only then applied in memory and announced to watchers, so what a
client was told is always on disk, and versions per job strictly increase across restarts.

Decisions documented in docs/controller.md:

* ``create_job`` on an existing job with a *different* spec or base LRs and ``replace=True``
  recreates the job: new spec and base LRs, empty log, step -1, the version keeps counting
  up. Watchers of the old incarnation get a RESYNC. A finished job is recreated the same
  way; without ``replace`` it refuses (FAILED_PRECONDITION).
* ``finish_job`` is idempotent: finishing a finished job returns it unchanged.
* A ReduceLROnPlateau reduction is appended pending, like an override; rank 0 reports the
  step the workers applied it at (:mod:`controller.plateau` decides when to reduce).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from controller import logs
from controller.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from controller.metrics import ControllerMetrics
from controller.plateau import JobPlateau
from controller.store import FINISHED, RUNNING, Change, ConsumedMetric, JobRecord, Store
from controller.views import (
    JobView,
    WatchKind,
    WatchMessage,
    check_job_id,
    decode_token,
    encode_token,
)
from lrctl.errors import LrctlError
from lrctl.overrides import Event, Op, resolve_pending, validate_override
from lrctl.program import LRProgram
from lrctl.program import preview as program_preview
from lrctl.schedules import ReduceLROnPlateau, Schedule, build_schedule

__all__ = ["ControllerService", "JobView", "WatchKind", "WatchMessage", "check_job_id"]

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
#: Longest time a rank-0 progress report (step, LRs) stays in memory only.
PROGRESS_PERSIST_S = 2.0
MAX_PAGE_SIZE = 1000
#: Preview rows x param groups; keeps a response well under the message size limit.
MAX_PREVIEW_VALUES = 1_000_000

_lr_log = logging.getLogger("lrctl.controller.lr")

@dataclass
class _Job:
    """In-memory state of one job; replaced field by field only after a commit."""

    record: JobRecord
    events: list[Event]
    plateau: JobPlateau
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    persisted_at: float = 0.0  # when the record (step, LRs) was last written
    built: dict[str, Schedule] = field(default_factory=dict)  # reused by display programs
    # (key, program) of _display_lrs: the cached program for the current log.
    display: tuple[object, LRProgram | None] = (None, None)
    watchers: Counter[str] = field(default_factory=Counter)
    streams: int = 0  # open Watch streams, counted or not in ``watchers``

    @property
    def running(self) -> bool:
        return self.record.state == RUNNING


class ControllerService:
    """Every RPC's behaviour, in domain terms. Build with :meth:`open`.

    Args:
        store: The open database (its owner closes it after :meth:`close`).
        metrics: Where to export job metrics, or None.
        heartbeat_seconds: Idle watch streams get a heartbeat about this often.
        clock: Wall clock (unix seconds).
    """

    def __init__(self, store: Store, metrics: ControllerMetrics | None = None, *,
                 heartbeat_seconds: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._metrics = metrics
        self._heartbeat = heartbeat_seconds
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        # One lock per job id for the service's lifetime: mutations of a job are serialized.
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing = False

    @classmethod
    async def open(cls, store: Store, metrics: ControllerMetrics | None = None, *,
                   heartbeat_seconds: float = 5.0) -> ControllerService:
        """Load every job from ``store`` and export the running ones' metrics."""
        service = cls(store, metrics, heartbeat_seconds=heartbeat_seconds)
        for stored in await store.load():
            record = stored.record
            top = max([record.version, *(e.version for e in stored.events)])
            record = replace(record, version=top)
            plateau = JobPlateau(record, stored.events, stored.plateau_metrics)
            job = _Job(record, list(stored.events), plateau)
            service._jobs[record.job_id] = job
            if job.running:
                service._export(job)
        return service

    def _now(self) -> float:
        return float(self._clock())

    # -- jobs ----------------------------------------------------------------------------------

    async def create_job(self, job_id: str, schedule: str, base_lrs: Sequence[float], *,
                         replace_existing: bool = False,
                         verbose: bool = False) -> tuple[JobView, bool]:
        """Create a job, or attach to the existing one with the same spec and base LRs.

        Returns:
            The job and whether it was (re)created.

        Raises:
            InvalidArgument: bad job id, spec or base LRs.
            FailedPrecondition: the job exists with another spec (or is finished) and
                ``replace_existing`` is false.
        """
        check_job_id(job_id)
        canonical, lrs = _validate_job(schedule, base_lrs)
        async with self._lock(job_id, create=True):
            old = self._jobs.get(job_id)
            if old is not None:
                same = old.record.schedule == canonical and old.record.base_lrs == lrs
                if same and old.running:
                    return self._view(old), False
                if not replace_existing:
                    raise FailedPrecondition(_create_conflict(old.record, canonical, lrs))
            now = self._now()
            version = 1 if old is None else old.record.version + 1
            record = JobRecord(job_id=job_id, schedule=canonical, base_lrs=lrs, version=version,
                               created_version=version, verbose=verbose, created_at=now,
                               updated_at=now)
            def apply() -> _Job:
                job = self._jobs.setdefault(job_id, _Job(record, [], JobPlateau(record, [], [])))
                # Recreated in place: the old incarnation's watchers wake up to a RESYNC.
                job.record, job.events, job.plateau = record, [], JobPlateau(record, [], [])
                return job

            job = await self._write(Change(record, reset=old is not None), apply)
            self._notify(job)
            self._export(job)
            logs.log_change(job_id, version, "create" if old is None else "recreate",
                            schedule=canonical, base_lrs=list(lrs))
            return self._view(job), True

    def get_job(self, job_id: str) -> JobView:
        """Return a job with its event log.

        Raises:
            InvalidArgument: malformed job id.
            NotFound: no such job.
        """
        return self._view(self._get(job_id))

    def list_jobs(self, page_size: int = 0, page_token: str = "", *,
                  include_finished: bool = False) -> tuple[list[JobView], str]:
        """Return one page of jobs ordered by id (without logs) and the next page's token.

        Raises:
            InvalidArgument: negative page size or a token this controller did not issue.
        """
        if page_size < 0:
            raise InvalidArgument(f"expected page_size >= 0, got {page_size}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_token(page_token)
        ids = sorted(j for j, job in self._jobs.items()
                     if j > after and (include_finished or job.running))
        page = ids[:size]
        token = encode_token(page[-1]) if len(ids) > size else ""
        return [self._view(self._jobs[j], events=False) for j in page], token

    async def finish_job(self, job_id: str) -> JobView:
        """Mark a job finished: bump its version, end its watches, drop its metric series.

        Raises:
            InvalidArgument: malformed job id.
            NotFound: no such job.
        """
        async with self._lock(job_id):
            job = self._get(job_id)
            if not job.running:
                return self._view(job)
            now = self._now()
            record = replace(job.record, state=FINISHED, version=job.record.version + 1,
                             updated_at=now)
            def apply() -> None:
                job.record = record

            await self._write(Change(record), apply)
            self._notify(job)
            if self._metrics is not None:
                self._metrics.remove_job(job_id)
            logs.log_change(job_id, record.version, "finish")
            return self._view(job)

    # -- overrides -----------------------------------------------------------------------------

    async def override(self, job_id: str, op: Op, *, value: float | None = None,
                       schedule: str | None = None, group: int | None = None,
                       actor: str = "", reason: str = "",
                       expected_version: int | None = None) -> tuple[Event, JobView]:
        """Append an override event (SCALE, SET, CLEAR or REPLACE_SCHEDULE) to a job's log.

        Raises:
            InvalidArgument: bad value, group or replacement spec, or a PLATEAU_REDUCE
                (only the controller decides those).
            NotFound: no such job.
            FailedPrecondition: the job is finished.
            Conflict: ``expected_version`` is not the job's version.
        """
        if op is Op.PLATEAU_REDUCE or not isinstance(op, Op):
            raise InvalidArgument(f"expected an override op of scale, set, clear or "
                                  f"replace_schedule, got {op!r}")
        async with self._lock(job_id):
            job = self._get(job_id)
            n = len(job.record.base_lrs)
            try:
                validate_override(op, value, group, n)
                if op is Op.REPLACE_SCHEDULE:
                    if not schedule:
                        raise InvalidArgument("expected a schedule spec to replace with, got ''")
                    built = build_schedule(schedule, n)
                    if group is not None and isinstance(built, ReduceLROnPlateau):
                        raise InvalidArgument(
                            "expected a job-wide ReduceLROnPlateau replacement (its metric "
                            f"drives every group), got one for param group {group}")
                    schedule = built.spec.to_text()
            except LrctlError as exc:
                raise InvalidArgument(str(exc)) from None
            if not job.running:
                raise FailedPrecondition(f"job {job_id!r} is finished; expected a running job")
            if expected_version is not None and expected_version != job.record.version:
                raise Conflict(f"expected job {job_id!r} at version {expected_version}, "
                               f"but it is at version {job.record.version}")
            keeps_value = op in (Op.SCALE, Op.SET)
            event = Event(version=job.record.version + 1, op=op,
                          value=float(value) if keeps_value and value is not None else None,
                          schedule=schedule if op is Op.REPLACE_SCHEDULE else None,
                          group=group, actor=actor, reason=reason, created_at=self._now())
            await self._append(job, [event])
            return event, self._view(job)

    def history(self, job_id: str) -> list[Event]:
        """Return a job's event log, oldest first."""
        return list(self._get(job_id).events)

    @staticmethod
    def preview(schedule: str, base_lrs: Sequence[float],
                steps: int) -> tuple[str, list[list[float]]]:
        """Evaluate a spec without creating a job.

        Returns:
            The canonical spec text and ``steps`` rows of per-group LRs.

        Raises:
            InvalidArgument: bad spec, base LRs or step count.
        """
        canonical, lrs = _validate_job(schedule, base_lrs)
        if steps * len(lrs) > MAX_PREVIEW_VALUES:
            raise InvalidArgument(f"expected steps x param groups <= {MAX_PREVIEW_VALUES}, "
                                  f"got {steps} x {len(lrs)}")
        try:
            return canonical, program_preview(canonical, lrs, steps)
        except LrctlError as exc:
            raise InvalidArgument(str(exc)) from None

    # -- reports -------------------------------------------------------------------------------

    async def report(self, job_id: str, *, rank: int, step: int, lrs: Sequence[float] = (),
                     applied: Iterable[tuple[int, int]] = (),
                     plateau_metrics: Iterable[tuple[int, float]] = (),
                     divergences: int = 0) -> int:
        """Record a worker's progress; only rank 0's report changes anything.

        Rank 0's ``applied`` ``(version, effective_step)`` pairs set each pending event's
        effective step (once); its ``step``/``lrs`` become the job's; for a ReduceLROnPlateau
        job its ``plateau_metrics`` ``(step, value)`` are consumed in step order (steps
        already consumed are skipped) and may append PLATEAU_REDUCE events. A finished job
        only records effective steps.

        Returns:
            The job's version afterwards (including any plateau reduction it triggered).

        Raises:
            InvalidArgument: negative rank or steps, wrong number of LRs, unknown versions.
            NotFound: no such job.
        """
        if rank < 0 or step < -1:
            raise InvalidArgument(f"expected rank >= 0 and step >= -1, got rank={rank}, "
                                  f"step={step}")
        async with self._lock(job_id):
            job = self._get(job_id)
            rec = job.record
            if rank != 0:
                return rec.version
            pairs = sorted(set(applied))
            _check_report(rec, lrs, pairs)
            now = self._now()
            done = _mark_applied(job.events, pairs, now)
            record = rec
            new_events: list[Event] = []
            consumed: list[ConsumedMetric] = []
            if job.running:
                record = replace(rec, step=step, lrs=tuple(lrs) if lrs else rec.lrs,
                                 updated_at=now)
                new_events, consumed = job.plateau.consume(plateau_metrics, rec.version, now)
                if new_events:
                    record = replace(record, version=new_events[-1].version)
            elif not done:
                return rec.version
            def apply() -> None:
                by_version = {e.version: e for e in done}
                job.events = [by_version.get(e.version, e) for e in job.events] + new_events
                job.record = record
                job.plateau.commit()

            # Effective steps, new events and plateau metrics are durable before the reply;
            # bare progress (step, LRs, ~10/s from rank 0) is fsynced at most every few
            # seconds; a restart may show a slightly older step, never another version.
            if done or new_events or consumed or now - job.persisted_at >= PROGRESS_PERSIST_S:
                await self._write(Change(record, new_events, done, consumed), apply)
                job.persisted_at = now
            else:
                apply()
            if rec.verbose and lrs:
                _log_lr_changes(job_id, step, rec.lrs, lrs)
            self._after_write(job, new_events, done)
            if self._metrics is not None and job.running:
                self._metrics.count_divergence(job_id, divergences)
            return record.version

    # -- watch ---------------------------------------------------------------------------------

    async def watch(self, job_id: str, from_version: int = 0,
                    worker_id: str = "") -> AsyncIterator[WatchMessage]:
        """Stream a job: snapshot (or RESYNC), every later event in order, heartbeats, FINISHED.

        Args:
            job_id: The job to follow.
            from_version: The last version the caller holds; 0 for a fresh snapshot.
            worker_id: Counted in ``workers`` while the stream is open (empty: not counted).

        Raises:
            InvalidArgument: malformed job id.
            NotFound: no such job.
            Unavailable: the controller is shutting down (reconnect and resume).
        """
        job = self._get(job_id)
        self._watchers(job, worker_id, +1)
        try:
            sent = from_version
            rec = job.record
            if from_version == 0:
                yield WatchMessage(WatchKind.SNAPSHOT, rec.version, job=self._view(job))
                sent = rec.version
            deadline = self._next_heartbeat()
            while True:
                if self._closing:
                    raise Unavailable("controller is shutting down; reconnect and resume")
                changed = job.changed  # taken before reading state: no missed wake-up
                rec = job.record
                if sent > rec.version or sent < rec.created_version:
                    # The resume point is gone: ahead of us, or from an earlier incarnation.
                    yield WatchMessage(WatchKind.RESYNC, rec.version, job=self._view(job))
                    sent = rec.version
                    deadline = self._next_heartbeat()
                    continue
                start = bisect_right(job.events, sent, key=lambda e: e.version)
                for event in job.events[start:]:
                    yield WatchMessage(WatchKind.EVENT, event.version, event=event)
                    sent = event.version
                if start < len(job.events):
                    deadline = self._next_heartbeat()
                    continue
                if not job.running:
                    yield WatchMessage(WatchKind.FINISHED, rec.version, job=self._view(job))
                    return
                sent = max(sent, rec.version)
                try:
                    await asyncio.wait_for(changed.wait(), max(deadline - time.monotonic(), 0))
                except asyncio.TimeoutError:
                    yield WatchMessage(WatchKind.HEARTBEAT, job.record.version)
                    deadline = self._next_heartbeat()
        finally:
            self._watchers(job, worker_id, -1)

    def close(self) -> None:
        """End every watch stream with :class:`Unavailable` (shutdown); idempotent."""
        self._closing = True
        for job in self._jobs.values():
            self._notify(job)

    # -- helpers -------------------------------------------------------------------------------

    def _lock(self, job_id: str, *, create: bool = False) -> asyncio.Lock:
        # Only CreateJob makes a lock for an unknown id, so bad ids cannot grow the dict.
        if not create:
            self._get(job_id)
        return self._locks.setdefault(job_id, asyncio.Lock())

    def _get(self, job_id: str) -> _Job:
        check_job_id(job_id)
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}; create it with CreateJob (lrctl job create)")
        return job

    async def _append(self, job: _Job, events: list[Event]) -> None:
        record = replace(job.record, version=events[-1].version, updated_at=self._now())

        def apply() -> None:
            job.record = record
            job.events = [*job.events, *events]
            job.plateau.on_events(events)

        await self._write(Change(record, events), apply)
        self._after_write(job, events, [])

    async def _write(self, change: Change, apply: Callable[[], T]) -> T:
        """Commit ``change``, then ``apply`` it in memory, as one step a cancel cannot split.

        A cancelled RPC (deadline, client gone, shutdown) must not leave a commit on disk
        that memory never saw: the next version would collide with it. So the write runs as
        its own task; a cancel waits for it to finish (holding the job's lock) and then
        propagates.
        """
        async def commit_and_apply() -> T:
            await self._store.commit(change)
            return apply()

        task = asyncio.ensure_future(commit_and_apply())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                await asyncio.wait([task])
            raise

    def _after_write(self, job: _Job, new_events: Sequence[Event],
                     applied: Sequence[Event]) -> None:
        for event in new_events:
            logs.log_change(job.record.job_id, event.version, event.op.value, event.actor,
                            event.reason, value=event.value, schedule=event.schedule,
                            group=event.group, effective_step=event.effective_step)
        if new_events:
            self._notify(job)
        if self._metrics is None:
            return
        for event in applied:
            if event.applied_at is not None:
                self._metrics.observe_apply(event.applied_at - event.created_at)
        if job.running:
            for event in new_events:
                self._metrics.count_override(job.record.job_id, event.op.value)
            self._export(job)

    def _export(self, job: _Job) -> None:
        if self._metrics is None or not job.running:
            return
        rec = job.record
        self._metrics.update_job(rec.job_id, _display_lrs(job), rec.step, rec.version)
        self._metrics.set_workers(rec.job_id, _count_workers(job))
        self._metrics.set_watch_streams(rec.job_id, job.streams)
        self._metrics.update_overrides(rec.job_id, job.events)

    def _notify(self, job: _Job) -> None:
        old, job.changed = job.changed, asyncio.Event()
        old.set()

    def _watchers(self, job: _Job, worker_id: str, delta: int) -> None:
        job.streams += delta
        if worker_id:
            job.watchers[worker_id] += delta
            if job.watchers[worker_id] <= 0:
                del job.watchers[worker_id]
        if self._metrics is not None and job.running:
            self._metrics.set_workers(job.record.job_id, _count_workers(job))
            self._metrics.set_watch_streams(job.record.job_id, job.streams)

    def _next_heartbeat(self) -> float:
        # Jitter (75-100% of the interval) keeps thousands of streams from beating in step.
        return time.monotonic() + self._heartbeat * random.uniform(0.75, 1.0)

    def _view(self, job: _Job, *, events: bool = True) -> JobView:
        rec = job.record
        return JobView(job_id=rec.job_id, schedule=rec.schedule, base_lrs=rec.base_lrs,
                       version=rec.version, step=rec.step, lrs=tuple(_display_lrs(job)),
                       finished=not job.running, verbose=rec.verbose,
                       created_at=rec.created_at, updated_at=rec.updated_at,
                       workers=_count_workers(job), created_version=rec.created_version,
                       events=tuple(job.events) if events else ())


def _count_workers(job: _Job) -> int:
    return len(job.watchers)


def _display_lrs(job: _Job) -> list[float]:
    """The LR at the job's step with pending events taking effect now (GetJob, metrics).

    The program is cached per job and rebuilt only when the log changes (or, while events
    are pending, the step), so recurrence schedules advance incrementally between reports
    instead of replaying from step 0 on every call.
    """
    rec = job.record
    step = max(rec.step, 0)
    pending = any(e.pending for e in job.events)
    key = (rec.schedule, rec.base_lrs, tuple((e.version, e.effective_step) for e in job.events),
           step if pending else None)
    try:
        if job.display[0] != key:
            events = resolve_pending(job.events, step)
            job.display = (key, LRProgram(rec.schedule, rec.base_lrs, events, job.built))
        program = job.display[1]
        if program is None:
            raise LrctlError("no program")
        return program.lrs(step)
    except LrctlError:
        # e.g. OneCycleLR stepped past total_steps: torch raises too; show what rank 0 saw.
        return list(rec.lrs) if rec.lrs is not None else [math.nan] * len(rec.base_lrs)


def _validate_job(schedule: str, base_lrs: Sequence[float]) -> tuple[str, tuple[float, ...]]:
    try:
        program = LRProgram(schedule, list(base_lrs))
    except LrctlError as exc:
        raise InvalidArgument(str(exc)) from None
    return program.schedule.spec.to_text(), tuple(program.base_lrs)


def _create_conflict(old: JobRecord, schedule: str, base_lrs: tuple[float, ...]) -> str:
    if old.state == FINISHED and old.schedule == schedule and old.base_lrs == base_lrs:
        return (f"job {old.job_id!r} is finished; expected a running job to attach to "
                f"(pass replace to start it again)")
    return (f"job {old.job_id!r} exists with schedule {old.schedule} and base_lrs "
            f"{list(old.base_lrs)}; expected the same to attach, got {schedule} and base_lrs "
            f"{list(base_lrs)} (pass replace to replace it)")


def _check_report(rec: JobRecord, lrs: Sequence[float],
                  pairs: Sequence[tuple[int, int]]) -> None:
    n = len(rec.base_lrs)
    if lrs and len(lrs) != n:
        raise InvalidArgument(f"expected {n} lrs (one per param group), got {len(lrs)}")
    for version, step in pairs:
        if version > rec.version or step < 0:
            raise InvalidArgument(f"expected applied versions <= {rec.version} with "
                                  f"effective_step >= 0, got version {version} at step {step}")


def _mark_applied(events: Sequence[Event], pairs: Sequence[tuple[int, int]],
                  now: float) -> list[Event]:
    """Return the events that ``pairs`` apply for the first time (effective step set once)."""
    steps: dict[int, int] = {}
    for version, step in pairs:
        steps.setdefault(version, step)  # a version reported twice: the earliest step wins
    done = []
    for event in events:
        reported = steps.get(event.version)
        if reported is None or event.applied_at is not None:
            continue
        effective = reported if event.effective_step is None else event.effective_step
        done.append(replace(event, effective_step=effective, applied_at=now))
    return done


def _log_lr_changes(job_id: str, step: int, old: Sequence[float] | None,
                    new: Sequence[float]) -> None:
    for group, after in enumerate(new):
        if old is None or group >= len(old) or old[group] != after:
            # torch's verbose=True wording, with the job in front.
            _lr_log.info("job=%s step=%d: adjusting learning rate of group %d to %.4e.",
                         job_id, step, group, after)
