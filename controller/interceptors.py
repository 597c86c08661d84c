"""Server interceptors around every RPC: metrics and the mapping of errors to status codes.

:func:`status_for` is the one place where a domain error becomes a gRPC status: each
:mod:`controller.errors` class has one code; an :class:`~lrctl.errors.LrctlError` that is a
``ValueError`` (a bad spec, expression or override, from :mod:`lrctl`) is INVALID_ARGUMENT;
anything unexpected is INTERNAL with a short message (the traceback goes to the server log),
never UNKNOWN. Authentication and roles are :mod:`controller.auth`.

The server installs them outermost first: metrics (sees every final status), status mapping,
then authentication, so a refused call is counted with its code.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
from lrctl.errors import LrctlError

__all__ = ["Behavior", "MetricsInterceptor", "StatusInterceptor", "Wrap", "rewrap", "status_for"]

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


def status_for(exc: BaseException, method: str = "") -> tuple[grpc.StatusCode, str]:
    """Return the status code and message a client gets for ``exc``.

    Unexpected exceptions are logged with their traceback and become INTERNAL.
    """
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, str(exc)
    if isinstance(exc, LrctlError) and isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    _log.error("internal error in %s", method or "an RPC", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {method or 'the controller'} " \
                                     f"({type(exc).__name__}); see the controller log"


def rewrap(handler: Handler, wrap: Wrap) -> Handler:
    """Return ``handler`` with its behaviour wrapped (unary-unary and unary-stream RPCs).

    A unary-stream behaviour that writes with ``context.write()`` instead of yielding
    (grpc_health's Watch) is wrapped like a unary one. Client-streaming handlers
    (reflection) come back unchanged.
    """
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    if handler.unary_stream is not None:
        behavior = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(
            wrap(behavior, inspect.isasyncgenfunction(behavior)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    return handler


def _split(method: str) -> tuple[str, str]:
    """``/lrctl.v1.LRController/Watch`` -> (``lrctl.v1.LRController``, ``Watch``)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC by method and final status and times it (streams: at stream end)."""

    def __init__(self, metrics: ControllerMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails,
                                ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, method = _split(handler_call_details.method)

        def done(context: Any, start: float, error: BaseException | None) -> None:
            if isinstance(error, asyncio.CancelledError):
                code = "CANCELLED"
            else:
                status = context.code()
                ok = error is None or isinstance(error, grpc.aio.AbortError)
                code = status.name if status is not None else ("OK" if ok else "UNKNOWN")
            self._metrics.observe_rpc(service, method, code, time.perf_counter() - start)

        def wrap(behavior: Behavior, stream: bool) -> Behavior:
            async def unary(request: Any, context: Any) -> Any:
                start, error = time.perf_counter(), None
                try:
                    return await behavior(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    done(context, start, error)

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                start, error = time.perf_counter(), None
                try:
                    async for response in behavior(request, context):
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    done(context, start, error)

            return streaming if stream else unary

        return rewrap(handler, wrap)


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Ends a call of ``service`` that raised with the status :func:`status_for` gives.

    Args:
        service: Full name of the service whose handlers raise domain errors
            (``lrctl.v1.LRController``); other services keep their own error handling.
    """

    def __init__(self, service: str) -> None:
        self._service = service

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails,
                                ) -> Handler | None:
        handler = await continuation(handler_call_details)
        service, method = _split(handler_call_details.method)
        if handler is None or service != self._service:
            return handler

        async def abort(context: Any, exc: Exception) -> None:
            code, message = status_for(exc, method)
            await context.abort(code, message)

        def wrap(behavior: Behavior, stream: bool) -> Behavior:
            async def unary(request: Any, context: Any) -> Any:
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await abort(context, exc)
                    raise  # unreachable: abort raises

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    async for response in behavior(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await abort(context, exc)

            return streaming if stream else unary

        return rewrap(handler, wrap)
