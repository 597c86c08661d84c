"""Every rank switches to a new job version at the same step.

Ranks receive new versions over their own Watch streams at slightly different times. If each
applied what it held, DDP replicas would run a step with different LRs and silently diverge.
Instead, at every ``agree_every``-th step each rank contributes the newest version it holds
to a one-element ``MIN`` all-reduce on a gloo side group; the result is the newest version
*every* rank holds. The all-reduce is launched asynchronously and waited one exchange later,
so it overlaps a whole training step and never stalls the GPU stream (the side group is
gloo on CPU tensors even when the default group is NCCL).
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["VersionAgreement"]


class VersionAgreement:
    """The version all ranks apply; a pass-through without a multi-rank process group."""

    def __init__(self) -> None:
        self._group: Any = None
        self._pending: tuple[Any, torch.Tensor] | None = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Collective: every rank builds its scheduler, so every rank gets here in order.
            self._group = dist.new_group(backend="gloo")

    @property
    def distributed(self) -> bool:
        return self._group is not None

    def initial(self, version: int, agree_every: int = 1) -> int:
        """Blocking agreement once at construction: the version every rank starts from.

        Also checks that every rank exchanges at the same steps (same ``agree_every``);
        ranks that did not would wait on each other forever.
        """
        if self._group is None:
            return version
        tensor = torch.tensor([version, agree_every, -agree_every], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self._group)
        low, high = int(tensor[1].item()), -int(tensor[2].item())
        if low != high:
            raise ValueError(f"every rank must use the same agree_every (LRCTL_AGREE_EVERY); "
                             f"got values from {low} to {high}")
        return int(tensor[0].item())

    def exchange(self, version: int) -> int | None:
        """Offer ``version``; return the version agreed at the previous exchange, if any.

        Every rank calls this at the same steps, so every rank gets the same answer at the
        same step.
        """
        if self._group is None:
            return version
        agreed = None
        if self._pending is not None:
            work, tensor = self._pending
            work.wait()
            agreed = int(tensor.item())
        tensor = torch.tensor([version], dtype=torch.int64)
        work = dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self._group, async_op=True)
        self._pending = (work, tensor)
        return agreed

    def close(self, timeout: float = 30.0) -> None:
        """Wait (bounded) for the last exchange, then release the side group."""
        if self._pending is not None:
            # A RuntimeError here means a peer is gone: nothing left to agree with.
            with contextlib.suppress(RuntimeError):
                self._pending[0].wait(timeout=timedelta(seconds=timeout))
            self._pending = None
        if self._group is not None and dist.is_initialized():
            dist.destroy_process_group(self._group)
        self._group = None
