"""A job's lifecycle: the CreateJob command (create, recreate with ``replace``, attach) and
FinishJob: :meth:`JobLifecycle.create_job` and :meth:`JobLifecycle.finish_job`, which a
:class:`~controller.service.ControllerService` serves as its ``create_job`` and ``finish_job``.

A create validates the spec off the event loop, then, inside the job's lock, attaches to the
running job with the same spec and base LRs, refuses another spec (without ``replace``), or
(re)creates the job. An attach hands out the job's next attach epoch under the same lock.
The decisions are in docs/controller.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from controller.context import CommandHandler
from controller.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from controller.jobs import JobEntry, check_evaluable, create_conflict, same_spec
from controller.plateau import JobPlateau
from controller.rows import Change
from lrctl.model import Job, JobState, check_job_id
from lrctl.program import LRProgram
from lrctl.schedules import check_num_groups

__all__ = ["JobLifecycle"]


class JobLifecycle(CommandHandler):
    """The CreateJob and FinishJob commands of a :class:`~controller.service.ControllerService`."""

    async def create_job(
        self,
        job_id: str,
        schedule: str,
        base_lrs: Sequence[float],
        *,
        replace_existing: bool = False,
        verbose: bool = False,
        attach: bool = False,
        world_size: int = 0,
        actor: str = "",
    ) -> tuple[Job, bool]:
        """Create a job, or attach to the running one with the same spec and base LRs.

        With ``attach`` (rank 0 of a training run) the job gets a new attach epoch, stored with it,
        one above the last: from then on only reports carrying that epoch change anything
        (:meth:`controller.reports.ReportHandler.report`), so the newest attach wins. The epoch is
        handed out inside the job's lock (with PostgreSQL, its row-lock transaction), so two
        attaches, on any replicas, never get the same one. A recreation keeps the job's epoch.
        ``actor`` (the caller's token name, or "") goes to the change log.

        Returns:
            The job (``job.epoch`` is the attach's epoch) and whether it was (re)created.

        Raises:
            InvalidArgument: bad job id or a negative world size.
            SpecError: bad spec or base LRs.
            SizeLimitError: more param groups or a longer spec than the limits allow.
            ResourceExhausted: as many jobs as allowed, or validation past its deadline.
            FailedPrecondition: the job exists with another spec (or is finished, or cannot
                be evaluated) and ``replace_existing`` is false.
        """
        check_job_id(job_id)
        if world_size < 0:
            raise InvalidArgument(f"expected world_size >= 0, got {world_size}")
        if len(base_lrs) > self._c.limits.max_param_groups:  # before copying a million
            check_num_groups(len(base_lrs), self._c.limits.core)
        program = await self._c.evaluator.run(
            LRProgram, schedule, list(base_lrs), limits=self._c.limits.core
        )
        canonical, lrs = program.schedule.spec.to_text(), tuple(program.base_lrs)
        async with self._c.table.lock(job_id, create=True):
            old = self._c.table.jobs.get(job_id)
            if old is None and len(self._c.table.jobs) >= self._c.limits.max_jobs:
                raise ResourceExhausted(
                    f"this controller holds {len(self._c.table.jobs)} jobs, the most it may "
                    f"(lrctl serve --max-jobs); expected the id of an existing job, got "
                    f"{job_id!r}"
                )
            if old is not None and not replace_existing:
                check_evaluable(old)
            if old is not None:
                same = same_spec(old.job.schedule, canonical) and old.job.base_lrs == lrs
                if same and old.running:
                    if attach:
                        await self._attach(old, world_size, actor)
                    return self._c.view(old), False
                if not replace_existing:
                    raise FailedPrecondition(create_conflict(old.job, canonical, lrs))
            now = self._c.now()
            version = 1 if old is None else old.job.version + 1
            epoch = 0 if old is None else old.job.epoch
            job = Job(
                job_id=job_id,
                schedule=canonical,
                base_lrs=lrs,
                version=version,
                created_version=version,
                verbose=verbose,
                created_at=now,
                updated_at=now,
                epoch=epoch + 1 if attach else epoch,
                world_size=world_size if attach else 0,
            )

            def apply() -> JobEntry:
                # Recreated in place: the old incarnation's watchers wake up to a RESYNC.
                entry = JobEntry(job, JobPlateau(job, [], []))
                self._c.table.jobs[job_id] = entry
                return entry

            entry = await self._c.table.write(Change(job, reset=old is not None), apply)
            with self._c.after_commit(job_id):
                self._c.hub.notify(job_id)
                self._c.projection.created(
                    job, recreated=old is not None, streams=self._c.hub.streams(job_id), actor=actor
                )
                if attach:
                    self._c.projection.attached(job, actor)
            return self._c.view(entry), True

    async def _attach(self, entry: JobEntry, world_size: int, actor: str) -> None:
        """Give the running job in ``entry`` a new attach epoch (caller holds its lock).

        The version does not change: no event is added, watchers have nothing to apply.
        """
        job = replace(
            entry.job, epoch=entry.job.epoch + 1, world_size=world_size, updated_at=self._c.now()
        )

        def apply() -> None:
            entry.job = job

        await self._c.table.write(Change(job.head()), apply)
        with self._c.after_commit(job.job_id):
            self._c.projection.attached(entry.job, actor)
            self._c.projection.export(entry.job, self._c.hub.streams(job.job_id))

    async def finish_job(self, job_id: str, *, actor: str = "") -> Job:
        """Mark a job finished: bump its version, end its watches, drop its metric series.

        Raises:
            InvalidArgument: malformed job id.
            NotFound: no such job.
        """
        async with self._c.table.lock(job_id):
            entry = self._c.table.get(job_id)
            if not entry.running:
                return self._c.view(entry)
            job = replace(
                entry.job,
                state=JobState.FINISHED,
                version=entry.job.version + 1,
                updated_at=self._c.now(),
            )

            def apply() -> None:
                entry.job = job

            await self._c.table.write(Change(job), apply)
            with self._c.after_commit(job_id):
                self._c.hub.notify(job_id)
                self._c.projection.finished(job, actor)
            return self._c.view(entry)
