"""Regenerate lrctl/v1 from proto/lrctl/v1/*.proto (the only way lrctl/v1 changes).

Usage: python scripts/gen_protos.py [--check]

--check regenerates into a temporary folder and exits 1 if lrctl/v1 differs (CI and
tests/test_generated.py use it).

protoc comes from grpcio-tools; the typed stubs (``*_pb2.pyi``, ``*_pb2_grpc.pyi``) from
mypy-protobuf's ``protoc-gen-mypy`` and ``protoc-gen-mypy_grpc`` plugins. Both are pinned in
the ``[dev]`` extra so that regeneration is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path("lrctl") / "v1"
HEADER = '"""Generated from proto/lrctl/v1 by scripts/gen_protos.py. Do not edit."""\n'


def generate(proto_root: Path, out_root: Path) -> list[Path]:
    """Run protoc (grpcio-tools) on ``proto_root`` into ``out_root``; return the files."""
    from grpc_tools import protoc

    protos = sorted((proto_root / PACKAGE).glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    out_dir = out_root / PACKAGE
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_root}",
        f"--mypy_out=quiet:{out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_grpc_out=quiet:{out_root}",
        *(str(p.relative_to(proto_root)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_dir / "__init__.py").write_text(HEADER)
    return sorted(p for p in out_dir.iterdir() if p.is_file())


def _plugin(name: str) -> str:
    """Return the path of mypy-protobuf's protoc plugin ``name`` (next to this Python first)."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        raise SystemExit(
            f"{name} not found; install the dev tools: pip install -e '.[dev]' "
            "(it comes with mypy-protobuf)"
        )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if lrctl/v1 is stale")
    parser.add_argument(
        "--root",
        type=Path,
        default=ROOT,
        help="the checkout holding proto/ and lrctl/v1 (default: this one)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(args.root / "proto", Path(tmp))
        target = args.root / PACKAGE
        if args.check:
            stale = [
                p.name
                for p in fresh
                if not (target / p.name).exists() or not filecmp.cmp(p, target / p.name, False)
            ]
            extra = sorted({p.name for p in target.glob("*.py*")} - {p.name for p in fresh})
            if stale or extra:
                print(
                    f"lrctl/v1 is stale: differs {stale}, not generated {extra}; "
                    "run python scripts/gen_protos.py",
                    file=sys.stderr,
                )
                return 1
            print("lrctl/v1 is up to date")
            return 0
        for old in target.glob("*.py*"):
            old.unlink()
        target.mkdir(parents=True, exist_ok=True)
        for p in fresh:
            shutil.copy2(p, target / p.name)
        print(f"generated {', '.join(p.name for p in fresh)} in {PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
