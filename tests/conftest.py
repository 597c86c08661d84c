"""Shared fixtures: real controllers on loopback port 0, real SQLite files, fresh registries.

Two ways to run a controller:

* ``controller`` / ``start_controller`` (async tests): the controller runs on the test's
  own event loop; talk to it with ``stub`` (a ``grpc.aio`` stub) or a channel of your own.
* ``running_server`` (sync tests, e.g. the CLI's): the controller runs on a private event
  loop in a background thread, so a test may block (``subprocess.run``, the synchronous
  ``controller.client.Client``) while it serves. Parametrize it indirectly with
  ``ServerConfig`` overrides, e.g. ``@pytest.mark.parametrize("running_server",
  [{"tokens": {"t": "admin"}}], indirect=True)``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from hypothesis import settings
from prometheus_client import CollectorRegistry

from controller.config import ServerConfig
from controller.server import Controller, start
from lrctl.constants import CLIENT_CHANNEL_OPTIONS
from lrctl.v1 import lrctl_pb2_grpc

T = TypeVar("T")

# CI runs the hypothesis tests derandomized, so a submission's result does not depend on the
# draw; locally they explore new examples on every run (and remember failures).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

#: Heartbeat used by test controllers: short enough to observe, long enough not to flood.
TEST_HEARTBEAT_SECONDS = 0.2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run ``soak`` tests (long fault runs, >= 20 repetitions) only with ``LRCTL_SOAK=1``.

    The documented slow mode (DESIGN "Slow tests"): without it they are deselected, not
    skipped; CI runs the short variants of the same tests.
    """
    if os.environ.get("LRCTL_SOAK") == "1":
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh Prometheus registry (never the global one)."""
    return CollectorRegistry()


@pytest.fixture
def server_config(tmp_path: Path) -> ServerConfig:
    """A config for tests: loopback, free ports, a SQLite file in ``tmp_path``."""
    return ServerConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        db=str(tmp_path / "lrctl.db"),
        heartbeat_seconds=TEST_HEARTBEAT_SECONDS,
        grace_seconds=0.5,
    )


@pytest.fixture
async def start_controller(
    server_config: ServerConfig,
    registry: CollectorRegistry,
) -> AsyncIterator[Callable[..., Awaitable[Controller]]]:
    """Start controllers on the test's loop: ``await start_controller(**config_overrides)``.

    Each gets ``server_config`` with the overrides applied. The first one registers its
    metrics on the test's ``registry``, later ones on fresh registries, unless
    ``registry=`` is passed. All still running are stopped at teardown.
    """
    started: list[Controller] = []
    default_registry = registry

    async def factory(registry: CollectorRegistry | None = None, **overrides: Any) -> Controller:
        config = ServerConfig(**{**_fields(server_config), **overrides})
        if registry is None:
            registry = CollectorRegistry() if started else default_registry
        ctl = await start(config, registry=registry)
        started.append(ctl)
        return ctl

    yield factory
    for ctl in started:
        await ctl.stop(0)


@pytest.fixture
async def controller(start_controller: Callable[..., Awaitable[Controller]]) -> Controller:
    """A running controller on the test's loop (``server_config``, ``registry``)."""
    return await start_controller()


@pytest.fixture
async def channel(controller: Controller) -> AsyncIterator[grpc.aio.Channel]:
    """A ``grpc.aio`` channel to ``controller`` with the recommended client options."""
    async with grpc.aio.insecure_channel(
        controller.address, options=list(CLIENT_CHANNEL_OPTIONS)
    ) as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> lrctl_pb2_grpc.LRControllerStub:
    """The generated LRController stub on ``channel``."""
    return lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]


@dataclass
class RunningServer:
    """A controller serving from a background thread (see :func:`running_server`).

    Attributes:
        address: ``127.0.0.1:PORT`` to dial.
        port: The gRPC port.
        metrics_port: The Prometheus exposition port (None if disabled).
        config: The config it runs with (``config.db`` is the SQLite file).
        controller: The controller; call its async API only through :meth:`call`.
    """

    address: str
    port: int
    metrics_port: int | None
    config: ServerConfig
    controller: Controller
    loop: asyncio.AbstractEventLoop

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the server's loop and return its result (e.g. service calls)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class ServerThread:
    """Context manager: a controller on a private event loop in a daemon thread.

    Args:
        config: What to start (use port 0 and a temporary db in tests).
        registry: Metrics registry; a fresh one when None.
    """

    def __init__(self, config: ServerConfig, registry: CollectorRegistry | None = None) -> None:
        self._config = config
        self._registry = registry
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="lrctl-test-server", daemon=True)
        self._stop: asyncio.Event | None = None
        self._server: RunningServer | None = None
        self._error: BaseException | None = None

    def _main(self) -> None:
        async def run() -> None:
            try:
                ctl = await start(self._config, registry=self._registry)
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._stop = asyncio.Event()
            self._server = RunningServer(
                ctl.address,
                ctl.port,
                ctl.metrics_port,
                self._config,
                ctl,
                asyncio.get_running_loop(),
            )
            self._ready.set()
            await self._stop.wait()
            await ctl.stop(0)

        asyncio.run(run())

    def __enter__(self) -> RunningServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the controller thread did not start within 30 s")
        if self._error is not None:
            raise self._error
        if self._server is None or self._stop is None:
            raise RuntimeError("the controller thread started without a server")
        return self._server

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None and self._stop is not None:
            self._server.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture
def running_server(
    request: pytest.FixtureRequest, server_config: ServerConfig
) -> Iterator[RunningServer]:
    """A controller serving from a background thread for the whole test.

    Indirect parametrization passes ``ServerConfig`` overrides (a dict).
    """
    overrides: dict[str, Any] = getattr(request, "param", None) or {}
    config = ServerConfig(**{**_fields(server_config), **overrides})
    with ServerThread(config) as server:
        yield server


def _fields(config: ServerConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


async def expect_status(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Await ``call`` and return its error, failing unless it ends with ``code``."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, (info.value.code(), info.value.details())
    return info.value
