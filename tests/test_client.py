"""controller.client: conversions, errors, configuration, and every call against a real
controller (``running_server``: a real gRPC server on loopback, see conftest.py)."""

from __future__ import annotations

import getpass
import pickle
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from controller.client import (
    CHANNEL_OPTIONS,
    DEFAULT_ADDRESS,
    Client,
    ClientError,
    Event,
    Job,
    Update,
    WatchStream,
)
from lrctl.errors import LrctlError, OverrideError
from lrctl.overrides import Op
from lrctl.program import preview
from lrctl.v1 import lrctl_pb2
from tests.conftest import RunningServer

STEP_LR = "StepLR(step_size=200, gamma=0.5)"
CREATED = datetime(2025, 1, 31, 12, 0, 5, 250_000, tzinfo=timezone.utc)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def event_proto(**fields: Any) -> lrctl_pb2.OverrideEvent:
    msg = lrctl_pb2.OverrideEvent(version=3, op="OVERRIDE_OP_SCALE", value=0.5,
                                  actor="alice", reason="loss spike", **fields)
    msg.created_at.FromDatetime(CREATED)
    return msg


@pytest.mark.parametrize(("code", "details", "text"), [
    pytest.param("NOT_FOUND", "job 'run-9' not found", "NOT_FOUND: job 'run-9' not found",
                 id="not-found"),
    pytest.param("UNAVAILABLE", "failed to connect to all addresses; last error: ...",
                 "cannot reach the lrctl controller at 127.0.0.1:50051 "
                 "(is 'lrctl serve' running?)", id="unavailable"),
    pytest.param("INVALID_ARGUMENT", "a scale factor must be\n a finite number > 0",
                 "INVALID_ARGUMENT: a scale factor must be a finite number > 0",
                 id="one-line"),
    pytest.param("DEADLINE_EXCEEDED", "Deadline Exceeded",
                 "DEADLINE_EXCEEDED: the lrctl controller at 127.0.0.1:50051 did not answer "
                 "in time", id="deadline"),
    pytest.param("UNKNOWN", "", "UNKNOWN", id="no-details"),
])
def test_client_error_is_one_clear_line(code: str, details: str, text: str) -> None:
    error = ClientError(code, details, "127.0.0.1:50051")
    assert str(error) == text
    assert (error.code, error.details) == (code, details)
    assert isinstance(error, LrctlError)


def test_client_error_pickles() -> None:
    error = pickle.loads(pickle.dumps(ClientError("ABORTED", "version 3 != 4", "h:1")))
    assert (error.code, error.details, error.address, str(error)) == (
        "ABORTED", "version 3 != 4", "h:1", "ABORTED: version 3 != 4")


def test_controller_not_running_fails_fast() -> None:
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with Client(address) as client, pytest.raises(ClientError) as caught:
        client.get_job("run-42")
    assert time.monotonic() - start < 5
    assert caught.value.code == "UNAVAILABLE"
    assert str(caught.value) == (f"cannot reach the lrctl controller at {address} "
                                 "(is 'lrctl serve' running?)")


def test_from_env_reads_the_environment_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LRCTL_ADDRESS", raising=False)
    monkeypatch.delenv("LRCTL_TOKEN", raising=False)
    with Client.from_env() as client:
        assert client.address == DEFAULT_ADDRESS
    monkeypatch.setenv("LRCTL_ADDRESS", "10.0.0.7:6000")
    with Client.from_env() as client:
        assert client.address == "10.0.0.7:6000"
    with Client.from_env(address="h:1") as client:  # arguments win
        assert client.address == "h:1"
    with Client.from_env(environ={"LRCTL_ADDRESS": "e:2"}) as client:
        assert client.address == "e:2"


@pytest.mark.parametrize("running_server", [{"tokens": {"s3cret": "admin"}}], indirect=True)
def test_token_is_sent_as_bearer_metadata(running_server: RunningServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(running_server.address) as client, pytest.raises(ClientError) as caught:
        client.list_jobs()
    assert caught.value.code == "UNAUTHENTICATED"
    with Client(running_server.address, token="s3cret") as client:
        assert client.list_jobs() == []
    monkeypatch.setenv("LRCTL_TOKEN", "s3cret")
    with Client.from_env(running_server.address) as client:
        assert client.create_job("run-1", "StepLR(step_size=5)", [0.1]).created


def test_channel_options_keep_a_frozen_server_detectable() -> None:
    options = dict(CHANNEL_OPTIONS)
    assert 0 < options["grpc.keepalive_time_ms"] <= 30_000
    assert 0 < options["grpc.keepalive_timeout_ms"] <= 20_000


@pytest.mark.parametrize(("op", "kwargs", "message"), [
    pytest.param("multiply", {"value": 2.0}, "expected op", id="unknown-op"),
    pytest.param("scale", {}, "needs a value", id="scale-without-value"),
    pytest.param("set", {}, "needs a value", id="set-without-value"),
    pytest.param("replace_schedule", {}, "needs a schedule", id="replace-without-spec"),
])
def test_override_refuses_malformed_requests_locally(op: str, kwargs: dict[str, Any],
                                                     message: str) -> None:
    # The port is closed: these must fail before any network call.
    with Client(f"127.0.0.1:{free_port()}") as client, pytest.raises(OverrideError,
                                                                      match=message):
        client.override("run-42", op, **kwargs)


def test_event_from_proto_pending_scale() -> None:
    event = Event.from_proto(event_proto())
    assert event == Event(version=3, op="scale", value=0.5, schedule=None, group=None,
                          effective_step=None, actor="alice", reason="loss spike",
                          created_at=CREATED, applied_at=None)
    assert event.pending
    assert event.describe() == "lr *= 0.5"
    assert event.to_dict() == {
        "version": 3, "op": "scale", "value": 0.5, "schedule": None, "group": None,
        "effective_step": None, "actor": "alice", "reason": "loss spike",
        "created_at": "2025-01-31T12:00:05.250000+00:00", "applied_at": None,
    }


def test_event_from_proto_applied_replace_on_one_group() -> None:
    msg = event_proto(param_group=0, effective_step=0)
    msg.op = lrctl_pb2.OVERRIDE_OP_REPLACE_SCHEDULE
    msg.schedule = "ExponentialLR(gamma=0.9)"
    msg.applied_at.FromDatetime(CREATED)
    event = Event.from_proto(msg)
    assert (event.op, event.value, event.schedule) == ("replace_schedule", None,
                                                       "ExponentialLR(gamma=0.9)")
    assert (event.group, event.effective_step, event.pending) == (0, 0, False)
    assert event.applied_at == CREATED
    assert event.describe() == "schedule = ExponentialLR(gamma=0.9) (group 0)"


def test_job_from_proto_and_to_dict() -> None:
    msg = lrctl_pb2.Job(job_id="run-42", schedule="StepLR(step_size=200, gamma=0.5)",
                        base_lrs=[0.1, 0.01], version=3, step=-1, lrs=[0.05, 0.005],
                        state="JOB_STATE_RUNNING", workers=2, events=[event_proto()])
    msg.created_at.FromDatetime(CREATED)
    job = Job.from_proto(msg)
    assert (job.job_id, job.version, job.step, job.lr, job.state, job.workers) == (
        "run-42", 3, -1, (0.05, 0.005), "running", 2)
    assert job.updated_at is None
    data = job.to_dict()
    assert {"job_id", "version", "step", "lr", "schedule", "base_lrs", "state", "workers",
            "events"} <= set(data)
    assert data["lr"] == [0.05, 0.005]
    assert data["events"][0]["op"] == "scale"
    assert "events" not in job.to_dict(events=False)


def test_update_from_proto() -> None:
    heartbeat = Update.from_proto(lrctl_pb2.WatchResponse(kind="KIND_HEARTBEAT", version=7))
    assert heartbeat == Update(kind="heartbeat", version=7, job=None, event=None)
    event = Update.from_proto(lrctl_pb2.WatchResponse(kind="KIND_EVENT", version=3,
                                                      event=event_proto()))
    assert (event.kind, event.job, event.event is not None) == ("event", None, True)


# -- against a real controller -----------------------------------------------------------------


def next_update(stream: WatchStream) -> Update:
    """The next update that is not a heartbeat."""
    for update in stream:
        if update.kind != "heartbeat":
            return update
    raise AssertionError("the stream ended")


def test_job_lifecycle(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        first = client.create_job("run-42", STEP_LR, [0.1, 0.01], verbose=True)
        assert first.created
        job = first.job
        assert (job.job_id, job.schedule, job.base_lrs, job.version, job.step, job.state,
                job.verbose) == ("run-42", STEP_LR, (0.1, 0.01), 1, -1, "running", True)
        assert job.created_at is not None and job.created_at.tzinfo is timezone.utc
        assert not client.create_job("run-42", STEP_LR, [0.1, 0.01]).created  # attach

        result = client.override("run-42", Op.SCALE, 0.5, group=1, reason="loss spike",
                                 actor="alice", expected_version=1)
        assert (result.event.version, result.event.op, result.event.value,
                result.event.group, result.event.actor, result.event.pending) == (
            2, "scale", 0.5, 1, "alice", True)
        assert result.job.version == 2
        assert client.override("run-42", "clear").event.op == "clear"

        got = client.get_job("run-42")
        assert [e.version for e in got.events] == [2, 3]
        assert client.history("run-42") == list(got.events)

        finished = client.finish_job("run-42")
        assert (finished.state, finished.version) == ("finished", 4)
        assert client.list_jobs() == []
        assert [j.job_id for j in client.list_jobs(include_finished=True)] == ["run-42"]


def test_override_actor_defaults_to_the_user(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        client.create_job("run-42", STEP_LR, [0.1])
        assert client.override("run-42", "set", 3e-4).event.actor == getpass.getuser()


def test_list_jobs_follows_pages(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        for i in range(5):
            client.create_job(f"run-{i}", STEP_LR, [0.1])
        jobs = client.list_jobs(page_size=2)
    assert sorted(j.job_id for j in jobs) == [f"run-{i}" for i in range(5)]
    assert all(j.events == () for j in jobs)


def test_preview_on_the_controller_equals_the_core(running_server: RunningServer) -> None:
    spec = "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=50)"
    with Client(running_server.address) as client:
        assert client.preview(spec, [0.1, 0.05], 300) == preview(spec, [0.1, 0.05], 300)


def test_watch_snapshot_event_finished(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        client.create_job("run-42", STEP_LR, [0.1])
        with client.watch("run-42") as stream:
            snapshot = next_update(stream)
            assert (snapshot.kind, snapshot.version) == ("snapshot", 1)
            assert snapshot.job is not None and snapshot.job.job_id == "run-42"
            client.override("run-42", "scale", 0.5)
            event = next_update(stream)
            assert (event.kind, event.version) == ("event", 2)
            assert event.event is not None and event.event.op == "scale"
            client.finish_job("run-42")
            finished = next_update(stream)
            assert finished.kind == "finished" and finished.job is not None
            assert finished.job.state == "finished"
            assert list(stream) == []  # the stream ends after FINISHED


def test_watch_resumes_from_a_version(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        client.create_job("run-42", STEP_LR, [0.1])
        client.override("run-42", "scale", 0.5)
        client.override("run-42", "set", 0.01)
        with client.watch("run-42", from_version=2) as stream:
            update = next_update(stream)
    assert (update.kind, update.version) == ("event", 3)
    assert update.event is not None and update.event.op == "set"


def test_watch_cancel_from_another_thread_ends_iteration(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        client.create_job("run-42", STEP_LR, [0.1])
        stream = client.watch("run-42")
        assert next_update(stream).kind == "snapshot"
        timer = threading.Timer(0.3, stream.cancel)
        timer.start()
        kinds = {u.kind for u in stream}  # heartbeats until cancelled, then it just ends
        timer.join()
    assert kinds <= {"heartbeat"}


def test_watch_unknown_job(running_server: RunningServer) -> None:
    with Client(running_server.address) as client, pytest.raises(ClientError) as caught:
        next(client.watch("run-9"))
    assert caught.value.code == "NOT_FOUND"
    assert str(caught.value).startswith("NOT_FOUND: ")
