"""The manager scope as a lock backend: the queue lives in the manager process.

Every operation is a round trip to the manager: a synchronous acquire is
*one* request, answered when the key is granted or the timeout elapses
(nobody polls); a release is one more. An ``async`` acquire first asks once
without waiting (answered at once); if the key is busy it waits in a helper
thread, so the event loop keeps running. ``locked``, ``waiters`` and ``len``
answer for every process.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from time import monotonic
from typing import TYPE_CHECKING, Any

from ..._core import complete
from ..._errors import Aborted, LockTimeout, shown_key
from ..._ki import internal
from ..._runtime import (
    TRIO,
    Finished,
    Offload,
    trio_checkpoint,
    trio_checkpoint_if_cancelled,
    trio_shielded_checkpoint,
)
from ..._statistics import LockStatistics, Owner
from ..._validate import check_key
from .._context import ENTERED, LockContext
from .._forking import reset_in_child
from .._local import NO_MAPPED_KEYS
from ._client import client_for, next_serial
from ._leftheld import left_held_for
from ._owners import owner_id, owner_name
from ._payloads import dump_cause, load_cause
from ._protocol import (
    ACQUIRE,
    HOLDS,
    KEYS,
    LEN,
    LOCKED,
    RELEASE,
    STATS,
    WAITERS,
    Reply,
    encode,
)
from ._transport import REPLY_GRACE, NoAnswer, deadline_for
from ._wait import Wait

__all__ = ["ManagerLockBackend", "ManagerLockContext", "check_wire_key", "wait_off_loop"]


def check_wire_key(key: object) -> Hashable:
    """A key the manager process can compare: hashable, picklable, and equal to its copy.

    The manager unpickles a new copy of the key with every request. A key
    that is not equal to its own copy (a NaN, or a tuple holding one) would
    never match the key the manager holds: refused with TypeError, at once.
    """
    cls = type(key)
    if cls is str or cls is int or cls is bytes:
        return key  # the common keys: always equal to their copies
    check_key(key)
    try:
        copy = pickle.loads(pickle.dumps(key, pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        raise TypeError(
            f"key {shown_key(key)} cannot be sent to the KeyedLockManager: keys must be "
            f"picklable ({exc})"
        ) from exc
    if copy != key:
        raise TypeError(
            f"key {shown_key(key)} is not equal to its own copy in another process (a NaN in it?), "
            "so the KeyedLockManager could never find it again; use a key that is"
        )
    return key


def _dispose(wait: Wait, done: Finished[object]) -> None:
    """A reply nobody will read (its task was cancelled): give back what it granted."""
    if done.error is None:
        with contextlib.suppress(Exception):
            wait.undo(done.value)


@internal
async def wait_off_loop(wait: Wait) -> object:
    """Run ``wait`` in a helper thread while this asyncio or trio task waits.

    Cancellation sends a cancel request to the manager (one quick round trip
    that the manager answers at once) before it propagates: the wait is
    withdrawn, and a key granted in the same instant is given back, so the
    manager holds nothing for the task any more. Under trio, as with trio's
    own primitives, a reply that arrived before the cancellation could take
    effect is kept (the task owns the key; trio raises Cancelled at its next
    checkpoint).
    """
    job: Offload[object] = Offload(
        wait.run, functools.partial(_dispose, wait), name="keyedlock-manager-wait"
    )
    job.claim()
    try:
        job.start()  # (interrupted as it returns, the wait runs and nobody waits for it)
        done = await job.wait_async(None)
    except BaseException:
        complete(wait.cancel, True)  # (give_back; again if another interrupt lands in it)
        raise
    assert done is not None  # no timeout: only cancellation ends the wait early
    return done.unwrap()


@internal
class ManagerLockContext(LockContext):
    """The context a manager's lock hands out: ``klock(key, timeout=...)`` of a
    :class:`~keyedlock.multiprocessing.KeyedLockProxy`.

    A :class:`~keyedlock.LockContext`, used the same way: once, with ``with`` in
    a thread or ``async with`` in an asyncio or trio task. Entering is one round
    trip to the manager (however long it waits), exiting one more.
    """

    __slots__ = ("_serial", "_wait")

    _serial: int
    #: The request that took the key (its ``reply`` says whether it did), until released.
    _wait: Wait | None

    if not TYPE_CHECKING:
        __init__ = object.__init__  # made by calling the class (the lock fills in the slots)


@internal
class ManagerLockBackend:
    """The :class:`~keyedlock._scopes.LockBackend` of a lock living in a manager process."""

    __slots__ = ("__weakref__", "address", "fast_acquire", "left_held", "max_waiters", "tid")

    context: type[LockContext] = ManagerLockContext
    #: The queue is the manager's: no local table.
    table = None

    def __init__(
        self, address: str, tid: int, max_waiters: int | None, fast_acquire: bool = False
    ) -> None:
        self.address = address
        self.tid = tid
        self.max_waiters = max_waiters
        self.fast_acquire = fast_acquire
        #: The owners of this process's holds taken with acquire(), watched (see _leftheld).
        self.left_held = left_held_for(address, tid)
        reset_in_child(self)

    def forked(self) -> None:
        """In a fork child: none of the parent's holds or owners are this process's."""
        self.left_held = left_held_for(self.address, self.tid)

    @property
    def map_key(self) -> Callable[[object], Hashable] | None:
        return check_wire_key

    @property
    def mapped_keys(self) -> Mapping[type, Mapping[Any, Hashable]]:
        return NO_MAPPED_KEYS

    # -- a context's key ----------------------------------------------------------

    def _undo_reply(self, key: Hashable, serial: int) -> Callable[[object], None]:
        def undo(reply: object) -> None:
            if reply == Reply.GRANTED:
                with contextlib.suppress(ConnectionError, RuntimeError, NoAnswer):
                    self._release(key, serial, None)

        return undo

    def _request(
        self, ctx: ManagerLockContext, timeout: float | None, deadline: float | None
    ) -> Wait:
        """The ACQUIRE request of ``ctx`` (kept on it: its reply is what ``undo`` reads)."""
        key = ctx._key
        serial = ctx._serial
        owner = ctx._owner
        taken = ctx._watched  # (by acquire(): it may outlive its owner)
        data = encode(
            ACQUIRE, self.tid, key, owner_id(owner), serial, timeout, owner_name(owner), taken
        )
        wait = ctx._wait = Wait(
            client_for(self.address), data, serial, self._undo_reply(key, serial), deadline
        )
        return wait

    def _granted(self, ctx: LockContext, reply: object, timeout: float | None) -> bool:
        """Map an ACQUIRE reply to True (acquired) / False (timed out), or raise."""
        if reply == Reply.GRANTED:
            if ctx._watched:  # taken by acquire(): it may outlive its owner
                owner = ctx._owner
                self.left_held.taken(owner)  # (in the owner's own thread)
            return True
        key = ctx._key
        if isinstance(reply, tuple) and reply[0] == Reply.ABORTED:
            raise Aborted(
                f"the wait for key {shown_key(key)} was aborted: the holder's work failed with "
                "on_error='stop'"
            ) from load_cause(reply[1])
        if reply == Reply.NO_ANSWER:
            raise LockTimeout(
                f"the KeyedLockManager at {self.address!r} did not answer in time: no reply "
                f"to the acquire of key {shown_key(key)} (timeout={timeout} s, plus "
                f"{REPLY_GRACE} s of "
                "grace at most); its process may be stopped or stuck"
            )
        return False

    def acquire(self, ctx: LockContext, timeout: float | None) -> bool:
        assert isinstance(ctx, ManagerLockContext)
        ctx._serial = next_serial()
        return self._granted(ctx, self._request(ctx, timeout, deadline_for(timeout)).run(), timeout)

    async def acquire_async(self, ctx: LockContext, runtime: int, timeout: float | None) -> bool:
        """Try once at once (blocking the loop for one round trip: at most REPLY_GRACE if
        the manager does not answer); if busy, or not answered by then, wait in a helper
        thread (cancellable) for the rest of ``timeout``."""
        assert isinstance(ctx, ManagerLockContext)
        checkpoints = runtime == TRIO and not self.fast_acquire
        if checkpoints:
            await trio_checkpoint_if_cancelled()
        start = monotonic()
        deadline = deadline_for(timeout)
        ctx._serial = next_serial()  # (one for the try and the wait: the try leaves no trace)
        now = self._request(ctx, 0, deadline_for(0)).run()
        if now == Reply.NO_ANSWER and timeout != 0:
            # The manager did not answer within the grace (stopped, stuck): ask again, from
            # a helper thread. (If the try is granted once it goes on, the manager hands the
            # key on, as the try's client is gone; meanwhile it lets this owner queue.)
            ctx._serial = next_serial()
        elif now != Reply.BUSY or timeout == 0:
            acquired = self._granted(ctx, now, timeout)
            if checkpoints:  # (a busy try too: a loop of tries lets the holder run)
                await trio_shielded_checkpoint()
            elif runtime == TRIO and not acquired:  # (fast_acquire: a busy try still does)
                await trio_checkpoint()
            return acquired
        left = None if timeout is None else max(0.0, timeout - (monotonic() - start))
        reply = await wait_off_loop(self._request(ctx, left, deadline))
        return self._granted(ctx, reply, timeout)

    def _release(self, key: Hashable, serial: int, abort: BaseException | None) -> None:
        cause = None if abort is None else dump_cause(abort)
        client_for(self.address).call(encode(RELEASE, self.tid, key, serial, cause, None))

    def release(self, ctx: LockContext, abort: BaseException | None) -> None:
        assert isinstance(ctx, ManagerLockContext)
        wait = ctx._wait
        if wait is not None and wait.client is not client_for(self.address):
            ctx._wait = None  # (nothing for the undo to send: the hold is the parent's)
            raise RuntimeError(
                f"release of key {shown_key(ctx._key)}, which this process does not hold in the "
                "manager: it was acquired before a fork by the parent process, which still "
                "holds it"
            )
        self._release(ctx._key, ctx._serial, abort)
        ctx._wait = None

    def undo(self, ctx: LockContext) -> None:
        assert isinstance(ctx, ManagerLockContext)
        wait = getattr(ctx, "_wait", None)
        if wait is not None and wait.reply == Reply.GRANTED:
            # Forgotten once released: interrupted before, the undo releases again (a repeat
            # of a release of this hold changes nothing: it names the hold's serial).
            with contextlib.suppress(ConnectionError, RuntimeError, NoAnswer):
                self._release(ctx._key, ctx._serial, None)
            ctx._wait = None

    # -- any caller -----------------------------------------------------------------

    def release_key(self, key: Hashable, done: list[Any]) -> None:
        if not done:
            done.append(next_serial())  # the ticket: a repeat of this request changes nothing
        client_for(self.address).call(encode(RELEASE, self.tid, key, None, None, done[0]))

    def locked(self, key: Hashable) -> bool:
        return bool(client_for(self.address).call(encode(LOCKED, self.tid, key)))

    def waiters(self, key: Hashable) -> int:
        return int(client_for(self.address).call(encode(WAITERS, self.tid, key)))

    def busy(self) -> int:
        return int(client_for(self.address).call(encode(LEN, self.tid)))

    def statistics(self, key: Hashable, shown: Hashable) -> LockStatistics:
        held, holder, waiting, _ = client_for(self.address).call(encode(STATS, self.tid, key))
        return LockStatistics(
            key=shown,
            locked=held,
            holder=None if holder is None else Owner(holder[1], holder[3], holder[0]),
            held_for=None if holder is None else holder[2],
            waiters=len(waiting),
            waiters_by_runtime=dict(Counter(waiting)),
        )

    def keys(self) -> list[Hashable]:
        return list(client_for(self.address).call(encode(KEYS, self.tid)))

    def user_key(self, key: Hashable) -> Hashable:
        return key

    def holds(self, ctx: LockContext) -> bool:
        return ctx._phase == ENTERED  # (as far as this process can tell without asking)

    def still_holds(self, ctx: LockContext) -> bool:
        if ctx._phase != ENTERED:
            return False
        serial: int = ctx._serial  # type: ignore[attr-defined]  # a ManagerLockContext
        try:
            held = client_for(self.address).call(encode(HOLDS, self.tid, serial), deadline_for(0))
        except Exception:  # (no answer: a long hold is better logged than hidden)
            return True
        return bool(held)
