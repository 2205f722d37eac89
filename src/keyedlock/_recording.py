"""What a lock records about its holds, only once someone asks: time held, and long holds.

A lock's contexts record nothing by default: the uncontended path pays for
no clock. Two things turn recording on, for one lock:

- the first call of its ``statistics()``: from then on each hold records when
  it took its key (one clock read, tens of nanoseconds), for ``held_for``;
- ``warn_after=``: each hold also records where it was acquired and is
  watched; a hold still held ``warn_after`` seconds later is logged once, on
  the ``keyedlock`` logger, at WARNING (see :class:`Watch`).

Both work by giving the lock a subclass of its backend's context class that
records after entering (and, when watched, forgets on leaving).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
import weakref
from collections.abc import Callable, Hashable
from time import monotonic
from types import CodeType, FrameType
from typing import Any, Final

from ._core import complete
from ._ki import internal
from ._log import logger
from ._runtime import owner_text
from ._scopes import ENTERED, LockBackend, LockContext

__all__ = ["Watch", "site_of", "timed_context", "watched_context"]

_timed: dict[type[LockContext], type[LockContext]] = {}
_timed_lock = threading.Lock()


def timed_context(base: type[LockContext]) -> type[LockContext]:
    """``base``, recording when each hold took its key (``_since``)."""
    with _timed_lock:
        made = _timed.get(base)
        if made is None:
            made = _timed[base] = _subclass(base, None)
        return made


def watched_context(base: type[LockContext], watch: Watch) -> type[LockContext]:
    """``base``, recording the time and the place of each acquisition for ``watch``."""
    return _subclass(base, watch)


#: The package's own source files start with this (its helpers are no caller's place).
_OWN_FILES = os.path.dirname(os.path.abspath(__file__)) + os.sep


#: The functions of keyedlock that call the user's function with the key held (``run``,
#: ``run_sync`` and ``guard``), by name; ``fn`` is the function they run.
_RUNNERS = frozenset({"run_async", "run_blocking"})


#: The modules whose code starts tasks and threads, and, per set of them loaded, where
#: they live (see :func:`_machinery_dirs`).
_MACHINERY: Final = ("asyncio", "concurrent.futures", "trio", "anyio")
_machinery_seen: dict[tuple[bool, ...], tuple[str, ...]] = {}


def _machinery_dirs() -> tuple[str, ...]:
    """Where the code that starts tasks and threads lives (asyncio, threading, thread pools,
    and trio and anyio if loaded): a place there is nobody's place of acquisition."""
    loaded = tuple(name in sys.modules for name in _MACHINERY)
    places = _machinery_seen.get(loaded)
    if places is None:
        found = []
        for name in _MACHINERY:
            file = getattr(sys.modules.get(name), "__file__", None)
            if file:
                found.append(os.path.dirname(os.path.abspath(file)) + os.sep)
        found.append(os.path.abspath(threading.__file__))
        places = _machinery_seen[loaded] = tuple(found)
    return places


def _where(code: CodeType, line: int | None) -> str:
    return f"{code.co_filename}:{line} in {code.co_name}()"


def site_of(frame: FrameType | None) -> str:
    """``file:line in function`` of ``frame``, or of the first frame calling it from
    outside keyedlock (``run``, ``run_sync`` and ``guard`` acquire for their caller).

    When that caller is what starts tasks or threads (a guarded function or a
    ``run`` coroutine that is a task's or a thread's own, as
    ``asyncio.create_task(guarded(...))`` makes it), the place is the function
    run under the key, where it is defined, and who called it.
    """
    runner = None
    while frame is not None and frame.f_code.co_filename.startswith(_OWN_FILES):
        if frame.f_code.co_name in _RUNNERS:
            runner = frame
        frame = frame.f_back
    caller = "an unknown place" if frame is None else _where(frame.f_code, frame.f_lineno)
    if runner is None or (frame is not None and not caller.startswith(_machinery_dirs())):
        return caller
    try:  # (the user's callable may be anything: a proxy whose every attribute exists)
        fn = runner.f_locals.get("fn")
        while isinstance(fn, functools.partial):
            fn = fn.func
        code = getattr(inspect.unwrap(fn), "__code__", None) if callable(fn) else None
        if not isinstance(code, CodeType):
            return f"{caller}, running a {type(fn).__qualname__}"
    except Exception:
        return caller
    defined = _where(code, code.co_firstlineno)
    return f"{defined}, the function run with the key (called by {caller})"


def _subclass(base: type[LockContext], watch: Watch | None) -> type[LockContext]:
    enter = base.__enter__
    aenter = base.__aenter__
    namespace: dict[str, Any] = {"__slots__": (), "__module__": base.__module__}
    # What an entry records comes after the key is taken: an interrupt there (or anything
    # else raised) gives the key back, as the entry itself does for what it raises. (Only
    # for a context not used before: the entry of a used one raises before taking anything.)
    held = None if watch is None else watch.held

    def __enter__(self: LockContext) -> LockContext:
        fresh = not self._phase
        try:
            enter(self)
            self._since = monotonic()
            if held is not None:
                held(self, sys._getframe(1))
        except BaseException:
            if fresh:
                complete(self._undo)
            raise
        return self

    async def __aenter__(self: LockContext) -> LockContext:
        fresh = not self._phase
        try:
            await aenter(self)
            self._since = monotonic()
            if held is not None:
                held(self, sys._getframe(1))
        except BaseException:
            if fresh:
                complete(self._undo)
            raise
        return self

    if watch is not None:
        left = watch.left
        exit_ = base.__exit__
        aexit = base.__aexit__
        finish = base._finish
        undo = base._undo

        # Leaving releases first, then forgets the watch (in ``finally``: an interrupt in
        # between leaves no watch behind; a watch of a released hold is dropped anyway).

        def __exit__(self: LockContext, *exc_info: Any) -> Any:
            try:
                return exit_(self, *exc_info)
            finally:
                left(self)

        def __aexit__(self: LockContext, *exc_info: Any) -> Any:
            try:
                return aexit(self, *exc_info)
            finally:
                left(self)

        def _finish(self: LockContext, abort: BaseException | None = None) -> None:
            try:
                finish(self, abort)
            finally:
                left(self)

        def _undo(self: LockContext) -> None:
            try:
                undo(self)
            finally:
                left(self)

        namespace.update(__exit__=__exit__, __aexit__=__aexit__, _finish=_finish, _undo=_undo)
    namespace.update(__enter__=__enter__, __aenter__=__aenter__)
    prefix = "Timed" if watch is None else "Watched"
    made: type[LockContext] = internal(type(prefix + base.__name__, (base,), namespace))
    return made


@internal
class Watch:
    """The holds of one lock with ``warn_after``: each held longer is logged once.

    ``live`` maps each entered context to where it was acquired; leaving
    forgets it, and so does ``release(key)`` for a key taken with
    ``acquire()`` (``by_key``: the hold it finds there before releasing).
    The watchdog thread looks at every watch a few times per ``warn_after``
    (see :func:`_watchdog`).
    """

    def __init__(self, warn_after: float, backend: LockBackend) -> None:
        self.warn_after = warn_after
        self.backend = backend
        self.guard = threading.Lock()
        self.live: dict[LockContext, str] = {}
        self.by_key: dict[Hashable, LockContext] = {}
        self.warned: set[LockContext] = set()
        _watches.add(self)
        _start_watchdog()

    def held(self, ctx: LockContext, frame: FrameType | None, explicit: bool = False) -> None:
        site = site_of(frame)
        with self.guard:
            self.live[ctx] = site
            if explicit:
                self.by_key[ctx._key] = ctx
        if _watchdog_state["thread"] is None:  # (a fork child's first hold watched)
            _start_watchdog()

    def forked(self) -> None:
        """In a fork child: the parent's holds are not the child's (nor watched)."""
        self.guard = threading.Lock()
        self.live = {}
        self.by_key = {}
        self.warned = set()

    def left(self, ctx: LockContext) -> None:
        with self.guard:
            self.live.pop(ctx, None)
            self.warned.discard(ctx)
            if self.by_key.get(ctx._key) is ctx:
                del self.by_key[ctx._key]

    def taken(self, key: Hashable) -> LockContext | None:
        """The watched hold ``acquire()`` took of ``key``, if any: what ``release(key)``
        releases (it forgets that hold with :meth:`left` once it has, and no other)."""
        with self.guard:
            return self.by_key.get(key)

    def check(self, now: float, report: Callable[[Watch, LockContext, str, float], None]) -> None:
        """Report each hold held longer than ``warn_after`` (once); forget the ones gone."""
        with self.guard:
            entries = list(self.live.items())
        for ctx, site in entries:
            if ctx._phase != ENTERED or not self.backend.holds(ctx):
                self.left(ctx)
                continue
            held_for = now - getattr(ctx, "_since", now)
            if held_for >= self.warn_after and ctx not in self.warned:
                if not self.backend.still_holds(ctx):  # (released by another process, say)
                    self.left(ctx)
                    continue
                with self.guard:
                    if ctx not in self.live:
                        continue
                    self.warned.add(ctx)
                report(self, ctx, site, held_for)


def _report(watch: Watch, ctx: LockContext, site: str, held_for: float) -> None:
    logger.warning(
        "key %r has been held for %.2f s (warn_after=%s) by %s, acquired at %s",
        watch.backend.user_key(ctx._key),
        held_for,
        watch.warn_after,
        owner_text(ctx._owner),
        site,
    )


_watches: weakref.WeakSet[Watch] = weakref.WeakSet()
_watchdog_state: dict[str, threading.Thread | None] = {"thread": None}
_watchdog_guard = threading.Lock()


def _forked() -> None:
    """In a fork child: locks of its own (a thread of the parent may have held one), and no
    watchdog thread until a watch needs one."""
    global _watchdog_guard, _timed_lock
    _watchdog_guard = threading.Lock()
    _timed_lock = threading.Lock()
    _watchdog_state["thread"] = None  # (started again by the next hold watched)
    for watch in list(_watches):
        watch.forked()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_forked)


def _start_watchdog() -> None:
    with _watchdog_guard:
        thread = _watchdog_state["thread"]
        if thread is not None and thread.is_alive():
            return
        thread = threading.Thread(target=_watchdog, name="keyedlock-watchdog", daemon=True)
        _watchdog_state["thread"] = thread
        thread.start()


def _watchdog() -> None:
    """Look at every watch a few times per its ``warn_after``; end once none is left."""
    pause = threading.Event()
    while True:
        interval = _look()
        if interval is None:
            with _watchdog_guard:
                if not _watches:
                    _watchdog_state["thread"] = None
                    return
            continue
        pause.wait(min(max(interval, 0.01), 1.0))


def _look() -> float | None:
    """Check every watch once; how long to pause before the next look (None: no watch).

    (A function of its own, so that no watch stays referred to while the watchdog pauses:
    a lock dropped meanwhile goes, and its watch with it.)
    """
    watches = list(_watches)
    if not watches:
        return None
    now = monotonic()
    for watch in watches:
        watch.check(now, _report)
    return min(watch.warn_after for watch in watches) / 4
