"""Real parts, end to end: Prometheus scraping a live controller and a Ray Train job.

Nothing is mocked. Debian's ``prometheus`` runs with deploy/prometheus/prometheus.yml (only
the addresses, the 1 s intervals and the paths changed) and the rules of deploy/; it scrapes
a ``lrctl serve`` subprocess and, through Ray's file-based service discovery, the metrics
agent of a local Ray head on which a 2-rank TorchTrainer job (tests/observability_loop.py)
follows the controller. The test overrides the job twice through the ``lrctl`` CLI, lets
the ranks hold still at the last step, and then evaluates **every query of the Grafana
dashboard** (deploy/grafana/dashboards/lrctl.json) through Prometheus' HTTP API with the
dashboard's variables substituted the way Grafana does, checking that the LR panels return
each job and param group with the LR the schedule and overrides give, that the annotation
query returns one point per override carrying its reason, and that the per-rank applied LR
of both ranks (``ray_lrctl_worker_learning_rate``) reads back through Prometheus.

One controller, Ray head and Prometheus serve the whole module.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml

from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests.procs import RAY_ENV, ROOT, ControllerProcess
from tests.ray_head import local_ray_head

pytestmark = pytest.mark.slow

T = TypeVar("T")
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "lrctl.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "lrctl.rules.yml"

JOB = "obs-run"  # trained by Ray (LRCTL_JOB)
IDLE = "idle-run"  # created by the CLI, nobody trains it
SCHEDULE = "StepLR(step_size=30, gamma=0.5)"
BASE_LRS = (0.1, 0.01)
STEPS = 50
#: Rank 0 reports progress as it steps, so while the ranks hold the controller may show a
#: step or two before the last one; from here on the LR no longer changes.
SETTLED_STEP = 40
# From step 30 on StepLR gives 0.5; `lr /= 2` (at step ~8) halves both groups and
# `lr *= 0.1 --group 1` (at step ~16) scales group 1 again: scale overrides compose with the
# schedule (docs/overrides.md). The LR is then stable for 2 s (20 steps), longer than the
# 1 s the per-rank Ray gauge may lag.
EXPECTED = {"0": 0.1 * 0.5 * 0.5, "1": 0.01 * 0.5 * 0.5 * 0.1}
IDLE_SCHEDULE = "ConstantLR(factor=0.5, total_iters=10)"
IDLE_EXPECTED = {"0": 0.2 * 0.5}
#: Grafana's substitutions for a 1 s scrape interval: $__interval is at least the data
#: source's timeInterval, $__rate_interval = max($__interval + scrape interval, 4 x scrape).
SCRAPE_S = 1
GRAFANA_BUILTINS = {"$__rate_interval": f"{4 * SCRAPE_S}s", "$__interval": f"{SCRAPE_S}s"}


# -- helpers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.25) -> T:
    """Poll ``check`` until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def lrctl(address: str, *argv: str) -> str:
    """Run the ``lrctl`` CLI of this environment; return its stdout."""
    exe = Path(sys.executable).parent / "lrctl"
    done = subprocess.run(
        [str(exe), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LRCTL_ADDRESS": address},
    )
    assert done.returncode == 0, f"lrctl {' '.join(argv)}: {done.stderr}"
    return done.stdout


def grafana_regex_escape(value: str) -> str:
    """Grafana's escaping of a multi-value variable for a Prometheus regex matcher."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def substitute(expr: str, job_ids: list[str] | None) -> str:
    """``expr`` as Grafana sends it: ``$job_id`` for the selection (None = All)."""
    if job_ids is None:
        job = ".*"  # the variable's allValue
    elif len(job_ids) == 1:
        job = grafana_regex_escape(job_ids[0])
    else:
        job = "(" + "|".join(grafana_regex_escape(j) for j in job_ids) + ")"
    for name, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(name, value)
    expr = expr.replace("${job_id}", job).replace("$job_id", job)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def instant(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr, time=str(time.time()))
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def range(self, expr: str, start: float, step: float = SCRAPE_S) -> list[dict[str, Any]]:
        data = self.get(
            "/api/v1/query_range",
            query=expr,
            start=str(start),
            end=str(time.time()),
            step=str(step),
        )
        assert data["resultType"] == "matrix", data
        result: list[dict[str, Any]] = data["result"]
        return result


def by_labels(result: list[dict[str, Any]], *names: str) -> dict[tuple[str, ...], float]:
    """Instant vector -> {label values: value}."""
    return {tuple(r["metric"].get(n, "") for n in names): float(r["value"][1]) for r in result}


def last_finite(series: dict[str, Any]) -> float:
    values = [float(v) for _, v in series["values"] if math.isfinite(float(v))]
    assert values, series
    return values[-1]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_targets(title: str) -> list[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        for item in [panel, *panel.get("panels", [])]:
            if item.get("title") == title:
                targets: list[dict[str, Any]] = item["targets"]
                return targets
    raise AssertionError(f"no panel {title!r}")


# -- the stack ---------------------------------------------------------------------------------


@dataclass
class Stack:
    address: str
    prometheus: Prometheus
    started: float
    release: Path
    step: int = -1  # the controller's step for JOB while the ranks hold
    fit: dict[str, Any] = field(default_factory=dict)
    fit_thread: threading.Thread | None = None
    overrides: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def prometheus_config(tmp: Path, metrics_port: int, service_discovery: Path) -> Path:
    """deploy/prometheus/prometheus.yml with this test's addresses, paths and intervals."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval=f"{SCRAPE_S}s", evaluation_interval=f"{SCRAPE_S}s")
    assert config["rule_files"] == ["rules/lrctl.rules.yml"]
    config["rule_files"] = [str(RULES)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"lrctl", "ray"}
    jobs["lrctl"]["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    assert len(jobs["ray"]["file_sd_configs"][0]["files"]) == 1
    jobs["ray"]["file_sd_configs"][0]["files"] = [str(service_discovery)]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_prometheus(stack: contextlib.ExitStack, tmp: Path, config: Path) -> Prometheus:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "prometheus is not installed (Debian package 'prometheus'; scripts/test.sh installs it)"
        )
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    stack.callback(stop)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError("prometheus exited:\n" + log.read_text())
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    until(ready, 30, "Prometheus to be ready")
    return Prometheus(url, proc, log)


def job_step(stub: lrctl_pb2_grpc.LRControllerStub, job: str) -> int:
    try:
        return int(stub.GetJob(lrctl_pb2.GetJobRequest(job_id=job), timeout=5).step)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # the ranks have not attached yet
            return -1
        raise


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("observability")
    with contextlib.ExitStack() as exits:
        saved = {key: os.environ.get(key) for key in RAY_ENV}
        os.environ.update(RAY_ENV)
        exits.callback(
            lambda: [
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
                for k, v in saved.items()
            ]
        )
        controller = ControllerProcess(tmp / "lrctl.db").start()
        exits.callback(controller.stop)
        metrics = until(
            lambda: re.search(r"metrics on 127\.0\.0\.1:(\d+)", "".join(controller.output)),
            10,
            "the metrics port",
        )
        address = controller.address

        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from tests.observability_loop import hold_loop

        # Ray's unix sockets live under its temp dir: keep the path short (108-byte limit).
        ray_tmp = Path(tempfile.mkdtemp(prefix="ro", dir="/tmp"))
        exits.callback(shutil.rmtree, ray_tmp, True)
        env = {"LRCTL_ADDRESS": address, "LRCTL_JOB": JOB}
        head = local_ray_head(
            env,
            _temp_dir=str(ray_tmp),
            dashboard_port=free_port(),
            # Workers push their metrics to the agent every second (default 10 s).
            _system_config={"metrics_report_interval_ms": 1000},
        )
        exits.enter_context(head)
        discovery = ray_tmp / "prom_metrics_service_discovery.json"
        until(discovery.exists, 60, "Ray's service-discovery file")
        prometheus = start_prometheus(
            exits, tmp, prometheus_config(tmp, int(metrics.group(1)), discovery)
        )
        started = time.time()

        # A second job nobody trains, with an override of its own; and a call that fails.
        lrctl(address, "job", "create", IDLE, "--schedule", IDLE_SCHEDULE, "--base-lr", "0.2")
        lrctl(address, "override", IDLE, "--clear", "--reason", "nothing to clear")
        missing = subprocess.run(
            [str(Path(sys.executable).parent / "lrctl"), "job", "get", "no-such-job"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "LRCTL_ADDRESS": address},
        )
        assert missing.returncode != 0

        release = tmp / "release"
        result = Stack(address, prometheus, started, release)
        trainer = TorchTrainer(
            hold_loop,
            train_loop_config={
                "schedule": SCHEDULE,
                "base_lrs": list(BASE_LRS),
                "steps": STEPS,
                "sleep": 0.1,
                "release": str(release),
                "hold_timeout": 240,
            },
            scaling_config=ScalingConfig(
                num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}
            ),
            torch_config=TorchConfig(backend="gloo", timeout_s=120),
            run_config=RunConfig(name=JOB, storage_path=str(tmp / "ray")),
        )

        def fit() -> None:
            try:
                done = trainer.fit()
                result.fit.update(error=done.error, value=done.return_value)
            except BaseException as exc:  # reported by the last test
                result.fit.update(error=exc, value=None)

        result.fit_thread = threading.Thread(target=fit, daemon=True)
        result.fit_thread.start()
        exits.callback(lambda: (release.touch(), result.fit_thread and result.fit_thread.join(120)))

        with grpc.insecure_channel(address) as channel:
            stub = lrctl_pb2_grpc.LRControllerStub(channel)
            until(lambda: job_step(stub, JOB) >= 8 or None, 180, f"{JOB} at step 8")
            lrctl(address, "override", JOB, "lr /= 2", "--reason", "loss spike")
            until(lambda: job_step(stub, JOB) >= 16 or None, 60, f"{JOB} at step 16")
            lrctl(
                address, "override", JOB, "lr *= 0.1", "--group", "1", "--reason", "group 1 too hot"
            )
        for job in (JOB, IDLE):
            result.overrides[job] = json.loads(lrctl(address, "history", job, "--json"))

        # The ranks hold at the last step: wait until Prometheus has the settled state.
        seen: dict[str, Any] = {}

        def settled() -> bool:
            seen["step"] = by_labels(
                prometheus.instant(f'max by (job_id) (lrctl_step{{job_id="{JOB}"}})'), "job_id"
            )
            seen["pending"] = by_labels(
                prometheus.instant(f'max by (job_id) (lrctl_overrides_pending{{job_id="{JOB}"}})'),
                "job_id",
            )
            seen["ranks"] = by_labels(
                prometheus.instant(f'ray_lrctl_worker_learning_rate{{job_id="{JOB}"}}'),
                "rank",
                "param_group",
            )
            with grpc.insecure_channel(address) as channel:
                result.step = job_step(lrctl_pb2_grpc.LRControllerStub(channel), JOB)
            return (
                seen["step"].get((JOB,)) == result.step >= SETTLED_STEP
                and seen["pending"] == {(JOB,): 0}
                and len(seen["ranks"]) == 4
                and all(
                    math.isclose(v, EXPECTED[g], rel_tol=1e-9)
                    for (_, g), v in seen["ranks"].items()
                )
            )

        try:
            until(
                settled,
                90,
                "Prometheus to see the last step, no pending override and both ranks' LR",
                every=0.5,
            )
        except AssertionError as exc:
            targets = [
                (t["labels"], t["health"], t["lastError"])
                for t in prometheus.get("/api/v1/targets")["activeTargets"]
            ]
            names = prometheus.get("/api/v1/label/__name__/values")
            raw = []
            for t in targets:
                if t[0]["job"] == "ray":
                    with urllib.request.urlopen(f"http://{t[0]['instance']}/metrics") as r:
                        raw += [x for x in r.read().decode().splitlines() if "lrctl" in x]
            raise AssertionError(
                f"{exc}\nseen: {seen}\ntargets: {targets}\n"
                f"ray names: {[n for n in names if 'lrctl' in n]}\n"
                f"raw: {raw}"
            ) from None
        time.sleep(2 * SCRAPE_S)  # one more rule evaluation and scrape on the settled state
        yield result


# -- the dashboard's queries on the live data --------------------------------------------------


@pytest.mark.parametrize(
    "selection",
    [
        pytest.param([JOB, IDLE], id="both"),
        pytest.param([JOB], id="one"),
        pytest.param(None, id="all"),
    ],
)
@pytest.mark.parametrize(
    "title",
    ["Learning rate by job and param group", "Learning rate by job and param group (linear)"],
)
def test_lr_panels_return_each_job_and_group(
    stack: Stack, title: str, selection: list[str] | None
) -> None:
    (target,) = panel_targets(title)
    series = stack.prometheus.range(substitute(target["expr"], selection), stack.started)
    got = {(s["metric"]["job_id"], s["metric"]["param_group"]): last_finite(s) for s in series}
    assert all(set(s["metric"]) == {"job_id", "param_group"} for s in series)
    expected = {(JOB, g): lr for g, lr in EXPECTED.items()}
    if selection is None or IDLE in selection:
        expected.update({(IDLE, g): lr for g, lr in IDLE_EXPECTED.items()})
    assert got.keys() == expected.keys()
    for key, lr in expected.items():
        assert got[key] == pytest.approx(lr, rel=1e-12), key
    # The curve shows the LR moving (overrides, StepLR's boundary at step 30).
    curve = next(s for s in series if s["metric"] == {"job_id": JOB, "param_group": "0"})
    assert len({float(v) for _, v in curve["values"]}) >= 2


def test_current_state_stat_panels(stack: Stack) -> None:
    def stat(title: str, *labels: str) -> dict[tuple[str, ...], float]:
        (target,) = panel_targets(title)
        assert target["instant"] is True
        return by_labels(stack.prometheus.instant(substitute(target["expr"], [JOB, IDLE])), *labels)

    lrs = stat("Current LR", "job_id", "param_group")
    assert lrs == pytest.approx(
        {
            **{(JOB, g): v for g, v in EXPECTED.items()},
            **{(IDLE, g): v for g, v in IDLE_EXPECTED.items()},
        }
    )
    assert stat("Step", "job_id") == {(JOB,): stack.step, (IDLE,): -1}
    # Versions: creation 1, then one per override.
    assert stat("Schedule version", "job_id") == {(JOB,): 3, (IDLE,): 2}
    assert stat("Workers", "job_id") == {(JOB,): 2, (IDLE,): 0}
    assert stat("Pending overrides", "job_id") == {(JOB,): 0, (IDLE,): 1}
    assert stat("Controllers up") == {(): 1}


def test_annotations_are_one_point_per_override_with_its_reason(stack: Stack) -> None:
    (annotation,) = [a for a in dashboard()["annotations"]["list"] if a["name"] == "Overrides"]
    for selection in ([JOB], [JOB, IDLE]):
        series = stack.prometheus.range(
            substitute(annotation["target"]["expr"], selection), stack.started
        )
        # Grafana with useValueForTime: each series' value is its event time; a series whose
        # values are all equal is exactly one annotation.
        points = {}
        for s in series:
            values = {float(v) for _, v in s["values"]}
            assert len(values) == 1, s
            points[s["metric"]["version"], s["metric"]["job_id"]] = (values.pop(), s["metric"])
        expected = [(job, event) for job in selection for event in stack.overrides[job]]
        assert len(points) == len(expected) == len(series)
        for job, event in expected:
            when, labels = points[str(event["version"]), job]
            created = datetime.fromisoformat(event["created_at"].replace("Z", "+00:00"))
            assert when == pytest.approx(created.timestamp() * 1000, abs=1)  # milliseconds
            assert labels["reason"] == event["reason"]
            assert labels["op"] == event["op"] and labels["actor"] == event["actor"]
    reasons = {e["reason"] for e in stack.overrides[JOB]}
    assert reasons == {"loss spike", "group 1 too hot"}


def test_per_rank_applied_lr_reads_back_through_prometheus(stack: Stack) -> None:
    (target,) = panel_targets("Applied LR per rank (Ray)")
    # A range query, as the panel does: Ray stops exporting a gauge ~30 s after its last
    # update, so a rank that holds this long drops out of instant queries, not of the curve.
    series = stack.prometheus.range(substitute(target["expr"], [JOB]), stack.started)
    got = {(s["metric"]["rank"], s["metric"]["param_group"]): last_finite(s) for s in series}
    assert got == pytest.approx({(r, g): lr for r in ("0", "1") for g, lr in EXPECTED.items()})
    assert all(set(s["metric"]) == {"job_id", "param_group", "rank"} for s in series)
    # Scraped from Ray's metrics agent, found through Ray's service-discovery file.
    targets = stack.prometheus.get("/api/v1/targets")["activeTargets"]
    ray_up = [t for t in targets if t["labels"]["job"] == "ray" and t["health"] == "up"]
    assert ray_up and all(
        t["discoveredLabels"]["__meta_filepath"].endswith("prom_metrics_service_discovery.json")
        for t in ray_up
    )
    lrctl_up = [t for t in targets if t["labels"]["job"] == "lrctl"]
    assert [t["health"] for t in lrctl_up] == ["up"]


def test_every_dashboard_query_runs_and_returns_data(stack: Stack) -> None:
    model = dashboard()
    checked = 0
    for panel in model["panels"]:
        for item in [panel, *panel.get("panels", [])]:
            for target in item.get("targets", []):
                expr = substitute(target["expr"], [JOB, IDLE])
                if target.get("instant"):
                    result = stack.prometheus.instant(expr)
                    values = [float(r["value"][1]) for r in result]
                else:
                    result = stack.prometheus.range(expr, stack.started)
                    values = [float(v) for r in result for _, v in r["values"]]
                where = f"{item['title']!r} {target['refId']}: {expr}"
                assert result, f"no data for {where}"
                assert any(math.isfinite(v) for v in values), f"only NaN for {where}"
                checked += 1
    assert checked >= 20
    variable = next(v for v in model["templating"]["list"] if v["name"] == "job_id")
    assert variable["query"]["query"] == "label_values(lrctl_schedule_version, job_id)"
    values = stack.prometheus.get(
        "/api/v1/label/job_id/values", **{"match[]": "lrctl_schedule_version"}
    )
    assert {JOB, IDLE} <= set(values)


def test_panels_that_answer_operational_questions(stack: Stack) -> None:
    def values(title: str, ref: str, *labels: str) -> dict[tuple[str, ...], float]:
        target = next(t for t in panel_targets(title) if t["refId"] == ref)
        series = stack.prometheus.range(substitute(target["expr"], [JOB, IDLE]), stack.started)
        return {tuple(s["metric"].get(n, "") for n in labels): last_finite(s) for s in series}

    assert values("Workers (world size)", "A", "job_id") == {(JOB,): 2, (IDLE,): 0}
    streams = values("Watch streams", "A", "job_id")
    assert streams[(IDLE,)] == 0 and streams[(JOB,)] >= 1  # 1 per job, or 1 per rank
    divergences = values("Pending overrides and divergences", "B", "job_id")
    assert divergences == {(JOB,): 0, (IDLE,): 0}
    ops = stack.prometheus.instant(
        substitute('sum by (job_id, op) (lrctl_overrides_total{job_id=~"$job_id"})', [JOB, IDLE])
    )
    assert by_labels(ops, "job_id", "op") == {(JOB, "scale"): 2, (IDLE, "clear"): 1}
    errors = values("RPC errors by code", "A", "grpc_method", "grpc_code")
    assert ("GetJob", "NOT_FOUND") in errors, errors
    latency = values("Override apply latency", "A")
    assert 0 < latency[()] < 30  # accepted -> applied by the ranks, in seconds


def test_rules_load_and_evaluate_on_live_data(stack: Stack) -> None:
    groups = stack.prometheus.get("/api/v1/rules")["groups"]
    names = {g["name"] for g in groups}
    assert names == {"lrctl.records", "lrctl.alerts"}
    rules = [r for g in groups for r in g["rules"]]
    assert rules and all(r["health"] == "ok" for r in rules), [
        (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ]
    recorded = by_labels(
        stack.prometheus.instant(f'job_id_param_group:lrctl_learning_rate:max{{job_id="{JOB}"}}'),
        "param_group",
    )
    assert recorded == pytest.approx({(g,): lr for g, lr in EXPECTED.items()})
    firing = [r["name"] for r in rules if r.get("type") == "alerting" and r["state"] == "firing"]
    assert firing == []


def test_training_run_ends_with_the_same_lrs(stack: Stack) -> None:
    stack.release.touch()
    assert stack.fit_thread is not None
    stack.fit_thread.join(120)
    assert not stack.fit_thread.is_alive()
    assert stack.fit.get("error") is None, stack.fit
    rank0 = stack.fit["value"]
    assert rank0["released"] and rank0["step"] == STEPS
    assert rank0["lrs"] == pytest.approx([EXPECTED["0"], EXPECTED["1"]], rel=1e-12)
