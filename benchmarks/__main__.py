"""The one benchmark command: ``python -m benchmarks [SECTION ...] [--write] [section options]``.

Each section of ``benchmarks/RESULTS.md`` (worker, controller, replicas, integrations, soak)
is written by its own module ``benchmarks/<section>.py``, which defines::

    TITLE = "Worker: ..."                      # the section's heading
    def add_arguments(parser) -> None: ...     # optional: its own options
    def run(args) -> str: ...                  # measures, returns the section's Markdown body

``python -m benchmarks`` alone runs every section but ``soak``; ``--write`` replaces only
the sections that ran, between their markers in RESULTS.md (``_results.write_section``), so
running one section never erases another's figures.

Examples::

    python -m benchmarks worker --write
    python -m benchmarks worker --quick          # fewer repetitions, nothing written
    python -m benchmarks controller replicas --write
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/__main__.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks._results import RESULTS, SECTIONS, machine, write_section  # noqa: E402

DEFAULT_SECTIONS = [s for s in SECTIONS if s != "soak"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=f"any of {', '.join(SECTIONS)} (default: all but soak)",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"replace the sections that ran in {RESULTS.relative_to(ROOT)}",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions (a smoke run; implies no --write)"
    )
    sections = [a for a in (argv if argv is not None else sys.argv[1:]) if a in SECTIONS]
    modules: dict[str, ModuleType] = {}
    for section in sections or DEFAULT_SECTIONS:
        module = modules[section] = importlib.import_module(f"benchmarks.{section}")
        add = getattr(module, "add_arguments", None)
        if add is not None:
            add(parser.add_argument_group(section))
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; expected {', '.join(SECTIONS)}")
    wanted = args.sections or DEFAULT_SECTIONS
    for section in wanted:
        module = modules[section]
        started = time.monotonic()
        print(f"[{section}] running on {machine()}", file=sys.stderr)
        body = module.run(args)
        print(f"\n## {module.TITLE}\n\n{body}")
        print(f"[{section}] done in {time.monotonic() - started:.0f} s", file=sys.stderr)
        if args.write and not args.quick:
            write_section(section, module.TITLE, body)
            print(f"[{section}] written to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
