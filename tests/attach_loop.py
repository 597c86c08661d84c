"""One single-process training run with RemoteLRScheduler (run by tests as a real process).

Usage: python -m tests.attach_loop --job J --out FILE [--steps N] [--sleep S] [--stop FILE]

The controller's address, token and TLS files come from ``LRCTL_ADDRESS``, ``LRCTL_TOKEN`` and
``LRCTL_TLS_CA``/``_CERT``/``_KEY``, as in a real run. Every step appends a JSON line
``{"step", "lr", "version", "superseded", "epoch"}`` to FILE (flushed); the loop ends after N
steps or once the file ``--stop`` exists, then closes the scheduler and writes
``{"done": true}``. A construction error goes to stderr and the exit status is 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from worker import RemoteLRScheduler, WorkerError


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--sleep", type=float, default=0.01)
    parser.add_argument("--stop", default=None)
    parser.add_argument("--schedule", default="StepLR(step_size=1000, gamma=0.5)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    try:
        scheduler = RemoteLRScheduler(optimizer, args.schedule, job=args.job)
    except WorkerError as exc:
        print(f"attach_loop: {exc}", file=sys.stderr, flush=True)
        return 3
    link = scheduler._link
    stop = Path(args.stop) if args.stop else None
    with open(args.out, "a", encoding="utf-8") as out:
        for _ in range(args.steps):
            optimizer.step()
            scheduler.step()
            row = {
                "step": scheduler.last_epoch,
                "lr": float(scheduler.get_last_lr()[0]),
                "version": scheduler.applied_version,
                "superseded": bool(link is not None and link.superseded),
                "epoch": link.epoch if link is not None else 0,
            }
            out.write(json.dumps(row) + "\n")
            out.flush()
            if stop is not None and stop.exists():
                break
            time.sleep(args.sleep)
        scheduler.close()
        out.write(json.dumps({"done": True}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
