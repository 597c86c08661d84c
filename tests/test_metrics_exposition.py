"""/metrics from cached lines: the same bytes prometheus_client writes, minus `_created`.

Job series are rendered from lines kept between scrapes (controller.metrics). Against a
reference registry of plain prometheus_client metrics holding the same values, the
exposition must be the same, line for line, in both formats, except the `_created` samples of
per-job counters; and a value changed or a series removed between scrapes must show.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from controller.metrics import ControllerMetrics, exposition_app
from lrctl.overrides import Event, Op

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
REASONS = ['loss "spike"', "back\\slash", "two\nlines", "ünïcode ✓", "x" * 300]


def get(
    app: Callable[..., Any], accept: str = "", encoding: str = "", query: str = ""
) -> tuple[str, dict[str, str]]:
    status: list[Any] = []
    body = b"".join(
        app(
            {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": "/metrics",
                "HTTP_ACCEPT": accept,
                "HTTP_ACCEPT_ENCODING": encoding,
                "QUERY_STRING": query,
                "wsgi.input": io.BytesIO(),
            },
            lambda s, h: status.append((s, dict(h))),
        )
    )
    assert status[0][0] == "200 OK"
    headers = status[0][1]
    if headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return body.decode(), headers


def events(count: int) -> list[Event]:
    return [
        Event(
            version=2 + i,
            op=[Op.SCALE, Op.SET, Op.CLEAR][i % 3],
            value=0.5,
            actor=f"op-{i % 2}",
            reason=REASONS[i % len(REASONS)],
            created_at=1_700_000_000.25 + i,
        )
        for i in range(count)
    ]


class Reference:
    """The same series as plain prometheus_client metrics (what the controller had)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, ["job_id", *labels], registry=registry)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, ["job_id", *labels], registry=registry)

        self.lr = gauge(
            "lrctl_learning_rate",
            "Learning rate of a param group at the job's latest step (pending overrides included).",
            "param_group",
        )
        self.step = gauge("lrctl_step", "Latest scheduler step reported by rank 0.")
        self.overrides = counter("lrctl_overrides", "Override events accepted, by operation.", "op")
        self.workers = gauge(
            "lrctl_workers", "World size reported by the job's attached rank 0 (0 when none)."
        )
        self.version = gauge("lrctl_schedule_version", "The job's current version.")
        self.streams = gauge(
            "lrctl_watch_streams", "Watch streams open on this controller (any client)."
        )
        self.pending = gauge(
            "lrctl_overrides_pending",
            "Events accepted but not yet reported applied by the job's ranks.",
        )
        self.info = gauge(
            "lrctl_override_info",
            "One series per override (the latest 100 per "
            "job); value: when it was accepted, in Unix seconds. The Grafana "
            "annotation source.",
            *("version", "op", "actor", "reason"),
        )
        self.divergence = counter(
            "lrctl_rank_divergence",
            "Checks in which the job's ranks "
            "disagreed on the applied LRs, as rank 0 reported them.",
        )


def lines(text: str) -> set[str]:
    return {line for line in text.splitlines() if line and line != "# EOF"}


def without_job_created(text: str) -> set[str]:
    return {
        line
        for line in lines(text)
        if not any(
            name in line for name in ("lrctl_overrides_created", "lrctl_rank_divergence_created")
        )
    }


def fill(ours: ControllerMetrics, ref: Reference, jobs: int, log: int) -> None:
    for j in range(jobs):
        job = f"run-{j}"
        evs = events(log)
        ours.update_job(job, [0.1 / (j + 1), 1e-7], step=10 * j, version=1 + log)
        ours.update_overrides(job, evs, pending=j % 3)
        ours.set_workers(job, j % 4)
        ours.set_watch_streams(job, j % 5)
        ours.count_override(job, "scale")
        ours.count_divergence(job, j % 2)
        for g, lr in enumerate([0.1 / (j + 1), 1e-7]):
            ref.lr.labels(job, str(g)).set(lr)
        ref.step.labels(job).set(10 * j)
        ref.version.labels(job).set(1 + log)
        ref.workers.labels(job).set(j % 4)
        ref.streams.labels(job).set(j % 5)
        ref.pending.labels(job).set(j % 3)
        for e in evs[-100:]:
            reason = e.reason if len(e.reason) <= 200 else e.reason[:199] + "…"
            ref.info.labels(job, str(e.version), e.op.value, e.actor, reason).set(e.created_at)
        ref.overrides.labels(job, "scale").inc()
        if j % 2:
            ref.divergence.labels(job).inc(j % 2)
        else:
            ref.divergence.labels(job)


@pytest.mark.parametrize(
    "accept", [pytest.param("", id="text-0.0.4"), pytest.param(OPENMETRICS, id="openmetrics")]
)
def test_same_lines_as_prometheus_client_except_job_created(accept: str) -> None:
    registry, reference = CollectorRegistry(), CollectorRegistry()
    ours = ControllerMetrics(registry)
    ref = Reference(reference)
    fill(ours, ref, jobs=7, log=120)
    app = exposition_app(registry)
    text, headers = get(app, accept, "gzip")
    openmetrics = accept == OPENMETRICS
    generate = om_generate_latest if openmetrics else generate_latest
    expected = generate(reference).decode()
    mine = lines(text) - lines(generate(_without_jobs(registry)).decode())
    assert mine == without_job_created(expected)
    assert headers["Content-Type"].startswith(
        "application/openmetrics-text" if openmetrics else "text/plain"
    )
    if openmetrics:
        assert text.endswith("# EOF\n")
        list(om_parse(text))  # the strict parser: families grouped, one EOF at the end
    # prometheus_client's own rendering of our registry says the same
    assert lines(text) == lines(generate(registry).decode())


def _without_jobs(registry: CollectorRegistry) -> Any:
    """The registry minus the per-job families (the gRPC and apply metrics)."""

    class Rest:
        def collect(self) -> Any:
            return [
                m
                for m in registry.collect()
                if not m.name.startswith(
                    (
                        "lrctl_learning_rate",
                        "lrctl_step",
                        "lrctl_overrides",
                        "lrctl_workers",
                        "lrctl_schedule_version",
                        "lrctl_watch_streams",
                        "lrctl_override_info",
                        "lrctl_rank_divergence",
                    )
                )
            ]

    return Rest()


def test_changes_and_removals_between_scrapes_show() -> None:
    registry = CollectorRegistry()
    ours = ControllerMetrics(registry)
    app = exposition_app(registry)
    ours.update_job("a", [0.1, 0.2], step=1, version=1)
    ours.update_job("b", [0.3], step=1, version=1)
    ours.update_overrides("a", events(150), pending=0)
    first, _ = get(app)
    assert 'lrctl_step{job_id="a"} 1.0' in first
    assert sum("lrctl_override_info{" in line for line in first.splitlines()) == 100
    ours.update_job("a", [0.05], step=2, version=3)  # one group now
    ours.update_overrides("a", events(151), pending=0)  # one in, the oldest out
    ours.remove_job("b")
    second, _ = get(app)
    assert 'lrctl_step{job_id="a"} 2.0' in second
    assert 'lrctl_learning_rate{job_id="a",param_group="0"} 0.05' in second
    assert 'param_group="1"' not in second and 'job_id="b"' not in second
    info = [line for line in second.splitlines() if line.startswith("lrctl_override_info{")]
    assert len(info) == 100 and any('version="152"' in line for line in info)
    assert not any('version="52"' in line for line in info)
    ours.update_overrides("a", events(3), pending=0)  # recreated: a shorter log starts over
    third, _ = get(app)
    assert sum("lrctl_override_info{" in line for line in third.splitlines()) == 3
    assert registry.get_sample_value("lrctl_step", {"job_id": "a"}) == 2.0
    assert registry.get_sample_value("lrctl_step", {"job_id": "b"}) is None


def test_name_filter_and_non_get_methods() -> None:
    registry = CollectorRegistry()
    ours = ControllerMetrics(registry)
    ours.update_job("a", [0.1], step=4, version=2)
    app = exposition_app(registry)
    text, _ = get(app, query="name[]=lrctl_step")
    assert 'lrctl_step{job_id="a"} 4.0' in text and "lrctl_learning_rate" not in text
    status: list[Any] = []
    app({"REQUEST_METHOD": "POST", "PATH_INFO": "/metrics"}, lambda s, h: status.append(s))
    assert status == ["405 Method Not Allowed"]
