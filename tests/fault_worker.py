"""One rank of a real gloo DDP run with RemoteLRScheduler that trains until told to stop.

Usage: python -m tests.fault_worker --rank R --world W --init FILE --job J [--address A]
       --out DIR --stop-file F [--sleep S] [--max-steps N] [--schedule SPEC]

For the fault tests (tests/test_faults.py): the test decides when training ends by creating
``--stop-file``; every step the ranks agree (a one-element all-reduce) on whether rank 0 has
seen it, so they all stop after the same step. Only rank 0 gets the controller's address.
Writes DIR/rank-R.json: the per-step ``[step, applied_version, lr...]`` log and the final
parameters; rank 0 also writes DIR/progress (its latest step) every 10 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from worker import RemoteLRScheduler


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--init", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--address", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--schedule", default="CosineAnnealingLR(T_max=400, eta_min=0.001)")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{args.init}", rank=args.rank,
                            world_size=args.world)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD([
        {"params": model[0].parameters(), "lr": 0.1},
        {"params": model[2].parameters(), "lr": 0.05},
    ], momentum=0.9)
    scheduler = RemoteLRScheduler(optimizer, args.schedule, job=args.job, address=args.address)
    gen = torch.Generator().manual_seed(1000 + args.rank)
    out = Path(args.out)
    log = []
    stop = torch.zeros(1)
    for step in range(args.max_steps):
        x = torch.randn(32, 8, generator=gen)
        y = x.sum(dim=1, keepdim=True).sin()
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        log.append([scheduler.last_epoch, scheduler.applied_version,
                    *(float(g["lr"]) for g in optimizer.param_groups)])
        if args.rank == 0 and step % 10 == 0:
            tmp = out / "progress.tmp"
            tmp.write_text(str(scheduler.last_epoch))
            os.replace(tmp, out / "progress")
        stop.fill_(1.0 if args.rank == 0 and os.path.exists(args.stop_file) else 0.0)
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop.item():
            break
        if args.sleep:
            time.sleep(args.sleep)
    scheduler.close()
    params = [p.detach().flatten().tolist() for p in model.parameters()]
    (out / f"rank-{args.rank}.json").write_text(json.dumps({"log": log, "params": params}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
