"""The Ray Train loop of tests/test_ray_restart.py: examples/train_ray_restart.py's pattern,
plus file gates the test opens, so each phase happens at a known step, not by timing luck.

Ray workers import this module (``PYTHONPATH`` is the repository root).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train

from examples import train_ray_restart as example


@dataclass(frozen=True)
class Gate:
    """Marker files shared by the test and every worker (one machine)."""

    folder: str
    hold_at: int
    """First attempt: every rank waits after this step until the test sent an override."""
    freeze_at: int
    """First attempt: every rank stops after this step (before the next checkpoint) until
    the test kills one of them."""
    timeout_s: float = 240.0

    def mark(self, name: str, text: str = "") -> None:
        path = Path(self.folder, name)
        path.with_suffix(".tmp").write_text(text)
        path.with_suffix(".tmp").rename(path)  # appears whole

    def opened(self, name: str) -> bool:
        return Path(self.folder, name).exists()

    def wait(self, name: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self.opened(name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test never opened gate {name!r}")
            time.sleep(0.02)


def restart_loop(config: dict[str, Any]) -> None:
    gate: Gate = config["gate"]
    rank = ray.train.get_context().get_world_rank()
    checkpoint = ray.train.get_checkpoint()
    attempt = "first" if checkpoint is None else "resumed"
    gate.mark(f"pid-{attempt}-{rank}", str(os.getpid()))
    if checkpoint is not None:
        # No scheduler exists anywhere now: the test sends an override, then lets us go.
        gate.mark(f"waiting-{rank}")
        gate.wait("go-restart")

    model, optimizer, scheduler = example.build(config)
    start = example.restore(checkpoint, model, optimizer, scheduler)
    with Path(gate.folder, f"lr-{attempt}-{rank}.csv").open("w", buffering=1) as log:
        for step in range(start + 1, config["steps"] + 1):
            loss = example.train_step(model, optimizer, scheduler, rank, step)
            lr = float(optimizer.param_groups[0]["lr"])
            log.write(f"{step},{scheduler.applied_version},{lr!r}\n")
            if checkpoint is None and step == gate.hold_at:
                gate.mark(f"held-{rank}")
                gate.wait("go-override")
            if checkpoint is None and step == gate.freeze_at:
                gate.mark(f"frozen-{rank}")
                gate.wait("never")  # until the test kills a worker and Ray tears us down
            if step % config["checkpoint_every"] == 0 or step == config["steps"]:
                example.report(step, {"loss": loss, "lr": lr}, model, optimizer, scheduler)
            time.sleep(config["step_sleep"])
    scheduler.close()
