"""What the controller's domain service hands out: job views, watch messages, job ids."""

from __future__ import annotations

import base64
import binascii
import enum
import re
from dataclasses import dataclass

from controller.errors import InvalidArgument
from lrctl.overrides import Event

__all__ = ["JobView", "WatchKind", "WatchMessage", "check_job_id", "decode_token",
           "encode_token"]

JOB_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it is 1-128 characters of ``[A-Za-z0-9._:-]``.

    Raises:
        InvalidArgument: anything else.
    """
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise InvalidArgument(f"expected a job id of 1-128 characters from [A-Za-z0-9._:-], "
                              f"got {job_id!r}")
    return job_id


@dataclass(frozen=True)
class JobView:
    """A job as clients see it (GetJob, ListJobs, Watch snapshots)."""

    job_id: str
    schedule: str
    base_lrs: tuple[float, ...]
    version: int
    step: int
    lrs: tuple[float, ...]
    finished: bool
    verbose: bool
    created_at: float
    updated_at: float
    workers: int
    events: tuple[Event, ...] = ()
    created_version: int = 1


class WatchKind(str, enum.Enum):
    """What a :class:`WatchMessage` carries."""

    SNAPSHOT = "snapshot"
    EVENT = "event"
    RESYNC = "resync"
    HEARTBEAT = "heartbeat"
    FINISHED = "finished"


@dataclass(frozen=True)
class WatchMessage:
    """One message of a watch stream; ``version`` is the job's version after it."""

    kind: WatchKind
    version: int
    job: JobView | None = None
    event: Event | None = None


def encode_token(after: str) -> str:
    """Return the opaque ListJobs page token that resumes after job ``after``."""
    return base64.urlsafe_b64encode(after.encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    """Return the job id a page token resumes after ("" for the first page)."""
    if not token:
        return ""
    try:
        after = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = ""
    if not JOB_ID_RE.fullmatch(after):
        raise InvalidArgument(f"expected a page_token from a previous ListJobs, got {token!r}")
    return after
