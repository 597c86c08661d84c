"""The LRs a job shows, kept up to date in O(change) instead of rebuilt over its log.

``lr = LRProgram(spec, base_lrs, resolve_pending(events, s)).lrs(s)`` with ``s = max(step, 0)``
(docs/controller.md). :class:`JobDisplay` holds the program of the job's *applied* events and
extends it (:meth:`lrctl.program.LRProgram.extend`) as rank 0 applies more, and the program
*shown*: that one plus the pending events taking effect at ``s``, extended as overrides
arrive. So an override or a report costs the same at 10 events as at 10,000; the whole log
is read again only when it changed in a way an extension cannot express (a job recreated,
events applied out of step order), which is then a rebuild, as before.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from lrctl.limits import NO_LIMITS
from lrctl.model import Job
from lrctl.overrides import Event, resolve_pending
from lrctl.program import LRProgram
from lrctl.schedules import Schedule

__all__ = ["Changed", "JobDisplay"]

#: Events a caller knows were appended or marked applied (None: compare the logs).
Changed = Sequence[Event] | None


class JobDisplay:
    """The displayed LRs and pending count of one job, following its successive versions.

    Args:
        job: The job as stored now, with its log.
    """

    def __init__(self, job: Job) -> None:
        self._built: dict[str, Schedule] = {}  # built schedules, reused by every rebuild
        self._rebuild(job)

    def _rebuild(self, job: Job) -> None:
        events = job.events
        self._job = job
        self._n = len(events)
        # Pending events (no effective step), in version order: (version, index in the log).
        self._pending: list[tuple[int, int]] = [
            (e.version, i) for i, e in enumerate(events) if e.effective_step is None
        ]
        # A stored job was checked against the limits when it was accepted; a lower limit
        # since then must not make it unreadable.
        self._applied = LRProgram(job.schedule, job.base_lrs, events, self._built, limits=NO_LIMITS)
        self._forget_shown()

    def _forget_shown(self) -> None:
        self._shown: LRProgram | None = None
        self._shown_step = -1
        self._shown_count = 0  # how many of self._pending the shown program holds

    # -- following the job -------------------------------------------------------------------

    def follow(self, job: Job, new_events: Changed = None, applied: Changed = None) -> None:
        """Take ``job``, the next state of the job this display follows.

        Args:
            job: The job now.
            new_events: The events appended since the job this display last saw, if the
                caller knows (else the log is compared, in O(pending)).
            applied: The events that got their effective step since then, if known.
        """
        old = self._job
        if job is old:
            return
        events = job.events
        same_spec = job.schedule == old.schedule and job.base_lrs == old.base_lrs
        if events is old.events and same_spec:  # progress, attach...: the same log
            self._job = job
            return
        n = len(events)
        if (
            job.created_version != old.created_version
            or not same_spec
            or n < self._n
            or (self._n and events[self._n - 1].version != old.events[-1].version)
            or (new_events is not None and n != self._n + len(new_events))
        ):
            self._rebuild(job)  # not an extension of the log this display holds
            return
        if applied is None:
            applied = [events[i] for _, i in self._pending if events[i].effective_step is not None]
        fresh: list[Event] = []
        done: set[int] = set()
        for event in applied:  # pending events that got their effective step
            k = bisect_left(self._pending, event.version, key=lambda p: p[0])
            if k < len(self._pending) and self._pending[k][0] == event.version:
                now = events[self._pending[k][1]]
                if now.effective_step is not None:
                    fresh.append(now)
                    done.add(now.version)
        if done:
            self._pending = [p for p in self._pending if p[0] not in done]
        for i in range(self._n, n):
            event = events[i]
            if event.effective_step is None:
                self._pending.append((event.version, i))
            else:
                fresh.append(event)
        self._job, self._n = job, n
        if done:
            self._forget_shown()
        if fresh:
            fresh.sort(key=lambda e: (e.effective_step or 0, e.version))
            try:
                self._applied = self._applied.extend(fresh)
            except ValueError:  # applied out of step order: read the whole log again
                self._rebuild(job)
                return
            self._forget_shown()

    # -- what it shows -----------------------------------------------------------------------

    def program(self, step: int) -> LRProgram:
        """The program whose ``lrs(step)`` the job shows (pending events effective at ``step``)."""
        pending = self._pending
        if not pending:
            return self._applied
        events = self._job.events
        if self._shown is None or self._shown_step != step:
            base, start = self._applied, 0
        else:
            base, start = self._shown, self._shown_count
        if start < len(pending):
            resolved = [
                dataclasses.replace(events[i], effective_step=step) for _, i in pending[start:]
            ]
            try:
                shown = base.extend(resolved)
            except ValueError:  # an applied event after `step`: evaluate the whole log
                shown = LRProgram(
                    self._job.schedule,
                    self._job.base_lrs,
                    resolve_pending(events, step),
                    self._built,
                    limits=NO_LIMITS,
                )
            self._shown, self._shown_step, self._shown_count = shown, step, len(pending)
            return shown
        return base

    def pending(self, applied_version: int) -> int:
        """Events without an effective step or above ``applied_version`` (not applied by
        every rank): O(log) with the log in version order."""
        events = self._job.events
        above = len(events) - bisect_right(events, applied_version, key=lambda e: e.version)
        below = bisect_right(self._pending, applied_version, key=lambda p: p[0])
        return above + below
