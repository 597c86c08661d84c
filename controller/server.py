"""The controller process: gRPC server, health, reflection, metrics endpoint, lifecycle.

``lrctl serve`` (:func:`serve`) is the one way to run it from a shell; once serving it
prints one line to stderr::

    lrctl controller listening on 127.0.0.1:50051 (metrics on 127.0.0.1:9464, db lrctl.db)

(followed by ``, tls`` or ``, mutual tls``, ``, tokens`` and ``, https metrics`` when on).
Outside loopback it refuses to start without TLS and tokens on gRPC and TLS on ``/metrics``
(:func:`controller.config.exposure`), unless ``insecure`` is set; then it warns, once per
exposed port, at WARNING (docs/security.md).

:func:`start` embeds it in a running event loop (tests do). Keepalive and message-size
options are :func:`controller.config.server_channel_options` (the numbers and their
rationale: :mod:`lrctl.constants`). Every ``lrctl.v1.LRController`` call passes three
interceptors, outermost first: metrics, errors to status codes, authentication. On SIGTERM
or SIGINT the health service turns NOT_SERVING, open Watch streams end with UNAVAILABLE
(workers reconnect and resume from their version), in-flight unary calls get
``grace_seconds`` to finish, then the database is closed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import ssl
import sys
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer

from controller.auth import Authenticator, AuthInterceptor
from controller.config import ServerConfig, exposure, server_channel_options
from controller.interceptors import MetricsInterceptor, StatusInterceptor
from controller.metrics import ControllerMetrics, exposition_app
from controller.service import ControllerService
from controller.servicer import LRControllerServicer
from controller.store_api import JobStore, open_store, redact_url
from controller.tls import metrics_ssl_context, server_credentials
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc

__all__ = ["SERVICE_NAME", "Controller", "serve", "start"]

SERVICE_NAME = lrctl_pb2.DESCRIPTOR.services_by_name["LRController"].full_name
_log = logging.getLogger("lrctl.controller.server")

#: ``gc.set_threshold`` of ``lrctl serve``. With Python's default (700, 10, 10) a fan-out to
#: 1,000 Watch streams keeps ~100 k objects alive across young collections, which promote
#: them, and a full collection (~50 ms of a stopped event loop) followed every ~9 events; with
#: 10,000 allocations per young collection they die young and none ran in the same test.
GC_THRESHOLDS = (10_000, 10, 10)


@dataclass(eq=False, kw_only=True)
class Controller:
    """A running controller; build with :func:`start`, stop with :meth:`stop`.

    Attributes:
        config: What it was started with.
        port: The bound gRPC port (the real one when ``config.port`` is 0).
        metrics_port: The bound exposition port, or None when disabled.
        service: The domain service (tests and embedding code may call it directly).
        metrics: The controller's metrics.
        registry: The registry holding them.
        server, health_servicer, store, httpd: Its gRPC server, health service, open store
            and ``/metrics`` server (or None); :meth:`stop` stops and closes them.
    """

    config: ServerConfig = field(repr=False)  # its database URL may hold a password
    port: int
    metrics_port: int | None
    service: ControllerService
    metrics: ControllerMetrics
    registry: CollectorRegistry
    server: grpc.aio.Server = field(repr=False)
    health_servicer: health.aio.HealthServicer = field(repr=False)
    store: JobStore = field(repr=False)
    httpd: Any = field(repr=False)
    _stopping: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    @property
    def address(self) -> str:
        """``host:port`` to dial."""
        return ServerConfig(host=self.config.host, port=self.port).address

    async def stop(self, grace: float | None = None) -> None:
        """Shut down gracefully; safe to call more than once (later calls wait for the first).

        Args:
            grace: Seconds in-flight RPCs get; ``config.grace_seconds`` when None.
        """
        if self._stopping is None:
            wait = self.config.grace_seconds if grace is None else grace
            self._stopping = asyncio.ensure_future(self._stop(wait))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> None:
        _log.info("controller shutting down (grace %.1f s)", grace)
        await self.health_servicer.enter_graceful_shutdown()
        self.service.close()
        await self.server.stop(grace)
        if self.httpd is not None:
            # shutdown() waits for serve_forever's poll loop: keep it off the event loop.
            await asyncio.to_thread(self.httpd.shutdown)
            self.httpd.server_close()
        await self.store.close()

    async def wait_for_termination(self) -> None:
        """Wait until the gRPC server has stopped."""
        await self.server.wait_for_termination()

    async def __aenter__(self) -> Controller:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def start(config: ServerConfig, *, registry: CollectorRegistry | None = None) -> Controller:
    """Open the database, load every job and start serving.

    Args:
        config: Where to listen and store.
        registry: Where to register the metrics; a fresh registry when None (never the
            global one).

    Returns:
        The running controller (use it with ``async with`` or call :meth:`Controller.stop`).

    Raises:
        ValueError: a non-loopback bind without TLS and tokens (and not ``insecure``), or TLS
            files that cannot be loaded.
        StoreError: the database cannot be opened (locked, newer schema, unreadable).
        RuntimeError: the gRPC port cannot be bound.
        OSError: the metrics port cannot be bound.
    """
    problems = exposure(config)
    if problems and not config.insecure:
        raise ValueError(
            "refusing to serve outside loopback unprotected: "
            + "; ".join(problems)
            + ". Give TLS and tokens (docs/security.md), "
            "bind 127.0.0.1, or pass --insecure (LRCTL_INSECURE=1) to accept it"
        )
    for problem in problems:
        _log.warning("INSECURE (--insecure): %s", problem)
    credentials = server_credentials(config)  # a bad TLS file fails before anything starts
    metrics_tls = metrics_ssl_context(config)
    registry = CollectorRegistry() if registry is None else registry
    metrics = ControllerMetrics(registry)
    store = await open_store(config.db)
    server: grpc.aio.Server | None = None
    try:
        service = await ControllerService.open(
            store,
            metrics,
            heartbeat_seconds=config.heartbeat_seconds,
            limits=config.limits,
            max_message_bytes=config.max_message_bytes,
        )
        interceptors = [
            MetricsInterceptor(metrics),
            StatusInterceptor(SERVICE_NAME),
            AuthInterceptor(Authenticator(config.tokens), SERVICE_NAME),
        ]
        server = grpc.aio.server(interceptors=interceptors, options=server_channel_options(config))
        lrctl_pb2_grpc.add_LRControllerServicer_to_server(LRControllerServicer(service), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        port = (
            server.add_insecure_port(config.address)
            if credentials is None
            else server.add_secure_port(config.address, credentials)
        )
        await server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        httpd, metrics_port = None, None
        if config.metrics_port is not None:
            httpd = _start_exposition(
                config.metrics_host or config.host, config.metrics_port, registry, metrics_tls
            )
            metrics_port = int(httpd.server_port)
    except BaseException:
        if server is not None:
            await server.stop(None)
        await store.close()
        raise
    _log.debug("controller listening on %s:%d", config.host, port)
    return Controller(
        config=config,
        port=port,
        metrics_port=metrics_port,
        service=service,
        metrics=metrics,
        registry=registry,
        server=server,
        health_servicer=health_servicer,
        store=store,
        httpd=httpd,
    )


#: Longest a ``/metrics`` client may take to finish its TLS handshake and request.
_METRICS_HANDSHAKE_TIMEOUT_S = 10.0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: Prometheus scrapes every few seconds."""


def _start_exposition(
    host: str, port: int, registry: CollectorRegistry, context: ssl.SSLContext | None = None
) -> ThreadingWSGIServer:
    """Serve ``/metrics`` from a daemon thread; ``port`` 0 picks a free port; HTTPS with
    ``context``.

    prometheus_client's ``start_http_server`` polls for shutdown every 0.5 s; this one
    polls every 50 ms so that :meth:`Controller.stop` is quick. Its TLS wraps the listening
    socket, so a client that connects and never finishes the handshake blocks every scrape;
    here each connection's handshake runs in that connection's own thread, with a timeout.
    """

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def finish_request(self, request: Any, client_address: Any) -> None:
            if context is None:
                super().finish_request(request, client_address)
                return
            request.settimeout(_METRICS_HANDSHAKE_TIMEOUT_S)
            with context.wrap_socket(request, server_side=True) as tls:
                super().finish_request(tls, client_address)

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A failed handshake (a plain-HTTP or certificate-less scraper) is the client's
            # problem: one debug line, not a traceback on stderr.
            _log.debug("metrics request from %s failed: %s", client_address, sys.exc_info()[1])

    httpd = make_server(host, port, exposition_app(registry), Server, handler_class=_QuietHandler)
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="lrctl-metrics",
        daemon=True,
    )
    thread.start()
    return httpd


def serve(config: ServerConfig) -> int:
    """Run the controller until SIGTERM or SIGINT; return the process exit code.

    Prints ``lrctl controller listening on HOST:PORT (metrics on HOST:MPORT, db PATH)``
    to stderr once serving (the bound ports, so ``--port 0`` is usable from scripts).
    """
    return asyncio.run(_serve(config))


async def _serve(config: ServerConfig) -> int:
    try:
        controller = await start(config)
    except Exception as exc:  # StoreError, a port in use, ...: one line, exit 1
        print(f"lrctl controller: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    # Every job loaded at startup lives as long as the process: keep it out of the cyclic
    # garbage collector's full collections (10,000 jobs x 20 events are ~1.3 M tracked
    # objects, ~0.7 s of a stopped event loop per full collection here). Collected first, so
    # nothing already garbage is kept; later objects are collected as usual.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics_host = config.metrics_host or config.host
    where = (
        "metrics off"
        if controller.metrics_port is None
        else f"metrics on {ServerConfig(host=metrics_host, port=controller.metrics_port).address}"
    )
    db = redact_url(config.db)  # a PostgreSQL URL without its password
    security = "".join(
        text
        for text, on in (
            (", mutual tls" if config.tls_client_ca else ", tls", config.tls),
            (", tokens", bool(config.tokens)),
            (", https metrics", config.metrics_tls and controller.metrics_port is not None),
            (", INSECURE", config.insecure and bool(exposure(config))),
        )
        if on
    )
    print(
        f"lrctl controller listening on {controller.address} ({where}, db {db}{security})",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    await controller.stop(config.grace_seconds)
    return 0
