"""Closed-form LR schedules: every torch.optim.lr_scheduler class, plus warmup schedules.

``build_schedule("StepLR(step_size=200, gamma=0.5)", num_groups=2).lrs(t, base_lrs)`` is
what torch's ``get_last_lr()`` returns after ``t`` calls of ``step()``.
"""

from lrctl.schedules._base import (
    EXPRESSION_MAX_STEP,
    MAX_STEP,
    REPLAY_STEP_OVERHEAD,
    SCHEDULES,
    Schedule,
    build_schedule,
    canonical_spec,
    check_num_groups,
    register,
    stored_spec_text,
)
from lrctl.schedules._composite import ChainedScheduler, SequentialLR
from lrctl.schedules._cyclic import (
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    CyclicLR,
    OneCycleLR,
)
from lrctl.schedules._multiplicative import (
    ConstantLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiplicativeLR,
    MultiStepLR,
    PolynomialLR,
    StepLR,
)
from lrctl.schedules._plateau import PlateauTracker, ReduceLROnPlateau
from lrctl.schedules._warmup import InverseSqrtLR, WarmupCosineLR, WarmupStableDecayLR

__all__ = [
    "EXPRESSION_MAX_STEP",
    "MAX_STEP",
    "REPLAY_STEP_OVERHEAD",
    "SCHEDULES",
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "InverseSqrtLR",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "OneCycleLR",
    "PlateauTracker",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "Schedule",
    "SequentialLR",
    "StepLR",
    "WarmupCosineLR",
    "WarmupStableDecayLR",
    "build_schedule",
    "canonical_spec",
    "check_num_groups",
    "register",
    "stored_spec_text",
]
