"""The Override command (SCALE, SET, CLEAR, REPLACE_SCHEDULE): :meth:`OverrideHandler.override`,
which a :class:`~controller.service.ControllerService` serves as its ``override``.

Inside the job's lock: the note and the override are checked (a replacement spec is built off
the event loop), then the job's state, the caller's expected version and the log's limits
(events, and bytes: it must fit in one message); the event is written, then applied.
"""

from __future__ import annotations

from dataclasses import replace

from controller.context import CommandHandler
from controller.errors import Conflict, FailedPrecondition, ResourceExhausted
from controller.jobs import (
    check_evaluable,
    check_note,
    check_override,
    event_bytes,
    log_bytes,
    with_events,
)
from controller.rows import Change
from lrctl.model import Job
from lrctl.overrides import Event, Op

__all__ = ["OverrideHandler"]


class OverrideHandler(CommandHandler):
    """The Override command of a :class:`~controller.service.ControllerService`: checks the
    override against the job and its limits, then appends it to the job's log."""

    async def override(
        self,
        job_id: str,
        op: Op,
        *,
        value: float | None = None,
        schedule: str | None = None,
        group: int | None = None,
        actor: str = "",
        reason: str = "",
        expected_version: int | None = None,
    ) -> tuple[Event, Job]:
        """Append an override event (SCALE, SET, CLEAR or REPLACE_SCHEDULE) to a job's log.

        Returns:
            The event and the job's head after it (no log).

        Raises:
            NotFound: no such job.
            InvalidArgument: a PLATEAU_REDUCE (only the controller decides those), or no
                replacement spec.
            OverrideError, SpecError: bad value, group or replacement spec.
            FailedPrecondition: the job is finished or cannot be evaluated.
            Conflict: ``expected_version`` is not the job's version.
            ResourceExhausted: an actor or reason past its limit, a log at its limit (events,
                or bytes: it must fit in one message), or validation past its deadline.
        """
        async with self._c.table.lock(job_id):
            entry = self._c.table.get(job_id)
            check_evaluable(entry)
            check_note(actor, reason, self._c.limits)
            n, core = entry.job.num_groups, self._c.limits.core
            if op is Op.REPLACE_SCHEDULE:  # builds a spec for n groups: off the loop
                schedule = await self._c.evaluator.run(
                    check_override, op, value, schedule, group, n, core
                )
            else:
                schedule = check_override(op, value, schedule, group, n, core)
            if not entry.running:
                raise FailedPrecondition(f"job {job_id!r} is finished; expected a running job")
            if expected_version is not None and expected_version != entry.job.version:
                raise Conflict(
                    f"expected job {job_id!r} at version {expected_version}, "
                    f"but it is at version {entry.job.version}"
                )
            if len(entry.job.events) >= self._c.limits.max_events_per_job:
                raise ResourceExhausted(
                    f"job {job_id!r} has {len(entry.job.events)} events, the most a job may "
                    f"hold (lrctl serve --max-events-per-job); finish it, or recreate it "
                    f"(CreateJob with replace) for an empty log"
                )
            keeps_value = op in (Op.SCALE, Op.SET)
            event = Event(
                version=entry.job.version + 1,
                op=op,
                value=float(value) if keeps_value and value is not None else None,
                schedule=schedule if op is Op.REPLACE_SCHEDULE else None,
                group=group,
                actor=actor,
                reason=reason,
                created_at=self._c.now(),
            )
            size = log_bytes(entry) + event_bytes(event)
            if size > self._c.log_budget:
                raise ResourceExhausted(
                    f"job {job_id!r}'s log would take {size} bytes, more than fits in one "
                    f"message beside the job ({self._c.log_budget} of lrctl serve "
                    f"--max-message-bytes {self._c.max_message_bytes}); shorten the reason, or "
                    f"recreate the job (CreateJob with replace) for an empty log"
                )
            job = replace(
                entry.job,
                version=event.version,
                updated_at=event.created_at,
                events=with_events(entry.job.events, (), [event]),
            )

            def apply() -> None:
                entry.job = job
                entry.plateau.on_events([event])

            await self._c.table.write(Change(job.head(), [event]), apply)
            self._c.after_write(entry, [event], [])
            return event, self._c.view(entry, events=False)
