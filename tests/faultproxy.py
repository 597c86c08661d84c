"""A small TCP proxy that injects network faults between training ranks and the controller.

:class:`FaultProxy` listens on loopback and forwards every connection to the controller, in
one of four modes that a test switches at any moment:

* ``pass``: forward bytes as they come;
* ``delay``: forward each chunk ``delay_s`` after it arrived (order kept, per direction);
* ``blackhole``: a partition: bytes are held (nothing is read, nothing forwarded) until the
  mode changes; new connections are accepted and held too. TCP then delivers what was held,
  as after a healed partition, unless a keepalive gave up first;
* ``reset``: every open connection is closed at once with a TCP RST (SO_LINGER 0); new
  connections are reset on accept while the mode holds.

It runs its own asyncio loop in a daemon thread, so blocking tests can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from typing import Literal

__all__ = ["FaultProxy", "Mode"]

Mode = Literal["pass", "delay", "blackhole", "reset"]


class FaultProxy:
    """Forward ``127.0.0.1:port`` to ``target`` (``host:port``) with injectable faults."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self.mode: Mode = "pass"
        self.delay_s = 0.2
        self.port = 0
        self.connections = 0  # accepted so far
        self.resets = 0  # connections reset so far
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._changed: asyncio.Event | None = None
        self._links: set[_Link] = set()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def set_mode(self, mode: Mode, delay_s: float | None = None) -> None:
        """Switch the fault mode (thread-safe); ``reset`` resets every open connection now."""

        def apply() -> None:
            if delay_s is not None:
                self.delay_s = delay_s
            self.mode = mode
            if mode == "reset":
                for link in list(self._links):
                    link.reset()
            assert self._changed is not None
            self._changed.set()
            self._changed = asyncio.Event()

        self._loop.call_soon_threadsafe(apply)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop thread ---------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        self._server.close()
        for link in list(self._links):
            link.reset()
        await asyncio.sleep(0)

    async def _wait_while(self, mode: Mode) -> None:
        while self.mode == mode:
            assert self._changed is not None
            await self._changed.wait()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "reset":
            _rst(writer)
            self.resets += 1
            return
        await self._wait_while("blackhole")
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            _rst(writer)
            return
        link = _Link(self, writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(link.pump(reader, up_writer), link.pump(up_reader, writer))
        finally:
            self._links.discard(link)
            link.reset()


class _Link:
    """One proxied connection: client side and controller side."""

    def __init__(
        self, proxy: FaultProxy, down: asyncio.StreamWriter, up: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.writers = (down, up)
        self.closed = False

    def reset(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.resets += 1
        for writer in self.writers:
            _rst(writer)

    async def pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.proxy._wait_while("blackhole")
                if self.closed:
                    return
                dst.write(chunk)
                await dst.drain()

        sender = asyncio.ensure_future(forward())
        try:
            while not self.closed:
                await self.proxy._wait_while("blackhole")
                chunk = await src.read(65536)
                if not chunk:
                    break
                delay = self.proxy.delay_s if self.proxy.mode == "delay" else 0.0
                queue.put_nowait((time.monotonic() + delay, chunk))
            while not queue.empty() and not self.closed:
                await asyncio.sleep(0.01)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            self.reset()


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, not a FIN: the peer sees 'connection reset'."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
