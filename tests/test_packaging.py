"""Packaging by role, installed for real from this checkout into fresh virtual environments.

* ``lrctl[controller]`` alone (no torch, no Ray, no matplotlib) serves: ``lrctl serve`` from
  that environment, and its own CLI creates, overrides and watches a job; ``/metrics``
  exports the LR.
* ``lrctl`` alone (grpcio + protobuf) is the client: its CLI drives a controller, and what
  needs an extra says which one to install.

The wheel is built once without build isolation and each environment is made without pip
(``pip --python`` installs into it), so the cost is the dependencies' install from pip's
cache: about 10-20 s per environment.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer
from tests.procs import ROOT, reap, run_captured, serve_argv

pytestmark = pytest.mark.slow

_LISTENING = re.compile(
    r"listening on 127\.0\.0\.1:(?P<port>\d+) \(metrics on "
    r"127\.0\.0\.1:(?P<metrics>\d+)"
)
SPEC = "StepLR(step_size=2, gamma=0.5)"
#: What neither the controller nor the client install may pull in.
HEAVY = ("torch", "ray", "matplotlib")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lrctl wheel built from this checkout's sources (what an sdist would hold)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("lrctl", "controller", "worker"):
        shutil.copytree(
            ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    dist = tmp_path_factory.mktemp("dist")
    pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src))
    [built] = dist.glob("lrctl-*.whl")
    return built


def pip(python: str, *args: str) -> None:
    """Run this environment's pip for ``python`` (which need not have pip of its own)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "--disable-pip-version-check",
        "--python",
        python,
        "-q",
        *args,
    ]
    done = run_captured(cmd, env=clean_env(), timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would put this checkout on ``sys.path``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LRCTL_ADDRESS"}
    }
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def install(tmp_path: Path, wheel: Path, extras: str) -> tuple[Path, Path]:
    """A fresh environment (no system site-packages) in ``tmp_path/venv`` with
    ``lrctl[extras]`` and its deps; return its ``bin`` and an empty ``tmp_path/work``."""
    path = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120
    )
    python = path / "bin" / "python"
    pip(str(python), "install", f"{wheel}[{extras}]" if extras else str(wheel))
    work = tmp_path / "work"
    work.mkdir()
    return path / "bin", work


def modules(bin_dir: Path, cwd: Path, *names: str) -> dict[str, str | None]:
    """Where each module would be imported from in that environment (None: not there)."""
    code = (
        "import importlib.util, json, sys\n"
        "specs = {n: importlib.util.find_spec(n) for n in sys.argv[1:]}\n"
        "print(json.dumps({n: s and s.origin for n, s in specs.items()}))"
    )
    done = run_captured([str(bin_dir / "python"), "-c", code, *names], cwd=cwd, env=clean_env())
    assert done.returncode == 0, done.stderr
    found: dict[str, str | None] = json.loads(done.stdout)
    return found


def lrctl(bin_dir: Path, cwd: Path, address: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_captured(
        [str(bin_dir / "lrctl"), *argv], cwd=cwd, env=clean_env(LRCTL_ADDRESS=address)
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    err = done.stderr
    assert err.startswith("lrctl: error: ") and err.count("\n") == 1, err
    return err.strip()


class Lines:
    """The lines a process prints, read on a thread (a pipe never fills up)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout
        threading.Thread(
            target=lambda: [self._lines.put(line) for line in stream], daemon=True
        ).start()

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r} in {timeout} s; got {self.seen!r}"
                ) from None
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; whatever still runs at the end is killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    reap(started)


def test_controller_only_install_serves_and_its_cli_drives_it(
    tmp_path: Path, wheel: Path, processes: list[subprocess.Popen[str]]
) -> None:
    bin_dir, work = install(tmp_path, wheel, "controller")
    served = ("lrctl", "controller", "prometheus_client", "grpc_health", "grpc_reflection")
    where = modules(bin_dir, work, *HEAVY, *served)
    assert (where["torch"], where["ray"], where["matplotlib"]) == (None, None, None)
    for name in served:
        assert str(tmp_path / "venv") in (where[name] or ""), (name, where[name])

    server = subprocess.Popen(
        [str(bin_dir / "lrctl"), *serve_argv(work / "lrctl.db")],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(),
    )
    processes.append(server)
    listening = Lines(server).wait_for(_LISTENING.pattern)
    address = f"127.0.0.1:{listening['port']}"

    def ok(*argv: str) -> str:
        done = lrctl(bin_dir, work, address, *argv)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "created job run-1" in ok(
        "job", "create", "run-1", "--schedule", SPEC, "--base-lr", "0.1", "--base-lr", "0.01"
    )
    watch = subprocess.Popen(
        [str(bin_dir / "lrctl"), "watch", "run-1"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(LRCTL_ADDRESS=address),
    )
    processes.append(watch)
    lines = Lines(watch)
    lines.wait_for("version=1")
    assert "lr *= 0.5" in ok("override", "run-1", "lr /= 2", "--reason", "packaging test")
    assert "lr *= 0.5" in lines.wait_for("version=2").string  # the live view followed
    job = json.loads(ok("job", "get", "run-1", "--json"))
    assert (job["version"], job["lr"]) == (2, [0.05, 0.005])

    with urllib.request.urlopen(
        f"http://127.0.0.1:{listening['metrics']}/metrics", timeout=10
    ) as response:
        exposition = response.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }
    assert samples[
        ("lrctl_learning_rate", (("job_id", "run-1"), ("param_group", "0")))
    ] == pytest.approx(0.05)
    assert samples[
        ("lrctl_learning_rate", (("job_id", "run-1"), ("param_group", "1")))
    ] == pytest.approx(0.005)
    # Every series the Grafana dashboard reads from the controller is there (docs/operations.md).
    from tests.test_dashboard import controller_metric_names

    missing = controller_metric_names() - {name for name, _ in samples}
    assert not missing, f"the dashboard queries {sorted(missing)}, not exported"

    assert "finished job run-1" in ok("job", "finish", "run-1")
    assert watch.wait(30) == 0
    server.terminate()
    assert server.wait(30) == 0


def test_base_install_is_the_client_and_names_each_missing_extra(
    tmp_path: Path, wheel: Path, running_server: RunningServer
) -> None:
    bin_dir, work = install(tmp_path, wheel, "")
    where = modules(
        bin_dir, work, "grpc", "google.protobuf", "prometheus_client", "grpc_health", *HEAVY
    )
    assert where["grpc"] and where["google.protobuf"]
    assert [
        n for n, origin in where.items() if origin and n not in {"grpc", "google.protobuf"}
    ] == []
    cli = functools.partial(lrctl, bin_dir, work, running_server.address)
    preview = ("preview", SPEC, "--base-lr", "0.1", "--steps", "3", "--format")

    # The client commands need nothing more than grpcio and protobuf.
    created = cli("job", "create", "run-1", "--schedule", SPEC, "--base-lr", "0.1")
    assert created.returncode == 0, created.stderr
    got = cli("job", "get", "run-1", "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["lr"] == [0.1], got.stderr
    rows = cli(*preview, "json")
    assert json.loads(rows.stdout) == {"lr": [[0.1], [0.1], [0.05]]}, rows.stderr

    # What needs an extra says which, in one line.
    serve = cli(*serve_argv(work / "x.db"))
    assert serve.returncode == 1
    assert "pip install 'lrctl[controller]'" in one_error_line(serve)
    assert not (work / "x.db").exists()
    png = cli(*preview, "png", "--out", str(work / "x.png"))
    assert png.returncode == 1
    assert "pip install 'lrctl[plot]'" in one_error_line(png)
    worker = run_captured(
        [str(bin_dir / "python"), "-c", "from worker import RemoteLRScheduler"],
        cwd=work,
        env=clean_env(),
    )
    assert worker.returncode == 1
    assert worker.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: lrctl's worker (RemoteLRScheduler) needs the [worker] extra: "
        "pip install 'lrctl[worker]' (no module named 'torch')"
    )
