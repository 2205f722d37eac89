"""The outcome of a call that ran elsewhere (a helper thread): its value, or its error."""

from __future__ import annotations

from typing import Generic, TypeVar, cast

__all__ = ["Finished"]

T = TypeVar("T")


class Finished(Generic[T]):
    """The outcome of a finished call: its value, or the exception it raised."""

    __slots__ = ("error", "value")

    value: T | None
    error: BaseException | None

    def __init__(self, value: T | None, error: BaseException | None) -> None:
        self.value = value
        self.error = error

    def unwrap(self) -> T:
        """The value, or raise the exception."""
        if self.error is not None:
            raise self.error
        return cast(T, self.value)

    def __repr__(self) -> str:
        if self.error is not None:
            return f"<Finished error={self.error!r}>"
        return f"<Finished value={self.value!r}>"
