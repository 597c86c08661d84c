"""Hugging Face Trainer: examples/train_hf.py in one process and as 2-process DDP (torchrun).

``Trainer(optimizers=(optimizer, RemoteLRScheduler(...)))`` with a tiny GPT-2 built from a
config (``HF_HUB_OFFLINE=1``: nothing is downloaded). The Trainer's own logged
``learning_rate`` must show the override. The DDP run is a plain single-node
``torchrun --nproc_per_node 2`` without ``LRCTL_JOB``: the job id is the UUID torchrun drew
for this launch, which the test reads from rank 0's log line, as an operator would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import operate
from tests.procs import ROOT, ControllerProcess

pytestmark = pytest.mark.slow

SCHEDULE = "StepLR(step_size=20, gamma=0.5)"
BASE_LR = 1e-3
STEPS = 90
_FOLLOWING = re.compile(r"lrctl: following job '(?P<job>[^']+)' \(from (?P<source>[^)]+)\)")


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    with ControllerProcess(tmp_path_factory.mktemp("ctl") / "lrctl.db") as proc:
        yield proc


class Run:
    """A training subprocess whose output is read as it comes (to find the job id)."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.following: list[tuple[str, str]] = []
        self._found = threading.Event()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = _FOLLOWING.search(line)
            if match:
                self.following.append((match["job"], match["source"]))
                self._found.set()

    def job_id(self, timeout: float = 120) -> str:
        if not self._found.wait(timeout):
            raise AssertionError("no rank logged its job id:\n" + self.output)
        return self.following[0][0]

    def wait(self, timeout: float = 180) -> str:
        try:
            self.proc.wait(timeout)
        finally:
            self.proc.kill()
        self._pump.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        assert self.proc.returncode == 0, self.output
        return self.output

    @property
    def output(self) -> str:
        return "".join(self.lines)


def env_for(address: str, job: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LRCTL_JOB"}
    env.update(
        {
            "LRCTL_ADDRESS": address,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    if job:
        env["LRCTL_JOB"] = job
    return env


def train_args(out: Path) -> list[str]:
    return [
        "examples/train_hf.py",
        "--schedule",
        SCHEDULE,
        "--lr",
        str(BASE_LR),
        "--steps",
        str(STEPS),
        "--step-sleep",
        "0.03",
        "--out",
        str(out),
    ]


def override_mid_run(address: str, job: str) -> int:
    operate.wait_for_step(address, job, 20, timeout=120)
    return operate.override(address, job, "lr /= 2", reason="hf trainer")


def check_trainer_log(
    out: Path, address: str, job: str, version: int, world: int
) -> dict[str, Any]:
    (event,) = operate.history(address, job)
    assert event.version == version and event.effective_step is not None
    switch = event.effective_step
    assert 20 <= switch < STEPS, switch

    def expected(step: int) -> float:  # StepLR(step_size=20, gamma=0.5), halved from `switch`
        return BASE_LR * 0.5 ** (step // 20) * (0.5 if step >= switch else 1.0)

    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(world)]
    for r in range(1, world):
        assert ranks[r]["log"] == ranks[0]["log"], f"rank {r} applied other LRs than rank 0"
        assert ranks[r]["params"] == ranks[0]["params"], f"rank {r}'s replica diverged"
    assert [row[0] for row in ranks[0]["log"]] == list(range(STEPS))
    for step, lr in ranks[0]["log"]:
        assert lr == pytest.approx(expected(step)), step
    # The Trainer logs, at global step g, the LR its g-th optimizer step used: lr(g - 1).
    logged = {
        entry["step"]: entry["learning_rate"]
        for entry in json.loads((out / "log_history.json").read_text())
        if "learning_rate" in entry
    }
    assert logged == pytest.approx({g: expected(g - 1) for g in range(1, STEPS + 1)})
    assert logged[switch + 1] != pytest.approx(logged[switch])  # the override, as logged
    return ranks[0]


def test_trainer_single_process(tmp_path: Path, controller: ControllerProcess) -> None:
    out = tmp_path / "out"
    run = Run([sys.executable, *train_args(out)], env_for(controller.address, "hf-single"))
    assert run.job_id() == "hf-single"
    version = override_mid_run(controller.address, "hf-single")
    run.wait()
    check_trainer_log(out, controller.address, "hf-single", version, world=1)


def test_trainer_ddp_under_plain_torchrun(tmp_path: Path, controller: ControllerProcess) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *train_args(out)]
    run = Run(cmd, env_for(controller.address, None))
    job = run.job_id()  # the UUID torchrun drew for this launch, as rank 0 logged it
    version = override_mid_run(controller.address, job)
    output = run.wait()
    assert run.following == [(job, "TORCHELASTIC_RUN_ID")], output  # rank 0 only
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", job)
    rank0 = check_trainer_log(out, controller.address, job, version, world=2)
    assert rank0["job"] == job
