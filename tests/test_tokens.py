"""Least privilege: token files, roles, job scopes and the token as the actor (real server).

Tokens come from a real token file of the hashed form (``controller.tokens``); the calls go
through real gRPC (raw stubs, so nothing on the client side can help) and through
``lrctl.client.Client``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.auth import Authenticator
from controller.config import ServerConfig
from controller.errors import PermissionDenied
from controller.jobs import decode_token
from controller.limits import ServerLimits
from controller.server import Controller
from controller.tokens import TokenEntry, hash_token, load_tokens, parse_tokens
from lrctl.client import Client, ClientError
from lrctl.v1 import lrctl_pb2 as pb
from lrctl.v1 import lrctl_pb2_grpc
from tests._grpc_helpers import write_token_file
from tests.conftest import RunningServer, expect_status
from tests.procs import CLI, run_captured

SPEC = "StepLR(step_size=2, gamma=0.5)"
DENIED, UNAUTH = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED

#: name -> (token, role, jobs)
PEOPLE: dict[str, tuple[str, str, list[str] | None]] = {
    "root": ("root-s3cret", "admin", None),
    "alice": ("alice-s3cret", "operator", None),
    "dash": ("dash-s3cret", "reader", None),
    "runs-bot": ("worker-s3cret", "worker", ["run-*"]),
    "team-a-viewer": ("team-a-s3cret", "reader", ["team-a-*", "shared"]),
}


def token_file(path: Path) -> Path:
    return write_token_file(path, PEOPLE)


def _as(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {PEOPLE[name][0]}"),)


@pytest.fixture
async def secured(
    start_controller: Callable[..., Awaitable[Controller]], tmp_path: Path
) -> AsyncIterator[tuple[Controller, Any]]:
    ctl = await start_controller(tokens=load_tokens(token_file(tmp_path / "tokens.json")))
    async with grpc.aio.insecure_channel(ctl.address) as channel:
        yield ctl, lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]


async def _create(stub: Any, job: str, attach: bool = False) -> pb.CreateJobResponse:
    return await stub.CreateJob(
        pb.CreateJobRequest(job_id=job, schedule=SPEC, base_lrs=[0.1], attach=attach, world_size=1),
        metadata=_as("root"),
    )


async def test_no_token_a_worker_token_and_a_reader_token_cannot_override(
    secured: tuple[Controller, Any],
) -> None:
    ctl, stub = secured
    await _create(stub, "run-1")
    scale = pb.OverrideRequest(
        job_id="run-1", op=pb.OVERRIDE_OP_SCALE, value=0.5, actor="alice", reason="pretending"
    )
    await expect_status(stub.Override(scale), UNAUTH)
    err = await expect_status(stub.Override(scale, metadata=_as("runs-bot")), DENIED)
    assert err.details() == "Override needs role 'admin' or 'operator'; the token has role 'worker'"
    await expect_status(stub.Override(scale, metadata=_as("dash")), DENIED)
    # The same through the one client, as the CLI and scripts call it.
    for token in (None, PEOPLE["runs-bot"][0], PEOPLE["dash"][0]):
        with (
            Client(ctl.address, token, tls=False, environ={}) as client,
            pytest.raises(ClientError) as info,
        ):
            await asyncio.to_thread(client.override, "run-1", "lr /= 2")
        assert info.value.code == ("UNAUTHENTICATED" if token is None else "PERMISSION_DENIED")
    job = await stub.GetJob(pb.GetJobRequest(job_id="run-1"), metadata=_as("dash"))
    assert (job.version, list(job.events)) == (1, [])  # nothing changed
    ok = await stub.Override(scale, metadata=_as("alice"))  # the control: an operator may
    assert ok.event.version == 2


async def test_a_scoped_worker_token_stays_inside_its_jobs(secured: tuple[Controller, Any]) -> None:
    _, stub = secured
    bot = _as("runs-bot")
    # Inside its scope: create, attach, watch and report.
    attached = await stub.CreateJob(
        pb.CreateJobRequest(
            job_id="run-7", schedule=SPEC, base_lrs=[0.1], attach=True, world_size=2
        ),
        metadata=bot,
    )
    assert (attached.created, attached.epoch) == (True, 1)
    watch = stub.Watch(pb.WatchRequest(job_id="run-7"), metadata=bot)
    assert (await watch.read()).kind == pb.WatchResponse.KIND_SNAPSHOT
    watch.cancel()
    await stub.Report(pb.ReportRequest(job_id="run-7", step=3, epoch=1), metadata=bot)
    # Outside: another job that exists (attached by an admin), and ones that do not.
    other = await _create(stub, "other-1", attach=True)
    before = await stub.GetJob(pb.GetJobRequest(job_id="other-1"), metadata=_as("root"))
    err = await expect_status(
        stub.Watch(pb.WatchRequest(job_id="other-1"), metadata=bot).read(), DENIED
    )
    assert err.details() == (
        "Watch of job 'other-1' is outside the scope of token 'runs-bot' (jobs matching 'run-*')"
    )
    await expect_status(
        stub.Report(pb.ReportRequest(job_id="other-1", step=50, epoch=other.epoch), metadata=bot),
        DENIED,
    )
    await expect_status(
        stub.CreateJob(
            pb.CreateJobRequest(job_id="other-1", schedule=SPEC, base_lrs=[0.1], attach=True),
            metadata=bot,
        ),
        DENIED,
    )
    await expect_status(
        stub.CreateJob(
            pb.CreateJobRequest(job_id="other-2", schedule=SPEC, base_lrs=[0.1]), metadata=bot
        ),
        DENIED,
    )
    await expect_status(stub.Watch(pb.WatchRequest(job_id="nope"), metadata=bot).read(), DENIED)
    # "run-*" is a glob, not a prefix of anything: "xrun-1" and "RUN-1" are outside.
    for job in ("xrun-1", "RUN-1"):
        await expect_status(
            stub.CreateJob(
                pb.CreateJobRequest(job_id=job, schedule=SPEC, base_lrs=[0.1]), metadata=bot
            ),
            DENIED,
        )
    after = await stub.GetJob(pb.GetJobRequest(job_id="other-1"), metadata=_as("root"))
    assert after == before  # no step, no epoch, nothing
    await expect_status(
        stub.GetJob(pb.GetJobRequest(job_id="other-2"), metadata=_as("root")),
        grpc.StatusCode.NOT_FOUND,
    )
    # A worker reads nothing it does not need, even in its scope.
    await expect_status(stub.GetJob(pb.GetJobRequest(job_id="run-7"), metadata=bot), DENIED)


async def test_list_and_read_with_a_scoped_reader(secured: tuple[Controller, Any]) -> None:
    _, stub = secured
    for job in ("team-a-1", "team-b-1", "shared", "team-a-2"):
        await _create(stub, job)
    viewer = _as("team-a-viewer")
    listed = await stub.ListJobs(pb.ListJobsRequest(), metadata=viewer)
    assert [j.job_id for j in listed.jobs] == ["shared", "team-a-1", "team-a-2"]
    await stub.GetJob(pb.GetJobRequest(job_id="team-a-1"), metadata=viewer)
    await expect_status(stub.GetJob(pb.GetJobRequest(job_id="team-b-1"), metadata=viewer), DENIED)
    await expect_status(stub.History(pb.HistoryRequest(job_id="team-b-1"), metadata=viewer), DENIED)
    everything = await stub.ListJobs(pb.ListJobsRequest(), metadata=_as("dash"))
    assert len(everything.jobs) == 4  # an unscoped reader sees every job
    await stub.Preview(
        pb.PreviewRequest(schedule=SPEC, base_lrs=[0.1], steps=3), metadata=viewer
    )  # no job involved


async def test_the_token_is_the_actor_whatever_the_request_says(
    start_controller: Callable[..., Awaitable[Controller]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    entries = load_tokens(token_file(tmp_path / "tokens.json"))
    plain = parse_tokens({"legacy-s3cret": "operator"})  # the older form, no name
    ctl = await start_controller(tokens=entries + plain)
    caplog.set_level(logging.INFO, logger="lrctl.controller.changes")
    async with grpc.aio.insecure_channel(ctl.address) as channel:
        stub = lrctl_pb2_grpc.LRControllerStub(channel)  # type: ignore[no-untyped-call]
        await _create(stub, "run-1")
        await _create(stub, "run-1", attach=True)
        await stub.Override(
            pb.OverrideRequest(
                job_id="run-1", op=pb.OVERRIDE_OP_SCALE, value=0.5, actor="mallory", reason="spike"
            ),
            metadata=_as("alice"),
        )
        await stub.Override(
            pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_CLEAR, actor="root"),
            metadata=(("authorization", "Bearer legacy-s3cret"),),
        )
        await stub.FinishJob(pb.FinishJobRequest(job_id="run-1"), metadata=_as("alice"))
        history = await stub.History(pb.HistoryRequest(job_id="run-1"), metadata=_as("dash"))
    legacy = "sha256:" + hash_token("legacy-s3cret")[:12]
    assert [(e.actor, e.reason) for e in history.events] == [("alice", "spike"), (legacy, "")]
    lines = [r.getMessage() for r in caplog.records if r.name == "lrctl.controller.changes"]
    assert [line.split(" reason=")[0] for line in lines] == [
        "job=run-1 version=1 op=create actor=root",
        "job=run-1 version=1 op=attach actor=root",
        "job=run-1 version=2 op=scale actor=alice",
        f"job=run-1 version=3 op=clear actor={legacy}",
        "job=run-1 version=4 op=finish actor=alice",
    ]
    assert "mallory" not in caplog.text


async def test_without_tokens_the_requests_actor_is_kept(controller: Controller, stub: Any) -> None:
    await stub.CreateJob(pb.CreateJobRequest(job_id="run-1", schedule=SPEC, base_lrs=[0.1]))
    reply = await stub.Override(
        pb.OverrideRequest(job_id="run-1", op=pb.OVERRIDE_OP_CLEAR, actor="bob")
    )
    assert reply.event.actor == "bob"


@pytest.mark.parametrize("running_server", [{"tokens": {"ops-t0ken": "operator"}}], indirect=True)
def test_the_cli_overrides_as_its_token(running_server: RunningServer) -> None:
    with Client(running_server.address, "ops-t0ken", environ={}) as client:
        client.create_job("run-1", SPEC, [0.1])
    done = run_captured(
        [*CLI, "override", "run-1", "lr /= 2", "--json"],
        env={
            "LRCTL_ADDRESS": running_server.address,
            "LRCTL_TOKEN": "ops-t0ken",
            "USER": "someone-else",
            "PATH": "/usr/bin:/bin",
        },
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["event"]["actor"] == "sha256:" + hash_token("ops-t0ken")[:12]


# -- the token file ------------------------------------------------------------------------------


def test_both_forms_load_and_authenticate(tmp_path: Path) -> None:
    entries = load_tokens(token_file(tmp_path / "t.json"))
    assert [e.name for e in entries] == list(PEOPLE)
    assert entries[3] == TokenEntry("runs-bot", hash_token("worker-s3cret"), "worker", ("run-*",))
    assert "worker-s3cret" not in (tmp_path / "t.json").read_text()  # only hashes stored
    auth = Authenticator(entries)
    assert auth.identify([("authorization", "Bearer worker-s3cret")]).name == "runs-bot"
    with pytest.raises(PermissionDenied, match="outside the scope of token 'runs-bot'"):
        auth.check(
            [("authorization", "Bearer worker-s3cret")], "Watch", pb.WatchRequest(job_id="other-1")
        )
    # Uppercase hex is accepted (and stored lowercase); a name defaults to the hash's prefix.
    [upper] = parse_tokens({"tokens": [{"sha256": hash_token("x").upper(), "role": "reader"}]})
    assert (upper.sha256, upper.name) == (hash_token("x"), "sha256:" + hash_token("x")[:12])
    # The older form.
    path = tmp_path / "plain.json"
    path.write_text('{"s3cret": "admin", "peek": "reader"}')
    assert [(e.name, e.role) for e in load_tokens(path)] == [
        ("sha256:" + hash_token("s3cret")[:12], "admin"),
        ("sha256:" + hash_token("peek")[:12], "reader"),
    ]


_H = hash_token("t")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            {"tokens": [{"name": "a", "sha256": _H, "role": "worker", "job": ["run-*"]}]},
            "got 'job'",
            id="typo-must-not-widen-scope",
        ),
        pytest.param(
            {"tokens": [{"name": "a", "token": "t", "role": "admin"}]},
            "never the token",
            id="token-in-clear",
        ),
        pytest.param(
            {"tokens": [{"name": "a", "sha256": "abc", "role": "admin"}]},
            "64 hex digits",
            id="short-hash",
        ),
        pytest.param(
            {"tokens": [{"name": "a", "sha256": _H, "role": "root"}]},
            "expected a role",
            id="bad-role",
        ),
        pytest.param(
            {"tokens": [{"name": "a", "sha256": _H, "role": "worker", "jobs": []}]},
            "non-empty list",
            id="empty-scope",
        ),
        pytest.param(
            {"tokens": [{"name": "a", "sha256": _H, "role": "worker", "jobs": "run-*"}]},
            "non-empty list",
            id="scope-not-a-list",
        ),
        pytest.param(
            {
                "tokens": [
                    {"name": "a", "sha256": _H, "role": "admin"},
                    {"name": "b", "sha256": _H, "role": "reader"},
                ]
            },
            "each token once",
            id="same-token-twice",
        ),
        pytest.param(
            {
                "tokens": [
                    {"name": "a", "sha256": _H, "role": "admin"},
                    {"name": "a", "sha256": hash_token("u"), "role": "reader"},
                ]
            },
            "unique token names",
            id="same-name-twice",
        ),
        pytest.param({"tokens": [], "extra": 1}, "only the key", id="extra-key"),
        pytest.param({"tokens": ["x"]}, "to be an object", id="entry-not-object"),
        pytest.param({"t": "root"}, "expected a role", id="plain-bad-role"),
        pytest.param(
            {"tokens": [{"name": "a\nb", "sha256": _H, "role": "admin"}]},
            "printable",
            id="name-with-newline",
        ),
    ],
)
def test_bad_token_files_say_what_was_expected(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tokens(data)


async def test_a_scoped_reader_pages_through_its_own_jobs_only(
    secured: tuple[Controller, Any],
) -> None:
    """ListJobs filters before paging: every page is full, holds only jobs in the token's
    scope, and its page token never names a job outside it."""
    _, stub = secured
    for job in ("b-0", "team-a-1", "b-1", "b-2", "team-a-2", "b-3", "shared", "team-b-1"):
        await _create(stub, job)
    seen, token, pages = [], "", 0
    while True:
        page = await stub.ListJobs(
            pb.ListJobsRequest(page_size=2, page_token=token), metadata=_as("team-a-viewer")
        )
        pages += 1
        seen += [j.job_id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
        assert len(page.jobs) == 2  # a full page: nothing out of scope took a place
        assert decode_token(token) == page.jobs[-1].job_id  # an id the reader may see
    assert seen == ["shared", "team-a-1", "team-a-2"] and pages == 2


def test_the_token_maker_prints_a_token_and_an_entry_that_loads() -> None:
    done = run_captured(
        [sys.executable, "-m", "controller.tokens", "ci-runs", "worker", "--jobs", "run-*", "ci-*"]
    )
    assert done.returncode == 0, done.stderr
    token_line, entry_line = done.stdout.splitlines()
    token = token_line.removeprefix("token: ")
    [entry] = parse_tokens({"tokens": [json.loads(entry_line.removeprefix("entry: "))]})
    assert (entry.name, entry.role, entry.jobs) == ("ci-runs", "worker", ("run-*", "ci-*"))
    assert Authenticator([entry]).identify([("authorization", f"Bearer {token}")]) == entry


def test_a_token_name_follows_the_actor_rules_it_is_held_to() -> None:
    """A token's name is the actor of its overrides: a name an Override would refuse as an
    actor (not printable, longer than --max-actor-chars) is refused when the tokens load."""
    with pytest.raises(ValueError, match="printable"):
        parse_tokens({"tokens": [{"name": "jean\xa0d", "sha256": _H, "role": "operator"}]})
    [entry] = parse_tokens({"tokens": [{"name": "a" * 40, "sha256": _H, "role": "operator"}]})
    ServerConfig(tokens=(entry,))  # within the default limit
    with pytest.raises(ValueError, match="at most 16 characters"):
        ServerConfig(tokens=(entry,), limits=ServerLimits(max_actor_chars=16))
