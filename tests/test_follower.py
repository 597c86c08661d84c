"""lrctl.client.WatchFollower (used by the workers and ``lrctl watch``) and the client's TLS.

Against a real controller (restart, RESYNC, FINISHED). Two cases a correct controller never
produces on purpose (a version gap, a heartbeat ahead) and TLS (the controller's own TLS
comes with the security work) use a small hand-written LRController on a real gRPC server.
"""

from __future__ import annotations

import queue
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.config import ServerConfig
from lrctl.client import Client, ClientError, FollowUpdate, TLSConfig, WatchFollower
from lrctl.convert import event_to_proto, job_to_proto
from lrctl.model import Job, JobState, WatchKind
from lrctl.overrides import Event, Op
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests.conftest import RunningServer, ServerThread

STEP_LR = "StepLR(step_size=200, gamma=0.5)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Collector:
    """Iterates a follower on a thread; the test reads its updates with a timeout."""

    def __init__(self, follower: WatchFollower) -> None:
        self.follower = follower
        self.updates: queue.Queue[FollowUpdate | BaseException | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for update in self.follower:
                self.updates.put(update)
        except BaseException as error:
            self.updates.put(error)
        self.updates.put(None)

    def next(self, *, skip_heartbeats: bool = True, timeout: float = 10) -> FollowUpdate | None:
        while True:
            item = self.updates.get(timeout=timeout)
            if isinstance(item, BaseException):
                raise item
            if (
                item is not None
                and skip_heartbeats
                and item.message is not None
                and item.message.kind is WatchKind.HEARTBEAT
            ):
                continue
            return item

    def close(self) -> None:
        self.follower.close()
        self.thread.join(10)
        assert not self.thread.is_alive()


def kind(update: FollowUpdate | None) -> WatchKind | str | None:
    if update is None:
        return None
    return "lost" if update.message is None else update.message.kind


# -- against a real controller -----------------------------------------------------------------


def test_snapshot_events_and_finished_end_the_iteration(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        client.create_job("run-1", STEP_LR, [0.1])
        collector = Collector(WatchFollower(client, "run-1"))
        snapshot = collector.next()
        assert kind(snapshot) is WatchKind.SNAPSHOT and snapshot is not None
        assert snapshot.job is not None and snapshot.job.version == 1 and snapshot.previous is None
        client.override("run-1", "lr /= 2")
        event = collector.next()
        assert kind(event) is WatchKind.EVENT and event is not None and event.job is not None
        assert event.job.version == 2 and [e.op for e in event.job.events] == [Op.SCALE]
        assert event.previous is snapshot.job
        client.finish_job("run-1")
        finished = collector.next()
        assert kind(finished) is WatchKind.FINISHED and finished is not None and finished.finished
        assert collector.next() is None  # the iteration ended by itself
        assert collector.follower.job is not None
        assert collector.follower.job.state is JobState.FINISHED


def test_resumes_after_a_controller_restart_from_the_version_held(
    server_config: ServerConfig,
) -> None:
    config = replace(server_config, port=free_port())
    address = f"127.0.0.1:{config.port}"
    with Client(address) as client:
        with ServerThread(config):
            client.create_job("run-7", STEP_LR, [0.1])
            follower = WatchFollower(client, "run-7", backoff_initial_s=0.05, backoff_max_s=0.2)
            collector = Collector(follower)
            assert kind(collector.next()) is WatchKind.SNAPSHOT
            client.override("run-7", "lr *= 0.5")
            assert kind(collector.next()) is WatchKind.EVENT
        lost = collector.next()
        assert kind(lost) == "lost" and lost is not None and lost.error is not None
        assert lost.error.transient and lost.job is not None and lost.job.version == 2
        assert not follower.connected
        with ServerThread(config) as server:
            assert server.address == address
            # An override the follower misses while it waits to reconnect. (Its own channel:
            # gRPC shares subchannels between channels, and `client`'s may still be backing off.)
            with grpc.insecure_channel(
                address, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as ch:
                stub = lrctl_pb2_grpc.LRControllerStub(ch)  # type: ignore[no-untyped-call]
                stub.Override(
                    lrctl_pb2.OverrideRequest(
                        job_id="run-7", op=lrctl_pb2.OVERRIDE_OP_SET, value=0.01
                    ),
                    timeout=10,
                    wait_for_ready=True,
                )
            after: list[FollowUpdate] = []
            while not after or kind(after[-1]) is not WatchKind.EVENT:
                update = collector.next(skip_heartbeats=False, timeout=15)
                assert update is not None
                after.append(update)
            kinds = {kind(u) for u in after}
            # Resumed from version 2: the missed event, no snapshot or resync.
            assert kinds <= {"lost", WatchKind.HEARTBEAT, WatchKind.EVENT}
            assert sum(u.reconnected for u in after) == 1
            event = after[-1]
            assert event.job is not None and [e.version for e in event.job.events] == [2, 3]
            assert follower.connected and follower.version == 3
            client.finish_job("run-7")
            assert kind(collector.next()) is WatchKind.FINISHED
            assert collector.next() is None


def test_a_recreated_job_arrives_as_resync_with_the_previous_incarnation(
    running_server: RunningServer,
) -> None:
    with Client(running_server.address) as client:
        client.create_job("run-1", STEP_LR, [0.1])
        client.override("run-1", "lr /= 2")
        collector = Collector(WatchFollower(client, "run-1"))
        assert kind(collector.next()) is WatchKind.SNAPSHOT
        client.create_job("run-1", "ConstantLR(factor=0.5)", [0.2], replace=True)
        resync = collector.next()
        collector.close()
    assert kind(resync) is WatchKind.RESYNC and resync is not None
    assert resync.job is not None and resync.previous is not None
    assert (resync.job.schedule, resync.job.events) == ("ConstantLR(factor=0.5)", ())
    assert resync.job.created_version == 3 > resync.previous.created_version
    assert [e.version for e in resync.previous.events] == [2]


def test_a_held_version_the_controller_never_had_is_replaced_by_resync(
    running_server: RunningServer,
) -> None:
    with Client(running_server.address) as client:
        created = client.create_job("run-1", STEP_LR, [0.1]).job
        ahead = replace(created, version=99)
        collector = Collector(WatchFollower(client, "run-1", job=ahead))
        resync = collector.next()
        collector.close()
    assert kind(resync) is WatchKind.RESYNC and resync is not None
    assert resync.job is not None and resync.job.version == 1


def test_close_from_another_thread_ends_the_iteration(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        client.create_job("run-1", STEP_LR, [0.1])
        collector = Collector(WatchFollower(client, "run-1"))
        assert kind(collector.next()) is WatchKind.SNAPSHOT
        started = time.monotonic()
        collector.close()
        assert time.monotonic() - started < 2
        assert collector.next(skip_heartbeats=True) is None


def test_raise_first_ends_at_once_on_a_wrong_address_or_job(running_server: RunningServer) -> None:
    with Client(running_server.address) as client:
        with pytest.raises(ClientError) as unknown:
            list(WatchFollower(client, "run-9", raise_first=True))
        # NOT_FOUND is not transient: it ends the iteration without raise_first too.
        with pytest.raises(ClientError):
            list(WatchFollower(client, "run-9"))
    assert unknown.value.code == "NOT_FOUND"
    with Client(f"127.0.0.1:{free_port()}") as client, pytest.raises(ClientError) as down:
        list(WatchFollower(client, "run-1", raise_first=True))
    assert down.value.code == "UNAVAILABLE"


def test_reconnect_delays_back_off_exponentially_with_jitter() -> None:
    with Client(f"127.0.0.1:{free_port()}") as client:
        follower = WatchFollower(client, "run-1", backoff_initial_s=0.02, backoff_max_s=0.08)
        collector = Collector(follower)
        waits = []
        for _ in range(5):
            update = collector.next()
            assert update is not None and update.lost and update.error is not None
            assert update.error.code == "UNAVAILABLE"
            waits.append(update.retry_in)
        collector.close()
    steps = [0.02, 0.04, 0.08, 0.08, 0.08]  # doubling, capped at backoff_max_s
    for wait, step in zip(waits, steps, strict=True):
        assert 0.5 * step <= wait <= 1.5 * step


# -- a scripted LRController: gaps, TLS --------------------------------------------------------


def _job(version: int, events: tuple[Event, ...] = ()) -> Job:
    return Job("run-1", STEP_LR, (0.1,), version=version, events=events)


def _event(version: int) -> Event:
    return Event(version, Op.SCALE, 0.5)


@dataclass
class Scripted(lrctl_pb2_grpc.LRControllerServicer):
    """Answers Watch call i with ``scripts[i]``; records what each call asked for."""

    scripts: list[list[lrctl_pb2.WatchResponse]] = field(default_factory=list)
    from_versions: list[int] = field(default_factory=list)
    seen_auth: list[str] = field(default_factory=list)
    seen_names: list[str] = field(default_factory=list)

    def Watch(
        self, request: lrctl_pb2.WatchRequest, context: Any
    ) -> Iterator[lrctl_pb2.WatchResponse]:
        self.from_versions.append(request.from_version)
        yield from self.scripts[len(self.from_versions) - 1]

    def ListJobs(
        self, request: lrctl_pb2.ListJobsRequest, context: Any
    ) -> lrctl_pb2.ListJobsResponse:
        self.seen_auth.append(dict(context.invocation_metadata()).get("authorization", ""))
        names = context.auth_context().get("x509_common_name", [b""])
        self.seen_names.append(names[0].decode())
        return lrctl_pb2.ListJobsResponse()


def snapshot(version: int, *events: int) -> lrctl_pb2.WatchResponse:
    job = _job(version, tuple(_event(v) for v in events))
    return lrctl_pb2.WatchResponse(
        kind=lrctl_pb2.WatchResponse.KIND_SNAPSHOT, version=version, job=job_to_proto(job)
    )


def event(version: int) -> lrctl_pb2.WatchResponse:
    return lrctl_pb2.WatchResponse(
        kind=lrctl_pb2.WatchResponse.KIND_EVENT,
        version=version,
        event=event_to_proto(_event(version)),
    )


def heartbeat(version: int) -> lrctl_pb2.WatchResponse:
    return lrctl_pb2.WatchResponse(kind=lrctl_pb2.WatchResponse.KIND_HEARTBEAT, version=version)


def finished(version: int) -> lrctl_pb2.WatchResponse:
    job = replace(_job(version), state=JobState.FINISHED)
    return lrctl_pb2.WatchResponse(
        kind=lrctl_pb2.WatchResponse.KIND_FINISHED, version=version, job=job_to_proto(job)
    )


@pytest.fixture
def scripted() -> Iterator[tuple[Scripted, str]]:
    servicer = Scripted()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    lrctl_pb2_grpc.add_LRControllerServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_a_gap_resumes_from_the_version_held(scripted: tuple[Scripted, str]) -> None:
    servicer, address = scripted
    servicer.scripts = [
        [snapshot(1), event(2), event(4)],  # version 3 skipped: resume from 2
        [event(3), heartbeat(5)],  # a heartbeat ahead of what is held: resume from 3
        [event(4), event(4), event(5), finished(6)],  # a duplicate is ignored
    ]
    with Client(address) as client:
        updates = list(WatchFollower(client, "run-1", backoff_initial_s=0.01))
    assert servicer.from_versions == [0, 2, 3]
    kinds = [u.message.kind for u in updates if u.message is not None]
    assert kinds == [
        WatchKind.SNAPSHOT,
        WatchKind.EVENT,
        WatchKind.EVENT,
        WatchKind.EVENT,
        WatchKind.EVENT,
        WatchKind.EVENT,
        WatchKind.FINISHED,
    ]
    held = [u.job.version for u in updates if u.job is not None]
    assert held == [1, 2, 3, 4, 4, 5, 6]
    assert not any(u.lost for u in updates)  # a gap is not a lost connection
    assert updates[-1].finished


# -- TLS ---------------------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(command: str, cwd: Path) -> None:
    """Run ``openssl`` with ``command`` split on white space (no argument here has any)."""
    subprocess.run(
        ["openssl", *command.split()], cwd=cwd, check=True, capture_output=True, timeout=60
    )


#: A new P-256 key, unencrypted, for ``openssl req``.
_NEW_KEY = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"


def _signed(name: str, cn: str, san: str, cwd: Path) -> None:
    _openssl(f"req {_NEW_KEY} -keyout {name}.key -out {name}.csr -subj /CN={cn}", cwd)
    (cwd / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        f"x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem "
        f"-days 1 -extfile {name}.ext",
        cwd,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA, a server certificate for ``lrctl.internal`` only, and a client certificate."""
    where = tmp_path_factory.mktemp("tls")
    _openssl(
        f"req -x509 {_NEW_KEY} -keyout ca.key -out ca.pem -days 1 -subj /CN=lrctl-test-ca", where
    )
    _signed("server", "lrctl.internal", "DNS:lrctl.internal", where)
    _signed("client", "rank-0", "DNS:rank-0", where)
    return Certs(
        where / "ca.pem",
        where / "server.pem",
        where / "server.key",
        where / "client.pem",
        where / "client.key",
    )


@pytest.fixture
def tls_server(certs: Certs) -> Iterator[tuple[Scripted, str]]:
    servicer = Scripted()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    lrctl_pb2_grpc.add_LRControllerServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    credentials = grpc.ssl_server_credentials(
        [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())],
        root_certificates=certs.ca.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_mutual_tls_with_a_token_from_the_environment(
    certs: Certs, tls_server: tuple[Scripted, str]
) -> None:
    servicer, address = tls_server
    env = {
        "LRCTL_TLS_CA": str(certs.ca),
        "LRCTL_TLS_CERT": str(certs.client_cert),
        "LRCTL_TLS_KEY": str(certs.client_key),
        "LRCTL_TOKEN": "s3cret",
    }
    tls = TLSConfig.from_env(env)
    assert tls is not None
    # The certificate names lrctl.internal; the address is an IP.
    with Client(address, environ=env, tls=replace(tls, server_name="lrctl.internal")) as client:
        assert client.list_jobs() == []
    # The token travels as call credentials over TLS: the same header as in plaintext.
    assert servicer.seen_auth == ["Bearer s3cret"]
    assert servicer.seen_names == ["rank-0"]


@pytest.mark.parametrize("variant", ["wrong-name", "no-client-cert", "plaintext"])
def test_tls_failures_are_client_errors(
    certs: Certs, tls_server: tuple[Scripted, str], variant: str
) -> None:
    servicer, address = tls_server
    tls: TLSConfig | bool = {
        "wrong-name": TLSConfig(str(certs.ca), str(certs.client_cert), str(certs.client_key)),
        "no-client-cert": TLSConfig(str(certs.ca), server_name="lrctl.internal"),
        "plaintext": False,
    }[variant]
    with (
        Client(address, tls=tls, environ={}, timeout=5) as client,
        pytest.raises(ClientError) as caught,
    ):
        client.list_jobs()
    assert caught.value.code == "UNAVAILABLE"
    assert servicer.seen_auth == []
