"""Domain errors of the controller, one class per gRPC status they map to.

The service layer (:mod:`controller.service`) raises these and never imports grpc; the
server maps each class to its status code in one place
(:func:`controller.interceptors.status_for`).
Messages say what was expected and what came, and are sent to the client verbatim.
"""

from __future__ import annotations

from lrctl.constants import REASON_SUPERSEDED
from lrctl.errors import LrctlError

__all__ = [
    "Conflict",
    "ControllerError",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "StorageFull",
    "StorageUnavailable",
    "Superseded",
    "Unauthenticated",
    "Unavailable",
]


class ControllerError(LrctlError):
    """Root of the errors the controller reports to a client.

    ``reason``, when set, travels to the client as the ``lrctl-reason`` trailing metadata
    (:data:`lrctl.constants.REASON_METADATA_KEY`), so it can tell apart failures that share
    a status code.
    """

    reason: str = ""


class InvalidArgument(ControllerError, ValueError):
    """The request itself is wrong (bad spec, unsafe expression, bad override value)."""


class NotFound(ControllerError, LookupError):
    """No job with that id."""


class FailedPrecondition(ControllerError):
    """The job is not in a state that allows the request (finished, different spec)."""


class Superseded(FailedPrecondition):
    """A report from a run whose attach epoch a newer rank-0 attach superseded."""

    reason = REASON_SUPERSEDED


class Conflict(ControllerError):
    """``expected_version`` does not match the job's version (optimistic concurrency)."""


class ResourceExhausted(ControllerError):
    """A configured limit would be exceeded (events per job, jobs, Watch streams, sizes)."""


class Unauthenticated(ControllerError):
    """No token, or a token the controller does not know."""


class PermissionDenied(ControllerError):
    """The token's role does not allow the request (e.g. a reader calling Override)."""


class Unavailable(ControllerError):
    """The controller is shutting down; retry against the next instance."""


class StorageFull(ResourceExhausted):
    """The database's disk is full: the write was refused and nothing was stored; reads are
    still served."""


class StorageUnavailable(Unavailable):
    """The database refuses writes (a read-only file or file system, an I/O error, closed):
    the write was refused and nothing was stored; reads are still served."""
