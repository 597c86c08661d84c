"""deploy/ checked with the real tools and schemas, strictly (unknown keys fail).

* Prometheus: ``promtool check config``, ``check rules``, ``test rules`` (a unit test per
  alert, and a mutated rule fails them).
* Kubernetes: core objects with ``kubernetes-validate --strict`` (Kubernetes 1.30 and 1.37);
  the RayJob, ServiceMonitor and PodMonitor against their CRDs' OpenAPI schemas, vendored in
  tests/schemas (README there: versions), closed so that an unknown key fails.
* Compose: the compose-spec JSON schema. Dockerfiles: hadolint.
* Cross-references that no schema sees: the ServiceMonitor finds the Service and its port,
  probes run the health check, the RayJob carries LRCTL_ADDRESS/LRCTL_JOB in its runtime env
  and the token only through secretKeyRef, images and versions agree.

The dashboard has its own module (tests/test_dashboard.py); the real Prometheus scraping a
live controller and a Ray Train job is tests/test_observability.py.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from controller.metrics import ControllerMetrics
from tests.procs import ROOT

DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
K8S = DEPLOY / "kubernetes"
SCHEMAS = Path(__file__).parent / "schemas"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
KUBERNETES_VERSIONS = ("1.30", "1.37")
CRDS = {
    ("ray.io/v1", "RayJob"): "ray.io_rayjobs.yaml.gz",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml.gz",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml.gz",
}


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(
            f"{name} is not installed (promtool: Debian's prometheus package, "
            "installed by scripts/test.sh; hadolint: the [dev] extra)"
        )
    return found


def run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


# -- Prometheus ----------------------------------------------------------------------------------


def rules() -> dict[str, Any]:
    return yaml.safe_load((PROM / "rules" / "lrctl.rules.yml").read_text())


def alert_names() -> list[str]:
    return [r["alert"] for g in rules()["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_accepts_config_and_rules() -> None:
    done = run(tool("promtool"), "check", "config", "prometheus.yml", cwd=PROM)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout
    done = run(tool("promtool"), "check", "rules", "rules/lrctl.rules.yml", cwd=PROM)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass_and_cover_every_alert() -> None:
    done = run(tool("promtool"), "test", "rules", "tests/lrctl.test.yml", cwd=PROM)
    assert done.returncode == 0, done.stdout + done.stderr
    tests = yaml.safe_load((PROM / "tests" / "lrctl.test.yml").read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert len(alert_names()) >= 8
    for name in alert_names():
        assert name in firing, f"no promtool test shows {name} firing"
        assert name in quiet, f"no promtool test shows {name} staying quiet"


def test_a_changed_rule_fails_its_unit_test(tmp_path: Path) -> None:
    shutil.copytree(PROM, tmp_path / "prometheus")
    path = tmp_path / "prometheus" / "rules" / "lrctl.rules.yml"
    text = path.read_text()
    # Without the workers guard a paused job with a queued override would page someone.
    guarded = (
        "job_id:lrctl_overrides_pending:max > 0\n"
        "          and on (job_id) (job_id:lrctl_workers:max > 0)"
    )
    assert guarded in text
    path.write_text(text.replace(guarded, "job_id:lrctl_overrides_pending:max > 0"))
    done = run(
        tool("promtool"), "test", "rules", "tests/lrctl.test.yml", cwd=tmp_path / "prometheus"
    )
    assert done.returncode != 0 and "LrctlOverrideNotApplied" in done.stdout + done.stderr


def test_rules_aggregate_replicas_and_use_job_id() -> None:
    exprs = [r["expr"] for g in rules()["groups"] for r in g["rules"]]
    for expr in exprs:
        assert not re.search(r"\bjob\s*=~?\s*\"(?!lrctl\")", expr), expr  # only the scrape job
        assert "by (job)" not in expr and 'job="run' not in expr
        check_aggregations(expr)


def test_every_alert_is_documented() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    for name in alert_names():
        assert f"### {name}" in doc, f"docs/operations.md has no section for {name}"
    for rule in (r for g in rules()["groups"] for r in g["rules"] if "alert" in r):
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{rule['alert'].lower()}"
        assert rule["labels"]["severity"] in ("critical", "warning")


#: Counted per replica (each replica's own streams): their total is a sum.
PER_REPLICA_GAUGES = {"lrctl_watch_streams"}


def _series_by_type() -> tuple[set[str], set[str]]:
    """The series the rules and dashboards may read, from the controller's own metrics (and
    the worker's Ray gauge): gauges, and counters and histogram buckets."""
    gauges, counters = {"ray_lrctl_worker_learning_rate"}, set()
    for family in ControllerMetrics(CollectorRegistry()).registry.collect():
        if family.type == "gauge":
            gauges.add(family.name)
        else:
            counters.add(family.name + ("_total" if family.type == "counter" else "_bucket"))
    return gauges - PER_REPLICA_GAUGES, counters


#: Metric types, for the aggregation check (gauges: max; counters and histograms: sum).
GAUGES, COUNTERS = _series_by_type()
_AGG = re.compile(r"\b(sum|max|min|avg|count)\s+by\s*\(([^)]*)\)\s*\(")


def check_aggregations(expr: str) -> None:
    """Every lrctl metric in ``expr`` sits inside the aggregation its type needs."""
    for match in re.finditer(r"\b(ray_lrctl_\w+|lrctl_\w+)", expr):
        name = match.group(1)
        if name not in GAUGES | PER_REPLICA_GAUGES | COUNTERS:
            continue
        before = list(_AGG.finditer(expr[: match.start()]))
        if not before:
            continue  # e.g. changes() over a recorded series: recording rules aggregate
        op = before[-1].group(1)
        want = "max" if name in GAUGES else "sum"
        assert op == want, f"{name} is aggregated with {op} by, expected {want} by: {expr}"


# -- Kubernetes ----------------------------------------------------------------------------------


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def core_objects() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.relative_to(K8S)}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path, doc in manifests()
        if (doc["apiVersion"], doc["kind"]) not in CRDS
    ]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_are_valid_kubernetes_strictly(version: str) -> None:
    objects = core_objects()
    assert {doc["kind"] for _, doc in objects} >= {"Namespace", "Secret", "Service", "StatefulSet"}
    for name, doc in objects:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} is not valid Kubernetes {version}: {exc.message}")


def test_strict_kubernetes_validation_catches_an_unknown_key() -> None:
    statefulset = copy.deepcopy(by_kind("StatefulSet")[0])
    statefulset["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSIONS[-1], strict=True)


def closed(schema: Any) -> Any:
    """The CRD schema with every object closed to unknown keys (as strict validation is)."""
    if isinstance(schema, dict):
        out = {key: closed(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    data = gzip.decompress((SCHEMAS / CRDS[(api_version, kind)]).read_bytes())
    crd = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    served = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    assert served, f"{kind} {api_version} is not served by the vendored CRD"
    schema = closed(served[0]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


#: ObjectMeta fields a manifest may set (the API server fills the rest).
METADATA_KEYS = {"name", "namespace", "labels", "annotations", "generateName"}


def crd_errors(doc: dict[str, Any]) -> list[str]:
    validator = crd_validator(doc["apiVersion"], doc["kind"])
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]
    unknown = set(doc["metadata"]) - METADATA_KEYS
    if unknown:
        errors.append(f"metadata: unknown keys {sorted(unknown)}")
    return errors


def test_custom_resources_match_their_crds_strictly() -> None:
    found = [(path, doc) for path, doc in manifests() if (doc["apiVersion"], doc["kind"]) in CRDS]
    assert {doc["kind"] for _, doc in found} == {"RayJob", "ServiceMonitor", "PodMonitor"}
    for path, doc in found:
        assert crd_errors(doc) == [], f"{path.relative_to(K8S)}"


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        pytest.param("RayJob", lambda d: d["spec"].update(entrypont="x"), id="rayjob-top"),
        pytest.param(
            "RayJob",
            lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
                "containers"
            ][0].update(envFrm=[]),
            id="rayjob-pod",
        ),
        pytest.param(
            "RayJob", lambda d: d["spec"].update(shutdownAfterJobFinishes="yes"), id="rayjob-type"
        ),
        pytest.param(
            "ServiceMonitor",
            lambda d: d["spec"]["endpoints"][0].update(intervall="1s"),
            id="servicemonitor",
        ),
        pytest.param(
            "PodMonitor", lambda d: d["spec"].update(podMetricEndpoints=[]), id="podmonitor"
        ),
    ],
)
def test_crd_validation_catches_mistakes(kind: str, mutate: Any) -> None:
    doc = copy.deepcopy(by_kind(kind)[0])
    mutate(doc)
    assert crd_errors(doc)


def test_kustomizations_list_every_manifest() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text())["resources"]
        bases = [r for r in listed if (kustomization.parent / r).is_dir()]
        assert all((kustomization.parent / b / "kustomization.yaml").is_file() for b in bases)
        present = sorted(
            p.name for p in kustomization.parent.glob("*.yaml") if p.name != "kustomization.yaml"
        )
        assert sorted(set(listed) - set(bases)) == present, kustomization


def test_controller_manifests_fit_together() -> None:
    (statefulset,) = by_kind("StatefulSet")
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    (monitor,) = by_kind("ServiceMonitor")
    pod = statefulset["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    # The StatefulSet's governing Service exists and is headless.
    assert services[statefulset["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["replicas"] == 1  # SQLite: one writer
    # The ServiceMonitor selects exactly the client Service (not the headless one) and its
    # metrics port; the scrape job (the Service's name) is the one the rules expect.
    selected = [
        name
        for name, s in services.items()
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert selected == ["lrctl"]
    ports = {p["name"] for p in services["lrctl"]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert 'up{job="lrctl"}' in (PROM / "rules" / "lrctl.rules.yml").read_text()
    # Services route to container ports that exist.
    container_ports = {p["name"] for p in container["ports"]}
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    # Probes: the health check over the pod's own TLS (exec; the gRPC probe cannot do TLS).
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:3] == ["python", "-m", "controller.healthcheck"], probe
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LRCTL_DB"].startswith(
        next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data")
    )
    assert {
        "LRCTL_SERVER_TLS_CERT",
        "LRCTL_SERVER_TLS_KEY",
        "LRCTL_TOKEN_FILE",
        "LRCTL_TLS_CA",
    } <= env.keys()
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] != 0
    assert container["resources"]["requests"] and container["resources"]["limits"]
    secrets = {s["metadata"]["name"] for s in by_kind("Secret")}
    assert "lrctl-tokens" in secrets


def test_rayjob_runs_the_example_with_env_and_secret_token() -> None:
    (job,) = by_kind("RayJob")
    spec = job["spec"]
    script = re.search(r"python (\S+)", spec["entrypoint"])
    assert script and script.group(1) == "/home/ray/lrctl/examples/train_ddp.py"
    assert (ROOT / "examples" / "train_ddp.py").exists()
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert set(runtime_env["env_vars"]) == {"LRCTL_ADDRESS", "LRCTL_JOB"}
    assert runtime_env["env_vars"]["LRCTL_ADDRESS"].startswith("lrctl.lrctl.svc:")
    # The token: never in the RayJob's text, from the Secret in every Ray container.
    text = (K8S / "training" / "rayjob.yaml").read_text()
    (secret,) = [s for s in by_kind("Secret") if s["metadata"]["name"] == "lrctl-worker-token"]
    assert secret["stringData"]["token"] not in text
    groups = [spec["rayClusterSpec"]["headGroupSpec"], *spec["rayClusterSpec"]["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            ref = env["LRCTL_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "lrctl-worker-token", "key": "token"}
            assert "value" not in env["LRCTL_TOKEN"]
            assert container["image"].startswith("lrctl-training:")
    # The Ray version KubeRay is told is the one in the training image.
    dockerfile = (DEPLOY / "docker" / "training.Dockerfile").read_text()
    ray_version = re.search(r"rayproject/ray:([\d.]+)-", dockerfile)
    assert ray_version and spec["rayClusterSpec"]["rayVersion"] == ray_version.group(1)


def test_images_carry_the_package_version() -> None:
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version
    images = [c["image"] for _, doc in manifests() for c in _containers(doc)]
    assert images and all(i.endswith(f":{version.group(1)}") for i in images), images


def _containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if doc["kind"] in ("StatefulSet", "Deployment"):
        yield from doc["spec"]["template"]["spec"]["containers"]
    elif doc["kind"] == "RayJob":
        cluster = doc["spec"]["rayClusterSpec"]
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            yield from group["template"]["spec"]["containers"]


# -- Docker --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    done = run(tool("hadolint"), "--no-color", str(dockerfile))
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install lrctl\n")
    done = run(tool("hadolint"), "--no-color", str(bad))
    assert done.returncode != 0 and "DL3006" in done.stdout and "DL3013" in done.stdout


def test_controller_image_is_controller_only_non_root_with_healthcheck() -> None:
    text = (DEPLOY / "docker" / "controller.Dockerfile").read_text()
    installs = re.findall(r"pip install[^\n]*", text)
    assert len(installs) == 1 and "[controller]" in installs[0]
    assert not re.search(r"torch|\bray\b|\[worker|\[all|\[ray", "\n".join(installs))
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    assert re.search(r"^HEALTHCHECK .*\n?.*controller\.healthcheck", text, re.M)
    assert re.search(r'^ENTRYPOINT \["lrctl", "serve"\]', text, re.M)
    # What `[controller]` pulls in: no training stack.
    extra = re.search(
        r"^controller = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S
    )
    assert extra and not re.search(r"torch|\bray\b", extra.group(1))


def test_training_image_is_ray_with_worker_extras() -> None:
    text = (DEPLOY / "docker" / "training.Dockerfile").read_text()
    assert re.search(r"^ARG RAY_IMAGE=rayproject/ray:", text, re.M)
    assert re.search(r'pip install [^\n]*"\./\[worker,ray\]"', text)
    assert "COPY --chown=ray:users examples ./examples" in text


# -- Compose and Grafana provisioning ------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())


def compose_errors(doc: dict[str, Any]) -> list[str]:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/")
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def test_compose_file_matches_the_compose_spec() -> None:
    doc = compose()
    assert compose_errors(doc) == []
    assert set(doc["services"]) == {"controller", "prometheus", "grafana"}
    bad = copy.deepcopy(doc)
    bad["services"]["grafana"]["enviroment"] = {}
    assert compose_errors(bad)


def test_compose_mounts_and_builds_exist() -> None:
    base = DEPLOY / "compose"
    services = compose()["services"]
    build = services["controller"]["build"]
    assert (base / build["context"] / build["dockerfile"]).resolve().is_file()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (base / source).resolve().exists(), volume
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "lrctl.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    assert mounts["../grafana/dashboards"] == path
    assert (DEPLOY / "grafana" / "dashboards" / "lrctl.json").is_file()
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "$PROMETHEUS_URL"
    assert "PROMETHEUS_URL" in services["grafana"]["environment"]
    # Prometheus runs the checked-in config and rules unchanged.
    prom = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert prom["../prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert prom["../prometheus/rules"] == "/etc/prometheus/rules"
