"""RemoteLRScheduler: a torch LRScheduler whose schedule lives on the lrctl controller."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lrctl._closing import Closing
from lrctl.limits import NO_LIMITS
from lrctl.overrides import Event, event_version
from lrctl.program import LRProgram
from lrctl.schedules import ReduceLROnPlateau, Schedule
from lrctl.spec import Spec, parse_spec
from worker._agreement import Agreement, Divergence, Pacer
from worker._config import WorkerConfig
from worker._fanout import Plan, RankGroup, decode_held, encode_held, handshake
from worker._link import ControllerLink, Held

__all__ = ["RemoteLRScheduler"]

log = logging.getLogger("lrctl.worker")

_NEVER = 1 << 62  # a step() call number that never comes


class _NoSlot:
    """Stands for the link's slot where this rank does not poll one (DDP, or none)."""

    held: Held | None = None


class RemoteLRScheduler(LRScheduler, Closing):
    """A drop-in for a torch scheduler whose LR can be changed live from the controller.

    Construct it on every rank where you would construct the torch scheduler, and call
    :meth:`step` as before::

        scheduler = RemoteLRScheduler(optimizer, "StepLR(step_size=200, gamma=0.5)",
                                      job="run-42")

    Construction creates the job on the controller (or attaches to it: a restarted run
    does), then follows it in a background thread. Under ``torch.distributed`` only rank 0
    talks to the controller; the other ranks get the job from rank 0 over a gloo side group
    and need no address or token. ``step()`` evaluates the LR locally from the state held,
    with no network I/O, and every rank switches to a new version at the same step.

    Args:
        optimizer: The wrapped optimizer; its groups' LRs (torch's ``initial_lr``) are the
            job's base LRs.
        schedule: A torch-style spec, e.g. ``"CosineAnnealingLR(T_max=100)"``.
        job: Job id; default ``LRCTL_JOB``, else the Ray Train run name, else torchrun's
            ``TORCHELASTIC_RUN_ID``.
        address: Controller ``HOST:PORT``; default ``LRCTL_ADDRESS`` or 127.0.0.1:50051
            (rank 0 only).
        token: Bearer token; default ``LRCTL_TOKEN`` (rank 0 only).
        last_epoch: As torch: -1 for a new run; the last step done when resuming.
        verbose: Print each LR change, as torch's ``verbose`` did.
        config: A full :class:`~worker.WorkerConfig` (overrides job/address/token).

    Raises:
        SpecError: invalid spec (before any network call).
        WorkerError: controller unreachable within ``connect_timeout_s``, the job exists
            with a different schedule, or (under ``torch.distributed``, on every rank)
            rank 0 could not attach or a rank built another scheduler than rank 0.
    """

    _program: LRProgram  # the job as of the applied version (set by _switch)

    def __init__(
        self,
        optimizer: Optimizer,
        schedule: str | Spec,
        *,
        job: str | None = None,
        address: str | None = None,
        token: str | None = None,
        last_epoch: int = -1,
        verbose: bool = False,
        config: WorkerConfig | None = None,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.spec = parse_spec(schedule, max_bytes=NO_LIMITS.max_spec_bytes)
        base_lrs = _initial_lrs(optimizer, last_epoch)
        # Validate locally, before any network call; the controller enforces its configured
        # limits (spec size, groups, LR ceiling).
        self._uses_beta1 = "betas" in optimizer.defaults
        if LRProgram(self.spec, base_lrs, limits=NO_LIMITS).cycles_momentum and not (
            "momentum" in optimizer.defaults or self._uses_beta1
        ):
            raise ValueError(
                "optimizer must support momentum or beta1 with `cycle_momentum` option enabled"
            )
        if config is None:
            from worker.ray import ray_run_name

            config = WorkerConfig.load(
                job=job, address=address, token=token, default_job=ray_run_name
            )
        self.config = config
        self.job = config.job
        self.verbose = verbose
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if distributed else 0
        self.world_size = dist.get_world_size() if distributed else 1
        self._applied_steps: dict[int, int] = {}  # version -> step it took effect here
        self._built: dict[str, Schedule] = {}  # reused across versions (recurrence caches)
        # (created version, version) of the job the program holds, and its events with this
        # rank's steps: a newer version of the same incarnation extends it (O(new events)).
        self._program_at: tuple[int, int] | None = None
        self._events: list[Event] = []
        # Pending events resolved at construction: the step they take effect at is only
        # final once load_state_dict() had its chance (a resume moves them), so they are
        # reported at the first step() instead.
        self._provisional: set[int] = set()
        self._applied_version = 0
        self._values: list[float] = []
        self._closed = False
        self.divergences = 0
        """Divergences this rank found between the ranks' applied LRs (see ``docs/worker.md``)."""
        # The per-step state: step() goes off its fast path only at call `_slow_at`, or
        # (single process) when the link's slot holds a new object.
        self._calls = 0
        self._slow_at = _NEVER  # nothing but the initial step until construction is done
        self._slot: Any = _NoSlot
        self._seen: Held | None = None
        self._tick_at = 1
        self._step_base = 0
        self._printed: list[float] = []  # verbose: the LRs printed last
        self._extra: Callable[[int, list[float]], None] | None = None  # momentum, verbose
        self._announced: bytes | None = None  # rank 0: the state of the version in flight
        self._link: ControllerLink | None = None
        self._group: RankGroup | None = None
        self._agreement: Agreement | None = None
        self._pacer: Pacer | None = None

        if self.rank == 0:
            log.info(
                "lrctl: following job %r (from %s) on %s",
                config.job,
                config.job_source,
                config.address,
            )
            self._link = ControllerLink(
                config,
                rank=0,
                schedule=self.spec.to_text(),
                base_lrs=base_lrs,
                verbose=verbose,
                world_size=self.world_size,
            )
        try:
            if self.world_size > 1:
                self._group = RankGroup()  # collective: every rank builds its scheduler
                held, plan = handshake(
                    self._group,
                    self._attach if self.rank == 0 else None,
                    job=self.job,
                    spec=self.spec.to_text(),
                    base_lrs=base_lrs,
                    plan=Plan(config.agree_every, config.divergence_check_every),
                )
                if self.rank == 0:
                    self._pacer = Pacer(plan.agree_every)
                elif (config.agree_every, config.divergence_check_every) != (
                    plan.agree_every,
                    plan.check_every,
                ):
                    log.warning(
                        "lrctl: rank %d uses rank 0's agree_every=%d and divergence_check_every=%d",
                        self.rank,
                        plan.agree_every,
                        plan.check_every,
                    )
                self._agreement = Agreement(self._group, plan, self._pacer)
            else:
                held = self._attach()
                self._slot, self._seen = self._link, held
                self._pacer = Pacer(0, period_s=config.report_interval_s / 2)
            self._replica = held
            self._switch(held, held.version, last_epoch + 1, provisional=True)
            from worker.ray import lr_metrics_hook

            self._on_lr = lr_metrics_hook(self.job, self.rank)
            self.optimizer = optimizer
            self._compile_writes()
            super().__init__(optimizer, last_epoch)
            if self._link is not None:
                self._link.start()
        except BaseException:
            self._release()
            raise
        count, self._calls = self._step_count, 0
        self._step_count = count
        self._slow_at = 1  # the first step() checks torch's call order

    # -- torch's interface -------------------------------------------------------------------

    def step(self, metrics: float | None = None) -> None:
        """Advance one step; ``metrics`` is ReduceLROnPlateau's ``step(metric)`` argument.

        The fast path writes the precomputed segment's LRs and touches no lock, tensor or
        network; exchanges with the other ranks, new versions and progress reports happen
        at calls planned ahead (``_slow_at``).
        """
        n = self._calls + 1
        self._calls = n  # torch's _step_count follows it (a property)
        if n >= self._slow_at or self._slot.held is not self._seen:
            self._slow_step(n)
        t = self.last_epoch + 1
        self.last_epoch = t
        row = self._lrs(t, self._base)
        single = self._single
        if single is not None:
            single["lr"] = row[0]
        elif self._plain:
            for group, lr in zip(self._groups, row):
                group["lr"] = lr
        else:
            _write_lrs(self._groups, row)
        self._values = row
        if self._extra is not None:
            self._extra(t, row)
        if metrics is not None:
            self._metric(t, metrics)

    @property
    def _step_count(self) -> int:
        # torch's count of step() calls, derived from ours: one store less per step.
        return self._calls + self._step_base

    @_step_count.setter
    def _step_count(self, value: int) -> None:
        self._step_base = value - self._calls

    def get_lr(self) -> list[float | torch.Tensor]:
        """Return the LR of every group at ``last_epoch`` (closed form; no side effects)."""
        return list(self._program.lrs(self.last_epoch, max_cost=None))

    def get_last_lr(self) -> list[float | torch.Tensor]:
        """Return the LRs the last :meth:`step` wrote (a tensor LR as a copy, as torch)."""
        return self._last_lr

    @property
    def _last_lr(self) -> list[float | torch.Tensor]:  # type: ignore[override]
        # Built on demand: step() allocates nothing for it.
        out: list[float | torch.Tensor] = []
        for group, lr in zip(self.optimizer.param_groups, self._values):
            current = group["lr"]
            out.append(torch.full_like(current, lr) if isinstance(current, torch.Tensor) else lr)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The resume record: the step, and the step at which each version took effect."""
        return {
            "job": self.job,
            "schedule": self.spec.to_text(),
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "applied_version": self._applied_version,
            "applied_steps": dict(self._applied_steps),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume: replay exactly the LR sequence of the run that saved ``state_dict``.

        Under ``torch.distributed`` every rank loads the same checkpoint, as with torch.

        Raises:
            ValueError: the checkpoint belongs to another job.
        """
        saved_job = state_dict.get("job", self.job)
        if saved_job != self.job:
            raise ValueError(
                f"this checkpoint is of job {saved_job!r}, expected {self.job!r}: "
                "its versions mean nothing here"
            )
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self._step_count))
        saved = {int(v): int(s) for v, s in state_dict.get("applied_steps", {}).items()}
        for version in self._provisional - set(saved):
            del self._applied_steps[version]  # re-resolved below, at the resume step
        self._provisional -= set(saved)
        self._applied_steps.update(saved)
        self._program_at = None  # the steps moved: build the program again
        held = self._replica
        version = max(self._applied_version, int(state_dict.get("applied_version", 0)))
        self._switch(held, min(version, held.version), self.last_epoch + 1, provisional=True)
        # Put the step's LRs in param_groups, as the run that saved the checkpoint had them.
        self._values = self._program.lrs(self.last_epoch, max_cost=None)  # resume: any step
        _write_lrs(self.optimizer.param_groups, self._values)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def applied_version(self) -> int:
        """The job version whose LRs are in ``param_groups``."""
        return self._applied_version

    @property
    def connected(self) -> bool:
        """Whether this rank's Watch stream is up (only rank 0 holds one under DDP)."""
        return self._link is not None and self._link.connected

    def close(self) -> None:
        """Flush the final report, stop the threads, release the side group. Idempotent.

        Waits at most 30 s for the exchange in flight (every rank calls ``close()``).
        """
        if self._closed:
            return
        self._closed = True
        if self._provisional:
            self._confirm_provisional()
        if self._link is not None and self._values:
            self._link.post_progress(self.last_epoch, self._applied_version, self._values)
        self._release()

    # -- internals: construction ------------------------------------------------------------

    def _attach(self) -> Held:
        if self._link is None:  # pragma: no cover - rank 0 always has one
            raise RuntimeError("only rank 0 attaches")
        self._link.attach()
        held = self._link.held
        if held is None:  # pragma: no cover - attach() fills the slot or raises
            raise RuntimeError("attach() returned without a job")
        return held

    def _release(self) -> None:
        if self._agreement is not None:
            self._agreement.close()
        if self._group is not None:
            self._group.close()
        if self._link is not None:
            self._link.close()

    # -- internals: off the fast path --------------------------------------------------------

    def _slow_step(self, n: int) -> None:
        """Everything step() does not do every call; sets the next call that comes here."""
        t = self.last_epoch + 1
        if n == 1:
            self._first_step()
        agreement = self._agreement
        switched = False
        if agreement is not None:
            if n >= agreement.next_call:
                switched = self._exchange(n, t)
                self._tick_at = n  # rank 0 reports at every exchange
        else:
            held = self._slot.held
            if held is not self._seen:  # single process: a new version applies at once
                self._seen = held
                if held is not None and held.version != self._applied_version:
                    self._replica = held
                    self._switch(held, held.version, t)
                    switched = True
        if n >= self._tick_at:
            self._tick(t - 1)
            self._tick_at = (
                _NEVER
                if self._pacer is None or agreement is not None
                else (n + self._pacer.interval(n))
            )
        if switched:
            self._tick_at = n + 1  # report the new version with the step it applies at
        self._slow_at = (
            self._tick_at if agreement is None else min(self._tick_at, agreement.next_call)
        )

    def _first_step(self) -> None:
        # torch's check that optimizer.step() ran before the first scheduler.step().
        if self._step_count == 1:
            if not hasattr(self.optimizer.step, "_wrapped_by_lr_sched"):
                warnings.warn(
                    "Seems like `optimizer.step()` has been overridden after learning "
                    "rate scheduler initialization. Please, make sure to call "
                    "`optimizer.step()` before `lr_scheduler.step()`.",
                    UserWarning,
                    stacklevel=4,
                )
            elif not getattr(self.optimizer, "_opt_called", False):
                warnings.warn(
                    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. "
                    "In PyTorch 1.1.0 and later, you should call them in the opposite "
                    "order: `optimizer.step()` before `lr_scheduler.step()`.  Failure "
                    "to do this will result in PyTorch skipping the first value of "
                    "the learning rate schedule.",
                    UserWarning,
                    stacklevel=4,
                )
        if self._provisional:
            self._confirm_provisional()

    def _tick(self, step: int) -> None:
        """Every few ms: rank 0's progress, the Ray gauge, the param groups' kinds."""
        self._compile_writes()
        if step < 0 or not self._values:
            return
        if self._link is not None:
            self._link.post_progress(step, self._applied_version, self._values)
        if self._on_lr is not None:
            self._on_lr(step, self._values)

    def _exchange(self, n: int, t: int) -> bool:
        """Collect the exchange in flight, switch if rank 0 announced a version, launch the next.

        Returns whether this step switched to another version.
        """
        agreement = self._agreement
        group = self._group
        if agreement is None or group is None:  # pragma: no cover - DDP only
            return False
        outcome = agreement.collect()
        switched = False
        if outcome is not None:
            # What every rank does next depends on the outcome alone (the same everywhere),
            # never on what this rank applied: the collectives stay in step even if a rank
            # diverged.
            _, length, apart = outcome
            if length:
                data = group.broadcast_bytes(self._announced, length)
                held = decode_held(data, self._replica)
                self._replica = held
                self._switch(held, held.version, t)
                switched = True
            if apart is not None:
                self._on_divergence(apart)
        version, length = self._applied_version, 0
        if self._link is not None:  # rank 0: announce the newest version it holds
            newest = self._link.held
            if newest is not None and newest.version != self._applied_version:
                self._announced = encode_held(newest, self._replica)
                version, length = newest.version, len(self._announced)
        agreement.launch(
            n,
            step=t - 1,
            version=version,
            length=length,
            lr_checksum=sum(self._values),
            applied_version=self._applied_version,
        )
        return switched

    def _on_divergence(self, outcome: Divergence) -> None:
        """Every rank found it at once: gather each rank's figures, log, count, report."""
        if self._group is None or self._agreement is None:  # pragma: no cover
            return
        checksum, applied = self._agreement.mine
        ranks = self._group.all_gather_floats([checksum, float(applied)])
        self.divergences += 1
        reference = ranks[0]
        odd = [r for r, v in enumerate(ranks) if v != reference]
        detail = "; ".join(
            f"rank {r}: LR sum {v[0]!r} at version {int(v[1])}"
            for r, v in enumerate(ranks)
            if r == 0 or r in odd
        )
        log.error(
            "lrctl: job %s: ranks %s applied other LRs than rank 0 at step %d (%s); "
            "DDP replicas may have diverged",
            self.job,
            odd,
            outcome.step,
            detail,
        )
        if self._link is not None:
            self._link.post_divergence(
                outcome.step, int(reference[1]), [v[0] for v in ranks], detail
            )

    def _metric(self, step: int, metrics: float) -> None:
        if not self._plateau:
            warnings.warn(
                f"step(metrics) passes a metric to ReduceLROnPlateau, but job "
                f"{self.job!r} follows {self.spec.name}; the value is ignored "
                "(torch's deprecated step(epoch) is not supported)",
                UserWarning,
                stacklevel=3,
            )
        elif self._link is not None:
            self._link.post_plateau_metric(step, float(metrics))

    def _print_changes(self, step: int, row: list[float]) -> None:
        if row != self._printed:
            for i, lr in enumerate(row):
                print(f"Adjusting learning rate of group {i} to {lr:.4e}.")  # torch's wording
            self._printed = row

    def _local(self, event: Event, step: int, provisional: bool) -> Event:
        """``event`` with the step it takes effect at on this rank (fixed the first time it
        is seen: the controller's effective step, else ``step``, which rank 0 reports)."""
        local = self._applied_steps.get(event.version)
        if local is None and event.effective_step is not None:
            local = event.effective_step
        if local is None:
            local = step
            if provisional:
                self._provisional.add(event.version)
            elif self._link is not None:
                self._link.post_applied(event.version, step)
        self._applied_steps[event.version] = local
        return dataclasses.replace(event, effective_step=local)

    def _confirm_provisional(self) -> None:
        if self._link is not None:
            for version in sorted(self._provisional):
                self._link.post_applied(version, self._applied_steps[version])
        self._provisional.clear()

    def _switch(self, held: Held, version: int, step: int, *, provisional: bool = False) -> None:
        """Apply the job as of ``version`` from ``step`` on (off the per-step path).

        A newer version of the incarnation the program holds extends it with the new events
        (what every rank does at the switch step, in O(new events)); anything else (a first
        version, a recreation, a resume, events out of order) builds it from the log.
        """
        state = held.at(version)
        program, events, known = None, self._events, self._program_at
        if known is not None and known[0] == state.created_version and known[1] <= state.version:
            start = bisect_right(state.events, known[1], key=event_version)
            new = [self._local(e, step, provisional) for e in state.events[start:]]
            try:
                program, events = self._program.extend(new), events + new
            except ValueError:  # not after the events held (an earlier effective step)
                program = None
        if program is None:
            events = [self._local(e, step, provisional) for e in state.events]
            program = LRProgram(
                state.schedule, state.base_lrs, events, self._built, limits=NO_LIMITS
            )  # the controller checked it, under its config
        self._program, self._events = program, events
        self._program_at = (state.created_version, state.version)
        self._plateau = isinstance(program.schedule, ReduceLROnPlateau)
        # The segment: with no event in effect, the schedule's own closed form and base LRs,
        # with no per-step lookup of which events apply.
        if events:
            self._lrs: Callable[[int, Sequence[float]], list[float]] = _ProgramRows(program)
            self._base: Sequence[float] = program.base_lrs
            momenta = program.momenta if program.cycles_momentum else None
        else:
            self._lrs, self._base = program.schedule.lrs, program.base_lrs
            momenta = program.schedule.momenta if program.cycles_momentum else None
        self._momenta: Callable[[int], list[float] | None] | None = momenta
        self._extra = self._after_step if momenta is not None or self.verbose else None
        if version > self._applied_version and self._applied_version:
            log.info("lrctl: job %s version %d takes effect at step %d", self.job, version, step)
        self._applied_version = version
        self._printed = []

    # -- internals: writing param_groups -----------------------------------------------------

    def _compile_writes(self) -> None:
        """Note how to write the groups (float LRs take the fast paths in step())."""
        self._groups = self.optimizer.param_groups
        self._plain = not any(isinstance(g["lr"], torch.Tensor) for g in self._groups)
        self._single = self._groups[0] if self._plain and len(self._groups) == 1 else None

    def _after_step(self, t: int, row: list[float]) -> None:
        """Cycled momentum (CyclicLR, OneCycleLR) and verbose printing, when they apply."""
        values = None if self._momenta is None else self._momenta(t)
        if values is not None:
            beta = self._uses_beta1
            for group, m in zip(self._groups, values):
                if m != m:  # NaN: this group's schedule does not cycle momentum
                    continue
                if beta:
                    group["betas"] = (m, *group["betas"][1:])
                else:
                    group["momentum"] = m
        if self.verbose:
            self._print_changes(t, row)


class _ProgramRows:
    """``program.lrs`` with the signature of ``Schedule.lrs`` (a segment with events)."""

    __slots__ = ("_lrs",)

    def __init__(self, program: LRProgram) -> None:
        self._lrs = program.lrs

    def __call__(self, step: int, base_lrs: Sequence[float]) -> list[float]:
        # No replay budget: a training loop steps forward (one replayed step each), and a
        # resume at a late step must get its LRs whatever the replay costs.
        return self._lrs(step, max_cost=None)


def _write_lrs(groups: Sequence[dict[str, Any]], lrs: Sequence[float]) -> None:
    """Write LRs the way torch does: ``fill_`` a tensor LR in place, else assign."""
    for group, lr in zip(groups, lrs):
        current = group["lr"]
        if isinstance(current, torch.Tensor):
            current.fill_(lr)
        else:
            group["lr"] = lr


def _initial_lrs(optimizer: Optimizer, last_epoch: int) -> list[float]:
    """torch's ``initial_lr`` handling: set on a new run, required on resume."""
    out = []
    for i, group in enumerate(optimizer.param_groups):
        if last_epoch == -1:
            lr = group["lr"]
            group.setdefault("initial_lr", lr.clone() if isinstance(lr, torch.Tensor) else lr)
        elif "initial_lr" not in group:
            raise KeyError(
                f"param 'initial_lr' is not specified in param_groups[{i}] when "
                "resuming scheduler with last_epoch >= 0"
            )
        value = group["initial_lr"]
        out.append(float(value.item()) if isinstance(value, torch.Tensor) else float(value))
    return out
