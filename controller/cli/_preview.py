"""``lrctl preview``: evaluate a schedule locally, with no controller."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence

from controller.cli._format import fmt_lr, table
from lrctl.program import preview
from lrctl.spec import parse_spec

__all__ = ["FORMATS", "render_csv", "render_json", "render_table", "run"]

FORMATS = ("table", "json", "csv", "png")
DEFAULT_PNG = "preview.png"
#: A table longer than this shows its first and last rows only.
TABLE_MAX_ROWS = 30
_TABLE_HEAD = 15
_TABLE_TAIL = 10


class UsageError(ValueError):
    """Flags that do not go together."""


def render_json(rows: Sequence[Sequence[float]]) -> str:
    """Return ``{"lr": [[...], ...]}`` with every float written exactly (its repr)."""
    return json.dumps({"lr": [list(row) for row in rows]})


def render_csv(rows: Sequence[Sequence[float]]) -> str:
    """Return ``step,group_0,group_1,...`` then one line per step, floats exact."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", *(f"group_{g}" for g in range(len(rows[0])))])
    writer.writerows([t, *(repr(float(x)) for x in row)] for t, row in enumerate(rows))
    return buffer.getvalue().rstrip("\n")


def render_table(rows: Sequence[Sequence[float]], title: str) -> str:
    """Return a readable table; past :data:`TABLE_MAX_ROWS` rows, the first and last."""
    shown = list(enumerate(rows))
    skipped = 0
    if len(rows) > TABLE_MAX_ROWS:
        skipped = len(rows) - _TABLE_HEAD - _TABLE_TAIL
        shown = shown[:_TABLE_HEAD] + shown[-_TABLE_TAIL:]
    cells = [[str(t), *(fmt_lr(x) for x in row)] for t, row in shown]
    if skipped:
        cells.insert(_TABLE_HEAD, ["...", *("..." for _ in rows[0])])
    headers = ["step", *(f"group {g}" for g in range(len(rows[0])))]
    body = table(headers, cells, right=range(len(headers)))
    footer = (
        f"\n({len(rows)} rows, {skipped} not shown; --format csv or json lists all)"
        if skipped
        else ""
    )
    return f"{title}\n{body}{footer}"


def run(args: argparse.Namespace) -> int:
    """Run ``lrctl preview``.

    Raises:
        SpecError: a bad spec, base LRs or number of steps (exit code 2).
        UsageError: flags that do not go together (exit code 2).
    """
    if args.log_scale and args.format != "png":
        raise UsageError("--log-scale applies to --format png only")
    rows = preview(args.spec, args.base_lrs, args.steps)
    spec = parse_spec(args.spec).to_text()
    lrs = ", ".join(repr(b) for b in args.base_lrs)
    if args.format == "png":
        from lrctl.plot import plot_lr_curves  # matplotlib (the [plot] extra) loads lazily

        out = args.out or DEFAULT_PNG
        plot_lr_curves(rows, title=f"{spec}\nbase LRs: {lrs}", out=out, log_scale=args.log_scale)
        print(f"wrote {out} ({len(rows)} steps, {len(rows[0])} group(s))")
        return 0
    if args.format == "json":
        text = render_json(rows)
    elif args.format == "csv":
        text = render_csv(rows)
    else:
        text = render_table(rows, f"{spec}  base LRs: {lrs}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as file:
            file.write(text + "\n")
        print(f"wrote {args.out} ({len(rows)} steps, {len(rows[0])} group(s))")
    else:
        sys.stdout.write(text + "\n")
    return 0
