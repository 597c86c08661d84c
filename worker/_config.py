"""Worker configuration: every tunable as an ``*_ENV_VAR`` / ``DEFAULT_*`` pair, one loader.

:meth:`WorkerConfig.load` is the only place the worker reads the environment; it runs when a
:class:`~worker.RemoteLRScheduler` is built, never at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lrctl.client import TLSConfig
from lrctl.constants import (
    ADDRESS_ENV_VAR,
    AGREE_EVERY_ENV_VAR,
    CONNECT_TIMEOUT_ENV_VAR,
    DEFAULT_ADDRESS,
    DEFAULT_AGREE_EVERY,
    DEFAULT_BACKOFF_INITIAL_S,
    DEFAULT_BACKOFF_MAX_S,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_DIVERGENCE_CHECK_EVERY,
    DEFAULT_REPORT_INTERVAL_S,
    DIVERGENCE_CHECK_EVERY_ENV_VAR,
    JOB_ENV_VAR,
    REPORT_INTERVAL_ENV_VAR,
    TOKEN_ENV_VAR,
)
from lrctl.errors import JobIdError, LrctlError
from lrctl.model import check_job_id

__all__ = ["WorkerConfig", "WorkerError"]

#: Set by torchrun in every rank: its ``--rdzv-id`` (a fresh UUID for a single-node launch
#: without rendezvous options), the job id when ``LRCTL_JOB`` is unset.
TORCHELASTIC_RUN_ID_ENV_VAR = "TORCHELASTIC_RUN_ID"
#: torchrun's ``--rdzv-id`` when none is given (static rendezvous: ``--master-port``, several
#: nodes): the same for every launch, so never a job id.
TORCHELASTIC_DEFAULT_RUN_ID = "none"


class WorkerError(LrctlError):
    """The worker cannot attach to its job (controller unreachable, conflicting spec, ...)."""


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker reaches the controller and paces its traffic."""

    job: str
    """Job id on the controller (``LRCTL_JOB``; inside Ray Train, the run name; under
    torchrun, ``TORCHELASTIC_RUN_ID``)."""
    address: str = DEFAULT_ADDRESS
    """Controller ``HOST:PORT`` (``LRCTL_ADDRESS``)."""
    token: str | None = None
    """Bearer token for an authenticated controller (``LRCTL_TOKEN``)."""
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    """How long construction waits for the controller before raising (``LRCTL_CONNECT_TIMEOUT``)."""
    report_interval_s: float = DEFAULT_REPORT_INTERVAL_S
    """Minimum time between two progress reports from rank 0 (``LRCTL_REPORT_INTERVAL``)."""
    agree_every: int = DEFAULT_AGREE_EVERY
    """Ranks agree on the version to apply every this many steps (``LRCTL_AGREE_EVERY``);
    0: rank 0 paces the exchanges by its step time. Rank 0's value holds for every rank."""
    divergence_check_every: int = DEFAULT_DIVERGENCE_CHECK_EVERY
    """Ranks compare a checksum of their applied LRs at most every this many steps
    (``LRCTL_DIVERGENCE_CHECK_EVERY``); 0: never. Rank 0's value holds for every rank."""
    backoff_initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    """First reconnect delay after the Watch stream breaks; doubles, with jitter."""
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    """Longest reconnect delay."""
    job_source: str = "job="
    """Where ``job`` came from (``job=``, ``LRCTL_JOB``, ``the Ray Train run name``,
    ``TORCHELASTIC_RUN_ID``), for rank 0's log line and error messages."""
    tls: TLSConfig | None = None
    """TLS to the controller (``LRCTL_TLS_CA``/``_CERT``/``_KEY``); None for plaintext."""

    def __post_init__(self) -> None:
        if not self.job:
            raise WorkerError(
                "no job id: pass job=..., set LRCTL_JOB, or run inside Ray Train or torchrun"
            )
        try:
            check_job_id(self.job)
        except JobIdError as exc:
            raise WorkerError(
                f"job id {self.job!r} (from {self.job_source}) is not valid: {exc}"
            ) from None
        if self.connect_timeout_s <= 0 or self.report_interval_s < 0.01:
            raise WorkerError(
                f"expected connect_timeout_s > 0 and report_interval_s >= 0.01, "
                f"got connect_timeout_s={self.connect_timeout_s}, "
                f"report_interval_s={self.report_interval_s}"
            )
        if self.agree_every < 0 or self.divergence_check_every < 0:
            raise WorkerError(
                f"expected agree_every >= 0 and divergence_check_every >= 0, got "
                f"agree_every={self.agree_every}, "
                f"divergence_check_every={self.divergence_check_every}"
            )

    @classmethod
    def load(
        cls,
        *,
        job: str | None = None,
        address: str | None = None,
        token: str | None = None,
        environ: Mapping[str, str] | None = None,
        default_job: Callable[[], str | None] | None = None,
    ) -> WorkerConfig:
        """Fill the config from arguments, then ``LRCTL_*`` variables, then defaults.

        Args:
            job: Job id; else ``LRCTL_JOB``; else ``default_job()`` (the Ray Train run name);
                else torchrun's ``TORCHELASTIC_RUN_ID``.
            address: Controller address; else ``LRCTL_ADDRESS``; else 127.0.0.1:50051.
            token: Bearer token; else ``LRCTL_TOKEN``.
            environ: The environment to read (default ``os.environ``).
            default_job: Fallback job id provider.

        TLS comes from ``LRCTL_TLS_CA``/``LRCTL_TLS_CERT``/``LRCTL_TLS_KEY``.

        Raises:
            WorkerError: a default job id (run name, torchrun run id) that is not a valid
                job id, or torchrun's placeholder ``none``: the message names ``LRCTL_JOB``.
        """
        env = os.environ if environ is None else environ
        job, source = _job_id(job, env, default_job)

        def number(key: str, default: float) -> float:
            raw = env.get(key)
            if raw is None or raw == "":
                return default
            try:
                return float(raw)
            except ValueError:
                raise WorkerError(f"{key} must be a number, got {raw!r}") from None

        return cls(
            job=job,
            address=address or env.get(ADDRESS_ENV_VAR) or DEFAULT_ADDRESS,
            token=token or env.get(TOKEN_ENV_VAR) or None,
            tls=TLSConfig.from_env(env),
            connect_timeout_s=number(CONNECT_TIMEOUT_ENV_VAR, DEFAULT_CONNECT_TIMEOUT_S),
            report_interval_s=number(REPORT_INTERVAL_ENV_VAR, DEFAULT_REPORT_INTERVAL_S),
            agree_every=int(number(AGREE_EVERY_ENV_VAR, DEFAULT_AGREE_EVERY)),
            divergence_check_every=int(
                number(DIVERGENCE_CHECK_EVERY_ENV_VAR, DEFAULT_DIVERGENCE_CHECK_EVERY)
            ),
            job_source=source,
        )


def _job_id(
    job: str | None, env: Mapping[str, str], default_job: Callable[[], str | None] | None
) -> tuple[str, str]:
    """Return the job id and where it came from; check a default id before it is used."""
    if job:
        return job, "job="
    if env.get(JOB_ENV_VAR):
        return env[JOB_ENV_VAR], JOB_ENV_VAR
    default, source = (default_job() if default_job else None), "the Ray Train run name"
    if not default:
        default, source = env.get(TORCHELASTIC_RUN_ID_ENV_VAR), TORCHELASTIC_RUN_ID_ENV_VAR
        if default == TORCHELASTIC_DEFAULT_RUN_ID:
            raise WorkerError(
                f"no job id: torchrun's run id is its placeholder {default!r}, the same for "
                f"every launch; set {JOB_ENV_VAR}, or give torchrun --rdzv-id=<job id>"
            )
    if not default:
        return "", ""
    try:
        check_job_id(default)
    except JobIdError as exc:
        raise WorkerError(
            f"{source} {default!r} cannot be a job id ({exc}); set {JOB_ENV_VAR} to a valid one"
        ) from None
    return default, source
