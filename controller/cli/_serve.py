"""``lrctl serve``: run the controller in the foreground until SIGTERM or Ctrl-C.

The one way to run the controller from a shell. The flags are
:func:`controller.config.add_server_arguments` plus ``--log-level``. The server modules are
imported only when ``serve`` runs, so the client commands never load them.
"""

from __future__ import annotations

import argparse
import logging

__all__ = ["LOG_LEVELS", "add_arguments", "run"]

LOG_LEVELS = ("debug", "info", "warning", "error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``lrctl serve`` flags to ``parser``."""
    from controller.config import add_server_arguments

    add_server_arguments(parser)
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="controller log level (default info)",
    )


def run(args: argparse.Namespace) -> int:
    """Build the :class:`controller.config.ServerConfig` and serve; return the exit code.

    Raises:
        ValueError: an invalid flag value or token file (exit code 2).
    """
    from lrctl.extras import requires_extra

    with requires_extra("controller", "lrctl serve"):  # the one line a client install shows
        from controller.config import ServerConfig
        from controller.logs import configure_logging
        from controller.server import serve

    config = ServerConfig.from_args(args)
    configure_logging(getattr(logging, args.log_level.upper()))
    return serve(config)
