"""lrctl.endpoints: one address for several replicas, and a real channel failing over."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lrctl.endpoints import ROUND_ROBIN, channel_target, split_address
from tests._cases import cases


@pytest.mark.parametrize(
    "address,target",
    cases(
        {
            "one-ip": ("127.0.0.1:50051", "127.0.0.1:50051"),
            "ipv4-list": ("10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2"),
            "spaces": (" 10.0.0.1:1 , 10.0.0.2:2 ", "ipv4:10.0.0.1:1,10.0.0.2:2"),
            "ipv6-list": ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
            "dns-scheme": (
                "dns:///lrctl-replicas.lrctl.svc:50051",
                "dns:///lrctl-replicas.lrctl.svc:50051",
            ),
            "one-name": ("lrctl:50051", "lrctl:50051"),
        }
    ),
)
def test_targets(address: str, target: str) -> None:
    got, options = channel_target(address)
    assert got == target
    single_ip = address == "127.0.0.1:50051"
    assert (ROUND_ROBIN in options) is not single_ip
    policy = json.loads(dict([ROUND_ROBIN])["grpc.service_config"])
    assert policy == {"loadBalancingConfig": [{"round_robin": {}}]}


def test_names_are_resolved_and_keep_the_first_as_authority() -> None:
    target, options = channel_target("localhost:7001,127.0.0.1:7002")
    assert target.startswith("ipv4:") and target.endswith(",127.0.0.1:7002")
    assert "127.0.0.1:7001" in target
    assert ("grpc.default_authority", "localhost:7001") in options


@pytest.mark.parametrize(
    "address", ["", "127.0.0.1", "a:1,,b:2", "h:0", "h:99999", "h:x", "127.0.0.1:1,[::1]:2"]
)
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        channel_target(address)


def test_split_address() -> None:
    assert split_address("a:1,[::1]:2") == [("a", 1), ("::1", 2)]


async def _health_server(
    status: health_pb2.HealthCheckResponse.ServingStatus.ValueType,
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("probe", status)
    return server, port


async def test_a_channel_spreads_calls_and_survives_a_dead_endpoint() -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    first, p1 = await _health_server(serving)
    second, p2 = await _health_server(not_serving)
    target, options = channel_target(f"127.0.0.1:{p1},127.0.0.1:{p2}")
    try:
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="probe")
            await stub.Check(request, wait_for_ready=True, timeout=10)
            seen = {(await stub.Check(request, timeout=10)).status for _ in range(20)}
            assert seen == {serving, not_serving}  # both replicas served calls
            await first.stop(None)
            answers = {(await stub.Check(request, timeout=10)).status for _ in range(20)}
            assert answers == {not_serving}  # every call now goes to the replica that is up
    finally:
        await first.stop(None)
        await second.stop(None)
