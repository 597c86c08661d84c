"""Every Prometheus metric the controller exports, registered on an injected registry.

Names and labels are a contract (dashboards and alert rules use them). The job label is
``job_id``, never ``job``: Prometheus attaches its own ``job`` label to every target. A
finished job's series are removed, so cardinality is bounded by the running jobs.

This module does not import grpc; the interceptor that feeds the ``lrctl_grpc_server_*``
metrics lives in :mod:`controller.server`.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lrctl.overrides import Event

__all__ = ["APPLY_BUCKETS", "INFO_PER_JOB", "INFO_REASON_CHARS", "ControllerMetrics"]

#: Accepted -> applied by rank 0: milliseconds with a live watch, up to the report interval.
APPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 120.0, 300.0)
#: ``lrctl_override_info`` keeps one series for each of a job's latest overrides, this many.
INFO_PER_JOB = 100
#: Longest ``reason`` label of ``lrctl_override_info`` (longer reasons end in "…").
INFO_REASON_CHARS = 200


class ControllerMetrics:
    """The controller's metrics, bound to ``registry`` (never the global one).

    Args:
        registry: Where every metric is registered.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.learning_rate = Gauge(
            "lrctl_learning_rate", "Learning rate of a param group at the job's latest step "
            "(pending overrides included).", ["job_id", "param_group"], registry=registry)
        self.step = Gauge("lrctl_step", "Latest scheduler step reported by rank 0.",
                          ["job_id"], registry=registry)
        self.overrides = Counter("lrctl_overrides", "Override events accepted, by operation.",
                                 ["job_id", "op"], registry=registry)
        self.workers = Gauge("lrctl_workers", "World size reported by the job's attached rank 0 "
                             "(0 when none).", ["job_id"], registry=registry)
        self.schedule_version = Gauge("lrctl_schedule_version", "The job's current version.",
                                      ["job_id"], registry=registry)
        self.override_apply_seconds = Histogram(
            "lrctl_override_apply_seconds",
            "Time from an override being accepted to rank 0 reporting it applied.",
            buckets=APPLY_BUCKETS, registry=registry)
        self.grpc_handled = Counter(
            "lrctl_grpc_server_handled", "RPCs completed on the server, by method and status.",
            ["grpc_service", "grpc_method", "grpc_code"], registry=registry)
        self.grpc_handling_seconds = Histogram(
            "lrctl_grpc_server_handling_seconds",
            "Time to complete an RPC (for streams: the stream's lifetime).",
            ["grpc_service", "grpc_method"], registry=registry)
        self.watch_streams = Gauge("lrctl_watch_streams",
                                   "Watch streams open on this controller (any client).",
                                   ["job_id"], registry=registry)
        self.overrides_pending = Gauge(
            "lrctl_overrides_pending",
            "Events accepted but not yet reported applied by the job's ranks.",
            ["job_id"], registry=registry)
        self.override_info = Gauge(
            "lrctl_override_info",
            f"One series per override (the latest {INFO_PER_JOB} per job); value: when it "
            "was accepted, in Unix seconds. The Grafana annotation source.",
            ["job_id", "version", "op", "actor", "reason"], registry=registry)
        self.rank_divergence = Counter(
            "lrctl_rank_divergence", "Checks in which the job's ranks disagreed on the "
            "applied LRs, as rank 0 reported them.", ["job_id"], registry=registry)
        # Label values in use per job, so a finished job's series can all be removed.
        self._groups: dict[str, int] = {}
        self._ops: dict[str, set[str]] = {}
        # job -> (log length, last version) exported, and the info label sets exported.
        self._info_key: dict[str, tuple[int, int]] = {}
        self._info: dict[str, dict[int, tuple[str, ...]]] = {}

    def update_job(self, job_id: str, lrs: Sequence[float], step: int, version: int) -> None:
        """Set a running job's LR, step and version gauges."""
        for group in range(len(lrs), self._groups.get(job_id, 0)):
            # The job was recreated with fewer param groups.
            self.learning_rate.remove(job_id, str(group))
        for group, lr in enumerate(lrs):
            self.learning_rate.labels(job_id, str(group)).set(lr)
        self._groups[job_id] = len(lrs)
        self.step.labels(job_id).set(step)
        self.schedule_version.labels(job_id).set(version)
        for gauge in (self.workers, self.watch_streams, self.overrides_pending,
                      self.rank_divergence):
            gauge.labels(job_id)  # present (0) from creation on

    def update_overrides(self, job_id: str, events: Sequence[Event],
                         pending: int | None = None) -> None:
        """Export a running job's pending count and its latest overrides' info series.

        ``events`` is the job's whole log (current incarnation); ``pending`` the events not
        yet applied by every rank (default: those without an effective step). The info series
        change only when the log grows or the job is recreated, so a bare progress report
        costs one count.
        """
        if pending is None:
            pending = sum(1 for e in events if e.pending)
        self.overrides_pending.labels(job_id).set(pending)
        key = (len(events), events[-1].version if events else 0)
        if self._info_key.get(job_id) == key:
            return
        self._info_key[job_id] = key
        old = self._info.get(job_id, {})
        new = {e.version: _info_labels(job_id, e) for e in events[-INFO_PER_JOB:]}
        for version, labels in old.items():
            if new.get(version) != labels:
                self.override_info.remove(*labels)
        for event in events[-INFO_PER_JOB:]:
            if event.version not in old or old[event.version] != new[event.version]:
                self.override_info.labels(*new[event.version]).set(event.created_at)
        self._info[job_id] = new

    def set_watch_streams(self, job_id: str, count: int) -> None:
        """Set the number of Watch streams open on this controller for a running job."""
        self.watch_streams.labels(job_id).set(count)

    def count_divergence(self, job_id: str, count: int = 1) -> None:
        """Count ``count`` rank divergences that rank 0 reported for a running job."""
        if count > 0:
            self.rank_divergence.labels(job_id).inc(count)

    def count_override(self, job_id: str, op: str) -> None:
        """Count one accepted override of ``op`` (``scale``, ``set``, ... ``plateau_reduce``)."""
        self._ops.setdefault(job_id, set()).add(op)
        self.overrides.labels(job_id, op).inc()

    def set_workers(self, job_id: str, count: int) -> None:
        """Set the world size of a running job's attached training run."""
        self.workers.labels(job_id).set(count)

    def observe_apply(self, seconds: float) -> None:
        """Record an override's accepted -> applied latency."""
        self.override_apply_seconds.observe(max(seconds, 0.0))

    def remove_job(self, job_id: str) -> None:
        """Drop every series of a finished job."""
        for group in range(self._groups.pop(job_id, 0)):
            self.learning_rate.remove(job_id, str(group))
        for op in self._ops.pop(job_id, set()):
            self.overrides.remove(job_id, op)
        for labels in self._info.pop(job_id, {}).values():
            self.override_info.remove(*labels)
        self._info_key.pop(job_id, None)
        for metric in (self.step, self.workers, self.schedule_version, self.watch_streams,
                       self.overrides_pending, self.rank_divergence):
            metric.remove(job_id)  # a no-op for series never created

    def observe_rpc(self, service: str, method: str, code: str, seconds: float) -> None:
        """Record one completed RPC (``code`` is the status name, e.g. ``OK``).

        Args:
            service: Full service name, e.g. ``lrctl.v1.LRController``.
            method: Method name, e.g. ``Watch``.
            code: Final status name, e.g. ``OK``, ``NOT_FOUND``, ``CANCELLED``.
            seconds: Time from the call's start to its end (a stream's whole lifetime).
        """
        self.grpc_handled.labels(service, method, code).inc()
        self.grpc_handling_seconds.labels(service, method).observe(seconds)


def _info_labels(job_id: str, event: Event) -> tuple[str, ...]:
    reason = event.reason
    if len(reason) > INFO_REASON_CHARS:
        reason = reason[:INFO_REASON_CHARS - 1] + "…"
    return job_id, str(event.version), event.op.value, event.actor, reason
