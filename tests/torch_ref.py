"""Build the real torch scheduler for a spec, to compare lrctl against it step by step.

The torch side never goes through lrctl's expression evaluator: every expression a test
uses has its hand-written Python lambda in :data:`REFERENCE_LAMBDAS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim import lr_scheduler

from lrctl.spec import Spec, parse_spec

# Expression text -> the same formula written as a Python lambda.
REFERENCE_LAMBDAS: dict[str, Any] = {
    "0.95 ** epoch": lambda epoch: 0.95**epoch,
    "0.5 if epoch < 40 else 0.5 ** 2 if epoch < 70 else 0.5 ** 3": lambda epoch: (
        0.5 if epoch < 40 else 0.5**2 if epoch < 70 else 0.5**3
    ),
    "min(1.0, (epoch + 1) / 10)": lambda epoch: min(1.0, (epoch + 1) / 10),
    "1 / sqrt(max(step, 1))": lambda epoch: 1 / math.sqrt(max(epoch, 1)),
    "0.99": lambda epoch: 0.99,
    "0.999 if epoch < 100 else 0.99": lambda epoch: 0.999 if epoch < 100 else 0.99,
    "1.0 - 0.0005 * (epoch % 7)": lambda epoch: 1.0 - 0.0005 * (epoch % 7),
    "0.5 ** (epoch - 1)": lambda x: 0.5 ** (x - 1),
    "1 / (1 + 0.001 * epoch)": lambda x: 1 / (1 + 0.001 * x),
}


def py_lambda(expr: str) -> Any:
    """Return the hand-written Python lambda for ``expr``."""
    return REFERENCE_LAMBDAS[expr]


def make_optimizer(
    base_lrs: Sequence[float], *, tensor_group: int | None = 1, kind: str = "sgd"
) -> torch.optim.Optimizer:
    """An optimizer with one param group per base LR; group ``tensor_group`` has a tensor LR."""
    groups = []
    for i, lr in enumerate(base_lrs):
        value: Any = torch.tensor(lr, dtype=torch.float64) if i == tensor_group else lr
        groups.append({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": value})
    if kind == "adam":
        return torch.optim.Adam(groups, lr=0.001)
    return torch.optim.SGD(groups, lr=0.001, momentum=0.9)


def _convert(value: Any, optimizer: torch.optim.Optimizer) -> Any:
    if isinstance(value, Spec):
        return build_torch(value, optimizer)
    if isinstance(value, tuple):
        return [_convert(v, optimizer) for v in value]
    return value


def build_torch(spec: str | Spec, optimizer: torch.optim.Optimizer) -> Any:
    """Construct the torch scheduler ``spec`` names, on ``optimizer``."""
    spec = parse_spec(spec)
    cls = getattr(lr_scheduler, spec.name)
    kwargs = {k: _convert(v, optimizer) for k, v in spec.kwargs}
    for key in ("lr_lambda", "scale_fn"):
        if key in kwargs:
            value = kwargs[key]
            kwargs[key] = (
                [py_lambda(v) for v in value] if isinstance(value, list) else py_lambda(value)
            )
    args = [_convert(v, optimizer) for v in spec.args]
    if spec.name == "ChainedScheduler":
        return cls(*args, **kwargs)
    return cls(optimizer, *args, **kwargs)


def _value(x: Any) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def lr_rows(scheduler: Any, optimizer: torch.optim.Optimizer, steps: int) -> list[list[float]]:
    """``steps`` rows of ``scheduler.get_last_lr()``: the current one, then one per step."""
    rows = [[float(x) for x in scheduler.get_last_lr()]]
    for _ in range(steps - 1):
        optimizer.step()
        scheduler.step()
        rows.append([float(x) for x in scheduler.get_last_lr()])
    return rows


def torch_rows(
    spec: str,
    base_lrs: Sequence[float],
    steps: int,
    *,
    tensor_group: int | None = 1,
    kind: str = "sgd",
) -> tuple[list[list[float]], list[list[float]]]:
    """Return torch's ``get_last_lr()`` rows and momentum rows for ``steps`` rows."""
    opt = make_optimizer(base_lrs, tensor_group=tensor_group, kind=kind)
    sched = build_torch(spec, opt)
    lrs, moms = [], []

    def record() -> None:
        lrs.append([_value(v) for v in sched.get_last_lr()])
        key = "betas" if kind == "adam" else "momentum"
        moms.append([_value(g[key][0] if kind == "adam" else g[key]) for g in opt.param_groups])

    record()
    for _ in range(steps - 1):
        opt.step()
        sched.step()
        record()
    return lrs, moms
