"""Deprecated location: kept only until its last users move to :mod:`lrctl.convert` and
:mod:`lrctl.constants` (issue 8); then this module is deleted.
"""

from __future__ import annotations

from lrctl.constants import (
    ADDRESS_ENV_VAR,
    CLIENT_CHANNEL_OPTIONS,
    DEFAULT_ADDRESS,
    DEFAULT_MAX_MESSAGE_BYTES,
    TOKEN_ENV_VAR,
)
from lrctl.convert import (
    OP_TO_PROTO,
    PROTO_TO_OP,
    event_from_proto,
    event_to_proto,
    events_from_proto,
)

__all__ = [
    "ADDRESS_ENV_VAR",
    "CLIENT_CHANNEL_OPTIONS",
    "DEFAULT_ADDRESS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "OP_TO_PROTO",
    "PROTO_TO_OP",
    "TOKEN_ENV_VAR",
    "auth_metadata",
    "event_from_proto",
    "event_to_proto",
    "events_from_proto",
]


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Return the call metadata that carries ``token`` (none without a token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()
