"""torchrun: examples/train_torchrun.py under the real ``torchrun``, job id from ``--rdzv-id``.

A plain single-node ``torchrun --nproc_per_node N`` (a fresh UUID per launch) runs in
tests/test_hf_trainer.py, where the test reads the id from rank 0's log line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import operate
from tests.procs import ROOT, ControllerProcess

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # the `torchrun` entry point
SCHEDULE = "StepLR(step_size=25, gamma=0.5)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_env(address: str) -> dict[str, str]:
    """The caller's environment without LRCTL_JOB, so the id comes from torchrun."""
    env = {k: v for k, v in os.environ.items() if k != "LRCTL_JOB"}
    return {**env, "LRCTL_ADDRESS": address, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    with ControllerProcess(tmp_path_factory.mktemp("ctl") / "lrctl.db") as proc:
        yield proc


def test_rdzv_id_is_the_job_id_and_both_ranks_apply_the_override_together(
    tmp_path: Path, controller: ControllerProcess
) -> None:
    lr_log = tmp_path / "lr"
    cmd = [
        *TORCHRUN,
        "--nproc_per_node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--rdzv-id",
        "torchrun-42",
        "examples/train_torchrun.py",
        "--schedule",
        SCHEDULE,
        "--steps",
        "120",
        "--step-sleep",
        "0.03",
        "--lr-log",
        str(lr_log),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=torchrun_env(controller.address),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        operate.wait_for_step(controller.address, "torchrun-42", 30, timeout=90)
        version = operate.override(
            controller.address, "torchrun-42", "lr /= 2", reason="from the torchrun test"
        )
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    # Rank 0 (only) logs the id it follows and where it came from.
    line = "lrctl: following job 'torchrun-42' (from TORCHELASTIC_RUN_ID)"
    assert output.count(line) == 1, output

    ranks = [json.loads((lr_log / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["job"] == ranks[1]["job"] == "torchrun-42"
    assert ranks[0]["log"] == ranks[1]["log"], "the ranks applied different LRs"
    assert ranks[0]["params"] == ranks[1]["params"], "the DDP replicas diverged"
    (event,) = operate.history(controller.address, "torchrun-42")
    assert event.version == version and event.effective_step is not None
    switch = event.effective_step
    assert 30 <= switch <= 120
    for step, applied_version, lr in ranks[0]["log"]:
        scheduled = 0.1 * 0.5 ** (step // 25)  # StepLR(step_size=25, gamma=0.5)
        if step < switch:
            assert applied_version < version and lr == pytest.approx(scheduled), step
        else:  # lr /= 2 from the recorded effective step on, on every rank
            assert applied_version == version and lr == pytest.approx(scheduled / 2), step


def test_torchrun_placeholder_run_id_is_refused(controller: ControllerProcess) -> None:
    # A static rendezvous (--master-port) without --rdzv-id: TORCHELASTIC_RUN_ID is "none".
    cmd = [
        *TORCHRUN,
        "--nproc_per_node",
        "1",
        "--master-port",
        str(free_port()),
        "examples/train_torchrun.py",
        "--steps",
        "5",
    ]
    done = subprocess.run(
        cmd,
        cwd=ROOT,
        env=torchrun_env(controller.address),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "WorkerError: no job id: torchrun's run id is its placeholder 'none'" in output
    assert "set LRCTL_JOB, or give torchrun --rdzv-id" in output
    assert operate.job(controller.address, "none") is None  # nothing reached the controller
