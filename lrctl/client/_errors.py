"""The one error of the client: :class:`ClientError`, and the mapping from gRPC errors."""

from __future__ import annotations

from typing import Any

import grpc

from lrctl.constants import REASON_METADATA_KEY
from lrctl.errors import LrctlError

__all__ = ["TRANSIENT_CODES", "ClientError", "from_rpc_error"]

#: Status codes after which the same call may succeed later (the controller restarts, a
#: network blip, a limit that frees up): reports are retried, Watch followers reconnect.
TRANSIENT_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN", "CANCELLED"}
)


class ClientError(LrctlError):
    """A call to the controller failed, or the client cannot be set up.

    ``str(error)`` is one line meant for people: ``NOT_FOUND: job 'run-9' not found``, or
    ``cannot reach the lrctl controller at 127.0.0.1:50051 (is 'lrctl serve' running?)``,
    while an UNAVAILABLE the controller itself answered (shutting down, its database refusing
    writes) shows its message: ``UNAVAILABLE: database ... is read-only ...``.
    It pickles (``__reduce__``), so it crosses Ray actor and process boundaries intact.

    Attributes:
        code: The gRPC status code's name, e.g. ``"NOT_FOUND"``, ``"INVALID_ARGUMENT"``.
        details: The controller's message, verbatim.
        address: The controller address the call went to.
        reason: Why, where the code alone is ambiguous (the controller's ``lrctl-reason``
            trailing metadata, e.g. :data:`lrctl.constants.REASON_SUPERSEDED`); "" otherwise.
    """

    def __init__(self, code: str, details: str, address: str = "", reason: str = "") -> None:
        self.code = code
        self.details = details
        self.address = address
        self.reason = reason
        super().__init__(_describe(code, details, address, reason))

    @property
    def transient(self) -> bool:
        """True if the same call may succeed later (see :data:`TRANSIENT_CODES`)."""
        return self.code in TRANSIENT_CODES

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.details, self.address, self.reason))


def _describe(code: str, details: str, address: str, reason: str) -> str:
    details = " ".join(details.split())  # one line, whatever the server sent
    where = address or "its address"
    if code == "UNAVAILABLE" and not reason:  # (the controller's own carry a reason)
        return f"cannot reach the lrctl controller at {where} ({_unreachable(details)})"
    if code == "DEADLINE_EXCEEDED":
        return f"DEADLINE_EXCEEDED: the lrctl controller at {where} did not answer in time"
    return f"{code}: {details}" if details else code


def _unreachable(details: str) -> str:
    """Why a controller could not be reached, as far as gRPC's last error tells."""
    low = details.lower()
    for marker in ("tls handshake failed", "ssl handshake failed", "handshake failed"):
        at = low.find(marker)
        if at >= 0:  # e.g. CERTIFICATE_VERIFY_FAILED: the server's certificate is not trusted
            why = details[at + len(marker) :].strip(" :").removesuffix(": OK")
            return f"TLS handshake failed: {why}; check LRCTL_TLS_CA/CERT/KEY"
    if "socket closed" in low:
        # What a client sees when a TLS controller drops its plaintext connection, or a
        # mutual-TLS one refuses its (missing) client certificate.
        return (
            "the connection was closed: is 'lrctl serve' running? With TLS, set "
            "LRCTL_TLS_CA; with mutual TLS also LRCTL_TLS_CERT/KEY, signed by the CA "
            "the controller trusts"
        )
    return "is 'lrctl serve' running?"


def from_rpc_error(error: grpc.RpcError, address: str) -> ClientError:
    """Return the :class:`ClientError` for a failed gRPC call."""
    if isinstance(error, grpc.Call):
        code = error.code()
        return ClientError(
            code.name if code is not None else "UNKNOWN",
            error.details() or "",
            address,
            _reason(error),
        )
    return ClientError("UNKNOWN", str(error), address)


def _reason(call: grpc.Call) -> str:
    """The controller's ``lrctl-reason`` trailing metadata of a failed call, or ""."""
    try:
        trailing = call.trailing_metadata() or ()
    except Exception:  # a call that never reached a server has none
        return ""
    for key, value in trailing:
        if key == REASON_METADATA_KEY:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""
