"""Server interceptors around every RPC: metrics and the mapping of errors to status codes.

:func:`status_for` is the one place where a domain error becomes a gRPC status: each
:mod:`controller.errors` class has one code; a :class:`~lrctl.errors.SizeLimitError` (a spec
or a group count past a limit) is RESOURCE_EXHAUSTED; any other
:class:`~lrctl.errors.LrctlError` that is a ``ValueError`` (a bad spec, expression or
override, from :mod:`lrctl`) is INVALID_ARGUMENT; a database that cannot be written is
UNAVAILABLE (full: RESOURCE_EXHAUSTED); anything unexpected is INTERNAL with a short message
(the traceback goes to the server log), never UNKNOWN. Every message is cut to
:data:`lrctl.constants.MAX_STATUS_MESSAGE_BYTES`, so an answer always fits in gRPC's headers.

Bytes that do not parse as the method's request message never reach a handler: the request
deserializer of every unary handler (every service's) is wrapped so that the call ends
INVALID_ARGUMENT instead of grpc's UNKNOWN (server reflection's streamed requests too). A
handler of ``lrctl.v1.LRController`` may return its response already serialized (bytes pass
the response serializer as they are). Authentication and roles are :mod:`controller.auth`.

The server installs them outermost first: metrics (sees every final status), status mapping,
then authentication, so a refused call is counted with its code.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from controller.errors import (
    Conflict,
    ControllerError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from controller.metrics import ControllerMetrics
from controller.rows import StoreError
from lrctl.constants import MAX_STATUS_MESSAGE_BYTES, REASON_METADATA_KEY, REASON_UNAVAILABLE
from lrctl.errors import LrctlError, SizeLimitError

__all__ = [
    "Behavior",
    "HandlerInterceptor",
    "MetricsInterceptor",
    "StatusInterceptor",
    "Wrap",
    "bounded",
    "rewrap",
    "status_for",
]

_log = logging.getLogger("lrctl.controller.rpc")

_CODES: tuple[tuple[type[ControllerError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Conflict, grpc.StatusCode.ABORTED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
)

#: A handler's behaviour: ``(request, context) -> response`` or an async iterator of them.
Behavior = Callable[[Any, Any], Any]
#: Wraps a behaviour; ``stream`` says whether it is an async generator (server streaming).
Wrap = Callable[[Behavior, bool], Behavior]
if TYPE_CHECKING:  # grpc's classes are not generic at runtime
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


def bounded(message: str, limit: int = MAX_STATUS_MESSAGE_BYTES) -> str:
    """Return ``message`` cut to ``limit`` UTF-8 bytes (ending in ``...`` when cut)."""
    data = message.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return message
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


def status_for(exc: BaseException, method: str = "") -> tuple[grpc.StatusCode, str]:
    """Return the status code and message a client gets for ``exc``.

    Unexpected exceptions are logged with their traceback and become INTERNAL.
    """
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, bounded(str(exc))
    if isinstance(exc, SizeLimitError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, bounded(str(exc))
    if isinstance(exc, LrctlError) and isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, bounded(str(exc))
    if isinstance(exc, StoreError):  # the database went away (closed, connection lost)
        return grpc.StatusCode.UNAVAILABLE, bounded(
            f"the database is unavailable: {exc}; nothing was written"
        )
    _log.error("internal error in %s", method or "an RPC", exc_info=exc)
    return (
        grpc.StatusCode.INTERNAL,
        f"internal error in {method or 'the controller'} "
        f"({type(exc).__name__}); see the controller log",
    )


def rewrap(
    handler: Handler,
    wrap: Wrap,
    deserializer: Callable[[bytes], Any] | None = None,
    serializer: Callable[[Any], bytes] | None = None,
) -> Handler:
    """Return ``handler`` with its behaviour wrapped (unary-unary and unary-stream RPCs).

    A unary-stream behaviour that writes with ``context.write()`` instead of yielding
    (grpc_health's Watch) is wrapped like a unary one. Client-streaming handlers
    (reflection) come back unchanged. ``deserializer`` and ``serializer`` replace the
    request deserializer and the response serializer.
    """
    decode = deserializer or handler.request_deserializer
    encode = serializer or handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, False),
            request_deserializer=decode,
            response_serializer=encode,
        )
    if handler.unary_stream is not None:
        behavior = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(
            wrap(behavior, inspect.isasyncgenfunction(behavior)),
            request_deserializer=decode,
            response_serializer=encode,
        )
    return handler


class _Undecodable:
    """What a wrapped request deserializer returns for bytes that are not its message."""

    __slots__ = ("error", "size")

    def __init__(self, error: Exception, size: int) -> None:
        self.error = error
        self.size = size


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wrap a request deserializer so that a parse error reaches the behaviour as a value
    (grpc turns an exception raised while deserializing into UNKNOWN)."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or whatever else the parser raises
            return _Undecodable(exc, len(data))

    return deserialize


def _passing_bytes(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """Wrap a response serializer so that a handler may return its response already
    serialized (a large Preview is encoded off the event loop)."""
    if serializer is None:
        return None

    def serialize(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serializer(response)

    return serialize


def _split(method: str) -> tuple[str, str]:
    """``/lrctl.v1.LRController/Watch`` -> (``lrctl.v1.LRController``, ``Watch``)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that replaces each method's handler with :meth:`_intercept`'s."""

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self._intercept(handler, *_split(handler_call_details.method))

    def _intercept(self, handler: Handler, service: str, method: str) -> Handler:
        raise NotImplementedError


class MetricsInterceptor(HandlerInterceptor):
    """Counts every RPC by method and final status and times it (streams: at stream end)."""

    def __init__(self, metrics: ControllerMetrics) -> None:
        self._metrics = metrics

    def _intercept(self, handler: Handler, service: str, method: str) -> Handler:

        @contextlib.contextmanager
        def observed(context: Any) -> Iterator[None]:
            """Time the call and count it under its final status, however it ends."""
            start, error = time.perf_counter(), None
            try:
                yield
            except BaseException as exc:
                error = exc
                raise
            finally:
                if isinstance(error, asyncio.CancelledError):
                    code = "CANCELLED"
                else:
                    status = context.code()
                    ok = error is None or isinstance(error, grpc.aio.AbortError)
                    code = status.name if status is not None else ("OK" if ok else "UNKNOWN")
                self._metrics.observe_rpc(service, method, code, time.perf_counter() - start)

        def wrap(behavior: Behavior, stream: bool) -> Behavior:
            async def unary(request: Any, context: Any) -> Any:
                with observed(context):
                    return await behavior(request, context)

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                with observed(context):
                    async for response in behavior(request, context):
                        yield response

            return streaming if stream else unary

        return rewrap(handler, wrap)


class StatusInterceptor(HandlerInterceptor):
    """Ends a call of ``service`` that raised with the status :func:`status_for` gives.

    Also ends a call of any service whose request bytes do not parse with INVALID_ARGUMENT.

    Args:
        service: Full name of the service whose handlers raise domain errors
            (``lrctl.v1.LRController``); other services keep their own error handling.
    """

    def __init__(self, service: str) -> None:
        self._service = service

    def _intercept(self, handler: Handler, service: str, method: str) -> Handler:
        ours = service == self._service

        async def abort(context: Any, exc: Exception) -> None:
            code, message = status_for(exc, method)
            reason = getattr(exc, "reason", "") if isinstance(exc, ControllerError) else ""
            if code == grpc.StatusCode.UNAVAILABLE and not reason:
                reason = REASON_UNAVAILABLE  # the controller answered: it was reached
            await context.abort(code, message, ((REASON_METADATA_KEY, reason),) if reason else ())

        async def refuse(context: Any, request: _Undecodable) -> None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                bounded(
                    f"expected a serialized {service}/{method} request, got {request.size} bytes "
                    f"that do not parse as one: {request.error}"
                ),
            )

        def wrap(behavior: Behavior, stream: bool) -> Behavior:
            async def unary(request: Any, context: Any) -> Any:
                if isinstance(request, _Undecodable):
                    await refuse(context, request)
                if not ours:
                    return await behavior(request, context)
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await abort(context, exc)
                    raise  # unreachable: abort raises

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    await refuse(context, request)
                try:
                    async for response in behavior(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    if not ours:
                        raise
                    await abort(context, exc)

            return streaming if stream else unary

        if handler.stream_stream is not None:  # reflection: each request checked as it comes
            return _checked_streams(handler, refuse)
        return rewrap(
            handler,
            wrap,
            _tolerant(handler.request_deserializer),
            _passing_bytes(handler.response_serializer) if ours else None,
        )


def _checked_streams(
    handler: Handler, refuse: Callable[[Any, _Undecodable], Awaitable[None]]
) -> Handler:
    """A bidirectional-streaming handler whose requests that do not parse end the call with
    INVALID_ARGUMENT (server reflection's)."""
    behavior: Any = handler.stream_stream  # an async generator function under grpc.aio

    async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Undecodable):
                await refuse(context, request)
            yield request

    async def streams(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for response in behavior(checked(requests, context), context):
            yield response

    return grpc.stream_stream_rpc_method_handler(
        streams,
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
