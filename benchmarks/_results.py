"""``benchmarks/RESULTS.md``: one section per area, each replaced only by its own run.

A section lives between ``<!-- BEGIN section -->`` and ``<!-- END section -->`` markers;
:func:`write_section` replaces that span (or adds it, in :data:`SECTIONS` order) and keeps
every other byte of the file, so running one section never erases another's figures.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "SECTIONS", "add_options", "machine", "write_section"]

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: The areas, in the order their sections appear in RESULTS.md.
SECTIONS = ["worker", "controller", "replicas", "integrations", "soak"]

_HEADER = """# lrctl benchmarks

Reproduce with `python -m benchmarks [SECTION] --write` (every section but the soak when no
section is named); each section below is replaced only by its own run and says on which
machine it ran. Ratios are measured side by side in one run; absolute times are context.
"""


def add_options(parser: Any, options: Iterable[tuple[str, object, str]]) -> None:
    """Add a section's ``(flag, default, help)`` options; the type is the default's, and
    the help ends with the default."""
    for flag, default, text in options:
        kind = type(default) if isinstance(default, (int, float)) else str
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")


def machine() -> str:
    """One line describing where the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [
        f"{cpu}, {os.cpu_count()} CPUs",
        f"Python {platform.python_version()}",
        f"{platform.system()} {platform.release()}",
    ]
    try:
        import torch

        parts.insert(2, f"torch {torch.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def _markers(section: str) -> tuple[str, str]:
    return f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"


def write_section(section: str, title: str, body: str, path: Path = RESULTS) -> None:
    """Replace ``section``'s span in ``path`` with ``## title`` and ``body``.

    Raises:
        ValueError: unknown section.
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}; expected one of {', '.join(SECTIONS)}")
    begin, end = _markers(section)
    block = f"{begin}\n## {title}\n\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else _HEADER
    span = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if span.search(text):
        text = span.sub(lambda _: block, text, count=1)
    else:
        # Insert before the first section that comes later in SECTIONS, else at the end.
        later = [_markers(s)[0] for s in SECTIONS[SECTIONS.index(section) + 1 :]]
        at = min((text.index(m) for m in later if m in text), default=len(text))
        head, tail = text[:at].rstrip("\n"), text[at:]
        text = f"{head}\n\n{block}\n" + (f"\n{tail}" if tail else "")
    path.write_text(text.rstrip("\n") + "\n")
