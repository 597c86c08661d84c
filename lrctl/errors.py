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
    "SpecError",
]


class LrctlError(Exception):
    """Root of every error lrctl raises on purpose."""


class SpecError(LrctlError, ValueError):
    """A schedule spec is malformed or its arguments are invalid."""


class ExpressionError(SpecError):
    """A safe expression (``lr_lambda="0.95 ** epoch"``) is refused or fails to evaluate."""


class OverrideError(LrctlError, ValueError):
    """An override (``lr /= 2``, ``lr = 3e-4``, ...) is malformed or not applicable."""


class JobIdError(LrctlError, ValueError):
    """A job id does not fit the job id rules (:data:`lrctl.model.JOB_ID_PATTERN`)."""
