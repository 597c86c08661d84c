"""The controller's domain service: the commands and queries behind every RPC.

Plain Python and asyncio; never imports grpc (:mod:`controller.servicer` adapts it). Every job
lives in memory (:class:`~controller.jobs.JobEntry`) and in the store. A mutation is
serialized per job, written through to the store, and only then applied in memory, shown
(:class:`~controller.projection.Projection`: metrics, change log) and announced to watchers
(:class:`~controller.watch.WatchHub`), so what a client was told is always on disk, and
versions per job strictly increase across restarts. Validation is the core's
(:mod:`lrctl.program`, :mod:`lrctl.overrides`); its errors reach clients as INVALID_ARGUMENT.
The decisions (recreation with ``replace``, idempotent finish, pending plateau reductions)
are in docs/controller.md.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace

from controller.errors import Conflict, FailedPrecondition, InvalidArgument
from controller.jobs import (
    JobEntry,
    check_epoch,
    check_override,
    check_report,
    create_conflict,
    decode_token,
    encode_token,
    mark_applied,
    same_spec,
    with_events,
)
from controller.metrics import ControllerMetrics
from controller.plateau import JobPlateau
from controller.projection import Projection
from controller.rows import Change, ConsumedMetric
from controller.store_api import JobStore
from controller.table import JobTable
from controller.watch import WatchHub
from lrctl import constants
from lrctl.model import Job, JobState, Report, WatchMessage, check_job_id
from lrctl.overrides import Event, Op
from lrctl.program import LRProgram
from lrctl.program import preview as program_preview

__all__ = ["ControllerService"]


class ControllerService:
    """Every RPC's behaviour, in domain terms. Build with :meth:`open`.

    Args:
        store: The open database (its owner closes it after :meth:`close`).
        metrics: Where to export job metrics, or None.
        heartbeat_seconds: Idle watch streams get a heartbeat about this often.
        clock: Wall clock (unix seconds).
    """

    def __init__(self, store: JobStore, metrics: ControllerMetrics | None = None, *,
                 heartbeat_seconds: float = constants.DEFAULT_HEARTBEAT_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._table = JobTable(store, self._synced)
        self._projection = Projection(metrics)
        self._hub = WatchHub(heartbeat_seconds, on_count=self._streams_changed)

    @classmethod
    async def open(cls, store: JobStore, metrics: ControllerMetrics | None = None, *,
                   heartbeat_seconds: float = constants.DEFAULT_HEARTBEAT_SECONDS,
                   ) -> ControllerService:
        """Load every job from ``store`` and export the running ones' metrics."""
        service = cls(store, metrics, heartbeat_seconds=heartbeat_seconds)
        for entry in service._table.load(await store.load()):
            service._projection.export(entry.job, 0)
        return service

    # -- jobs ----------------------------------------------------------------------------------

    async def create_job(self, job_id: str, schedule: str, base_lrs: Sequence[float], *,
                         replace_existing: bool = False, verbose: bool = False,
                         attach: bool = False, world_size: int = 0,
                         actor: str = "") -> tuple[Job, bool]:
        """Create a job, or attach to the running one with the same spec and base LRs.

        With ``attach`` (rank 0 of a training run) the job gets a new attach epoch, stored
        with it, one above the last: from then on only reports carrying that epoch change
        anything (:meth:`report`), so the newest attach wins. The epoch is handed out inside
        the job's lock (with PostgreSQL, its row-lock transaction), so two attaches, on any
        replicas, never get the same one. A recreation keeps the job's epoch. ``actor`` (the
        caller's token name, or "") goes to the change log.

        Returns:
            The job (``job.epoch`` is the attach's epoch) and whether it was (re)created.

        Raises:
            InvalidArgument: bad job id or a negative world size.
            SpecError: bad spec or base LRs.
            FailedPrecondition: the job exists with another spec (or is finished) and
                ``replace_existing`` is false.
        """
        check_job_id(job_id)
        if world_size < 0:
            raise InvalidArgument(f"expected world_size >= 0, got {world_size}")
        program = LRProgram(schedule, list(base_lrs))
        canonical, lrs = program.schedule.spec.to_text(), tuple(program.base_lrs)
        async with self._table.lock(job_id, create=True):
            old = self._table.jobs.get(job_id)
            if old is not None:
                same = same_spec(old.job.schedule, canonical) and old.job.base_lrs == lrs
                if same and old.running:
                    if attach:
                        await self._attach(old, world_size, actor)
                    return self._view(old), False
                if not replace_existing:
                    raise FailedPrecondition(create_conflict(old.job, canonical, lrs))
            now = self._now()
            version = 1 if old is None else old.job.version + 1
            epoch = 0 if old is None else old.job.epoch
            job = Job(job_id=job_id, schedule=canonical, base_lrs=lrs, version=version,
                      created_version=version, verbose=verbose, created_at=now, updated_at=now,
                      epoch=epoch + 1 if attach else epoch,
                      world_size=world_size if attach else 0)

            def apply() -> JobEntry:
                # Recreated in place: the old incarnation's watchers wake up to a RESYNC.
                entry = JobEntry(job, JobPlateau(job, [], []))
                self._table.jobs[job_id] = entry
                return entry

            entry = await self._table.write(Change(job, reset=old is not None), apply)
            self._hub.notify(job_id)
            self._projection.created(job, recreated=old is not None,
                                     streams=self._hub.streams(job_id), actor=actor)
            if attach:
                self._projection.attached(job, actor)
            return self._view(entry), True

    async def _attach(self, entry: JobEntry, world_size: int, actor: str) -> None:
        """Give the running job in ``entry`` a new attach epoch (caller holds its lock).

        The version does not change: no event is added, watchers have nothing to apply.
        """
        job = replace(entry.job, epoch=entry.job.epoch + 1, world_size=world_size,
                      updated_at=self._now())

        def apply() -> None:
            entry.job = job

        await self._table.write(Change(job.head()), apply)
        self._projection.attached(entry.job, actor)
        self._projection.export(entry.job, self._hub.streams(job.job_id))

    def get_job(self, job_id: str) -> Job:
        """Return a job with its event log.

        Raises:
            InvalidArgument: malformed job id.
            NotFound: no such job.
        """
        return self._view(self._table.get(job_id))

    def list_jobs(self, page_size: int = 0, page_token: str = "", *,
                  include_finished: bool = False) -> tuple[list[Job], str]:
        """Return one page of jobs ordered by id (heads, no logs) and the next page's token.

        Raises:
            InvalidArgument: negative page size or a token this controller did not issue.
        """
        if page_size < 0:
            raise InvalidArgument(f"expected page_size >= 0, got {page_size}")
        size = min(page_size or constants.DEFAULT_PAGE_SIZE, constants.MAX_PAGE_SIZE)
        after = decode_token(page_token)
        ids = sorted(j for j, entry in self._table.jobs.items()
                     if j > after and (include_finished or entry.running))
        page = ids[:size]
        token = encode_token(page[-1]) if len(ids) > size else ""
        return [self._view(self._table.jobs[j], events=False) for j in page], token

    async def finish_job(self, job_id: str, *, actor: str = "") -> Job:
        """Mark a job finished: bump its version, end its watches, drop its metric series.

        Raises:
            InvalidArgument: malformed job id.
            NotFound: no such job.
        """
        async with self._table.lock(job_id):
            entry = self._table.get(job_id)
            if not entry.running:
                return self._view(entry)
            job = replace(entry.job, state=JobState.FINISHED, version=entry.job.version + 1,
                          updated_at=self._now())

            def apply() -> None:
                entry.job = job

            await self._table.write(Change(job), apply)
            self._hub.notify(job_id)
            self._projection.finished(job, actor)
            return self._view(entry)

    # -- overrides -----------------------------------------------------------------------------

    async def override(self, job_id: str, op: Op, *, value: float | None = None,
                       schedule: str | None = None, group: int | None = None,
                       actor: str = "", reason: str = "",
                       expected_version: int | None = None) -> tuple[Event, Job]:
        """Append an override event (SCALE, SET, CLEAR or REPLACE_SCHEDULE) to a job's log.

        Returns:
            The event and the job's head after it (no log).

        Raises:
            NotFound: no such job.
            InvalidArgument: a PLATEAU_REDUCE (only the controller decides those), or no
                replacement spec.
            OverrideError, SpecError: bad value, group or replacement spec.
            FailedPrecondition: the job is finished.
            Conflict: ``expected_version`` is not the job's version.
        """
        async with self._table.lock(job_id):
            entry = self._table.get(job_id)
            schedule = check_override(op, value, schedule, group, entry.job.num_groups)
            if not entry.running:
                raise FailedPrecondition(f"job {job_id!r} is finished; expected a running job")
            if expected_version is not None and expected_version != entry.job.version:
                raise Conflict(f"expected job {job_id!r} at version {expected_version}, "
                               f"but it is at version {entry.job.version}")
            keeps_value = op in (Op.SCALE, Op.SET)
            event = Event(version=entry.job.version + 1, op=op,
                          value=float(value) if keeps_value and value is not None else None,
                          schedule=schedule if op is Op.REPLACE_SCHEDULE else None,
                          group=group, actor=actor, reason=reason, created_at=self._now())
            job = replace(entry.job, version=event.version, updated_at=event.created_at,
                          events=with_events(entry.job.events, (), [event]))

            def apply() -> None:
                entry.job = job
                entry.plateau.on_events([event])

            await self._table.write(Change(job.head(), [event]), apply)
            self._after_write(entry, [event], [])
            return event, self._view(entry, events=False)

    def history(self, job_id: str) -> tuple[Event, ...]:
        """Return a job's event log, oldest first."""
        return self._table.get(job_id).job.events

    @staticmethod
    def preview(schedule: str, base_lrs: Sequence[float],
                steps: int) -> tuple[str, list[list[float]]]:
        """Evaluate a spec without creating a job.

        Returns:
            The canonical spec text and ``steps`` rows of per-group LRs.

        Raises:
            SpecError: bad spec, base LRs or step count.
            InvalidArgument: more than ``MAX_PREVIEW_VALUES`` values.
        """
        program = LRProgram(schedule, list(base_lrs))
        canonical, n = program.schedule.spec.to_text(), program.num_groups
        if steps * n > constants.MAX_PREVIEW_VALUES:
            raise InvalidArgument(f"expected steps x param groups <= "
                                  f"{constants.MAX_PREVIEW_VALUES}, got {steps} x {n}")
        return canonical, program_preview(canonical, program.base_lrs, steps)

    # -- reports -------------------------------------------------------------------------------

    async def report(self, report: Report) -> int:
        """Record a worker's progress; only rank 0's report changes anything.

        Rank 0's ``applied`` ``(version, effective_step)`` pairs set each pending event's
        effective step (once); its ``step``, ``lrs``, ``applied_version`` and ``world_size``
        become the job's (a ``final`` report, the run's last, sets the world size to 0); for a
        ReduceLROnPlateau job its ``plateau_metrics`` ``(step, value)`` are consumed in step
        order (steps already consumed are skipped) and may append PLATEAU_REDUCE events. A
        finished job only records effective steps. Its ``divergences`` are counted in
        metrics.

        Only the run attached last may report: ``epoch`` must be the job's attach epoch
        (:meth:`create_job` with ``attach``). Before any attach the job's epoch is 0 and a
        report carrying 0 is accepted (a job created by an operator, a tool that does not
        attach); once a rank 0 attached, anything else changes nothing.

        Args:
            report: What rank 0 (or another rank) sent.

        Returns:
            The job's version afterwards (including any plateau reduction it triggered).

        Raises:
            InvalidArgument: negative rank, steps or world size, wrong number of LRs,
                unknown versions.
            NotFound: no such job.
            FailedPrecondition: ``epoch`` is not the job's attach epoch (an older run,
                superseded by a newer attach, or an epoch never handed out).
        """
        if report.rank < 0 or report.step < -1 or report.world_size < 0:
            raise InvalidArgument(f"expected rank >= 0, step >= -1 and world_size >= 0, got "
                                  f"rank={report.rank}, step={report.step}, "
                                  f"world_size={report.world_size}")
        async with self._table.lock(report.job_id):
            entry = self._table.get(report.job_id)
            before = entry.job
            check_epoch(before, report.epoch)
            if report.rank != 0:
                return before.version
            pairs = sorted(set(report.applied))
            check_report(before, report, pairs)
            now = self._now()
            done = mark_applied(before.events, pairs, now)
            new_events: list[Event] = []
            consumed: list[ConsumedMetric] = []
            job = before
            if entry.running:
                new_events, consumed = entry.plateau.consume(report.plateau_metrics,
                                                             before.version, now)
                job = replace(before, step=report.step, lr=report.lrs or before.lr,
                              applied_version=report.applied_version,
                              world_size=0 if report.final else report.world_size,
                              updated_at=now)
            elif not done:
                return before.version
            if done or new_events:
                job = replace(job, version=new_events[-1].version if new_events else job.version,
                              events=with_events(job.events, done, new_events))

            def apply() -> None:
                entry.job = job
                entry.plateau.commit()

            # Effective steps, new events, plateau metrics and a run's final report are
            # durable before the reply; bare progress (step, LRs, ~10/s from rank 0) is
            # fsynced at most every PROGRESS_PERSIST_S; a restart may show a slightly older
            # step, never another version.
            if (done or new_events or consumed or report.final
                    or now - entry.persisted_at >= constants.PROGRESS_PERSIST_S):
                await self._table.write(Change(job.head(), new_events, done, consumed), apply)
                entry.persisted_at = now
            else:
                apply()
            self._projection.reported(before, job, report)
            self._after_write(entry, new_events, done)
            return job.version

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
        if self._store.shared:
            entry = self._table.jobs.get(check_job_id(job_id))
            if entry is None or from_version > entry.job.version:
                # The caller may hold a version another replica handed out: catch up first,
                # or it would get a RESYNC to an older version.
                await self._table.sync(job_id)
        self._table.get(job_id)

        def current() -> Job:
            return self._table.jobs[job_id].job

        def snapshot() -> Job:
            return self._view(self._table.jobs[job_id])

        async for message in self._hub.follow(job_id, from_version, worker_id, current,
                                              snapshot):
            yield message

    def close(self) -> None:
        """End every watch stream with :class:`Unavailable` (shutdown); idempotent."""
        self._hub.close()
        self._table.close()

    # -- helpers -------------------------------------------------------------------------------

    def _now(self) -> float:
        return float(self._clock())

    def _view(self, entry: JobEntry, *, events: bool = True) -> Job:
        job_id = entry.job.job_id
        return self._projection.view(entry.job, events=events,
                                     workers=self._hub.workers(job_id),
                                     streams=self._hub.streams(job_id))

    def _after_write(self, entry: JobEntry, new_events: Sequence[Event],
                     applied: Sequence[Event]) -> None:
        if new_events:
            self._hub.notify(entry.job.job_id)
        self._projection.appended(entry.job, new_events, applied,
                                  streams=self._hub.streams(entry.job.job_id))

    def _streams_changed(self, job_id: str) -> None:
        entry = self._table.jobs.get(job_id)
        if entry is not None:
            self._projection.streams_changed(entry.job, self._hub.streams(job_id))

    def _synced(self, entry: JobEntry, was_running: bool, fresh: bool) -> None:
        """Another replica changed a job: show it and wake its watchers."""
        job_id = entry.job.job_id
        if fresh:
            self._projection.forget(job_id)
        if entry.running:
            self._projection.export(entry.job, self._hub.streams(job_id))
        elif was_running:
            self._projection.finished(entry.job)
        self._hub.notify(job_id)
