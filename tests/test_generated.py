"""lrctl/v1 is exactly what scripts/gen_protos.py generates from proto/ (never hand-edited)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.procs import ROOT

SCRIPT = ROOT / "scripts" / "gen_protos.py"


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_generated_code_is_current() -> None:
    done = check(ROOT)
    assert done.returncode == 0, done.stderr


def test_a_stale_generated_package_is_caught(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(
        ROOT / "lrctl" / "v1",
        tmp_path / "lrctl" / "v1",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    proto = tmp_path / "proto" / "lrctl" / "v1" / "lrctl.proto"
    proto.write_text(proto.read_text() + "\nmessage Added { int32 x = 1; }\n")
    done = check(tmp_path)
    assert done.returncode == 1
    assert "lrctl/v1 is stale" in done.stderr and "lrctl_pb2.py" in done.stderr
