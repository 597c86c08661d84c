"""Generate the Grafana dashboard deploy/grafana/dashboards/lrctl.json (the only way it changes).

Usage: python scripts/gen_dashboard.py [--check] [--out FILE]

The dashboard is built with Grafana's own grafana-foundation-sdk, pinned in the ``[dev]``
extra to its build for **Grafana 11.6** (dashboard ``schemaVersion`` 41); the JSON is checked
in so Grafana provisions it without Python. ``--check`` builds it in memory and exits 1 when
the checked-in file differs (CI runs it; tests/test_dashboard.py too).

Every query works with several controller replicas: gauges are combined with ``max by``,
counters with ``sum by`` (``lrctl_watch_streams`` counts streams per replica, so its job total
is a ``sum by``). The job label is ``job_id``; ``job`` is Prometheus' scrape job. Panel by
panel, docs/operations.md says what each one answers.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash_m

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "grafana" / "dashboards" / "lrctl.json"

#: The Grafana release the JSON model targets (and the SDK build pinned in pyproject.toml).
GRAFANA_VERSION = "11.6"
SCHEMA_VERSION = 41
UID = "lrctl"
DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")
#: The scrape job of the controllers (deploy/prometheus/prometheus.yml, the ServiceMonitor).
SCRAPE_JOB = "lrctl"

JOBS = 'job_id=~"$job_id"'
LRCTL_RPC = 'grpc_service="lrctl.v1.LRController"'

#: Annotation source: one series per override, value = creation time (s) -> milliseconds.
OVERRIDES_ANNOTATION = (
    f"max by (job_id, version, op, actor, reason) (lrctl_override_info{{{JOBS}}}) * 1000"
)


def _query(expr: str, legend: str, ref: str = "A", *, instant: bool = False) -> prom_b.Dataquery:
    query = prom_b.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    return query.instant() if instant else query.range()


def _stat(
    title: str, description: str, expr: str, legend: str, *, unit: str = "none", width: int = 4
) -> stat_b.Panel:
    return (
        stat_b.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(_query(expr, legend, instant=True))
        .unit(unit)
        .height(4)
        .span(width)
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def _series(
    title: str,
    description: str,
    targets: list[prom_b.Dataquery],
    *,
    unit: str = "none",
    width: int = 12,
    height: int = 8,
    log: bool = False,
    step: bool = False,
    bars: bool = False,
) -> ts_b.Panel:
    panel = (
        ts_b.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(targets)
        .unit(unit)
        .height(height)
        .span(width)
        .legend(
            common_b.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull"])
        )
        .tooltip(
            common_b.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if log:
        panel = panel.scale_distribution(
            common_b.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10)
        )
    if step:
        panel = panel.line_interpolation(common.LineInterpolation.STEP_AFTER)
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(60)
    return panel


def _lr_panel(title: str, *, log: bool) -> ts_b.Panel:
    scale = "log scale (schedules span decades)" if log else "linear scale"
    return _series(
        title,
        "The LR of every param group of the selected jobs at the step rank 0 last reported, "
        "as the controller computes it (pending overrides included), on a " + scale + ". "
        "Override markers carry op, actor and reason.",
        [
            _query(
                f"max by (job_id, param_group) (lrctl_learning_rate{{{JOBS}}})",
                "{{job_id}} group {{param_group}}",
            )
        ],
        unit="sci",
        width=24,
        height=10,
        log=log,
        step=True,
    )


def _row(builder: Any, title: str, panels: list[Any]) -> Any:
    """``builder`` with a row named ``title`` holding ``panels``."""
    builder = builder.with_row(dash_b.Row(title))
    for panel in panels:
        builder = builder.with_panel(panel)
    return builder


def build() -> dict[str, Any]:
    """Return the dashboard as Grafana's JSON model (a plain dict)."""
    builder = (
        dash_b.Dashboard("lrctl: learning rates")
        .uid(UID)
        .description(
            "Live LR of every lrctl job, the overrides that changed it, what each "
            "rank applied, and the controller's health. docs/operations.md."
        )
        .tags(["lrctl", "training"])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            dash_b.QueryVariable("job_id")
            .label("Job")
            .description("lrctl job ids (job_id label); several may be selected.")
            .datasource(DATASOURCE)
            .query(
                {
                    "qryType": 1,
                    "label": "job_id",
                    "metric": "lrctl_schedule_version",
                    "query": "label_values(lrctl_schedule_version, job_id)",
                    "refId": "PrometheusVariableQueryEditor-VariableQuery",
                }
            )
            .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(dash_m.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )
    )

    builder = _row(
        builder,
        "Now",
        [
            _stat(
                "Current LR",
                "LR per job and param group now.",
                f"max by (job_id, param_group) (lrctl_learning_rate{{{JOBS}}})",
                "{{job_id}} group {{param_group}}",
                unit="sci",
                width=6,
            ),
            _stat(
                "Step",
                "Latest scheduler step rank 0 reported.",
                f"max by (job_id) (lrctl_step{{{JOBS}}})",
                "{{job_id}}",
            ),
            _stat(
                "Schedule version",
                "The job's version: +1 per override, plateau reduction or finish.",
                f"max by (job_id) (lrctl_schedule_version{{{JOBS}}})",
                "{{job_id}}",
            ),
            _stat(
                "Workers",
                "World size of the attached run (0: nobody is training it).",
                f"max by (job_id) (lrctl_workers{{{JOBS}}})",
                "{{job_id}}",
            ),
            _stat(
                "Pending overrides",
                "Accepted, not yet applied by the ranks.",
                f"max by (job_id) (lrctl_overrides_pending{{{JOBS}}})",
                "{{job_id}}",
                width=3,
            ),
            _stat(
                "Controllers up",
                "Controller replicas Prometheus scrapes successfully.",
                f'sum(up{{job="{SCRAPE_JOB}"}})',
                "up",
                width=3,
            ),
        ],
    )

    builder = _row(
        builder,
        "Learning rate",
        [
            _lr_panel("Learning rate by job and param group", log=True),
            _series(
                "Applied LR per rank (Ray)",
                "What each rank wrote into optimizer.param_groups, from Ray's metrics "
                "(ray_lrctl_worker_learning_rate, updated at most once a second per rank). "
                "Ranks of one job overlap exactly; a line apart from the others is a rank that "
                "diverged.",
                [
                    _query(
                        "max by (job_id, param_group, rank) "
                        f"(ray_lrctl_worker_learning_rate{{{JOBS}}})",
                        "{{job_id}} group {{param_group}} rank {{rank}}",
                    )
                ],
                unit="sci",
                log=True,
                step=True,
            ),
            _series(
                "Training progress",
                "Scheduler step per job (left) and steps per second (right).",
                [
                    _query(f"max by (job_id) (lrctl_step{{{JOBS}}})", "{{job_id}} step"),
                    _query(
                        f"max by (job_id) (deriv(lrctl_step{{{JOBS}}}[$__rate_interval]))",
                        "{{job_id}} steps/s",
                        "B",
                    ),
                ],
            ).override_by_regexp(
                ".*steps/s",
                [
                    dash_m.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                    dash_m.DynamicConfigValue(id_val="unit", value="none"),
                ],
            ),
        ],
    )

    builder = _row(
        builder,
        "Overrides",
        [
            _series(
                "Overrides by op",
                "Overrides accepted per interval, by job and op (scale, set, clear, "
                "replace_schedule, plateau_reduce).",
                [
                    _query(
                        f"sum by (job_id, op) (increase(lrctl_overrides_total{{{JOBS}}}"
                        "[$__rate_interval]))",
                        "{{job_id}} {{op}}",
                    )
                ],
                width=8,
                bars=True,
            ),
            _series(
                "Override apply latency",
                "From an override being accepted to rank 0 reporting the step it took effect at, "
                "all jobs (p50, p99).",
                [
                    _query(
                        "histogram_quantile(0.5, sum by (le) "
                        "(rate(lrctl_override_apply_seconds_bucket[$__rate_interval])))",
                        "p50",
                    ),
                    _query(
                        "histogram_quantile(0.99, sum by (le) "
                        "(rate(lrctl_override_apply_seconds_bucket[$__rate_interval])))",
                        "p99",
                        "B",
                    ),
                ],
                unit="s",
                width=8,
            ),
            _series(
                "Pending overrides and divergences",
                "Overrides not yet applied by the ranks, and rank divergences reported per "
                "interval (ranks that applied different LRs at the same step: should stay 0).",
                [
                    _query(
                        f"max by (job_id) (lrctl_overrides_pending{{{JOBS}}})", "{{job_id}} pending"
                    ),
                    _query(
                        f"sum by (job_id) (increase(lrctl_rank_divergence_total{{{JOBS}}}"
                        "[$__rate_interval]))",
                        "{{job_id}} divergences",
                        "B",
                    ),
                ],
                width=8,
                step=True,
            ),
        ],
    )

    builder = _row(
        builder,
        "Workers and streams",
        [
            _series(
                "Workers (world size)",
                "World size of the run attached to each job, as its rank 0 reports it.",
                [_query(f"max by (job_id) (lrctl_workers{{{JOBS}}})", "{{job_id}}")],
                step=True,
            ),
            _series(
                "Watch streams",
                "Watch streams open per job, summed over the controller replicas (a worker's "
                "stream is on one of them), and per replica.",
                [
                    _query(f"sum by (job_id) (lrctl_watch_streams{{{JOBS}}})", "{{job_id}}"),
                    _query(
                        f"sum by (instance) (lrctl_watch_streams{{{JOBS}}})", "on {{instance}}", "B"
                    ),
                ],
                step=True,
            ),
        ],
    )

    builder = _row(
        builder,
        "Controller RPCs",
        [
            _series(
                "RPC rate by method",
                "Completed lrctl RPCs per second, all replicas "
                "(a Watch counts when its stream ends).",
                [
                    _query(
                        f"sum by (grpc_method) (rate(lrctl_grpc_server_handled_total{{{LRCTL_RPC}}}"
                        "[$__rate_interval]))",
                        "{{grpc_method}}",
                    )
                ],
                unit="reqps",
                width=8,
            ),
            _series(
                "RPC errors by code",
                "RPCs that did not end OK, by method and status code (a worker closing its Watch "
                "ends it CANCELLED; NOT_FOUND and INVALID_ARGUMENT are the caller's mistakes).",
                [
                    _query(
                        f"sum by (grpc_method, grpc_code) (rate(lrctl_grpc_server_handled_total"
                        f'{{{LRCTL_RPC}, grpc_code!="OK"}}[$__rate_interval]))',
                        "{{grpc_method}} {{grpc_code}}",
                    )
                ],
                unit="reqps",
                width=8,
            ),
            _series(
                "RPC latency p99",
                "99th percentile time to complete unary RPCs, by method (Watch is a stream: its "
                "duration is the stream's lifetime and is left out).",
                [
                    _query(
                        "histogram_quantile(0.99, sum by (grpc_method, le) (rate("
                        "lrctl_grpc_server_handling_seconds_bucket"
                        f'{{{LRCTL_RPC}, grpc_method!="Watch"}}'
                        "[$__rate_interval])))",
                        "{{grpc_method}}",
                    )
                ],
                unit="s",
                width=8,
            ),
        ],
    )

    linear = (
        dash_b.Row("Learning rate, linear scale")
        .collapsed(True)
        .with_panel(_lr_panel("Learning rate by job and param group (linear)", log=False))
    )
    builder = builder.with_row(linear)

    model = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    _number_panels(model)
    model["annotations"]["list"] = [_builtin_annotation(), _overrides_annotation()]
    if model.get("schemaVersion") != SCHEMA_VERSION:
        raise SystemExit(
            f"expected the SDK to write schemaVersion {SCHEMA_VERSION} "
            f"(Grafana {GRAFANA_VERSION}), got {model.get('schemaVersion')}"
        )
    return model


def _number_panels(model: dict[str, Any]) -> None:
    """Give every panel (rows' nested panels too) a unique id, in layout order."""
    next_id = 1
    for panel in model["panels"]:
        for item in [panel, *panel.get("panels", [])]:
            item["id"] = next_id
            next_id += 1


def _builtin_annotation() -> dict[str, Any]:
    # Grafana's own annotations (alerts, hand-made notes); Grafana adds it when missing.
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }


def _overrides_annotation() -> dict[str, Any]:
    # The SDK's AnnotationQuery models only the generic fields; the Prometheus data source
    # reads its annotation options (query, title/text templates, tags, value as time) from
    # these keys. useValueForTime: the series' value (creation time in ms) is the event time,
    # so each override is one point however long its series lives.
    return {
        "name": "Overrides",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "enable": True,
        "hide": False,
        "iconColor": "orange",
        "target": {"expr": OVERRIDES_ANNOTATION, "refId": "Anno", "interval": ""},
        "titleFormat": "{{op}} by {{actor}} (version {{version}})",
        "textFormat": "{{reason}}",
        "tagKeys": "job_id,op",
        "useValueForTime": True,
    }


def render() -> str:
    """Return the dashboard JSON exactly as checked in."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the checked-in JSON is not what this script generates",
    )
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(),
                text.splitlines(),
                str(args.out),
                "generated",
                lineterm="",
                n=1,
            )
            sys.stderr.write(f"{args.out} is stale; run python scripts/gen_dashboard.py\n")
            sys.stderr.write("\n".join(list(diff)[:40]) + "\n")
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
