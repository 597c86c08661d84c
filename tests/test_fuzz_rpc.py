"""Hypothesis over every field of every LRController request, raw bytes and metadata.

Against a real controller process (``lrctl serve`` on loopback): whatever a client sends in a
well-framed call, the answer is one of the defined status codes (never INTERNAL, UNKNOWN or a
timeout); afterwards the server is healthy, the job the fuzzer never targets is exactly as it
was, and the controller's RSS is within 2x of what it was at the start. Requests are built
from the proto descriptors, so a field added to the API is fuzzed without touching this
file. Derandomized in CI (tests/conftest.py's "ci" profile); ``LRCTL_SOAK=1`` runs the long
mode.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrctl.constants import CLIENT_CHANNEL_OPTIONS
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests.procs import ControllerProcess

pb = lrctl_pb2
pytestmark = pytest.mark.slow

SERVICE = pb.DESCRIPTOR.services_by_name["LRController"]
SENTINEL = "sentinel"
#: Every code a client may get for what it sent; INTERNAL, UNKNOWN, UNAVAILABLE and
#: DEADLINE_EXCEEDED would mean the controller broke or stalled.
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

SPECS = [
    "StepLR(step_size=2, gamma=0.5)",
    "ExponentialLR(gamma=1.5)",
    "CosineAnnealingLR(T_max=10)",
    "LambdaLR(lr_lambda='0.95 ** epoch')",
    "MultiplicativeLR(lr_lambda='0.99 + 0.001 * epoch')",
    "OneCycleLR(max_lr=0.1, total_steps=20)",
    "ReduceLROnPlateau(patience=1)",
    "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=5)",
    "SequentialLR(schedulers=[ConstantLR(factor=0.5, total_iters=2), "
    "ExponentialLR(gamma=0.9)], milestones=[2])",
    "ChainedScheduler(schedulers=[ExponentialLR(gamma=0.9), MultiplicativeLR(lr_lambda='0.9')])",
    "LambdaLR(lr_lambda='__import__(\"os\")')",
    "LambdaLR(lr_lambda='9 ** 9 ** 9')",
    "StepLR(step_size=0)",
    "Nope()",
    "",
    "StepLR(1)" + " " * 5000,
]
JOB_IDS = st.one_of(
    st.sampled_from(["fuzz-0", "fuzz-1", "fuzz/2", "", "-bad", "a" * 129, "job*"]),
    st.text(max_size=40),
).filter(lambda s: s != SENTINEL)
TEXT = st.one_of(
    st.text(max_size=30),
    st.text(max_size=2000),
    st.sampled_from(["ok\nop=finish", "\x00\x1b[2K", "é" * 600, "x" * 5000]),
)
FLOATS = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 0.1, 1.0, 2e6, 1e300, 5e-324]))
RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    small = st.integers(max(low, -3), min(high, 12))
    return st.one_of(small, small, st.integers(low, high), st.sampled_from([low, high]))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        if field.name == "job_id":
            return JOB_IDS
        if field.name == "schedule":
            return st.one_of(st.sampled_from(SPECS), st.text(max_size=60))
        return TEXT
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return FLOATS
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-1, 8)  # proto3 enums are open: unknown numbers travel too
    if field.type in RANGES:
        return _integers(*RANGES[field.type])
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message(field.message_type)
    raise AssertionError(f"no strategy for {field.full_name} (type {field.type})")


def _field(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    inner = _scalar(field)
    if field.is_repeated:
        lists = st.lists(inner, max_size=4)
        if field.name in ("base_lrs", "lrs"):
            return st.one_of(
                lists, st.just([0.1] * 1025), st.just([0.123456789] * 1024), st.just([0.1] * 3)
            )
        return lists
    if field.has_presence:
        return st.one_of(st.none(), inner)
    return inner


def message(descriptor: Descriptor) -> st.SearchStrategy[Any]:
    """Any message of ``descriptor``'s type: every field, within its type's whole range."""
    if descriptor.full_name == "google.protobuf.Timestamp":
        return st.builds(
            lambda s, n: {"seconds": s, "nanos": n},
            st.integers(-62135596800, 253402300799),
            st.integers(0, 999_999_999),
        )
    fields = {f.name: _field(f) for f in descriptor.fields}
    return st.fixed_dictionaries({}, optional=fields)


def build(descriptor: Descriptor, values: dict[str, Any]) -> Any:
    cls = getattr(pb, descriptor.name)
    msg = cls()
    for name, value in values.items():
        if value is None:
            continue
        field = descriptor.fields_by_name[name]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                getattr(msg, name).extend(_sub(field.message_type, v) for v in value)
            else:
                getattr(msg, name).CopyFrom(_sub(field.message_type, value))
        elif field.is_repeated:
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    return msg


def _sub(descriptor: Descriptor, values: dict[str, Any]) -> Any:
    if descriptor.full_name == "google.protobuf.Timestamp":
        from google.protobuf.timestamp_pb2 import Timestamp

        return Timestamp(**values)
    return build(descriptor, values)


METHODS = list(SERVICE.methods)
CALLS = st.one_of(*(st.tuples(st.just(m), message(m.input_type)) for m in METHODS))
RESERVED = ("grpc-", "te", "content-type", "user-agent", "authorization")
METADATA = st.lists(
    st.tuples(
        st.from_regex(r"[a-z][a-z0-9_.-]{0,15}", fullmatch=True).filter(
            lambda k: not k.startswith(RESERVED) and not k.endswith("-bin")
        ),
        st.text(alphabet=string.printable.strip("\t\n\r\x0b\x0c"), max_size=100),
    ),
    max_size=3,
)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def fuzz_target(tmp_path: Path) -> Iterator[tuple[ControllerProcess, grpc.Channel]]:
    controller = ControllerProcess(
        tmp_path / "lrctl.db", extra=("--heartbeat-seconds", "0.2", "--log-level", "error")
    ).start()
    try:
        with grpc.insecure_channel(
            controller.address, options=list(CLIENT_CHANNEL_OPTIONS)
        ) as channel:
            yield controller, channel
    finally:
        controller.stop()


def _call(
    channel: grpc.Channel, method: Any, payload: Any, metadata: Any = (), raw: bool = False
) -> grpc.StatusCode:
    path = f"/{SERVICE.full_name}/{method.name}"
    serializer = None if raw else type(payload).SerializeToString
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, request_serializer=serializer)(
                payload, timeout=10, metadata=metadata
            )
            try:
                next(stream)
            except StopIteration:
                pass
            finally:
                stream.cancel()
        else:
            channel.unary_unary(path, request_serializer=serializer)(
                payload, timeout=10, metadata=metadata
            )
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.CANCELLED and method.server_streaming:
            return grpc.StatusCode.OK  # our own cancel after the first message
        details = exc.details() or ""  # type: ignore[attr-defined]
        assert code in ALLOWED, (method.name, code, details)
        # The controller's own answer, not a transport failure the client made up (a status
        # message too large for the headers, a message over the size limit).
        assert "Stream removed" not in details, (method.name, code, details)
        assert len(details) <= 1024, (method.name, code, len(details))
        return code  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _state(channel: grpc.Channel) -> Any:
    stub = lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]
    return stub.GetJob(pb.GetJobRequest(job_id=SENTINEL), timeout=10)


@pytest.mark.parametrize(
    "examples",
    [
        pytest.param(600, id="ci"),
        pytest.param(5000, marks=pytest.mark.soak, id="soak"),
    ],
)
def test_fuzzed_requests_get_defined_codes_and_hurt_nobody(
    fuzz_target: tuple[ControllerProcess, grpc.Channel], examples: int
) -> None:
    controller, channel = fuzz_target
    stub = lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]
    stub.CreateJob(
        pb.CreateJobRequest(job_id=SENTINEL, schedule="StepLR(step_size=3)", base_lrs=[0.1, 0.01]),
        timeout=10,
    )
    stub.Override(
        pb.OverrideRequest(
            job_id=SENTINEL, op=pb.OVERRIDE_OP_SCALE, value=0.5, reason="before the fuzz"
        ),
        timeout=10,
    )
    for job_id in ("fuzz-0", "fuzz-1"):  # targets that exist, so deeper paths run
        stub.CreateJob(
            pb.CreateJobRequest(job_id=job_id, schedule="StepLR(step_size=3)", base_lrs=[0.1]),
            timeout=10,
        )
    before = _state(channel)
    assert controller.proc is not None
    start_rss = rss_kib(controller.proc.pid)
    codes: dict[str, set[str]] = {}

    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(call=CALLS, metadata=METADATA)
    def fuzz_fields(call: tuple[Any, dict[str, Any]], metadata: list[tuple[str, str]]) -> None:
        method, values = call
        code = _call(channel, method, build(method.input_type, values), tuple(metadata))
        codes.setdefault(method.name, set()).add(code.name)

    @settings(
        max_examples=max(examples // 3, 50),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(method=st.sampled_from(METHODS), payload=st.binary(max_size=300))
    def fuzz_bytes(method: Any, payload: bytes) -> None:
        _call(channel, method, payload, raw=True)

    fuzz_fields()
    fuzz_bytes()
    health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE.full_name), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert _state(channel) == before  # the job nobody targeted is exactly as it was
    assert controller.proc.poll() is None
    assert rss_kib(controller.proc.pid) <= 2 * start_rss, (start_rss, rss_kib(controller.proc.pid))
    assert set(codes) == {m.name for m in METHODS}, codes  # every RPC was exercised
