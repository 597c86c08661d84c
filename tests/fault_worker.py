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

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from tests.ddp_worker import rank_arguments, start_rank, train_step
from worker import RemoteLRScheduler


def main() -> int:
    parser = rank_arguments()
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--schedule", default="CosineAnnealingLR(T_max=400, eta_min=0.001)")
    args = parser.parse_args()

    model, ddp, optimizer = start_rank(args, 0.05)
    scheduler = RemoteLRScheduler(optimizer, args.schedule, job=args.job, address=args.address)
    gen = torch.Generator().manual_seed(1000 + args.rank)
    out = Path(args.out)
    log = []
    stop = torch.zeros(1)
    for step in range(args.max_steps):
        log.append(train_step(ddp, optimizer, scheduler, gen))
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
