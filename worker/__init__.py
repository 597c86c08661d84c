"""lrctl for training code: ``from worker import RemoteLRScheduler``."""

from worker._config import WorkerConfig, WorkerError
from worker._scheduler import RemoteLRScheduler

__all__ = ["RemoteLRScheduler", "WorkerConfig", "WorkerError"]
