"""The ``lrctl`` CLI against a real controller: the operator's flow, errors, watch, auth.

Most tests run ``controller.cli.main`` in-process against ``running_server`` (a real gRPC
controller on a background thread, see conftest.py); the operator flow and ``watch`` run
as real processes against a real ``lrctl serve`` process.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.cli import main
from lrctl.client import Client
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests.conftest import RunningServer
from tests.procs import CLI, ROOT, ControllerProcess, reap, run_captured

STEP_LR = "StepLR(step_size=200, gamma=0.5)"
#: ``lrctl job create`` of run-42 with two param groups.
CREATE_TWO_GROUPS = (
    *("job", "create", "run-42", "--schedule", STEP_LR),
    *("--base-lr", "0.1", "--base-lr", "0.01"),
)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def lrctl(
    running_server: RunningServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Result]:
    """Run ``lrctl ARGV...`` in-process against ``running_server``."""
    monkeypatch.delenv("LRCTL_TOKEN", raising=False)
    monkeypatch.setenv("LRCTL_ADDRESS", running_server.address)

    def run(*argv: str) -> Result:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def env_for(address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LRCTL_TOKEN"}
    return {**env, "LRCTL_ADDRESS": address, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def lrctl_process(address: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_captured([*CLI, *argv], env=env_for(address), timeout=30)


class Lines:
    """A process's stdout, read line by line on a thread so a test can wait with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {timeout}s; got {self.seen!r}")


@pytest.fixture
def watch_process() -> Iterator[Callable[..., tuple[subprocess.Popen[str], Lines]]]:
    """Start ``lrctl watch`` processes (stdout is a pipe: one line per update)."""
    started: list[subprocess.Popen[str]] = []

    def start(address: str, job: str) -> tuple[subprocess.Popen[str], Lines]:
        proc = subprocess.Popen(
            [*CLI, "watch", job],
            cwd=ROOT,
            env=env_for(address),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc, Lines(proc)

    yield start
    reap(started)


def one_error_line(err: str, prefix: str = "lrctl: error: ") -> str:
    assert err.startswith(prefix), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err[len(prefix) :].strip()


def report(
    server: RunningServer,
    job: str,
    step: int,
    lrs: list[float],
    applied: Sequence[tuple[int, int]] = (),
) -> None:
    """Report progress as rank 0 does (what RemoteLRScheduler sends)."""
    request = lrctl_pb2.ReportRequest(
        job_id=job,
        rank=0,
        step=step,
        lrs=lrs,
        applied_version=max((v for v, _ in applied), default=0),
        applied=[lrctl_pb2.AppliedVersion(version=v, effective_step=s) for v, s in applied],
    )
    with grpc.insecure_channel(server.address) as channel:
        stub = lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]
        stub.Report(request, timeout=10)


# -- the operator's flow, as the README shows it, with real processes --------------------------


def test_operator_flow_with_real_processes(tmp_path: Path, watch_process: Any) -> None:
    with ControllerProcess(tmp_path / "lrctl.db") as server:
        address = server.address

        def ok(*argv: str) -> str:
            done = lrctl_process(address, *argv)
            assert done.returncode == 0, done.stderr
            return done.stdout

        assert "created job run-42" in ok(
            "job", "create", "run-42", "--schedule", STEP_LR, "--base-lr", "0.1"
        )
        watch, lines = watch_process(address, "run-42")
        lines.wait_for("version=1")

        assert "lr *= 0.5" in ok("override", "run-42", "lr /= 2", "--reason", "loss spike")
        job = json.loads(ok("job", "get", "run-42", "--json"))
        assert (job["job_id"], job["version"], job["step"]) == ("run-42", 2, -1)
        assert job["lr"] == [0.05]  # halved, before any worker applied it
        assert job["base_lrs"] == [0.1] and job["state"] == "running"

        events = json.loads(ok("history", "run-42", "--json"))
        assert len(events) == 1
        event = events[0]
        assert (event["version"], event["op"], event["value"]) == (2, "scale", 0.5)
        assert event["effective_step"] is None and event["applied_at"] is None
        assert event["reason"] == "loss spike" and event["actor"]
        assert event["created_at"].endswith("+00:00")

        assert "lr *= 0.5" in lines.wait_for("version=2")  # the live view updated

        assert "finished job run-42" in ok("job", "finish", "run-42")
        lines.wait_for("state=finished")
        assert watch.wait(10) == 0
        assert json.loads(ok("job", "list", "--json")) == []
        listed = json.loads(ok("job", "list", "--all", "--json"))
        assert [(j["job_id"], j["state"]) for j in listed] == [("run-42", "finished")]
        assert server.proc is not None
        server.stop()
        assert server.proc.returncode == 0


def test_watch_reconnects_and_resumes_after_a_restart(tmp_path: Path, watch_process: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = tmp_path / "lrctl.db"
    with ControllerProcess(db, port=port) as server:
        with Client(server.address) as client:
            client.create_job("run-7", "ExponentialLR(gamma=0.99)", [0.1])
        watch, lines = watch_process(server.address, "run-7")
        lines.wait_for("version=1")
    with ControllerProcess(db, port=port) as server, Client(server.address) as client:
        client.override("run-7", "lr *= 0.1", reason="after restart")
        assert "lr *= 0.1" in lines.wait_for("version=2", timeout=15)
        client.finish_job("run-7")
        assert watch.wait(10) == 0
        assert watch.stderr is not None
        err = watch.stderr.read()
        assert "reconnecting" in err and "reconnected" in err and "Traceback" not in err


def test_watch_ctrl_c_exits_130_without_traceback(
    running_server: RunningServer, watch_process: Any
) -> None:
    with Client(running_server.address) as client:
        client.create_job("run-1", STEP_LR, [0.1])
    watch, lines = watch_process(running_server.address, "run-1")
    lines.wait_for("version=1")
    watch.send_signal(signal.SIGINT)
    assert watch.wait(10) == 130
    assert "Traceback" not in watch.stderr.read()


# -- every command in-process against a real controller ---------------------------------------


def test_job_commands(lrctl: Callable[..., Result]) -> None:
    created = lrctl(*CREATE_TWO_GROUPS, "--json")
    assert created.code == 0
    assert created.json()["created"] is True and created.json()["lr"] == [0.1, 0.01]
    again = lrctl(*CREATE_TWO_GROUPS)
    assert again.code == 0 and "already exists" in again.out

    text = lrctl("job", "get", "run-42")
    assert text.code == 0
    assert "StepLR(step_size=200, gamma=0.5)" in text.out and "no overrides" in text.out

    listed = lrctl("job", "list")
    assert listed.code == 0
    assert listed.out.splitlines()[0].split()[:3] == ["JOB", "STATE", "VERSION"]
    assert listed.out.splitlines()[1].split()[:3] == ["run-42", "running", "1"]

    finished = lrctl("job", "finish", "run-42", "--json")
    assert finished.code == 0 and finished.json()["state"] == "finished"
    assert "no running jobs" in lrctl("job", "list").out


def test_override_forms_and_history(
    lrctl: Callable[..., Result], running_server: RunningServer
) -> None:
    assert lrctl(*CREATE_TWO_GROUPS).code == 0
    report(running_server, "run-42", 10, [0.1, 0.01])
    steps = [
        (["lr /= 2", "--reason", "loss spike"], "scale", 0.5),
        (["lr *= 0.1"], "scale", 0.1),
        (["lr = 3e-4", "--group", "1"], "set", 3e-4),
        (["--clear"], "clear", None),
        (["--schedule", "ExponentialLR(gamma=0.9)"], "replace_schedule", None),
    ]
    for version, (argv, op, value) in enumerate(steps, start=2):
        done = lrctl("override", "run-42", *argv, "--expected-version", str(version - 1), "--json")
        assert done.code == 0, done.err
        event = done.json()["event"]
        assert (event["version"], event["op"], event["value"]) == (version, op, value)
        assert done.json()["job"]["version"] == version
    # Rank 0 reports the first event applied at step 11.
    report(running_server, "run-42", 11, [0.05, 0.005], applied=[(2, 11)])
    events = lrctl("history", "run-42", "--json").json()
    assert [e["op"] for e in events] == ["scale", "scale", "set", "clear", "replace_schedule"]
    assert events[0]["effective_step"] == 11 and events[0]["applied_at"]
    assert all(e["effective_step"] is None for e in events[1:])
    assert events[2]["group"] == 1 and events[0]["group"] is None
    assert events[4]["schedule"] == "ExponentialLR(gamma=0.9)"
    table = lrctl("history", "run-42").out.splitlines()
    assert table[0].split()[:2] == ["VERSION", "CHANGE"]
    assert "lr = 0.0003 (group 1)" in table[3] and "pending" in table[3]
    assert "11" in table[1].split()


def test_override_text_output(lrctl: Callable[..., Result]) -> None:
    lrctl("job", "create", "run-42", "--schedule", STEP_LR, "--base-lr", "0.1")
    done = lrctl("override", "run-42", "lr", "/=", "2")  # unquoted words work too
    assert done.code == 0
    assert done.out.splitlines()[0] == (
        "run-42 version 2: lr *= 0.5 (pending until the workers apply it)"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["override", "run-42", "lr /= 0"], "needs a finite x > 0", id="divide-by-0"),
        pytest.param(["override", "run-42", "lr = -1"], "finite number >= 0", id="negative-lr"),
        pytest.param(["override", "run-42", "lr = inf"], "finite number >= 0", id="infinite-lr"),
        pytest.param(["override", "run-42", "lr += 1"], "expected an override like", id="syntax"),
        pytest.param(
            ["override", "run-42", "--schedule", "StepLR(step_size="],
            "not valid syntax",
            id="bad-replacement-spec",
        ),
        pytest.param(
            ["override", "run-42", "lr /= 2", "--clear"], "exactly one of", id="two-forms"
        ),
        pytest.param(["override", "run-42"], "exactly one of", id="no-form"),
        pytest.param(["override", "run-42", "--clear", "--group", "-1"], "--group", id="group"),
        pytest.param(
            ["job", "create", "run-43", "--schedule", "StepLR(", "--base-lr", "0.1"],
            "not valid syntax",
            id="bad-spec",
        ),
    ],
)
def test_bad_input_exits_2_before_any_call(
    lrctl: Callable[..., Result], argv: list[str], message: str
) -> None:
    lrctl("job", "create", "run-42", "--schedule", STEP_LR, "--base-lr", "0.1")
    done = lrctl(*argv)
    assert done.code == 2 and done.out == ""
    assert message in one_error_line(done.err)
    assert lrctl("job", "get", "run-42", "--json").json()["version"] == 1  # nothing sent
    assert lrctl("job", "get", "run-43").code == 1


@pytest.mark.parametrize(
    ("argv", "code", "status"),
    [
        pytest.param(["job", "get", "run-9"], 1, "NOT_FOUND", id="unknown-job"),
        pytest.param(["override", "run-9", "lr /= 2"], 1, "NOT_FOUND", id="override-unknown"),
        pytest.param(["history", "run-9"], 1, "NOT_FOUND", id="history-unknown"),
        pytest.param(["watch", "run-9"], 1, "NOT_FOUND", id="watch-unknown"),
        pytest.param(
            ["override", "run-42", "lr = 0.1", "--group", "5"],
            2,
            "INVALID_ARGUMENT",
            id="group-out-of-range",
        ),
        pytest.param(
            ["override", "run-42", "lr = 0.1", "--expected-version", "7"],
            1,
            "ABORTED",
            id="version-conflict",
        ),
        pytest.param(
            ["job", "create", "run-42", "--schedule", "StepLR(step_size=5)", "--base-lr", "0.1"],
            1,
            "FAILED_PRECONDITION",
            id="different-spec",
        ),
        pytest.param(
            ["job", "create", "run-43", "--schedule", STEP_LR, "--base-lr", "-0.1"],
            2,
            "INVALID_ARGUMENT",
            id="negative-base-lr",
        ),
    ],
)
def test_server_errors_are_one_line(
    lrctl: Callable[..., Result], argv: list[str], code: int, status: str
) -> None:
    lrctl("job", "create", "run-42", "--schedule", STEP_LR, "--base-lr", "0.1")
    done = lrctl(*argv)
    assert done.code == code and done.out == ""
    assert one_error_line(done.err).startswith(f"{status}: ")


def test_replace_flag_replaces_the_schedule(lrctl: Callable[..., Result]) -> None:
    lrctl("job", "create", "run-42", "--schedule", STEP_LR, "--base-lr", "0.1")
    done = lrctl(
        "job",
        "create",
        "run-42",
        "--schedule",
        "StepLR(step_size=5)",
        "--base-lr",
        "0.1",
        "--replace",
        "--json",
    )
    assert done.code == 0 and done.json()["schedule"] == "StepLR(step_size=5)"


@pytest.mark.parametrize(
    ("op", "value"),
    [
        pytest.param(lrctl_pb2.OVERRIDE_OP_SCALE, 0.0, id="zero-scale"),
        pytest.param(lrctl_pb2.OVERRIDE_OP_SCALE, float("nan"), id="nan-scale"),
        pytest.param(lrctl_pb2.OVERRIDE_OP_SET, -1.0, id="negative-lr"),
        pytest.param(lrctl_pb2.OVERRIDE_OP_SET, float("inf"), id="infinite-lr"),
    ],
)
def test_server_validates_values_the_client_did_not(
    running_server: RunningServer, op: int, value: float
) -> None:
    # lrctl.client parses statements with the core's parse_override, which already refuses
    # these; a client that skips it (raw gRPC, another language) meets the same rule.
    with Client(running_server.address) as client:
        client.create_job("run-42", STEP_LR, [0.1])
    request = lrctl_pb2.OverrideRequest(job_id="run-42", op=op, value=value)  # type: ignore[arg-type]
    with grpc.insecure_channel(running_server.address) as channel:
        stub = lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as caught:
            stub.Override(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_controller_not_running(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    start = time.monotonic()
    code = main(["--address", address, "job", "list"])
    _, err = capsys.readouterr()
    assert time.monotonic() - start < 5
    assert code == 1
    assert one_error_line(err) == (
        f"cannot reach the lrctl controller at {address} (is 'lrctl serve' running?)"
    )
    # --address also works after the command, and watch fails fast the same way.
    assert main(["watch", "run-42", "--address", address]) == 1
    assert "cannot reach" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "running_server", [{"tokens": {"adm1n": "admin", "r3ad": "reader"}}], indirect=True
)
def test_token_from_environment(
    lrctl: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    create = ["job", "create", "run-42", "--schedule", STEP_LR, "--base-lr", "0.1"]
    done = lrctl(*create)
    assert done.code == 1 and one_error_line(done.err).startswith("UNAUTHENTICATED: ")
    monkeypatch.setenv("LRCTL_TOKEN", "r3ad")
    done = lrctl(*create)
    assert done.code == 1 and one_error_line(done.err).startswith("PERMISSION_DENIED: ")
    monkeypatch.setenv("LRCTL_TOKEN", "adm1n")
    assert lrctl(*create).code == 0
    monkeypatch.setenv("LRCTL_TOKEN", "r3ad")
    assert lrctl("job", "get", "run-42", "--json").json()["version"] == 1


def test_serve_rejects_bad_flags_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"t": "root"}')
    code = main(
        ["serve", "--port", "0", "--db", str(tmp_path / "x.db"), "--token-file", str(tokens)]
    )
    assert code == 2
    assert "role" in one_error_line(capsys.readouterr().err)


def test_client_commands_load_nothing_of_the_server_side() -> None:
    # What a `pip install lrctl` (no extras) can run: the client commands need lrctl and
    # grpc only, never the controller's modules, prometheus_client, torch, Ray or matplotlib.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    script = f"""
import sys
from controller.cli import main
for argv in (["job", "list"], ["job", "get", "j"], ["override", "j", "lr /= 2"],
             ["history", "j"], ["watch", "j"], ["job", "finish", "j"]):
    assert main([*argv, "--address", {closed!r}]) == 1, argv
assert main(["preview", "StepLR(step_size=2)", "--base-lr", "0.1", "--steps", "3",
             "--format", "json"]) == 0
heavy = ("prometheus_client", "torch", "ray", "matplotlib", "worker")
loaded = [m for m in sys.modules
          if m.split(".")[0] in heavy or (m.startswith("controller.")
                                          and not m.startswith("controller.cli"))]
print("LOADED", loaded)
"""
    done = run_captured([sys.executable, "-c", script])
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
