"""The canonical spec text: one normal form per schedule, torch's parameter order.

Keyword arguments in torch's parameter order, positional spellings bound to their names,
defaults dropped; attach compares parsed specs; specs stored in an older form are read back
canonical.
"""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from torch.optim import lr_scheduler

from controller.server import Controller
from lrctl.errors import SpecError
from lrctl.program import preview
from lrctl.schedules import SCHEDULES, build_schedule, canonical_spec, stored_spec_text
from lrctl.spec import parse_spec
from lrctl.v1 import lrctl_pb2, lrctl_pb2_grpc
from tests._cases import cases
from tests.conftest import expect_status

pb = lrctl_pb2

SPELLINGS = cases(
    {
        "step": (
            "StepLR(step_size=2, gamma=0.5)",
            [
                "StepLR(gamma=0.5, step_size=2)",
                "StepLR(2, 0.5)",
                "StepLR(2, gamma=0.5)",
                " StepLR( gamma = .5 , step_size=2 )",
            ],
        ),
        "step-default-gamma": (
            "StepLR(step_size=2)",
            ["StepLR(step_size=2, gamma=0.1)", "StepLR(2, 0.1)", "StepLR(gamma=0.1, step_size=2)"],
        ),
        "cosine": (
            "CosineAnnealingLR(T_max=100, eta_min=0.001)",
            ["CosineAnnealingLR(eta_min=0.001, T_max=100)", "CosineAnnealingLR(100, 0.001)"],
        ),
        "cosine-default-eta-min": (
            "CosineAnnealingLR(T_max=100)",
            ["CosineAnnealingLR(100, 0)", "CosineAnnealingLR(eta_min=0.0, T_max=100)"],
        ),
        "constant-all-defaults": (
            "ConstantLR()",
            ["ConstantLR(total_iters=5)", "ConstantLR(0.3333333333333333, 5)"],
        ),
        "onecycle": (
            "OneCycleLR(max_lr=0.1, total_steps=1000, three_phase=True)",
            [
                "OneCycleLR(0.1, 1000, three_phase=True, "
                "cycle_momentum=True, anneal_strategy='cos')",
                "OneCycleLR(three_phase=True, total_steps=1000, max_lr=0.1, epochs=None)",
            ],
        ),
        "cyclic": (
            "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=50, mode='triangular2')",
            [
                "CyclicLR(mode='triangular2', step_size_up=50, max_lr=0.1, base_lr=0.001)",
                'CyclicLR(0.001, 0.1, 50, None, "triangular2", 1.0)',
            ],
        ),
        "sequential-nested": (
            "SequentialLR(schedulers=[LinearLR(start_factor=0.1), "
            "CosineAnnealingLR(T_max=95)], milestones=[5])",
            [
                "SequentialLR(milestones=[5], schedulers=[LinearLR(total_iters=5, "
                "start_factor=0.1), CosineAnnealingLR(95, eta_min=0)])",
                "SequentialLR([LinearLR(0.1, 1.0, 5), CosineAnnealingLR(95)], [5])",
            ],
        ),
        "plateau": (
            "ReduceLROnPlateau(factor=0.5)",
            [
                "ReduceLROnPlateau(min_lr=0.0, factor=0.5, mode='min')",
                "ReduceLROnPlateau('min', 0.5, 10)",
            ],
        ),
        "beyond-torch": (
            "WarmupCosineLR(num_warmup_steps=10, num_training_steps=100)",
            ["WarmupCosineLR(num_training_steps=100, num_warmup_steps=10, num_cycles=0.5)"],
        ),
    }
)


@pytest.mark.parametrize(("canonical", "spellings"), SPELLINGS)
def test_every_spelling_has_one_canonical_text(canonical: str, spellings: list[str]) -> None:
    assert canonical_spec(canonical).to_text() == canonical  # a fixed point
    for text in spellings:
        assert canonical_spec(text).to_text() == canonical, text
        assert canonical_spec(text) == parse_spec(canonical)
        assert build_schedule(text, 2).spec == parse_spec(canonical)  # validated form, same
        # ... and the normal form is the same schedule.
        assert preview(canonical, [0.1, 0.05], 60) == preview(text, [0.1, 0.05], 60)


@pytest.mark.parametrize(
    "text",
    [
        # DESIGN.md's and the README's examples are written in the canonical form.
        "StepLR(step_size=200, gamma=0.5)",
        "CosineAnnealingLR(T_max=100, eta_min=0.001)",
        "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=50, mode='triangular2')",
        "CosineAnnealingWarmRestarts(T_0=50, T_mult=2, eta_min=0.001)",
        "LambdaLR(lr_lambda='0.95 ** epoch')",
        "CosineAnnealingLR(T_max=1000)",
    ],
)
def test_documented_examples_are_canonical(text: str) -> None:
    assert canonical_spec(text).to_text() == text


def test_a_literal_of_another_kind_is_not_taken_for_the_default() -> None:
    # 0 is not False: dropping it would turn a refused spec into an accepted one.
    spec = canonical_spec("OneCycleLR(max_lr=0.1, total_steps=10, three_phase=0)")
    assert spec.get("three_phase") == 0
    with pytest.raises(SpecError, match="three_phase must be True or False"):
        build_schedule(spec, 1)
    # 1 and 1.0 are the same number: equal specs (attach compares these), written as given.
    assert canonical_spec("StepLR(step_size=2, gamma=1)") == canonical_spec(
        "StepLR(gamma=1.0, step_size=2)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    cases(
        {
            "unknown": ("FooLR(x=1)", "unknown scheduler 'FooLR'"),
            "too-many": ("StepLR(1, 2, 3)", "too many positional arguments"),
            "object-argument": (
                "StepLR(step_size=1, last_epoch=3)",
                "pass last_epoch to RemoteLRScheduler",
            ),
            "unknown-nested": (
                "SequentialLR(schedulers=[FooLR()], milestones=[])",
                "unknown scheduler",
            ),
        }
    ),
)
def test_canonical_spec_refuses_what_torch_cannot_bind(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        canonical_spec(text)


def test_stored_spec_text_leaves_unreadable_text_alone() -> None:
    assert stored_spec_text("StepLR(gamma=0.5, step_size=2)") == "StepLR(step_size=2, gamma=0.5)"
    assert stored_spec_text("GoneLR(x=1)") == "GoneLR(x=1)"


def test_parameter_order_and_defaults_are_torchs() -> None:
    # The canonical order is the order of each setup() signature: it must be torch's.
    object_args = {"self", "optimizer", "last_epoch", "verbose"}
    checked = 0
    for name, cls in SCHEDULES.items():
        theirs = getattr(lr_scheduler, name, None)
        if theirs is None:
            continue  # beyond torch (Hugging Face's warmup schedules)
        torch_params = [
            (p.name, p.default)
            for p in inspect.signature(theirs.__init__).parameters.values()
            if p.name not in object_args
        ]
        ours = [
            (p.name, p.default) for p in list(inspect.signature(cls.setup).parameters.values())[1:]
        ]
        assert ours == torch_params, name
        checked += 1
    assert checked == 15


# -- the controller: attach compares parsed specs; stored specs come back canonical ----------


async def test_attach_accepts_any_spelling_of_the_same_spec(
    stub: lrctl_pb2_grpc.LRControllerStub,
) -> None:
    first = await stub.CreateJob(
        pb.CreateJobRequest(job_id="run-1", schedule="StepLR(gamma=1, step_size=2)", base_lrs=[0.1])
    )
    assert first.created and first.job.schedule == "StepLR(step_size=2, gamma=1)"
    for spelling in ("StepLR(2, 1)", "StepLR(step_size=2, gamma=1.0)", "StepLR(2, gamma=1.0)"):
        again = await stub.CreateJob(
            pb.CreateJobRequest(job_id="run-1", schedule=spelling, base_lrs=[0.1])
        )
        assert not again.created and again.job.version == 1, spelling
    err = await expect_status(
        stub.CreateJob(
            pb.CreateJobRequest(job_id="run-1", schedule="StepLR(2, 0.5)", base_lrs=[0.1])
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "expected the same to attach" in (err.details() or "")


async def test_specs_stored_in_an_older_form_are_canonical_after_a_restart(
    start_controller: Callable[..., Awaitable[Controller]], tmp_path: Path
) -> None:
    db = tmp_path / "old.db"
    ctl = await start_controller(db=str(db))
    async with grpc.aio.insecure_channel(ctl.address) as channel:
        stub = lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]
        await stub.CreateJob(
            pb.CreateJobRequest(job_id="run-1", schedule="StepLR(2, 0.5)", base_lrs=[0.1])
        )
        await stub.Override(
            pb.OverrideRequest(
                job_id="run-1",
                op=pb.OVERRIDE_OP_REPLACE_SCHEDULE,
                schedule="CosineAnnealingLR(eta_min=0.001, T_max=10)",
            )
        )
    await ctl.stop(0)
    # What an older release wrote: the text as given, positional and reordered.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE jobs SET schedule = 'StepLR(gamma=0.5, step_size=2)'")
        conn.execute(
            "UPDATE events SET schedule = 'CosineAnnealingLR(10, 0.001)' WHERE schedule IS NOT NULL"
        )
    conn.close()

    ctl = await start_controller(db=str(db))
    async with grpc.aio.insecure_channel(ctl.address) as channel:
        stub = lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]
        job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"))
        assert job.schedule == "StepLR(step_size=2, gamma=0.5)"
        assert [e.schedule for e in job.events] == ["CosineAnnealingLR(T_max=10, eta_min=0.001)"]
        attached = await stub.CreateJob(
            pb.CreateJobRequest(
                job_id="run-1", schedule="StepLR(step_size=2, gamma=0.5)", base_lrs=[0.1]
            )
        )
        assert not attached.created and attached.job.version == 2
