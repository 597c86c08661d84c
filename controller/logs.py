"""Logging for the controller: logger names and the one-line record of every state change.

Loggers live under ``lrctl.controller``. Each state change (create, override, plateau
reduction, finish) is logged once, at INFO, as ``key=value`` pairs that log pipelines can
parse: ``job=run-42 version=7 op=scale actor=alice reason="loss spike" value=0.5``. Values
with spaces, quotes or ``=`` are quoted; quotes, backslashes and characters that are not
printable (newlines, escape sequences) are backslash-escaped, so a reason cannot forge a line.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["CHANGES", "LOGGER_NAME", "configure_logging", "log_change"]

LOGGER_NAME = "lrctl.controller"
#: State changes (one line each); verbose jobs' LR changes go to ``lrctl.controller.lr``.
CHANGES = logging.getLogger(f"{LOGGER_NAME}.changes")


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(text: str) -> str:
    """Backslash-escape quotes, backslashes and every character that is not printable
    (control characters, line and paragraph separators, format characters), so one change
    is always one line and a value cannot forge another record (``reason="x\\nop=finish"``)."""
    if text.isprintable() and "\\" not in text and '"' not in text:
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(
                f"\\x{code:02x}"
                if code < 0x100
                else f"\\u{code:04x}"
                if code < 0x10000
                else f"\\U{code:08x}"
            )
    return "".join(out)


def _quote(value: object) -> str:
    text = str(value)
    escaped = _escape(text)
    if text and escaped == text and not any(c.isspace() or c == "=" for c in text):
        return text
    return '"' + escaped + '"'


def log_change(
    job_id: str, version: int, op: str, actor: str = "", reason: str = "", **extra: object
) -> None:
    """Log one state change as ``job=... version=... op=... actor=... reason=...``."""
    fields: dict[str, object] = {
        "job": job_id,
        "version": version,
        "op": op,
        "actor": actor,
        "reason": reason,
    }
    fields.update({k: v for k, v in extra.items() if v is not None})
    CHANGES.info(" ".join(f"{k}={_quote(v)}" for k, v in fields.items()))


def configure_logging(level: int = logging.INFO) -> None:
    """Send ``lrctl.*`` records to stderr with timestamps (for ``lrctl serve``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("lrctl")
    root.addHandler(handler)
    root.setLevel(level)
