"""PyTorch Lightning: examples/train_lightning.py, 2-process CPU DDP, an override mid-run.

``configure_optimizers`` returns RemoteLRScheduler with ``interval="step"``; Lightning's own
``LearningRateMonitor`` must log the live LR, and both ranks must apply it at the same step.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import operate
from tests.procs import ROOT, ControllerProcess

pytestmark = pytest.mark.slow

JOB = "lightning-ddp"


def test_lightning_ddp_follows_an_override_on_both_ranks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "LRCTL_JOB": JOB, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "examples/train_lightning.py",
        "--devices",
        "2",
        "--steps",
        "120",
        "--schedule",
        "StepLR(step_size=25, gamma=0.5)",
        "--step-sleep",
        "0.03",
        "--out",
        str(out),
    ]
    with ControllerProcess(tmp_path / "lrctl.db") as controller:
        env["LRCTL_ADDRESS"] = controller.address
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            operate.wait_for_step(controller.address, JOB, 30, timeout=120)
            version = operate.override(controller.address, JOB, "lr /= 2", reason="lightning")
            output, _ = proc.communicate(timeout=180)
        finally:
            proc.kill()
        assert proc.returncode == 0, output
        (event,) = operate.history(controller.address, JOB)
    assert event.version == version and event.effective_step is not None
    switch = event.effective_step
    assert 30 <= switch < 120, switch

    def expected(step: int) -> float:  # StepLR(step_size=25, gamma=0.5), halved from `switch`
        return 0.1 * 0.5 ** (step // 25) * (0.5 if step >= switch else 1.0)

    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["log"] == ranks[1]["log"], "the ranks applied different LRs"
    assert ranks[0]["params"] == ranks[1]["params"], "the DDP replicas diverged"
    assert [step for step, _ in ranks[0]["log"]] == list(range(120))
    for step, lr in ranks[0]["log"]:
        assert lr == pytest.approx(expected(step)), step

    # Lightning's LearningRateMonitor logged the LR in effect at every step, override included.
    (metrics,) = out.glob("lightning_logs/version_*/metrics.csv")
    with metrics.open() as f:
        monitored = {
            int(row["step"]): float(row["lr-SGD"]) for row in csv.DictReader(f) if row.get("lr-SGD")
        }
    assert sorted(monitored) == list(range(120))
    assert monitored == pytest.approx({step: expected(step) for step in range(120)})
