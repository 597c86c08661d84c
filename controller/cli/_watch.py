"""``lrctl watch JOB``: a live view of one job that follows its Watch stream.

A :class:`lrctl.client.WatchFollower` (the same one the workers use) reads the stream on a
background thread into a queue; it reconnects with jittered exponential backoff, resuming
from the last version seen. The main thread applies each update and, between updates, polls
``GetJob`` every ``--interval`` seconds (the step, LRs and worker count change with every
report, which is not a new version). On a terminal the view redraws in place; otherwise it
prints one line per change.
"""

from __future__ import annotations

import argparse
import queue
import shutil
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TextIO

from controller.cli._format import fmt_lrs
from lrctl.client import Client, ClientError, FollowUpdate, WatchFollower
from lrctl.model import Job, WatchKind
from lrctl.overrides import Event

__all__ = ["run"]

_END = object()  # the follower stopped: the job finished, or it was closed


@dataclass
class _State:
    job: Job | None = None
    version: int = 0
    last_event: Event | None = None
    status: str = "connecting"
    online: bool = False  # an update arrived since the last connection loss


class _Screen:
    """Draws the view: in place on a terminal, one line per change otherwise."""

    def __init__(self, out: TextIO, err: TextIO, *, tty: bool) -> None:
        self._out = out
        self._err = err
        self._tty = tty
        self._drawn = 0
        self._last_line = ""
        self._last_block: list[str] = []

    def show(self, job_id: str, state: _State) -> None:
        if self._tty:
            lines = _block(job_id, state)
            if lines != self._last_block:
                self._last_block = lines
                self._redraw(lines)
            return
        line = _line(job_id, state)
        if line != self._last_line:
            self._last_line = line
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._out.write(f"{stamp} {line}\n")
            self._out.flush()

    def note(self, job_id: str, state: _State, text: str) -> None:
        state.status = text
        if self._tty:
            self.show(job_id, state)
        else:
            self._err.write(f"lrctl: {text}\n")
            self._err.flush()

    def _redraw(self, lines: list[str]) -> None:
        width = max(shutil.get_terminal_size().columns - 1, 20)
        clipped = [line[:width] for line in lines]  # a wrapped line would break the redraw
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self._out.write(up + "\x1b[J" + "\n".join(clipped) + "\n")
        self._out.flush()
        self._drawn = len(clipped)


def _last(state: _State) -> str:
    event = state.last_event
    if event is None:
        return "no overrides"
    when = "pending" if event.pending else f"at step {event.effective_step}"
    who = f" by {event.actor}" if event.actor else ""
    why = f' "{event.reason}"' if event.reason else ""
    return f"v{event.version} {event.describe()}{who}{why} ({when})"


def _block(job_id: str, state: _State) -> list[str]:
    job = state.job
    if job is None:
        return [f"{job_id}  {state.status}"]
    step = "-" if job.step < 0 else str(job.step)
    lrs = "  ".join(f"group {g}: {fmt_lrs([x])}" for g, x in enumerate(job.lr))
    return [
        f"{job_id}  {job.state.value}  version {state.version}  step {step}  workers {job.workers}",
        f"  lr    {lrs}",
        f"  last  {_last(state)}",
        f"  {state.status} · Ctrl-C to quit",
    ]


def _line(job_id: str, state: _State) -> str:
    job = state.job
    if job is None:
        return f"job={job_id} {state.status}"
    return (
        f"job={job_id} state={job.state.value} version={state.version} step={job.step} "
        f"lr=[{fmt_lrs(job.lr)}] workers={job.workers} last={_last(state)!r}"
    )


def _pump(follower: WatchFollower, updates: queue.Queue[object]) -> None:
    try:
        for update in follower:
            updates.put(update)
    except BaseException as error:  # handed to the main thread, which raises it
        updates.put(error)
    updates.put(_END)


class _Watcher:
    def __init__(self, client: Client, job_id: str, screen: _Screen, interval: float) -> None:
        self._client = client
        self._job_id = job_id
        self._screen = screen
        self._interval = interval
        self._state = _State()
        # Transient errors reconnect; the first attempt failing (a wrong address, an
        # unknown job) ends the command at once.
        self._follower = WatchFollower(client, job_id, raise_first=True)

    def run(self) -> int:
        updates: queue.Queue[object] = queue.Queue()
        threading.Thread(
            target=_pump, args=(self._follower, updates), daemon=True, name="lrctl-watch"
        ).start()
        while True:
            try:
                item = updates.get(timeout=self._interval)
            except queue.Empty:
                if self._state.online:
                    self._refresh()
                    self._screen.show(self._job_id, self._state)
                continue
            if item is _END:
                return 0
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, FollowUpdate) and self._apply(item):
                return 0

    def stop(self) -> None:
        self._follower.close()

    def _apply(self, update: FollowUpdate) -> bool:
        """Fold one update into the view; True once the job is finished."""
        state = self._state
        if update.error is not None:
            state.online = False
            self._screen.note(
                self._job_id,
                state,
                f"connection lost ({update.error.code}); reconnecting in "
                f"{update.retry_in:.1f}s from version {state.version}",
            )
            return False
        if update.reconnected:
            self._screen.note(self._job_id, state, f"reconnected to {self._client.address}")
        state.online = True
        state.status = "connected"
        message = update.message
        if update.job is not None:
            state.version = max(state.version, update.job.version)
            if message is not None and message.kind is WatchKind.EVENT:
                state.job = update.job
                self._refresh()  # the new LR and step: the event alone does not say
            elif message is None or message.kind is not WatchKind.HEARTBEAT or state.job is None:
                state.job = update.job
        if message is not None and message.event is not None:
            state.last_event = message.event
        elif state.job is not None and state.job.events:
            state.last_event = state.job.events[-1]
        if update.finished:
            state.status = "job finished"
        self._screen.show(self._job_id, state)
        return update.finished

    def _refresh(self) -> None:
        try:
            job = self._client.get_job(self._job_id)
        except ClientError:
            return  # the stream reports lasting trouble
        if job.version >= self._state.version:
            self._state.job = job
            if job.events:
                self._state.last_event = job.events[-1]


def run(client: Client, args: argparse.Namespace) -> int:
    """Run ``lrctl watch``: 0 when the job finishes, 130 on Ctrl-C.

    Raises:
        ClientError: the first connection fails, or a non-retryable stream error.
    """
    tty = sys.stdout.isatty()
    screen = _Screen(sys.stdout, sys.stderr, tty=tty)
    watcher = _Watcher(client, args.job, screen, interval=args.interval)
    try:
        code = watcher.run()
    except KeyboardInterrupt:
        watcher.stop()
        return 130
    if not tty:
        print(f"job {args.job} finished", file=sys.stderr)
    return code
