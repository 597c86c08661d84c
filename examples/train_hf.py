"""Hugging Face ``Trainer`` whose LR schedule lives on the lrctl controller.

The only lrctl line: ``Trainer(..., optimizers=(optimizer, RemoteLRScheduler(...)))``, built
after ``TrainingArguments`` (which sets up the process group under torchrun), so every rank
joins the scheduler's rank agreement. One process, or DDP with torchrun::

    LRCTL_ADDRESS=127.0.0.1:50051 LRCTL_JOB=hf-1 python examples/train_hf.py
    LRCTL_ADDRESS=127.0.0.1:50051 torchrun --nproc_per_node 2 examples/train_hf.py
    lrctl override hf-1 'lr /= 2'

Under torchrun without ``LRCTL_JOB`` the job id is torchrun's run id (a fresh UUID for a plain
single-node launch; rank 0 logs it). The model is a tiny GPT-2 built from a config: nothing
is downloaded (``HF_HUB_OFFLINE=1``). The Trainer logs ``learning_rate`` every step
(``OUT/log_history.json``); every rank writes ``OUT/rank-N.json``, the LR it applied at each
step and its final parameters.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a tiny model from a config: never download

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from worker import RemoteLRScheduler


class RandomTokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, size: int, length: int, vocab: int) -> None:
        self.ids = torch.randint(vocab, (size, length), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class PerRankLog(TrainerCallback):
    """Record the LR each optimizer step uses on this rank; slow steps for a live override."""

    def __init__(self, step_sleep: float) -> None:
        self.step_sleep = step_sleep
        self.rows: list[list[float]] = []

    def on_step_begin(
        self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any
    ) -> None:
        self.rows.append([state.global_step, float(kwargs["optimizer"].param_groups[0]["lr"])])
        time.sleep(self.step_sleep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="CosineAnnealingLR(T_max=200, eta_min=1e-5)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--step-sleep", type=float, default=0.02)
    parser.add_argument("--out", default="out/hf")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    training_args = TrainingArguments(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=8,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,  # gloo under torchrun
        ddp_find_unused_parameters=False,
    )
    # TrainingArguments set up the process group (under torchrun): build the scheduler now.
    config = GPT2Config(
        vocab_size=64,
        n_positions=32,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = RemoteLRScheduler(optimizer, args.schedule)  # the one lrctl line
    record = PerRankLog(args.step_sleep)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=RandomTokens(4096, 32, config.vocab_size),
        optimizers=(optimizer, scheduler),
        callbacks=[record],
    )
    trainer.train()
    scheduler.close()

    out = Path(args.out)
    rank = training_args.process_index
    params = [p.detach().flatten().tolist() for p in model.parameters()]
    (out / f"rank-{rank}.json").write_text(
        json.dumps({"job": scheduler.job, "log": record.rows, "params": params})
    )
    if rank == 0:
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    main()
