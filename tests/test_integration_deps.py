"""The trainers the integration tests run (Lightning, Transformers) are [dev] dependencies only."""

from __future__ import annotations

import re

import tomllib

from tests.procs import ROOT

FRAMEWORKS = {"lightning", "transformers", "accelerate"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_integration_frameworks_only_in_dev() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    assert _names(extras["dev"]) >= FRAMEWORKS
    assert not FRAMEWORKS & _names(project["dependencies"])
    for extra, requirements in extras.items():
        if extra != "dev":  # worker, ray, all, ...: a training install never pulls them
            assert not FRAMEWORKS & _names(requirements), extra
