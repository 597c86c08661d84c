"""DDP mode: what the rank agreement costs per step, and how fast an override reaches every rank.

The driver (:func:`measure_overhead`, :func:`measure_latency`) starts a real controller and
W real gloo ranks of this module (``python -m benchmarks.bench_ddp --rank ...``), each
training a DistributedDataParallel model on CPU.

Overhead: every rank runs the same rounds; in each round, the same training loop with

* ``torch``: torch's own ``CosineAnnealingLR`` (the baseline),
* ``bare``: torch's scheduler plus one synchronous 1-element all-reduce on a gloo group per
  step (the reference cost of "one bare all-reduce"),
* ``default``, ``every1``, ``every10``: ``RemoteLRScheduler`` with automatic pacing, and
  with ``LRCTL_AGREE_EVERY`` 1 and 10,

in an order that rotates every round; each is warmed up, then timed over M steps on rank 0.
A variant's overhead is the median over rounds of its step time minus the ``torch`` step
time of the same round.

Latency: the ranks train with the default pacing while the driver sends overrides at random
moments; rank 0 timestamps when each version reaches its link (a thread polls the slot every
0.2 ms) and every rank when and at which step it applied it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = ["torch", "bare", "default", "every1", "every10"]
MODELS = {
    # (layer widths, batch): ~1-2 ms and ~5-10 ms per step with 2 gloo ranks on 2 CPU cores.
    "small": ([8, 16, 1], 32),
    "larger": ([128, 512, 512, 10], 64),
}


# -- one rank ------------------------------------------------------------------------------


def _model(name: str) -> tuple[Any, int, int]:
    import torch

    widths, batch = MODELS[name]
    layers: list[Any] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers), widths[0], batch


def rank_main(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.optim.lr_scheduler import CosineAnnealingLR

    from worker import RemoteLRScheduler, WorkerConfig

    torch.manual_seed(0)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{args.init}", rank=args.rank, world_size=args.world
    )
    model, width, batch = _model(args.model)
    ddp = DistributedDataParallel(model)
    side = dist.new_group(backend="gloo")
    one = torch.zeros(1)
    gen = torch.Generator().manual_seed(args.rank)
    x = torch.randn(batch, width, generator=gen)
    y = torch.randn(batch, model[-1].out_features, generator=gen)
    spec = "CosineAnnealingLR(T_max=1000, eta_min=0.001)"

    def train_step(optimizer: Any) -> None:
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def scheduler_for(variant: str, optimizer: Any, job: str) -> Any:
        if variant in ("torch", "bare"):
            return CosineAnnealingLR(optimizer, T_max=1000, eta_min=0.001)
        every = {"default": 0, "every1": 1, "every10": 10}[variant]
        config = WorkerConfig(job=job, address=args.address or "127.0.0.1:1", agree_every=every)
        return RemoteLRScheduler(optimizer, spec, config=config)

    out: dict[str, Any] = {"rounds": []}
    if args.mode == "overhead":
        for r in range(args.rounds):
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            times: dict[str, float] = {}
            inside: dict[str, float] = {}
            inside_cpu: dict[str, float] = {}
            for variant in order:
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
                sched = scheduler_for(
                    variant, optimizer, f"bench-{args.world}-{args.model}-{variant}"
                )
                bare = variant == "bare"
                for _ in range(args.warmup):
                    train_step(optimizer)
                    sched.step()
                    if bare:
                        dist.all_reduce(one, group=side)
                dist.barrier(group=side)
                clock = time.perf_counter_ns
                cpu = time.thread_time_ns
                spent = spent_cpu = 0
                start = clock()
                for _ in range(args.steps):
                    train_step(optimizer)
                    before, before_cpu = clock(), cpu()
                    sched.step()
                    if bare:
                        dist.all_reduce(one, group=side)
                    spent += clock() - before
                    spent_cpu += cpu() - before_cpu
                times[variant] = (clock() - start) / args.steps / 1000
                inside[variant] = spent / args.steps / 1000
                inside_cpu[variant] = spent_cpu / args.steps / 1000
                if hasattr(sched, "close"):
                    sched.close()
            out["rounds"].append({"loop": times, "inside": inside, "inside_cpu": inside_cpu})
    else:  # latency
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = scheduler_for("default", optimizer, f"latency-{args.world}-{args.model}")
        arrivals: list[tuple[int, float, int]] = []
        stop = threading.Event()
        link = sched._link
        if link is not None:

            def poll() -> None:
                seen = link.held
                while not stop.wait(0.0002):
                    held = link.held
                    if held is not seen and held is not None:
                        if seen is None or held.version != seen.version:
                            # The time, and the last step done when it arrived.
                            arrivals.append((held.version, time.monotonic(), sched.last_epoch))
                        seen = held

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
        applied: list[tuple[int, int, float]] = []
        exchanges: list[int] = []
        version = sched.applied_version
        deadline = time.monotonic() + args.seconds
        steps = 0
        while True:
            train_step(optimizer)
            sched.step()
            steps += 1
            if sched.applied_version != version:
                version = sched.applied_version
                applied.append((version, sched.last_epoch, time.monotonic()))
            if sched._agreement is not None and (
                not exchanges or exchanges[-1] != sched._agreement.next_call
            ):
                exchanges.append(sched._agreement.next_call)
            if steps % 50 == 0:  # every rank stops at the same step
                flag = torch.tensor([1.0 if time.monotonic() > deadline else 0.0])
                dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=side)
                if flag.item():
                    break
        stop.set()
        out.update(
            arrivals=arrivals,
            applied=applied,
            exchanges=exchanges,
            steps=steps,
            seconds=args.seconds,
        )
        sched.close()
    Path(args.out, f"rank-{args.rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()
    return 0


# -- the driver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Overhead:
    world: int
    model: str
    torch_us: float
    overhead_us: dict[str, float]  # variant -> median paired overhead per step (whole loop)
    inside_us: dict[str, float]  # variant -> median time in step() (+ the bare all-reduce)

    def direct_us(self, variant: str) -> float:
        """Time the variant adds inside the step (its step() minus torch's scheduler.step())."""
        return self.inside_us[variant] - self.inside_us["torch"]

    def vs_bare(self, variant: str) -> float:
        bare = self.direct_us("bare")
        return self.direct_us(variant) / bare if bare > 0 else float("nan")


def _launch(
    tmp: Path, address: str, world: int, model: str, mode: str, extra: list[str]
) -> tuple[list[subprocess.Popen[str]], Path]:
    out = tmp / f"{mode}-{world}-{model}"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRCTL_")}
    env["PYTHONPATH"] = str(ROOT)
    procs = []
    for rank in range(world):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.bench_ddp",
            "--rank",
            str(rank),
            "--world",
            str(world),
            "--init",
            str(out / "init"),
            "--model",
            model,
            "--mode",
            mode,
            "--out",
            str(out),
            *extra,
        ]
        if rank == 0:
            cmd += ["--address", address]
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    return procs, out


def _wait(procs: list[subprocess.Popen[str]], timeout: float) -> None:
    for proc in procs:
        output, _ = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"a benchmark rank failed:\n{output}")


def measure_overhead(
    address: str, tmp: Path, world: int, model: str, *, rounds: int, steps: int, warmup: int
) -> Overhead:
    procs, out = _launch(
        tmp,
        address,
        world,
        model,
        "overhead",
        ["--rounds", str(rounds), "--steps", str(steps), "--warmup", str(warmup)],
    )
    _wait(procs, timeout=3600)
    rounds_data = json.loads((out / "rank-0.json").read_text())["rounds"]
    loops = [r["loop"] for r in rounds_data]
    torch_us = statistics.median(r["torch"] for r in loops)
    overhead = {
        v: statistics.median(r[v] - r["torch"] for r in loops) for v in VARIANTS if v != "torch"
    }
    inside = {v: statistics.median(r["inside"][v] for r in rounds_data) for v in VARIANTS}
    return Overhead(world, model, torch_us, overhead, inside)


@dataclass(frozen=True)
class Latency:
    world: int
    model: str
    step_ms: float
    ms: list[float]  # per override: reaching rank 0 -> applied on every rank
    steps: list[int]  # per override: step() calls from reaching rank 0 to the applying one
    sent_ms: list[float]  # per override: the client's Override call -> applied everywhere
    intervals: list[int]  # steps between exchanges, as paced by rank 0


def measure_latency(
    address: str, tmp: Path, world: int, model: str, *, seconds: float, overrides: int
) -> Latency:
    from lrctl.client import Client
    from tests.procs import wait_for_step

    job = f"latency-{world}-{model}"
    procs, out = _launch(tmp, address, world, model, "latency", ["--seconds", str(seconds)])
    sent: dict[int, float] = {}
    rng = random.Random(world * 7 + len(model))
    with Client(address) as client:
        wait_for_step(client, job, 20, timeout=120)  # NOT_FOUND until rank 0 attached
        for i in range(overrides):
            time.sleep(rng.uniform(0.15, 0.45))
            before = time.monotonic()
            result = client.override(
                job, "lr *= 0.9" if i % 2 else "lr /= 0.9", reason=f"latency {i}"
            )
            sent[result.event.version] = before
    _wait(procs, timeout=seconds + 300)
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(world)]
    arrivals = {v: (t, s) for v, t, s in ranks[0]["arrivals"]}
    applied = [{v: (s, t) for v, s, t in r["applied"]} for r in ranks]
    ms, nsteps, sent_ms = [], [], []
    for version, (arrived, last_done) in sorted(arrivals.items()):
        if version not in sent or not all(version in a for a in applied):
            continue
        done = max(a[version][1] for a in applied)
        ms.append((done - arrived) * 1000)
        sent_ms.append((done - sent[version]) * 1000)
        nsteps.append(applied[0][version][0] - last_done)
    exchanges = ranks[0]["exchanges"]
    intervals = [b - a for a, b in itertools.pairwise(exchanges)]
    step_ms = ranks[0]["seconds"] / ranks[0]["steps"] * 1000
    return Latency(world, model, step_ms, ms, nsteps, sent_ms, intervals)


def main_rank() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--init", required=True)
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--mode", choices=["overhead", "latency"], required=True)
    parser.add_argument("--address", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0)
    return rank_main(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main_rank())
