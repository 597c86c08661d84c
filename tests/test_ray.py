"""Ray Train: RemoteLRScheduler inside TorchTrainer, and a real `ray job submit`.

Ray runs on loopback only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray from replacing
127.0.0.1 with the machine's routable address) with auth explicitly disabled (Ray 2.60
otherwise turns token auth on for a cluster that ray.init starts); docs/ray.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from lrctl.client import Client
from tests.procs import RAY_ENV, ROOT, ControllerProcess, wait_for_step
from tests.ray_head import local_ray_head

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProcess]:
    with ControllerProcess(tmp_path / "lrctl.db") as proc:
        yield proc


def test_torch_trainer_ranks_follow_the_controller(
    tmp_path: Path, controller: ControllerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tests.ray_loops import lr_loop

    # No LRCTL_JOB: the job id is the Ray Train run name.
    with local_ray_head({"LRCTL_ADDRESS": controller.address}):
        trainer = TorchTrainer(
            lr_loop,
            train_loop_config={
                "schedule": "StepLR(step_size=20, gamma=0.5)",
                "steps": 120,
                "sleep": 0.05,
            },
            scaling_config=ScalingConfig(
                num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}
            ),
            torch_config=TorchConfig(backend="gloo", timeout_s=120),
            run_config=RunConfig(name="ray-run-7", storage_path=str(tmp_path / "ray")),
        )
        with Client(controller.address) as client:
            overrider = threading.Thread(
                target=lambda: (
                    wait_for_step(client, "ray-run-7", 30),
                    client.override("ray-run-7", "lr *= 0.5", reason="from the test"),
                )
            )
            overrider.start()
            result = trainer.fit()
            overrider.join()
            history = client.history("ray-run-7")
    assert result.error is None
    rank0 = result.return_value
    assert rank0["job"] == "ray-run-7" and rank0["distributed"]
    event = history[0]
    assert event.effective_step is not None and event.effective_step >= 30
    by_step = {row[0]: row for row in rank0["log"]}
    before, after = by_step[event.effective_step - 1], by_step[event.effective_step]
    assert after[2] == pytest.approx(0.1 * 0.5 ** (after[0] // 20) * 0.5)
    assert before[2] == pytest.approx(0.1 * 0.5 ** (before[0] // 20))


@contextmanager
def ray_head(env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """A local Ray head on 127.0.0.1 in a process group of its own.

    ``ray start --block`` keeps the head's processes (GCS, raylet, dashboard, agents) in its
    process group; stopping it stops that group only. A Ray cluster this test did not start
    (a user's own, another test's) is never touched, as ``ray stop`` would.

    Yields:
        The dashboard (job submission) URL and the head's process group id.
    """
    ports = {name: free_port() for name in ("gcs", "dashboard", "client")}
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: unix sockets live here
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(ports["gcs"]),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(ports["dashboard"]),
        "--ray-client-server-port",
        str(ports["client"]),
        "--num-cpus",
        "2",
        "--disable-usage-stats",
        "--temp-dir",
        temp_dir,
    ]
    log = open(Path(temp_dir) / "ray-start.log", "w+")  # noqa: SIM115 (closed below)
    # No drain on SIGTERM (it waits up to 30 s for Serve proxies; there are none here).
    head = subprocess.Popen(
        cmd,
        env={**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        wait_for_job_api(url, head, log)
        yield url, head.pid
    finally:
        stop_ray_head(head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_job_api(
    url: str, head: subprocess.Popen[bytes], log: IO[str], timeout: float = 120.0
) -> None:
    """Wait until the head's job-submission API answers (the dashboard starts last)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            log.seek(0)
            raise AssertionError(f"ray start exited with {head.returncode}:\n{log.read()}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"Ray's job API at {url} did not answer within {timeout} s")


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``pgid``."""
    import psutil  # Ray's own dependency

    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


def stop_ray_head(leader: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """Stop a ``ray start --block`` head and everything in its process group.

    SIGTERM to the leader makes Ray stop the processes it started, in order (about 4 s);
    whatever is left in the group after ``grace`` (a stuck worker) gets SIGKILL.
    """
    pgid = leader.pid  # start_new_session: the leader's pid is the group's id
    leader.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_alive(pgid):
        leader.poll()  # reap the leader; the others are reaped by init
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    leader.wait(10)


def test_ray_job_submit(tmp_path: Path, controller: ControllerProcess) -> None:
    env = {
        **os.environ,
        **RAY_ENV,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    ray_bin = str(Path(sys.executable).parent / "ray")
    # A stand-in for somebody else's Ray: `ray stop --force` kills every process named raylet.
    canary_bin = tmp_path / "raylet"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", canary_bin)
    canary = subprocess.Popen([str(canary_bin), "600"])
    try:
        with ray_head(env) as (dashboard, pgid):
            runtime_env = json.dumps(
                {"env_vars": {"LRCTL_ADDRESS": controller.address, "LRCTL_JOB": "submitted"}}
            )
            lr_log = tmp_path / "lr"
            submit = [
                ray_bin,
                "job",
                "submit",
                "--address",
                dashboard,
                "--runtime-env-json",
                runtime_env,
                "--working-dir",
                str(ROOT),
                "--",
                "python",
                "examples/train_ddp.py",
                "--steps",
                "60",
                "--step-sleep",
                "0.02",
                "--lr-log",
                str(lr_log),
                "--storage",
                str(tmp_path / "ray"),
            ]
            done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "succeeded" in done.stdout + done.stderr
        assert not group_alive(pgid)  # the head this test started is gone...
        assert canary.poll() is None  # ... and nothing else was stopped
    finally:
        canary.kill()
        canary.wait(10)
    logs = [(lr_log / f"rank-{r}.csv").read_text().splitlines() for r in (0, 1)]
    assert logs[0] == logs[1] and len(logs[0]) == 62  # header + steps 0..60, identical
    with Client(controller.address) as client:
        job = client.get_job("submitted")
    assert job.step == 60
