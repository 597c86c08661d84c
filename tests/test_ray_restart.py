"""Ray Train restarts: kill a worker mid-run; the resumed run replays the LRs exactly.

Real TorchTrainer (2 gloo workers) with ``FailureConfig(max_failures=1)`` and the scheduler's
``state_dict()`` in every checkpoint (examples/train_ray_restart.py's pattern). The test:

1. holds both ranks after step 22 (checkpoints at 10 and 20), sends ``lr /= 2`` and lets
   them go: it takes effect after the last checkpoint;
2. freezes both ranks at step 29 (before the checkpoint at 30) and SIGKILLs rank 1;
3. Ray restarts the worker group from the checkpoint at step 20; the new workers wait
   before building their schedulers while the test checks the old ones are gone and sends
   ``lr *= 0.1`` (nobody can apply it: it stays pending), then lets them go.

The resumed LRs (steps 21..60) must equal, step for step, those of an uninterrupted run with
the same event log and effective steps (``LRProgram``): ``lr *= 0.1`` from step 21 (the first
resumed step), ``lr /= 2`` again from its recorded step, not from the resume step.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lrctl.program import LRProgram
from tests import operate, procs
from tests.procs import ControllerProcess
from tests.ray_head import local_ray_head
from tests.ray_restart_loop import Gate

pytestmark = pytest.mark.slow

RAY_ENV = {
    **procs.RAY_ENV,
    # The Train controller polls workers this often (default 2 s): reports and failure
    # detection wait for it.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
}
JOB = "ray-restart"  # the run name: no LRCTL_JOB, the worker takes the job id from Ray Train
SCHEDULE = "CosineAnnealingLR(T_max=60, eta_min=0.001)"
BASE_LR = 0.1
STEPS, EVERY, HOLD, FREEZE = 60, 10, 22, 29


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    with ControllerProcess(tmp_path_factory.mktemp("ctl") / "lrctl.db") as proc:
        yield proc


@pytest.fixture(scope="module")
def ray_head(controller: ControllerProcess) -> Iterator[None]:
    """One local Ray head (loopback, no auth) for every Ray test of this module."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in RAY_ENV.items():
            patch.setenv(key, value)
        patch.delenv("LRCTL_JOB", raising=False)
        env = {"LRCTL_ADDRESS": controller.address}
        with local_ray_head(env, include_dashboard=False):
            yield


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def read_log(path: Path) -> list[tuple[int, int, float]]:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    return [(int(step), int(version), float(lr)) for step, version, lr in rows]


def test_killed_worker_resumes_with_the_lrs_of_an_uninterrupted_run(
    tmp_path: Path, controller: ControllerProcess, ray_head: None
) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tests.ray_restart_loop import restart_loop

    folder = tmp_path / "gate"
    folder.mkdir()
    gate = Gate(str(folder), hold_at=HOLD, freeze_at=FREEZE)
    trainer = TorchTrainer(
        restart_loop,
        train_loop_config={
            "schedule": SCHEDULE,
            "lr": BASE_LR,
            "steps": STEPS,
            "checkpoint_every": EVERY,
            "step_sleep": 0.02,
            "gate": gate,
        },
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo", timeout_s=120),
        run_config=RunConfig(
            name=JOB,
            storage_path=str(tmp_path / "ray"),
            failure_config=FailureConfig(max_failures=1),
        ),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # surfaced by wait_for below
            outcome["error"] = exc

    fitting = threading.Thread(target=fit, daemon=True)
    fitting.start()

    def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if not fitting.is_alive():
                raise AssertionError(f"training ended while waiting for {what}: {outcome}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    address = controller.address
    # 1. Both ranks hold after step 22; an override sent now takes effect after checkpoint 20.
    wait_for(lambda: gate.opened("held-0") and gate.opened("held-1"), "the hold at step 22")
    after_checkpoint = operate.override(address, JOB, "lr /= 2", reason="after checkpoint 20")
    gate.mark("go-override")
    recorded = operate.wait_until_applied(address, JOB, after_checkpoint).effective_step
    assert recorded is not None and 20 < HOLD < recorded <= FREEZE, recorded

    # 2. Both ranks stop at step 29, before the checkpoint at 30; kill rank 1.
    wait_for(lambda: gate.opened("frozen-0") and gate.opened("frozen-1"), "the freeze")
    first = [int((folder / f"pid-first-{r}").read_text()) for r in (0, 1)]
    os.kill(first[1], signal.SIGKILL)

    # 3. Ray restarts the group; while no worker holds a scheduler, send another override.
    wait_for(lambda: gate.opened("waiting-0") and gate.opened("waiting-1"), "the restart")
    wait_for(lambda: not any(alive(pid) for pid in first), "the old workers to be gone", 60)
    while_down = operate.override(address, JOB, "lr *= 0.1", reason="while the workers are down")
    assert [e.effective_step for e in operate.history(address, JOB)] == [recorded, None]
    gate.mark("go-restart")
    fitting.join(180)
    assert not fitting.is_alive(), "training did not finish"
    assert "error" not in outcome, outcome
    assert outcome["result"].error is None, outcome["result"].error

    history = operate.history(address, JOB)
    assert [(e.version, e.effective_step) for e in history] == [
        (after_checkpoint, recorded),  # unchanged by the restart
        (while_down, 21),
    ]  # the first resumed step
    resumed = [read_log(folder / f"lr-resumed-{r}.csv") for r in (0, 1)]
    assert resumed[0] == resumed[1], "the ranks applied different LRs after the restart"
    assert [step for step, _, _ in resumed[0]] == list(range(21, STEPS + 1)), (
        "Ray did not resume from the last checkpoint (step 20)"
    )

    # The uninterrupted run with the same event log and effective steps.
    uninterrupted = LRProgram(SCHEDULE, [BASE_LR], history)
    for step, _, lr in resumed[0]:
        assert lr == uninterrupted.lrs(step)[0], step
    schedule_only = LRProgram(SCHEDULE, [BASE_LR])
    by_step = {step: lr for step, _, lr in resumed[0]}
    # lr *= 0.1 from step 21; lr /= 2 again from its recorded step, not from the resume step.
    assert by_step[recorded - 1] == pytest.approx(schedule_only.lrs(recorded - 1)[0] * 0.1)
    assert by_step[recorded] == pytest.approx(schedule_only.lrs(recorded)[0] * 0.05)
    # Before the kill, the first attempt followed the log as it stood then.
    before = LRProgram(SCHEDULE, [BASE_LR], history[:1])
    first_log = read_log(folder / "lr-first-0.csv")
    assert [step for step, _, _ in first_log] == list(range(1, FREEZE + 1))
    for step, _, lr in first_log:
        assert lr == before.lrs(step)[0], step
    job = operate.job(address, JOB)
    assert job is not None and job.step == STEPS
