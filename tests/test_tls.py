"""TLS and mutual TLS end to end, and the bind rule (certificates made in the test).

Real ``lrctl serve`` processes (configured by flags and by ``LRCTL_SERVER_TLS_*``), the real
CLI, real training processes (``tests/attach_loop.py``), the container health probe, and
``/metrics`` over HTTPS, each with and without the certificates they need.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from controller.server import Controller
from tests._grpc_helpers import write_token_file
from tests.pki import Pki, make_pki
from tests.procs import (
    CLI,
    ROOT,
    ControllerProcess,
    attach_loop,
    read_jsonl,
    run_captured,
    serve_argv,
    until,
)

SPEC = "StepLR(step_size=1000, gamma=0.5)"
#: name -> (token, role, jobs)
TOKENS = {
    "ops": ("ops-t0ken", "operator", None),
    "peek": ("peek-t0ken", "reader", None),
    "rank0": ("rank0-t0ken", "worker", ["run-*"]),
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_token_file(tmp_path_factory.mktemp("tokens") / "tokens.json", TOKENS)


def tls_and_tokens(pki: Pki, token_file: Path) -> tuple[str, ...]:
    """``lrctl serve``'s flags for TLS on gRPC (the test server certificate) and the tokens."""
    return (
        *("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)),
        *("--token-file", str(token_file)),
    )


def lrctl(
    address: str,
    *args: str,
    token: str = "ops",
    tls: dict[str, Path] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LRCTL_ADDRESS": address,
        "LRCTL_TIMEOUT": "5",
        "LRCTL_TOKEN": TOKENS[token][0],
        **{k: str(v) for k, v in (tls or {}).items()},
    }
    return run_captured([*CLI, *args], env=env)


def job_step(address: str, tls: dict[str, Path]) -> int:
    """The step of run-1 as ``lrctl job get`` shows it over TLS."""
    return int(json.loads(lrctl(address, "job", "get", "run-1", "--json", tls=tls).stdout)["step"])


def probe(address: str, env: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    """The container health probe against ``address``, TLS from ``env`` only."""
    cmd = [sys.executable, "-m", "controller.healthcheck", "--address", address]
    return run_captured(cmd, env={k: str(v) for k, v in env.items()})


def client_env(pki: Pki, *, cert: bool = False, rogue: bool = False) -> dict[str, Path]:
    env = {"LRCTL_TLS_CA": pki.ca}
    if cert or rogue:
        env["LRCTL_TLS_CERT"] = pki.rogue_cert if rogue else pki.client_cert
        env["LRCTL_TLS_KEY"] = pki.rogue_key if rogue else pki.client_key
    return env


def scrape(port: int, pki: Pki, *, scheme: str = "https", cert: bool = False) -> str:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    url = f"{scheme}://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(
        url, context=context if scheme == "https" else None, timeout=10
    ) as response:
        return str(response.read().decode())


def listening(proc: ControllerProcess) -> str:
    return next(line for line in proc.output if "listening on" in line)


def serving(proc: ControllerProcess, mode: str) -> str:
    """``proc``'s address, once its listening line has said it serves in ``mode``."""
    assert f", {mode})" in listening(proc), listening(proc)
    return proc.address


def metrics_port(proc: ControllerProcess) -> int:
    line = listening(proc)
    found = re.search(r"metrics on 127\.0\.0\.1:(\d+)", line)
    assert found, line
    return int(found[1])


def worker(
    tmp_path: Path, name: str, address: str, job: str, env: dict[str, Path], token: str = "rank0"
) -> tuple[subprocess.Popen[str], Path, Path]:
    out, stop = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.stop"
    proc_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LRCTL_")},
        "LRCTL_ADDRESS": address,
        "LRCTL_TOKEN": TOKENS[token][0],
        "LRCTL_CONNECT_TIMEOUT": "5",
        "LRCTL_REPORT_INTERVAL": "0.05",
        **{k: str(v) for k, v in env.items()},
    }
    return attach_loop(job, out, stop, 0.01, proc_env, "--schedule", SPEC), out, stop


def finish(proc: subprocess.Popen[str], stop: Path) -> str:
    stop.touch()
    try:
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    if proc.stdout is None:
        return ""
    with proc.stdout:
        return proc.stdout.read()


def refused(tmp_path: Path, name: str, address: str, job: str, env: dict[str, Path]) -> str:
    """Run a worker that must fail to attach (exit status 3); return what it printed."""
    proc, _, stop = worker(tmp_path, name, address, job, env)
    log = finish(proc, stop)
    assert proc.returncode == 3, log
    return log


@contextmanager
def training(tmp_path: Path, address: str, env: dict[str, Path]) -> Iterator[Path]:
    """A worker training run-1 until the block ends (its rows: the path given); it must exit 0."""
    proc, out, stop = worker(tmp_path, "w", address, "run-1", env)
    try:
        yield out
    finally:
        log = finish(proc, stop)
    assert proc.returncode == 0, log


@pytest.fixture
def tls_controller(
    tmp_path: Path, pki: Pki, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ControllerProcess]:
    """TLS (from LRCTL_SERVER_TLS_*, as in a container), tokens, /metrics over HTTPS."""
    monkeypatch.setenv("LRCTL_SERVER_TLS_CERT", str(pki.server_cert))
    monkeypatch.setenv("LRCTL_SERVER_TLS_KEY", str(pki.server_key))
    monkeypatch.setenv("LRCTL_TOKEN_FILE", str(token_file))
    with ControllerProcess(
        tmp_path / "tls.db",
        extra=(
            "--metrics-tls-cert",
            str(pki.server_cert),
            "--metrics-tls-key",
            str(pki.server_key),
        ),
    ) as proc:
        yield proc


@pytest.fixture
def mtls_controller(tmp_path: Path, pki: Pki, token_file: Path) -> Iterator[ControllerProcess]:
    """Mutual TLS on gRPC and /metrics (flags), tokens."""
    with ControllerProcess(
        tmp_path / "mtls.db",
        extra=(
            *tls_and_tokens(pki, token_file),
            "--tls-client-ca",
            str(pki.ca),
            "--metrics-tls-cert",
            str(pki.server_cert),
            "--metrics-tls-key",
            str(pki.server_key),
            "--metrics-client-ca",
            str(pki.ca),
        ),
    ) as proc:
        yield proc


@pytest.mark.slow
def test_tls_for_serve_cli_worker_probe_and_metrics(
    tls_controller: ControllerProcess, pki: Pki, tmp_path: Path
) -> None:
    address = serving(tls_controller, "tls, tokens, https metrics")
    tls = client_env(pki)
    # CLI: plaintext against the TLS port fails; over TLS with the operator's token it works.
    done = lrctl(address, "job", "list")
    assert done.returncode == 1 and "connection was closed" in done.stderr, done.stderr
    done = lrctl(address, "job", "create", "run-1", "--schedule", SPEC, "--base-lr", "0.1", tls=tls)
    assert done.returncode == 0, done.stderr
    # A worker over TLS with its scoped token: attaches, reports, follows an override.
    with training(tmp_path, address, tls) as out:
        until(lambda: job_step(address, tls) >= 20, 60, "reports over TLS")
        done = lrctl(address, "override", "run-1", "lr /= 2", "--reason", "tls", tls=tls)
        assert done.returncode == 0, done.stderr
        until(lambda: any(r.get("lr") == 0.05 for r in read_jsonl(out)), 30, "the override")
        # A reader over TLS still cannot override.
        done = lrctl(address, "override", "run-1", "lr /= 2", token="peek", tls=tls)
        assert done.returncode == 1 and "PERMISSION_DENIED" in done.stderr, done.stderr
        # The health probe next to the server: TLS from LRCTL_TLS_CA, like in the pod.
        probed = probe(address, {"LRCTL_TLS_CA": pki.ca})
        assert probed.returncode == 0, probed.stderr
        # /metrics over HTTPS; plain HTTP gets nothing.
        port = metrics_port(tls_controller)
        assert 'lrctl_learning_rate{job_id="run-1",param_group="0"} 0.05' in scrape(port, pki)
        with pytest.raises((OSError, http.client.HTTPException)):
            scrape(port, pki, scheme="http")
    history = json.loads(lrctl(address, "history", "run-1", "--json", tls=tls).stdout)
    assert [(e["actor"], e["reason"]) for e in history] == [("ops", "tls")]
    assert history[0]["effective_step"] is not None  # rank 0's report arrived over TLS
    # The scoped worker token cannot attach to a job outside run-*.
    log = refused(tmp_path, "x", address, "other-1", tls)
    assert "PERMISSION_DENIED" in log, log


@pytest.mark.slow
def test_mutual_tls_refuses_clients_without_a_trusted_certificate(
    mtls_controller: ControllerProcess, pki: Pki, tmp_path: Path
) -> None:
    address = serving(mtls_controller, "mutual tls, tokens, https metrics")
    create = ("job", "create", "run-1", "--schedule", SPEC, "--base-lr", "0.1")
    for env in (client_env(pki), client_env(pki, rogue=True)):  # no certificate; a stranger's
        done = lrctl(address, *create, tls=env)
        assert done.returncode == 1 and "LRCTL_TLS_CERT" in done.stderr, done.stderr
    good = client_env(pki, cert=True)
    done = lrctl(address, *create, tls=good)
    assert done.returncode == 0, done.stderr
    # A worker without a client certificate cannot attach; with one it trains and reports.
    log = refused(tmp_path, "nocert", address, "run-1", client_env(pki))
    assert "cannot reach the lrctl controller" in log, log
    assert "LRCTL_TLS_CERT/KEY" in log
    with training(tmp_path, address, good) as out:
        until(lambda: job_step(address, good) >= 10, 60, "reports over mTLS")
        assert read_jsonl(out)[-1]["epoch"] == 1
    # /metrics: the scraper needs a certificate too.
    port = metrics_port(mtls_controller)
    assert "lrctl_step" in scrape(port, pki, cert=True)
    with pytest.raises((OSError, http.client.HTTPException)):
        scrape(port, pki)
    probed = probe(address, good)
    assert probed.returncode == 0, probed.stderr


# -- the bind rule -------------------------------------------------------------------------------


def serve(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """``lrctl serve`` on 0.0.0.0 (a free port, /metrics on a free port) with ``args``."""
    return subprocess.Popen(
        [*CLI, *serve_argv(tmp_path / "bind.db", *args, host="0.0.0.0")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"},
    )


def test_a_public_bind_without_tls_and_tokens_refuses_to_start(
    tmp_path: Path, pki: Pki, token_file: Path
) -> None:
    done = serve(tmp_path)
    out = done.communicate(timeout=60)[0]
    assert done.returncode == 1, out
    assert "refusing to serve outside loopback unprotected" in out
    assert "has no TLS (--tls-cert/--tls-key) and no tokens (--token-file)" in out
    assert "/metrics on 0.0.0.0:0 has no TLS" in out and "--insecure" in out
    # TLS and tokens on gRPC are not enough while /metrics is public in plain HTTP.
    done = serve(tmp_path, *tls_and_tokens(pki, token_file))
    out = done.communicate(timeout=60)[0]
    assert done.returncode == 1 and "gRPC API" not in out and "/metrics on 0.0.0.0" in out
    assert not (tmp_path / "bind.db").exists()  # refused before opening anything


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("--insecure",), id="insecure"),
        pytest.param(("--metrics-host", "127.0.0.1", "TLS"), id="tls-tokens-local-metrics"),
    ],
)
def test_a_public_bind_starts_with_tls_and_tokens_or_loudly_with_insecure(
    tmp_path: Path, pki: Pki, token_file: Path, args: tuple[str, ...]
) -> None:
    if args[-1] == "TLS":
        args = (*args[:-1], *tls_and_tokens(pki, token_file))
    proc = serve(tmp_path, *args)
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                break
        out = "".join(lines)
        assert "listening on 0.0.0.0:" in out, out
        if "--insecure" in args:
            assert out.count("WARNING lrctl.controller.server: INSECURE (--insecure)") == 2
            assert "anyone who can reach it can change every job's learning rate" in out
            assert out.rstrip().endswith(", INSECURE)")
        else:
            assert "WARNING" not in out and ", tls, tokens)" in out
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_bind_rule_and_bad_tls_files_in_process(
    start_controller: Callable[..., Awaitable[Controller]],
    pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ValueError, match=r"gRPC API on \[::\]:0 has no TLS"):
        await start_controller(host="::", metrics_port=None)
    with pytest.raises(ValueError, match=r"/metrics on 0\.0\.0\.0:0 has no TLS"):
        await start_controller(metrics_host="0.0.0.0")
    assert not (tmp_path / "lrctl.db").exists()
    caplog.set_level(logging.WARNING, logger="lrctl.controller.server")
    ctl = await start_controller(metrics_host="0.0.0.0", insecure=True)
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        "INSECURE (--insecure): /metrics on 0.0.0.0:0 has no TLS "
        "(--metrics-tls-cert/--metrics-tls-key)"
    ]
    await ctl.stop(0)
    # A key that is not the certificate's, a file that is not there: named, before serving.
    with pytest.raises(
        ValueError,
        match=r"cannot load the TLS certificate .*server\.crt.* "
        r"\(--tls-cert\) with the key .*client\.key",
    ):
        await start_controller(tls_cert=str(pki.server_cert), tls_key=str(pki.client_key))
    with pytest.raises(ValueError, match="cannot read the --metrics-client-ca file"):
        await start_controller(
            metrics_tls_cert=str(pki.server_cert),
            metrics_tls_key=str(pki.server_key),
            metrics_tls_client_ca=str(tmp_path / "missing.crt"),
        )
    with pytest.raises(
        ValueError, match="expected both --tls-cert and --tls-key, got only --tls-cert"
    ):
        await start_controller(tls_cert=str(pki.server_cert))
    with pytest.raises(ValueError, match="mutual TLS is TLS first"):
        await start_controller(tls_client_ca=str(pki.ca))
