"""Replicas: propagation from an acknowledged override to every Watch stream, over replicas.

A real PostgreSQL (tests/pg.py), N ``lrctl serve`` replicas on it, and S Watch streams spread
evenly over the replicas (one client process per replica, several channels each), following
J jobs. Overrides go to the replicas in turn, one at a time; each stream timestamps every
event it receives (``time.perf_counter``, one monotonic clock for every process on the
machine). Reported: the time from the override's acknowledgement (and from its sending) to
its arrival on every stream that follows its job, and how many arrivals were missing (0:
every stream saw every version). Run: ``python -m benchmarks replicas --write``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TITLE = "Replicas: override propagation to every Watch stream over PostgreSQL replicas"

#: Streams per gRPC channel in the client processes (HTTP/2 connections stay moderate).
STREAMS_PER_CHANNEL = 100


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument("--replicas", type=int, default=3, help="controller replicas (3)")
    parser.add_argument("--streams", type=int, default=3000, help="Watch streams in all (3000)")
    parser.add_argument("--jobs", type=int, default=30, help="jobs the streams follow (30)")
    parser.add_argument("--overrides", type=int, default=60, help="overrides sent (60)")


def _client(address: str, jobs: list[str], count: int, ready: Any, stop: Any, results: Any) -> None:
    """One client process: ``count`` streams on one replica, round robin over ``jobs``."""
    import grpc

    from lrctl.constants import CLIENT_CHANNEL_OPTIONS
    from lrctl.v1 import lrctl_pb2 as pb
    from lrctl.v1 import lrctl_pb2_grpc

    arrivals: list[tuple[str, int, float]] = []

    async def main() -> None:
        channels = [
            grpc.aio.insecure_channel(address, options=list(CLIENT_CHANNEL_OPTIONS))
            for _ in range(max(1, -(-count // STREAMS_PER_CHANNEL)))
        ]
        opened = 0

        async def follow(i: int) -> None:
            nonlocal opened
            job = jobs[i % len(jobs)]
            stub = lrctl_pb2_grpc.LRControllerStub(channels[i // STREAMS_PER_CHANNEL])
            call = stub.Watch(pb.WatchRequest(job_id=job))
            async for message in call:
                if message.kind == pb.WatchResponse.KIND_SNAPSHOT:
                    opened += 1
                elif message.kind == pb.WatchResponse.KIND_EVENT:
                    arrivals.append((job, message.version, time.perf_counter()))

        tasks = [asyncio.ensure_future(follow(i)) for i in range(count)]
        while opened < count:
            await asyncio.sleep(0.05)
        ready.put(count)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()

    asyncio.run(main())
    results.put(arrivals)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def measure(replicas: int, streams: int, jobs: int, overrides: int) -> dict[str, Any]:
    """Run the measurement; return the figures (milliseconds)."""
    from lrctl.client import Client
    from tests.pg import PostgresServer
    from tests.procs import ControllerProcess

    job_ids = [f"bench-{j:03d}" for j in range(jobs)]
    with PostgresServer() as pg:
        url = pg.url(pg.create_database())
        ctls = [
            ControllerProcess(url, extra=("--log-level", "warning")).start()
            for _ in range(replicas)
        ]
        ctx = mp.get_context("spawn")
        ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = []
        try:
            with Client(ctls[0].address) as admin:
                for job in job_ids:
                    admin.create_job(job, "StepLR(step_size=1000)", [0.1])
            share = [streams // replicas + (i < streams % replicas) for i in range(replicas)]
            opening = time.perf_counter()
            for ctl, count in zip(ctls, share):
                proc = ctx.Process(
                    target=_client, args=(ctl.address, job_ids, count, ready, stop, results)
                )
                proc.start()
                procs.append(proc)
            for _ in procs:
                ready.get(timeout=600)
            opened_s = time.perf_counter() - opening
            time.sleep(1.0)
            clients = [Client(c.address) for c in ctls]
            sent: dict[tuple[str, int], tuple[float, float]] = {}
            for k in range(overrides):
                job = job_ids[k % jobs]
                start = time.perf_counter()
                reply = clients[k % replicas].override(job, "lr *= 0.99", reason=f"bench {k}")
                sent[job, reply.event.version] = (start, time.perf_counter())
                time.sleep(0.1)
            time.sleep(2.0)
            for client in clients:
                client.close()
            stop.set()
            arrivals: list[tuple[str, int, float]] = []
            for _ in procs:
                arrivals += results.get(timeout=120)
        finally:
            stop.set()
            for proc in procs:
                proc.join(30)
            for ctl in ctls:
                ctl.stop()
    per_job = dict.fromkeys(job_ids, 0)
    for count in share:  # as _client assigns them: round robin over the jobs, per client
        for i in range(count):
            per_job[job_ids[i % jobs]] += 1
    from_ack, from_send = [], []
    for job, version, at in arrivals:
        if (job, version) in sent:
            start, ack = sent[job, version]
            from_ack.append((at - ack) * 1e3)
            from_send.append((at - start) * 1e3)
    expected = sum(per_job[job] for job, _ in sent)
    return {
        "replicas": replicas,
        "streams": streams,
        "jobs": jobs,
        "overrides": overrides,
        "opened_s": opened_s,
        "expected": expected,
        "received": len(from_ack),
        "ack": from_ack,
        "send": from_send,
    }


def _row(name: str, values: list[float]) -> str:
    return (
        f"| {name} | {statistics.median(values):.1f} | {_percentile(values, 0.9):.1f} | "
        f"{_percentile(values, 0.99):.1f} | {max(values):.1f} |"
    )


def run(args: argparse.Namespace) -> str:
    streams, overrides = (300, 15) if args.quick else (args.streams, args.overrides)
    r = measure(args.replicas, streams, args.jobs, overrides)
    missing = r["expected"] - r["received"]
    from benchmarks._results import machine

    return "\n".join(
        [
            f"Machine: {machine()}. Reproduce: `python -m benchmarks replicas --write` "
            f"(options `--replicas`, `--streams`, `--jobs`, `--overrides`).",
            "",
            f"{r['replicas']} `lrctl serve` replicas on one PostgreSQL 15 (a local server, "
            f"fsync on), {r['streams']:,} Watch streams spread evenly over them (one client "
            f"process per replica), following {r['jobs']} jobs ({r['streams'] // r['jobs']} "
            f"streams each); {r['overrides']} overrides sent one at a time (0.1 s apart) to the "
            f"replicas in turn. Each arrival is timed on the machine's monotonic clock; "
            f"everything (PostgreSQL, replicas, clients) shares the machine's CPUs.",
            "",
            "| ms to every stream of the job | p50 | p90 | p99 | max |",
            "|---|---|---|---|---|",
            _row("from the override's acknowledgement", r["ack"]),
            _row("from sending the override", r["send"]),
            "",
            f"Arrivals: {r['received']:,} of {r['expected']:,} expected "
            f"({missing} missing: {'every stream saw every version' if missing == 0 else 'LOST'}). "
            f"Opening the {r['streams']:,} streams took {r['opened_s']:.1f} s. "
            "A negative time from the acknowledgement means the stream had the event before the "
            "client had its reply (the notification reached the replicas first).",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_arguments(parser.add_argument_group("replicas"))
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args()))
