"""Hot path: ``RemoteLRScheduler.step()`` against torch's own ``scheduler.step()``.

For each schedule and group count, both sides step a fresh optimizer N times and write the
LRs into ``param_groups`` as they do in training (torch: its ``LRScheduler.step()``; lrctl:
the real worker scheduler attached to a real controller subprocess, single process — the
version check, the closed form, the writes; no network per step). Runs alternate between
the two sides (the order flips every run) and each figure is the median of the runs, so
drift on a shared machine hits both. Plain float LRs are the main case; a tensor LR (one
group of four, updated in place with ``fill_`` on both sides) is the extra one.

Part of ``python -m benchmarks worker``; ``python benchmarks/bench_step.py`` prints the
table alone.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lrctl.client import Client  # noqa: E402
from tests.procs import ControllerProcess  # noqa: E402
from tests.torch_ref import build_torch, make_optimizer  # noqa: E402
from worker import RemoteLRScheduler  # noqa: E402

#: The six schedulers of the issue (CyclicLR and OneCycleLR cycle momentum, as torch's do).
SCHEDULES = [
    "StepLR(step_size=200, gamma=0.5)",
    "CosineAnnealingLR(T_max=1000, eta_min=0.001)",
    "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=50, mode='triangular2')",
    "OneCycleLR(max_lr=0.1, total_steps=100000)",
    "LambdaLR(lr_lambda='0.95 ** epoch')",
    "CosineAnnealingWarmRestarts(T_0=50, T_mult=2)",
]


@dataclass(frozen=True)
class Case:
    spec: str
    groups: int
    tensor_group: int | None  # index of the group with a tensor LR, or None
    override: bool = False  # lrctl steps after one `lr /= 2` took effect (torch: as is)

    @property
    def name(self) -> str:
        return self.spec.split("(")[0]

    @property
    def base(self) -> list[float]:
        return [0.1 / (i + 1) for i in range(self.groups)]


@dataclass(frozen=True)
class Result:
    case: Case
    torch_us: float
    lrctl_us: float
    runs: int

    @property
    def ratio(self) -> float:
        return self.lrctl_us / self.torch_us


def time_torch(case: Case, steps: int) -> float:
    opt = make_optimizer(case.base, tensor_group=case.tensor_group)
    sched = build_torch(case.spec, opt)
    opt.step()
    start = time.perf_counter_ns()
    for _ in range(steps):
        sched.step()
    return (time.perf_counter_ns() - start) / steps / 1000


def time_lrctl(case: Case, steps: int, address: str, job: str) -> float:
    opt = make_optimizer(case.base, tensor_group=case.tensor_group)
    with RemoteLRScheduler(opt, case.spec, job=job, address=address) as sched:
        opt.step()
        if case.override:  # one more event in the job's log, applied before timing
            with Client(address) as client:
                version = client.override(job, "lr /= 2", reason="benchmark").event.version
            deadline = time.monotonic() + 30
            while sched.applied_version < version:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the override of {job} never reached the scheduler")
                sched.step()
                time.sleep(0.001)
        start = time.perf_counter_ns()
        for _ in range(steps):
            sched.step()
        elapsed = time.perf_counter_ns() - start
    return elapsed / steps / 1000


def measure(
    cases: Sequence[Case], *, steps: int, runs: int, address: str, progress: bool = True
) -> list[Result]:
    """Median µs per step of each side over ``runs`` alternating runs per case."""
    torch.set_num_threads(1)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "step() before optimizer.step()" notice
        for i, case in enumerate(cases, 1):
            job = f"bench-{case.name}-{case.groups}-{case.tensor_group}-{case.override}"
            ours: list[float] = []
            theirs: list[float] = []
            for run in range(runs):
                if run % 2:
                    ours.append(time_lrctl(case, steps, address, job))
                    theirs.append(time_torch(case, steps))
                else:
                    theirs.append(time_torch(case, steps))
                    ours.append(time_lrctl(case, steps, address, job))
            result = Result(case, statistics.median(theirs), statistics.median(ours), runs)
            out.append(result)
            if progress:
                print(
                    f"  [{i}/{len(cases)}] {case.name} x{case.groups}"
                    f"{' (tensor LR)' if case.tensor_group is not None else ''}: torch "
                    f"{result.torch_us:.2f} µs, lrctl {result.lrctl_us:.2f} µs, "
                    f"{result.ratio:.2f}x",
                    file=sys.stderr,
                )
    return out


def main_cases() -> list[Case]:
    return [Case(spec, groups, None) for groups in (1, 4) for spec in SCHEDULES]


def tensor_cases() -> list[Case]:
    return [Case(spec, 4, 1) for spec in SCHEDULES]


def override_cases() -> list[Case]:
    return [Case(spec, groups, None, override=True) for groups in (1, 4) for spec in SCHEDULES]


def table(results: Sequence[Result]) -> str:
    lines = [
        "| schedule | groups | torch µs/step | RemoteLRScheduler µs/step | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| `{r.case.name}` | {r.case.groups} | {r.torch_us:.2f} | "
            f"{r.lrctl_us:.2f} | {r.ratio:.2f} |"
        )
    ratios = [r.ratio for r in results]
    lines.append(f"| **median** | | | | **{statistics.median(ratios):.2f}** |")
    lines.append(f"| **max** | | | | **{max(ratios):.2f}** |")
    return "\n".join(lines)


def run_all(*, steps: int, runs: int) -> tuple[list[Result], list[Result], list[Result]]:
    """The main cases, the tensor-LR cases and the main cases after one override."""
    with tempfile.TemporaryDirectory() as tmp, ControllerProcess(Path(tmp) / "bench.db") as ctl:
        return tuple(  # type: ignore[return-value]
            measure(cases, steps=steps, runs=runs, address=ctl.address)
            for cases in (main_cases(), tensor_cases(), override_cases())
        )


if __name__ == "__main__":
    for results in run_all(steps=20_000, runs=7):
        print(table(results))
        print()
