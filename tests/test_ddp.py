"""DDP consistency: real gloo ranks, overrides at random moments, every rank switches together.

Each test runs real processes: a controller (``lrctl serve``) and 2-3 ranks of
``tests/ddp_worker.py`` (``torch.distributed`` with gloo, DistributedDataParallel,
RemoteLRScheduler). Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lrctl.client import Client, ClientError
from tests.procs import ROOT, ControllerProcess, wait_for_step

pytestmark = pytest.mark.slow


def launch_ranks(
    tmp: Path,
    address: str,
    job: str,
    world: int,
    *,
    steps: int,
    late_rank: int = -1,
    schedule: str | None = None,
    sleep: float | None = None,
    rank_schedules: dict[int, str] | None = None,
    rank0_env: dict[str, str] | None = None,
) -> list[subprocess.Popen[str]]:
    """Start ``world`` ranks; only rank 0 is told where the controller is.

    The other ranks run with no ``LRCTL_ADDRESS``, ``LRCTL_TOKEN`` or ``--address``: they
    must get everything from rank 0.
    """
    init = tmp / f"init-{job}"
    out = tmp / job
    out.mkdir()
    base_env = {k: v for k, v in os.environ.items() if k not in ("LRCTL_ADDRESS", "LRCTL_TOKEN")}
    procs = []
    for rank in range(world):
        cmd = [
            sys.executable,
            "-m",
            "tests.ddp_worker",
            "--rank",
            str(rank),
            "--world",
            str(world),
            "--init",
            str(init),
            "--job",
            job,
            "--steps",
            str(steps),
            "--out",
            str(out),
            "--late-rank",
            str(late_rank),
        ]
        env = dict(base_env)
        if rank == 0:
            cmd += ["--address", address]
            env.update(rank0_env or {})
        spec = (rank_schedules or {}).get(rank, schedule)
        if spec:
            cmd += ["--schedule", spec]
        if sleep is not None:
            cmd += ["--sleep", str(sleep)]
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
            )
        )
    return procs


def wait_ranks(
    procs: list[subprocess.Popen[str]], timeout: float = 180, status: int = 0
) -> list[str]:
    outputs = []
    for proc in procs:
        output, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == status, output
        outputs.append(output)
    return outputs


class StreamCounter:
    """Polls GetJob while the ranks train: the Watch streams the controller holds for a job."""

    def __init__(self, client: Client, job: str) -> None:
        self.client, self.job = client, job
        self.streams: list[int] = []
        self.world_sizes: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                job = self.client.get_job(self.job)
            except ClientError:
                continue  # not created yet
            self.streams.append(job.watch_streams)
            self.world_sizes.append(job.world_size)

    def __enter__(self) -> StreamCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def read_ranks(tmp: Path, job: str, world: int) -> list[dict[str, Any]]:
    return [json.loads((tmp / job / f"rank-{r}.json").read_text()) for r in range(world)]


def switch_steps(log: list[list[float]]) -> dict[int, int]:
    """Version -> first step at which that version's LRs were in param_groups."""
    out: dict[int, int] = {}
    for step, version, *_ in log:
        out.setdefault(int(version), int(step))
    return out


def check_consistent(ranks: list[dict[str, Any]]) -> None:
    """The DDP consistency property: identical per-step LRs and identical parameters."""
    first = ranks[0]
    for r, other in enumerate(ranks[1:], start=1):
        assert len(other["log"]) == len(first["log"]), f"rank {r} logged another step count"
        for a, b in zip(first["log"], other["log"]):
            if a != b:
                raise AssertionError(f"rank {r} differs from rank 0 at step {a[0]}: {b} != {a}")
        if other["params"] != first["params"]:
            raise AssertionError(f"rank {r}'s parameters differ from rank 0's")


def send_overrides_at_random_moments(
    client: Client, job: str, rng: random.Random, count: int
) -> None:
    wait_for_step(client, job, 15)  # let training get going first
    ops: list[tuple[str | None, int | None]] = [
        ("lr *= 0.5", None),
        ("lr *= 0.1", 1),
        ("lr = 3e-3", None),
        (None, None),
        ("lr *= 2.0", 0),
        ("lr = 1e-2", 1),
    ]
    for i in range(count):
        time.sleep(rng.uniform(0.05, 0.5))
        statement, group = ops[i % len(ops)]
        client.override(
            job, statement, clear=statement is None, group=group, reason=f"random override {i}"
        )


@pytest.mark.parametrize(
    ("world", "steps", "sleep"),
    [
        # ~3 ms steps: rank 0 paces the exchanges several steps apart.
        pytest.param(2, 1200, 0.002, id="2-ranks-paced"),
        # ~25 ms steps: an exchange at every step.
        pytest.param(3, 160, 0.02, id="3-ranks"),
    ],
)
def test_all_ranks_switch_at_the_same_step(
    tmp_path: Path, world: int, steps: int, sleep: float
) -> None:
    rng = random.Random(world)
    with (
        ControllerProcess(tmp_path / "lrctl.db") as controller,
        Client(controller.address) as client,
    ):
        procs = launch_ranks(tmp_path, controller.address, "ddp", world, steps=steps, sleep=sleep)
        with StreamCounter(client, "ddp") as counter:
            send_overrides_at_random_moments(client, "ddp", rng, count=5)
            wait_ranks(procs)
        history = client.history("ddp")
    ranks = read_ranks(tmp_path, "ddp", world)
    check_consistent(ranks)

    # One Watch stream for the job, whatever the world size: rank 0's.
    assert counter.streams and max(counter.streams) == 1, counter.streams
    assert counter.streams.count(1) > len(counter.streams) // 2, counter.streams
    assert world in counter.world_sizes, counter.world_sizes  # rank 0 attached for all
    assert [r["held_stream"] for r in ranks] == [True] + [False] * (world - 1)
    assert all(r["divergences"] == 0 for r in ranks)

    switches = switch_steps(ranks[0]["log"])
    assert len(history) == 5
    for event in history:
        # Every override took effect, at the step the controller recorded from rank 0.
        assert event.effective_step is not None, event
        applied_at = min(s for v, s in switches.items() if v >= event.version)
        assert event.effective_step == applied_at, (event, switches)
    lrs = {tuple(row[2:]) for row in ranks[0]["log"]}
    assert len(lrs) > 100  # the cosine schedule ran under the overrides


def test_negative_control_catches_a_rank_that_switches_late(tmp_path: Path) -> None:
    with (
        ControllerProcess(tmp_path / "lrctl.db") as controller,
        Client(controller.address) as client,
    ):
        procs = launch_ranks(
            tmp_path,
            controller.address,
            "late",
            2,
            steps=80,
            late_rank=1,
            schedule="StepLR(step_size=1000)",
        )
        wait_for_step(client, "late", 15)
        client.override("late", "lr *= 0.5", reason="negative control")
        wait_ranks(procs)
        exported = divergences_exported(controller, "late")
    ranks = read_ranks(tmp_path, "late", 2)
    with pytest.raises(AssertionError, match="rank 1 differs from rank 0 at step"):
        check_consistent(ranks)
    # ... and it is a real divergence: the replicas' parameters differ too.
    assert ranks[0]["params"] != ranks[1]["params"]
    # The ranks' own LR checksums caught it too, on every rank, and rank 0 reported it.
    assert all(r["divergences"] >= 1 for r in ranks), [r["divergences"] for r in ranks]
    assert exported == ranks[0]["divergences"], (exported, ranks[0]["divergences"])


def divergences_exported(controller: ControllerProcess, job: str) -> float:
    """``lrctl_rank_divergence_total{job_id=job}`` from the controller's /metrics."""
    match = re.search(r"metrics on ([\d.]+:\d+)", "".join(controller.output))
    assert match, controller.output
    text = urllib.request.urlopen(f"http://{match[1]}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(f'lrctl_rank_divergence_total{{job_id="{job}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("case", ["rank 0 cannot attach", "rank 1 has another schedule"])
def test_a_failed_construction_fails_every_rank_without_hanging(tmp_path: Path, case: str) -> None:
    with ControllerProcess(tmp_path / "lrctl.db") as controller:
        if case == "rank 0 cannot attach":  # nothing listens there; rank 0 gives up after 1 s
            procs = launch_ranks(
                tmp_path,
                "127.0.0.1:1",
                "fail",
                2,
                steps=5,
                rank0_env={"LRCTL_CONNECT_TIMEOUT": "1"},
            )
        else:
            procs = launch_ranks(
                tmp_path,
                controller.address,
                "fail",
                2,
                steps=5,
                rank_schedules={1: "StepLR(step_size=7)"},
            )
        start = time.monotonic()
        wait_ranks(procs, timeout=60, status=3)
    assert time.monotonic() - start < 45
    errors = [(tmp_path / "fail" / f"rank-{r}.error").read_text() for r in range(2)]
    if case == "rank 0 cannot attach":
        assert errors[0].startswith(
            "WorkerError: cannot reach the lrctl controller at 127.0.0.1:1"
        ), errors
        assert errors[1].startswith(
            "WorkerError: rank 0 could not attach to job 'fail', so "
            "rank 1 cannot follow it: WorkerError: cannot reach"
        ), errors
    else:
        assert errors[0] == (
            "WorkerError: rank 1 built another scheduler than rank 0 for job "
            "'fail' (see rank 1's error); no rank trains"
        ), errors
        assert errors[1].startswith(
            "WorkerError: rank 1 cannot follow rank 0's job: schedule "
            "StepLR(step_size=7) here, CosineAnnealingLR("
        ), errors


def test_training_survives_a_controller_kill(tmp_path: Path) -> None:
    db = tmp_path / "lrctl.db"
    controller = ControllerProcess(db).start()
    try:
        with Client(controller.address) as client:
            # Long enough for rank 0's reconnect backoff (capped at 5 s) after the restart.
            procs = launch_ranks(tmp_path, controller.address, "kill9", 2, steps=600)
            wait_for_step(client, "kill9", 20)
            client.override("kill9", "lr *= 0.5", reason="before the outage")
        time.sleep(0.5)
        controller.kill()  # SIGKILL mid-run
        time.sleep(1.5)
        assert all(p.poll() is None for p in procs), "training must not stop with the controller"
        controller = ControllerProcess(db, port=controller.port).start()  # same address
        with Client(controller.address) as client:
            deadline = time.monotonic() + 30
            while client.get_job("kill9").watch_streams < 1:  # rank 0 is back on the stream
                assert time.monotonic() < deadline, "rank 0 never reconnected"
                time.sleep(0.1)
            assert client.get_job("kill9").watch_streams == 1  # one reconnect, not one per rank
            step_before = client.get_job("kill9").step
            client.override("kill9", "lr = 1e-3", reason="after the restart")
            wait_ranks(procs)
            history = client.history("kill9")
    finally:
        controller.stop()
    ranks = read_ranks(tmp_path, "kill9", 2)
    check_consistent(ranks)
    assert [e.reason for e in history] == ["before the outage", "after the restart"]
    assert all(e.effective_step is not None for e in history), history
    late = history[1]
    assert late.effective_step is not None and late.effective_step > step_before
    final = ranks[0]["log"][-1]
    assert final[2:] == pytest.approx([1e-3, 1e-3])  # the override sent after the restart
