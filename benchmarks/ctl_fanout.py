"""Watch fan-out: an acknowledged override reaching every stream, against a bare grpc.aio push.

S streams watch one job, spread over 4 client processes, one channel (one HTTP/2 connection)
per stream. The main process sends overrides one at a time, spaced apart, and every client
process timestamps each event it reads (``time.perf_counter``: CLOCK_MONOTONIC, one clock for
every process on the machine). Propagation = arrival - the moment the Override was sent.

The baseline is the same measurement against a *bare* grpc.aio server in its own process,
serving the same two methods of the same proto the naive way: every stream is an async
generator that waits on a shared ``asyncio.Event`` and builds and yields its own
``WatchResponse`` (grpc serializes it per stream). Used by :mod:`benchmarks.controller`.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any

import grpc

from benchmarks.ctl_load import cpu_seconds, pct, rss_bytes
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc

pb = lrctl_pb2
W = pb.WatchResponse
CLIENT_PROCESSES = 4
#: Overrides sent and not measured once the streams are open: the servers' first full garbage
#: collection after the streams' objects appeared (~70 ms with 1,000 streams) falls in these.
WARMUP = 3


# -- the bare server ---------------------------------------------------------------------------


class _Bare(lrctl_pb2_grpc.LRControllerServicer):
    """Override bumps a version and wakes every Watch, which builds its own message."""

    def __init__(self) -> None:
        self.version = 1
        self.changed = asyncio.Event()

    async def Override(self, request: pb.OverrideRequest, context: Any) -> pb.OverrideResponse:
        self.version += 1
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()
        return pb.OverrideResponse(event=_event(self.version))

    async def Watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[W]:
        sent = self.version
        yield W(kind=W.KIND_SNAPSHOT, version=sent)
        while True:
            changed = self.changed
            if self.version == sent:
                await changed.wait()
            sent = self.version
            yield W(kind=W.KIND_EVENT, version=sent, event=_event(sent))


def _event(version: int) -> pb.OverrideEvent:
    event = pb.OverrideEvent(
        version=version, op=pb.OVERRIDE_OP_SCALE, value=0.5, actor="bench", reason="benchmark"
    )
    event.created_at.GetCurrentTime()
    return event


def _bare_server(conn: Connection) -> None:
    async def main() -> None:
        from controller.config import ServerConfig, server_channel_options

        server = grpc.aio.server(options=server_channel_options(ServerConfig()))
        lrctl_pb2_grpc.add_LRControllerServicer_to_server(_Bare(), server)  # type: ignore[abstract]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(port)
        await asyncio.to_thread(conn.recv)  # until told to stop
        await server.stop(0)

    asyncio.run(main())


class BareServer:
    """The baseline server in a process of its own (``with BareServer() as bare``)."""

    def __enter__(self) -> BareServer:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_bare_server, args=(child,), daemon=True)
        self.proc.start()
        self.address = f"127.0.0.1:{self._conn.recv()}"
        return self

    @property
    def pid(self) -> int:
        return int(self.proc.pid or 0)

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()


# -- the clients -------------------------------------------------------------------------------


def _client(address: str, job_id: str, count: int, conn: Connection) -> None:
    """Open ``count`` Watch streams (one channel each), report arrivals when told to stop."""

    async def main() -> None:
        channels = [grpc.aio.insecure_channel(address) for _ in range(count)]
        calls = []
        for channel in channels:
            stub = lrctl_pb2_grpc.LRControllerStub(channel)
            call = stub.Watch(pb.WatchRequest(job_id=job_id))
            first: Any = await call.read()
            if first is grpc.aio.EOF or first.kind != W.KIND_SNAPSHOT:
                raise RuntimeError(f"expected a snapshot, got {first}")
            calls.append(call)
        arrivals: dict[int, list[float]] = {}

        async def read(call: Any) -> None:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                if message.kind == W.KIND_EVENT:
                    arrivals.setdefault(message.version, []).append(time.perf_counter())

        readers = [asyncio.ensure_future(read(call)) for call in calls]
        conn.send("ready")
        await asyncio.to_thread(conn.recv)  # until told to stop
        for call in calls:
            call.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for channel in channels:
            await channel.close()
        conn.send(arrivals)

    asyncio.run(main())


def propagation(
    address: str, server_pid: int, job_id: str, streams: int, overrides: int, gap: float
) -> dict[str, float]:
    """Watch ``job_id`` with ``streams`` streams and time ``overrides`` overrides to them.

    Returns:
        p50/p99 over every (stream, override) arrival in ms (from the Override's sending;
        ``ack_p99`` from its acknowledgement), the median over overrides of
        the last stream's arrival, missing arrivals, the server's CPU per stream per event
        (µs, the Override call included) and its RSS per stream (bytes).
    """
    ctx = mp.get_context("spawn")
    rss0 = rss_bytes(server_pid)
    shares = [
        streams // CLIENT_PROCESSES + (i < streams % CLIENT_PROCESSES)
        for i in range(CLIENT_PROCESSES)
    ]
    pipes, procs = [], []
    for share in shares:
        if not share:
            continue
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_client, args=(address, job_id, share, child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not pipe.poll(300):
                raise RuntimeError("a Watch client did not get ready in 300 s")
            pipe.recv()
        time.sleep(0.5)
        rss_per_stream = (rss_bytes(server_pid) - rss0) / streams
        sent: dict[int, float] = {}
        acked: dict[int, float] = {}

        async def send() -> None:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = lrctl_pb2_grpc.LRControllerStub(channel)
                for i in range(WARMUP + overrides):
                    t0 = time.perf_counter()
                    reply = await stub.Override(
                        pb.OverrideRequest(
                            job_id=job_id,
                            op=pb.OVERRIDE_OP_SCALE,
                            value=0.5,
                            actor="bench",
                            reason="benchmark",
                        )
                    )
                    if i >= WARMUP:
                        sent[reply.event.version] = t0
                        acked[reply.event.version] = time.perf_counter()
                    await asyncio.sleep(gap)

        cpu0 = cpu_seconds(server_pid)
        asyncio.run(send())
        time.sleep(min(2.0, 5 * gap))
        cpu = cpu_seconds(server_pid) - cpu0
        arrivals: dict[int, list[float]] = {}
        for pipe in pipes:
            pipe.send("stop")
        for pipe in pipes:
            for version, times in pipe.recv().items():
                arrivals.setdefault(version, []).extend(times)
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    latencies: list[float] = []
    after_ack: list[float] = []
    last: list[float] = []
    missing = 0
    for version, t0 in sent.items():
        times = arrivals.get(version, [])
        missing += streams - len(times)
        latencies += [t - t0 for t in times]
        after_ack += [t - acked[version] for t in times]
        if times:
            last.append(max(times) - t0)
    calls = [acked[v] - t0 for v, t0 in sent.items()] or [0.0]
    return {
        "p50": pct(latencies, 0.5) * 1e3,
        "p99": pct(latencies, 0.99) * 1e3,
        "ack_p99": pct(after_ack, 0.99) * 1e3,
        "call_p50": pct(calls, 0.5) * 1e3,
        "call_max": max(calls) * 1e3,
        "last_p50": pct(last, 0.5) * 1e3,
        "missing": missing,
        "cpu_us": cpu / (len(sent) + WARMUP) / streams * 1e6,
        "rss_per_stream": rss_per_stream,
    }
