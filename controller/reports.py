"""The Report command, a worker's progress: :meth:`ReportHandler.report`, which a
:class:`~controller.service.ControllerService` serves as its ``report``.

Rank 0's report is checked against the job's attach epoch, then sets the effective step of
each event it applied, the job's progress (step, LRs, applied version, world size; the final
report sets the world size to 0), consumes plateau metrics (possibly appending PLATEAU_REDUCE
events, as many as fit in the job's log) and counts divergences in metrics. The decisions are
in docs/controller.md ("Reports").
"""

from __future__ import annotations

import logging
from dataclasses import replace

from controller.context import CommandHandler
from controller.errors import InvalidArgument
from controller.jobs import (
    JobEntry,
    check_epoch,
    check_evaluable,
    check_report,
    event_bytes,
    log_bytes,
    mark_applied,
    with_events,
)
from controller.rows import Change, ConsumedMetric
from lrctl import constants
from lrctl.model import Report
from lrctl.overrides import Event

__all__ = ["ReportHandler"]

_log = logging.getLogger("lrctl.controller.service")


class ReportHandler(CommandHandler):
    """The Report command of a :class:`~controller.service.ControllerService`."""

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
        (:meth:`controller.lifecycle.JobLifecycle.create_job` with ``attach``). Before any attach
        the job's epoch is 0 and a report carrying 0 is accepted (a job created by an operator, a
        tool that does not attach); once a rank 0 attached, anything else changes nothing.

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
        items = max(len(report.applied), len(report.plateau_metrics), len(report.divergences))
        if items > self._c.limits.max_report_items:
            raise InvalidArgument(
                f"expected at most {self._c.limits.max_report_items} applied versions, plateau "
                f"metrics and divergences each in one report (lrctl serve --max-report-items), "
                f"got {len(report.applied)}, {len(report.plateau_metrics)} and "
                f"{len(report.divergences)}; send them over several reports"
            )
        if report.rank < 0 or report.step < -1 or report.world_size < 0:
            raise InvalidArgument(
                f"expected rank >= 0, step >= -1 and world_size >= 0, got "
                f"rank={report.rank}, step={report.step}, "
                f"world_size={report.world_size}"
            )
        async with self._c.table.lock(report.job_id):
            entry = self._c.table.get(report.job_id)
            check_evaluable(entry)
            before = entry.job
            check_epoch(before, report.epoch)
            if report.rank != 0:
                return before.version
            pairs = sorted(set(report.applied))
            check_report(before, report, pairs)
            now = self._c.now()
            done = mark_applied(before.events, pairs, now)
            new_events: list[Event] = []
            consumed: list[ConsumedMetric] = []
            job = before
            if entry.running:
                new_events, consumed = entry.plateau.consume(
                    report.plateau_metrics, before.version, now
                )
                new_events = self._room(entry, new_events)
                job = replace(
                    before,
                    step=report.step,
                    lr=report.lrs or before.lr,
                    applied_version=report.applied_version,
                    world_size=0 if report.final else report.world_size,
                    updated_at=now,
                )
            elif not done:
                return before.version
            if done or new_events:
                job = replace(
                    job,
                    version=new_events[-1].version if new_events else job.version,
                    events=with_events(job.events, done, new_events),
                )

            def apply() -> None:
                entry.job = job
                entry.plateau.commit()

            # Effective steps, new events, plateau metrics and a run's final report are
            # durable before the reply; bare progress (step, LRs, ~10/s from rank 0) is
            # fsynced at most every PROGRESS_PERSIST_S; a restart may show a slightly older
            # step, never another version.
            if (
                done
                or new_events
                or consumed
                or report.final
                or now - entry.persisted_at >= constants.PROGRESS_PERSIST_S
            ):
                await self._c.table.write(Change(job.head(), new_events, done, consumed), apply)
                entry.persisted_at = now
            else:
                apply()
            with self._c.after_commit(report.job_id):
                self._c.projection.reported(before, job, report)
            self._c.after_write(entry, new_events, done)
            return job.version

    def _room(self, entry: JobEntry, events: list[Event]) -> list[Event]:
        """The plateau reductions that fit in the job's log (events and bytes); the rest
        are dropped with a warning: a report must not fail for a full log."""
        room = self._c.limits.max_events_per_job - len(entry.job.events)
        size = log_bytes(entry)
        kept: list[Event] = []
        for event in events:
            size += event_bytes(event)
            if len(kept) >= room or size > self._c.log_budget:
                _log.warning(
                    "job %s: its log is full (lrctl serve --max-events-per-job, "
                    "--max-message-bytes); %d plateau reduction(s) not appended",
                    entry.job.job_id,
                    len(events) - len(kept),
                )
                break
            kept.append(event)
        return kept
