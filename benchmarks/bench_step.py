"""Per-step cost of lrctl's closed-form evaluation vs torch's ``scheduler.step()``, one run.

For each schedule, both sides advance an optimizer with two param groups (one tensor LR)
by N steps and write the LR into ``param_groups`` as torch does (``fill_`` for tensors):

* torch: ``scheduler.step()`` (torch's own bookkeeping, recursion and writes);
* lrctl core: ``LRProgram.lrs(t)`` and the same writes (the schedule math alone);
* ``RemoteLRScheduler.step()``: the real worker scheduler attached to a real controller
  (a subprocess on loopback), single process — torch's LRScheduler bookkeeping, the
  version check, the closed form, the writes and the progress slot. No network per step.

Prints a table of microseconds per step and the ratios to torch (< 1 means cheaper), and
writes it to benchmarks/RESULTS.md with ``--write``.

Usage: python benchmarks/bench_step.py [--steps 20000] [--repeat 5] [--write]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lrctl.program import LRProgram
from tests.procs import ControllerProcess
from tests.torch_ref import build_torch, make_optimizer
from worker import RemoteLRScheduler

SCHEDULES = [
    "StepLR(step_size=200, gamma=0.5)",
    "MultiStepLR(milestones=[200, 350], gamma=0.5)",
    "ExponentialLR(gamma=0.9999)",
    "CosineAnnealingLR(T_max=1000, eta_min=0.001)",
    "LambdaLR(lr_lambda='0.95 ** epoch')",
    "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=50, mode='triangular2')",
    "CosineAnnealingWarmRestarts(T_0=50, T_mult=2)",
    "OneCycleLR(max_lr=0.1, total_steps=100000)",
    "SequentialLR(schedulers=[LinearLR(start_factor=0.1, total_iters=5), "
    "CosineAnnealingLR(T_max=95)], milestones=[5])",
    "ChainedScheduler(schedulers=[ConstantLR(factor=0.1, total_iters=2), "
    "ExponentialLR(gamma=0.9999)])",
]
BASE = [0.1, 0.05]
READING = """
Reading it: the schedule math alone is a fraction of torch's `scheduler.step()`. The whole
`RemoteLRScheduler.step()` reuses torch's own LRScheduler bookkeeping and adds the version
check and the progress slot; it is at or below torch for most schedules, and slightly above
for CyclicLR and OneCycleLR, which also write momentum every step (as torch's do). The
single-process run has no rank agreement; under `torch.distributed` each step adds one
asynchronous one-element gloo all-reduce, launched and waited a step apart.
"""


def _write(groups: list[dict[str, Any]], lrs: list[float]) -> None:
    for group, lr in zip(groups, lrs):
        current = group["lr"]
        if isinstance(current, torch.Tensor):
            current.fill_(lr)
        else:
            group["lr"] = lr


def time_torch(spec: str, steps: int) -> float:
    opt = make_optimizer(BASE)
    sched = build_torch(spec, opt)
    opt.step()  # silence the step-order warning once
    start = time.perf_counter_ns()
    for _ in range(steps):
        sched.step()
    return (time.perf_counter_ns() - start) / steps / 1000


def time_lrctl(spec: str, steps: int) -> float:
    opt = make_optimizer(BASE)
    program = LRProgram(spec, BASE)
    groups = opt.param_groups
    start = time.perf_counter_ns()
    for t in range(1, steps + 1):
        _write(groups, program.lrs(t))
    return (time.perf_counter_ns() - start) / steps / 1000


def time_remote(spec: str, steps: int, address: str, job: str) -> float:
    opt = make_optimizer(BASE)
    with RemoteLRScheduler(opt, spec, job=job, address=address) as sched:
        opt.step()
        start = time.perf_counter_ns()
        for _ in range(steps):
            sched.step()
        return (time.perf_counter_ns() - start) / steps / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import warnings

    warnings.simplefilter("ignore")  # torch's "step() before optimizer.step()" notice
    lines = ["| schedule | torch µs/step | lrctl core µs/step | RemoteLRScheduler µs/step "
             "| core / torch | RemoteLRScheduler / torch |",
             "|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp, ControllerProcess(Path(tmp) / "bench.db") as ctl:
        for i, spec in enumerate(SCHEDULES, 1):
            theirs = min(time_torch(spec, args.steps) for _ in range(args.repeat))
            core = min(time_lrctl(spec, args.steps) for _ in range(args.repeat))
            remote = min(time_remote(spec, args.steps, ctl.address, f"bench-{i}")
                         for _ in range(args.repeat))
            name = spec.split("(")[0]
            lines.append(f"| `{name}` | {theirs:.2f} | {core:.2f} | {remote:.2f} | "
                         f"{core / theirs:.2f} | {remote / theirs:.2f} |")
            print(f"[{i}/{len(SCHEDULES)}] {name}: torch {theirs:.2f} µs, core {core:.2f} µs, "
                  f"RemoteLRScheduler {remote:.2f} µs", file=sys.stderr)
    table = "\n".join(lines)
    print(table)
    if args.write:
        header = (f"# Per-step cost: lrctl vs torch\n\n"
                  f"`python benchmarks/bench_step.py --write` ({args.steps} steps, best of "
                  f"{args.repeat}; two param groups, one with a tensor LR; "
                  f"torch {torch.__version__}, Python {platform.python_version()}, "
                  f"{platform.machine()}, 1 torch thread).\n\n")
        (Path(__file__).parent / "RESULTS.md").write_text(header + table + "\n" + READING)
    return 0


if __name__ == "__main__":
    sys.exit(main())
