"""Authentication and authorization: one interceptor, one table from method to roles.

With tokens configured (:mod:`controller.tokens`), every ``lrctl.v1.LRController`` call needs
the metadata ``authorization: Bearer <token>``; the token's role must be one
:data:`METHOD_ROLES` lists for the method. Health checks and reflection never need a token. A
method missing from the table is refused (fail closed), and a test checks that the table
covers the whole service.

Roles: ``admin`` may call everything; ``operator`` creates, recreates, overrides, finishes and
reads jobs; ``worker`` is what a training run's rank 0 holds: it creates or attaches to a job
(never recreates one), watches it and reports; ``reader`` only reads.

Scopes: a token with ``jobs`` patterns may only name matching job ids (any request with a
``job_id``, else PERMISSION_DENIED, whether the job exists or not), and ListJobs shows it only
those. Identity: with tokens, a request's ``actor`` is replaced by the token's name, so the
override log records who really made each change; :data:`CALLER` holds it for the handler.
"""

from __future__ import annotations

import contextvars
import hmac
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from controller.errors import PermissionDenied, Unauthenticated
from controller.interceptors import Behavior, HandlerInterceptor, rewrap
from controller.tokens import ADMIN, OPERATOR, READER, WORKER, TokenEntry, as_entries, hash_token

if TYPE_CHECKING:
    from controller.interceptors import Handler

__all__ = ["CALLER", "METHOD_ROLES", "RECREATE_ROLES", "SCOPE", "AuthInterceptor", "Authenticator"]

#: The identity of the token behind the current call ("" without tokens), for the handler.
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("lrctl_caller", default="")
#: Which job ids the call's token may see (a scoped token's patterns); None: every job.
SCOPE: contextvars.ContextVar[Callable[[str], bool] | None] = contextvars.ContextVar(
    "lrctl_scope", default=None
)

_READ = frozenset({ADMIN, OPERATOR, READER})

#: Method of ``lrctl.v1.LRController`` -> the roles that may call it.
METHOD_ROLES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "CreateJob": frozenset({ADMIN, OPERATOR, WORKER}),  # with `replace`: RECREATE_ROLES
        "GetJob": _READ,
        "ListJobs": _READ,
        "History": _READ,
        "Preview": _READ,
        "Watch": _READ | {WORKER},
        "Override": frozenset({ADMIN, OPERATOR}),
        "FinishJob": frozenset({ADMIN, OPERATOR}),
        "Report": frozenset({ADMIN, WORKER}),
    }
)
#: CreateJob with ``replace`` recreates a job (a new schedule, an empty log): not a worker's.
RECREATE_ROLES = frozenset({ADMIN, OPERATOR})


def _roles_for(method: str, request: Any) -> frozenset[str]:
    roles = METHOD_ROLES.get(method, frozenset())
    if method == "CreateJob" and getattr(request, "replace", False):
        roles = roles & RECREATE_ROLES
    return roles


class Authenticator:
    """Checks bearer tokens against ``tokens``; no tokens, no checks.

    Args:
        tokens: Token entries (:func:`controller.tokens.load_tokens`) or a ``{token: role}``
            mapping (the older form).
    """

    def __init__(self, tokens: Mapping[str, str] | Iterable[TokenEntry]) -> None:
        self._entries = as_entries(tokens)

    @property
    def enabled(self) -> bool:
        """Whether any token is configured."""
        return bool(self._entries)

    def identify(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> TokenEntry:
        """Return the entry of the call's bearer token.

        Raises:
            Unauthenticated: no ``authorization: Bearer`` header, or an unknown token.
        """
        header = ""
        for key, value in metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "expected metadata 'authorization: Bearer <token>', got "
                + ("none" if not header else "another scheme")
            )
        digest = hash_token(token.strip()).encode()
        found = None
        for entry in self._entries:
            # Compare with every entry in constant time: no timing hints about valid tokens.
            if hmac.compare_digest(entry.sha256.encode(), digest):
                found = entry
        if found is None:
            raise Unauthenticated("expected a known bearer token, got an unknown one")
        return found

    def check(
        self, metadata: Iterable[tuple[str, str | bytes]] | None, method: str, request: Any = None
    ) -> TokenEntry | None:
        """Return who makes the call; raise unless it may call ``method`` with ``request``.

        Returns:
            The token's entry; None when no tokens are configured.

        Raises:
            Unauthenticated: see :meth:`identify`.
            PermissionDenied: the token's role may not make this call, or the request's job
                is outside the token's scope.
        """
        if not self._entries:
            return None
        entry = self.identify(metadata)
        allowed = _roles_for(method, request)
        if entry.role not in allowed:
            what = f"{method} with replace" if allowed != METHOD_ROLES.get(method) else method
            needed = " or ".join(repr(r) for r in sorted(allowed)) or "no role (unknown method)"
            raise PermissionDenied(f"{what} needs role {needed}; the token has role {entry.role!r}")
        job_id = getattr(request, "job_id", None)
        if isinstance(job_id, str) and not entry.covers(job_id):
            shown = job_id if len(job_id) <= 140 else job_id[:137] + "..."
            raise PermissionDenied(
                f"{method} of job {shown!r} is outside the scope of token "
                f"{entry.name!r} (jobs matching "
                f"{', '.join(map(repr, entry.jobs or ()))})"
            )
        return entry


def _take_identity(entry: TokenEntry, request: Any) -> None:
    """The token says who calls: a request's own ``actor`` is replaced, never trusted."""
    CALLER.set(entry.name)
    SCOPE.set(None if entry.jobs is None else entry.covers)
    if "actor" in request.DESCRIPTOR.fields_by_name:
        request.actor = entry.name


class AuthInterceptor(HandlerInterceptor):
    """Applies an :class:`Authenticator` to every call of ``service`` (before its handler).

    The check runs inside the handler, after the request is decoded, because CreateJob's
    roles depend on ``replace`` and scopes on ``job_id``; its errors reach the client through
    :class:`controller.interceptors.StatusInterceptor`.
    """

    def __init__(self, authenticator: Authenticator, service: str) -> None:
        self._auth = authenticator
        self._service = service

    def _intercept(self, handler: Handler, service: str, method: str) -> Handler:
        if service != self._service or not self._auth.enabled:
            return handler
        check = self._auth.check

        def wrap(behavior: Behavior, stream: bool) -> Behavior:
            async def unary(request: Any, context: Any) -> Any:
                entry = check(context.invocation_metadata(), method, request)
                if entry is not None:
                    _take_identity(entry, request)
                return await behavior(request, context)

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                entry = check(context.invocation_metadata(), method, request)
                if entry is not None:
                    _take_identity(entry, request)
                async for response in behavior(request, context):
                    yield response

            return streaming if stream else unary

        return rewrap(handler, wrap)
