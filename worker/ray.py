"""Ray Train helpers: a default job id from the run name, and per-rank LR metrics.

Nothing here imports Ray unless the process already did (a Ray Train worker has), so plain
torch users pay nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["lr_metrics_hook", "ray_run_name"]

#: Seconds between two updates of the per-rank LR gauge.
METRICS_INTERVAL_S = 1.0


def _train_context() -> Any | None:
    if "ray" not in sys.modules:
        return None
    try:
        import ray
        import ray.train

        if not ray.is_initialized():
            return None
        return ray.train.get_context()
    except Exception:
        return None


def ray_run_name() -> str | None:
    """Return the Ray Train run (experiment) name when called inside a Train worker."""
    context = _train_context()
    if context is None:
        return None
    try:
        name = context.get_experiment_name()
    except Exception:
        return None
    return str(name) if name else None


def lr_metrics_hook(job: str, rank: int) -> Callable[[int, list[float]], None] | None:
    """Return a per-step callback exporting the applied LR through ``ray.util.metrics``.

    The gauge ``lrctl_worker_learning_rate{job_id, param_group, rank}`` is updated at most
    every :data:`METRICS_INTERVAL_S`; None outside Ray Train.
    """
    if _train_context() is None:
        return None
    from ray.util.metrics import Gauge

    gauge = Gauge(
        "lrctl_worker_learning_rate",
        description="LR applied in param_groups, per rank",
        tag_keys=("job_id", "param_group", "rank"),
    )
    last = [0.0]

    def hook(step: int, lrs: list[float]) -> None:
        now = time.monotonic()
        if now - last[0] < METRICS_INTERVAL_S:
            return
        last[0] = now
        for group, lr in enumerate(lrs):
            gauge.set(lr, tags={"job_id": job, "param_group": str(group), "rank": str(rank)})

    return hook
