"""A job as the controller holds it in memory, job ids, and ListJobs page tokens."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from controller.errors import InvalidArgument
from controller.plateau import JobPlateau
from lrctl.model import Job

__all__ = ["JOB_ID_RE", "JobEntry", "check_job_id", "decode_token", "encode_token"]

JOB_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass
class JobEntry:
    """One job in memory; its fields are replaced only after the write behind them is durable.

    Attributes:
        job: The job as stored, with its current log. ``job.lr`` holds the LRs rank 0 last
            reported; views show the LRs computed from the schedule instead
            (:class:`controller.projection.Projection`), and ``workers``/``watch_streams``
            are counted by the watch hub.
        plateau: ReduceLROnPlateau bookkeeping.
        persisted_at: When rank 0's bare progress was last written (throttled writes).
    """

    job: Job
    plateau: JobPlateau
    persisted_at: float = 0.0

    @property
    def running(self) -> bool:
        """True until the job is finished."""
        return not self.job.finished


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it is 1-128 characters of ``[A-Za-z0-9._:-]``.

    Raises:
        InvalidArgument: anything else.
    """
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise InvalidArgument(f"expected a job id of 1-128 characters from [A-Za-z0-9._:-], "
                              f"got {job_id!r}")
    return job_id


def encode_token(after: str) -> str:
    """Return the opaque ListJobs page token that resumes after job ``after``."""
    return base64.urlsafe_b64encode(after.encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    """Return the job id a page token resumes after ("" for the first page).

    Raises:
        InvalidArgument: a token this controller did not issue.
    """
    if not token:
        return ""
    try:
        after = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = ""
    if not JOB_ID_RE.fullmatch(after):
        raise InvalidArgument(f"expected a page_token from a previous ListJobs, got {token!r}")
    return after
