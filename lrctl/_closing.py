"""A mixin for the objects that ``with`` closes (the client and the worker's scheduler)."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["Closing"]

_Self = TypeVar("_Self", bound="Closing")


class Closing:
    """``with obj:`` returns ``obj`` and calls ``obj.close()`` on the way out, however the
    block ends."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
