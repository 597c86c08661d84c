"""What an operator does during the integration tests: override, read the history, wait.

Calls go through the generated gRPC stub (the wire contract), so the tests of the
integrations do not depend on the shape of a Python client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from lrctl.convert import OP_TO_PROTO, events_from_proto
from lrctl.overrides import Event, parse_override
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc


@contextmanager
def stub(address: str) -> Iterator[Any]:
    with grpc.insecure_channel(address) as channel:
        yield lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]


def override(address: str, job: str, statement: str, reason: str = "") -> int:
    """Send ``lr /= 2``, ``lr *= 0.1`` or ``lr = 3e-4``; return the version it created."""
    op, value = parse_override(statement)
    with stub(address) as s:
        response = s.Override(lrctl_pb2.OverrideRequest(
            job_id=job, op=OP_TO_PROTO[op], value=value, actor="test", reason=reason),
            timeout=10)
    return int(response.event.version)


def history(address: str, job: str) -> list[Event]:
    with stub(address) as s:
        response = s.History(lrctl_pb2.HistoryRequest(job_id=job), timeout=10)
    return list(events_from_proto(response.events))


def job(address: str, job_id: str) -> Any | None:
    """The job as the controller holds it (proto ``Job``), or None before it exists."""
    with stub(address) as s:
        try:
            return s.GetJob(lrctl_pb2.GetJobRequest(job_id=job_id), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


def wait_for_step(address: str, job_id: str, step: int, timeout: float = 120) -> int:
    """Wait until rank 0 has reported ``step`` (the job appears when the ranks attach)."""
    deadline = time.monotonic() + timeout
    with stub(address) as s:
        while time.monotonic() < deadline:
            try:
                current = s.GetJob(lrctl_pb2.GetJobRequest(job_id=job_id), timeout=10).step
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                current = -1
            if current >= step:
                return int(current)
            time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached step {step}")


def wait_until_applied(address: str, job_id: str, version: int, timeout: float = 60) -> Event:
    """Wait until the event of ``version`` has a recorded effective step; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in history(address, job_id):
            if event.version == version and event.effective_step is not None:
                return event
        time.sleep(0.05)
    raise AssertionError(f"version {version} of job {job_id} never took effect")
