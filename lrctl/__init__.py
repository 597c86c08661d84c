"""lrctl core: schedule specs, closed-form schedules, safe expressions, overrides and the
domain model (one type per concept: :class:`Job`, :class:`Event`).

Shared by the controller and the workers; pure Python, no torch and no gRPC needed. The
client (gRPC) is :mod:`lrctl.client`; charts (matplotlib) are :mod:`lrctl.plot`.
"""

from lrctl.errors import ExpressionError, LrctlError, OverrideError, SpecError
from lrctl.model import Job, JobState
from lrctl.overrides import Event, History, Op, parse_override
from lrctl.program import LRProgram, preview
from lrctl.schedules import build_schedule
from lrctl.spec import Spec, parse_spec

__all__ = [
    "Event",
    "ExpressionError",
    "History",
    "Job",
    "JobState",
    "LRProgram",
    "LrctlError",
    "Op",
    "OverrideError",
    "Spec",
    "SpecError",
    "build_schedule",
    "parse_override",
    "parse_spec",
    "preview",
]
