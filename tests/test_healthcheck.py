"""The container health probe (``python -m controller.healthcheck``) against real servers.

Plain text against a real controller; TLS and mutual TLS, with the certificate's name given
by --tls-server-name and the failure modes (no client certificate, plain text, a wrong
name), against a real grpc.aio server carrying the standard health service, with
certificates made in the test. tests/test_tls.py probes a TLS and an mTLS controller too.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.conftest import RunningServer
from tests.pki import Pki, make_pki
from tests.procs import ROOT


def probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.healthcheck", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env or {},
    )


def test_serving_controller_is_healthy(running_server: RunningServer) -> None:
    for service in ("lrctl.v1.LRController", ""):
        done = probe("--address", running_server.address, "--service", service)
        assert done.returncode == 0, done.stderr
    # The default address is 127.0.0.1:$LRCTL_PORT, what a probe next to the server uses.
    done = probe(env={"LRCTL_PORT": str(running_server.port)})
    assert done.returncode == 0, done.stderr


def test_unknown_service_and_no_server_are_unhealthy(running_server: RunningServer) -> None:
    done = probe("--address", running_server.address, "--service", "nope.Service")
    assert done.returncode == 1 and "NOT_FOUND" in done.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        done = probe("--address", closed, "--timeout", "2")
    assert done.returncode == 1 and "UNAVAILABLE" in done.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for lrctl.lrctl.svc, and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"), server_names=("lrctl.lrctl.svc",))


@pytest.fixture(params=[False, True], ids=["tls", "mtls"])
async def tls_server(request: pytest.FixtureRequest, pki: Pki) -> AsyncIterator[tuple[str, bool]]:
    """A grpc.aio server with the health service, on TLS (or mutual TLS) only."""
    mutual = bool(request.param)
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca.read_bytes() if mutual else None,
        require_client_auth=mutual,
    )
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set("lrctl.v1.LRController", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    yield f"127.0.0.1:{port}", mutual
    await server.stop(0)


async def test_probe_over_tls_and_mutual_tls(tls_server: tuple[str, bool], pki: Pki) -> None:
    address, mutual = tls_server
    name = ("--tls-server-name", "lrctl.lrctl.svc")

    async def run(
        *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        # The server runs on this loop: the probe subprocess must not block it.
        return await asyncio.to_thread(probe, "--address", address, *args, env=env)

    # With the client certificate (from the environment, as in the pod): healthy either way.
    env = {
        "LRCTL_TLS_CA": str(pki.ca),
        "LRCTL_TLS_CERT": str(pki.client_cert),
        "LRCTL_TLS_KEY": str(pki.client_key),
    }
    done = await run(*name, env=env)
    assert done.returncode == 0, done.stderr
    # Without a client certificate: fine for TLS, refused by mutual TLS.
    done = await run(*name, "--tls-ca", str(pki.ca))
    assert done.returncode == (1 if mutual else 0), done.stderr
    # Plain text against a TLS port, or a name the certificate does not carry: unhealthy.
    done = await run("--timeout", "2")
    assert done.returncode == 1
    done = await run("--tls-server-name", "elsewhere.example", "--timeout", "2", env=env)
    assert done.returncode == 1 and "UNAVAILABLE" in done.stderr
