"""lrctl.client: errors, configuration, conversions, History, and every call against a real
controller (``running_server``: a real gRPC server on loopback, see conftest.py)."""

from __future__ import annotations

import getpass
import importlib
import pickle
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from lrctl.client import (
    Client,
    ClientError,
    OverrideResult,
    TLSConfig,
    WatchStream,
)
from lrctl.constants import CLIENT_CHANNEL_OPTIONS, DEFAULT_ADDRESS
from lrctl.convert import (
    event_from_proto,
    event_to_proto,
    job_from_proto,
    job_to_proto,
    report_from_proto,
    report_to_proto,
    watch_from_proto,
)
from lrctl.errors import LrctlError, OverrideError
from lrctl.model import Divergence, Job, JobState, Report, WatchKind, WatchMessage
from lrctl.overrides import Event, History, Op
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
    msg = lrctl_pb2.OverrideEvent(
        version=3, op="OVERRIDE_OP_SCALE", value=0.5, actor="alice", reason="loss spike", **fields
    )
    msg.created_at.FromDatetime(CREATED)
    return msg


# -- errors and configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "details", "text"),
    [
        pytest.param(
            "NOT_FOUND", "job 'run-9' not found", "NOT_FOUND: job 'run-9' not found", id="not-found"
        ),
        pytest.param(
            "UNAVAILABLE",
            "failed to connect to all addresses; last error: ...",
            "cannot reach the lrctl controller at 127.0.0.1:50051 (is 'lrctl serve' running?)",
            id="unavailable",
        ),
        pytest.param(
            "INVALID_ARGUMENT",
            "a scale factor must be\n a finite number > 0",
            "INVALID_ARGUMENT: a scale factor must be a finite number > 0",
            id="one-line",
        ),
        pytest.param(
            "DEADLINE_EXCEEDED",
            "Deadline Exceeded",
            "DEADLINE_EXCEEDED: the lrctl controller at 127.0.0.1:50051 did not answer in time",
            id="deadline",
        ),
        pytest.param("UNKNOWN", "", "UNKNOWN", id="no-details"),
    ],
)
def test_client_error_is_one_clear_line(code: str, details: str, text: str) -> None:
    error = ClientError(code, details, "127.0.0.1:50051")
    assert str(error) == text
    assert (error.code, error.details) == (code, details)
    assert isinstance(error, LrctlError)


def test_client_error_pickles_and_says_whether_a_retry_may_help() -> None:
    error = pickle.loads(pickle.dumps(ClientError("ABORTED", "version 3 != 4", "h:1")))
    assert (error.code, error.details, error.address, str(error)) == (
        "ABORTED",
        "version 3 != 4",
        "h:1",
        "ABORTED: version 3 != 4",
    )
    assert not error.transient
    assert ClientError("UNAVAILABLE", "").transient


def test_controller_not_running_fails_fast() -> None:
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with Client(address) as client, pytest.raises(ClientError) as caught:
        client.get_job("run-42")
    assert time.monotonic() - start < 5
    assert caught.value.code == "UNAVAILABLE"
    assert str(caught.value) == (
        f"cannot reach the lrctl controller at {address} (is 'lrctl serve' running?)"
    )


def test_address_and_token_come_from_the_environment_at_call_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("LRCTL_ADDRESS", "LRCTL_TOKEN", "LRCTL_TLS_CA", "LRCTL_TLS_CERT", "LRCTL_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    with Client() as client:
        assert client.address == DEFAULT_ADDRESS and client.tls is None
    monkeypatch.setenv("LRCTL_ADDRESS", "10.0.0.7:6000")
    with Client() as client:
        assert client.address == "10.0.0.7:6000"
    with Client("h:1") as client:  # arguments win
        assert client.address == "h:1"
    with Client(environ={"LRCTL_ADDRESS": "e:2"}) as client:
        assert client.address == "e:2"
    with Client.from_env(environ={"LRCTL_ADDRESS": "e:3"}) as client:  # the older name
        assert client.address == "e:3"


def test_a_malformed_address_is_one_clear_error() -> None:
    with pytest.raises(ClientError) as caught:
        Client("127.0.0.1:50051,")
    assert caught.value.code == "INVALID_ARGUMENT"
    assert "HOST:PORT" in str(caught.value)


@pytest.mark.parametrize("running_server", [{"tokens": {"s3cret": "admin"}}], indirect=True)
def test_token_is_sent_as_bearer_metadata(
    running_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LRCTL_TOKEN", raising=False)
    with Client(running_server.address) as client, pytest.raises(ClientError) as caught:
        client.list_jobs()
    assert caught.value.code == "UNAUTHENTICATED"
    with Client(running_server.address, token="s3cret") as client:
        assert client.list_jobs() == []
    monkeypatch.setenv("LRCTL_TOKEN", "s3cret")
    with Client(running_server.address) as client:
        assert client.create_job("run-1", "StepLR(step_size=5)", [0.1]).created


def test_channel_options_keep_a_frozen_server_detectable() -> None:
    options = dict(CLIENT_CHANNEL_OPTIONS)
    assert 0 < options["grpc.keepalive_time_ms"] <= 30_000
    assert 0 < options["grpc.keepalive_timeout_ms"] <= 20_000
    assert options["grpc.http2.ping_timeout_ms"] == options["grpc.keepalive_timeout_ms"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, None, id="none"),
        pytest.param({"LRCTL_TLS_CA": "/etc/ca.pem"}, TLSConfig(ca="/etc/ca.pem"), id="ca"),
        pytest.param(
            {"LRCTL_TLS_CA": "ca.pem", "LRCTL_TLS_CERT": "c.pem", "LRCTL_TLS_KEY": "k.pem"},
            TLSConfig("ca.pem", "c.pem", "k.pem"),
            id="mutual",
        ),
        pytest.param(
            {"LRCTL_TLS_CERT": "c.pem", "LRCTL_TLS_KEY": "k.pem"},
            TLSConfig(cert="c.pem", key="k.pem"),
            id="system-roots-mutual",
        ),
        pytest.param({"LRCTL_TLS_CA": ""}, None, id="empty-is-unset"),
    ],
)
def test_tls_config_from_env(env: dict[str, str], expected: TLSConfig | None) -> None:
    assert TLSConfig.from_env(env) == expected


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"LRCTL_TLS_CERT": "c.pem"}, id="cert-without-key"),
        pytest.param({"LRCTL_TLS_CA": "ca.pem", "LRCTL_TLS_KEY": "k.pem"}, id="key-without-cert"),
    ],
)
def test_tls_config_needs_a_certificate_and_its_key_together(env: dict[str, str]) -> None:
    with pytest.raises(ClientError, match="both a client certificate and its key"):
        TLSConfig.from_env(env)


def test_tls_files_that_cannot_be_read_name_the_variable(tmp_path: Any) -> None:
    missing = str(tmp_path / "missing-ca.pem")
    with pytest.raises(ClientError) as caught:
        Client("127.0.0.1:1", environ={"LRCTL_TLS_CA": missing})
    assert caught.value.code == "INVALID_ARGUMENT"
    assert "LRCTL_TLS_CA" in str(caught.value) and missing in str(caught.value)


def test_tls_true_and_false() -> None:
    env = {"LRCTL_TLS_CA": "/nowhere/ca.pem"}
    with Client("127.0.0.1:1", tls=False, environ=env) as client:  # explicit plaintext wins
        assert client.tls is None
    with Client("127.0.0.1:1", tls=True) as client:  # the system's roots
        assert client.tls == TLSConfig()


def test_controller_client_is_a_deprecated_re_export() -> None:
    sys.modules.pop("controller.client", None)
    with pytest.warns(DeprecationWarning, match="use lrctl.client"):
        legacy = importlib.import_module("controller.client")
    assert legacy.Client is Client and legacy.Job is Job and legacy.Event is Event
    assert legacy.Update is WatchMessage


# -- overrides are parsed by the core, before any call -----------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        pytest.param(("lr += 1",), {}, "expected an override like", id="syntax"),
        pytest.param(("lr /= 0",), {}, "needs a finite x > 0", id="divide-by-zero"),
        pytest.param(("lr = -1",), {}, "finite number >= 0", id="negative-lr"),
        pytest.param((), {}, "exactly one of", id="nothing"),
        pytest.param(("lr /= 2",), {"clear": True}, "exactly one of", id="two-forms"),
        pytest.param(
            (), {"clear": True, "schedule": STEP_LR}, "exactly one of", id="clear-and-spec"
        ),
    ],
)
def test_override_refuses_malformed_requests_locally(
    args: tuple[str, ...], kwargs: dict[str, Any], message: str
) -> None:
    # The port is closed: these must fail before any network call.
    with Client(f"127.0.0.1:{free_port()}") as client, pytest.raises(OverrideError, match=message):
        client.override("run-42", *args, **kwargs)


# -- conversions (lrctl.convert) and the model's JSON ------------------------------------------


def test_event_from_proto_pending_scale() -> None:
    event = event_from_proto(event_proto())
    assert event == Event(
        version=3,
        op=Op.SCALE,
        value=0.5,
        actor="alice",
        reason="loss spike",
        created_at=CREATED.timestamp(),
    )
    assert event.pending
    assert event.describe() == "lr *= 0.5"
    assert event.to_dict() == {
        "version": 3,
        "op": "scale",
        "value": 0.5,
        "schedule": None,
        "group": None,
        "effective_step": None,
        "actor": "alice",
        "reason": "loss spike",
        "created_at": "2025-01-31T12:00:05.250000+00:00",
        "applied_at": None,
    }
    assert event_from_proto(event_to_proto(event)) == event


def test_event_from_proto_applied_replace_on_one_group() -> None:
    msg = event_proto(param_group=0, effective_step=0)
    msg.op = lrctl_pb2.OVERRIDE_OP_REPLACE_SCHEDULE
    msg.schedule = "ExponentialLR(gamma=0.9)"
    msg.applied_at.FromDatetime(CREATED)
    event = event_from_proto(msg)
    assert (event.op, event.value, event.schedule) == (
        Op.REPLACE_SCHEDULE,
        None,
        "ExponentialLR(gamma=0.9)",
    )
    assert (event.group, event.effective_step, event.pending) == (0, 0, False)
    assert event.applied_at == CREATED.timestamp()
    assert event.describe() == "schedule = ExponentialLR(gamma=0.9) (group 0)"
    assert event_from_proto(event_to_proto(event)) == event


def test_job_round_trips_and_renders_the_cli_json() -> None:
    msg = lrctl_pb2.Job(
        job_id="run-42",
        schedule=STEP_LR,
        base_lrs=[0.1, 0.01],
        version=3,
        step=-1,
        lrs=[0.05, float("inf")],
        state="JOB_STATE_RUNNING",
        workers=2,
        events=[event_proto()],
        created_version=1,
        epoch=4,
        world_size=2,
        watch_streams=2,
        applied_version=2,
    )
    msg.created_at.FromDatetime(CREATED)
    job = job_from_proto(msg)
    assert (job.job_id, job.version, job.step, job.lr, job.state, job.workers) == (
        "run-42",
        3,
        -1,
        (0.05, float("inf")),
        JobState.RUNNING,
        2,
    )
    assert (job.epoch, job.world_size, job.watch_streams, job.applied_version) == (4, 2, 2, 2)
    assert job.updated_at == 0.0 and not job.finished
    assert [e.version for e in job.pending] == [3]
    assert job_from_proto(job_to_proto(job)) == job
    assert job_to_proto(job, events=False).events == []
    data = job.to_dict()
    assert {
        "job_id",
        "version",
        "step",
        "lr",
        "schedule",
        "base_lrs",
        "state",
        "workers",
        "events",
    } <= set(data)
    assert data["lr"] == [0.05, "inf"]  # JSON has no infinity (DESIGN "Values")
    assert data["state"] == "running" and data["updated_at"] is None
    assert data["created_at"] == "2025-01-31T12:00:05.250000+00:00"
    assert data["events"][0]["op"] == "scale"
    assert "events" not in job.to_dict(events=False)
    assert job.head().events == () and job.head().version == 3


def test_job_at_an_earlier_version_keeps_the_events_up_to_it() -> None:
    job = Job(
        "j",
        STEP_LR,
        (0.1,),
        version=4,
        events=(Event(2, Op.SCALE, 0.5), Event(3, Op.CLEAR), Event(4, Op.SET, 0.01)),
    )
    assert [e.version for e in job.at(3).events] == [2, 3] and job.at(3).version == 3
    assert job.at(9) is job


def test_watch_and_report_conversions() -> None:
    heartbeat = watch_from_proto(lrctl_pb2.WatchResponse(kind="KIND_HEARTBEAT", version=7))
    assert heartbeat == WatchMessage(kind=WatchKind.HEARTBEAT, version=7)
    event = watch_from_proto(
        lrctl_pb2.WatchResponse(kind="KIND_EVENT", version=3, event=event_proto())
    )
    assert (event.kind, event.job, event.event is not None) == (WatchKind.EVENT, None, True)
    report = Report(
        "run-1",
        rank=0,
        step=12,
        applied_version=3,
        lrs=(0.1, 0.2),
        applied=((3, 11),),
        plateau_metrics=((12, 0.5),),
        final=True,
        epoch=2,
        world_size=4,
        divergences=(Divergence(10, 3, (0.3, 0.30000001), "rank 1 differs"),),
    )
    assert report_from_proto(report_to_proto(report)) == report


# -- History: what Client.history returns ------------------------------------------------------


def test_history_renders_an_escaped_html_table() -> None:
    history = History(
        [
            Event(
                2,
                Op.SCALE,
                0.5,
                actor="<alice>",
                reason="loss & spike",
                created_at=CREATED.timestamp(),
            ),
            Event(
                3,
                Op.SET,
                3e-4,
                group=1,
                effective_step=11,
                actor="bob",
                created_at=CREATED.timestamp(),
                applied_at=CREATED.timestamp() + 1,
            ),
        ]
    )
    html = history._repr_html_()
    assert html.startswith("<table>") and html.count("<tr>") == 3  # header + two events
    assert "&lt;alice&gt;" in html and "loss &amp; spike" in html and "<alice>" not in html
    assert "<td>lr = 0.0003 (group 1)</td>" in html and "<td>pending</td>" in html
    assert "2025-01-31 12:00:06Z" in html
    assert history.rows()[1][:3] == ["3", "lr = 0.0003 (group 1)", "11"]
    assert [e["version"] for e in history.to_dicts()] == [2, 3]
    assert history == (history[0], history[1])  # a tuple of events
    assert "no overrides" in History()._repr_html_()


def test_history_json_writes_non_finite_values_as_strings() -> None:
    assert Event(2, Op.SCALE, float("inf")).to_dict()["value"] == "inf"
    assert Event(2, Op.SET, float("nan")).to_dict()["value"] == "nan"


# -- against a real controller -----------------------------------------------------------------


def next_message(stream: WatchStream) -> WatchMessage:
    """The next message that is not a heartbeat."""
    for message in stream:
        if message.kind is not WatchKind.HEARTBEAT:
            return message
    raise AssertionError("the stream ended")


def test_job_lifecycle(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        first = client.create_job("run-42", STEP_LR, [0.1, 0.01], verbose=True)
        assert first.created
        job = first.job
        assert (
            job.job_id,
            job.schedule,
            job.base_lrs,
            job.version,
            job.step,
            job.state,
            job.verbose,
        ) == ("run-42", STEP_LR, (0.1, 0.01), 1, -1, JobState.RUNNING, True)
        assert job.created_at > time.time() - 60
        assert not client.create_job("run-42", STEP_LR, [0.1, 0.01]).created  # attach

        result = client.override(
            "run-42", "lr /= 2", group=1, reason="loss spike", actor="alice", expected_version=1
        )
        assert isinstance(result, OverrideResult)
        assert (
            result.event.version,
            result.event.op,
            result.event.value,
            result.event.group,
            result.event.actor,
            result.event.pending,
        ) == (2, Op.SCALE, 0.5, 1, "alice", True)
        assert result.job.version == 2 and result.job.events == ()  # the head
        assert result.job.lr == (0.1, 0.005)
        assert client.override("run-42", clear=True).event.op is Op.CLEAR
        replaced = client.override("run-42", schedule="ExponentialLR(gamma=0.9)")
        assert replaced.event.schedule == "ExponentialLR(gamma=0.9)"
        assert client.override("run-42", "lr = 3e-4").event.value == 3e-4

        got = client.get_job("run-42")
        assert [e.version for e in got.events] == [2, 3, 4, 5]
        history = client.history("run-42")
        assert isinstance(history, History) and history == got.events

        finished = client.finish_job("run-42")
        assert (finished.state, finished.version, finished.finished) == (JobState.FINISHED, 6, True)
        assert client.list_jobs() == []
        assert [j.job_id for j in client.list_jobs(include_finished=True)] == ["run-42"]


def test_override_errors_come_back_as_client_errors(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        client.create_job("run-42", STEP_LR, [0.1])
        with pytest.raises(ClientError) as stale:
            client.override("run-42", "lr /= 2", expected_version=7)
        with pytest.raises(ClientError) as group:
            client.override("run-42", "lr /= 2", group=3)
        with pytest.raises(ClientError) as unknown:
            client.override("run-9", "lr /= 2")
    assert (stale.value.code, group.value.code, unknown.value.code) == (
        "ABORTED",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
    )


def test_override_actor_defaults_to_the_user(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        client.create_job("run-42", STEP_LR, [0.1])
        assert client.override("run-42", "lr = 3e-4").event.actor == getpass.getuser()


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


def test_report_moves_the_step_and_applies_events(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        created = client.create_job("run-42", STEP_LR, [0.1], attach=True, world_size=1)
        version = client.override("run-42", "lr /= 2").event.version
        client.report(
            Report(
                "run-42",
                step=5,
                applied_version=version,
                lrs=(0.05,),
                applied=((version, 5),),
                epoch=created.epoch,
                world_size=1,
            )
        )
        job = client.get_job("run-42")
    assert job.step == 5 and job.events[0].effective_step == 5


def test_watch_snapshot_event_finished(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        client.create_job("run-42", STEP_LR, [0.1])
        with client.watch("run-42") as stream:
            snapshot = next_message(stream)
            assert (snapshot.kind, snapshot.version) == (WatchKind.SNAPSHOT, 1)
            assert snapshot.job is not None and snapshot.job.job_id == "run-42"
            client.override("run-42", "lr *= 0.5")
            event = next_message(stream)
            assert (event.kind, event.version) == (WatchKind.EVENT, 2)
            assert event.event is not None and event.event.op is Op.SCALE
            client.finish_job("run-42")
            finished = next_message(stream)
            assert finished.kind is WatchKind.FINISHED and finished.job is not None
            assert finished.job.state is JobState.FINISHED
            assert list(stream) == []  # the stream ends after FINISHED


def test_watch_resumes_from_a_version(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        client.create_job("run-42", STEP_LR, [0.1])
        client.override("run-42", "lr *= 0.5")
        client.override("run-42", "lr = 0.01")
        with client.watch("run-42", from_version=2) as stream:
            message = next_message(stream)
    assert (message.kind, message.version) == (WatchKind.EVENT, 3)
    assert message.event is not None and message.event.op is Op.SET


def test_watch_cancel_from_another_thread_ends_iteration(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        client.create_job("run-42", STEP_LR, [0.1])
        stream = client.watch("run-42")
        assert next_message(stream).kind is WatchKind.SNAPSHOT
        timer = threading.Timer(0.3, stream.cancel)
        timer.start()
        kinds = {m.kind for m in stream}  # heartbeats until cancelled, then it just ends
        timer.join()
    assert kinds <= {WatchKind.HEARTBEAT}


def test_watch_unknown_job(running_server: RunningServer) -> None:
    with Client(running_server.address) as client, pytest.raises(ClientError) as caught:
        next(client.watch("run-9"))
    assert caught.value.code == "NOT_FOUND"
    assert str(caught.value).startswith("NOT_FOUND: ")
