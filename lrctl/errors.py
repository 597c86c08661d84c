"""The error hierarchy shared by the controller, the workers and the CLI.

Every error lrctl raises on purpose derives from :class:`LrctlError`. Errors about what a
user wrote (a schedule spec, an expression, an override) also derive from ``ValueError``,
as torch's own validation errors do, so ``except ValueError`` keeps working for code that
moved from ``torch.optim.lr_scheduler``.
"""

from __future__ import annotations

__all__ = [
    "ExpressionError",
    "JobIdError",
    "LrctlError",
    "OverrideError",
    "SizeLimitError",
    "SpecError",
    "StepLimitError",
]


class LrctlError(Exception):
    """Root of every error lrctl raises on purpose."""


class SpecError(LrctlError, ValueError):
    """A schedule spec is malformed or its arguments are invalid."""


class ExpressionError(SpecError):
    """A safe expression (``lr_lambda="0.95 ** epoch"``) is refused or fails to evaluate."""


class StepLimitError(SpecError):
    """A step the program does not evaluate: negative, past its last step, or too far.

    "Too far" means beyond what an evaluation may replay (``LRProgram.lrs``'s
    ``max_cost``): a recurrence-based schedule asked for a step far ahead of what it has
    computed. The controller answers INVALID_ARGUMENT (docs/schedules.md, "Bounded
    evaluation").
    """


class SizeLimitError(SpecError):
    """An input is larger than a configured limit (spec text, param groups).

    The controller answers RESOURCE_EXHAUSTED, as DESIGN's default limits say.
    """


class OverrideError(LrctlError, ValueError):
    """An override (``lr /= 2``, ``lr = 3e-4``, ...) is malformed or not applicable."""


class JobIdError(LrctlError, ValueError):
    """A job id does not fit the job id rules (:data:`lrctl.model.JOB_ID_PATTERN`)."""
