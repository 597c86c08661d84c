"""RemoteLRScheduler.step() gives LRProgram's LRs bit for bit, on its fast path too."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import torch

from lrctl.program import LRProgram
from lrctl.schedules import build_schedule
from tests.procs import ControllerProcess
from worker import RemoteLRScheduler

SPECS = [
    "StepLR(step_size=7, gamma=0.5)",
    "CosineAnnealingLR(T_max=30, eta_min=0.001)",
    "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=5, mode='triangular2')",
    "OneCycleLR(max_lr=0.1, total_steps=300)",
    "LambdaLR(lr_lambda='0.95 ** epoch')",
    "CosineAnnealingWarmRestarts(T_0=5, T_mult=2)",
]


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    with ControllerProcess(tmp_path_factory.mktemp("ctl") / "lrctl.db") as proc:
        yield proc


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("spec", SPECS)
def test_step_writes_lrprogram_values_exactly(
    controller: ControllerProcess, spec: str, groups: int
) -> None:
    base = [0.1 / (g + 1) for g in range(groups)]
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b} for b in base]
    opt = torch.optim.SGD(params, momentum=0.9)
    program = LRProgram(spec, base)
    job = f"exact-{spec.split('(')[0]}-{groups}"
    with RemoteLRScheduler(opt, spec, job=job, address=controller.address) as sched:
        for t in range(1, 250):
            opt.step()
            sched.step()
            assert [g["lr"] for g in opt.param_groups] == program.lrs(t), t  # exact, not approx
            momenta = program.momenta(t)
            if momenta is not None:
                assert [g["momentum"] for g in opt.param_groups] == momenta, t


@pytest.mark.parametrize("spec", SPECS)
def test_schedules_give_the_same_bits_in_any_step_order(spec: str) -> None:
    # The schedules remember their last phase/cycle for the next step: jumping around
    # (resume, preview, the controller's views) must not change a single bit.
    forward, shuffled = build_schedule(spec, 2), build_schedule(spec, 2)
    base = [0.1, 0.05]
    steps = list(range(300))
    expected = {t: (forward.lrs(t, base), forward.momenta(t)) for t in steps}
    random.Random(0).shuffle(steps)
    for t in steps:
        assert (shuffled.lrs(t, base), shuffled.momenta(t)) == expected[t], t
