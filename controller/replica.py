"""Keeping one replica's memory in step with a shared database (PostgreSQL replicas).

With a shared :class:`~controller.store_api.JobStore` the database is the source of truth and
a replica's in-memory jobs are a cache of it, refreshed two ways:

* before every mutation, inside the job's row lock (:meth:`JobStore.lock`), from the
  :class:`~controller.store_api.Delta` of what other replicas wrote since the revision this
  replica holds: versions, ``expected_version`` checks, effective steps and plateau decisions
  are then made on the database's state, once, whichever replica receives the call;
* after every change any replica commits, from the store's change feed
  (:meth:`JobStore.subscribe`, LISTEN/NOTIFY): the watchers of this replica are woken within
  milliseconds. A delta is read by revision from the database, never from the notification,
  so the log a replica serves stays a gap-free prefix of the database's even when
  notifications are lost (the store resyncs after reconnecting).

:func:`apply_delta` is the one place a delta becomes in-memory state.
"""

from __future__ import annotations

from dataclasses import replace

from controller.jobs import JobEntry
from controller.plateau import JobPlateau
from controller.store_api import Delta
from lrctl.overrides import Event

__all__ = ["apply_delta"]


def apply_delta(entry: JobEntry | None, delta: Delta) -> tuple[JobEntry, list[Event]]:
    """Bring ``entry`` (None: a job new to this replica) up to ``delta``.

    Returns:
        The entry (``entry`` updated in place, or a new one for a new or recreated job) and
        the events that are new to this replica (version order).
    """
    if entry is None or delta.full:
        events = tuple(sorted(delta.events, key=lambda e: e.version))
        job = replace(delta.record, events=events)
        fresh = JobEntry(job, JobPlateau(job, list(events), list(delta.plateau_metrics)))
        known = (
            set()
            if entry is None or entry.job.created_version != job.created_version
            else {e.version for e in entry.job.events}
        )
        return fresh, [e for e in events if e.version not in known]
    by_version = {e.version: e for e in entry.job.events}
    new = [e for e in sorted(delta.events, key=lambda e: e.version) if e.version not in by_version]
    by_version.update((e.version, e) for e in delta.events)
    entry.job = replace(delta.record, events=tuple(by_version[v] for v in sorted(by_version)))
    plateau = entry.plateau
    plateau.on_events(new)  # a job-wide replacement installs a fresh tracker first
    for metric in sorted(delta.plateau_metrics, key=lambda m: m.step):
        plateau.last_step = max(plateau.last_step, metric.step)
        if plateau.tracker is not None and metric.schedule_version == plateau.schedule_version:
            plateau.tracker.observe(metric.value)
    return entry, new
