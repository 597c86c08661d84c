"""Installs by role: the error that names the extra a missing module belongs to.

``pip install lrctl`` is the core, the client and the CLI's client commands (grpcio and
protobuf only). Each role adds its extra: ``[controller]`` for ``lrctl serve``, ``[worker]``
for ``RemoteLRScheduler`` (torch), ``[ray]`` for the Ray Train helpers, ``[plot]`` for charts
(pyproject.toml lists them). Code that needs an extra imports it inside
:func:`requires_extra`, so a missing one reads
``lrctl serve needs the [controller] extra: pip install 'lrctl[controller]' (no module
named 'prometheus_client')`` instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["EXTRA_MODULES", "install_hint", "requires_extra"]

#: The top-level modules each extra brings (those lrctl imports).
EXTRA_MODULES: dict[str, frozenset[str]] = {
    "controller": frozenset({"prometheus_client", "grpc_health", "grpc_reflection", "asyncpg"}),
    "worker": frozenset({"torch"}),
    "ray": frozenset({"ray"}),
    "plot": frozenset({"matplotlib"}),
}


def install_hint(extra: str) -> str:
    """Return the command that installs ``extra``: ``pip install 'lrctl[extra]'``."""
    return f"pip install 'lrctl[{extra}]'"


@contextmanager
def requires_extra(extra: str, feature: str) -> Iterator[None]:
    """Re-raise a missing module of ``extra`` as an error that says what to install.

    Args:
        extra: The extra's name in pyproject.toml, e.g. ``"controller"``.
        feature: What needs it, for the message, e.g. ``"lrctl serve"``.

    Raises:
        ModuleNotFoundError: a module of ``extra`` is missing; the message names the extra
            and the ``pip install`` command. Any other missing module is re-raised as it is.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in EXTRA_MODULES[extra]:
            raise
        raise ModuleNotFoundError(
            f"{feature} needs the [{extra}] extra: {install_hint(extra)} (no module named {top!r})",
            name=exc.name,
        ) from None
