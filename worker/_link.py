"""The worker's connection to the controller: attach, follow the job, report progress.

Everything network goes through :class:`lrctl.client.Client`, and following the job is
:class:`lrctl.client.WatchFollower` (the one the CLI's ``lrctl watch`` uses too). The
training thread never waits on the network. Two daemon threads do the I/O:

* the watcher iterates the follower (``Watch(job, from_version)``, reconnecting with jittered
  exponential backoff and resuming from the version held) and stores the newest
  :class:`Held` in a slot (one attribute, replaced whole);
* the reporter (rank 0 only) sends the newest progress at most every
  ``report_interval_s``, plus the steps at which versions took effect, which it keeps until
  the controller has acknowledged them. Closing sends a last report marked ``final``.

Every report carries the attach epoch rank 0 got from ``CreateJob(attach=True)``. When another
process attaches to the same job later (a restarted worker group, a second run started by
mistake), the controller refuses this one's reports with FAILED_PRECONDITION: the link logs
it once, sets :attr:`ControllerLink.superseded` and stops reporting; training goes on,
following the job as before.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lrctl.client import Client, ClientError, FollowUpdate, WatchFollower
from lrctl.constants import REASON_SUPERSEDED
from lrctl.model import Divergence, Job, Report
from worker._config import WorkerConfig, WorkerError

__all__ = ["ControllerLink", "Held"]

log = logging.getLogger("lrctl.worker")


@dataclass(frozen=True)
class Held:
    """What a rank holds of its job: the newest :class:`~lrctl.model.Job` (with its log) and,
    after a recreation (CreateJob with ``replace``), what it held of the earlier incarnation.
    """

    job: Job
    previous: Held | None = None
    """The incarnation before a recreation, until none needs it."""

    @property
    def version(self) -> int:
        return self.job.version

    def at(self, version: int) -> Job:
        """Return the job as of ``version`` (events up to it).

        A version from before a recreation is answered by the previous incarnation, so a
        rank that already holds the new one agrees with a rank that does not yet.
        """
        if version < self.job.created_version and self.previous is not None:
            return self.previous.at(version)
        return self.job.at(version)


# (step, applied version, LRs): a plain tuple, built on the training thread every step.
_Progress = tuple[int, int, Sequence[float]]


class ControllerLink:
    """One rank's connection to the controller for one job.

    Args:
        config: Address, token, TLS and pacing.
        rank: This process's rank; rank 0 attaches as the run (a new attach epoch) and
            reports.
        schedule: The spec's canonical text.
        base_lrs: One base LR per param group.
        verbose: Workers log every LR change.
        world_size: The run's world size (1 without ``torch.distributed``).
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        rank: int,
        schedule: str,
        base_lrs: Sequence[float],
        verbose: bool = False,
        world_size: int = 1,
    ) -> None:
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self._schedule = schedule
        self._base_lrs = list(base_lrs)
        self._verbose = verbose
        # Everything was read from the environment by WorkerConfig.load: none of it again.
        self._client = Client(
            config.address,
            config.token,
            tls=config.tls if config.tls is not None else False,
            environ={},
        )
        self._follower: WatchFollower | None = None
        self._stop = threading.Event()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self.held: Held | None = None  # the slot the training thread reads
        self.epoch = 0
        self.connected = False
        # True once the controller refused a report because a newer attach superseded this
        # run's epoch: nothing more is reported.
        self.superseded = False
        self._progress: _Progress | None = None
        self._sent: _Progress | None = None
        self._applied: collections.deque[tuple[int, int]] = collections.deque()
        self._plateau: collections.deque[tuple[int, float]] = collections.deque()
        self._divergences: collections.deque[Divergence] = collections.deque()

    @property
    def state(self) -> Job | None:
        """The newest job held (None before :meth:`attach`)."""
        held = self.held
        return None if held is None else held.job

    # -- construction ------------------------------------------------------------------------

    def attach(self) -> Job:
        """Create the job or attach to it; wait at most ``connect_timeout_s`` for the controller.

        Raises:
            WorkerError: unreachable controller, or the job exists with another schedule.
        """
        try:
            result = self._client.create_job(
                self.config.job,
                self._schedule,
                self._base_lrs,
                verbose=self._verbose,
                attach=self.rank == 0,
                world_size=self.world_size if self.rank == 0 else 0,
                timeout=self.config.connect_timeout_s,
                wait_for_ready=True,
            )
        except ClientError as exc:
            self._client.close()
            if exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and not exc.reason:
                tls = (
                    "; over TLS, check LRCTL_TLS_CA, and with mutual TLS LRCTL_TLS_CERT/KEY: "
                    "a controller closes connections it does not trust"
                    if self.config.tls is not None
                    else ""
                )
                raise WorkerError(
                    f"cannot reach the lrctl controller at {self.config.address} within "
                    f"{self.config.connect_timeout_s:g}s (set LRCTL_ADDRESS; is `lrctl serve` "
                    f"running?{tls})"
                ) from None
            raise WorkerError(
                f"cannot attach to job {self.config.job!r}: {exc.code}: {exc.details}"
            ) from None
        self.epoch = result.epoch
        self.held = Held(result.job)
        self.connected = True
        # Training never gives up on its job: every error is retried, with backoff.
        self._follower = WatchFollower(
            self._client,
            self.config.job,
            job=result.job,
            worker_id=f"rank-{self.rank}",
            retry=_always,
            backoff_initial_s=self.config.backoff_initial_s,
            backoff_max_s=self.config.backoff_max_s,
        )
        return result.job

    def start(self) -> None:
        """Start the watcher (every rank) and the reporter (rank 0)."""
        targets = [self._watch_loop] + ([self._report_loop] if self.rank == 0 else [])
        for target in targets:
            name = f"lrctl-{target.__name__.strip('_')}-{self.config.job}"
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    # -- called by the training thread: slot writes only -------------------------------------

    def post_progress(self, step: int, version: int, lrs: Sequence[float]) -> None:
        """Publish progress; ``lrs`` must not be mutated afterwards (the caller's fresh list)."""
        self._progress = (step, version, lrs)

    def post_applied(self, version: int, step: int) -> None:
        """Queue ``version`` as having taken effect at ``step`` (reported until acknowledged)."""
        if not self.superseded:  # nothing is reported any more: do not let queues grow
            self._applied.append((version, step))

    def post_plateau_metric(self, step: int, value: float) -> None:
        """Queue one ``step(metric)`` value for the controller's ReduceLROnPlateau."""
        if not self.superseded:
            self._plateau.append((step, value))

    def post_divergence(
        self, step: int, version: int, lr_checksums: Sequence[float], detail: str
    ) -> None:
        """Queue a rank divergence found at ``step`` (reported until acknowledged)."""
        if not self.superseded:
            self._divergences.append(Divergence(step, version, tuple(lr_checksums), detail))

    # -- shutdown ----------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads, send the final report (rank 0), close the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._follower is not None:
            self._follower.close()
        for thread in self._threads:
            thread.join(timeout)
        if self.rank == 0 and self.held is not None and not self.superseded:
            self._send_report(final=True, timeout=timeout)
        self._client.close()

    # -- background threads ------------------------------------------------------------------

    def _watch_loop(self) -> None:
        follower = self._follower
        if follower is None:  # attach() failed; nothing to follow
            return
        while not self._stop.is_set() and not follower.closed:
            try:
                for update in follower:
                    self._on_update(follower, update)
                return  # finished, or closed
            except Exception:  # this thread must outlive any error
                if self._stop.is_set():
                    return
                log.exception("lrctl: unexpected error following job %s; retrying", self.config.job)
                self.connected = False
                self._stop.wait(self.config.backoff_max_s)

    def _on_update(self, follower: WatchFollower, update: FollowUpdate) -> None:
        held = self.held
        if held is None:
            return
        if update.error is not None:
            if self.connected:
                log.warning(
                    "lrctl: lost the controller at %s (%s); training continues on "
                    "the schedule held at version %d, reconnecting",
                    self.config.address,
                    update.error.code,
                    held.version,
                )
            self.connected = False
            return
        if not self.connected:
            log.info(
                "lrctl: reconnected to %s (job %s, version %d)",
                self.config.address,
                self.config.job,
                follower.version,
            )
        self.connected = True
        job = update.job
        if job is None or job is held.job:
            return  # a heartbeat or a duplicate: nothing new
        if job.created_version > held.job.created_version:  # the job was recreated
            if len(job.base_lrs) != len(held.job.base_lrs):
                log.error(
                    "lrctl: job %s was recreated with %d param groups; this optimizer "
                    "has %d: keeping the schedule held at version %d",
                    self.config.job,
                    len(job.base_lrs),
                    len(held.job.base_lrs),
                    held.version,
                )
                follower.close()  # nothing more to follow; progress is still reported
                return
            self.held = Held(job, previous=held)
        else:
            self.held = Held(job, previous=held.previous)

    def _report_loop(self) -> None:
        while not self.superseded and not self._stop.wait(self.config.report_interval_s):
            try:
                self._send_report()
            except Exception:  # this thread must outlive any error
                log.exception("lrctl: unexpected error reporting job %s", self.config.job)

    def _send_report(self, final: bool = False, timeout: float = 5.0) -> None:
        progress = self._progress
        if progress is None or self.superseded:  # before the first step: queued items wait
            return
        applied = _drain(self._applied)
        plateau = _drain(self._plateau)
        divergences = _drain(self._divergences)
        if progress is self._sent and not (applied or plateau or divergences or final):
            return
        report = Report(
            job_id=self.config.job,
            rank=self.rank,
            step=progress[0],
            applied_version=progress[1],
            lrs=tuple(progress[2]),
            applied=tuple(applied),
            plateau_metrics=tuple(plateau),
            final=final,
            epoch=self.epoch,
            world_size=self.world_size,
            divergences=tuple(divergences),
        )
        try:
            self._client.report(report, timeout=timeout)
            self._sent = progress
        except ClientError as exc:
            if exc.transient:
                # Keep what must arrive (effective steps, plateau metrics) for the next one.
                self._applied.extendleft(reversed(applied))
                self._plateau.extendleft(reversed(plateau))
                self._divergences.extendleft(reversed(divergences))
            elif exc.reason == REASON_SUPERSEDED:  # another process attached since
                self.superseded = True
                log.error(
                    "lrctl: job %s: the controller refuses this run's reports (attach "
                    "epoch %d): %s. Another process attached to the job since (a "
                    "restarted worker group, or another run with the same job id?); this "
                    "one stops reporting and trains on, following the job's schedule.",
                    self.config.job,
                    self.epoch,
                    exc.details,
                )
            else:  # retrying cannot help, and would block every later report
                log.warning(
                    "lrctl: the controller refused a report for job %s (%s: %s); dropped it",
                    self.config.job,
                    exc.code,
                    exc.details,
                )


def _always(error: ClientError) -> bool:
    return True


def _drain(queue: collections.deque[Any]) -> list[Any]:
    out = []
    while True:
        try:
            out.append(queue.popleft())
        except IndexError:
            return out
