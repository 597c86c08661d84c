"""The Ray Train loop of tests/test_observability.py (importable by Ray workers via PYTHONPATH).

Two param groups under RemoteLRScheduler (job and address from LRCTL_JOB / LRCTL_ADDRESS),
``steps`` steps, then the loop *holds* without stepping until the file ``release`` exists,
so that the test can read a stable state through Prometheus (the controller's gauges and
every rank's Ray gauge) before the workers exit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from worker import RemoteLRScheduler


def hold_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Train a tiny DDP model, then wait for ``config["release"]``; return rank and LRs."""
    context = ray.train.get_context()
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(torch.nn.Linear(4, 1))
    module = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.SGD(
        [
            {"params": [module.weight], "lr": config["base_lrs"][0]},
            {"params": [module.bias], "lr": config["base_lrs"][1]},
        ],
        momentum=0.9,
    )
    scheduler = RemoteLRScheduler(optimizer, config["schedule"])
    gen = torch.Generator().manual_seed(context.get_world_rank())
    for _ in range(config["steps"]):
        loss = model(torch.randn(8, 4, generator=gen)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        time.sleep(config["sleep"])
    release = Path(config["release"])
    deadline = time.monotonic() + config["hold_timeout"]
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    lrs = [float(group["lr"]) for group in optimizer.param_groups]
    scheduler.close()
    return {
        "rank": context.get_world_rank(),
        "step": scheduler.last_epoch,
        "lrs": lrs,
        "released": release.exists(),
    }
