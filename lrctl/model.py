"""The domain model: one Python type per concept, shared by the controller, the workers, the
client and the CLI.

* :class:`~lrctl.overrides.Event` (in :mod:`lrctl.overrides`) is one entry of a job's log;
  :class:`~lrctl.overrides.History` is a log as ``Client.history`` returns it.
* :class:`Job` is a job: its schedule, base LRs, version, progress and (optionally) its log.
* :class:`WatchMessage` is one message of a Watch stream.
* :class:`Report` is what rank 0 tells the controller about its progress.

Every time is a float of Unix seconds (0.0 or None when unknown), rendered as ISO 8601 UTC
in JSON. Conversion to and from protobuf is in :mod:`lrctl.convert` only.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from typing import Any

from lrctl._render import iso_time, json_floats, shorten
from lrctl.errors import JobIdError
from lrctl.overrides import Event

__all__ = [
    "JOB_ID_PATTERN",
    "Divergence",
    "Job",
    "JobState",
    "Report",
    "WatchKind",
    "WatchMessage",
    "check_job_id",
]

#: Job ids (DESIGN "Job ids"): 1-128 characters, no spaces and no glob characters, so token
#: scopes can match them with fnmatch patterns.
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}")


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it matches :data:`JOB_ID_PATTERN`.

    Raises:
        JobIdError: anything else (the message quotes at most 140 characters of it).
    """
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        shown = shorten(repr(job_id), 140)
        raise JobIdError(
            f"expected a job id of 1-128 characters matching {JOB_ID_PATTERN.pattern}, got {shown}"
        )
    return job_id


class JobState(str, enum.Enum):
    """Whether a job is still followed by training."""

    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class Job:
    """A job: its schedule, base LRs and progress, and (optionally) its override log.

    The controller stores it, Get/List/Watch hand it out, the client returns it and a worker
    follows it. A job without ``events`` is a *head* (ListJobs, the Override response).

    Attributes:
        job_id: The job's id, e.g. ``"run-42"``.
        schedule: Canonical spec text, e.g. ``"StepLR(step_size=200, gamma=0.5)"``.
        base_lrs: One base LR per param group (torch's ``initial_lr``).
        version: Strictly increasing; bumped by creation, every event and finishing.
        created_version: Version at which this incarnation was created (a CreateJob with
            ``replace`` recreates the job); lower versions belong to an earlier incarnation.
        step: Latest step reported by rank 0; -1 before any report.
        lr: Each group's LR at ``step`` (at step 0 before any report), pending events
            included.
        state: Running or finished.
        verbose: Workers log every LR change (torch's ``verbose``).
        workers: Ranks with an open Watch stream (as the controller that answered counts).
        epoch: Attach epoch of the training run reporting for the job; 0 before any attach.
        world_size: World size reported by the attached rank 0; 0 when none is attached.
        watch_streams: Watch streams open on this job (on the controller that answered).
        applied_version: Highest version every rank has applied, as rank 0 last reported.
        created_at: Unix time of (re)creation.
        updated_at: Unix time of the latest change.
        events: The override log, oldest first; empty in a head.
    """

    job_id: str
    schedule: str
    base_lrs: tuple[float, ...]
    version: int
    created_version: int = 1
    step: int = -1
    lr: tuple[float, ...] = ()
    state: JobState = JobState.RUNNING
    verbose: bool = False
    workers: int = 0
    epoch: int = 0
    world_size: int = 0
    watch_streams: int = 0
    applied_version: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    events: tuple[Event, ...] = ()

    @property
    def finished(self) -> bool:
        """True once the job was finished (it stays readable)."""
        return self.state is JobState.FINISHED

    @property
    def num_groups(self) -> int:
        """Number of param groups."""
        return len(self.base_lrs)

    @property
    def pending(self) -> tuple[Event, ...]:
        """Events accepted but not yet applied by the workers, oldest first."""
        return tuple(e for e in self.events if e.pending)

    def head(self) -> Job:
        """Return this job without its event log."""
        return dataclasses.replace(self, events=()) if self.events else self

    def at(self, version: int) -> Job:
        """Return the job as of ``version``: the events up to it, ``version`` set to it.

        Only meaningful for versions of this incarnation (``>= created_version``); a worker
        keeps the previous incarnation itself for older ones.
        """
        if version >= self.version:
            return self
        return dataclasses.replace(
            self, version=version, events=tuple(e for e in self.events if e.version <= version)
        )

    def to_dict(self, *, events: bool = True) -> dict[str, Any]:
        """Return the CLI's JSON form (``lrctl job get --json``).

        Times are ISO 8601 UTC strings (None when unset); non-finite LRs are the strings
        ``"inf"``, ``"-inf"`` and ``"nan"``. ``events=False`` leaves the log out.
        """
        data: dict[str, Any] = {
            "job_id": self.job_id,
            "version": self.version,
            "step": self.step,
            "lr": json_floats(self.lr),
            "schedule": self.schedule,
            "base_lrs": json_floats(self.base_lrs),
            "state": self.state.value,
            "workers": self.workers,
            "world_size": self.world_size,
            "applied_version": self.applied_version,
            "verbose": self.verbose,
            "created_at": iso_time(self.created_at),
            "updated_at": iso_time(self.updated_at),
        }
        if events:
            data["events"] = [e.to_dict() for e in self.events]
        return data


class WatchKind(str, enum.Enum):
    """What a :class:`WatchMessage` carries (its value is the lower-case name)."""

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[Any]) -> str:
        return name.lower()

    SNAPSHOT = enum.auto()
    """Full job state; the first message of a fresh watch."""
    EVENT = enum.auto()
    """One new event (versions arrive in order, none skipped)."""
    RESYNC = enum.auto()
    """Full job state because the resume point is gone: replace what you hold."""
    HEARTBEAT = enum.auto()
    """Nothing new; ``version`` is the current version."""
    FINISHED = enum.auto()
    """The job was finished; ``job`` is its final state. The stream then ends."""


@dataclass(frozen=True)
class WatchMessage:
    """One message of a Watch stream.

    Attributes:
        kind: What it carries.
        version: The job's version after this message.
        job: Full job state (snapshot, resync, finished).
        event: The new event (``kind is WatchKind.EVENT``).
    """

    kind: WatchKind
    version: int
    job: Job | None = None
    event: Event | None = None


@dataclass(frozen=True)
class Divergence:
    """Ranks found applying different LRs (or versions) at the same step.

    Attributes:
        step: Scheduler step at which the ranks' checksums differed.
        version: The agreed version at that step.
        lr_checksums: One checksum of the applied LRs per rank.
        detail: What differed, for people (the controller bounds its length).
    """

    step: int
    version: int
    lr_checksums: tuple[float, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class Report:
    """What rank 0 tells the controller (``Report``).

    Attributes:
        job_id: The job.
        rank: The reporting rank (0 under ``torch.distributed``).
        step: Scheduler step (torch's ``last_epoch``).
        applied_version: The version applied in ``param_groups`` on every rank (the
            agreed version).
        lrs: Each group's LR at ``step``.
        applied: ``(version, effective_step)`` of each version that took effect since the
            last report.
        plateau_metrics: ``(step, value)`` of each ``step(metric)`` call since the last
            report (ReduceLROnPlateau).
        final: The run finished (scheduler closed); the controller stores it durably now.
        epoch: The attach epoch from CreateJob (the job's epoch: 0 until a rank 0 attaches).
        world_size: World size of the run; 1 for single-process training, 0 unknown.
        divergences: Rank divergences detected since the last report.
    """

    job_id: str
    rank: int = 0
    step: int = -1
    applied_version: int = 0
    lrs: tuple[float, ...] = ()
    applied: tuple[tuple[int, int], ...] = ()
    plateau_metrics: tuple[tuple[int, float], ...] = ()
    final: bool = False
    epoch: int = 0
    world_size: int = 0
    divergences: tuple[Divergence, ...] = ()
