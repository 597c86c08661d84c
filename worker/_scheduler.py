"""RemoteLRScheduler: a torch LRScheduler whose schedule lives on the lrctl controller."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lrctl.program import LRProgram
from lrctl.schedules import ReduceLROnPlateau, Schedule
from lrctl.spec import Spec, parse_spec
from worker._agreement import VersionAgreement
from worker._config import WorkerConfig
from worker._link import ControllerLink, Held

__all__ = ["RemoteLRScheduler"]

log = logging.getLogger("lrctl.worker")


class RemoteLRScheduler(LRScheduler):
    """A drop-in for a torch scheduler whose LR can be changed live from the controller.

    Construct it on every rank where you would construct the torch scheduler, and call
    :meth:`step` as before::

        scheduler = RemoteLRScheduler(optimizer, "StepLR(step_size=200, gamma=0.5)",
                                      job="run-42")

    Construction creates the job on the controller (or attaches to it: every rank of a
    restarted run does), then follows it in a background thread. ``step()`` evaluates the
    LR locally from the state it holds, with no network I/O, and every rank of a
    ``torch.distributed`` job switches to a new version at the same step.

    Args:
        optimizer: The wrapped optimizer; its groups' LRs (torch's ``initial_lr``) are the
            job's base LRs.
        schedule: A torch-style spec, e.g. ``"CosineAnnealingLR(T_max=100)"``.
        job: Job id; default ``LRCTL_JOB``, else the Ray Train run name.
        address: Controller ``HOST:PORT``; default ``LRCTL_ADDRESS`` or 127.0.0.1:50051.
        token: Bearer token; default ``LRCTL_TOKEN``.
        last_epoch: As torch: -1 for a new run; the last step done when resuming.
        verbose: Print each LR change, as torch's ``verbose`` did.
        config: A full :class:`~worker.WorkerConfig` (overrides job/address/token).

    Raises:
        SpecError: invalid spec (before any network call).
        WorkerError: controller unreachable within ``connect_timeout_s``, or the job exists
            with a different schedule.
    """

    def __init__(self, optimizer: Optimizer, schedule: str | Spec, *, job: str | None = None,
                 address: str | None = None, token: str | None = None, last_epoch: int = -1,
                 verbose: bool = False, config: WorkerConfig | None = None) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.spec = parse_spec(schedule)
        base_lrs = _initial_lrs(optimizer, last_epoch)
        # Validate locally, before any network call.
        self._uses_beta1 = "betas" in optimizer.defaults
        if LRProgram(self.spec, base_lrs).cycles_momentum and not (
                "momentum" in optimizer.defaults or self._uses_beta1):
            raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` "
                             "option enabled")
        if config is None:
            from worker.ray import ray_run_name

            config = WorkerConfig.load(job=job, address=address, token=token,
                                       default_job=ray_run_name)
        self.config = config
        self.job = config.job
        self.verbose = verbose
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if distributed else 0
        if self.rank == 0:
            log.info("lrctl: following job %r (from %s) on %s", config.job, config.job_source,
                     config.address)
        self._link = ControllerLink(config, rank=self.rank, schedule=self.spec.to_text(),
                                    base_lrs=base_lrs, verbose=verbose,
                                    world_size=dist.get_world_size() if distributed else 1)
        attached = self._link.attach()
        self._applied_steps: dict[int, int] = {}  # version -> step it took effect here
        self._built: dict[str, Schedule] = {}  # reused across versions (recurrence caches)
        # Pending events resolved at construction: the step they take effect at is only
        # final once load_state_dict() had its chance (a resume moves them), so they are
        # reported at the first step() instead.
        self._provisional: set[int] = set()
        self._applied_version = 0
        self._values: list[float] = []
        self._closed = False
        self._constructing = True
        try:
            self._agreement = VersionAgreement()
            from worker.ray import lr_metrics_hook

            self._on_lr: Callable[[int, list[float]], None] | None = lr_metrics_hook(
                self.job, self.rank)
            agreed = self._agreement.initial(attached.version, config.agree_every)
            self._switch(Held(attached), agreed, last_epoch + 1, provisional=True)
            self._link.start()
            super().__init__(optimizer, last_epoch)
        except BaseException:
            self._link.close()
            raise
        self._constructing = False

    # -- torch's interface -------------------------------------------------------------------

    def step(self, metrics: float | None = None) -> None:
        """Advance one step; ``metrics`` is ReduceLROnPlateau's ``step(metric)`` argument."""
        upcoming = self.last_epoch + 1
        if upcoming % self.config.agree_every == 0:
            held = self._link.held
            if held is not None:
                agreed = self._agreement.exchange(held.version)
                if agreed is not None and agreed > self._applied_version:
                    self._switch(held, agreed, upcoming)
        super().step()
        step = self.last_epoch
        if self._provisional and not self._constructing:
            self._confirm_provisional()
        if metrics is not None and not self._plateau:
            warnings.warn(f"step(metrics) passes a metric to ReduceLROnPlateau, but job "
                          f"{self.job!r} follows {self.spec.name}; the value is ignored "
                          "(torch's deprecated step(epoch) is not supported)",
                          UserWarning, stacklevel=2)
        if self.rank == 0:
            if metrics is not None and self._plateau:
                self._link.post_plateau_metric(step, float(metrics))
            self._link.post_progress(step, self._applied_version, self._values)
        if self._on_lr is not None:
            self._on_lr(step, self._values)

    def get_lr(self) -> list[float | torch.Tensor]:
        """Return the LR of every group at ``last_epoch`` (and write cycled momentum)."""
        values = self._program.lrs(self.last_epoch)
        momenta = self._program.momenta(self.last_epoch) if self._cycles else None
        if momenta is not None:
            for group, m in zip(self.optimizer.param_groups, momenta):
                if m != m:  # NaN: this group's schedule does not cycle momentum
                    continue
                if self._uses_beta1:
                    group["betas"] = (m, *group["betas"][1:])
                else:
                    group["momentum"] = m
        if self.verbose and values != self._values:
            for i, lr in enumerate(values):
                print(f"Adjusting learning rate of group {i} to {lr:.4e}.")  # torch's wording
        self._values = values
        return list(values)

    def state_dict(self) -> dict[str, Any]:
        """The resume record: the step, and the step at which each version took effect."""
        return {"job": self.job, "schedule": self.spec.to_text(), "last_epoch": self.last_epoch,
                "_step_count": self._step_count, "applied_version": self._applied_version,
                "applied_steps": dict(self._applied_steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume: replay exactly the LR sequence of the run that saved ``state_dict``.

        Raises:
            ValueError: the checkpoint belongs to another job.
        """
        saved_job = state_dict.get("job", self.job)
        if saved_job != self.job:
            raise ValueError(f"this checkpoint is of job {saved_job!r}, expected {self.job!r}: "
                             "its versions mean nothing here")
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self._step_count))
        saved = {int(v): int(s) for v, s in state_dict.get("applied_steps", {}).items()}
        for version in self._provisional - set(saved):
            del self._applied_steps[version]  # re-resolved below, at the resume step
        self._provisional -= set(saved)
        self._applied_steps.update(saved)
        held = self._link.held
        if held is not None:
            version = max(self._applied_version, int(state_dict.get("applied_version", 0)))
            self._switch(held, min(version, held.version), self.last_epoch + 1,
                         provisional=True)
        # Put the step's LRs in param_groups, as the run that saved the checkpoint had them.
        self._values = self._program.lrs(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, self._values):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
                         for g in self.optimizer.param_groups]

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def applied_version(self) -> int:
        """The job version whose LRs are in ``param_groups``."""
        return self._applied_version

    @property
    def connected(self) -> bool:
        """Whether the Watch stream to the controller is up."""
        return self._link.connected

    def close(self) -> None:
        """Flush the final report and stop the background threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._provisional:
            self._confirm_provisional()
        self._agreement.close()
        self._link.close()

    def __enter__(self) -> RemoteLRScheduler:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _confirm_provisional(self) -> None:
        if self.rank == 0:
            for version in sorted(self._provisional):
                self._link.post_applied(version, self._applied_steps[version])
        self._provisional.clear()

    def _switch(self, held: Held, version: int, step: int, *,
                provisional: bool = False) -> None:
        """Apply the job as of ``version`` from ``step`` on (off the per-step path)."""
        state = held.at(version)
        events = []
        for event in state.events:
            local = self._applied_steps.get(event.version)
            if local is None and event.effective_step is not None:
                local = event.effective_step
            if local is None:
                local = step
                if provisional:
                    self._provisional.add(event.version)
                elif self.rank == 0:
                    self._link.post_applied(event.version, step)
            self._applied_steps[event.version] = local
            events.append(dataclasses.replace(event, effective_step=local))
        self._program = LRProgram(state.schedule, state.base_lrs, events, self._built)
        self._cycles = self._program.cycles_momentum
        self._plateau = isinstance(self._program.schedule, ReduceLROnPlateau)
        if version > self._applied_version and self._applied_version:
            log.info("lrctl: job %s version %d takes effect at step %d", self.job, version, step)
        self._applied_version = version


def _initial_lrs(optimizer: Optimizer, last_epoch: int) -> list[float]:
    """torch's ``initial_lr`` handling: set on a new run, required on resume."""
    out = []
    for i, group in enumerate(optimizer.param_groups):
        if last_epoch == -1:
            lr = group["lr"]
            group.setdefault("initial_lr", lr.clone() if isinstance(lr, torch.Tensor) else lr)
        elif "initial_lr" not in group:
            raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] when "
                           "resuming scheduler with last_epoch >= 0")
        value = group["initial_lr"]
        out.append(float(value.item()) if isinstance(value, torch.Tensor) else float(value))
    return out
