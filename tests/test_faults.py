"""Fault tests (issue 10): crashes, a frozen controller, a bad network and bad storage.

Loopback only, real processes, bounded in count and time. Each runs briefly in CI; the
``soak`` marker runs the long modes (>= 20 repetitions) with ``LRCTL_SOAK=1`` (docs/testing).

* kill -9 of the controller during an override storm from several concurrent clients,
  repeated: every acknowledged override is there after the restart with its version,
  versions strictly increase, ``PRAGMA integrity_check`` is ok;
* SIGSTOP/SIGCONT of the controller: rank 0 notices within 15 s, training goes on, the watch
  resumes and a later override reaches every rank;
* a fault proxy (delay, blackhole, reset) between the ranks and the controller, with a
  history checker over the operator's calls and every rank's per-step log (etcd's robustness
  tests in spirit): no version lost, duplicated or out of order on any rank;
* storage faults (a full disk, a read-only database): writes are refused with
  RESOURCE_EXHAUSTED (full) or UNAVAILABLE (read-only), nothing acknowledged is missing,
  nothing refused is stored, reads are still served, and writes work again once it heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.server import Controller
from lrctl.client import Client, ClientError
from lrctl.constants import REASON_UNAVAILABLE
from lrctl.overrides import Event
from lrctl.program import LRProgram
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests._grpc_helpers import applied_report
from tests.conftest import expect_status
from tests.faultproxy import FaultProxy
from tests.procs import ROOT, ControllerProcess, wait_for_step

pb = lrctl_pb2
pytestmark = pytest.mark.slow

SPEC = "CosineAnnealingLR(T_max=400, eta_min=0.001)"
BASE_LRS = (0.1, 0.05)  # tests/fault_worker.py's optimizer


# -- kill -9 during an override storm ------------------------------------------------------------


@dataclass
class Storm:
    """Clients sending overrides as fast as they can; what each was told."""

    address: str
    jobs: tuple[str, ...]
    clients: int = 4
    acknowledged: list[tuple[str, int, str]] = field(default_factory=list)  # job, version, reason
    unknown: list[tuple[str, str]] = field(default_factory=list)  # sent, fate unknown
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self, k: int, round_: int) -> None:
        rng = random.Random(k * 1000 + round_)
        with Client(self.address) as client:
            for i in range(100_000):
                job = rng.choice(self.jobs)
                reason = f"r{round_}-c{k}-{i}"
                try:
                    result = client.override(
                        job,
                        f"lr *= {rng.uniform(0.9, 1.1):.6f}",
                        reason=reason,
                        actor=f"client-{k}",
                    )
                except ClientError:  # the controller died: this one may or may not be in
                    with self._lock:
                        self.unknown.append((job, reason))
                    return
                with self._lock:
                    self.acknowledged.append((job, result.event.version, reason))

    def run(self, round_: int, kill: Callable[[], None], after_s: float) -> None:
        threads = [
            threading.Thread(target=self._client, args=(k, round_), daemon=True)
            for k in range(self.clients)
        ]
        for thread in threads:
            thread.start()
        time.sleep(after_s)
        kill()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize(
    "rounds",
    [
        pytest.param(3, id="3-rounds"),
        pytest.param(20, marks=pytest.mark.soak, id="20-rounds"),
    ],
)
def test_acknowledged_overrides_survive_kill_9_during_a_storm(tmp_path: Path, rounds: int) -> None:
    db = tmp_path / "lrctl.db"
    jobs = ("storm-a", "storm-b")
    rng = random.Random(rounds)
    controller = ControllerProcess(db, extra=("--log-level", "warning")).start()
    try:
        with Client(controller.address) as client:
            for job in jobs:
                client.create_job(job, "StepLR(step_size=10)", [0.1])
        storm = Storm(controller.address, jobs)
        for round_ in range(rounds):
            storm.address = controller.address
            storm.run(round_, controller.kill, rng.uniform(0.3, 1.0))
            assert integrity(db) == "ok"
            controller = ControllerProcess(db, extra=("--log-level", "warning")).start()
            with Client(controller.address) as client:
                for job in jobs:
                    history = client.history(job)
                    versions = [e.version for e in history]
                    # Strictly increasing and gap-free: version 1 is the creation.
                    assert versions == list(range(2, 2 + len(versions))), versions[:20]
                    stored = {(e.version, e.reason) for e in history}
                    told = {(v, r) for j, v, r in storm.acknowledged if j == job}
                    assert told <= stored, sorted(told - stored)[:5]
                    # Everything stored was sent: acknowledged, or in flight at the kill.
                    maybe = {r for j, r in storm.unknown if j == job}
                    assert {r for _, r in stored} <= {r for _, r in told} | maybe
                    assert client.get_job(job).version == 1 + len(versions)
        assert len(storm.acknowledged) >= rounds * 10, "the storm sent almost nothing"
    finally:
        controller.stop()
    assert integrity(db) == "ok"


# -- the ranks: tests/fault_worker.py ------------------------------------------------------------


class Ranks:
    """``world`` ranks of tests/fault_worker.py; only rank 0 is told ``address``."""

    def __init__(
        self, tmp: Path, address: str, job: str, world: int = 2, sleep: float = 0.02
    ) -> None:
        self.out = tmp / job
        self.out.mkdir()
        self.stop_file = self.out / "stop"
        self.lines: list[tuple[float, int, str]] = []  # (time received, rank, line)
        env = {k: v for k, v in os.environ.items() if k not in ("LRCTL_ADDRESS", "LRCTL_TOKEN")}
        env["PYTHONUNBUFFERED"] = "1"
        self.procs: list[subprocess.Popen[str]] = []
        self._pumps: list[threading.Thread] = []
        for rank in range(world):
            cmd = [
                sys.executable,
                "-m",
                "tests.fault_worker",
                "--rank",
                str(rank),
                "--world",
                str(world),
                "--init",
                str(tmp / f"init-{job}"),
                "--job",
                job,
                "--out",
                str(self.out),
                "--stop-file",
                str(self.stop_file),
                "--sleep",
                str(sleep),
            ]
            if rank == 0:
                cmd += ["--address", address]
            proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
            )
            self.procs.append(proc)
            pump = threading.Thread(target=self._pump, args=(rank, proc), daemon=True)
            pump.start()
            self._pumps.append(pump)
        self.world = world

    def _pump(self, rank: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append((time.monotonic(), rank, line.rstrip()))

    def progress(self) -> int:
        try:
            return int((self.out / "progress").read_text() or -1)
        except (OSError, ValueError):
            return -1

    def wait_progress(self, steps: int, timeout: float = 60) -> None:
        """Wait until rank 0 is ``steps`` steps further than now."""
        target = self.progress() + steps
        deadline = time.monotonic() + timeout
        while self.progress() < target:
            assert all(p.poll() is None for p in self.procs), self.output()
            assert time.monotonic() < deadline, f"training stalled at {self.progress()}"
            time.sleep(0.05)

    def stop(self, timeout: float = 60) -> list[dict[str, Any]]:
        self.stop_file.touch()
        for proc in self.procs:
            proc.wait(timeout)
            assert proc.returncode == 0, self.output()
        return [json.loads((self.out / f"rank-{r}.json").read_text()) for r in range(self.world)]

    def kill(self) -> None:
        """Kill what is still running and close the pipes (idempotent)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for pump in self._pumps:
            pump.join(10)  # EOF once the process is gone
        for proc in self.procs:
            if proc.stdout is not None:
                proc.stdout.close()

    def output(self) -> str:
        return "\n".join(f"[rank {r}] {line}" for _, r, line in self.lines[-60:])


def check_ranks(
    ranks: list[dict[str, Any]],
    history: list[Event],
    schedule: str = SPEC,
    base_lrs: tuple[float, ...] = BASE_LRS,
) -> None:
    """The history checker: every rank's per-step log against the controller's final log.

    No version lost, duplicated or out of order on any rank: each rank's versions never go
    back, and the LRs it applied at every step are exactly those the final log (with each
    event's effective step) gives at that step; the ranks are identical (DDP); every event is
    applied and the last one is what every rank ends on.
    """
    program = LRProgram(schedule, base_lrs, history)
    versions = [e.version for e in history]
    assert versions == sorted(set(versions)), versions
    assert all(e.effective_step is not None for e in history), [
        e for e in history if e.effective_step is None
    ]
    for r, rank in enumerate(ranks):
        log = rank["log"]
        applied = [int(v) for _, v, *_ in log]
        assert applied == sorted(applied), f"rank {r}: a version went back: {applied}"
        seen = set(applied)
        assert seen <= {1, *versions}, f"rank {r} applied unknown versions {seen - {1, *versions}}"
        if history:
            assert applied[-1] == versions[-1], f"rank {r} ends on {applied[-1]}"
        for step, version, *lrs in log:
            expected = program.lrs(int(step))
            assert lrs == pytest.approx(expected, rel=1e-12), (
                f"rank {r} at step {step} (version {version}): {lrs} != {expected}"
            )
        if r:
            assert log == ranks[0]["log"], f"rank {r}'s log differs from rank 0's"
            assert rank["params"] == ranks[0]["params"], f"rank {r}'s parameters differ"


def wait_applied(client: Client, job: str, version: int, timeout: float = 60) -> list[Event]:
    """Wait until rank 0 reported every event up to ``version`` applied."""
    deadline = time.monotonic() + timeout
    while True:
        history = list(client.history(job))
        if (
            history
            and history[-1].version >= version
            and all(e.effective_step is not None for e in history)
        ):
            return history
        assert time.monotonic() < deadline, f"not applied: {history[-3:]}"
        time.sleep(0.1)


# -- a frozen controller ---------------------------------------------------------------------------


def test_a_frozen_controller_is_noticed_and_training_goes_on(tmp_path: Path) -> None:
    controller = ControllerProcess(tmp_path / "lrctl.db").start()
    assert controller.proc is not None
    ranks = Ranks(tmp_path, controller.address, "frozen")
    try:
        with Client(controller.address) as client:
            wait_for_step(client, "frozen", 10)
            first = client.override("frozen", "lr *= 0.5", reason="before the freeze")
            wait_applied(client, "frozen", first.event.version)
            os.kill(controller.proc.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            try:
                # Rank 0 notices (keepalive: 10 s ping + 5 s timeout) while training goes on.
                while not any("lost the controller" in line for _, _, line in ranks.lines):
                    assert time.monotonic() - frozen_at < 15.5, ranks.output()
                    time.sleep(0.05)
                noticed = next(t for t, _, line in ranks.lines if "lost the controller" in line)
                assert noticed - frozen_at <= 15.5
                ranks.wait_progress(20, timeout=10)  # training goes on while it is frozen
            finally:
                os.kill(controller.proc.pid, signal.SIGCONT)
            deadline = time.monotonic() + 30
            while client.get_job("frozen").watch_streams < 1:  # the watch resumes
                assert time.monotonic() < deadline, ranks.output()
                time.sleep(0.1)
            later = client.override("frozen", "lr = 2e-3", reason="after the thaw")
            history = wait_applied(client, "frozen", later.event.version)
            results = ranks.stop()
            history = list(client.history("frozen"))
    finally:
        ranks.kill()
        controller.stop()
    check_ranks(results, history)
    for rank in results:  # the later override reached every rank
        assert rank["log"][-1][1] == later.event.version
        assert rank["log"][-1][2:] == pytest.approx([2e-3, 2e-3])


# -- a bad network between the ranks and the controller -------------------------------------------


@dataclass
class Calls:
    """The operator's calls: (version or None, reason, outcome) as the client saw them."""

    acknowledged: list[tuple[int, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def chaos(proxy: FaultProxy, rng: random.Random, seconds: float) -> list[str]:
    """Switch the proxy between faults for ``seconds``; return what was done."""
    done = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        mode = rng.choice(["delay", "blackhole", "reset", "pass"])
        hold = rng.uniform(0.3, 1.5)
        if mode == "delay":
            proxy.set_mode("delay", delay_s=rng.uniform(0.05, 0.4))
        elif mode == "reset":
            proxy.set_mode("reset")
            hold = rng.uniform(0.05, 0.3)
        else:
            proxy.set_mode(mode)
        done.append(f"{mode} {hold:.2f}s")
        time.sleep(hold)
        proxy.set_mode("pass")
        time.sleep(rng.uniform(0.1, 0.5))
    proxy.set_mode("pass")
    return done


def run_network_faults(tmp_path: Path, seed: int, seconds: float) -> None:
    rng = random.Random(seed)
    controller = ControllerProcess(tmp_path / f"lrctl-{seed}.db").start()
    job = f"net-{seed}"
    try:
        with FaultProxy(controller.address) as proxy, Client(controller.address) as client:
            ranks = Ranks(tmp_path, proxy.address, job, sleep=0.01)
            try:
                wait_for_step(client, job, 10)
                calls = Calls()
                statements = ["lr *= 0.5", "lr *= 1.5", "lr = 3e-3", None, "lr *= 0.9"]
                chaos_log: list[str] = []
                chaos_thread = threading.Thread(
                    target=lambda: chaos_log.extend(chaos(proxy, random.Random(seed), seconds))
                )
                chaos_thread.start()
                i = 0
                while chaos_thread.is_alive():
                    statement = statements[i % len(statements)]
                    reason = f"call {i}"
                    try:
                        result = client.override(
                            job,
                            statement,
                            clear=statement is None,
                            group=rng.choice([None, 0, 1]),
                            reason=reason,
                        )
                        calls.acknowledged.append((result.event.version, reason))
                    except ClientError:
                        calls.refused.append(reason)
                    i += 1
                    time.sleep(rng.uniform(0.05, 0.4))
                chaos_thread.join()
                assert calls.acknowledged, "no override was sent"
                history = wait_applied(client, job, calls.acknowledged[-1][0], timeout=60)
                results = ranks.stop()
                history = list(client.history(job))
            except BaseException:
                print(ranks.output())
                raise
            finally:
                ranks.kill()
    finally:
        controller.stop()
    # The operator talks to the controller directly: every call has a definite outcome.
    assert [(e.version, e.reason) for e in history] == calls.acknowledged
    assert not calls.refused
    assert proxy.connections >= 1
    check_ranks(results, history)


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(0, id="short"),
        *(pytest.param(s, marks=pytest.mark.soak, id=f"soak-{s}") for s in range(1, 21)),
    ],
)
def test_network_faults_lose_duplicate_or_reorder_no_version(tmp_path: Path, seed: int) -> None:
    run_network_faults(tmp_path, seed, seconds=8.0 if seed == 0 else 25.0)


# -- storage faults --------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a small tmpfs at ``path`` when this process may (root); yield whether it did."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


async def _sql(ctl: Controller, statement: str) -> None:
    """Run ``statement`` on the controller's own SQLite connection (its thread)."""
    store: Any = ctl.service._store
    await store._run(lambda: store._conn.execute(statement).fetchall())


Start = Callable[..., Awaitable[Controller]]


async def _stub_with_a_job(chan: grpc.aio.Channel) -> lrctl_pb2_grpc.LRControllerStub:
    """A stub on ``chan``, after creating job run-1 (StepLR(step_size=2), base LR 0.1) with it."""
    stub = lrctl_pb2_grpc.LRControllerStub(chan)  # type: ignore[no-untyped-call]
    await stub.CreateJob(
        pb.CreateJobRequest(job_id="run-1", schedule="StepLR(step_size=2)", base_lrs=[0.1])
    )
    return stub


async def test_a_full_disk_refuses_writes_and_serves_reads(
    start_controller: Start, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with tmpfs(data, "2m") as real:
        db = data / "lrctl.db"
        ctl = await start_controller(db=str(db), metrics_port=None)
        async with grpc.aio.insecure_channel(ctl.address) as chan:
            stub = await _stub_with_a_job(chan)
            ballast = data / "ballast"
            if real:  # fill the file system, keeping a ballast to free later
                ballast.write_bytes(b"\0" * (512 << 10))
                with contextlib.suppress(OSError), open(data / "filler", "wb") as filler:
                    while True:
                        filler.write(b"\0" * 4096)
                        filler.flush()
            else:  # no mount allowed: SQLite's own page limit makes the disk "full"
                await _sql(ctl, "PRAGMA max_page_count = 1")
            acknowledged, refused = [], 0
            for i in range(200):
                reason = f"{i} " + "x" * 1000
                try:
                    reply = await stub.Override(
                        pb.OverrideRequest(
                            job_id="run-1", op=pb.OVERRIDE_OP_SCALE, value=0.5, reason=reason
                        )
                    )
                    acknowledged.append(reply.event.version)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                    assert "full" in (exc.details() or ""), exc.details()
                    refused += 1
                    if refused >= 3:
                        break
            assert refused >= 3
            job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))  # reads still served
            assert [e.version for e in job.events] == acknowledged
            assert len((await stub.ListJobs(pb.ListJobsRequest())).jobs) == 1
            assert len((await stub.History(pb.HistoryRequest(job_id="run-1"))).events) == len(
                acknowledged
            )
            # Space comes back: writes work again, at the next version.
            if real:
                ballast.unlink()
                (data / "filler").unlink()
            else:
                await _sql(ctl, "PRAGMA max_page_count = 1073741823")
            reply = await stub.Override(pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_CLEAR))
            assert reply.event.version == (acknowledged[-1] if acknowledged else 1) + 1
            acknowledged.append(reply.event.version)
        await ctl.stop(0)
        again = await start_controller(db=str(db), metrics_port=None)
        async with grpc.aio.insecure_channel(again.address) as chan:
            stub = lrctl_pb2_grpc.LRControllerStub(chan)  # type: ignore[no-untyped-call]
            history = await stub.History(pb.HistoryRequest(job_id="run-1"))
            assert [e.version for e in history.events] == acknowledged  # nothing more, nothing less
        await again.stop(0)
        assert integrity(db) == "ok"


async def test_a_read_only_database_refuses_writes_and_serves_reads(
    start_controller: Start, tmp_path: Path
) -> None:
    """SQLite's ``query_only`` makes every write fail with SQLITE_READONLY, the error a file
    or file system turned read-only under the running controller gives (a read-only remount
    itself is refused while the controller holds the file open for writing)."""
    db = tmp_path / "lrctl.db"
    ctl = await start_controller(db=str(db), metrics_port=None)
    async with grpc.aio.insecure_channel(ctl.address) as chan:
        stub = await _stub_with_a_job(chan)
        await stub.Override(pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_SCALE, value=0.5))
        await _sql(ctl, "PRAGMA query_only = ON")
        try:
            for call in (
                stub.Override(
                    pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_SCALE, value=0.5)
                ),
                stub.FinishJob(pb.FinishJobRequest(job_id="run-1")),
                stub.CreateJob(
                    pb.CreateJobRequest(
                        job_id="run-2", schedule="StepLR(step_size=2)", base_lrs=[0.1]
                    )
                ),
                stub.Report(applied_report("run-1", 3, 2)),
            ):
                err = await expect_status(call, grpc.StatusCode.UNAVAILABLE)
                assert "read-only" in (err.details() or ""), err.details()
            # Through the client: the controller answered, so its message, not "cannot reach".
            with Client(ctl.address) as client, pytest.raises(ClientError) as info:
                await asyncio.to_thread(client.override, "run-1", "lr /= 2")
            assert info.value.reason == REASON_UNAVAILABLE, info.value
            assert str(info.value).startswith("UNAVAILABLE: database "), str(info.value)
            assert "read-only" in str(info.value) and "cannot reach" not in str(info.value)
            job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))  # reads still served
            assert job.version == 2 and job.state == pb.JOB_STATE_RUNNING
            assert not job.events[0].HasField("effective_step")
            assert len((await stub.ListJobs(pb.ListJobsRequest(include_finished=True))).jobs) == 1
        finally:
            await _sql(ctl, "PRAGMA query_only = OFF")
        reply = await stub.Override(pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_CLEAR))
        assert reply.event.version == 3
    await ctl.stop(0)
    again = await start_controller(db=str(db), metrics_port=None)
    async with grpc.aio.insecure_channel(again.address) as chan:
        stub = lrctl_pb2_grpc.LRControllerStub(chan)  # type: ignore[no-untyped-call]
        history = await stub.History(pb.HistoryRequest(job_id="run-1"))
        assert [e.version for e in history.events] == [2, 3]
        assert len((await stub.ListJobs(pb.ListJobsRequest(include_finished=True))).jobs) == 1
    await again.stop(0)
