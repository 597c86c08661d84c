"""The ``lrctl`` command line: ``lrctl serve``, ``job``, ``override``, ``history``,
``watch`` and ``preview``.

The console script ``lrctl`` and ``python -m controller.cli`` both call :func:`main`.
docs/cli.md documents every command, its output and its exit codes.
"""

from controller.cli._main import main

__all__ = ["main"]
