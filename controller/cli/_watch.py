"""``lrctl watch JOB``: a live view of one job that follows its Watch stream.

A background thread reads the stream into a queue; the main thread applies each update
and, between updates, polls ``GetJob`` every ``--interval`` seconds (the step, LRs and
worker count change with every report, which is not a new version). On a terminal the
view redraws in place; otherwise it prints one line per change. A lost connection is
retried with exponential backoff, resuming from the last version seen.
"""

from __future__ import annotations

import argparse
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TextIO

from controller.cli._format import fmt_lrs
from controller.client import Client, ClientError, Event, Job, Update, WatchStream

__all__ = ["INITIAL_BACKOFF_SECONDS", "MAX_BACKOFF_SECONDS", "RETRYABLE_CODES", "run"]

#: Stream errors after which the view reconnects (others end it with exit code 1).
RETRYABLE_CODES = frozenset({"UNAVAILABLE", "INTERNAL", "UNKNOWN", "CANCELLED",
                             "DEADLINE_EXCEEDED"})
INITIAL_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0

_END = object()  # the stream ended without FINISHED


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
        f"{job_id}  {job.state}  version {state.version}  step {step}  "
        f"workers {job.workers}",
        f"  lr    {lrs}",
        f"  last  {_last(state)}",
        f"  {state.status} · Ctrl-C to quit",
    ]


def _line(job_id: str, state: _State) -> str:
    job = state.job
    if job is None:
        return f"job={job_id} {state.status}"
    return (f"job={job_id} state={job.state} version={state.version} step={job.step} "
            f"lr=[{fmt_lrs(job.lr)}] workers={job.workers} last={_last(state)!r}")


def _pump(stream: WatchStream, updates: queue.Queue[object]) -> None:
    try:
        for update in stream:
            updates.put(update)
    except BaseException as error:  # handed to the main thread, which raises or retries
        updates.put(error)
        return
    updates.put(_END)


class _Watcher:
    def __init__(self, client: Client, job_id: str, screen: _Screen, interval: float) -> None:
        self._client = client
        self._job_id = job_id
        self._screen = screen
        self._interval = interval
        self._state = _State()
        self._stream: WatchStream | None = None
        self._connected = False

    def run(self) -> int:
        delay = INITIAL_BACKOFF_SECONDS
        while True:
            self._stream = self._client.watch(self._job_id, from_version=self._state.version)
            updates: queue.Queue[object] = queue.Queue()
            threading.Thread(target=_pump, args=(self._stream, updates), daemon=True,
                             name="lrctl-watch").start()
            outcome = self._consume(updates)
            self._stream.cancel()
            if outcome is None:
                return 0
            if not self._connected or outcome.code not in RETRYABLE_CODES:
                raise outcome
            if self._state.online:
                delay = INITIAL_BACKOFF_SECONDS  # the last attempt got through
            self._state.online = False
            self._screen.note(self._job_id, self._state,
                              f"connection lost ({outcome.code}); reconnecting in "
                              f"{delay:.1f}s from version {self._state.version}")
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.cancel()

    def _consume(self, updates: queue.Queue[object]) -> ClientError | None:
        """Apply updates until FINISHED (None) or the stream breaks (the error)."""
        while True:
            try:
                item = updates.get(timeout=self._interval)
            except queue.Empty:
                if self._state.online:
                    self._refresh()
                    self._screen.show(self._job_id, self._state)
                continue
            if item is _END:
                return ClientError("UNAVAILABLE", "the Watch stream ended",
                                   self._client.address)
            if isinstance(item, ClientError):
                return item
            if isinstance(item, BaseException):
                raise item
            if not isinstance(item, Update):
                continue
            if self._apply(item):
                return None

    def _apply(self, update: Update) -> bool:
        """Fold one update into the view; True once the job is finished."""
        state = self._state
        if self._connected and not state.online:
            self._screen.note(self._job_id, state, f"reconnected to {self._client.address}")
        self._connected = True
        state.online = True
        state.status = "connected"
        state.version = max(state.version, update.version)
        if update.job is not None:
            state.job = update.job
        elif update.kind == "event":
            self._refresh()
        if update.event is not None:
            state.last_event = update.event
        elif state.job is not None and state.job.events:
            state.last_event = state.job.events[-1]
        finished = update.kind == "finished" or (state.job is not None
                                                 and state.job.state == "finished")
        if finished:
            state.status = "job finished"
        self._screen.show(self._job_id, state)
        return finished

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
