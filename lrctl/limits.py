"""The limits the core enforces on a job's inputs, in one value the controller configures.

DESIGN's "Default limits" and "Values": spec text at most 4 KiB, at most 1,024 param groups
(past them :class:`~lrctl.errors.SizeLimitError`, which the controller answers with
RESOURCE_EXHAUSTED); base LRs, ``lr = X`` and the LRs inside a spec finite, >= 0 and at most
``max_lr`` (:class:`~lrctl.errors.SpecError` / :class:`~lrctl.errors.OverrideError`:
INVALID_ARGUMENT). The defaults live in :mod:`lrctl.constants`.

The limits guard what a client sends. A worker building a program from the controller's
state passes :data:`NO_LIMITS`: the controller has checked it, under its own configuration.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from lrctl.constants import DEFAULT_MAX_LR, DEFAULT_MAX_PARAM_GROUPS, DEFAULT_MAX_SPEC_BYTES

__all__ = ["DEFAULT_LIMITS", "NO_LIMITS", "Limits"]


@dataclass(frozen=True)
class Limits:
    """Size and value limits on a schedule spec and a job's base LRs."""

    max_spec_bytes: int = DEFAULT_MAX_SPEC_BYTES
    """Longest spec text, in UTF-8 bytes (the canonical text for the dict form)."""

    max_param_groups: int = DEFAULT_MAX_PARAM_GROUPS
    """Most param groups (base LRs) a job may have."""

    max_lr: float = DEFAULT_MAX_LR
    """Largest base LR, ``lr = X``, and LR argument of a spec (``max_lr``, ``eta_min``...)."""


#: DESIGN's defaults.
DEFAULT_LIMITS = Limits()
#: No size limit and no ceiling (values must still be finite and >= 0).
NO_LIMITS = Limits(max_spec_bytes=sys.maxsize, max_param_groups=sys.maxsize, max_lr=math.inf)
