"""A small model trained with Ray Train DDP whose LR schedule lives on the lrctl controller.

The only lrctl line is the scheduler: ``RemoteLRScheduler(optimizer, SPEC)``; the job id and
the controller address come from ``LRCTL_JOB`` / ``LRCTL_ADDRESS`` (the job's runtime_env).
Submit it to a Ray cluster::

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env-json \\
        '{"env_vars": {"LRCTL_ADDRESS": "127.0.0.1:50051", "LRCTL_JOB": "demo"}}' \\
        -- python examples/train_ddp.py --steps 300

Rank 0 shows a progress bar with the step, the loss and the live LR. With ``--lr-log DIR``
every rank writes the LR it applied at each step to ``DIR/rank-N.csv`` (the demo compares
them). Uses GPUs (NCCL) when the cluster has them, CPUs with gloo otherwise.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn

from worker import RemoteLRScheduler


def train_loop(config: dict[str, Any]) -> None:
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(
        nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    )
    device = ray.train.torch.get_device()
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    scheduler = RemoteLRScheduler(optimizer, config["schedule"])  # the one lrctl line

    generator = torch.Generator().manual_seed(rank)
    weights = torch.linspace(-1, 1, 16)
    log = None
    if config["lr_log"]:
        Path(config["lr_log"]).mkdir(parents=True, exist_ok=True)
        log = open(Path(config["lr_log"]) / f"rank-{rank}.csv", "w")  # noqa: SIM115
        log.write("step,lr,version\n")
        log.write(f"0,{float(scheduler.get_last_lr()[0])!r},{scheduler.applied_version}\n")
    bar = None
    if rank == 0:
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(total=config["steps"], desc="train")
    for step in range(1, config["steps"] + 1):
        x = torch.randn(64, 16, generator=generator)
        y = (x @ weights).unsqueeze(1).sin()
        loss = nn.functional.mse_loss(model(x.to(device)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        lr = scheduler.get_last_lr()[0]
        if log is not None:
            log.write(f"{scheduler.last_epoch},{float(lr)!r},{scheduler.applied_version}\n")
        if bar is not None:
            bar.set_description(f"step {step} loss {loss.item():.4f} lr {float(lr):.3e}")
            bar.update(1)
        if step % 50 == 0 or step == config["steps"]:
            ray.train.report({"step": step, "loss": loss.item(), "lr": float(lr)})
        time.sleep(config["step_sleep"])
    if bar is not None:
        bar.close()
    if log is not None:
        log.close()
    scheduler.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (ranks)")
    parser.add_argument("--schedule", default="CosineAnnealingLR(T_max=300, eta_min=0.001)")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=300)
    # --step-sleep: seconds per step, slow enough that a human can override mid-run.
    parser.add_argument("--step-sleep", type=float, default=0.05, help="seconds per step")
    parser.add_argument("--lr-log", default="", help="folder for each rank's per-step LR")
    parser.add_argument("--name", default=os.environ.get("LRCTL_JOB", "lrctl-example"))
    parser.add_argument("--storage", default=os.path.join(tempfile.gettempdir(), "lrctl-ray"))
    args = parser.parse_args()

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))
    use_gpu = bool(ray.cluster_resources().get("GPU", 0))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=vars(args),  # schedule, lr, steps, step_sleep, lr_log
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=use_gpu),
        run_config=RunConfig(name=args.name, storage_path=args.storage),
    )
    result = trainer.fit()
    print(f"finished: {result.metrics}")


if __name__ == "__main__":
    main()
