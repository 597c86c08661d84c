"""lrctl core: schedule specs, closed-form schedules, safe expressions and overrides.

Shared by the controller and the workers; pure Python, no torch and no gRPC needed.
"""

from lrctl.errors import ExpressionError, LrctlError, OverrideError, SpecError
from lrctl.overrides import Event, Op, parse_override
from lrctl.program import LRProgram, preview
from lrctl.schedules import build_schedule
from lrctl.spec import Spec, parse_spec

__all__ = [
    "Event",
    "ExpressionError",
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
