"""What the command handlers (:mod:`controller.lifecycle`, :mod:`controller.override`,
:mod:`controller.reports`) share with their :class:`~controller.service.ControllerService`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from controller.evaluate import Evaluator
from controller.jobs import JobEntry
from controller.limits import ServerLimits
from controller.projection import Projection
from controller.table import JobTable
from controller.watch import WatchHub
from lrctl.model import Job
from lrctl.overrides import Event

__all__ = ["CommandContext", "CommandHandler"]


@dataclass(frozen=True, slots=True)
class CommandContext:
    """The service's parts and steps that every command handler uses.

    Attributes:
        table: The jobs, their locks and the store's write path.
        limits: What one client may ask for.
        evaluator: Runs CPU-heavy validation off the event loop, within a deadline.
        projection: Metrics and the change log.
        hub: The watch streams.
        log_budget: The bytes a job's log may take in one message.
        max_message_bytes: The server's message size (for error messages).
        now: Wall clock (unix seconds).
        view: A job entry as the client sees it (``events=False``: the head only).
        after_commit: Context for what follows a commit of one job (never fails the call).
        after_write: Shows the events a commit added and marked applied.
    """

    table: JobTable
    limits: ServerLimits
    evaluator: Evaluator
    projection: Projection
    hub: WatchHub
    log_budget: int
    max_message_bytes: int
    now: Callable[[], float]
    view: Callable[..., Job]
    after_commit: Callable[[str], AbstractContextManager[None]]
    after_write: Callable[[JobEntry, Sequence[Event], Sequence[Event]], None]


class CommandHandler:
    """Base of the command handlers: the shared parts are ``self._c``."""

    __slots__ = ("_c",)

    def __init__(self, ctx: CommandContext) -> None:
        self._c = ctx
