"""The core's input limits (DESIGN "Default limits" and "Values"): cheap, clear, bounded.

Spec text at most 4 KiB, at most 1,024 param groups (SizeLimitError: the controller answers
RESOURCE_EXHAUSTED), base LRs and ``lr = X`` finite, >= 0 and at most a configurable
ceiling, scale factors finite and > 0 (SpecError / OverrideError: INVALID_ARGUMENT). Every
message says what was expected and what came, quoting at most a bounded prefix of the input.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from controller.limits import ServerLimits
from lrctl.client import Client, ClientError
from lrctl.constants import DEFAULT_MAX_PARAM_GROUPS, DEFAULT_MAX_SPEC_BYTES
from lrctl.errors import OverrideError, SizeLimitError, SpecError
from lrctl.overrides import Op, parse_override, validate_override
from lrctl.program import LRProgram, preview
from lrctl.schedules import build_schedule
from lrctl.spec import parse_spec
from tests.procs import CLI, checkout_env, run_captured

MESSAGE_LIMIT = 600  # characters: a bounded prefix of the input, never all of it


def test_default_limits_are_designs() -> None:
    assert DEFAULT_MAX_SPEC_BYTES == 4096
    assert DEFAULT_MAX_PARAM_GROUPS == 1024


def _spec_of_bytes(n: int) -> str:
    head = "LambdaLR(lr_lambda='0.95 ** epoch')"
    return head + " " * (n - len(head))  # trailing blanks count: the text is what travels


def test_spec_text_up_to_4_kib() -> None:
    parse_spec(_spec_of_bytes(4096))
    with pytest.raises(SizeLimitError) as info:
        parse_spec(_spec_of_bytes(4097))
    message = str(info.value)
    assert "at most 4096 bytes" in message and "4097" in message
    assert len(message) < MESSAGE_LIMIT


def test_spec_size_counts_utf8_bytes_and_quotes_a_prefix() -> None:
    text = "StepLR(step_size=1) # " + "é" * 3000  # 3,000 characters, 6,000 bytes
    with pytest.raises(SizeLimitError) as info:
        parse_spec(text)
    assert "StepLR(step_size=1)" in str(info.value)
    assert len(str(info.value)) < MESSAGE_LIMIT
    huge = "X" * 10_000_000
    start = time.perf_counter()
    with pytest.raises(SizeLimitError) as info:
        LRProgram(huge, [0.1])
    assert time.perf_counter() - start < 1.0
    assert len(str(info.value)) < MESSAGE_LIMIT


def test_param_groups_up_to_1024() -> None:
    LRProgram("StepLR(step_size=10)", [0.1] * 1024)
    with pytest.raises(SizeLimitError, match=r"at most 1024 param groups, got 1025"):
        LRProgram("StepLR(step_size=10)", [0.1] * 1025)
    with pytest.raises(SizeLimitError, match=r"at most 1024 param groups, got 200000"):
        build_schedule("StepLR(step_size=10)", 200_000)


def test_a_million_groups_is_refused_at_once() -> None:
    start = time.perf_counter()
    with pytest.raises(SizeLimitError):
        LRProgram("LambdaLR(lr_lambda='0.95 ** epoch')", [0.1] * 1_000_000)
    assert time.perf_counter() - start < 1.0


def test_validating_1024_groups_compiles_each_lambda_once() -> None:
    start = time.perf_counter()
    program = LRProgram("LambdaLR(lr_lambda='0.95 ** epoch if epoch < 100 else 0.5')", [0.1] * 1024)
    program.lrs(5)
    assert time.perf_counter() - start < 1.0
    fns = program.schedule.fns  # type: ignore[attr-defined]
    assert len({id(f) for f in fns}) == 1


@pytest.mark.parametrize("value", [1e6 + 1, 1e300])
def test_base_lrs_above_the_ceiling_are_refused(value: float) -> None:
    with pytest.raises(SpecError, match=r"base_lrs\[1\] must be .*<= 1e\+06"):
        LRProgram("StepLR(step_size=10)", [0.1, value])


def test_the_ceiling_is_configurable() -> None:
    from lrctl.limits import DEFAULT_LIMITS, Limits

    assert DEFAULT_LIMITS.max_lr == 1e6
    LRProgram("StepLR(step_size=10)", [5e6], limits=Limits(max_lr=1e7))
    with pytest.raises(SpecError, match=r"<= 0\.5"):
        LRProgram("StepLR(step_size=10)", [0.6], limits=Limits(max_lr=0.5))
    with pytest.raises(SizeLimitError, match="at most 2 param groups"):
        LRProgram("StepLR(step_size=10)", [0.1] * 3, limits=Limits(max_param_groups=2))
    with pytest.raises(SizeLimitError, match="at most 30 bytes"):
        LRProgram("StepLR(step_size=10, gamma=0.5)", [0.1], limits=Limits(max_spec_bytes=30))


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("CyclicLR(base_lr=0.001, max_lr=2e6)", id="cyclic-max-lr"),
        pytest.param("OneCycleLR(max_lr=[0.1, 1e7], total_steps=100)", id="onecycle-max-lr"),
        pytest.param("CosineAnnealingLR(T_max=10, eta_min=1e9)", id="cosine-eta-min"),
        pytest.param("ReduceLROnPlateau(min_lr=1e7)", id="plateau-min-lr"),
    ],
)
def test_lrs_inside_a_spec_are_held_to_the_ceiling(spec: str) -> None:
    with pytest.raises(SpecError, match=r"<= 1e\+06"):
        LRProgram(spec, [0.1, 0.1])


def test_set_is_held_to_the_ceiling_and_scales_are_finite_and_positive() -> None:
    with pytest.raises(OverrideError, match=r"<= 1e\+06, got 2000000.0"):
        parse_override("lr = 2e6")
    with pytest.raises(OverrideError, match=r"<= 1e\+06"):
        validate_override(Op.SET, 1e300)
    validate_override(Op.SET, 5e6, max_lr=1e7)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(OverrideError, match="finite number > 0"):
            validate_override(Op.SCALE, bad)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("lr = " + "9" * 5000, id="huge-number"),
        pytest.param("lr /= " + "x" * 100_000, id="huge-garbage"),
        pytest.param("lr " * 50_000, id="huge-statement"),
    ],
)
def test_override_messages_quote_a_bounded_prefix(text: str) -> None:
    with pytest.raises(OverrideError) as info:
        parse_override(text)
    assert len(str(info.value)) < MESSAGE_LIMIT


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("StepLR(step_size=" + "9" * 3000 + ")", id="huge-int"),
        pytest.param("StepLR(step_size=1, gamma=" + "9" * 3000 + ")", id="huge-int-as-float"),
        pytest.param("LambdaLR(lr_lambda='" + "1+" * 1500 + "1')", id="long-expression"),
        pytest.param("MultiStepLR(milestones=[" + "1," * 2500 + "1], gamma=0.5)", id="long-list"),
        pytest.param("StepLR(" + "step_size" * 400 + "=1)", id="long-keyword"),
        pytest.param("FooLR" + "x" * 3000 + "()", id="long-name"),
    ],
)
def test_spec_messages_quote_a_bounded_prefix(spec: str) -> None:
    with pytest.raises(SpecError) as info:
        LRProgram(spec, [0.1])
    assert len(str(info.value)) < MESSAGE_LIMIT


def test_preview_rows_respect_the_group_limit() -> None:
    with pytest.raises(SizeLimitError):
        preview("StepLR(step_size=10)", [0.1] * 2000, 10)


async def test_clients_leave_the_limits_to_the_controller(start_controller: Any) -> None:
    """A controller configured above DESIGN's defaults: the client, the CLI's pre-parse and
    attach's spec comparison must not hold its callers to the defaults."""
    ctl = await start_controller(
        limits=ServerLimits(max_lr=1e7, max_spec_bytes=16_384), metrics_port=None
    )
    spec = f"MultiStepLR(milestones={list(range(1, 1500))}, gamma=0.5)"
    assert len(spec.encode()) > DEFAULT_MAX_SPEC_BYTES
    with Client(ctl.address) as client:
        first = await asyncio.to_thread(client.create_job, "big", spec, [0.1])
        # The same spec spelled otherwise attaches (canonical comparison), no conflict.
        again = await asyncio.to_thread(
            client.create_job, "big", spec.replace("gamma=0.5", "gamma=0.50"), [0.1]
        )
        assert first.created and not again.created
        done = await asyncio.to_thread(client.override, "big", "lr = 2e6")
        assert done.event.value == 2e6
        with pytest.raises(ClientError) as info:  # the configured ceiling is the controller's
            await asyncio.to_thread(client.override, "big", "lr = 2e7")
        assert info.value.code == "INVALID_ARGUMENT" and "<= 1e+07" in info.value.details
    cli = await asyncio.to_thread(
        run_captured,
        [*CLI, "job", "create", "big2", "--schedule", spec, "--base-lr", "0.1"],
        env={**checkout_env(), "LRCTL_ADDRESS": ctl.address},
    )
    assert cli.returncode == 0, cli.stderr
