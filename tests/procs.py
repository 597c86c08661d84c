"""Real processes for tests: a controller subprocess that can be killed with SIGKILL, the CLI and
training loops as subprocesses, and the polls that wait on them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lrctl.client import Client, ClientError

ROOT = Path(__file__).resolve().parent.parent
# The environment of a Ray the tests start: local only, no auth, no usage stats.
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_DISABLE_USAGE_STATS": "1",
}
_LISTENING = re.compile(r"listening on (?P<host>[\d.]+):(?P<port>\d+)")
#: The lrctl CLI of this checkout, run by this interpreter.
CLI = (sys.executable, "-m", "controller.cli")
T = TypeVar("T")


def serve_argv(
    db: Path | str, *extra: str, host: str = "127.0.0.1", port: int = 0, metrics_port: int = 0
) -> list[str]:
    """``serve`` on ``host`` (a free port by default) with ``/metrics`` on ``metrics_port`` (-1:
    off) and its store in ``db``; ``extra`` flags follow."""
    return [
        "serve",
        *("--host", host, "--port", str(port), "--metrics-port", str(metrics_port)),
        *("--db", str(db), *extra),
    ]


def checkout_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout on ``PYTHONPATH``, plus ``extra``."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def run_captured(
    cmd: Sequence[str],
    *,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its end, stdout and stderr captured as text (``env``: ``checkout_env()``)."""
    return subprocess.run(
        list(cmd),
        cwd=cwd,
        env=checkout_env() if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def attach_loop(
    job: str, out: Path, stop: Path, sleep: float, env: Mapping[str, str], *extra: str
) -> subprocess.Popen[str]:
    """``tests/attach_loop.py`` training ``job`` until ``stop`` exists, its rows in ``out``
    (stdout and stderr together in one pipe)."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.attach_loop", "--job", job, "--out", str(out)),
            *("--stop", str(stop), "--sleep", str(sleep), *extra),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(env),
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON rows of ``path`` (none while it does not exist yet)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``predicate`` every 50 ms until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def reap(procs: list[subprocess.Popen[str]]) -> None:
    """Kill whichever of ``procs`` still run, wait for each and close its pipes."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def wait_for_step(client: Client, job: str, step: int, timeout: float = 120) -> int:
    """Wait until rank 0 has reported ``step`` (the job appears when the ranks attach)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            current = client.get_job(job).step
        except ClientError as exc:
            if exc.code != "NOT_FOUND":
                raise
            current = -1
        if current >= step:
            return current
        time.sleep(0.05)
    raise AssertionError(f"job {job} never reached step {step}")


class ControllerProcess:
    """``lrctl serve`` as a subprocess on loopback, with its SQLite file in ``db``."""

    def __init__(self, db: Path, port: int = 0, extra: tuple[str, ...] = ()) -> None:
        self.db = db
        self.port = port
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ControllerProcess:
        self.proc = subprocess.Popen(
            [*CLI, *serve_argv(self.db, *self.extra, port=self.port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                match = _LISTENING.search(line)
                if match and not found.is_set():
                    self.port = int(match["port"])
                    found.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("controller did not start:\n" + "".join(self.output))
        return self

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_pipe()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipe()

    def _close_pipe(self) -> None:
        self._pump.join(10)  # EOF once the process is gone
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ControllerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
