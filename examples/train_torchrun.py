"""Plain torchrun DDP (gloo, no Ray) whose LR schedule lives on the lrctl controller.

The only lrctl line is the scheduler; every rank builds it after the process group::

    LRCTL_ADDRESS=127.0.0.1:50051 torchrun --nproc_per_node 2 examples/train_torchrun.py

The job id is ``LRCTL_JOB`` when set, else torchrun's run id (``TORCHELASTIC_RUN_ID``). A
plain single-node ``torchrun --nproc_per_node N`` draws a new UUID per launch (rank 0 logs
it: ``lrctl: following job '...' (from TORCHELASTIC_RUN_ID)``); for a stable id set
``LRCTL_JOB`` or launch with a rendezvous id::

    torchrun --nproc_per_node 2 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:29400 \\
        --rdzv-id run-42 examples/train_torchrun.py
    lrctl override run-42 'lr /= 2'

With ``--lr-log DIR`` every rank writes ``DIR/rank-N.json``: the LR it applied at each step
and its final parameters (the tests compare them across ranks).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from worker import RemoteLRScheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="CosineAnnealingLR(T_max=200, eta_min=0.001)")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--step-sleep",
        type=float,
        default=0.02,
        help="seconds per step, so a human can override mid-run",
    )
    parser.add_argument("--lr-log", default="", help="folder for each rank's per-step LR")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    dist.init_process_group("gloo")  # torchrun's env:// rendezvous
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = RemoteLRScheduler(optimizer, args.schedule)  # the one lrctl line

    generator = torch.Generator().manual_seed(rank)
    weights = torch.linspace(-1, 1, 16)
    log = [[0, scheduler.applied_version, float(scheduler.get_last_lr()[0])]]
    for _ in range(args.steps):
        x = torch.randn(64, 16, generator=generator)
        loss = nn.functional.mse_loss(ddp(x), (x @ weights).unsqueeze(1).sin())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        log.append(
            [
                scheduler.last_epoch,
                scheduler.applied_version,
                float(optimizer.param_groups[0]["lr"]),
            ]
        )
        time.sleep(args.step_sleep)
    scheduler.close()
    if args.lr_log:
        Path(args.lr_log).mkdir(parents=True, exist_ok=True)
        params = [p.detach().flatten().tolist() for p in model.parameters()]
        Path(args.lr_log, f"rank-{rank}.json").write_text(
            json.dumps({"job": scheduler.job, "log": log, "params": params})
        )
    if rank == 0:
        print(f"job {scheduler.job}: {args.steps} steps, final lr {log[-1][2]:.6g}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
