"""deploy/kubernetes/replicated: valid against the Kubernetes schema (strict), wired together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "replicated"
KUBERNETES_VERSION = "1.31"


def _docs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(ROOT.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


@pytest.mark.parametrize(
    "name,doc",
    [pytest.param(n, d, id=f"{n}:{d['kind']}") for n, d in _docs() if d["kind"] != "Kustomization"],
)
def test_manifest_is_valid(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_drops_the_sqlite_statefulset() -> None:
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text())
    local = {r for r in kustomization["resources"] if not r.startswith("..")}
    assert local == {p.name for p in ROOT.glob("*.yaml")} - {"kustomization.yaml"}
    assert (ROOT / ".." / "controller" / "kustomization.yaml").exists()
    [patch] = kustomization["patches"]
    assert patch["target"]["kind"] == "StatefulSet" and "$patch: delete" in patch["patch"]


def test_replicas_read_the_database_and_password_from_the_secret() -> None:
    docs = dict((d["kind"], d) for _, d in _docs())
    deployment, secret = docs["Deployment"], docs["Secret"]
    assert deployment["spec"]["replicas"] >= 2
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    for name, key in (("LRCTL_DB", "url"), ("PGPASSWORD", "password")):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], key)
    assert secret["stringData"]["url"].startswith("postgresql://")
    assert ":" not in secret["stringData"]["url"].split("//", 1)[1].split("@")[0]  # no password
    assert not any(m["mountPath"] == "/var/lib/lrctl" for m in container["volumeMounts"])
    selector = docs["Service"]["spec"]["selector"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
