"""One rank of a real multi-process gloo DDP run with RemoteLRScheduler (run by tests).

Usage: python -m tests.ddp_worker --rank R --world W --init FILE --job J [--address A]
       --steps N --out DIR [--late-rank K] [--sleep S] [--schedule SPEC]

Only rank 0 is given the controller's address (tests start the other ranks with no
``LRCTL_ADDRESS``/``LRCTL_TOKEN`` in their environment either). Writes DIR/rank-R.json: the
per-step ``[step, applied_version, lr...]`` log, the final model parameters, whether the
rank held a Watch stream, and the divergences it found. ``--late-rank K`` makes rank K apply
every new version one exchange after the others: the negative control that the
consistency check (and the ranks' own divergence detector) must catch. A construction
error is written to DIR/rank-R.error and the process exits with status 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from worker import RemoteLRScheduler


def rank_arguments() -> argparse.ArgumentParser:
    """The flags every test rank takes (this one's and tests/fault_worker.py's)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--init", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--address", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sleep", type=float, default=0.02)
    return parser


def start_rank(
    args: argparse.Namespace,
    lr2: float | torch.Tensor,
) -> tuple[torch.nn.Sequential, DistributedDataParallel, torch.optim.SGD]:
    """Join the gloo group; the model, its DDP wrapper and an SGD optimizer with two param
    groups (LRs 0.1 and ``lr2``)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{args.init}", rank=args.rank, world_size=args.world
    )
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.1},
            {"params": model[2].parameters(), "lr": lr2},
        ],
        momentum=0.9,
    )
    return model, ddp, optimizer


def train_step(
    ddp: DistributedDataParallel,
    optimizer: torch.optim.SGD,
    scheduler: RemoteLRScheduler,
    gen: torch.Generator,
) -> list[float]:
    """One training step and scheduler step; the log row ``[step, applied_version, lr...]``."""
    x = torch.randn(32, 8, generator=gen)
    y = x.sum(dim=1, keepdim=True).sin()
    loss = torch.nn.functional.mse_loss(ddp(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    lrs = [float(g["lr"]) for g in optimizer.param_groups]
    return [scheduler.last_epoch, scheduler.applied_version, *lrs]


def main() -> int:
    parser = rank_arguments()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--schedule", default="CosineAnnealingLR(T_max=100, eta_min=0.001)")
    parser.add_argument("--late-rank", type=int, default=-1)
    args = parser.parse_args()

    model, ddp, optimizer = start_rank(args, torch.tensor(0.05))  # a tensor LR
    try:
        scheduler = RemoteLRScheduler(optimizer, args.schedule, job=args.job, address=args.address)
    except Exception as exc:
        Path(args.out, f"rank-{args.rank}.error").write_text(f"{type(exc).__name__}: {exc}")
        return 3
    if args.rank == args.late_rank:
        _make_late(scheduler)
    gen = torch.Generator().manual_seed(1000 + args.rank)
    log = []
    for _ in range(args.steps):
        log.append(train_step(ddp, optimizer, scheduler, gen))
        if args.sleep:
            time.sleep(args.sleep)
    held_stream = scheduler._link is not None
    scheduler.close()
    params = [p.detach().flatten().tolist() for p in model.parameters()]
    result: dict[str, Any] = {
        "log": log,
        "params": params,
        "held_stream": held_stream,
        "divergences": scheduler.divergences,
    }
    Path(args.out, f"rank-{args.rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()
    return 0


def _make_late(scheduler: RemoteLRScheduler) -> None:
    """Apply each new version one exchange after the other ranks do (the negative control).

    The rank still takes part in every collective, as a buggy rank would: only the step
    at which it applies a version moves.
    """
    switch = scheduler._switch
    exchange = scheduler._exchange
    deferred: list[tuple[Any, int]] = []

    def late_switch(held: Any, version: int, step: int, *, provisional: bool = False) -> None:
        if provisional:
            switch(held, version, step, provisional=True)
        else:
            deferred.append((held, version))

    def late_exchange(n: int, t: int) -> bool:
        due = list(deferred)
        deferred.clear()
        switched = exchange(n, t)
        for held, version in due:
            switch(held, version, t)
        return switched or bool(due)

    scheduler._switch = late_switch  # type: ignore[method-assign]
    scheduler._exchange = late_exchange  # type: ignore[method-assign]


if __name__ == "__main__":
    sys.exit(main())
