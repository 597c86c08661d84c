"""CPU-heavy validation and evaluation, off the event loop and within a deadline.

Building the program of a spec for 1,024 param groups, checking a replacement spec, a preview
of up to a million values: each runs on a small thread pool, so the event loop keeps answering
health checks, heartbeats and every other job's calls meanwhile (the pool's threads compete
with the loop for the GIL, which Python hands over every few milliseconds). A call that has
not finished within the deadline answers RESOURCE_EXHAUSTED; its thread runs on to the end
(the limits bound every input, so it ends) and is then reused. Two threads, so a flood of
heavy calls queues, and past the deadline is refused, instead of taking every core.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from controller.errors import ResourceExhausted

__all__ = ["Evaluator"]

T = TypeVar("T")


class Evaluator:
    """Runs CPU-heavy functions on a thread pool with a deadline.

    Args:
        deadline_s: Longest wait for one call, queueing included.
        workers: Threads in the pool.
    """

    def __init__(self, deadline_s: float, workers: int = 2) -> None:
        self._deadline = deadline_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lrctl-eval")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Return ``fn(*args, **kwargs)``, computed on the pool.

        Raises:
            ResourceExhausted: it did not finish within the deadline.
            Exception: whatever ``fn`` raises.
        """
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.wait_for(future, self._deadline)
        except asyncio.TimeoutError:
            raise ResourceExhausted(
                f"the evaluation did not finish within {self._deadline:g} s (lrctl serve "
                f"--eval-deadline-seconds); ask for less (fewer steps or groups, a simpler "
                f"spec), or retry when the controller is less busy"
            ) from None

    def close(self) -> None:
        """Stop taking work; queued calls are dropped (idempotent)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
