"""The ``lrctl`` argument parser, dispatch and exit codes.

Exit codes: 0 success; 1 the controller refused or could not be reached (NOT_FOUND,
FAILED_PRECONDITION, ABORTED, UNAVAILABLE, ...), a file could not be written, or an extra
the command needs is not installed; 2 bad usage or bad input (argparse errors, a bad spec
or override expression, or the controller answering INVALID_ARGUMENT); 130 interrupted
(Ctrl-C). Errors are one line on stderr, ``lrctl: error: ...``, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from controller.cli import _jobs, _preview, _serve, _watch
from lrctl.client import Client, ClientError
from lrctl.errors import LrctlError

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_JOB_HELP = "job id, e.g. run-42"

_ClientHandler = Callable[[Client, argparse.Namespace], int]


def _with_client(target: _ClientHandler) -> Callable[[argparse.Namespace], int]:
    """Return a handler that runs ``target`` with a :class:`Client` for ``--address``."""

    def handler(args: argparse.Namespace) -> int:
        with Client(args.address) as client:  # LRCTL_ADDRESS, LRCTL_TOKEN, LRCTL_TLS_*
            return target(client, args)

    return handler


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def build_parser(*, serve_flags: bool = True) -> argparse.ArgumentParser:
    """Return the ``lrctl`` parser; each leaf command sets ``handler``.

    Args:
        serve_flags: Add ``lrctl serve``'s flags, which come from the controller package;
            :func:`main` leaves them out for the client commands, so those load nothing of
            the server side.
    """
    address_help = (
        "controller HOST:PORT[,HOST:PORT...] (default: $LRCTL_ADDRESS, else "
        "127.0.0.1:50051); the token comes from $LRCTL_TOKEN, TLS from "
        "$LRCTL_TLS_CA/$LRCTL_TLS_CERT/$LRCTL_TLS_KEY"
    )
    # --address works before or after the command: the leaf copies leave it alone unless set.
    address = argparse.ArgumentParser(add_help=False)
    address.add_argument(
        "--address", metavar="HOST:PORT", default=argparse.SUPPRESS, help=address_help
    )
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON")

    def job_command(
        commands: Any,
        name: str,
        handler: _ClientHandler,
        parents: Sequence[argparse.ArgumentParser] = (address, json_flag),
        **kwargs: Any,
    ) -> argparse.ArgumentParser:
        """Add the command ``name`` on one JOB, which ``handler`` runs with a client."""
        command: argparse.ArgumentParser = commands.add_parser(
            name, parents=list(parents), **kwargs
        )
        command.add_argument("job", metavar="JOB", help=_JOB_HELP)
        command.set_defaults(handler=_with_client(handler))
        return command

    parser = argparse.ArgumentParser(
        prog="lrctl", description="Live learning-rate controller for PyTorch training."
    )
    parser.add_argument("--address", metavar="HOST:PORT", default=None, help=address_help)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the controller",
        description="Run the lrctl controller in the foreground.",
    )
    if serve_flags:
        _serve.add_arguments(serve)
    serve.set_defaults(handler=_serve.run)

    job = commands.add_parser("job", help="create, inspect, list and finish jobs")
    job_commands = job.add_subparsers(dest="job_command", metavar="COMMAND", required=True)
    create = job_command(
        job_commands, "create", _jobs.create, help="create a job (or attach to an identical one)"
    )
    create.add_argument(
        "--schedule", required=True, metavar="SPEC", help="e.g. 'StepLR(step_size=200, gamma=0.5)'"
    )
    _add_base_lr(create)
    create.add_argument(
        "--replace",
        action="store_true",
        help="replace the schedule of an existing job with a different one",
    )
    create.add_argument(
        "--verbose", action="store_true", help="workers log every LR change (torch's verbose)"
    )
    job_command(job_commands, "get", _jobs.get, help="show a job and its override log")
    listing = job_commands.add_parser("list", parents=[address, json_flag], help="list jobs")
    listing.add_argument("--all", action="store_true", help="include finished jobs")
    listing.set_defaults(handler=_with_client(_jobs.list_jobs))
    job_command(job_commands, "finish", _jobs.finish, help="mark a job finished")

    override = job_command(
        commands,
        "override",
        _jobs.override,
        help="change a running job's LR",
        description="Append an override: exactly one of EXPR ('lr /= 2', 'lr *= 0.1', "
        "'lr = 3e-4'), --clear or --schedule SPEC.",
    )
    override.add_argument(
        "expression", metavar="EXPR", nargs="*", help="'lr /= X', 'lr *= X' or 'lr = X'"
    )
    override.add_argument(
        "--clear", action="store_true", help="drop every scale and set: back to the schedule"
    )
    override.add_argument(
        "--schedule", metavar="SPEC", help="follow SPEC from the effective step on"
    )
    override.add_argument(
        "--group", type=int, metavar="N", help="only param group N (default: every group)"
    )
    override.add_argument("--reason", default="", metavar="TEXT", help="why, for the history")
    override.add_argument(
        "--expected-version",
        type=int,
        metavar="V",
        help="refuse (ABORTED) unless the job is at version V",
    )

    job_command(
        commands, "history", _jobs.history, help="show who changed what, when, and at which step"
    )

    watch = job_command(
        commands, "watch", _watch.run, parents=[address], help="follow a job live until it finishes"
    )
    watch.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="refresh step and LR this often between updates (default 1)",
    )

    preview = commands.add_parser(
        "preview",
        help="print a schedule's LRs, with no controller",
        description="Evaluate SPEC locally: row t is each group's LR after t calls of "
        "step() (row 0 = at construction), as torch's get_last_lr().",
    )
    preview.add_argument("spec", metavar="SPEC", help="e.g. 'StepLR(step_size=200, gamma=0.5)'")
    _add_base_lr(preview)
    preview.add_argument("--steps", type=int, required=True, metavar="N", help="rows to print")
    preview.add_argument("--format", choices=_preview.FORMATS, default="table")
    preview.add_argument(
        "--out", metavar="FILE", help=f"write to FILE (png default: {_preview.DEFAULT_PNG})"
    )
    preview.add_argument("--log-scale", action="store_true", help="png: logarithmic LR axis")
    preview.set_defaults(handler=_preview.run)
    return parser


def _add_base_lr(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-lr",
        dest="base_lrs",
        type=float,
        action="append",
        required=True,
        metavar="X",
        help="base LR of a param group; repeat once per group",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lrctl`` with ``argv`` (``sys.argv[1:]`` when None); return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Only `lrctl serve` needs the controller's flags ("serve" anywhere is a cheap, safe test:
    # a job named "serve" merely loads them too).
    parser = build_parser(serve_flags="serve" in argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ClientError as error:
        hint = " (set LRCTL_TOKEN)" if error.code == "UNAUTHENTICATED" else ""
        _error(str(error) + hint)
        return EXIT_USAGE if error.code == "INVALID_ARGUMENT" else EXIT_ERROR
    except (LrctlError, ValueError) as error:  # SpecError, OverrideError, bad flag values
        _error(str(error))
        return EXIT_USAGE
    except ImportError as error:  # an extra that is not installed names itself
        _error(str(error))
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `lrctl preview ... | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as error:
        _error(f"{error.strerror or error}: {error.filename}" if error.filename else str(error))
        return EXIT_ERROR


def _error(message: str) -> None:
    sys.stderr.write(f"lrctl: error: {' '.join(message.split())}\n")
