"""benchmarks/RESULTS.md: running one section never erases another's figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks._results import write_section


def test_a_section_replaces_only_its_own_span(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    write_section("controller", "Controller", "| a | 1 |", path)
    write_section("worker", "Worker", "| w | 1 |", path)
    write_section("soak", "Soak", "soak figures", path)
    before = path.read_text()
    # The worker section comes first (SECTIONS order), whatever order they were written in.
    assert (
        before.index("BEGIN worker") < before.index("BEGIN controller") < before.index("BEGIN soak")
    )
    write_section("worker", "Worker", "| w | 2 |", path)
    after = path.read_text()
    assert "| w | 2 |" in after and "| w | 1 |" not in after
    # Everything outside the worker span is byte for byte what it was.
    start, end = "<!-- BEGIN worker -->", "<!-- END worker -->"

    def outside(text: str) -> str:
        return text[: text.index(start)] + text[text.index(end) :]

    assert outside(after) == outside(before)


def test_an_unknown_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown section 'gpu'; expected one of worker"):
        write_section("gpu", "GPU", "x", tmp_path / "RESULTS.md")
