"""One rank of a real multi-process gloo DDP run with RemoteLRScheduler (run by tests).

Usage: python -m tests.ddp_worker --rank R --world W --init FILE --job J --address A
       --steps N --out DIR [--late-rank K] [--sleep S]

Writes DIR/rank-R.json: the per-step ``[step, applied_version, lr...]`` log and the final
model parameters. ``--late-rank K`` makes rank K apply every agreed version one exchange
late: the negative control that the consistency check must catch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from worker import RemoteLRScheduler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--init", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--schedule", default="CosineAnnealingLR(T_max=100, eta_min=0.001)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--late-rank", type=int, default=-1)
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{args.init}", rank=args.rank,
                            world_size=args.world)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD([
        {"params": model[0].parameters(), "lr": 0.1},
        {"params": model[2].parameters(), "lr": torch.tensor(0.05)},  # a tensor LR
    ], momentum=0.9)
    scheduler = RemoteLRScheduler(optimizer, args.schedule, job=args.job, address=args.address)
    if args.rank == args.late_rank:
        _make_late(scheduler)
    gen = torch.Generator().manual_seed(1000 + args.rank)
    log = []
    for _ in range(args.steps):
        x = torch.randn(32, 8, generator=gen)
        y = x.sum(dim=1, keepdim=True).sin()
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        lrs = [float(g["lr"]) for g in optimizer.param_groups]
        log.append([scheduler.last_epoch, scheduler.applied_version, *lrs])
        time.sleep(args.sleep)
    scheduler.close()
    params = [p.detach().flatten().tolist() for p in model.parameters()]
    Path(args.out, f"rank-{args.rank}.json").write_text(json.dumps({"log": log, "params": params}))
    dist.destroy_process_group()


def _make_late(scheduler: RemoteLRScheduler) -> None:
    """Hand this rank each agreed version one exchange after the others get it."""
    agreement = scheduler._agreement
    exchange = agreement.exchange
    held: list[int | None] = [None]

    def late(version: int) -> int | None:
        agreed, held[0] = held[0], exchange(version)
        return agreed

    agreement.exchange = late  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
