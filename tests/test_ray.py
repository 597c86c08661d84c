"""Ray Train: RemoteLRScheduler inside TorchTrainer, and a real `ray job submit`.

Ray runs on loopback only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray from replacing
127.0.0.1 with the machine's routable address) with auth explicitly disabled (Ray 2.60
otherwise turns token auth on for a cluster that ray.init starts); docs/ray.md.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lrctl.client import Client
from tests.procs import ROOT, ControllerProcess, wait_for_step

pytestmark = pytest.mark.slow

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_DISABLE_USAGE_STATS": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProcess]:
    with ControllerProcess(tmp_path / "lrctl.db") as proc:
        yield proc


def test_torch_trainer_ranks_follow_the_controller(
        tmp_path: Path, controller: ControllerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tests.ray_loops import lr_loop

    # No LRCTL_JOB: the job id is the Ray Train run name.
    env = {"LRCTL_ADDRESS": controller.address, "PYTHONPATH": str(ROOT)}
    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=2,
             object_store_memory=256 * 1024**2, runtime_env={"env_vars": env})
    try:
        trainer = TorchTrainer(
            lr_loop, train_loop_config={"schedule": "StepLR(step_size=20, gamma=0.5)",
                                        "steps": 120, "sleep": 0.05},
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False,
                                         resources_per_worker={"CPU": 1}),
            torch_config=TorchConfig(backend="gloo", timeout_s=120),
            run_config=RunConfig(name="ray-run-7", storage_path=str(tmp_path / "ray")))
        with Client(controller.address) as client:
            overrider = threading.Thread(target=lambda: (
                wait_for_step(client, "ray-run-7", 30),
                client.override("ray-run-7", "lr *= 0.5", reason="from the test")))
            overrider.start()
            result = trainer.fit()
            overrider.join()
            history = client.history("ray-run-7")
    finally:
        ray.shutdown()
    assert result.error is None
    rank0 = result.return_value
    assert rank0["job"] == "ray-run-7" and rank0["distributed"]
    event = history[0]
    assert event.effective_step is not None and event.effective_step >= 30
    by_step = {row[0]: row for row in rank0["log"]}
    before, after = by_step[event.effective_step - 1], by_step[event.effective_step]
    assert after[2] == pytest.approx(0.1 * 0.5 ** (after[0] // 20) * 0.5)
    assert before[2] == pytest.approx(0.1 * 0.5 ** (before[0] // 20))


def test_ray_job_submit(tmp_path: Path, controller: ControllerProcess) -> None:
    ports = {name: free_port() for name in ("gcs", "dashboard", "client")}
    env = {**os.environ, **RAY_ENV,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ray_bin = str(Path(sys.executable).parent / "ray")
    start = [ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1",
             "--port", str(ports["gcs"]), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(ports["dashboard"]),
             "--ray-client-server-port", str(ports["client"]), "--num-cpus", "2",
             # Ray's unix sockets live under --temp-dir: keep the path short (108-byte limit).
             "--disable-usage-stats", "--temp-dir", tempfile.mkdtemp(prefix="ray", dir="/tmp")]
    started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        runtime_env = json.dumps(
            {"env_vars": {"LRCTL_ADDRESS": controller.address, "LRCTL_JOB": "submitted"}})
        lr_log = tmp_path / "lr"
        submit = [ray_bin, "job", "submit", "--address",
                  f"http://127.0.0.1:{ports['dashboard']}", "--runtime-env-json", runtime_env,
                  "--working-dir", str(ROOT), "--", "python", "examples/train_ddp.py",
                  "--steps", "60", "--step-sleep", "0.02", "--lr-log", str(lr_log),
                  "--storage", str(tmp_path / "ray")]
        done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "succeeded" in done.stdout + done.stderr
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
    logs = [(lr_log / f"rank-{r}.csv").read_text().splitlines() for r in (0, 1)]
    assert logs[0] == logs[1] and len(logs[0]) == 62  # header + steps 0..60, identical
    with Client(controller.address) as client:
        job = client.get_job("submitted")
    assert job.step == 60
