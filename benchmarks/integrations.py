"""Section ``integrations`` of RESULTS.md: live change against restart on a Ray Train job.

``python -m benchmarks integrations [--write] [--quick]``: the time from decision to new LR
in effect, two routes on the same Ray Train job (``TorchTrainer``, 2 DDP workers, gloo, the
same model, batch and step time), measured in one run on one local Ray head:

* **lrctl**: ``RemoteLRScheduler`` in the loop; an operator sends ``lr /= 2`` / ``lr *= 2``
  through the Python client (``Client.override``) and through the ``lrctl override`` CLI.
  Decision: just before the call. In effect: the step boundary at which the new LR is in
  ``param_groups`` on *every* rank (the latest rank counts).
* **Ray Tune PBT**: a real ``Tuner`` over the same ``TorchTrainer`` with
  ``PopulationBasedTraining`` mutating ``lr`` (population 2). Decision: PBT's own exploit
  (stamped by its ``custom_explore_fn``). In effect: the restored trial's first step with the
  new LR on every rank, after checkpoint, stop and restore of the worker group. PBT restarts
  Ray Train trials through ``Tuner(TorchTrainer)``, Ray Train's V1 path
  (``RAY_TRAIN_V2_ENABLED=0`` in Ray 2.60), so that phase runs in a subprocess driver.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks._results import add_options

ROOT = Path(__file__).resolve().parent.parent
TITLE = "Integrations: live change against restart"
STEP_SLEEP_S = 0.02  # plus the model step: a ~25 ms training step on this machine


# -- the training step both routes run --------------------------------------------------------


def _build(lr: float) -> tuple[Any, Any]:
    import ray.train.torch
    import torch

    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(
        torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    )
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def _step(model: Any, optimizer: Any, rank: int, step: int) -> float:
    import torch

    generator = torch.Generator().manual_seed(rank * 1_000_003 + step)
    x = torch.randn(64, 16, generator=generator)
    loss = torch.nn.functional.mse_loss(model(x), (x @ torch.linspace(-1, 1, 16)).unsqueeze(1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.item())


def _append(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:  # one short line per write: appends do not interleave
        f.write(json.dumps(record) + "\n")


# -- lrctl: a live override ------------------------------------------------------------------


def live_loop(config: dict[str, Any]) -> None:
    """Ray Train (V2) worker: follow the controller; log the time each new version lands."""
    import ray.train

    from worker import RemoteLRScheduler

    rank = ray.train.get_context().get_world_rank()
    model, optimizer = _build(config["lr"])
    scheduler = RemoteLRScheduler(optimizer, "StepLR(step_size=1000000)")
    stop_version = scheduler.applied_version + config["overrides"]
    seen, stop_at = scheduler.applied_version, config["max_steps"]
    step = 0
    while step < stop_at:
        step += 1
        _step(model, optimizer, rank, step)
        scheduler.step()
        if scheduler.applied_version != seen:  # the new LR is in param_groups from here on
            seen = scheduler.applied_version
            _append(
                config["events"], {"rank": rank, "version": seen, "step": step, "t": time.time()}
            )
            if seen >= stop_version:  # every rank gets here at the same step
                stop_at = min(stop_at, step + 5)
        time.sleep(config["step_sleep"])
    scheduler.close()


def measure_live(
    address: str, storage: str, rpc_overrides: int, cli_overrides: int
) -> dict[str, Any]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from lrctl.client import Client
    from tests.procs import until, wait_for_step

    job = f"bench-live-{uuid.uuid4().hex[:8]}"  # the run name is the job id
    events = os.path.join(storage, f"{job}.jsonl")
    total = rpc_overrides + cli_overrides

    def start(name: str, overrides: int) -> threading.Thread:
        trainer = TorchTrainer(
            live_loop,
            train_loop_config={
                "lr": 0.05,
                "overrides": overrides,
                "max_steps": 20_000,
                "events": os.path.join(storage, f"{name}.jsonl"),
                "step_sleep": STEP_SLEEP_S,
            },
            scaling_config=ScalingConfig(
                num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}
            ),
            torch_config=TorchConfig(backend="gloo", timeout_s=120),
            run_config=RunConfig(name=name, storage_path=storage),
        )
        fit = threading.Thread(target=trainer.fit, daemon=True)
        fit.start()
        return fit

    # A second job shares the cores, as PBT's second trial does in the other phase; one
    # override at the end stops it.
    fits = [start(job, total), start(f"{job}-neighbour", 1)]
    lrctl = str(Path(sys.executable).parent / "lrctl")
    decisions: list[tuple[int, float, str]] = []  # (version, decided at, route)
    rng = random.Random(0)
    with Client(address) as client:
        wait_for_step(client, job, 20, timeout=120)
        version = client.get_job(job).version
        for i in range(total):
            time.sleep(rng.uniform(0.3, 0.6))  # at a random moment within a step
            statement = "lr /= 2" if i % 2 == 0 else "lr *= 2"
            decided = time.time()
            if i < rpc_overrides:
                version = client.override(job, statement, reason="bench").event.version
                decisions.append((version, decided, "rpc"))
            else:
                subprocess.run(
                    [lrctl, "override", job, statement, "--reason", "bench", "--address", address],
                    check=True,
                    capture_output=True,
                )
                version += 1
                decisions.append((version, decided, "cli"))
                until(
                    lambda target=version: client.get_job(job).version >= target,
                    120,
                    f"version {version} of {job} after the CLI override",
                )
        wait_for_step(client, f"{job}-neighbour", 0, timeout=120)  # its ranks have attached
        client.override(f"{job}-neighbour", "lr /= 2", reason="bench: stop")
    for fit in fits:
        fit.join(300)
    records = [json.loads(line) for line in Path(events).read_text().splitlines()]
    out: dict[str, list[float]] = {"rpc": [], "cli": []}
    for version, decided, route in decisions:
        landed = [
            min(r["t"] for r in records if r["rank"] == rank and r["version"] >= version)
            for rank in (0, 1)
        ]
        out[route].append(max(landed) - decided)
    return {"rpc_s": out["rpc"], "cli_s": out["cli"], "step_s": _step_time(records)}


def _step_time(records: list[dict[str, Any]]) -> float:
    rank0 = sorted((r["step"], r["t"]) for r in records if r["rank"] == 0)
    (s0, t0), (s1, t1) = rank0[0], rank0[-1]
    return (t1 - t0) / max(1, s1 - s0)


# -- Ray Tune PBT: checkpoint, stop, restore -------------------------------------------------


def pbt_loop(config: dict[str, Any]) -> None:
    """Ray Train (V1, under Tune) worker: plain LR from the config, checkpoint every report."""
    import ray.train
    import torch

    rank = ray.train.get_context().get_world_rank()
    model, optimizer = _build(config["lr"])
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", weights_only=True)
        getattr(model, "module", model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # PBT's new LR replaces the checkpoint's
            group["lr"] = config["lr"]
        start = int(state["step"])
    # The new LR is in param_groups and the next optimizer step uses it.
    _append(
        config["events"],
        {
            "rank": rank,
            "t": time.time(),
            "lr": config["lr"],
            "decided_at": config.get("decided_at"),
            "step": start,
        },
    )
    for step in range(start + 1, config["max_steps"] + 1):
        _step(model, optimizer, rank, step)
        if step % config["steps_per_report"] == 0:
            with tempfile.TemporaryDirectory() as folder:
                saved = None
                if rank == 0:
                    torch.save(
                        {
                            "model": getattr(model, "module", model).state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "step": step,
                        },
                        Path(folder) / "state.pt",
                    )
                    saved = ray.train.Checkpoint.from_directory(folder)
                # Score: closeness to a "good" LR, so one trial is clearly worse.
                ray.train.report(
                    {"score": -abs(config["lr"] - 0.05), "step": step}, checkpoint=saved
                )
        time.sleep(config["step_sleep"])


def _stamp_decision(config: dict[str, Any]) -> dict[str, Any]:
    """PBT's custom_explore_fn: runs when PBT decides to exploit; stamp the moment."""
    config["train_loop_config"]["decided_at"] = time.time()
    return config


def pbt_phase(ray_address: str, storage: str, out: str, iterations: int) -> None:
    import ray
    from ray import tune
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.schedulers import PopulationBasedTraining

    # Tuner(TorchTrainer) is Ray Train's V1 path: the trial actors need V1 too.
    ray.init(
        address=ray_address,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "RAY_TRAIN_V2_ENABLED": "0"}},
    )
    events = os.path.join(storage, "pbt.jsonl")
    trainer = TorchTrainer(
        pbt_loop,
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
    )
    pbt = PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=6,
        quantile_fraction=0.5,
        hyperparam_mutations={"train_loop_config": {"lr": tune.uniform(0.001, 0.1)}},
        custom_explore_fn=_stamp_decision,
    )
    steps_per_report = 20
    tuner = tune.Tuner(
        trainer,
        param_space={
            "train_loop_config": {
                "lr": tune.grid_search([0.01, 0.05]),
                "events": events,
                "steps_per_report": steps_per_report,
                "step_sleep": STEP_SLEEP_S,
                "max_steps": iterations * steps_per_report,
            }
        },
        tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=pbt),
        run_config=tune.RunConfig(
            name="bench-pbt",
            storage_path=storage,
            stop={"training_iteration": iterations},
            verbose=0,
        ),
    )
    tuner.fit()
    records = [json.loads(line) for line in Path(events).read_text().splitlines()]
    latencies = []
    for decided in sorted({r["decided_at"] for r in records if r["decided_at"]}):
        ranks = [r for r in records if r["decided_at"] == decided]
        if {r["rank"] for r in ranks} == {0, 1}:
            latencies.append(max(r["t"] for r in ranks) - decided)
    Path(out).write_text(json.dumps({"pbt_s": latencies}))


# -- the run and its section of RESULTS.md ---------------------------------------------------


def measure(rpc_overrides: int, cli_overrides: int, pbt_iterations: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.procs import RAY_ENV, ControllerProcess

    # Before `import ray`: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import (docs/ray.md).
    os.environ.update(RAY_ENV)
    os.environ.pop("LRCTL_JOB", None)
    import ray

    from tests.ray_head import local_ray_head

    with (
        tempfile.TemporaryDirectory(prefix="lrctl-bench-") as storage,
        ControllerProcess(Path(storage) / "lrctl.db") as controller,
        # One local head owned by this process (ray.shutdown() stops it, and nothing else):
        # 8 logical CPUs so PBT's population of two 2-worker trials fits.
        local_ray_head({"LRCTL_ADDRESS": controller.address}, num_cpus=8, include_dashboard=False),
    ):
        live = measure_live(controller.address, storage, rpc_overrides, cli_overrides)
        out = os.path.join(storage, "pbt-result.json")
        env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "0", "PYTHONPATH": str(ROOT)}
        gcs = ray.get_runtime_context().gcs_address
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "_pbt-phase",
                "--ray-address",
                gcs,
                "--storage",
                storage,
                "--out",
                out,
                "--iterations",
                str(pbt_iterations),
            ],
            env=env,
            check=True,
        )
        pbt = json.loads(Path(out).read_text())
    return {**live, **pbt}


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    options = [
        ("--integrations-overrides", 10, "live overrides sent through the client"),
        ("--integrations-cli-overrides", 3, "live overrides sent with the lrctl CLI"),
        ("--integrations-pbt-iterations", 60, "reports per PBT trial, 20 steps each"),
    ]
    add_options(parser, options)


def run(args: argparse.Namespace) -> str:
    """Measure both routes; return the section's Markdown body."""
    if getattr(args, "quick", False):
        figures = measure(3, 1, 30)
    else:
        figures = measure(
            args.integrations_overrides,
            args.integrations_cli_overrides,
            args.integrations_pbt_iterations,
        )
    return render(figures)


def render(figures: dict[str, Any]) -> str:
    import ray
    import torch

    def row(route: str, values: list[float]) -> str:
        if not values:
            return f"| {route} | 0 | – | – | – |"
        return (
            f"| {route} | {len(values)} | {_fmt(statistics.median(values))} | "
            f"{_fmt(min(values))} | {_fmt(max(values))} |"
        )

    rpc, cli, pbt = figures["rpc_s"], figures["cli_s"], figures["pbt_s"]
    ratio = statistics.median(pbt) / statistics.median(rpc) if pbt and rpc else float("nan")
    ratio_cli = statistics.median(pbt) / statistics.median(cli) if pbt and cli else float("nan")
    return "\n".join(
        [
            "`python -m benchmarks integrations --write` (one run, one local Ray head on "
            f"{os.cpu_count()} cores; Ray {ray.__version__}, torch {torch.__version__}, Python "
            f"{platform.python_version()}). The same Ray Train job both ways: `TorchTrainer`, 2 "
            f"DDP workers (gloo), a {_fmt(figures['step_s'])} training step.",
            "",
            "| route: decision → new LR in effect on every rank | n | median | min | max |",
            "|---|---:|---:|---:|---:|",
            row('lrctl: `Client.override(job, "lr /= 2")`', rpc),
            row("lrctl: `lrctl override JOB 'lr /= 2'` (CLI, its Python start-up included)", cli),
            row("Ray Tune PBT: exploit → checkpoint, stop, restore the trial", pbt),
            "",
            f"**Ratio (medians): PBT's restart takes {ratio:,.0f}× as long as a live lrctl "
            f"override ({ratio_cli:,.0f}× the CLI route).**",
            "",
            "Reading it: a live override reaches the workers' Watch stream in milliseconds and "
            "every rank applies it at the step after the next agreement, so the time is about one "
            "to two training steps. PBT stops the trial, starts a new trainer actor and worker "
            "group (processes, imports, process group), restores the checkpoint, then steps with "
            "the new LR; during that time the trial trains nothing. Decision times: lrctl just "
            "before the call; PBT inside its exploit step (`custom_explore_fn`). PBT runs "
            "`Tuner(TorchTrainer)`, Ray Train's V1 path (`RAY_TRAIN_V2_ENABLED=0`; deprecated in "
            "Ray 2.60, whose V2 `TuneReportCallback` hands Tune a checkpoint only as a path in "
            "the metrics, nothing PBT can restore). Both phases run two 2-worker jobs on the "
            "cores: PBT its population of two, lrctl the measured job and a neighbour.",
        ]
    )


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


if __name__ == "__main__":  # the PBT phase's own driver process (see measure())
    phase = argparse.ArgumentParser()
    phase.add_argument("command", choices=["_pbt-phase"])
    for flag in ("--ray-address", "--storage", "--out"):
        phase.add_argument(flag, required=True)
    phase.add_argument("--iterations", type=int, required=True)
    a = phase.parse_args()
    pbt_phase(a.ray_address, a.storage, a.out, a.iterations)
