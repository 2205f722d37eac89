"""Deliver SIGINT at every point of keyedlock's code where CPython can run a signal handler.

CPython runs a Python-level signal handler, and so raises the KeyboardInterrupt of Ctrl-C, only
when the eval loop checks for pending work: at a function's entry (``RESUME``), right after a
call returns (the ``CALL`` family) and at a backward jump (``JUMP_BACKWARD``). Nowhere else: a
run of loads, stores, comparisons and arithmetic between two such points is never split by a
signal (as long as no Python code runs inside it, as keys with a ``__hash__`` written in Python
would).

:class:`Injector` numbers those points as the main thread reaches them inside keyedlock's own
code (a trace function on the main thread only: a function's entry is its call event, as
CPython reports no opcode event for it; every other point an opcode event) and, at the chosen one,
delivers a signal the way CPython would: it calls the SIGINT handler installed at that moment
with the interrupted frame. Under the default handler that raises KeyboardInterrupt right
there; under trio's, the handler itself decides (trio defers the interrupt to the next
checkpoint when the frame is protected with ``enable_ki_protection``).

One point is exempt, as for every lock written in Python: the first instruction of an
``__exit__``/``__aexit__``, where the ``with`` statement has called the exit but none of its
code has run (:data:`PYTHON_WINDOW`). A signal there leaves the key held, whatever the exit
would have done.
"""

from __future__ import annotations

import dis
import signal
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keyedlock

__all__ = ["PYTHON_WINDOW", "RECOVERY_WINDOW", "Injector", "Point", "interruptible_offsets"]

_PACKAGE = str(Path(keyedlock.__file__).resolve().parent)

#: Functions whose entry, when called from outside keyedlock, is the window Python itself leaves
#: (see the module docstring): a context's exit, and ``release(key)`` (an interrupt at its first
#: instruction is one just before the call, in the caller's code).
PYTHON_WINDOW = frozenset({"__exit__", "__aexit__", "_exit", "release"})

#: Functions whose points are left out when a second signal is delivered: ``complete`` runs a
#: recovery step again until one run gets to its end; its own entry and its loop's jump are the
#: one-instruction windows left to a signal that lands as the recovery starts or starts over.
RECOVERY_WINDOW = frozenset({"complete"})

_CALLS = frozenset({"CALL", "CALL_FUNCTION_EX", "CALL_KW"})

_offsets: dict[types.CodeType, tuple[frozenset[int], int]] = {}


def _handler(entries: list[Any], offset: int) -> int | None:
    """The exception handler an exception raised at ``offset`` goes to (None: none)."""
    for entry in entries:
        if entry.start <= offset < entry.end:
            return int(entry.target)
    return None


def interruptible_offsets(code: types.CodeType) -> tuple[frozenset[int], int]:
    """The offsets in ``code`` at which a signal handler can run (before that instruction),
    and the offset of its entry (``RESUME``).

    A handler that runs right after a call raises *at the call*: its exception goes to the
    call's exception handler. The trace function can only raise before the next instruction,
    so a point whose next instruction has another handler (``return f()`` as the last line of
    a ``try``) is left out: raising there would not be what CPython does.
    """
    found = _offsets.get(code)
    if found is None:
        entries = list(dis.Bytecode(code).exception_entries)  # type: ignore[attr-defined]
        points = set()
        entry = -1
        previous = None
        for instr in dis.get_instructions(code):
            if instr.opname == "RESUME" and instr.arg == 0:
                points.add(instr.offset)  # function entry
                entry = instr.offset
            elif instr.opname == "JUMP_BACKWARD":
                points.add(instr.offset)
            elif (
                previous is not None
                and previous.opname in _CALLS
                and _handler(entries, previous.offset) == _handler(entries, instr.offset)
            ):
                points.add(instr.offset)  # right after a call returned
            previous = instr
        found = _offsets[code] = (frozenset(points), entry)
    return found


def _is_ours(code: types.CodeType) -> bool:
    return code.co_filename.startswith(_PACKAGE)


def _traceable(code: types.CodeType) -> bool:
    """keyedlock's code, finalizers aside (an exception in one is printed and dropped by
    Python: no signal is delivered there)."""
    return _is_ours(code) and code.co_name != "__del__"


@dataclass
class Point:
    """Where a signal was delivered."""

    index: int
    function: str
    filename: str
    line: int | None

    def __str__(self) -> str:
        return f"#{self.index} {self.function} ({Path(self.filename).name}:{self.line})"


@dataclass
class Injector:
    """Counts the interruptible points the main thread passes in keyedlock's code and delivers
    SIGINT at point ``target`` (None: only count); with ``then``, a second SIGINT at the
    ``then``-th point after it (the first one's recovery: Ctrl-C pressed twice).

    Use as a context manager around the code under test, in the main thread.
    """

    target: int | None = None
    then: int | None = None
    seen: int = 0
    fired: Point | None = None
    #: Where the second signal was delivered (with ``then``).
    again: Point | None = None
    after: int = 0
    exempt: int = 0
    functions: set[str] = field(default_factory=set)
    _previous: Any = None
    _previous_profile: Any = None
    _paused: bool = False

    @property
    def done(self) -> bool:
        """Every signal asked for was delivered: nothing more to trace."""
        return self.fired is not None and (self.then is None or self.again is not None)

    def paused(self) -> _Paused:
        """A context in which the main thread's calls into keyedlock are not traced (the
        scenario's own steering, such as waiting until a helper is queued)."""
        return _Paused(self)

    def __enter__(self) -> Injector:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signals are delivered to the main thread only: inject there")
        self._previous = sys.gettrace()
        sys.settrace(self._global)
        if self.then is not None:
            self._previous_profile = sys.getprofile()
            sys.setprofile(self._rearm)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(self._previous)
        if self.then is not None:
            sys.setprofile(self._previous_profile)

    def _rearm(self, frame: types.FrameType, event: str, arg: object) -> None:
        """A profile function, for a second signal: Python drops the trace function that
        raised the first (it unsets it, and the raising frame's), but not this one. At the
        first call after that, it traces again: that frame (its entry counted here: its
        call event was missed), the keyedlock frames it was called from, and new ones."""
        if event != "call" or self.fired is None or self.done or sys.gettrace() is not None:
            return
        sys.settrace(self._global)
        caller = frame.f_back
        while caller is not None and _is_ours(caller.f_code):
            self._trace(caller)
            caller = caller.f_back
        if _traceable(frame.f_code):
            self._trace(frame)
            self._reach(frame, entering=True)

    # -- tracing ---------------------------------------------------------------------------

    def _global(self, frame: types.FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if event != "call" or self.done or self._paused:
            return None
        if not _traceable(frame.f_code):
            return None
        self._trace(frame)
        # No opcode event is reported for the RESUME a frame starts at: the call event is it.
        # (A resumed coroutine is a call event too, at a RESUME that is not a point.)
        self._reach(frame, entering=True)
        return self._local

    def _trace(self, frame: types.FrameType) -> None:
        """Trace ``frame`` instruction by instruction (``_local``), not line by line."""
        frame.f_trace = self._local
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False

    def _local(self, frame: types.FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if self.done:
            return None
        if event == "opcode" and not self._paused:
            self._reach(frame, entering=False)
        return self._local

    def _reach(self, frame: types.FrameType, entering: bool) -> None:
        """The main thread is about to run the instruction at ``frame.f_lasti``: count it if a
        signal can be delivered there, and deliver SIGINT if it is the target."""
        code = frame.f_code
        points, entry = interruptible_offsets(code)
        if frame.f_lasti not in points or (frame.f_lasti == entry) != entering:
            return
        if entering and code.co_name in PYTHON_WINDOW and _from_outside(frame):
            self.exempt += 1  # the with statement called the exit; none of its code ran yet
            return
        if self.fired is not None:  # (with ``then``) a point of the first one's recovery
            if code.co_name in RECOVERY_WINDOW:
                return
            self.after += 1
            if self.after == self.then:
                self.again = Point(self.after, code.co_qualname, code.co_filename, frame.f_lineno)
                self._deliver(frame)
            return
        index = self.seen
        self.seen += 1
        self.functions.add(code.co_qualname)
        if index == self.target:
            self.fired = Point(index, code.co_qualname, code.co_filename, frame.f_lineno)
            self._deliver(frame)

    def _deliver(self, frame: types.FrameType) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)  # raises KeyboardInterrupt here, or defers it


def _from_outside(frame: types.FrameType) -> bool:
    """True if ``frame`` was called by code outside keyedlock (the caller's own statement)."""
    caller = frame.f_back
    return caller is None or not _is_ours(caller.f_code)


class _Paused:
    def __init__(self, injector: Injector) -> None:
        self._injector = injector

    def __enter__(self) -> None:
        self._injector._paused = True

    def __exit__(self, *exc: object) -> None:
        self._injector._paused = False
