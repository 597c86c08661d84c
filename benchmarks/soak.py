"""Soak: a controller under mixed load with faults for a long time; does it come back to rest?

``python -m benchmarks soak [--soak-minutes 30] [--write]`` (the documented slow mode: it is
not part of ``python -m benchmarks`` without a section). One real ``lrctl serve`` process on
loopback, and in this process:

* **simulated rank 0s** (one per steady job): attach (CreateJob with ``attach``), follow the
  job with the client's reconnecting Watch follower *through a fault proxy*
  (tests/faultproxy.py), and report progress and every version they received as applied,
  every 0.2 s, as a worker does;
* **operators**: overrides of every kind on the steady jobs, reads (GetJob, History,
  ListJobs), previews; a job whose log reaches 100 events is recreated (CreateJob
  ``replace``), so the state the controller must hold stays bounded;
* **churn**: jobs created, overridden, watched, reported and finished over and over (ids
  reused, so metric series come and go);
* **abuse**: non-protobuf bytes, oversized reasons and actors, 2,000-group jobs, 5 KiB
  specs, reports of a far step of a recurrence, bursts of Watch streams;
* **faults**: the proxy between the rank 0s and the controller delays (0.3 s), blackholes
  (3 s, and once 20 s, past the keepalive) and resets connections; the controller is frozen
  (SIGSTOP) for 3 s every 5 minutes.

Every 30 s it samples the controller's RSS, open file descriptors, threads and the number of
per-job metric series (``job_id=`` lines of ``/metrics``). At the end the load stops, the
churn jobs are finished, the followers close, and after a quiet period it samples again: the
"after" figures must be back near the baseline taken after warm-up. Any INTERNAL or UNKNOWN
answer, or a rank 0 that ends on a version other than its job's, is a failure.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from benchmarks._results import add_options  # noqa: E402
from lrctl.client import Client, ClientError, WatchFollower  # noqa: E402
from lrctl.model import Report  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402
from tests.procs import ControllerProcess  # noqa: E402

TITLE = "Soak: mixed load with faults"

SPECS = [
    "StepLR(step_size=50, gamma=0.5)",
    "CosineAnnealingLR(T_max=500, eta_min=0.001)",
    "MultiplicativeLR(lr_lambda='0.999 + 0.0001 * sin(epoch)')",
    "OneCycleLR(max_lr=0.1, total_steps=1000000)",
    "ReduceLROnPlateau(patience=3)",
]
STATEMENTS = ["lr *= 0.5", "lr *= 2", "lr = 3e-3", None, "lr *= 0.9"]
BAD_CODES = ("INTERNAL", "UNKNOWN")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options = [
        ("--soak-minutes", 30.0, "how long the load and the faults run"),
        ("--soak-jobs", 12, "steady jobs, each with a simulated rank 0"),
    ]
    add_options(parser, options)


@dataclass
class Tally:
    """Outcomes by (what, status code), and the failures that must not happen."""

    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except ClientError as exc:
            self.add(what, exc.code, exc.details)
            return None
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            self.add(what, code.name, exc.details() or "")  # type: ignore[attr-defined]
            return None
        self.add(what, "OK")
        return result

    def add(self, what: str, code: str, details: str = "") -> None:
        with self.lock:
            self.codes[(what, code)] += 1
            if code in BAD_CODES:
                self.bad.append(f"{what}: {code}: {details[:200]}")


class RankZero:
    """A simulated rank 0: attach, follow through the proxy, report what it received."""

    def __init__(self, job_id: str, proxied: str, direct: Client, tally: Tally) -> None:
        self.job_id = job_id
        self.tally = tally
        self.client = Client(proxied, timeout=5.0)
        self.direct = direct
        self.step = 0
        self.applied: list[tuple[int, int]] = []
        self.held_version = 0
        self.epoch = 0
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._follow, daemon=True),
            threading.Thread(target=self._report, daemon=True),
        ]
        self.follower: WatchFollower | None = None

    def start(self, spec: str) -> None:
        result = self.direct.create_job(self.job_id, spec, [0.1, 0.01], attach=True, world_size=2)
        self.epoch = result.epoch
        self.held_version = result.job.version
        self.follower = WatchFollower(
            self.client,
            self.job_id,
            job=result.job,
            worker_id="rank-0",
            retry=lambda e: True,
            backoff_initial_s=0.1,
            backoff_max_s=2.0,
        )
        for thread in self.threads:
            thread.start()

    def _follow(self) -> None:
        assert self.follower is not None
        for update in self.follower:
            if update.message is None or update.job is None:
                continue
            job = update.job
            if job.version > self.held_version:
                for event in job.events:
                    if event.version > self.held_version:
                        self.applied.append((event.version, self.step))
                self.held_version = job.version

    def _report(self) -> None:
        while not self.stop.wait(0.2):
            self.step += 10
            applied, self.applied = self.applied, []
            metrics = ((self.step, random.random()),)
            sent = self.tally.call(
                "Report",
                self.client.report,
                Report(
                    job_id=self.job_id,
                    rank=0,
                    step=self.step,
                    applied_version=self.held_version,
                    applied=tuple(applied),
                    plateau_metrics=metrics,
                    epoch=self.epoch,
                    world_size=2,
                ),
                timeout=5.0,
            )
            if sent is None:
                self.applied = applied + self.applied  # retried with the next report

    def close(self) -> None:
        self.stop.set()
        if self.follower is not None:
            self.follower.close()
        for thread in self.threads:
            thread.join(10)
        self.client.close()


def sample(controller: ControllerProcess, metrics_port: int | None) -> dict[str, float]:
    assert controller.proc is not None
    pid = controller.proc.pid
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    field_of = {line.split(":")[0]: line.split(":")[1].split() for line in status}
    series = churn = info = -1
    if metrics_port is not None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{metrics_port}/metrics", timeout=10
            ) as reply:
                text = reply.read().decode()
            lines = [
                line
                for line in text.splitlines()
                if 'job_id="' in line and not line.startswith("#")
            ]
            series = len(lines)
            churn = sum(1 for line in lines if 'job_id="churn-' in line)
            per_job = Counter(
                line.split('job_id="')[1].split('"')[0]
                for line in lines
                if line.startswith("lrctl_override_info")
            )
            info = max(per_job.values(), default=0)
        except OSError:
            pass
    return {
        "t": time.monotonic(),
        "rss_mib": int(field_of["VmRSS"][0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(field_of["Threads"][0]),
        "series": series,
        "churn": churn,
        "info": info,
    }


def _metrics_port(controller: ControllerProcess) -> int | None:
    for line in controller.output:
        if "metrics on 127.0.0.1:" in line:
            return int(line.split("metrics on 127.0.0.1:")[1].split(",")[0].split(")")[0])
    return None


def run(args: argparse.Namespace) -> str:
    minutes = 1.0 if getattr(args, "quick", False) else args.soak_minutes
    rng = random.Random(10)
    tally = Tally()
    with TemporaryDirectory(prefix="lrctl-soak-") as tmp:
        controller = ControllerProcess(
            Path(tmp) / "lrctl.db", extra=("--log-level", "error")
        ).start()
        try:
            return _soak(controller, minutes, args.soak_jobs, rng, tally)
        finally:
            controller.stop()


def _soak(
    controller: ControllerProcess, minutes: float, jobs: int, rng: random.Random, tally: Tally
) -> str:
    metrics_port = _metrics_port(controller)
    proxy = FaultProxy(controller.address).start()
    direct = Client(controller.address, timeout=10.0)
    ranks = [RankZero(f"steady-{k}", proxy.address, direct, tally) for k in range(jobs)]
    for k, rank in enumerate(ranks):
        rank.start(SPECS[k % len(SPECS)])
    stop = threading.Event()
    samples: list[dict[str, float]] = []
    events = Counter[str]()

    def operators() -> None:
        while not stop.wait(0.1):
            rank = rng.choice(ranks)
            statement = rng.choice(STATEMENTS)
            tally.call(
                "Override",
                direct.override,
                rank.job_id,
                statement,
                clear=statement is None,
                group=rng.choice([None, 0, 1]),
                reason="soak",
                actor="operator",
            )
            job = tally.call("GetJob", direct.get_job, rank.job_id)
            if job is not None and len(job.events) >= 100:
                spec = SPECS[rng.randrange(len(SPECS))]
                tally.call(
                    "Recreate", direct.create_job, rank.job_id, spec, [0.1, 0.01], replace=True
                )
                events["recreated"] += 1
            if rng.random() < 0.2:
                tally.call("History", direct.history, rank.job_id)
                tally.call("ListJobs", direct.list_jobs, include_finished=True)
            if rng.random() < 0.05:
                tally.call("Preview", direct.preview, rng.choice(SPECS[:4]), [0.1, 0.01], 2000)

    def churn() -> None:
        n = 0
        while not stop.wait(0.5):
            job_id = f"churn-{n % 8}"
            n += 1
            tally.call(
                "CreateJob",
                direct.create_job,
                job_id,
                rng.choice(SPECS[:3]),
                [0.1] * 4,
                replace=True,
            )
            for _ in range(3):
                tally.call("Override", direct.override, job_id, "lr *= 0.5", reason="churn")
            try:
                stream = direct.watch(job_id)
                next(iter(stream))
                stream.cancel()
                tally.add("Watch", "OK")
            except ClientError as exc:
                tally.add("Watch", exc.code, exc.details)
            tally.call("Report", direct.report, Report(job_id=job_id, rank=0, step=5))
            tally.call("FinishJob", direct.finish_job, job_id)
            events["churned"] += 1

    def abuse() -> None:
        channel = grpc.insecure_channel(controller.address)
        far = "far-step"
        tally.call(
            "CreateJob",
            direct.create_job,
            far,
            "MultiplicativeLR(lr_lambda='0.999 + 0.0001 * sin(epoch)')",
            [0.1],
        )
        methods = ["GetJob", "Override", "CreateJob", "Report", "Preview", "ListJobs"]
        while not stop.wait(1.0):
            method = rng.choice(methods)
            raw = channel.unary_unary(f"/lrctl.v1.LRController/{method}")
            tally.call("garbage", raw, rng.randbytes(rng.randrange(1, 64)), timeout=5)
            tally.call("huge-reason", direct.override, far, "lr *= 0.9", reason="x" * 5000)
            tally.call("huge-actor", direct.override, far, "lr *= 0.9", actor="a" * 300)
            tally.call("2000-groups", direct.create_job, "wide", SPECS[0], [0.1] * 2000)
            tally.call("5k-spec", direct.create_job, "long", "StepLR(1)" + " " * 5000, [0.1])
            tally.call(
                "far-step",
                direct.report,
                Report(job_id=far, rank=0, step=rng.choice([10**7, 10**12])),
            )
            if rng.random() < 0.1:  # a burst of Watch streams, then all closed
                streams = []
                for _ in range(50):
                    try:
                        stream = direct.watch(far)
                        next(iter(stream))
                        streams.append(stream)
                    except ClientError as exc:
                        tally.add("watch-burst", exc.code, exc.details)
                for stream in streams:
                    stream.cancel()
                tally.add("watch-burst", "OK")
        channel.close()

    def faults() -> None:
        long_blackhole_done = False
        last_freeze = time.monotonic()
        while not stop.wait(rng.uniform(10, 30)):
            mode = rng.choice(["delay", "blackhole", "reset"])
            if mode == "delay":
                proxy.set_mode("delay", delay_s=0.3)
                stop.wait(5)
            elif mode == "blackhole":
                hold = 3.0
                if not long_blackhole_done and time.monotonic() - start > 0.4 * total:
                    hold, long_blackhole_done = 20.0, True  # past the keepalive: reconnects
                proxy.set_mode("blackhole")
                stop.wait(hold)
            else:
                proxy.set_mode("reset")
                stop.wait(0.2)
            proxy.set_mode("pass")
            events[f"proxy {mode}"] += 1
            if time.monotonic() - last_freeze > 300:
                assert controller.proc is not None
                os.kill(controller.proc.pid, signal.SIGSTOP)
                time.sleep(3)
                os.kill(controller.proc.pid, signal.SIGCONT)
                last_freeze = time.monotonic()
                events["SIGSTOP 3 s"] += 1

    total = minutes * 60
    time.sleep(min(20.0, total / 4))  # warm-up: every rank 0 attached and reporting
    baseline = sample(controller, metrics_port)
    samples.append(baseline)
    start = time.monotonic()
    threads = [threading.Thread(target=t, daemon=True) for t in (operators, churn, abuse, faults)]
    for thread in threads:
        thread.start()
    every = 30.0 if total >= 600 else max(5.0, total / 10)
    while time.monotonic() - start < total:
        time.sleep(min(every, max(0.0, total - (time.monotonic() - start))))
        samples.append(sample(controller, metrics_port))
    stop.set()
    for thread in threads:
        thread.join(60)
    proxy.set_mode("pass")
    # Quiesce: the churn jobs are finished; the rank 0s catch up, then close.
    time.sleep(15)
    lagging = []
    for rank in ranks:
        job = tally.call("GetJob", direct.get_job, rank.job_id)
        if job is not None and rank.held_version != job.version:
            lagging.append(f"{rank.job_id}: holds {rank.held_version}, job at {job.version}")
        rank.close()
    for k in range(8):
        tally.call("FinishJob", direct.finish_job, f"churn-{k}")
    time.sleep(10)
    after = sample(controller, metrics_port)
    direct.close()
    proxy.close()
    return _report(samples, baseline, after, tally, events, lagging, minutes, jobs)


def _report(
    samples: list[dict[str, float]],
    baseline: dict[str, float],
    after: dict[str, float],
    tally: Tally,
    events: Counter[str],
    lagging: list[str],
    minutes: float,
    jobs: int,
) -> str:
    t0 = baseline["t"]
    peak = {
        k: max(s[k] for s in samples)
        for k in ("rss_mib", "fds", "threads", "series", "churn", "info")
    }
    lines = [
        f"`python -m benchmarks soak --soak-minutes {minutes:g} --write`: one `lrctl serve` on "
        f"loopback, {jobs} steady jobs each followed by a simulated rank 0 through a fault "
        "proxy, operators, churn, abuse and faults for the whole run (benchmarks/soak.py).",
        "",
        "| | RSS MiB | open fds | threads | per-job series | of churn jobs | "
        "most `lrctl_override_info` of one job |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {s['rss_mib']:.1f} | {s['fds']:.0f} | {s['threads']:.0f} | "
            f"{s['series']:.0f} | {s['churn']:.0f} | {s['info']:.0f} |"
            for name, s in (
                ("baseline (after warm-up)", baseline),
                ("peak under load", peak),
                ("after the load stopped", after),
            )
        ),
        "",
        "Per-job series grow with the steady jobs' override history up to its bound "
        "(`lrctl_override_info` keeps the latest 100 per job) and go away with finished jobs "
        "(the churn jobs' column).",
        "",
        "Samples (minutes since the load started: RSS MiB / fds / series): "
        + ", ".join(
            f"{(s['t'] - t0) / 60:.0f}: {s['rss_mib']:.0f}/{s['fds']:.0f}/{s['series']:.0f}"
            for s in samples[:: max(1, len(samples) // 12)]
        ),
        "",
    ]
    rss = [s["rss_mib"] for s in samples[len(samples) // 2 :]]
    if len(rss) > 2:
        lines.append(
            f"RSS over the second half of the run: median {statistics.median(rss):.1f} "
            f"MiB, spread {max(rss) - min(rss):.1f} MiB."
        )
    calls = Counter[str]()
    for (_what, code), n in tally.codes.items():
        calls[code] += n
    lines += [
        "",
        "Calls by status: " + ", ".join(f"{code} {n}" for code, n in calls.most_common()) + ".",
        "Faults and churn: "
        + ", ".join(f"{what} x{n}" for what, n in sorted(events.items()))
        + ".",
        f"INTERNAL/UNKNOWN answers: {len(tally.bad)}"
        + (f" ({'; '.join(tally.bad[:5])})" if tally.bad else "")
        + ".",
        f"Rank 0s not on their job's version after the load: {len(lagging)}"
        + (f" ({'; '.join(lagging[:5])})" if lagging else "")
        + ".",
    ]
    return "\n".join(lines)
