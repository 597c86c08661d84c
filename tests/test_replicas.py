"""Several controller replicas on one PostgreSQL (a real server, tests/pg.py).

In-process replicas (``start_controller(db=pg_url)``: real gRPC servers on one event loop)
for the semantics; real ``lrctl serve`` processes, killed with SIGKILL, for failover.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from controller.server import Controller
from lrctl.client import Client, ClientError, WatchFollower
from lrctl.constants import CLIENT_CHANNEL_OPTIONS
from lrctl.v1 import lrctl_pb2 as pb
from lrctl.v1 import lrctl_pb2_grpc
from tests import pg
from tests._grpc_helpers import applied_report
from tests.conftest import expect_status
from tests.pg import PASSWORD, PostgresServer
from tests.procs import CLI, ControllerProcess, run_captured, wait_for_step
from tests.test_ddp import check_consistent, launch_ranks, read_ranks, wait_ranks

Start = Callable[..., Awaitable[Controller]]
PLATEAU = "ReduceLROnPlateau(factor=0.5, patience=1)"

postgres = pg.postgres  # fixtures: one PostgreSQL server per session
pg_url = pg.pg_url


async def _replicas(start_controller: Start, url: str, n: int) -> list[Controller]:
    return [await start_controller(db=url, metrics_port=None) for _ in range(n)]


def _stub(channel: grpc.aio.Channel) -> lrctl_pb2_grpc.LRControllerStub:
    return lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]


class Stubs:
    """One channel and stub per replica; ``async with`` closes the channels."""

    def __init__(self, replicas: list[Controller]) -> None:
        self.channels = [
            grpc.aio.insecure_channel(r.address, options=list(CLIENT_CHANNEL_OPTIONS))
            for r in replicas
        ]
        self.replicas = replicas
        self.stubs = [_stub(c) for c in self.channels]

    def __getitem__(self, i: int) -> lrctl_pb2_grpc.LRControllerStub:
        return self.stubs[i]

    async def __aenter__(self) -> Stubs:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for channel in self.channels:
            await channel.close()


Cluster = Callable[[int], Awaitable[Stubs]]


@pytest.fixture
def cluster(start_controller: Start, pg_url: str) -> Cluster:
    """``await cluster(n)``: ``n`` in-process replicas on the test database, a stub for each."""

    async def start(n: int) -> Stubs:
        return Stubs(await _replicas(start_controller, pg_url, n))

    return start


async def _create(
    stub: lrctl_pb2_grpc.LRControllerStub,
    job_id: str = "run-1",
    spec: str = "StepLR(step_size=10)",
    base_lrs: tuple[float, ...] = (0.1,),
) -> pb.CreateJobResponse:
    return await stub.CreateJob(
        pb.CreateJobRequest(job_id=job_id, schedule=spec, base_lrs=list(base_lrs))
    )


def _scale(
    job_id: str,
    value: float,
    reason: str = "",
    expected: int | None = None,
) -> pb.OverrideRequest:
    request = pb.OverrideRequest(job_id=job_id, op=pb.OVERRIDE_OP_SCALE, value=value, reason=reason)
    if expected is not None:
        request.expected_version = expected
    return request


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_writes_through_every_replica_get_distinct_versions(cluster: Cluster) -> None:
    async with await cluster(3) as stubs:
        await _create(stubs[0])
        replies = await asyncio.gather(
            *(stubs[i % 3].Override(_scale("run-1", 0.99, reason=f"#{i}")) for i in range(60))
        )
        versions = sorted(r.event.version for r in replies)
        assert versions == list(range(2, 62))  # no version handed out twice, none lost
        for stub in stubs.stubs:  # every replica serves the whole log, in order

            async def complete(stub: lrctl_pb2_grpc.LRControllerStub = stub) -> bool:
                history = await stub.History(pb.HistoryRequest(job_id="run-1"))
                return [e.version for e in history.events] == list(range(2, 62))

            await _eventually(complete)
            history = await stub.History(pb.HistoryRequest(job_id="run-1"))
            assert sorted(e.reason for e in history.events) == sorted(f"#{i}" for i in range(60))


async def test_a_read_on_another_replica_sees_every_acknowledged_write(cluster: Cluster) -> None:
    async with await cluster(2) as stubs:
        await _create(stubs[0], "rw-1")
        for i in range(20):  # write on one replica, read at once on the other: no waiting
            reply = await stubs[i % 2].Override(_scale("rw-1", 0.9, reason=f"#{i}"))
            job = await stubs[(i + 1) % 2].GetJob(pb.GetJobRequest(job_id="rw-1"))
            assert job.version == reply.event.version
            history = await stubs[(i + 1) % 2].History(pb.HistoryRequest(job_id="rw-1"))
            assert history.events[-1].version == reply.event.version
        # A job created on one replica is readable on the other at once.
        await _create(stubs[1], "rw-2")
        job = await stubs[0].GetJob(pb.GetJobRequest(job_id="rw-2"))
        assert job.job_id == "rw-2"


async def test_expected_version_means_the_same_on_every_replica(cluster: Cluster) -> None:
    async with await cluster(2) as stubs:
        version = (await _create(stubs[0])).job.version
        results = await asyncio.gather(
            stubs[0].Override(_scale("run-1", 0.5, expected=version)),
            stubs[1].Override(_scale("run-1", 0.25, expected=version)),
            return_exceptions=True,
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(won) == 1 and len(lost) == 1
        assert lost[0].code() == grpc.StatusCode.ABORTED
        assert won[0].event.version == version + 1
        # The loser retries with what it now reads, on the other replica: accepted.
        await stubs[1].Override(_scale("run-1", 0.25, expected=version + 1))
        await expect_status(
            stubs[0].Override(_scale("run-1", 0.5, expected=version + 1)), grpc.StatusCode.ABORTED
        )


async def test_watchers_on_every_replica_see_every_write_within_milliseconds(
    cluster: Cluster,
) -> None:
    async with await cluster(3) as stubs:
        start = (await _create(stubs[0])).job.version
        seen: list[list[int]] = [[] for _ in stubs.replicas]
        arrival: dict[tuple[int, int], float] = {}
        streams = [
            stubs[i].Watch(pb.WatchRequest(job_id="run-1", from_version=start)) for i in range(3)
        ]

        async def follow(i: int) -> None:
            async for message in streams[i]:
                if message.kind == pb.WatchResponse.KIND_EVENT:
                    seen[i].append(message.version)
                    arrival[i, message.version] = time.perf_counter()
                    if message.version == start + 30:
                        return

        followers = [asyncio.ensure_future(follow(i)) for i in range(3)]
        await asyncio.sleep(0.2)  # streams open
        acked: dict[int, float] = {}
        for i in range(30):
            reply = await stubs[i % 3].Override(_scale("run-1", 0.9))
            acked[reply.event.version] = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*followers), 10)
        expected = list(range(start + 1, start + 31))
        assert seen == [expected] * 3  # every version, in order, on every replica
        delays = sorted(arrival[i, v] - acked[v] for i in range(3) for v in expected)
        assert delays[len(delays) * 99 // 100 - 1] < 0.25, delays[-5:]


async def test_watch_resumes_on_another_replica_from_a_version_it_handed_out(
    cluster: Cluster,
) -> None:
    async with await cluster(2) as stubs:
        await _create(stubs[0])
        for _ in range(3):
            reply = await stubs[0].Override(_scale("run-1", 0.5))
        # Straight away (before any notification could matter): resuming on replica 1 from
        # the version replica 0 just handed out is a resume, never a RESYNC to the past.
        stream = stubs[1].Watch(pb.WatchRequest(job_id="run-1", from_version=reply.event.version))
        after = await stubs[0].Override(_scale("run-1", 0.5))
        message = await asyncio.wait_for(stream.read(), 5)
        assert (message.kind, message.version) == (pb.WatchResponse.KIND_EVENT, after.event.version)
        stream.cancel()
        # A job created on replica 0 is watchable on replica 1 at once.
        await _create(stubs[0], "run-2")
        stream = stubs[1].Watch(pb.WatchRequest(job_id="run-2"))
        first = await asyncio.wait_for(stream.read(), 5)
        assert first.kind == pb.WatchResponse.KIND_SNAPSHOT and first.job.job_id == "run-2"
        stream.cancel()


async def test_concurrent_creates_of_one_id_on_two_replicas(cluster: Cluster) -> None:
    async with await cluster(2) as stubs:
        a, b = await asyncio.gather(_create(stubs[0], "same"), _create(stubs[1], "same"))
        assert sorted([a.created, b.created]) == [False, True]  # one creates, one attaches
        assert a.job.version == b.job.version == 1
        other = await asyncio.gather(
            _create(stubs[0], "x", spec="ConstantLR()"),
            _create(stubs[1], "x", spec="StepLR(step_size=3)"),
            return_exceptions=True,
        )
        codes = sorted(
            r.code().name if isinstance(r, grpc.aio.AioRpcError) else "OK" for r in other
        )
        assert codes == ["FAILED_PRECONDITION", "OK"]  # the second sees the first's spec


async def test_effective_steps_and_plateau_reductions_happen_once(cluster: Cluster) -> None:
    async with await cluster(2) as stubs:
        await _create(stubs[0], spec=PLATEAU)
        flat = [pb.PlateauMetric(step=s, value=1.0) for s in range(1, 9)]
        # The same metrics reach both replicas (a retried report after a failover).
        versions = await asyncio.gather(
            *(
                stub.Report(pb.ReportRequest(job_id="run-1", rank=0, step=8, plateau_metrics=flat))
                for stub in stubs.stubs
            )
        )
        job = await stubs[1].GetJob(pb.GetJobRequest(job_id="run-1"))
        reductions = [e for e in job.events if e.op == pb.OVERRIDE_OP_PLATEAU_REDUCE]
        assert len(reductions) == 3  # patience 1 over 8 flat steps: steps 3, 5, 7; not 6
        assert max(v.version for v in versions) == job.version == 4
        # Rank 0 reports the step it applied version 2 at, twice, through both replicas.
        await asyncio.gather(
            stubs[0].Report(applied_report("run-1", 9, 2)),
            stubs[1].Report(applied_report("run-1", 10, 2)),
        )
        steps = set()
        for stub in stubs.stubs:

            async def applied(stub: lrctl_pb2_grpc.LRControllerStub = stub) -> bool:
                history = await stub.History(pb.HistoryRequest(job_id="run-1"))
                return history.events[0].HasField("effective_step")

            await _eventually(applied)
            history = await stub.History(pb.HistoryRequest(job_id="run-1"))
            steps.add(history.events[0].effective_step)
        assert len(steps) == 1 and steps <= {9, 10}  # the first report wins, everywhere


async def test_finish_on_one_replica_ends_watches_on_the_others(cluster: Cluster) -> None:
    async with await cluster(2) as stubs:
        created = await _create(stubs[0])
        stream = stubs[1].Watch(pb.WatchRequest(job_id="run-1", from_version=created.job.version))
        await asyncio.sleep(0.1)
        await stubs[0].FinishJob(pb.FinishJobRequest(job_id="run-1"))
        kinds = [m.kind async for m in stream if m.kind != pb.WatchResponse.KIND_HEARTBEAT]
        assert kinds == [pb.WatchResponse.KIND_FINISHED]
        listed = await stubs[1].ListJobs(pb.ListJobsRequest())
        assert [j.job_id for j in listed.jobs] == []  # finished: not listed by default


async def test_a_restarted_replica_loads_everything(start_controller: Start, pg_url: str) -> None:
    first, second = await _replicas(start_controller, pg_url, 2)
    async with Stubs([first, second]) as stubs:
        await _create(stubs[0])
        await stubs[1].Override(_scale("run-1", 0.5, reason="kept"))
        await first.stop(0)
        third = await start_controller(db=pg_url, metrics_port=None)
        async with grpc.aio.insecure_channel(third.address) as chan:
            history = await _stub(chan).History(pb.HistoryRequest(job_id="run-1"))
            assert [(e.version, e.reason) for e in history.events] == [(2, "kept")]
            reply = await _stub(chan).Override(_scale("run-1", 0.5))
            assert reply.event.version == 3


@pytest.mark.parametrize("running_server", [{}], indirect=True)
def test_sqlite_store_is_not_shared(running_server: object) -> None:
    # The embedded default keeps its single-process path (no row locks, no change feed).
    assert running_server.controller.service._store.shared is False  # type: ignore[attr-defined]


# -- real `lrctl serve` processes: failover and kill -9 ------------------------------------------


def test_password_never_printed(postgres: PostgresServer, pg_url: str) -> None:
    assert PASSWORD in pg_url
    with ControllerProcess(pg_url) as ctl, Client(ctl.address) as client:
        client.create_job("run-1", "StepLR(step_size=10)", [0.1])
    listening = [line for line in ctl.output if "listening on" in line]
    assert listening and postgres.url(pg_url.rsplit("/", 1)[1], password=False) in listening[0]
    assert not any(PASSWORD in line for line in ctl.output), ctl.output
    # A refused start says why, without the password either.
    wrong = pg_url.replace(PASSWORD, "Not-" + PASSWORD[::-1])
    failed = ControllerProcess(wrong)
    with pytest.raises(RuntimeError, match="password authentication failed") as info:
        failed.start()
    failed.stop()
    assert PASSWORD not in str(info.value) and PASSWORD[::-1] not in str(info.value)


class _Watcher(threading.Thread):
    """Records the EVENT versions one replica streams for one job (no reconnect)."""

    def __init__(self, address: str, job_id: str, from_version: int) -> None:
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(address, options=list(CLIENT_CHANNEL_OPTIONS))
        self.call = _stub(self.channel).Watch(
            pb.WatchRequest(  # type: ignore[arg-type]
                job_id=job_id, from_version=from_version
            )
        )
        self.call_job = job_id
        self.versions: list[int] = []
        self.error: grpc.RpcError | None = None

    def run(self) -> None:
        try:
            for message in self.call:
                if message.kind == pb.WatchResponse.KIND_EVENT:
                    self.versions.append(message.version)
        except grpc.RpcError as exc:
            self.error = exc

    def stop(self) -> None:
        self.call.cancel()
        self.join(10)
        self.channel.close()


@pytest.mark.slow
def test_override_storm_over_replicas_with_kill_9(postgres: PostgresServer, pg_url: str) -> None:
    """3 replicas; 4 clients spread overrides over all of them (round robin); replica 0 is
    killed with SIGKILL mid-storm and restarted, 3 times. Every acknowledged override is in
    the log exactly once, versions strictly increase, and every Watch on a surviving replica
    and every failover follower saw every version in order."""
    _storm(postgres, pg_url, kills=3)


@pytest.mark.soak
def test_override_storm_soak(postgres: PostgresServer) -> None:
    """The storm 20 times over, each on a fresh database (LRCTL_SOAK=1)."""
    for _ in range(20):
        _storm(postgres, postgres.url(postgres.create_database()), kills=3)


def _storm(postgres: PostgresServer, pg_url: str, kills: int) -> None:
    jobs = ("storm-a", "storm-b")
    replicas = [ControllerProcess(pg_url).start() for _ in range(3)]
    address = ",".join(r.address for r in replicas)
    acked: list[tuple[str, int, str]] = []
    failed: list[str] = []
    watchers: list[_Watcher] = []
    followers: list[WatchFollower] = []
    try:
        with Client(address) as admin:
            created = {j: admin.create_job(j, "StepLR(step_size=100)", [0.1]).job for j in jobs}
        watchers = [_Watcher(r.address, j, created[j].version) for r in replicas[1:] for j in jobs]
        follow_clients = [Client(address) for _ in jobs]
        followers = [
            WatchFollower(c, j, job=created[j], backoff_initial_s=0.05, backoff_max_s=0.5)
            for c, j in zip(follow_clients, jobs)
        ]
        follow_threads = [
            threading.Thread(target=lambda f=f: [None for _ in f], daemon=True) for f in followers
        ]
        for thread in [*watchers, *follow_threads]:
            thread.start()
        time.sleep(0.3)
        stop = threading.Event()
        lock = threading.Lock()

        def storm(n: int) -> None:
            with Client(address, timeout=5) as client:
                i = 0
                while not stop.is_set():
                    job, reason = jobs[i % len(jobs)], f"c{n}-{i}"
                    try:
                        reply = client.override(job, "lr *= 0.999", reason=reason)
                        with lock:
                            acked.append((job, reply.event.version, reason))
                    except ClientError as exc:
                        with lock:
                            failed.append(f"{reason}: {exc.code}")
                    i += 1

        clients = [threading.Thread(target=storm, args=(n,), daemon=True) for n in range(4)]
        for thread in clients:
            thread.start()
        marks: list[int] = []
        for _ in range(kills):
            time.sleep(1.0)
            marks.append(len(acked))
            replicas[0].kill()
            time.sleep(0.5)
            replicas[0] = ControllerProcess(pg_url, port=replicas[0].port).start()
        time.sleep(1.0)
        stop.set()
        for thread in clients:
            thread.join(30)
        assert len(acked) > marks[-1] > marks[0] > 0  # overrides before, between, after kills

        # The database's versions (a replica's memory may be a notification behind).
        db = pg_url.rsplit("/", 1)[1]
        rows = postgres.psql("SELECT job_id, version FROM lrctl_jobs", db).split()
        final = {job: int(version) for job, version in (r.split("|") for r in rows)}
        deadline = time.monotonic() + 45  # > RESYNC_SECONDS: a missed change heals
        while time.monotonic() < deadline and not all(
            (w.versions[-1:] or [0])[0] >= final[w.call_job] for w in watchers
        ):
            time.sleep(0.05)
    finally:
        for follower in followers:
            follower.close()
        for watcher in watchers:
            watcher.stop()
        for replica in replicas:
            replica.stop()

    by_reason = {reason: (job, version) for job, version, reason in acked}
    assert len(by_reason) == len(acked)
    with ControllerProcess(pg_url) as ctl, Client(ctl.address) as reader:
        logs = {j: list(reader.history(j)) for j in jobs}
    for job in jobs:
        versions = [e.version for e in logs[job]]
        # Strictly increasing with no gap: every version from creation on is one event.
        assert versions == list(range(created[job].version + 1, final[job] + 1))
        reasons = [e.reason for e in logs[job]]
        assert len(set(reasons)) == len(reasons)  # nothing applied twice
        for event in logs[job]:
            if event.reason in by_reason:
                assert by_reason[event.reason] == (job, event.version)
    present = {e.reason for j in jobs for e in logs[j]}
    assert set(by_reason) <= present  # every acknowledged override is there
    for watcher in watchers:  # surviving replicas streamed every version, in order
        expected = [e.version for e in logs[watcher.call_job]]
        assert watcher.versions == expected, _diagnose(watcher, expected, replicas)
    for follower, job in zip(followers, jobs):
        assert follower.job is not None
        assert [e.version for e in follower.job.events] == [e.version for e in logs[job]]


def _diagnose(watcher: _Watcher, expected: list[int], replicas: list[ControllerProcess]) -> str:
    got = watcher.versions
    first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
    logs = "".join(
        line for r in replicas for line in r.output if "WARNING" in line or "ERROR" in line
    )
    return (
        f"watcher of {watcher.call_job}: error={watcher.error}, got {len(got)} of "
        f"{len(expected)} versions, first difference at index {first} "
        f"(got {got[first : first + 3] if first is not None else got[-3:]}, expected "
        f"{expected[first : first + 3] if first is not None else expected[-3:]}); "
        f"replica warnings:\n{logs[-3000:]}"
    )


@pytest.mark.slow
def test_ddp_rank0_fails_over_when_its_replica_is_killed(tmp_path: Path, pg_url: str) -> None:
    """2 gloo ranks; rank 0 knows both replicas. The replica holding its Watch is killed
    with SIGKILL: training goes on, rank 0 resumes on the other replica, and an override sent
    there still switches both ranks at the same step."""
    replicas = [ControllerProcess(pg_url).start() for _ in range(2)]
    address = ",".join(r.address for r in replicas)
    try:
        with Client(address) as client:
            procs = launch_ranks(tmp_path, address, "failover", 2, steps=600)
            wait_for_step(client, "failover", 20)
            client.override("failover", "lr *= 0.5", reason="before the failover")

        def streams(replica: ControllerProcess) -> int:
            with Client(replica.address) as one:
                return one.get_job("failover").watch_streams

        deadline = time.monotonic() + 30
        while (held := [streams(r) for r in replicas]) == [0, 0]:
            assert time.monotonic() < deadline, "rank 0 never opened its Watch"
            time.sleep(0.1)
        assert sorted(held) == [0, 1]  # one stream per job, on one replica
        victim, survivor = (0, 1) if held[0] else (1, 0)
        replicas[victim].kill()  # SIGKILL of the replica rank 0 watches through
        time.sleep(1.0)
        assert all(p.poll() is None for p in procs), "training must not stop with a replica"
        deadline = time.monotonic() + 30
        while streams(replicas[survivor]) < 1:  # rank 0 resumed on the other replica
            assert time.monotonic() < deadline, "rank 0 never failed over"
            time.sleep(0.1)
        with Client(replicas[survivor].address) as client:
            step_before = client.get_job("failover").step
            client.override("failover", "lr = 1e-3", reason="after the failover")
            wait_ranks(procs)
            history = client.history("failover")
    finally:
        for replica in replicas:
            replica.stop()
    ranks = read_ranks(tmp_path, "failover", 2)
    check_consistent(ranks)  # every rank switched each version at the same step
    assert [e.reason for e in history] == ["before the failover", "after the failover"]
    assert all(e.effective_step is not None for e in history), history
    late = history[1]
    assert late.effective_step is not None and late.effective_step > step_before
    assert ranks[0]["log"][-1][2:] == pytest.approx([1e-3, 1e-3])
    assert ranks[1]["log"][-1][2:] == pytest.approx([1e-3, 1e-3])


async def test_metrics_aggregate_over_replicas(start_controller: Start, pg_url: str) -> None:
    """Every replica exports every running job's gauges (``max by`` sees the job's value) and
    counts only what it served (``sum by`` over replicas counts each override once)."""
    registries = [CollectorRegistry(), CollectorRegistry()]
    replicas = [
        await start_controller(db=pg_url, metrics_port=None, registry=r) for r in registries
    ]
    async with Stubs(replicas) as stubs:
        await _create(stubs[0], base_lrs=(0.1, 0.01))
        for i in range(8):
            await stubs[0 if i < 5 else 1].Override(_scale("run-1", 0.5))
        labels = {"job_id": "run-1"}

        def gauges(registry: CollectorRegistry) -> tuple[float | None, ...]:
            return (
                registry.get_sample_value("lrctl_schedule_version", labels),
                registry.get_sample_value("lrctl_learning_rate", {**labels, "param_group": "1"}),
            )

        async def same() -> bool:
            return gauges(registries[0]) == gauges(registries[1]) == (9.0, 0.01 * 0.5**8)

        await _eventually(same)
        counted = [
            r.get_sample_value("lrctl_overrides_total", {**labels, "op": "scale"}) or 0
            for r in registries
        ]
        assert counted == [5.0, 3.0]  # sum by (job_id, op): 8, each override once
        await stubs[1].FinishJob(pb.FinishJobRequest(job_id="run-1"))

        async def removed() -> bool:
            return all(gauges(r) == (None, None) for r in registries)

        await _eventually(removed)  # a finished job's series go on every replica


@pytest.mark.slow
def test_cli_uses_whichever_replica_is_up(pg_url: str) -> None:
    """`lrctl --address A,B` keeps working when A is gone (killed, never restarted)."""
    replicas = [ControllerProcess(pg_url).start() for _ in range(2)]
    address = ",".join(r.address for r in replicas)

    def lrctl(*argv: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "LRCTL_ADDRESS"}
        return run_captured([*CLI, "--address", address, *argv], env=env)

    try:
        created = lrctl(
            "job", "create", "cli-1", "--schedule", "StepLR(step_size=5)", "--base-lr", "0.1"
        )
        assert created.returncode == 0, created.stderr
        replicas[0].kill()
        for i in range(4):  # round robin would have picked the dead one every other call
            done = lrctl("override", "cli-1", "lr /= 2", "--reason", f"#{i}")
            assert done.returncode == 0, done.stderr
        got = lrctl("job", "get", "cli-1", "--json")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["version"] == 5
    finally:
        for replica in replicas:
            replica.stop()


async def test_a_database_outage_is_unavailable_then_heals(
    cluster: Cluster, postgres: PostgresServer
) -> None:
    """While PostgreSQL is down, writes fail UNAVAILABLE (retryable), never INTERNAL, and open
    Watch streams stay open; once it is back, writes succeed, versions unbroken, and the
    replicas' change feeds resume (a watcher on the other replica sees the new write)."""
    async with await cluster(2) as stubs:
        created = await _create(stubs[0])
        stream = stubs[1].Watch(pb.WatchRequest(job_id="run-1", from_version=created.job.version))
        first = await asyncio.wait_for(stream.read(), 10)  # open: a heartbeat comes first
        assert first.kind == pb.WatchResponse.KIND_HEARTBEAT
        postgres.pause()
        try:
            await expect_status(
                stubs[0].Override(_scale("run-1", 0.5)), grpc.StatusCode.UNAVAILABLE
            )
        finally:
            postgres.resume()
        reply = None
        for _ in range(100):  # the pool reconnects on the next calls
            try:
                reply = await stubs[0].Override(_scale("run-1", 0.5, reason="after"))
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                await asyncio.sleep(0.1)
        assert reply is not None and reply.event.version == created.job.version + 1
        while True:  # the same stream, never broken, gets the write made through replica 0
            message = await asyncio.wait_for(stream.read(), 40)
            if message.kind == pb.WatchResponse.KIND_EVENT:
                assert message.version == reply.event.version
                break
        stream.cancel()
