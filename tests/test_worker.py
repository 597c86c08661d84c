"""RemoteLRScheduler in one process against a real controller subprocess."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch

from lrctl.client import Client
from lrctl.errors import SpecError
from tests.procs import ControllerProcess
from tests.torch_ref import build_torch, lr_rows
from worker import RemoteLRScheduler, WorkerConfig, WorkerError


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    with ControllerProcess(tmp_path_factory.mktemp("ctl") / "lrctl.db") as proc:
        yield proc


@pytest.fixture
def client(controller: ControllerProcess) -> Iterator[Client]:
    with Client(controller.address) as c:
        yield c


def make_optimizer(kind: str = "sgd") -> torch.optim.Optimizer:
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.1},
        {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": torch.tensor(0.05)},
    ]
    if kind == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=0.9)


def wait_for_version(scheduler: RemoteLRScheduler, version: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while scheduler._link.state is None or scheduler._link.state.version < version:
        assert time.monotonic() < deadline, "the override never reached the worker"
        time.sleep(0.01)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("StepLR(step_size=20, gamma=0.5)", id="step"),
        pytest.param("CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=10)", id="cyclic-momentum"),
        pytest.param("OneCycleLR(max_lr=0.1, total_steps=100)", id="onecycle-momentum"),
    ],
)
def test_same_lrs_and_momentum_as_torch(controller: ControllerProcess, spec: str) -> None:
    ours_opt, theirs_opt = make_optimizer(), make_optimizer()
    theirs = build_torch(spec, theirs_opt)
    with RemoteLRScheduler(
        ours_opt, spec, job=f"parity-{spec[:6]}", address=controller.address
    ) as ours:
        for _ in range(100):
            for a, b in zip(ours_opt.param_groups, theirs_opt.param_groups):
                assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-7)
                assert a["momentum"] == pytest.approx(b["momentum"], rel=1e-12)
            ours_opt.step()
            theirs_opt.step()
            ours.step()
            theirs.step()
        # A tensor LR stays the same tensor, updated in place as torch does.
        assert isinstance(ours_opt.param_groups[1]["lr"], torch.Tensor)


def test_override_takes_effect_and_resume_replays_exactly(
    controller: ControllerProcess, client: Client
) -> None:
    spec = "ExponentialLR(gamma=0.99)"
    opt = make_optimizer()
    first = RemoteLRScheduler(opt, spec, job="resume", address=controller.address)
    rows = lr_rows(first, opt, 30)
    version = client.override("resume", "lr *= 0.5", reason="spike").event.version
    wait_for_version(first, version)
    opt.step()
    first.step()  # applied at step 30
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.1 * 0.99**30 * 0.5)
    rows.append([float(x) for x in first.get_last_lr()])
    rows += lr_rows(first, opt, 31)[1:]  # to step 60
    checkpoint = first.state_dict()
    version = client.override("resume", "lr = 1e-3", group=1).event.version
    wait_for_version(first, version)
    rows += lr_rows(first, opt, 41)[1:]  # to step 100
    first.close()
    history = client.history("resume")
    assert [e.effective_step for e in history] == [30, 61]

    # A new process resumes from the checkpoint at step 60: same LRs, overrides included.
    opt2 = make_optimizer()
    second = RemoteLRScheduler(opt2, spec, job="resume", address=controller.address)
    second.load_state_dict(checkpoint)
    replay = [[float(x) for x in second.get_last_lr()]]
    replay += lr_rows(second, opt2, 41)[1:]
    second.close()
    assert replay == rows[60:]


def test_unreachable_controller_is_a_clear_error_after_a_bounded_wait() -> None:
    config = WorkerConfig(job="nowhere", address="127.0.0.1:1", connect_timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(
        WorkerError,
        match=r"cannot reach the lrctl controller at 127.0.0.1:1 "
        r"within 1s",
    ):
        RemoteLRScheduler(make_optimizer(), "StepLR(step_size=10)", config=config)
    assert time.monotonic() - start < 5


def test_invalid_spec_fails_before_any_network_call() -> None:
    with pytest.raises(SpecError, match="step_size must be a positive integer"):
        RemoteLRScheduler(make_optimizer(), "StepLR(step_size=0)", job="x", address="127.0.0.1:1")


def test_attaching_with_another_schedule_is_refused(controller: ControllerProcess) -> None:
    with RemoteLRScheduler(
        make_optimizer(), "StepLR(step_size=10)", job="conflict", address=controller.address
    ):
        pass
    with pytest.raises(WorkerError, match="cannot attach to job 'conflict': FAILED_PRECONDITION"):
        RemoteLRScheduler(
            make_optimizer(), "StepLR(step_size=11)", job="conflict", address=controller.address
        )


def test_every_rank_attaches_to_the_same_job(controller: ControllerProcess, client: Client) -> None:
    spec = "CosineAnnealingLR(T_max=50)"
    address = controller.address
    with (
        RemoteLRScheduler(make_optimizer(), spec, job="attach", address=address) as a,
        RemoteLRScheduler(make_optimizer(), spec, job="attach", address=address) as b,
    ):
        assert a.applied_version == b.applied_version == client.get_job("attach").version


def test_job_from_environment_and_verbose_output(
    controller: ControllerProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LRCTL_ADDRESS", controller.address)
    monkeypatch.setenv("LRCTL_JOB", "from-env")
    opt = make_optimizer()
    with RemoteLRScheduler(opt, "StepLR(step_size=2, gamma=0.5)", verbose=True) as sched:
        assert sched.job == "from-env"
        for _ in range(3):
            opt.step()
            sched.step()
    out = capsys.readouterr().out
    assert "Adjusting learning rate of group 0 to 1.0000e-01." in out
    assert "Adjusting learning rate of group 0 to 5.0000e-02." in out


def test_final_progress_is_flushed_on_close(controller: ControllerProcess, client: Client) -> None:
    opt = make_optimizer()
    spec = "StepLR(step_size=5)"
    with RemoteLRScheduler(opt, spec, job="flush", address=controller.address) as s:
        lr_rows(s, opt, 13)
    job = client.get_job("flush")
    assert job.step == 12
    assert job.lr == pytest.approx([0.001, 0.0005])


def test_override_made_while_down_takes_effect_at_the_resume_step(
    controller: ControllerProcess, client: Client
) -> None:
    # The usual torch resume: construct, then load_state_dict. An override sent while no
    # worker ran takes effect at the first resumed step, not at step 0 of the new process.
    spec = "StepLR(step_size=100)"
    opt = make_optimizer()
    with RemoteLRScheduler(opt, spec, job="resume-pending", address=controller.address) as s:
        lr_rows(s, opt, 21)  # to step 20
        checkpoint = s.state_dict()
    client.override("resume-pending", "lr = 1e-3", reason="while down")
    opt2 = make_optimizer()
    with RemoteLRScheduler(opt2, spec, job="resume-pending", address=controller.address) as s:
        s.load_state_dict(checkpoint)
        assert float(opt2.param_groups[0]["lr"]) == 0.1  # step 20, as checkpointed
        opt2.step()
        s.step()
        assert s.last_epoch == 21
        assert float(opt2.param_groups[0]["lr"]) == 1e-3
    assert [e.effective_step for e in client.history("resume-pending")] == [21]


def test_a_recreated_job_answers_older_versions_from_its_previous_incarnation() -> None:
    from lrctl.model import Job
    from lrctl.overrides import Event, Op
    from worker._link import Held

    old = Held(
        Job(
            "j",
            "StepLR(step_size=10)",
            (0.1,),
            version=3,
            events=(Event(2, Op.SCALE, 0.5), Event(3, Op.CLEAR)),
        )
    )
    new = Held(
        Job("j", "ExponentialLR(gamma=0.9)", (0.1,), version=4, created_version=4), previous=old
    )
    # A rank holding the new incarnation and one still on the old agree on version 2:
    assert new.at(2) == old.at(2)
    assert new.at(2).schedule == "StepLR(step_size=10)"
    assert [e.version for e in new.at(2).events] == [2]
    assert new.at(4).schedule == "ExponentialLR(gamma=0.9)"


def test_checkpoint_of_another_job_is_refused(controller: ControllerProcess) -> None:
    opt = make_optimizer()
    with RemoteLRScheduler(
        opt, "StepLR(step_size=5)", job="ckpt-a", address=controller.address
    ) as sched:
        state = sched.state_dict()
    with (
        RemoteLRScheduler(
            make_optimizer(), "StepLR(step_size=5)", job="ckpt-b", address=controller.address
        ) as other,
        pytest.raises(ValueError, match="checkpoint is of job 'ckpt-a', expected 'ckpt-b'"),
    ):
        other.load_state_dict(state)


def test_a_metric_for_a_schedule_without_plateau_warns(controller: ControllerProcess) -> None:
    opt = make_optimizer()
    with RemoteLRScheduler(
        opt, "StepLR(step_size=5)", job="metric-warn", address=controller.address
    ) as sched:
        opt.step()
        with pytest.warns(UserWarning, match="value is ignored"):
            sched.step(3)


def test_plateau_metrics_reduce_the_lr_through_the_controller(
    controller: ControllerProcess, client: Client
) -> None:
    opt = make_optimizer()
    spec = "ReduceLROnPlateau(factor=0.5, patience=1)"
    with RemoteLRScheduler(opt, spec, job="plateau", address=controller.address) as sched:
        metrics = [1.0, 0.9, 0.9, 0.9]  # no improvement for 2 > patience calls: one reduction
        for metric in metrics:
            opt.step()
            sched.step(metric)
        deadline = time.monotonic() + 10
        while float(opt.param_groups[0]["lr"]) == 0.1:  # the reduction reaches the worker
            assert time.monotonic() < deadline, "no reduction arrived"
            time.sleep(0.05)
            opt.step()
            sched.step()  # no further metrics: exactly one reduction
        assert float(opt.param_groups[0]["lr"]) == 0.05
    events = client.history("plateau")
    assert events[0].op == "plateau_reduce" and events[0].effective_step is not None


def test_rank_0_reports_the_agreed_version_and_the_final_report_detaches(
    controller: ControllerProcess, client: Client
) -> None:
    opt = make_optimizer()
    with RemoteLRScheduler(
        opt, "StepLR(step_size=5)", job="final", address=controller.address
    ) as sched:
        lr_rows(sched, opt, 5)
        version = client.override("final", "lr /= 2").event.version
        wait_for_version(sched, version)
        lr_rows(sched, opt, 3)
        assert sched.applied_version == version
        deadline = time.monotonic() + 10
        while (job := client.get_job("final")).applied_version < version:
            assert time.monotonic() < deadline, "the agreed version was never reported"
            time.sleep(0.05)
        assert job.world_size == 1  # attached: a single process
        last = sched.last_epoch
    job = client.get_job("final")  # close() sent the final report
    assert (job.step, job.applied_version, job.world_size) == (last, version, 0)
