"""Logging for the controller: logger names and the one-line record of every state change.

Loggers live under ``lrctl.controller``. Each state change (create, override, plateau
reduction, finish) is logged once, at INFO, as ``key=value`` pairs that log pipelines can
parse: ``job=run-42 version=7 op=scale actor=alice reason="loss spike" value=0.5``.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["CHANGES", "LOGGER_NAME", "configure_logging", "log_change"]

LOGGER_NAME = "lrctl.controller"
#: State changes (one line each); verbose jobs' LR changes go to ``lrctl.controller.lr``.
CHANGES = logging.getLogger(f"{LOGGER_NAME}.changes")


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(c.isspace() or c in '"=' for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def log_change(job_id: str, version: int, op: str, actor: str = "", reason: str = "",
               **extra: object) -> None:
    """Log one state change as ``job=... version=... op=... actor=... reason=...``."""
    fields: dict[str, object] = {"job": job_id, "version": version, "op": op, "actor": actor,
                                 "reason": reason}
    fields.update({k: v for k, v in extra.items() if v is not None})
    CHANGES.info(" ".join(f"{k}={_quote(v)}" for k, v in fields.items()))


def configure_logging(level: int = logging.INFO) -> None:
    """Send ``lrctl.*`` records to stderr with timestamps (for ``lrctl serve``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("lrctl")
    root.addHandler(handler)
    root.setLevel(level)
