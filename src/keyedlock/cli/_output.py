"""Where the commands write their reports: standard output, with its failures told apart.

A reader that closes the pipe (``keyedlock holders | head -1``) ends the
command quietly; a write that fails otherwise (a full disk, an I/O error) is
an :class:`OutputError`, which the command line reports in one line on
standard error, never as a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["Output", "OutputError", "Writer"]


class Writer(Protocol):
    """What a report is written to (``print(..., file=out)``)."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


class OutputError(Exception):
    """Standard output could not be written, for another reason than a closed pipe."""


class Output:
    """A :class:`Writer` over ``stream`` whose failed writes raise :class:`OutputError`
    (a closed pipe stays :class:`BrokenPipeError`). No stream (None: Python's
    ``sys.stdout`` for a program started with it closed, ``>&-``) fails every write."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Writer | None) -> None:
        self._stream = stream

    def write(self, text: str, /) -> object:
        stream = self._stream
        if stream is None:
            raise OutputError("standard output is closed")
        return _told_apart(stream.write, text)

    def flush(self) -> object:
        stream = self._stream
        if stream is None:
            raise OutputError("standard output is closed")
        return _told_apart(stream.flush)


def _told_apart(method: Callable[..., object], *args: object) -> object:
    """``method(*args)``, a failure other than a closed pipe raised as OutputError."""
    try:
        return method(*args)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(exc) from exc
