"""PyTorch Lightning (CPU DDP) whose LR schedule lives on the lrctl controller.

The only lrctl line is in ``configure_optimizers``: return ``RemoteLRScheduler`` with
``interval="step"`` (Lightning then calls ``step()`` after every optimizer step; Lightning
builds it after the process group, on every rank)::

    LRCTL_ADDRESS=127.0.0.1:50051 LRCTL_JOB=lit-1 python examples/train_lightning.py --devices 2
    lrctl override lit-1 'lr /= 2'

``LearningRateMonitor`` logs the live LR (``lr-SGD`` in ``OUT/lightning_logs/*/metrics.csv``).
With ``--devices N`` Lightning relaunches this script once per extra rank (gloo on CPU). Every
rank also writes ``OUT/rank-N.json``: the LR in effect at each step and its final parameters.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from worker import RemoteLRScheduler


class Regression(L.LightningModule):
    def __init__(self, schedule: str, lr: float) -> None:
        super().__init__()
        self.schedule = schedule
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        scheduler = RemoteLRScheduler(optimizer, self.schedule)  # job, address: LRCTL_* env
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_train_end(self) -> None:
        self.lr_schedulers().close()  # flush rank 0's last report; optional


class PerRankLog(Callback):
    """Record the LR each optimizer step uses on this rank; slow steps for a live override."""

    def __init__(self, out: Path, step_sleep: float) -> None:
        self.out = out
        self.step_sleep = step_sleep
        self.rows: list[list[float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
        self.rows.append([trainer.global_step, float(trainer.optimizers[0].param_groups[0]["lr"])])
        time.sleep(self.step_sleep)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        params = [p.detach().flatten().tolist() for p in module.parameters()]
        scheduler = module.lr_schedulers()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank-{trainer.global_rank}.json").write_text(
            json.dumps({"job": scheduler.job, "log": self.rows, "params": params})
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="CosineAnnealingLR(T_max=200, eta_min=0.001)")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--step-sleep", type=float, default=0.02)
    parser.add_argument("--out", default="out/lightning")
    args = parser.parse_args()

    L.seed_everything(0, verbose=False)
    x = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))
    y = (x @ torch.linspace(-1, 1, 16)).unsqueeze(1).sin()
    data = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    out = Path(args.out)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_steps=args.steps,
        log_every_n_steps=1,
        logger=CSVLogger(out),
        callbacks=[LearningRateMonitor(logging_interval="step"), PerRankLog(out, args.step_sleep)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regression(args.schedule, args.lr), data)


if __name__ == "__main__":
    main()
