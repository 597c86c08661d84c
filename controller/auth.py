"""Authentication and authorization: one interceptor, one table from method to roles.

With tokens configured, every ``lrctl.v1.LRController`` call needs the metadata
``authorization: Bearer <token>``; the token's role must be one :data:`METHOD_ROLES` lists
for the method. Health checks and reflection never need a token. A method missing from the
table is refused (fail closed), and a test checks that the table covers the whole service.

Roles (:mod:`controller.config`): ``admin`` may call everything; ``operator`` creates,
recreates, overrides, finishes and reads jobs; ``worker`` is what a training run's rank 0
holds: it creates or attaches to a job (never recreates one), watches it and reports;
``reader`` only reads.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import grpc

from controller.config import ADMIN, OPERATOR, READER, WORKER
from controller.errors import PermissionDenied, Unauthenticated
from controller.interceptors import Behavior, rewrap

if TYPE_CHECKING:
    from controller.interceptors import Continuation, Handler

__all__ = ["METHOD_ROLES", "RECREATE_ROLES", "AuthInterceptor", "Authenticator"]

_READ = frozenset({ADMIN, OPERATOR, READER})

#: Method of ``lrctl.v1.LRController`` -> the roles that may call it.
METHOD_ROLES: Mapping[str, frozenset[str]] = MappingProxyType({
    "CreateJob": frozenset({ADMIN, OPERATOR, WORKER}),  # with `replace`: RECREATE_ROLES
    "GetJob": _READ,
    "ListJobs": _READ,
    "History": _READ,
    "Preview": _READ,
    "Watch": _READ | {WORKER},
    "Override": frozenset({ADMIN, OPERATOR}),
    "FinishJob": frozenset({ADMIN, OPERATOR}),
    "Report": frozenset({ADMIN, WORKER}),
})
#: CreateJob with ``replace`` recreates a job (a new schedule, an empty log): not a worker's.
RECREATE_ROLES = frozenset({ADMIN, OPERATOR})


def _roles_for(method: str, request: Any) -> frozenset[str]:
    roles = METHOD_ROLES.get(method, frozenset())
    if method == "CreateJob" and getattr(request, "replace", False):
        roles = roles & RECREATE_ROLES
    return roles


class Authenticator:
    """Checks bearer tokens against ``tokens`` (token -> role); no tokens, no checks."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = dict(tokens)

    @property
    def enabled(self) -> bool:
        """Whether any token is configured."""
        return bool(self._tokens)

    def role(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        """Return the role of the call's bearer token.

        Raises:
            Unauthenticated: no ``authorization: Bearer`` header, or an unknown token.
        """
        header = ""
        for key, value in metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("expected metadata 'authorization: Bearer <token>', got "
                                  + ("none" if not header else "another scheme"))
        role = None
        for known, known_role in self._tokens.items():
            # Compare every token in constant time: no timing hints about valid prefixes.
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                role = known_role
        if role is None:
            raise Unauthenticated("expected a known bearer token, got an unknown one")
        return role

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None, method: str,
              request: Any = None) -> None:
        """Raise unless the call's token may call ``method`` with ``request``.

        Raises:
            Unauthenticated: see :meth:`role`.
            PermissionDenied: the token's role is not allowed to make this call.
        """
        if not self._tokens:
            return
        role = self.role(metadata)
        allowed = _roles_for(method, request)
        if role not in allowed:
            what = f"{method} with replace" if allowed != METHOD_ROLES.get(method) else method
            needed = " or ".join(repr(r) for r in sorted(allowed)) or "no role (unknown method)"
            raise PermissionDenied(f"{what} needs role {needed}; the token has role {role!r}")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Applies an :class:`Authenticator` to every call of ``service`` (before its handler).

    The check runs inside the handler, after the request is decoded, because CreateJob's
    roles depend on ``replace``; its errors reach the client through
    :class:`controller.interceptors.StatusInterceptor`.
    """

    def __init__(self, authenticator: Authenticator, service: str) -> None:
        self._auth = authenticator
        self._service = service

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails,
                                ) -> Handler | None:
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if handler is None or service != self._service or not self._auth.enabled:
            return handler
        check = self._auth.check

        def wrap(behavior: Behavior, stream: bool) -> Behavior:
            async def unary(request: Any, context: Any) -> Any:
                check(context.invocation_metadata(), method, request)
                return await behavior(request, context)

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                check(context.invocation_metadata(), method, request)
                async for response in behavior(request, context):
                    yield response

            return streaming if stream else unary

        return rewrap(handler, wrap)
