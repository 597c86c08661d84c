"""One local Ray head owned by the calling process, for the Ray tests and benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from tests.procs import ROOT


@contextlib.contextmanager
def local_ray_head(
    env_vars: dict[str, str], *, num_cpus: int = 2, **options: Any
) -> Iterator[None]:
    """Start a local Ray head on 127.0.0.1 and stop it at exit (``ray.shutdown()`` stops this
    head and nothing else: never ``ray stop``).

    Args:
        env_vars: The workers' environment (``PYTHONPATH`` is this checkout's root).
        num_cpus: Logical CPUs of the head.
        **options: More ``ray.init`` arguments.
    """
    import ray

    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        num_cpus=num_cpus,
        object_store_memory=256 * 1024**2,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), **env_vars}},
        **options,
    )
    try:
        yield
    finally:
        ray.shutdown()
