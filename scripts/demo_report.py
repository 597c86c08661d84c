"""The demo's last act: check every rank applied the same LRs, print them, chart them.

Usage: python scripts/demo_report.py --lr-dir DIR --job JOB --out lr_curve.png
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from lrctl.client import Client
from lrctl.plot import plot_lr_curves


def read_rank(path: Path) -> list[tuple[int, float, int]]:
    with path.open() as f:
        return [(int(r["step"]), float(r["lr"]), int(r["version"])) for r in csv.DictReader(f)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr-dir", required=True, type=Path)
    parser.add_argument("--job", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    ranks = [read_rank(p) for p in sorted(args.lr_dir.glob("rank-*.csv"))]
    with Client() as client:
        history = client.history(args.job)
        spec = client.get_job(args.job).schedule
    switch = next((e.effective_step for e in history if e.effective_step is not None), None)

    print(f"-- the LR each rank applied ({len(ranks)} ranks), around the override:")
    print("  step  " + "".join(f"rank {r:<10}" for r in range(len(ranks))) + "version")
    around = range(switch - 3, switch + 3) if switch is not None else range(0, 6)
    for step in around:
        cells = "".join(f"{rank[step][1]:<15.6g}" for rank in ranks)
        print(f"  {step:<6}{cells}{ranks[0][step][2]}")
    identical = all(rank == ranks[0] for rank in ranks[1:])
    print(f"-- per-step LR identical on every rank for all {len(ranks[0])} steps: {identical}")
    if switch is not None:
        print(
            f"-- the override took effect at step {switch} on every rank "
            f"(lrctl history: effective_step={switch})"
        )

    rows = [[lr for _, lr, _ in step_rows] for step_rows in zip(*ranks)]
    markers = [(e.effective_step, e.describe()) for e in history if e.effective_step is not None]
    plot_lr_curves(
        rows,
        title=f"{args.job}: {spec}",
        out=args.out,
        markers=markers,
        group_labels=[f"rank {r}" for r in range(len(ranks))],
    )
    print(f"-- LR curve written to {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
