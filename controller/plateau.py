"""ReduceLROnPlateau bookkeeping for the controller: which metric triggers a reduction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from copy import copy

from controller.rows import ConsumedMetric
from lrctl.limits import NO_LIMITS
from lrctl.model import Job
from lrctl.overrides import Event, Op
from lrctl.schedules import PlateauTracker, ReduceLROnPlateau, build_schedule

__all__ = ["JobPlateau"]


class JobPlateau:
    """ReduceLROnPlateau bookkeeping for one job: the tracker and the last consumed step.

    The tracker follows the job-wide schedule (the job's spec, or the latest REPLACE_SCHEDULE
    without a group); a replacement starts a fresh tracker. It is rebuilt on restart by
    replaying the stored metrics consumed under the current schedule.
    """

    def __init__(
        self, job: Job, events: Sequence[Event], consumed: Sequence[ConsumedMetric]
    ) -> None:
        self.num_groups = len(job.base_lrs)
        self.last_step = max((m.step for m in consumed), default=-1)
        self.schedule_version = job.created_version
        self.tracker: PlateauTracker | None = None
        self._install(job.schedule, job.created_version)
        self.on_events(events)
        for metric in consumed:
            if self.tracker is not None and metric.schedule_version == self.schedule_version:
                self.tracker.observe(metric.value)
        self._staged: tuple[PlateauTracker | None, int] | None = None

    @classmethod
    def idle(cls, job: Job) -> JobPlateau:
        """Bookkeeping that tracks nothing, for a job that cannot be evaluated (its spec
        does not build): it is loaded and marked, and never consumes a metric."""
        self = cls.__new__(cls)
        self.num_groups = len(job.base_lrs)
        self.last_step = -1
        self.schedule_version = job.created_version
        self.tracker = None
        self._staged = None
        return self

    def _install(self, spec: str, version: int) -> None:
        # Stored specs were checked against the limits when they were accepted.
        schedule = build_schedule(spec, self.num_groups, limits=NO_LIMITS)
        self.schedule_version = version
        self.tracker = schedule.tracker() if isinstance(schedule, ReduceLROnPlateau) else None

    def on_events(self, events: Iterable[Event]) -> None:
        """Follow job-wide schedule replacements."""
        for event in events:
            if event.op is Op.REPLACE_SCHEDULE and event.group is None and event.schedule:
                self._install(event.schedule, event.version)

    def consume(
        self, metrics: Iterable[tuple[int, float]], version: int, now: float
    ) -> tuple[list[Event], list[ConsumedMetric]]:
        """Feed new metrics (step order) to a copy of the tracker; :meth:`commit` keeps it.

        Returns:
            PLATEAU_REDUCE events (versions after ``version``) and the consumed metrics.
        """
        if self.tracker is None:
            return [], []
        tracker, last = copy(self.tracker), self.last_step
        events: list[Event] = []
        consumed: list[ConsumedMetric] = []
        for step, value in sorted(metrics, key=lambda m: m[0]):
            if step <= last:
                continue  # already consumed (a retried report)
            last = step
            consumed.append(ConsumedMetric(step, float(value), self.schedule_version))
            if tracker.observe(value):
                # Pending like every event: the workers apply it at an agreed step and rank 0
                # reports that step, so a resumed run replays what the live run did
                # (torch reduces inside the step(metric) call itself; docs/parity.md).
                events.append(
                    Event(
                        version=version + len(events) + 1,
                        op=Op.PLATEAU_REDUCE,
                        actor="plateau",
                        created_at=now,
                        reason=f"metric {value!r} did not improve on {tracker.best!r} "
                        f"for more than {tracker.patience} steps",
                    )
                )
        self._staged = (tracker, last)
        return events, consumed

    def commit(self) -> None:
        """Keep the tracker state of the last :meth:`consume` (its write is durable)."""
        if self._staged is not None:
            self.tracker, self.last_step = self._staged
            self._staged = None
