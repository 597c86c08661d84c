"""Every rank switches to a new job version at the same step, at a cost no one notices.

If ranks applied different LRs at the same step, DDP replicas would silently diverge. Only
rank 0 follows the controller (:mod:`worker._fanout`); at *exchange* calls of ``step()``,
the same calls on every rank, the ranks run one small element-wise ``MIN`` all-reduce on
the gloo side group. Rank 0 contributes the version it holds, the size of that version's
encoded state and the call of the exchange after the next one; every other rank contributes
the identity (``INT64_MAX``) there, so every rank reads rank 0's values. Every rank also
contributes a checksum of the LRs it applied and its applied version (as ``x`` and ``~x``,
so one ``MIN`` yields the lowest and the highest): if they differ, the ranks diverged.

The all-reduce launched at one exchange is waited at the next, so it overlaps the steps in
between and never stalls the GPU stream (the side group is gloo on CPU tensors even when
training uses NCCL). When the result names a version the ranks do not apply yet, every rank
receives its state in one broadcast and applies it from that same step.

**Pacing without a knob.** An exchange costs the training thread ~0.07 ms of CPU (gloo's
launch and wait), whatever the step time; an override must reach every rank soon after it
reaches rank 0. Rank 0 measures its own step time ``s`` and spaces exchanges
``k = floor(P / s) + 1`` steps apart, ``P`` = :data:`DEFAULT_PERIOD_S` (never more than
twice the previous interval, at most :data:`MAX_INTERVAL` steps), and announces each
exchange one exchange ahead in the payload, so every rank learns the schedule at the same
step. An override that reaches rank 0 is announced at the next exchange and applied at the
one after: at worst ``2 k s <= 2 P + 2 s``, i.e. within 50 ms of reaching rank 0 plus two
steps (about 1.5 ``k s`` on average). Steps longer than ``P`` exchange at every step.
``LRCTL_AGREE_EVERY=k`` fixes the interval instead (rank 0's value holds for every rank).
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from worker._fanout import Plan, RankGroup

__all__ = ["DEFAULT_PERIOD_S", "MAX_INTERVAL", "Agreement", "Divergence", "Pacer"]

#: Half the latency target: with ``k = floor(period / step) + 1`` steps between exchanges,
#: ``2 * k * step`` (the worst case, below) stays within ``2 * period`` plus two steps.
DEFAULT_PERIOD_S = 0.025
#: Most steps between two exchanges when paced automatically.
MAX_INTERVAL = 1000

# Payload slots (int64), reduced with MIN.
_VERSION, _LENGTH, _NEXT_CALL = 0, 1, 2  # rank 0's values; the identity elsewhere
_LR_LOW, _LR_HIGH, _APPLIED_LOW, _APPLIED_HIGH = 3, 4, 5, 6  # x and ~x from every rank
_SIZE = 7
_I64_MAX = torch.iinfo(torch.int64).max


class Pacer:
    """Rank 0's spacing of exchanges: as rare as the latency target allows.

    Args:
        agree_every: Fixed interval in steps (``LRCTL_AGREE_EVERY``); 0 paces by time.
        period_s: Target time between two exchanges.
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        agree_every: int = 0,
        period_s: float = DEFAULT_PERIOD_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.agree_every = agree_every
        self.period_s = period_s
        self._clock = clock
        self._last: tuple[int, float] | None = None
        self._interval = 1

    def interval(self, call: int) -> int:
        """Return the steps between the next two exchanges; called at each exchange."""
        if self.agree_every:
            return self.agree_every
        now = self._clock()
        if self._last is not None and call > self._last[0]:
            step_s = (now - self._last[1]) / (call - self._last[0])
            target = int(self.period_s / step_s) + 1 if step_s > 0 else MAX_INTERVAL
            self._interval = max(1, min(target, 2 * self._interval, MAX_INTERVAL))
        self._last = (call, now)
        return self._interval


@dataclass(frozen=True)
class Divergence:
    """What an exchange that found the ranks apart compared (the same on every rank)."""

    step: int
    """The step whose applied LRs the exchange compared."""
    lr_low: float
    lr_high: float
    applied_low: int
    applied_high: int


class Agreement:
    """The exchanges of one rank; :attr:`next_call` is the ``step()`` call of the next one.

    Args:
        group: The side group.
        plan: Rank 0's plan from the handshake (first two exchange calls, check interval).
        pacer: Rank 0's pacer (None on the other ranks).
    """

    def __init__(self, group: RankGroup, plan: Plan, pacer: Pacer | None) -> None:
        self._group = group
        self._pacer = pacer
        self._check_every = plan.check_every
        self._check_at = plan.first_call if plan.check_every else None
        self.next_call = plan.first_call
        self._second_call = plan.second_call
        # One buffer, reused: the result is read before it is refilled.
        self._buffer = torch.empty(_SIZE, dtype=torch.int64)
        self._ints: Any = self._buffer.numpy()
        self._floats: Any = self._ints.view("float64")
        self._work: Any = None
        self._sent: tuple[int, bool, float, int] = (0, False, 0.0, 0)

    @property
    def mine(self) -> tuple[float, int]:
        """This rank's checksum and applied version in the exchange just collected."""
        return self._sent[2], self._sent[3]

    def collect(self) -> tuple[int, int, Divergence | None] | None:
        """Wait for the exchange launched at the previous one; None at the first exchange.

        Returns:
            Rank 0's version, the size of its encoded state (0: nothing new) and, when the
            ranks' checksums or applied versions differed, what they were.
        """
        work = self._work
        if work is None:
            self.next_call = self._second_call
            return None
        work.wait()
        self._work = None
        v = self._ints.tolist()
        self.next_call = v[_NEXT_CALL]
        step, checked, _, _ = self._sent
        apart = None
        if checked and (v[_LR_LOW] != ~v[_LR_HIGH] or v[_APPLIED_LOW] != ~v[_APPLIED_HIGH]):
            apart = Divergence(
                step, _float(v[_LR_LOW]), _float(~v[_LR_HIGH]), v[_APPLIED_LOW], ~v[_APPLIED_HIGH]
            )
        return v[_VERSION], v[_LENGTH], apart

    def launch(
        self,
        call: int,
        *,
        step: int,
        version: int,
        length: int,
        lr_checksum: float,
        applied_version: int,
    ) -> None:
        """Start this exchange's all-reduce (call :meth:`collect` first).

        Args:
            call: This ``step()`` call (the exchange's).
            step: The step whose LRs ``lr_checksum`` sums.
            version: Rank 0: the version it holds (others: ignored).
            length: Rank 0: the size of that version's encoded state, 0 if not new.
            lr_checksum: The sum of the LRs this rank applied at ``step``.
            applied_version: The version this rank applied at ``step``.
        """
        ints = self._ints
        if self._pacer is not None:
            ints[_VERSION] = version
            ints[_LENGTH] = length
            ints[_NEXT_CALL] = self.next_call + self._pacer.interval(call)
        else:
            ints[_VERSION] = ints[_LENGTH] = ints[_NEXT_CALL] = _I64_MAX
        checked = self._check_at is not None and call >= self._check_at
        if checked:
            self._check_at = call + self._check_every
            self._floats[_LR_LOW] = lr_checksum
            ints[_LR_HIGH] = ~ints[_LR_LOW]
            ints[_APPLIED_LOW] = applied_version
            ints[_APPLIED_HIGH] = ~applied_version
        else:
            ints[_LR_LOW] = ints[_LR_HIGH] = ints[_APPLIED_LOW] = ints[_APPLIED_HIGH] = _I64_MAX
        self._sent = (step, checked, lr_checksum, applied_version)
        self._work = self._group.all_reduce_min(self._buffer)

    def close(self, timeout: float = 30.0) -> None:
        """Wait (bounded) for the exchange in flight; a gone peer is not an error here."""
        work, self._work = self._work, None
        if work is not None:
            with contextlib.suppress(RuntimeError):
                work.wait(timeout=timedelta(seconds=timeout))


def _float(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<q", bits))[0])
