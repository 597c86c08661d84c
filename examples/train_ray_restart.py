"""Ray Train with restarts: the scheduler's state in every checkpoint, same LRs after a failure.

The pattern (``train_loop`` below): build the model, optimizer and ``RemoteLRScheduler``;
if Ray hands a checkpoint back (``ray.train.get_checkpoint()``), load all three, the
scheduler last; report a checkpoint with ``scheduler.state_dict()`` every few steps. With
``FailureConfig(max_failures=...)`` Ray restarts the worker group from the last checkpoint
when a worker dies, and the resumed run replays exactly the LRs of a run that never stopped:

* an override that took effect after the last checkpoint reapplies at the step the
  controller recorded for it (not at the resume step);
* an override sent while the workers were down takes effect at the first resumed step.

Submit it like examples/train_ddp.py::

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env-json \\
        '{"env_vars": {"LRCTL_ADDRESS": "127.0.0.1:50051"}}' \\
        -- python examples/train_ray_restart.py --name run-42 --steps 600

(no ``LRCTL_JOB``: the job id is the run name, ``run-42``). tests/test_ray_restart.py kills a
worker mid-run and checks the LRs step by step.
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
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn

from worker import RemoteLRScheduler

STATE_FILE = "state.pt"


def build(config: dict[str, Any]) -> tuple[nn.Module, torch.optim.Optimizer, RemoteLRScheduler]:
    """The model (DDP-wrapped by Ray), its optimizer and the scheduler, as at step 0."""
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(
        nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    scheduler = RemoteLRScheduler(optimizer, config["schedule"])  # job: the run name
    return model, optimizer, scheduler


def restore(
    checkpoint: Checkpoint | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: RemoteLRScheduler,
) -> int:
    """Load a checkpoint into the three (the scheduler last); return the step it was at."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, weights_only=True)
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])  # same LRs from here on, overrides included
    return int(scheduler.last_epoch)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: RemoteLRScheduler,
    rank: int,
    step: int,
) -> float:
    """One step on this rank's batch for ``step`` (the same batch after a restart)."""
    generator = torch.Generator().manual_seed(rank * 1_000_003 + step)
    x = torch.randn(64, 16, generator=generator)
    y = (x @ torch.linspace(-1, 1, 16)).unsqueeze(1).sin()
    device = ray.train.torch.get_device()
    loss = nn.functional.mse_loss(model(x.to(device)), y.to(device))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss.item())


def report(
    step: int,
    metrics: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: RemoteLRScheduler,
) -> None:
    """Report a checkpoint (written by rank 0) holding the scheduler's state; every rank calls."""
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            torch.save(
                {
                    "model": _unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                },
                Path(folder) / STATE_FILE,
            )
            checkpoint = Checkpoint.from_directory(folder)
        ray.train.report({"step": step, **metrics}, checkpoint=checkpoint)


def train_loop(config: dict[str, Any]) -> None:
    rank = ray.train.get_context().get_world_rank()
    model, optimizer, scheduler = build(config)
    start = restore(ray.train.get_checkpoint(), model, optimizer, scheduler)
    for step in range(start + 1, config["steps"] + 1):
        loss = train_step(model, optimizer, scheduler, rank, step)
        if step % config["checkpoint_every"] == 0 or step == config["steps"]:
            report(
                step,
                {"loss": loss, "lr": float(scheduler.get_last_lr()[0])},
                model,
                optimizer,
                scheduler,
            )
        time.sleep(config["step_sleep"])
    scheduler.close()


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)  # DistributedDataParallel keeps the model here
    return inner if isinstance(inner, nn.Module) else model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=os.environ.get("LRCTL_JOB", "lrctl-restart"))
    parser.add_argument("--schedule", default="CosineAnnealingLR(T_max=600, eta_min=0.001)")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--step-sleep", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-failures", type=int, default=3)
    parser.add_argument("--storage", default=os.path.join(tempfile.gettempdir(), "lrctl-ray"))
    args = parser.parse_args()

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=vars(args),  # schedule, lr, steps, checkpoint_every, step_sleep
        scaling_config=ScalingConfig(
            num_workers=args.workers, use_gpu=bool(ray.cluster_resources().get("GPU", 0))
        ),
        run_config=RunConfig(
            name=args.name,
            storage_path=args.storage,
            failure_config=FailureConfig(max_failures=args.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    print(f"finished: {result.metrics}")


if __name__ == "__main__":
    main()
