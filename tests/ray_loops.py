"""Ray Train loops used by tests/test_ray.py (importable by Ray workers via PYTHONPATH)."""

from __future__ import annotations

import time
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from worker import RemoteLRScheduler


def lr_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Train a tiny DDP model with RemoteLRScheduler; return this rank's per-step log."""
    context = ray.train.get_context()
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = RemoteLRScheduler(optimizer, config["schedule"])  # job + address from env
    gen = torch.Generator().manual_seed(context.get_world_rank())
    log = []
    for _ in range(config["steps"]):
        x = torch.randn(16, 4, generator=gen)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        lr = float(optimizer.param_groups[0]["lr"])
        log.append([scheduler.last_epoch, scheduler.applied_version, lr])
        time.sleep(config["sleep"])
    scheduler.close()
    return {
        "rank": context.get_world_rank(),
        "job": scheduler.job,
        "distributed": dist.is_initialized(),
        "log": log,
        "params": [p.detach().flatten().tolist() for p in model.parameters()],
    }
