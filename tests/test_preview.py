"""``lrctl preview`` and lrctl.plot: no controller needed."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import main
from lrctl.plot import lr_figure, plot_lr_curves
from lrctl.program import preview
from tests.procs import CLI, run_captured
from tests.torch_ref import torch_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_subprocess(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_captured([*CLI, *argv], cwd=cwd)


def preview_args(spec: str, base_lrs: list[float], steps: int, *extra: str) -> list[str]:
    lr_flags = [arg for lr in base_lrs for arg in ("--base-lr", repr(lr))]
    return ["preview", spec, *lr_flags, "--steps", str(steps), *extra]


@pytest.mark.parametrize(
    ("spec", "base_lrs", "steps"),
    [
        pytest.param("StepLR(step_size=200, gamma=0.5)", [0.1, 0.01], 1000, id="steplr"),
        pytest.param("CosineAnnealingLR(T_max=100, eta_min=0.001)", [0.1], 250, id="cosine"),
        pytest.param(
            "SequentialLR(schedulers=[LinearLR(start_factor=0.1, total_iters=5), "
            "CosineAnnealingLR(T_max=95)], milestones=[5])",
            [0.1, 0.05],
            120,
            id="sequential",
        ),
        pytest.param('LambdaLR(lr_lambda="0.95 ** epoch")', [0.3], 50, id="lambda"),
        pytest.param("OneCycleLR(max_lr=0.1, total_steps=100)", [0.004], 100, id="onecycle"),
    ],
)
def test_json_is_the_core_preview(
    capsys: pytest.CaptureFixture[str], spec: str, base_lrs: list[float], steps: int
) -> None:
    code, out, err = run_cli(capsys, *preview_args(spec, base_lrs, steps, "--format", "json"))
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert list(data) == ["lr"]
    assert data["lr"] == preview(spec, base_lrs, steps)  # bit-exact: json writes repr
    assert len(data["lr"]) == steps
    assert all(len(row) == len(base_lrs) for row in data["lr"])


@pytest.mark.parametrize(
    ("spec", "base_lrs", "steps"),
    [
        pytest.param("StepLR(step_size=200, gamma=0.5)", [0.1, 0.01], 1000, id="steplr"),
        pytest.param(
            "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=50, mode='triangular2')",
            [0.1, 0.05],
            400,
            id="cyclic-triangular2",
        ),
    ],
)
def test_json_matches_torch_step_by_step(
    capsys: pytest.CaptureFixture[str], spec: str, base_lrs: list[float], steps: int
) -> None:
    code, out, _ = run_cli(capsys, *preview_args(spec, base_lrs, steps, "--format", "json"))
    assert code == 0
    ours = json.loads(out)["lr"]
    expected, _momentum = torch_rows(spec, base_lrs, steps)
    assert len(ours) == len(expected) == steps
    for t, (got, want) in enumerate(zip(ours, expected, strict=True)):
        assert got == pytest.approx(want, rel=1e-12, abs=0), f"step {t}"


def test_subprocess_json_and_help(tmp_path: Path) -> None:
    spec = "StepLR(step_size=3, gamma=0.1)"
    done = run_subprocess(*preview_args(spec, [0.1, 0.2], 10, "--format", "json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"lr": preview(spec, [0.1, 0.2], 10)}
    assert run_subprocess("--help", cwd=tmp_path).returncode == 0


def test_subprocess_bad_spec_is_one_line(tmp_path: Path) -> None:
    done = run_subprocess(*preview_args("StepLR(step_size=", [0.1], 10), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("lrctl: error: ")
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_csv(capsys: pytest.CaptureFixture[str]) -> None:
    spec = "ExponentialLR(gamma=0.9)"
    code, out, _ = run_cli(capsys, *preview_args(spec, [0.1, 0.3, 1.0], 25, "--format", "csv"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "step,group_0,group_1,group_2"
    assert len(lines) == 26
    rows = [[float(x) for x in line.split(",")[1:]] for line in lines[1:]]
    assert rows == preview(spec, [0.1, 0.3, 1.0], 25)  # exact: csv writes repr
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(25))


def test_table_short_lists_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, *preview_args("StepLR(step_size=2, gamma=0.5)", [0.1, 0.2], 6))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("StepLR(step_size=2, gamma=0.5)")
    assert lines[1].split() == ["step", "group", "0", "group", "1"]
    assert [line.split() for line in lines[2:]] == [
        ["0", "0.1", "0.2"],  # lr = base while step < 2
        ["1", "0.1", "0.2"],
        ["2", "0.05", "0.1"],  # halved at step 2
        ["3", "0.05", "0.1"],
        ["4", "0.025", "0.05"],  # and again at 4
        ["5", "0.025", "0.05"],
    ]


def test_table_long_is_abbreviated(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, *preview_args("StepLR(step_size=200, gamma=0.5)", [0.1], 100_000)
    )
    assert code == 0
    lines = out.splitlines()
    assert len(lines) < 40
    first_steps = [line.split()[0] for line in lines[2:5]]
    assert first_steps == ["0", "1", "2"]
    assert any(line.split()[0] == "..." for line in lines)
    assert any(line.split()[0] == "99999" for line in lines[2:])
    assert "100000 rows" in lines[-1]


def check_png(path: Path) -> None:
    from matplotlib import image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 500


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="linear"),
        pytest.param(["--log-scale"], id="log-scale"),
    ],
)
def test_png(capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "curve.png"
    # CosineAnnealingLR(eta_min=0) reaches 0 at T_max: the log axis must cope, no warning.
    args = preview_args(
        "CosineAnnealingLR(T_max=100)",
        [0.1, 0.05],
        300,
        "--format",
        "png",
        "--out",
        str(out),
        *extra,
    )
    code, stdout, err = run_cli(capsys, *args)
    assert (code, err) == (0, "")
    assert str(out) in stdout
    check_png(out)


def test_png_defaults_to_preview_png(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, _ = run_cli(capsys, *preview_args("StepLR(step_size=5)", [0.1], 20, "--format", "png"))
    assert code == 0
    check_png(tmp_path / "preview.png")


def test_out_writes_text_formats(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "lr.json"
    code, _, _ = run_cli(
        capsys,
        *preview_args("StepLR(step_size=5)", [0.1], 20, "--format", "json", "--out", str(out)),
    )
    assert code == 0
    assert json.loads(out.read_text()) == {"lr": preview("StepLR(step_size=5)", [0.1], 20)}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(preview_args("StepLR(step_size=", [0.1], 10), "not valid syntax", id="syntax"),
        pytest.param(preview_args("NoSuchLR(x=1)", [0.1], 10), "NoSuchLR", id="unknown"),
        pytest.param(
            preview_args("StepLR(step_size=0)", [0.1], 10), "step_size", id="bad-argument"
        ),
        pytest.param(preview_args("StepLR(step_size=5)", [0.1], 0), "steps", id="zero-steps"),
        pytest.param(
            preview_args("StepLR(step_size=5)", [0.1], 10, "--log-scale"),
            "--log-scale",
            id="log-scale-without-png",
        ),
        pytest.param(
            preview_args("OneCycleLR(max_lr=0.1, total_steps=10)", [0.1], 50),
            "total_steps",
            id="past-the-end",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("lrctl: error: ") and err.count("\n") == 1
    assert message in err


def test_unwritable_out_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "missing-dir" / "x.png"
    code, _, err = run_cli(
        capsys,
        *preview_args("StepLR(step_size=5)", [0.1], 20, "--format", "png", "--out", str(out)),
    )
    assert code == 1
    assert err.startswith("lrctl: error: ") and "missing-dir" in err


def test_usage_error_keeps_argparse_format(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "preview", "StepLR(step_size=5)", "--steps", "10")
    assert code == 2
    assert err.startswith("usage: lrctl preview")
    assert "the following arguments are required: --base-lr" in err


def test_plot_markers_to_file_object_without_pyplot_state() -> None:
    from matplotlib import _pylab_helpers

    before = _pylab_helpers.Gcf.get_num_fig_managers()
    rows = preview("StepLR(step_size=200, gamma=0.5)", [0.1, 0.01], 1000)
    buffer = io.BytesIO()
    plot_lr_curves(rows, title="run-42", out=buffer, markers=[(450, "v2 lr *= 0.5")])
    assert buffer.getvalue()[:8] == PNG_SIGNATURE
    assert _pylab_helpers.Gcf.get_num_fig_managers() == before
    figure = lr_figure(
        rows, title="run-42", markers=[(450, "v2 lr *= 0.5")], group_labels=["backbone", "head"]
    )
    axes = figure.axes[0]
    assert axes.get_xlabel().startswith("step") and axes.get_ylabel() == "learning rate"
    legend = axes.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["backbone", "head"]
    assert any(t.get_text() == "v2 lr *= 0.5" for t in axes.texts)


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param([], id="no-rows"),
        pytest.param([[0.1], [0.1, 0.2]], id="ragged"),
    ],
)
def test_plot_rejects_bad_rows(rows: list[list[float]]) -> None:
    with pytest.raises(ValueError, match="expected"):
        lr_figure(rows, title="x")


def test_preview_figure_returns_a_figure_of_the_core_rows() -> None:
    from matplotlib.figure import Figure

    from lrctl.plot import preview_figure

    figure = preview_figure("StepLR(step_size=2, gamma=0.5)", [0.1, 0.01], 6)
    assert isinstance(figure, Figure)
    (axes,) = figure.axes
    lines = axes.get_lines()
    assert [list(line.get_ydata()) for line in lines] == [
        [row[g] for row in preview("StepLR(step_size=2, gamma=0.5)", [0.1, 0.01], 6)]
        for g in range(2)
    ]
    assert "StepLR(step_size=2, gamma=0.5)" in axes.get_title()


def test_png_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    # sys.modules[name] = None makes `import name` fail, as on a base install.
    out = str(tmp_path / "x.png")
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "from controller.cli import main\n"
        "raise SystemExit(main(['preview', 'StepLR(step_size=2)', '--base-lr', '0.1',\n"
        f"                      '--steps', '3', '--format', 'png', '--out', {out!r}]))\n"
    )
    done = run_captured([sys.executable, "-c", script])
    assert done.returncode == 1
    assert done.stderr == (
        "lrctl: error: drawing LR charts needs matplotlib: pip install 'lrctl[plot]'\n"
    )
    assert not (tmp_path / "x.png").exists()
