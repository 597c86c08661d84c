"""The Grafana dashboard: generated, current, and structurally sound.

deploy/grafana/dashboards/lrctl.json is what scripts/gen_dashboard.py generates (a stale
file fails, like lrctl/v1); panel ids are unique, every query uses the ``datasource``
variable and only variables the dashboard defines, refIds are unique per panel, the grid
holds, gauges are combined with ``max by`` and counters with ``sum by`` (several replicas),
and every metric a query reads is one the controller (or the worker's Ray gauge) exports.
Whether the queries return the right data on a real Prometheus: tests/test_observability.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from controller.metrics import ControllerMetrics
from tests.procs import ROOT
from tests.test_deploy import check_aggregations

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "lrctl.json"
SCRIPT = ROOT / "scripts" / "gen_dashboard.py"
GRAFANA_SCHEMA_VERSION = 41  # Grafana 11.6, the release the SDK pin targets
#: Grafana's own variables a query may use.
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__range_s"}
#: The Ray gauge worker/ray.py sets; Ray prefixes user metrics with ``ray_``.
RAY_METRICS = {"ray_lrctl_worker_learning_rate"}


def load() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested (collapsed) panels included."""
    for panel in model["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(model: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and annotation."""
    for panel in all_panels(model):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]
    for annotation in model["annotations"]["list"]:
        if annotation["datasource"]["type"] == "prometheus":
            yield f"annotation {annotation['name']!r}", annotation["target"]["expr"]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:ray_)?lrctl_[a-z_]+)\b", expr))


def controller_metric_names() -> set[str]:
    """Series names the dashboard reads from the controller's /metrics (sample names)."""
    return {name for _, expr in queries(load()) for name in metric_names(expr)} - RAY_METRICS


def test_dashboard_is_generated_and_current() -> None:
    if sys.version_info < (3, 11):
        pytest.skip("grafana-foundation-sdk needs Python 3.11+ (the [dev] extra skips it)")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_a_hand_edited_dashboard_is_caught(tmp_path: Path) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("grafana-foundation-sdk needs Python 3.11+ (the [dev] extra skips it)")
    edited = tmp_path / "lrctl.json"
    edited.write_text(DASHBOARD.read_text().replace('"Current LR"', '"Current learning rate"'))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--out", str(edited)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "is stale" in done.stderr and "Current learning rate" in done.stderr


def test_model_version_ids_and_grid() -> None:
    model = load()
    assert model["schemaVersion"] == GRAFANA_SCHEMA_VERSION
    assert model["uid"] == "lrctl" and model["title"]
    ids = [p["id"] for p in all_panels(model)]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    # Top-level panels and each collapsed row's panels tile the 24-column grid without
    # overlapping.
    layers = [list(model["panels"])] + [p["panels"] for p in model["panels"] if p.get("collapsed")]
    for layer in layers:
        cells: set[tuple[int, int]] = set()
        for panel in layer:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
            area = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not area & cells, f"{panel['title']!r} overlaps another panel"
            cells |= area


def test_datasource_variable_and_refs() -> None:
    model = load()
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    job = variables["job_id"]
    assert job["type"] == "query" and job["multi"] and job["includeAll"]
    assert job["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert job["query"]["query"] == "label_values(lrctl_schedule_version, job_id)"
    defined = set(variables) | BUILTIN_VARIABLES
    for panel in all_panels(model):
        if panel["type"] == "row":
            assert not panel.get("targets")
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
    for where, expr in queries(model):
        used = set(re.findall(r"\$\{?(\w+)", expr))
        assert used <= defined, f"{where} uses undefined variables {used - defined}"
        if "lrctl_" in expr and "$job_id" not in expr:
            # Only series without a job_id label may ignore the job filter.
            assert metric_names(expr) & {
                "lrctl_override_apply_seconds_bucket",
                "lrctl_grpc_server_handled_total",
                "lrctl_grpc_server_handling_seconds_bucket",
            }, where


def test_queries_aggregate_replicas_by_metric_type() -> None:
    for where, expr in queries(load()):
        try:
            check_aggregations(expr)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None
        assert 'job="' not in expr.replace('job="lrctl"', ""), where  # job_id, never job
    with pytest.raises(AssertionError):  # the check itself bites
        check_aggregations("sum by (job_id) (lrctl_learning_rate)")
    with pytest.raises(AssertionError):
        check_aggregations("max by (job_id) (rate(lrctl_overrides_total[5m]))")


def test_the_panels_an_operator_needs_are_there() -> None:
    model = load()
    panels = {p["title"]: p for p in all_panels(model)}
    lr = panels["Learning rate by job and param group"]
    assert lr["fieldConfig"]["defaults"]["custom"]["scaleDistribution"] == {
        "type": "log",
        "log": 10,
    }
    assert "by (job_id, param_group)" in lr["targets"][0]["expr"]
    linear = panels["Learning rate by job and param group (linear)"]
    assert "scaleDistribution" not in linear["fieldConfig"]["defaults"].get("custom", {})
    stats = {t for t, p in panels.items() if p["type"] == "stat"}
    assert {"Current LR", "Step", "Schedule version"} <= stats
    exprs = " ".join(expr for _, expr in queries(model))
    for needed in (
        "lrctl_override_apply_seconds_bucket",
        "lrctl_workers",
        "lrctl_watch_streams",
        "ray_lrctl_worker_learning_rate",
        "lrctl_grpc_server_handled_total",
        "lrctl_grpc_server_handling_seconds_bucket",
        'grpc_code!="OK"',
        "lrctl_rank_divergence_total",
        "lrctl_overrides_pending",
    ):
        assert needed in exprs, needed
    (overrides,) = [a for a in model["annotations"]["list"] if a["name"] == "Overrides"]
    assert overrides["useValueForTime"] is True and overrides["enable"] is True
    expr = overrides["target"]["expr"]
    assert expr.startswith("max by (job_id, version, op, actor, reason) (lrctl_override_info")
    assert expr.endswith("* 1000")  # seconds -> Grafana's milliseconds
    shown = set(re.findall(r"\{\{(\w+)\}\}", overrides["titleFormat"] + overrides["textFormat"]))
    assert {"op", "actor", "reason"} <= shown
    assert shown <= {"job_id", "version", "op", "actor", "reason"}


def test_every_metric_queried_is_exported() -> None:
    registry = CollectorRegistry()
    ControllerMetrics(registry)
    exported = set()
    for family in registry.collect():
        exported.add(family.name)
        if family.type == "counter":
            exported.add(family.name + "_total")
        if family.type == "histogram":
            exported.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    assert controller_metric_names() <= exported, controller_metric_names() - exported
    ray_helper = (ROOT / "worker" / "ray.py").read_text()
    # -> ray_lrctl_worker_... in Prometheus
    assert re.search(r'Gauge\(\s*"lrctl_worker_learning_rate"', ray_helper)
