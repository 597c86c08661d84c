"""Controller benchmarks that need jobs with history: override cost, throughput, /metrics,
start-up. Used by :mod:`benchmarks.controller` (section ``controller`` of RESULTS.md).

Every database is written here directly with the store's own rows (one transaction, no
fsync: it is set-up, not what is measured); the controller then loads it like any other.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from controller.rows import EVENT_COLUMNS, JOB_COLUMNS, event_to_row, job_to_row
from controller.store import connect, migrate
from lrctl.model import Job
from lrctl.overrides import Event, Op
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc

pb = lrctl_pb2
SCHEDULE = "StepLR(step_size=100, gamma=0.9)"
BASE_LRS = (0.1, 0.01)

_UPSERT = (
    f"INSERT OR REPLACE INTO jobs ({', '.join(JOB_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(JOB_COLUMNS))})"
)
_EVENT = (
    f"INSERT INTO events (job_id, {', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(EVENT_COLUMNS) + 1))})"
)


def _event(version: int, i: int, step: int | None, now: float) -> Event:
    """The i-th event of a benchmark log: a mix of job-wide and per-group ops."""
    kind = i % 5
    if kind == 0:
        op, value, group = Op.SCALE, 0.5, None
    elif kind == 1:
        op, value, group = Op.SCALE, 2.0, None
    elif kind == 2:
        op, value, group = Op.SET, 0.05, 1
    elif kind == 3:
        op, value, group = Op.CLEAR, None, 1
    else:
        op, value, group = Op.SCALE, 0.9, 0
    return Event(
        version=version,
        op=op,
        value=value,
        group=group,
        effective_step=step,
        actor="bench",
        reason=f"benchmark event {i}",
        created_at=now,
        applied_at=None if step is None else now,
    )


def populate(path: Path, jobs: int, events: int, *, prefix: str = "job") -> list[str]:
    """Write ``jobs`` running jobs with ``events`` applied events each (2 param groups).

    Returns:
        The job ids.
    """
    conn = connect(path)
    migrate(conn)
    conn.execute("PRAGMA synchronous = OFF")
    now = time.time()
    ids = []
    conn.execute("BEGIN IMMEDIATE")
    for j in range(jobs):
        job_id = f"{prefix}-{j:05d}"
        ids.append(job_id)
        log = [_event(2 + i, i, 10 * (i + 1), now) for i in range(events)]
        job = Job(
            job_id=job_id,
            schedule=SCHEDULE,
            base_lrs=BASE_LRS,
            version=1 + events,
            created_version=1,
            step=10 * events + 5,
            created_at=now,
            updated_at=now,
            applied_version=1 + events,
        )
        conn.execute(_UPSERT, job_to_row(job))
        conn.executemany(_EVENT, [(job_id, *event_to_row(e)) for e in log])
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    # Written without fsync to be quick: flush it now, or the controller's first commits
    # would pay for writing back megabytes of set-up (its fsync of the database file).
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return ids


def commit_times(path: Path, count: int) -> list[float]:
    """Seconds of ``count`` SQLite commits of one small row each, with the controller's
    settings (WAL, synchronous=FULL): the disk's part of an override."""
    conn = connect(path)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * 200))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - t0)
    conn.close()
    return times


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# -- overrides ---------------------------------------------------------------------------------


async def _override_client(
    address: str,
    job_id: str,
    count: int,
    report_every: int,
    times: list[float],
    reports: list[float],
    start: asyncio.Event,
    epoch: int,
) -> None:
    """Send ``count`` SCALE overrides one after another; every ``report_every``-th one,
    rank 0 then reports it applied (timed separately)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = lrctl_pb2_grpc.LRControllerStub(channel)
        await channel.channel_ready()
        await start.wait()
        for i in range(count):
            request = pb.OverrideRequest(
                job_id=job_id,
                op=pb.OVERRIDE_OP_SCALE,
                value=0.5 if i % 2 else 2.0,
                actor="bench",
                reason="benchmark",
            )
            t0 = time.perf_counter()
            response = await stub.Override(request)
            times.append(time.perf_counter() - t0)
            if report_every and i % report_every == 0:
                version = response.event.version
                t0 = time.perf_counter()
                await stub.Report(
                    pb.ReportRequest(
                        job_id=job_id,
                        rank=0,
                        step=10**6 + version,
                        applied_version=version,
                        epoch=epoch,
                        world_size=1,
                        applied=[
                            pb.AppliedVersion(version=version, effective_step=10**6 + version)
                        ],
                    )
                )
                reports.append(time.perf_counter() - t0)


async def _attach(address: str, job_id: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = lrctl_pb2_grpc.LRControllerStub(channel)
        reply = await stub.CreateJob(
            pb.CreateJobRequest(
                job_id=job_id, schedule=SCHEDULE, base_lrs=list(BASE_LRS), attach=True, world_size=1
            )
        )
        return int(reply.epoch)


def override_run(
    address: str, pid: int, job_id: str, clients: int, per_client: int, *, report_every: int = 0
) -> dict[str, float]:
    """``clients`` concurrent clients (one channel each) overriding ``job_id``.

    Returns:
        p50/p99 latency (ms), overrides/s, controller CPU per override (ms), and the p50 of
        the rank-0 reports that applied them (ms; 0 when none were sent).
    """

    async def main() -> tuple[list[float], list[float], float, float]:
        epoch = await _attach(address, job_id) if report_every else 0
        times: list[float] = []
        reports: list[float] = []
        start = asyncio.Event()
        tasks = [
            asyncio.ensure_future(
                _override_client(
                    address, job_id, per_client, report_every, times, reports, start, epoch
                )
            )
            for _ in range(clients)
        ]
        await asyncio.sleep(0.3)
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        return times, reports, time.perf_counter() - t0, cpu_seconds(pid) - cpu0

    times, reports, wall, cpu = asyncio.run(main())
    n = len(times)
    return {
        "p50": pct(times, 0.5) * 1e3,
        "p99": pct(times, 0.99) * 1e3,
        "rate": n / wall,
        "cpu": cpu / n * 1e3,
        "report_p50": pct(reports, 0.5) * 1e3 if reports else 0.0,
    }


# -- /metrics ----------------------------------------------------------------------------------


_SCRAPER = r"""
import sys, time, urllib.request
url, count = sys.argv[1], int(sys.argv[2])
for _ in range(count):
    line = sys.stdin.readline()
    if not line:
        break
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
    print(f"{time.perf_counter() - t0:.6f} {len(body)}", flush=True)
"""


class _StallMonitor:
    """Measures how late a 1 ms ticker on the event loop wakes up (the loop's stalls)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, loop.time() - t0 - 0.001)

    def start(self) -> None:
        self.worst = 0.0
        self._task = asyncio.ensure_future(self._tick())

    async def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.worst


def metrics_run(db: Path, jobs: int, scrapes: int) -> dict[str, float]:
    """Load ``db`` in an embedded controller and scrape ``/metrics`` from another process.

    Each round first changes every job (a rank-0 report of a new step: its LR and step
    series change), then scrapes once, then scrapes again with nothing changed. A 1 ms ticker
    on the controller's event loop records the longest stall while scrapes run.
    """
    from controller.config import ServerConfig
    from controller.server import start
    from lrctl.model import Report

    async def main() -> dict[str, float]:
        t0 = time.perf_counter()
        ctl = await start(ServerConfig(port=0, metrics_port=0, db=str(db)))
        startup = time.perf_counter() - t0
        page, token = ctl.service.list_jobs(page_size=1000)
        ids = [j.job_id for j in page]
        while token:
            page, token = ctl.service.list_jobs(page_size=1000, page_token=token)
            ids += [j.job_id for j in page]
        url = f"http://127.0.0.1:{ctl.metrics_port}/metrics"
        scraper = subprocess.Popen(
            [sys.executable, "-c", _SCRAPER, url, str(2 * scrapes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert scraper.stdin is not None and scraper.stdout is not None
        monitor = _StallMonitor()
        changed: list[float] = []
        unchanged: list[float] = []
        stalls: list[float] = []
        size = 0
        try:
            for round_ in range(scrapes):
                for i, job_id in enumerate(ids):
                    await ctl.service.report(
                        Report(job_id=job_id, rank=0, step=10**5 + 100 * round_ + i % 7)
                    )
                await asyncio.sleep(0.05)
                for into in (changed, unchanged):
                    monitor.start()
                    scraper.stdin.write("\n")
                    scraper.stdin.flush()
                    line = await asyncio.to_thread(scraper.stdout.readline)
                    stalls.append(await monitor.stop())
                    seconds, size_text = line.split()
                    into.append(float(seconds))
                    size = int(size_text)
            # prometheus_client's own rendering of the same registry, for reference.
            from prometheus_client import generate_latest

            t1 = time.perf_counter()
            reference = generate_latest(ctl.registry)
            generic = time.perf_counter() - t1
        finally:
            scraper.stdin.close()
            scraper.wait(30)
            await ctl.stop(0)
        series = sum(
            1 for line in reference.decode().splitlines() if line and not line.startswith("#")
        )
        return {
            "changed_p50": statistics.median(changed) * 1e3,
            "changed_max": max(changed) * 1e3,
            "unchanged_p50": statistics.median(unchanged) * 1e3,
            "stall_max": max(stalls) * 1e3,
            "bytes": size,
            "series": series,
            "generic": generic * 1e3,
            "startup": startup,
        }

    return asyncio.run(main())


# -- start-up ----------------------------------------------------------------------------------


def startup_run(db: Path) -> dict[str, float]:
    """Start ``lrctl serve`` on ``db``: seconds until it listens, and its RSS then."""
    from tests.procs import ControllerProcess

    t0 = time.perf_counter()
    ctl = ControllerProcess(db).start(timeout=600)
    try:
        seconds = time.perf_counter() - t0
        assert ctl.proc is not None
        rss = rss_bytes(ctl.proc.pid)
    finally:
        ctl.stop()
    return {"seconds": seconds, "rss": rss}


def empty_rss() -> int:
    """RSS of ``lrctl serve`` with an empty database (the baseline of start-up memory)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return int(startup_run(Path(tmp) / "empty.db")["rss"])
