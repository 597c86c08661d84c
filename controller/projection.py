"""How a stored job looks from outside: its displayed LRs, its metrics and its change log.

The LR that GetJob, ListJobs, Watch snapshots and ``lrctl_learning_rate`` show is
``LRProgram(spec, base_lrs, resolve_pending(events, s)).lrs(s)`` with ``s = max(step, 0)``:
the LR at the latest step rank 0 reported, pending events shown as if they took effect now.
Each job's :class:`~controller.display.JobDisplay` follows its log incrementally (an override
or a report extends the program instead of rebuilding it over the whole log), so the cost of
a change does not grow with the job's history.

Evaluating a step is bounded on the event loop: a recurrence schedule more than
:data:`DISPLAY_MAX_COST` of replay ahead of what its display has computed (a report of a far
step) shows the LRs rank 0 reported instead, as does a step the schedule does not evaluate
(OneCycleLR past ``total_steps``). A view never raises: it is built after a commit.

Every side effect of a state change that is not the state itself (metric series, the
one-line change log, torch's ``verbose`` LR messages) happens here, once the change is durable.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

from controller import logs
from controller.display import Changed, JobDisplay
from controller.metrics import ControllerMetrics
from lrctl.errors import LrctlError
from lrctl.model import Job, Report
from lrctl.overrides import Event

__all__ = ["DISPLAY_MAX_COST", "Projection", "pending_count"]

_lr_log = logging.getLogger("lrctl.controller.lr")
_log = logging.getLogger("lrctl.controller.projection")

#: Replay work (:meth:`lrctl.program.LRProgram.cost` units, ~0.1-0.2 µs each) one displayed
#: LR may cost on the event loop: a few ms. Further, the LRs rank 0 reported are shown.
DISPLAY_MAX_COST = 20_000


def pending_count(job: Job) -> int:
    """Events accepted but not yet applied by every rank.

    An event is pending until rank 0 reports the step it took effect at, and while its
    version is above the agreed version every rank has applied (``job.applied_version``).
    """
    return sum(1 for e in job.events if e.effective_step is None or e.version > job.applied_version)


class Projection:
    """Displayed LRs (cached per job), metrics and change logs of the controller's jobs.

    Args:
        metrics: Where to export job metrics, or None.
    """

    def __init__(self, metrics: ControllerMetrics | None = None) -> None:
        self._metrics = metrics
        self._display: dict[str, JobDisplay] = {}
        # job -> (the finished job, its displayed LRs): they no longer move, so a finished
        # job is evaluated once, not at every ListJobs page or Watch stream that shows it.
        self._finished: dict[str, tuple[Job, tuple[float, ...]]] = {}

    # -- views ---------------------------------------------------------------------------------

    def lr(self, job: Job) -> tuple[float, ...]:
        """The LR of each group at the job's step with pending events taking effect now."""
        if not job.finished:
            return self._lr(job)
        kept = self._finished.get(job.job_id)
        if kept is None or kept[0] is not job:
            kept = self._finished[job.job_id] = (job, self._lr(job))
        return kept[1]

    def _lr(self, job: Job) -> tuple[float, ...]:
        step = max(job.step, 0)
        try:
            # A finished job's display is not kept: listing 100,000 finished jobs must not
            # leave 100,000 programs in memory.
            display = JobDisplay(job) if job.finished else self._follow(job)
            return tuple(display.program(step).lrs(step, max_cost=DISPLAY_MAX_COST))
        except LrctlError:
            # e.g. OneCycleLR stepped past total_steps (torch raises too), or a recurrence far
            # ahead of what it computed: show what rank 0 saw.
            return job.lr if job.lr else (math.nan,) * len(job.base_lrs)
        except Exception:  # a view follows a commit: it must not fail
            _log.exception("cannot compute the displayed LR of job %s", job.job_id)
            self.forget(job.job_id)
            return job.lr if job.lr else (math.nan,) * len(job.base_lrs)

    def view(self, job: Job, *, events: bool = True, workers: int = 0, streams: int = 0) -> Job:
        """Return ``job`` as clients see it: displayed LRs, stream counts, log or head."""
        return dataclasses.replace(
            job,
            lr=self.lr(job),
            workers=workers,
            watch_streams=streams,
            events=job.events if events else (),
        )

    def pending(self, job: Job) -> int:
        """Events accepted but not yet applied by every rank (:func:`pending_count`),
        counted in O(log) from the job's display."""
        try:
            return self._follow(job).pending(job.applied_version)
        except Exception:  # the display cannot be built: count over the log
            return pending_count(job)

    def check(self, job: Job) -> None:
        """Build ``job``'s display now; raise what keeps it from being evaluated (a spec,
        base LRs or a replacement this release refuses)."""
        self._follow(job)

    def forget(self, job_id: str) -> None:
        """Drop a job's cached program (it was recreated: other spec, other groups)."""
        self._display.pop(job_id, None)
        self._finished.pop(job_id, None)

    def _follow(self, job: Job, new_events: Changed = None, applied: Changed = None) -> JobDisplay:
        """The job's display, brought up to ``job`` (built on first use)."""
        display = self._display.get(job.job_id)
        if display is None:
            display = self._display[job.job_id] = JobDisplay(job)
        else:
            display.follow(job, new_events, applied)
        return display

    # -- side effects of durable changes -------------------------------------------------------

    def created(self, job: Job, *, recreated: bool, streams: int, actor: str = "") -> None:
        """A job was created (or recreated in place) by ``actor`` (a token's name, or "")."""
        self.forget(job.job_id)
        logs.log_change(
            job.job_id,
            job.version,
            "recreate" if recreated else "create",
            actor,
            schedule=job.schedule,
            base_lrs=list(job.base_lrs),
        )
        self.export(job, streams)

    def attached(self, job: Job, actor: str = "") -> None:
        """Rank 0 of a run attached to ``job`` and got the attach epoch ``job.epoch``."""
        logs.log_change(
            job.job_id, job.version, "attach", actor, epoch=job.epoch, world_size=job.world_size
        )

    def appended(
        self, job: Job, new_events: Sequence[Event], applied: Sequence[Event], *, streams: int
    ) -> None:
        """Events were appended to ``job`` and/or took effect (``applied``)."""
        for event in new_events:
            logs.log_change(
                job.job_id,
                event.version,
                event.op.value,
                event.actor,
                event.reason,
                value=event.value,
                schedule=event.schedule,
                group=event.group,
                effective_step=event.effective_step,
            )
        try:
            if job.finished:
                self.forget(job.job_id)  # shown rarely: built when asked, not kept
            else:
                self._follow(job, new_events, applied)  # the delta: no comparison of logs
        except LrctlError:
            self.forget(job.job_id)  # views show what rank 0 saw
        if self._metrics is None:
            return
        for event in applied:
            if event.applied_at is not None:
                self._metrics.observe_apply(event.applied_at - event.created_at)
        if not job.finished:
            for event in new_events:
                self._metrics.count_override(job.job_id, event.op.value)
            self.export(job, streams)

    def reported(self, before: Job, after: Job, report: Report) -> None:
        """Rank 0's ``report`` took the job from ``before`` to ``after``."""
        if before.verbose and report.lrs:
            old = before.lr
            for group, value in enumerate(report.lrs):
                if group >= len(old) or old[group] != value:
                    # torch's verbose=True wording, with the job in front.
                    _lr_log.info(
                        "job=%s step=%d: adjusting learning rate of group %d to %.4e.",
                        after.job_id,
                        after.step,
                        group,
                        value,
                    )
        if self._metrics is not None and not after.finished:
            self._metrics.count_divergence(after.job_id, len(report.divergences))

    def finished(self, job: Job, actor: str = "") -> None:
        """A job was finished (by ``actor``): its metric series go, its cached program too."""
        self.forget(job.job_id)
        if self._metrics is not None:
            self._metrics.remove_job(job.job_id)
        logs.log_change(job.job_id, job.version, "finish", actor)

    def export(self, job: Job, streams: int) -> None:
        """Set every gauge of a running job."""
        if self._metrics is None or job.finished:
            return
        self._metrics.update_job(job.job_id, self.lr(job), job.step, job.version)
        self._metrics.set_workers(job.job_id, job.world_size)
        self._metrics.set_watch_streams(job.job_id, streams)
        self._metrics.update_overrides(job.job_id, job.events, pending=self.pending(job))

    def streams_changed(self, job: Job, streams: int) -> None:
        """The number of open Watch streams of a job changed."""
        if self._metrics is not None and not job.finished:
            self._metrics.set_watch_streams(job.job_id, streams)
