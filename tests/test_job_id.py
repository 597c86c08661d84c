"""Where a worker's job id comes from: argument, LRCTL_JOB, Ray Train run name, torchrun.

The real launchers are exercised in tests/test_torchrun.py and tests/test_ray_restart.py;
these pin the precedence and the refusals with the one loader, ``WorkerConfig.load``.
"""

from __future__ import annotations

import pytest

from worker import WorkerConfig, WorkerError


def load(
    environ: dict[str, str], *, job: str | None = None, run_name: str | None = None
) -> WorkerConfig:
    return WorkerConfig.load(job=job, environ=environ, default_job=lambda: run_name)


@pytest.mark.parametrize(
    ("environ", "job", "run_name", "expected", "source"),
    [
        pytest.param(
            {"LRCTL_JOB": "env", "TORCHELASTIC_RUN_ID": "tr"},
            "arg",
            "ray",
            "arg",
            "job=",
            id="argument-first",
        ),
        pytest.param(
            {"LRCTL_JOB": "env", "TORCHELASTIC_RUN_ID": "tr"},
            None,
            "ray",
            "env",
            "LRCTL_JOB",
            id="then-LRCTL_JOB",
        ),
        pytest.param(
            {"TORCHELASTIC_RUN_ID": "tr"},
            None,
            "ray-run-7",
            "ray-run-7",
            "the Ray Train run name",
            id="then-ray-run-name",
        ),
        pytest.param(
            {"TORCHELASTIC_RUN_ID": "run-42"},
            None,
            None,
            "run-42",
            "TORCHELASTIC_RUN_ID",
            id="then-torchrun-rdzv-id",
        ),
        pytest.param(
            {"TORCHELASTIC_RUN_ID": "0b7f4a3e-2c1d-4b8e-9f3a-5d6c7b8a9e0f"},
            None,
            None,
            "0b7f4a3e-2c1d-4b8e-9f3a-5d6c7b8a9e0f",
            "TORCHELASTIC_RUN_ID",
            id="torchrun-uuid",
        ),
        pytest.param(
            {"LRCTL_JOB": "team/run@2024:v1.2+x_y-z"},
            None,
            None,
            "team/run@2024:v1.2+x_y-z",
            "LRCTL_JOB",
            id="whole-charset",
        ),
    ],
)
def test_job_id_precedence(
    environ: dict[str, str], job: str | None, run_name: str | None, expected: str, source: str
) -> None:
    config = load(environ, job=job, run_name=run_name)
    assert (config.job, config.job_source) == (expected, source)


def test_torchrun_placeholder_none_is_refused() -> None:
    # torchrun --master-port P (static rendezvous) without --rdzv-id: TORCHELASTIC_RUN_ID=none.
    with pytest.raises(WorkerError, match="LRCTL_JOB") as info:
        load({"TORCHELASTIC_RUN_ID": "none"})
    assert "--rdzv-id" in str(info.value)
    # ... but LRCTL_JOB (or job=) settles it.
    assert load({"TORCHELASTIC_RUN_ID": "none", "LRCTL_JOB": "fixed"}).job == "fixed"


@pytest.mark.parametrize(
    ("environ", "run_name"),
    [
        pytest.param({}, "my run", id="ray-run-name-with-space"),
        pytest.param({}, "*glob", id="ray-run-name-glob"),
        pytest.param({"TORCHELASTIC_RUN_ID": "-leading-dash"}, None, id="torchrun-leading-dash"),
        pytest.param({"TORCHELASTIC_RUN_ID": "x" * 129}, None, id="torchrun-too-long"),
    ],
)
def test_a_default_id_that_does_not_fit_names_LRCTL_JOB(
    environ: dict[str, str], run_name: str | None
) -> None:
    with pytest.raises(WorkerError, match="set LRCTL_JOB"):
        load(environ, run_name=run_name)


def test_an_explicit_invalid_id_is_refused_before_any_network_call() -> None:
    with pytest.raises(WorkerError, match=r"job id 'a b' \(from LRCTL_JOB\) is not valid"):
        load({"LRCTL_JOB": "a b"})


def test_no_id_anywhere() -> None:
    with pytest.raises(WorkerError, match="no job id"):
        load({})
