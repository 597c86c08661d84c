"""Every Prometheus metric the controller exports, registered on an injected registry.

Names and labels are a contract (dashboards and alert rules use them). The job label is
``job_id``, never ``job``: Prometheus attaches its own ``job`` label to every target. A
finished job's series are removed, so cardinality is bounded by the running jobs.

This module does not import grpc; the interceptor that feeds the ``lrctl_grpc_server_*``
metrics lives in :mod:`controller.interceptors`.
"""

from __future__ import annotations

import gzip
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, generate_latest, gzip_accepted
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.utils import floatToGoString

from lrctl.overrides import Event

__all__ = [
    "APPLY_BUCKETS",
    "INFO_PER_JOB",
    "INFO_REASON_CHARS",
    "ControllerMetrics",
    "exposition_app",
]

#: Accepted -> applied by rank 0: milliseconds with a live watch, up to the report interval.
APPLY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
#: ``lrctl_override_info`` keeps one series for each of a job's latest overrides, this many.
INFO_PER_JOB = 100
#: Longest ``reason`` label of ``lrctl_override_info`` (longer reasons end in "…").
INFO_REASON_CHARS = 200

Labels = tuple[str, ...]
#: The WSGI application type (environ, start_response) -> body chunks.
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Family:
    """One metric family of per-job series: values, and their exposition lines, formatted when
    a value changes, so a scrape only joins them (once per family that changed)."""

    def __init__(self, name: str, documentation: str, kind: str, labelnames: Sequence[str]) -> None:
        self.name, self.documentation, self.kind = name, documentation, kind
        self.labelnames = tuple(labelnames)
        self.sample = f"{name}_total" if kind == "counter" else name
        self._sorted = sorted(range(len(labelnames)), key=lambda i: labelnames[i])
        self.values: dict[Labels, float] = {}
        self.lines: dict[Labels, str] = {}
        self.changed = False
        self._body = ""
        empty = _Single(Metric(name, documentation, kind))
        openmetrics: bytes = om_generate_latest(empty)  # type: ignore[no-untyped-call]
        self.headers = {
            False: generate_latest(empty).decode(),
            True: openmetrics.decode().removesuffix("# EOF\n"),
        }

    def metric(self) -> Metric:
        """A prometheus_client family of the current values (for ``registry.collect()``)."""
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = cls(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        return family

    def body(self) -> str:
        """Every sample line (the caller holds the series lock)."""
        if self.changed:
            self._body = "".join(self.lines.values())
            self.changed = False
        return self._body

    def set(self, labels: Labels, value: float) -> None:
        if labels in self.values and self.values[labels] == value:
            return
        self.values[labels] = value
        line = self.lines.get(labels)
        # The label part of a line never changes: format it once per series.
        prefix = line[: line.rindex(" ") + 1] if line is not None else self._prefix(labels)
        self.lines[labels] = prefix + _go(value) + "\n"
        self.changed = True

    def remove(self, labels: Labels) -> None:
        if self.values.pop(labels, None) is not None:
            del self.lines[labels]
            self.changed = True

    def _prefix(self, labels: Labels) -> str:
        inner = ",".join(f'{self.labelnames[i]}="{_escape(labels[i])}"' for i in self._sorted)
        return f"{self.sample}{{{inner}}} "


class _Single:
    """A collector of one prebuilt family (renders the family's HELP/TYPE lines)."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> list[Metric]:
        return [self._metric]


def _go(value: float) -> str:
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


#: Set in a thread serving ``/metrics``: job series collectors step aside and render their
#: cached lines themselves (:func:`exposition_app`).
_exposing = threading.local()


class _JobSeries:
    """The per-job families, one collector: thousands of jobs render from cached lines.

    Every mutation holds :attr:`lock` briefly (the event loop's side) and formats the one
    line it changes (about a microsecond); a scrape joins each changed family's lines under
    it, in the scrape's own thread.
    """

    def __init__(self, families: Sequence[_Family]) -> None:
        self.families = {f.name: f for f in families}
        self.lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return [Metric(f.name, f.documentation, f.kind) for f in self.families.values()]

    def collect(self) -> Iterator[Metric]:
        found = getattr(_exposing, "found", None)
        if found is not None:  # the exposition app renders these itself
            found.append(self)
            return
        with self.lock:
            metrics = [f.metric() for f in self.families.values()]
        yield from metrics

    def render(self, openmetrics: bool, names: set[str] | None = None) -> str:
        """Every family in exposition format, from the lines kept between scrapes."""
        with self.lock:
            bodies = [
                (f, f.body())
                for f in self.families.values()
                if names is None or f.sample in names or f.name in names
            ]
        return "".join(family.headers[openmetrics] + body for family, body in bodies)


def exposition_app(registry: CollectorRegistry, *, disable_compression: bool = False) -> WsgiApp:
    """The ``/metrics`` WSGI application: prometheus_client's, except that job series
    render from lines cached between scrapes.

    Content negotiation (text 0.0.4 or OpenMetrics), ``name[]`` filters and gzip are
    prometheus_client's; the bytes of every series are those ``generate_latest`` would write,
    counters of per-job series without their ``_created`` samples.
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if method == "OPTIONS":
            start_response("200 OK", [("Allow", "OPTIONS,GET")])
            return [b""]
        if method != "GET":
            start_response("405 Method Not Allowed", [("Allow", "OPTIONS,GET")])
            return [f"# HTTP 405 Method Not Allowed: {method}; use OPTIONS or GET\n".encode()]
        if environ.get("PATH_INFO") == "/favicon.ico":
            start_response("200 OK", [])
            return [b""]
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        params = parse_qs(environ.get("QUERY_STRING", ""))
        names = params.get("name[]")
        target = registry.restricted_registry(names) if names else registry
        _exposing.found = []
        try:
            output = encoder(target)
            found: list[_JobSeries] = _exposing.found
        finally:
            del _exposing.found
        openmetrics = content_type.startswith("application/openmetrics-text")
        extra = "".join(
            series.render(openmetrics, set(names) if names else None) for series in found
        ).encode()
        if extra:
            eof = b"# EOF\n"
            output = (
                output[: -len(eof)] + extra + eof
                if openmetrics and output.endswith(eof)
                else output + extra
            )
        headers = [("Content-Type", content_type)]
        if not disable_compression and gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            output = gzip.compress(output)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [output]

    return app


#: The help text of each per-job family.
_JOB_HELP = {
    "lrctl_learning_rate": (
        "Learning rate of a param group at the job's latest step (pending overrides included)."
    ),
    "lrctl_step": "Latest scheduler step reported by rank 0.",
    "lrctl_overrides": "Override events accepted, by operation.",
    "lrctl_workers": "World size reported by the job's attached rank 0 (0 when none).",
    "lrctl_schedule_version": "The job's current version.",
    "lrctl_watch_streams": "Watch streams open on this controller (any client).",
    "lrctl_overrides_pending": "Events accepted but not yet reported applied by the job's ranks.",
    "lrctl_override_info": (
        f"One series per override (the latest {INFO_PER_JOB} per job); value: when it "
        "was accepted, in Unix seconds. The Grafana annotation source."
    ),
    "lrctl_rank_divergence": (
        "Checks in which the job's ranks disagreed on the applied LRs, as rank 0 reported them."
    ),
}


def _job_family(name: str, kind: str, labelnames: Sequence[str]) -> _Family:
    return _Family(name, _JOB_HELP[name], kind, labelnames)


class ControllerMetrics:
    """The controller's metrics, bound to ``registry`` (never the global one).

    The per-job series (every metric with a ``job_id`` label) live in one collector that keeps
    their exposition lines between scrapes, so a scrape of thousands of jobs formats only what
    changed (serve them with :func:`exposition_app`); counters among them have no
    ``_created`` series. The rest are prometheus_client's own metrics.

    Args:
        registry: Where every metric is registered.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        job = ["job_id"]
        self.learning_rate = _job_family("lrctl_learning_rate", "gauge", [*job, "param_group"])
        self.step = _job_family("lrctl_step", "gauge", job)
        self.overrides = _job_family("lrctl_overrides", "counter", [*job, "op"])
        self.workers = _job_family("lrctl_workers", "gauge", job)
        self.schedule_version = _job_family("lrctl_schedule_version", "gauge", job)
        self.watch_streams = _job_family("lrctl_watch_streams", "gauge", job)
        self.overrides_pending = _job_family("lrctl_overrides_pending", "gauge", job)
        info_labels = [*job, "version", "op", "actor", "reason"]
        self.override_info = _job_family("lrctl_override_info", "gauge", info_labels)
        self.rank_divergence = _job_family("lrctl_rank_divergence", "counter", job)
        # Registration order is the order of families in registry.collect().
        self._jobs = _JobSeries(
            [
                self.learning_rate,
                self.step,
                self.overrides,
                self.workers,
                self.schedule_version,
                self.watch_streams,
                self.overrides_pending,
                self.override_info,
                self.rank_divergence,
            ]
        )
        self.override_apply_seconds = Histogram(
            "lrctl_override_apply_seconds",
            "Time from an override being accepted to rank 0 reporting it applied.",
            buckets=APPLY_BUCKETS,
            registry=registry,
        )
        self.grpc_handled = Counter(
            "lrctl_grpc_server_handled",
            "RPCs completed on the server, by method and status.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.grpc_handling_seconds = Histogram(
            "lrctl_grpc_server_handling_seconds",
            "Time to complete an RPC (for streams: the stream's lifetime).",
            ["grpc_service", "grpc_method"],
            registry=registry,
        )
        registry.register(self._jobs)
        self._lock = self._jobs.lock
        # Label values in use per job, so a finished job's series can all be removed.
        self._groups: dict[str, int] = {}
        self._ops: dict[str, set[str]] = {}
        # job -> (log length, last version) exported, and the info series exported, oldest
        # first: (version, labels).
        self._info_key: dict[str, tuple[int, int]] = {}
        self._info: dict[str, deque[tuple[int, Labels]]] = {}

    # -- per-job series ------------------------------------------------------------------------

    def update_job(self, job_id: str, lrs: Sequence[float], step: int, version: int) -> None:
        """Set a running job's LR, step and version gauges."""
        with self._lock:
            for group in range(len(lrs), self._groups.get(job_id, 0)):
                # The job was recreated with fewer param groups.
                _remove(self.learning_rate, (job_id, str(group)))
            for group, lr in enumerate(lrs):
                _set(self.learning_rate, (job_id, str(group)), lr)
            self._groups[job_id] = len(lrs)
            key = (job_id,)
            _set(self.step, key, step)
            _set(self.schedule_version, key, version)
            for family in (
                self.workers,
                self.watch_streams,
                self.overrides_pending,
                self.rank_divergence,
            ):
                if key not in family.values:  # present (0) from creation on
                    _set(family, key, 0.0)

    def update_overrides(self, job_id: str, events: Sequence[Event], *, pending: int) -> None:
        """Export a running job's pending count and its latest overrides' info series.

        ``events`` is the job's whole log (current incarnation); ``pending`` the events not
        yet applied by every rank (:meth:`controller.projection.Projection.pending`). Only the
        events appended since the last call are read (the whole log when it is not an
        extension of the last one: a recreated job), so an override costs one series in and
        one out.
        """
        key = (len(events), events[-1].version if events else 0)
        with self._lock:
            _set(self.overrides_pending, (job_id,), pending)
            old = self._info_key.get(job_id)
            if old == key:
                return
            self._info_key[job_id] = key
            exported = self._info.setdefault(job_id, deque())
            count, last = old if old is not None else (0, 0)
            if not (count <= len(events) and (count == 0 or events[count - 1].version == last)):
                for _, labels in exported:  # not an extension: start over
                    _remove(self.override_info, labels)
                exported.clear()
                count = 0
            for event in events[max(count, len(events) - INFO_PER_JOB) :]:
                labels = _info_labels(job_id, event)
                exported.append((event.version, labels))
                _set(self.override_info, labels, event.created_at)
            while len(exported) > INFO_PER_JOB:
                _remove(self.override_info, exported.popleft()[1])

    def set_watch_streams(self, job_id: str, count: int) -> None:
        """Set the number of Watch streams open on this controller for a running job."""
        with self._lock:
            _set(self.watch_streams, (job_id,), count)

    def count_divergence(self, job_id: str, count: int = 1) -> None:
        """Count ``count`` rank divergences that rank 0 reported for a running job."""
        if count > 0:
            with self._lock:
                _inc(self.rank_divergence, (job_id,), count)

    def count_override(self, job_id: str, op: str) -> None:
        """Count one accepted override of ``op`` (``scale``, ``set``, ... ``plateau_reduce``)."""
        self._ops.setdefault(job_id, set()).add(op)
        with self._lock:
            _inc(self.overrides, (job_id, op), 1)

    def set_workers(self, job_id: str, count: int) -> None:
        """Set the world size of a running job's attached training run."""
        with self._lock:
            _set(self.workers, (job_id,), count)

    def remove_job(self, job_id: str) -> None:
        """Drop every series of a finished job."""
        with self._lock:
            for group in range(self._groups.pop(job_id, 0)):
                _remove(self.learning_rate, (job_id, str(group)))
            for op in self._ops.pop(job_id, set()):
                _remove(self.overrides, (job_id, op))
            for _, labels in self._info.pop(job_id, ()):
                _remove(self.override_info, labels)
            self._info_key.pop(job_id, None)
            for family in (
                self.step,
                self.workers,
                self.schedule_version,
                self.watch_streams,
                self.overrides_pending,
                self.rank_divergence,
            ):
                _remove(family, (job_id,))  # a no-op for series never created

    # -- the rest ------------------------------------------------------------------------------

    def observe_apply(self, seconds: float) -> None:
        """Record an override's accepted -> applied latency."""
        self.override_apply_seconds.observe(max(seconds, 0.0))

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


# Mutations of a family (the caller holds the series lock).


def _set(family: _Family, labels: Labels, value: float) -> None:
    family.set(labels, float(value))


def _inc(family: _Family, labels: Labels, amount: float) -> None:
    family.set(labels, family.values.get(labels, 0.0) + float(amount))


def _remove(family: _Family, labels: Labels) -> None:
    family.remove(labels)


def _info_labels(job_id: str, event: Event) -> Labels:
    reason = event.reason
    if len(reason) > INFO_REASON_CHARS:
        reason = reason[: INFO_REASON_CHARS - 1] + "…"
    return job_id, str(event.version), event.op.value, event.actor, reason
