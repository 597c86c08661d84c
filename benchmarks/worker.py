"""Section ``worker`` of RESULTS.md: the hot path, the DDP agreement, override latency.

``python -m benchmarks worker [--write] [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks import bench_ddp, bench_step
from benchmarks._results import add_options, machine

TITLE = "Worker: step() against torch, the DDP agreement, override latency"


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    options = [
        ("--worker-parts", "hot,ddp,latency", "comma-separated parts (hot, ddp, latency)"),
        ("--worker-worlds", "2,4", "world sizes of the DDP parts"),
        ("--worker-rounds", 7, "rounds per DDP variant and runs per hot-path case"),
        ("--worker-steps", 400, "timed steps per DDP round"),
    ]
    add_options(parser, options)


def run(args: argparse.Namespace) -> str:
    parts = set(args.worker_parts.split(","))
    worlds = [int(w) for w in args.worker_worlds.split(",")]
    quick = args.quick
    out = [f"Machine: {machine()}. `python -m benchmarks worker --write`."]
    if "hot" in parts:
        steps, runs = (5_000, 3) if quick else (20_000, max(7, args.worker_rounds))
        main, extra, after = bench_step.run_all(steps=steps, runs=runs)
        out += [
            "",
            "### Hot path: `RemoteLRScheduler.step()` / torch's `scheduler.step()`",
            "",
            f"Plain float LRs (the main case), {steps} steps per run, median of {runs} runs "
            "alternating between the two sides; single process, attached to a real controller "
            "(no network per step). Targets: every ratio <= 1.0, median <= 0.5.",
            "",
            bench_step.table(main),
            "",
            "Extra: four groups, group 1 with a float64 tensor LR (`fill_` on both sides).",
            "",
            bench_step.table(extra),
            "",
            "After an override: the main cases once `lr /= 2` (sent with the client) took effect, "
            "so `step()` goes through the job's program instead of the schedule alone; torch "
            "steps as before.",
            "",
            bench_step.table(after),
        ]
    if "ddp" in parts or "latency" in parts:
        from tests.procs import ControllerProcess

        with tempfile.TemporaryDirectory() as tmp, ControllerProcess(Path(tmp) / "bench.db") as ctl:
            if "ddp" in parts:
                out += _overhead_section(
                    ctl.address, Path(tmp), worlds, quick, args.worker_rounds, args.worker_steps
                )
            if "latency" in parts:
                out += _latency_section(ctl.address, Path(tmp), quick)
    out += ["", READING]
    return "\n".join(out)


READING = """Reading it. *Hot path*: `step()` skips torch's generic `LRScheduler.step()`;
what is left is the schedule's closed form (the same call `LRProgram` makes, so the same bits:
`tests/test_step_path.py`) and the writes; the momentum-cycling schedules (CyclicLR,
OneCycleLR) also write momentum every step, as torch does, and stay the dearest.
*Agreement*: an exchange costs the training thread about 70 µs of CPU (gloo's launch ~45 µs,
its wait ~4 µs, dropping the work ~7 µs, the rest Python), measured with `thread_time`;
on this 2-CPU machine, where every rank's threads compete for the cores, gloo's worker
thread preempts the training thread when woken, so the wall time in `step()` per exchange
is 250-400 µs. Rank 0 spaces exchanges by the latency bound (`k = floor(25 ms / s) + 1`),
so that wall cost is divided by k: well under 0.05x a bare all-reduce for short steps; for
steps of several ms (k = 3-4) it is about 1.2% of the step here. *Latency*: the spacing is
derived from the step time measured over the previous interval; on this shared machine
step times jitter by tens of %, so the worst case can exceed 2 k s."""


def _overhead_section(
    address: str, tmp: Path, worlds: list[int], quick: bool, rounds: int, steps: int
) -> list[str]:
    rounds, steps, warmup = (3, 100, 30) if quick else (rounds, steps, 50)
    rows = []
    for world in worlds:
        for model in bench_ddp.MODELS:
            print(f"  DDP overhead: {world} ranks, {model} model", flush=True)
            rows.append(
                bench_ddp.measure_overhead(
                    address, tmp, world, model, rounds=rounds, steps=steps, warmup=warmup
                )
            )
    lines = [
        "",
        "### DDP: per-step overhead of the agreement",
        "",
        f"gloo ranks on this machine's CPUs, DistributedDataParallel, SGD; {rounds} rounds of "
        f"{steps} timed steps (after {warmup} warm-up steps) per variant, variants rotating "
        "within each round; medians over rounds, rank 0. *In step()*: the time the variant "
        "spends in `scheduler.step()` minus what torch's own `CosineAnnealingLR.step()` "
        "spends there, per step: the agreement's direct cost on the training thread (waits "
        "for a late peer included). *Whole loop*: the variant's step time minus the same "
        "round's torch step time: every indirect cost too, within this shared machine's noise "
        "(a few % of the step). `bare` is one synchronous 1-element all-reduce on a gloo "
        "group per step, the reference. Target at 2 ranks, default: <= 1% of the step or "
        "<= 0.05x `bare`, whichever is larger. 4 ranks share 2 cores here: context only.",
        "",
        "| ranks | model | torch µs/step | variant | in step(): µs/step | % of step | x bare "
        "| whole loop: µs/step |",
        "|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    names = {
        "bare": "bare all-reduce",
        "default": "**default**",
        "every1": "`LRCTL_AGREE_EVERY=1`",
        "every10": "`LRCTL_AGREE_EVERY=10`",
    }
    for r in rows:
        for variant in ("bare", "default", "every1", "every10"):
            direct = r.direct_us(variant)
            lines.append(
                f"| {r.world} | {r.model} | {r.torch_us:.0f} | {names[variant]} | "
                f"{direct:.1f} | {100 * direct / r.torch_us:.2f}% | "
                f"{r.vs_bare(variant):.3f} | {r.overhead_us[variant]:+.0f} |"
            )
    return lines


def _latency_section(address: str, tmp: Path, quick: bool) -> list[str]:
    seconds, overrides = (4.0, 6) if quick else (10.0, 15)
    lines = [
        "",
        "### Override latency to every rank (default pacing)",
        "",
        f"{overrides} overrides sent at random moments while 2 ranks train; rank 0 timestamps "
        "when each version reaches its link (a thread polls the slot every 0.2 ms), every "
        "rank when and at which step it applied it. *Steps*: `step()` calls from the arrival "
        "at rank 0 to the one that applies it on every rank. Target: within ~50 ms of "
        "reaching rank 0 plus at most two steps.",
        "",
        "| ranks | model | step ms | exchange every (steps, median) "
        "| ms to all ranks: median / max | steps: median / max "
        "| Override call -> all ranks, ms: median / max |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for model in bench_ddp.MODELS:
        print(f"  latency: 2 ranks, {model} model", flush=True)
        lat = bench_ddp.measure_latency(
            address, tmp, 2, model, seconds=seconds, overrides=overrides
        )
        if not lat.ms:
            lines.append(f"| 2 | {model} | {lat.step_ms:.2f} | - | no override measured | | |")
            continue
        interval = statistics.median(lat.intervals) if lat.intervals else float("nan")
        lines.append(
            f"| 2 | {model} | {lat.step_ms:.2f} | {interval:.0f} | "
            f"{statistics.median(lat.ms):.1f} / {max(lat.ms):.1f} | "
            f"{statistics.median(lat.steps):.0f} / {max(lat.steps)} | "
            f"{statistics.median(lat.sent_ms):.1f} / {max(lat.sent_ms):.1f} |"
        )
    return lines
