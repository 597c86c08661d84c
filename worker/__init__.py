"""lrctl for training code: ``from worker import RemoteLRScheduler``.

Needs torch, the ``[worker]`` extra (``pip install 'lrctl[worker]'``).
"""

from lrctl.extras import requires_extra

with requires_extra("worker", "lrctl's worker (RemoteLRScheduler)"):
    from worker._config import WorkerConfig, WorkerError
    from worker._scheduler import RemoteLRScheduler

__all__ = ["RemoteLRScheduler", "WorkerConfig", "WorkerError"]
