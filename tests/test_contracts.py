"""The dependency direction is checked: import-linter's contracts in pyproject.toml.

``lrctl`` (the shared core) imports neither ``controller`` nor ``worker``; ``controller`` and
``worker`` never import each other. scripts/test.sh runs ``lint-imports``; these tests show
that the tree keeps the contracts and that a violating import, even a lazy one inside a
function, breaks them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` on the tree at ``root`` (its packages first on ``sys.path``)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_the_contracts() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


@pytest.mark.parametrize(
    ("module", "code", "contract"),
    [
        pytest.param(
            "lrctl/_violation.py",
            "from controller import errors\n",
            "the shared core (lrctl) imports neither controller nor worker",
            id="core-imports-controller",
        ),
        pytest.param(
            "lrctl/_violation.py",
            "def later() -> None:\n    import worker._config  # noqa: F401\n",
            "the shared core (lrctl) imports neither controller nor worker",
            id="core-imports-worker-lazily",
        ),
        pytest.param(
            "worker/_violation.py",
            "import controller.errors\n",
            "controller and worker never import each other",
            id="worker-imports-controller",
        ),
        pytest.param(
            "controller/_violation.py",
            "from worker import _config\n",
            "controller and worker never import each other",
            id="controller-imports-worker",
        ),
    ],
)
def test_a_violating_import_breaks_a_contract(
    tmp_path: Path, module: str, code: str, contract: str
) -> None:
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for package in ("lrctl", "controller", "worker"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    assert lint_imports(tmp_path).returncode == 0  # the copy alone is clean
    (tmp_path / module).write_text(code)
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{contract} BROKEN" in done.stdout
    assert module.removesuffix(".py").replace("/", ".") in done.stdout
