"""The controller's domain service: the commands and queries behind every RPC.

Plain Python and asyncio; never imports grpc (:mod:`controller.servicer` adapts it). Every job
lives in memory (:class:`~controller.jobs.JobEntry`) and in the store. A mutation is
serialized per job, written through to the store, and only then applied in memory, shown
(:class:`~controller.projection.Projection`: metrics, change log) and announced to watchers
(:class:`~controller.watch.WatchHub`), so what a client was told is always on disk, and
versions per job strictly increase across restarts. Validation is the core's
(:mod:`lrctl.program`, :mod:`lrctl.overrides`); its errors reach clients as INVALID_ARGUMENT.

No input hurts it (docs/controller.md, "Limits" and "Failure handling"): every size and count
is limited (:class:`~controller.limits.ServerLimits`, RESOURCE_EXHAUSTED), a job's log always
fits in one message, CPU-heavy validation runs off the event loop within a deadline
(:class:`~controller.evaluate.Evaluator`), a job that cannot be evaluated is loaded and
marked instead of keeping the controller from starting, and what follows a commit (views,
metrics, logs) never turns an acknowledged write into a failed call.
The decisions (recreation with ``replace``, idempotent finish, pending plateau reductions)
are in docs/controller.md.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from controller.context import CommandContext
from controller.errors import InvalidArgument
from controller.evaluate import Evaluator
from controller.jobs import (
    JobEntry,
    check_evaluable,
    decode_token,
    describe_error,
    encode_token,
    head_bytes,
)
from controller.lifecycle import JobLifecycle
from controller.limits import ServerLimits
from controller.metrics import ControllerMetrics
from controller.override import OverrideHandler
from controller.projection import Projection
from controller.reports import ReportHandler
from controller.store_api import JobStore
from controller.table import JobTable
from controller.watch import WatchHub
from lrctl import constants
from lrctl.model import Job, WatchMessage, check_job_id
from lrctl.overrides import Event
from lrctl.program import LRProgram
from lrctl.schedules import check_num_groups

if TYPE_CHECKING:  # Python 3.11+; only in annotations
    from typing import Unpack

__all__ = ["ControllerService"]

T = TypeVar("T")
_log = logging.getLogger("lrctl.controller.service")


class _Options(TypedDict, total=False):
    """:meth:`ControllerService.open`'s keyword arguments: those of the constructor."""

    heartbeat_seconds: float
    limits: ServerLimits | None
    max_message_bytes: int
    clock: Callable[[], float]


class ControllerService:
    """Every RPC's behaviour, in domain terms. Build with :meth:`open`.

    Args:
        store: The open database (its owner closes it after :meth:`close`).
        metrics: Where to export job metrics, or None.
        heartbeat_seconds: Idle watch streams get a heartbeat about this often.
        limits: What one client may ask for (jobs, events, streams, sizes, values).
        max_message_bytes: The server's message size: a job's log is kept small enough to
            fit in one beside its other fields, a ListJobs page too.
        clock: Wall clock (unix seconds).

    Attributes:
        create_job: :meth:`controller.lifecycle.JobLifecycle.create_job` (create, recreate,
            attach).
        finish_job: :meth:`controller.lifecycle.JobLifecycle.finish_job`.
        override: :meth:`controller.override.OverrideHandler.override`.
        report: :meth:`controller.reports.ReportHandler.report`.
    """

    def __init__(
        self,
        store: JobStore,
        metrics: ControllerMetrics | None = None,
        *,
        heartbeat_seconds: float = constants.DEFAULT_HEARTBEAT_SECONDS,
        limits: ServerLimits | None = None,
        max_message_bytes: int = constants.DEFAULT_MAX_MESSAGE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._clock = clock
        self._limits = limits = ServerLimits() if limits is None else limits
        self._max_message_bytes = max_message_bytes
        self._ids: list[str] = []  # every job id, sorted (ListJobs)
        self._eval = Evaluator(limits.eval_deadline_seconds)
        self._table = JobTable(store, self._synced)
        self._projection = Projection(metrics)
        self._hub = WatchHub(
            heartbeat_seconds,
            on_count=self._streams_changed,
            max_streams_per_job=limits.max_watch_streams_per_job,
            max_streams=limits.max_watch_streams,
        )
        ctx = CommandContext(
            table=self._table,
            limits=limits,
            evaluator=self._eval,
            projection=self._projection,
            hub=self._hub,
            log_budget=max_message_bytes - limits.reserved_bytes(),
            max_message_bytes=max_message_bytes,
            now=self._now,
            view=self._view,
            after_commit=self._after_commit,
            after_write=self._after_write,
        )
        # The commands, each in its handler's module (their docstrings say what they do).
        lifecycle = JobLifecycle(ctx)
        self.create_job = lifecycle.create_job
        self.finish_job = lifecycle.finish_job
        self.override = OverrideHandler(ctx).override
        self.report = ReportHandler(ctx).report

    @classmethod
    async def open(
        cls, store: JobStore, metrics: ControllerMetrics | None = None, **options: Unpack[_Options]
    ) -> ControllerService:
        """Load every job from ``store`` and export the running ones' metrics.

        A job that cannot be evaluated (a spec, base LRs or log this release refuses) is
        loaded marked (:func:`controller.jobs.check_evaluable`) and logged at ERROR; the
        others load and serve as usual.
        """
        service = cls(store, metrics, **options)
        for entry in service._table.load(await store.load()):
            if entry.broken is None and entry.running:
                try:
                    service._projection.check(entry.job)
                except Exception as exc:
                    entry.broken = describe_error(exc)
                    _log.error(
                        "job %s cannot be evaluated and is served marked: %s",
                        entry.job.job_id,
                        entry.broken,
                    )
            if entry.broken is None:
                service._projection.export(entry.job, 0)
        return service

    # -- jobs ----------------------------------------------------------------------------------

    async def sync(self, job_id: str) -> None:
        """Catch ``job_id`` up with the shared database (replicas; a no-op on SQLite), so a
        read on this replica sees every write another replica acknowledged before it."""
        await self._table.sync(job_id)

    def get_job(self, job_id: str) -> Job:
        """Return a job with its event log.

        Raises:
            InvalidArgument: malformed job id.
            NotFound: no such job.
            FailedPrecondition: the job cannot be evaluated.
        """
        entry = self._table.get(job_id)
        check_evaluable(entry)
        return self._view(entry)

    def list_jobs(
        self,
        page_size: int = 0,
        page_token: str = "",
        *,
        include_finished: bool = False,
        visible: Callable[[str], bool] | None = None,
    ) -> tuple[list[Job], str]:
        """Return one page of jobs ordered by id (heads, no logs) and the next page's token.

        A page holds at most ``page_size`` jobs, and fewer when more would not fit in one
        message (the token then resumes after the last one). With ``visible`` (a scoped
        token's patterns) only the jobs it accepts are paged through: the page is full and its
        token names one of them.

        Raises:
            InvalidArgument: negative page size or a token this controller did not issue.
        """
        if page_size < 0:
            raise InvalidArgument(f"expected page_size >= 0, got {page_size}")
        size = min(page_size or constants.DEFAULT_PAGE_SIZE, constants.MAX_PAGE_SIZE)
        after = decode_token(page_token)
        ids = self._sorted_ids()
        page: list[str] = []
        room, more = self._max_message_bytes - 64 * 1024, False
        for j in islice(ids, bisect_right(ids, after), None):
            entry = self._table.jobs[j]
            if not (include_finished or entry.running) or (visible and not visible(j)):
                continue
            room -= head_bytes(entry.job)
            if len(page) == size or (page and room < 0):
                more = True
                break
            page.append(j)
        token = encode_token(page[-1]) if more else ""
        return [self._view(self._table.jobs[j], events=False) for j in page], token

    def _sorted_ids(self) -> list[str]:
        """Every job id in order; sorted again only after jobs were added (ids are never
        removed), so a page costs a bisection, not a sort of 100,000 ids."""
        if len(self._ids) != len(self._table.jobs):
            self._ids = sorted(self._table.jobs)
        return self._ids

    def history(self, job_id: str) -> tuple[Event, ...]:
        """Return a job's event log, oldest first."""
        return self._table.get(job_id).job.events

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy ``fn(*args)`` off the event loop, within the evaluation deadline
        (:class:`~controller.evaluate.Evaluator`; past it, ResourceExhausted)."""
        return await self._eval.run(fn, *args)

    def preview(
        self, schedule: str, base_lrs: Sequence[float], steps: int
    ) -> tuple[str, Iterator[list[float]]]:
        """Evaluate a spec without creating a job (CPU-heavy: call it through
        :meth:`offload`).

        Returns:
            The canonical spec text and an iterator of ``steps`` rows of per-group LRs
            (computed as they are taken, so a million values never live at once).

        Raises:
            SpecError: bad spec, base LRs or step count.
            InvalidArgument: more than ``MAX_PREVIEW_VALUES`` values.
        """
        if len(base_lrs) > self._limits.max_param_groups:
            check_num_groups(len(base_lrs), self._limits.core)
        program = LRProgram(schedule, list(base_lrs), limits=self._limits.core)
        canonical, n = program.schedule.spec.to_text(), program.num_groups
        if steps < 1 or steps * n > constants.MAX_PREVIEW_VALUES:
            raise InvalidArgument(
                f"expected steps >= 1 and steps x param groups <= "
                f"{constants.MAX_PREVIEW_VALUES}, got {steps} x {n}"
            )
        if steps - 1 > program.max_step:  # OneCycleLR's total_steps: say where it ends
            program.check_step(steps - 1, None)
        return canonical, (program.lrs(t) for t in range(steps))

    # -- watch ---------------------------------------------------------------------------------

    async def watch(
        self, job_id: str, from_version: int = 0, worker_id: str = ""
    ) -> AsyncGenerator[WatchMessage, None]:
        """Open a stream of a job: snapshot (or RESYNC), every later event in order,
        heartbeats, FINISHED.

        The checks run here; the stream is the watch hub's own iterator (no layer in between),
        to be consumed with ``async for`` (close it with ``aclose()`` when done early).

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
        check_evaluable(self._table.get(job_id))

        def current() -> Job:
            return self._table.jobs[job_id].job

        def snapshot() -> Job:
            return self._view(self._table.jobs[job_id])

        return self._hub.follow(job_id, from_version, worker_id, current, snapshot)

    def close(self) -> None:
        """End every watch stream with :class:`Unavailable` (shutdown); idempotent."""
        self._hub.close()
        self._table.close()
        self._eval.close()

    # -- helpers -------------------------------------------------------------------------------

    def _now(self) -> float:
        return float(self._clock())

    def _view(self, entry: JobEntry, *, events: bool = True) -> Job:
        job_id = entry.job.job_id
        return self._projection.view(
            entry.job,
            events=events,
            workers=self._hub.workers(job_id),
            streams=self._hub.streams(job_id),
        )

    def _after_write(
        self, entry: JobEntry, new_events: Sequence[Event], applied: Sequence[Event]
    ) -> None:
        with self._after_commit(entry.job.job_id):
            if new_events:
                self._hub.notify(entry.job.job_id)
            self._projection.appended(
                entry.job, new_events, applied, streams=self._hub.streams(entry.job.job_id)
            )

    @staticmethod
    def _after_commit(job_id: str) -> _AfterCommit:
        return _AfterCommit(job_id)

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


class _AfterCommit:
    """What follows a commit (watchers, metrics, logs) never fails the call: the client must
    learn that its write is stored. A failure is logged, with its traceback, and swallowed."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        if not isinstance(exc, Exception):
            return False
        _log.error("after a committed change of job %s", self.job_id, exc_info=exc)
        return True
