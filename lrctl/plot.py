"""Charts of learning-rate curves: ``lrctl preview --format png``, notebooks, the demo.

Rendering uses matplotlib's Agg canvas on a :class:`matplotlib.figure.Figure` built here,
never ``pyplot``: no global figure registry, no GUI backend, safe in threads and servers.
matplotlib is the ``[plot]`` extra (``pip install 'lrctl[plot]'``); it is imported when a
chart is drawn, never when this module is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PLOT_EXTRA_HINT", "lr_figure", "plot_lr_curves", "preview_figure"]

#: What to run when matplotlib is missing.
PLOT_EXTRA_HINT = "pip install 'lrctl[plot]'"

_SIZE_INCHES = (8.0, 4.5)
_DPI = 120
_MARKER_COLOR = "tab:red"
# Groups often share a curve shape; distinct dashes keep an overlapped group visible.
_LINE_STYLES = ("-", "--", "-.", ":")


def lr_figure(
    rows: Sequence[Sequence[float]],
    *,
    title: str,
    log_scale: bool = False,
    markers: Sequence[tuple[int, str]] = (),
    group_labels: Sequence[str] | None = None,
) -> Figure:
    """Draw one LR curve per param group against the step.

    Args:
        rows: Row t holds each group's LR after t calls of ``step()`` (as
            :func:`lrctl.program.preview` returns them).
        title: The chart's title, usually the schedule spec.
        log_scale: Use a logarithmic LR axis (zero LRs are left out of the curve).
        markers: ``(step, label)`` pairs drawn as labelled vertical lines, e.g. overrides.
        group_labels: One legend entry per group; ``group 0``, ``group 1``... by default.

    Returns:
        The figure, attached to an Agg canvas.

    Raises:
        ValueError: no rows, rows of different lengths, or a wrong number of labels.
        ImportError: matplotlib is not installed (``pip install 'lrctl[plot]'``).
    """
    if not rows:
        raise ValueError("expected at least one row of LRs, got none")
    groups = len(rows[0])
    if groups == 0 or any(len(row) != groups for row in rows):
        raise ValueError(f"expected every row to hold {groups or 'at least one'} LR(s)")
    labels = (
        list(group_labels) if group_labels is not None else [f"group {g}" for g in range(groups)]
    )
    if len(labels) != groups:
        raise ValueError(f"expected {groups} group label(s), got {len(labels)}")

    figure_class, canvas_class = _matplotlib()
    figure: Figure = figure_class(figsize=_SIZE_INCHES, dpi=_DPI, layout="constrained")
    canvas_class(figure)
    axes = figure.add_subplot()
    steps = range(len(rows))
    single = len(rows) == 1
    for g, label in enumerate(labels):
        values = [row[g] if not log_scale or row[g] > 0 else math.nan for row in rows]
        axes.plot(
            steps,
            values,
            label=label,
            linewidth=1.6,
            linestyle=_LINE_STYLES[g % len(_LINE_STYLES)],
            marker="o" if single else None,
        )
    if log_scale:
        axes.set_yscale("log")
    axes.set_title(title, fontsize=10, wrap=True)
    axes.set_xlabel("step (calls of scheduler.step())")
    axes.set_ylabel("learning rate")
    axes.set_xlim(0, max(len(rows) - 1, 1))
    axes.grid(True, which="major", alpha=0.3)
    for step, text in markers:
        axes.axvline(step, color=_MARKER_COLOR, linestyle="--", linewidth=1.0, alpha=0.8)
        axes.annotate(
            text,
            xy=(step, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            rotation=90,
            va="top",
            ha="left",
            fontsize=8,
            color=_MARKER_COLOR,
        )
    axes.legend(loc="best", fontsize=9)
    return figure


def plot_lr_curves(
    rows: Sequence[Sequence[float]],
    *,
    title: str,
    out: str | os.PathLike[str] | IO[bytes],
    log_scale: bool = False,
    markers: Sequence[tuple[int, str]] = (),
    group_labels: Sequence[str] | None = None,
) -> None:
    """Write a PNG chart of the LR of each param group against the step.

    Args:
        rows: Row t holds each group's LR after t calls of ``step()``.
        title: The chart's title, usually the schedule spec.
        out: A file path or a binary file object to write the PNG to.
        log_scale: Use a logarithmic LR axis.
        markers: ``(step, label)`` pairs drawn as labelled vertical lines (overrides).
        group_labels: One legend entry per group.

    Raises:
        ValueError: see :func:`lr_figure`.
        OSError: ``out`` cannot be written.
    """
    figure = lr_figure(
        rows, title=title, log_scale=log_scale, markers=markers, group_labels=group_labels
    )
    figure.savefig(out, format="png")


def preview_figure(
    schedule: str,
    base_lrs: Sequence[float],
    steps: int,
    *,
    log_scale: bool = False,
    title: str | None = None,
) -> Figure:
    """Evaluate ``schedule`` locally (:func:`lrctl.program.preview`) and draw it.

    In a notebook the returned figure shows itself::

        from lrctl.plot import preview_figure
        preview_figure("OneCycleLR(max_lr=0.1, total_steps=100)", [0.1], 100)

    Args:
        schedule: A spec, e.g. ``"CosineAnnealingLR(T_max=100)"``.
        base_lrs: One base LR per param group.
        steps: Rows: row t is each group's LR after t calls of ``step()``.
        log_scale: Use a logarithmic LR axis.
        title: The chart's title; the canonical spec and base LRs by default.

    Returns:
        The figure, attached to an Agg canvas (``figure.savefig(...)`` writes it).

    Raises:
        SpecError: invalid spec, base LRs or number of steps.
        ImportError: matplotlib is not installed (``pip install 'lrctl[plot]'``).
    """
    from lrctl.program import preview
    from lrctl.spec import parse_spec

    rows = preview(schedule, base_lrs, steps)
    if title is None:
        lrs = ", ".join(repr(float(b)) for b in base_lrs)
        title = f"{parse_spec(schedule).to_text()}\nbase LRs: {lrs}"
    return lr_figure(rows, title=title, log_scale=log_scale)


def _matplotlib() -> tuple[Any, Any]:
    """Import matplotlib's Figure and Agg canvas, or say which extra installs them."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"drawing LR charts needs matplotlib: {PLOT_EXTRA_HINT}") from error
    return Figure, FigureCanvasAgg
