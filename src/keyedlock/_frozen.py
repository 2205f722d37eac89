"""Frozen dataclasses with slots whose every assignment raises ``FrozenInstanceError``.

``@dataclass(frozen=True, slots=True)`` makes a second class for the slots,
and the ``__setattr__`` it writes still names the first one: assigning an
attribute that is not a field raises a puzzling ``TypeError`` (``super(type,
obj)``) on CPython 3.11 to 3.13. :func:`frozen`, applied over the dataclass,
gives the class an ``__setattr__`` and a ``__delattr__`` that refuse every
name with ``FrozenInstanceError`` (an ``AttributeError``).
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import TypeVar

__all__ = ["frozen"]

T = TypeVar("T")


def _refuse_set(self: object, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to {type(self).__name__}.{name}: it is frozen")


def _refuse_delete(self: object, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete {type(self).__name__}.{name}: it is frozen")


def frozen(cls: type[T]) -> type[T]:
    """``cls`` (a frozen dataclass with slots), refusing every assignment alike."""
    setattr(cls, "__setattr__", _refuse_set)  # noqa: B010 - the dataclass refuses a def
    setattr(cls, "__delattr__", _refuse_delete)  # noqa: B010
    return cls
