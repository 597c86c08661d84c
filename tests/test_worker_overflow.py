"""RemoteLRScheduler past the float range, next to torch's own scheduler, on a real controller.

torch's ``ExponentialLR(gamma=1.5)`` reaches ``inf`` around step 1,750 and training goes on;
the drop-in must not raise where torch gives ``inf`` (or 0.0), and must write the same values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler

from tests.procs import ControllerProcess
from worker import RemoteLRScheduler


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    with ControllerProcess(tmp_path_factory.mktemp("ctl") / "lrctl.db") as proc:
        yield proc


def make_optimizer() -> torch.optim.Optimizer:
    # Group 1 holds a float64 tensor LR, updated in place as torch does.
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.1},
        {
            "params": [torch.nn.Parameter(torch.zeros(2))],
            "lr": torch.tensor(0.05, dtype=torch.float64),
        },
    ]
    return torch.optim.SGD(groups, momentum=0.9)


def same(ours: float, theirs: float) -> bool:
    """inf == inf, 0.0 == 0.0, else equal up to closed form vs torch's recursion."""
    return math.isclose(ours, theirs, rel_tol=1e-12, abs_tol=1e-16)


@pytest.mark.parametrize(
    ("job", "spec", "make", "steps"),
    [
        pytest.param(
            "exponential-to-inf",
            "ExponentialLR(gamma=1.5)",
            lambda o: lr_scheduler.ExponentialLR(o, 1.5),
            2000,
            id="exponential-to-inf",
        ),
        pytest.param(
            "step-to-zero",
            "StepLR(step_size=2, gamma=0.25)",
            lambda o: lr_scheduler.StepLR(o, 2, 0.25),
            1200,
            id="step-to-zero",
        ),
    ],
)
def test_step_never_raises_where_torch_overflows(
    controller: ControllerProcess,
    job: str,
    spec: str,
    make: Callable[[torch.optim.Optimizer], Any],
    steps: int,
) -> None:
    ours_opt, theirs_opt = make_optimizer(), make_optimizer()
    theirs = make(theirs_opt)
    with RemoteLRScheduler(ours_opt, spec, job=job, address=controller.address) as ours:
        for step in range(steps):
            for g, (a, b) in enumerate(zip(ours_opt.param_groups, theirs_opt.param_groups)):
                mine, torchs = float(a["lr"]), float(b["lr"])
                assert same(mine, torchs), f"{spec} step {step} group {g}: {mine} != {torchs}"
            ours_opt.step()
            theirs_opt.step()
            ours.step()
            theirs.step()
        final = [float(g["lr"]) for g in ours_opt.param_groups]
        assert all(math.isinf(v) or v == 0.0 for v in final), final
        assert isinstance(ours_opt.param_groups[1]["lr"], torch.Tensor)
