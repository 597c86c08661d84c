"""What an operator does during the integration tests, one call at a time by address.

Thin helpers over :class:`lrctl.client.Client` (override, history, wait) so the tests of
torchrun, Lightning, the Hugging Face Trainer and Ray Train restarts read as the operator's
steps.
"""

from __future__ import annotations

import time

from lrctl.client import Client, ClientError
from lrctl.model import Job
from lrctl.overrides import Event
from tests import procs


def override(address: str, job: str, statement: str, reason: str = "") -> int:
    """Send ``lr /= 2``, ``lr *= 0.1`` or ``lr = 3e-4``; return the version it created."""
    with Client(address) as client:
        return int(client.override(job, statement, reason=reason).event.version)


def history(address: str, job: str) -> list[Event]:
    with Client(address) as client:
        return list(client.history(job))


def job(address: str, job_id: str) -> Job | None:
    """The job as the controller holds it, or None before it exists."""
    with Client(address) as client:
        try:
            return client.get_job(job_id)
        except ClientError as exc:
            if exc.code != "NOT_FOUND":
                raise
            return None


def wait_for_step(address: str, job_id: str, step: int, timeout: float = 120) -> int:
    """Wait until rank 0 has reported ``step`` (the job appears when the ranks attach)."""
    with Client(address) as client:
        return procs.wait_for_step(client, job_id, step, timeout)


def wait_until_applied(address: str, job_id: str, version: int, timeout: float = 60) -> Event:
    """Wait until the event of ``version`` has a recorded effective step; return it."""
    deadline = time.monotonic() + timeout
    with Client(address) as client:
        while time.monotonic() < deadline:
            for event in client.history(job_id):
                if event.version == version and event.effective_step is not None:
                    return event
            time.sleep(0.05)
    raise AssertionError(f"version {version} of job {job_id} never took effect")
