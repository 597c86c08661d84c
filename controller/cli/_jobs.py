"""``lrctl job ...``, ``lrctl override`` and ``lrctl history``: one call each to the controller.

The rules (what a valid spec, override or group is) are the core's (:mod:`lrctl.spec`,
:mod:`lrctl.overrides`); these commands only check them early, before any call, to name
the flag at fault, and format what :class:`lrctl.client.Client` returns.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from controller.cli._format import fmt_lrs, fmt_time, print_json, table
from lrctl.client import Client
from lrctl.errors import OverrideError
from lrctl.limits import NO_LIMITS
from lrctl.model import Job
from lrctl.overrides import Event, History, Op, validate_override
from lrctl.spec import parse_spec

__all__ = ["create", "finish", "get", "history", "list_jobs", "override"]


class UsageError(ValueError):
    """Arguments that do not go together."""


def create(client: Client, args: argparse.Namespace) -> int:
    """``lrctl job create JOB --schedule SPEC --base-lr X [...]``."""
    # A clear SpecError before any network call; the size limit is the controller's.
    parse_spec(args.schedule, max_bytes=NO_LIMITS.max_spec_bytes)
    result = client.create_job(
        args.job, args.schedule, args.base_lrs, replace=args.replace, verbose=args.verbose
    )
    job = result.job
    if args.json:
        print_json({"created": result.created, **job.to_dict()}, sys.stdout)
        return 0
    what = "created job" if result.created else "job already exists:"
    print(
        f"{what} {job.job_id} (version {job.version}): {job.schedule}, "
        f"base LRs {fmt_lrs(job.base_lrs)}"
    )
    return 0


def get(client: Client, args: argparse.Namespace) -> int:
    """``lrctl job get JOB``."""
    job = client.get_job(args.job)
    return _show(job, args, describe_job(job))


def list_jobs(client: Client, args: argparse.Namespace) -> int:
    """``lrctl job list [--all]``."""
    jobs = client.list_jobs(include_finished=args.all)
    if args.json:
        print_json([j.to_dict(events=False) for j in jobs], sys.stdout)
        return 0
    if not jobs:
        print("no jobs" if args.all else "no running jobs (--all includes finished ones)")
        return 0
    rows = [
        [
            j.job_id,
            j.state.value,
            str(j.version),
            _step(j.step),
            fmt_lrs(j.lr),
            str(j.workers),
            j.schedule,
        ]
        for j in jobs
    ]
    print(
        table(
            ["JOB", "STATE", "VERSION", "STEP", "LR", "WORKERS", "SCHEDULE"], rows, right={2, 3, 5}
        )
    )
    return 0


def finish(client: Client, args: argparse.Namespace) -> int:
    """``lrctl job finish JOB``."""
    job = client.finish_job(args.job)
    at = "before any step" if job.step < 0 else f"at step {job.step}"
    return _show(job, args, f"finished job {job.job_id} (version {job.version}) {at}")


def override(client: Client, args: argparse.Namespace) -> int:
    """``lrctl override JOB ('lr /= 2' | --clear | --schedule SPEC)``."""
    statement = " ".join(args.expression).strip() or None
    if (statement is not None) + args.clear + (args.schedule is not None) != 1:
        raise UsageError(
            "give exactly one of an expression ('lr /= 2', 'lr *= 0.1', "
            "'lr = 3e-4'), --clear or --schedule SPEC"
        )
    if args.schedule is not None:
        parse_spec(args.schedule, max_bytes=NO_LIMITS.max_spec_bytes)  # as in create
    if args.group is not None:
        try:
            validate_override(Op.CLEAR, group=args.group)
        except OverrideError as error:
            raise UsageError(f"--group: {error}") from None
    result = client.override(
        args.job,
        statement,
        clear=args.clear,
        schedule=args.schedule,
        group=args.group,
        reason=args.reason,
        expected_version=args.expected_version,
    )
    if args.json:
        print_json(
            {"event": result.event.to_dict(), "job": result.job.to_dict(events=False)}, sys.stdout
        )
        return 0
    event, job = result.event, result.job
    when = (
        "pending until the workers apply it"
        if event.pending
        else f"effective at step {event.effective_step}"
    )
    print(f"{job.job_id} version {event.version}: {event.describe()} ({when})")
    print(f"lr now: {fmt_lrs(job.lr)}")
    return 0


def history(client: Client, args: argparse.Namespace) -> int:
    """``lrctl history JOB``."""
    events = client.history(args.job)
    if args.json:
        print_json(events.to_dicts(), sys.stdout)
    elif not events:
        print(f"no overrides for {args.job}")
    else:
        print(events_table(events))
    return 0


def events_table(events: Sequence[Event]) -> str:
    """Return an override log as a table, oldest first."""
    return table(
        ["VERSION", "CHANGE", "EFFECTIVE STEP", "ACTOR", "REASON", "CREATED", "APPLIED"],
        History(events).rows(),
        right={0, 2},
    )


def describe_job(job: Job) -> str:
    """Return a job as a block of ``field  value`` lines, then its override log."""
    lrs = (
        fmt_lrs(job.lr)
        if len(job.lr) == 1
        else "  ".join(f"group {g}: {fmt_lrs([x])}" for g, x in enumerate(job.lr))
    )
    fields = [
        ("job", job.job_id),
        ("state", job.state.value),
        ("schedule", job.schedule),
        ("base LRs", fmt_lrs(job.base_lrs)),
        ("version", str(job.version)),
        ("step", _step(job.step)),
        ("lr", lrs),
        ("workers", str(job.workers)),
        ("created", fmt_time(job.created_at)),
        ("updated", fmt_time(job.updated_at)),
    ]
    width = max(len(name) for name, _ in fields)
    lines = [f"{name.ljust(width)}  {value}" for name, value in fields]
    log = events_table(job.events) if job.events else "no overrides"
    return "\n".join(lines) + "\n\n" + log


def _step(step: int) -> str:
    return "-" if step < 0 else str(step)


def _show(job: Job, args: argparse.Namespace, text: str) -> int:
    """Print ``job`` as JSON with ``--json``, else ``text``."""
    if args.json:
        print_json(job.to_dict(), sys.stdout)
    else:
        print(text)
    return 0
