"""A request that takes a key (ACQUIRE, JOIN), and never loses its reply.

Its reply is kept on the :class:`Wait` (``reply``) before anything else
happens, and a request interrupted anywhere (KeyboardInterrupt, its task
cancelled, its deadline passed) shuts its connection and then either undoes
the reply that came or withdraws the request with a CANCEL on another
connection: the manager withdraws it, refuses it if it has not arrived yet,
or releases what it was granted. A request with a deadline
(:func:`~._transport.deadline_for`) gives up by then: the manager releases
what it grants to a connection that is gone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from time import monotonic

from ..._core import complete
from ..._ki import internal
from ._client import Client, Link
from ._protocol import CANCEL, Reply, encode, unpack_reply
from ._transport import REPLY_GRACE, NoAnswer

__all__ = ["Wait"]


@internal
class Wait:
    """A request that takes a key (ACQUIRE, JOIN): its reply is never lost.

    ``run()`` sends it and blocks this thread for the reply (one round trip,
    however long the manager makes it wait), and keeps it as ``reply`` before
    returning it: a caller interrupted right after ``run()`` returned still
    finds it there. ``cancel()``, from any thread, withdraws the request at
    the manager; ``run()`` then returns promptly with CANCELLED, or with what
    was granted before the cancel arrived: the canceller passes that reply to
    ``undo`` (release the key, hand the call on). If ``run()`` itself is
    interrupted anywhere (KeyboardInterrupt), it leaves nothing behind in the
    manager and re-raises. With a ``deadline``, ``run()`` returns NO_ANSWER if
    the manager has not answered by then; the manager then releases whatever
    it grants to the request.
    """

    __slots__ = (
        "cancelled",
        "client",
        "conn_id",
        "data",
        "deadline",
        "guard",
        "reply",
        "serial",
        "undo",
    )

    def __init__(
        self,
        client: Client,
        data: bytes,
        serial: int,
        undo: Callable[[object], None],
        deadline: float | None = None,
    ) -> None:
        self.client = client
        self.data = data
        self.serial = serial
        self.undo = undo
        self.deadline = deadline
        self.guard = threading.Lock()
        self.conn_id: int | None = None
        self.cancelled = False
        #: The reply, once ``run()`` has it (None before).
        self.reply: object = None

    def run(self) -> object:
        client = self.client
        deadline = self.deadline
        try:
            link = client.take(deadline)
        except NoAnswer:
            self.reply = Reply.NO_ANSWER
            return Reply.NO_ANSWER
        with self.guard:
            if self.cancelled:
                client.give_back(link)
                self.reply = Reply.CANCELLED
                return Reply.CANCELLED
            self.conn_id = link.id
        try:
            raw = link.exchange(self.data, deadline)
            reply = unpack_reply(raw)  # (an error of the manager's is raised here)
            self.reply = reply
        except NoAnswer:
            self.reply = Reply.NO_ANSWER
            return Reply.NO_ANSWER
        except (OSError, EOFError) as exc:
            link.close()
            raise client.gone(exc) from exc
        except Exception:
            if link.closed:
                complete(self._leave, link)
            else:
                client.give_back(link)  # the manager refused the request: nothing taken
            raise
        except BaseException:
            # Interrupted, before or after the request left or came back (again if another
            # interrupt lands in the recovery).
            complete(self._leave, link)
            raise
        client.give_back(link)
        return reply

    def _leave(self, link: Link) -> None:
        """Nobody will read the reply: leave nothing behind in the manager.

        Once the connection is shut, the manager can deliver nothing more on
        it (and releases what it grants from then on). A reply that came
        before and was not read is undone; else the request (maybe still
        queued, maybe granted with its reply read and lost) is withdrawn, and
        what it was granted given back.
        """
        try:
            raw = link.give_up()
        except NoAnswer:
            self.cancel(give_back=True)
            return
        with contextlib.suppress(Exception):
            self.undo(unpack_reply(raw))

    def cancel(self, give_back: bool = False) -> None:
        """Withdraw the request at the manager (from any thread; errors are ignored).

        ``run()`` then returns CANCELLED, or the reply the manager sent before
        the cancel arrived. ``give_back``: release a grant that was already
        reported too (only for a caller that will never read the reply).
        Waits for the manager no longer than :data:`REPLY_GRACE` (it may be
        called on an event loop's thread). A cancel that gets no answer by then
        is sent again from a thread of its own, which waits as long as the
        request may; meanwhile the request is still served in its turn, and
        what it is granted goes back (the caller's ``undo``, or the manager,
        for a connection that was shut).
        """
        with self.guard:
            self.cancelled = True
            conn_id = self.conn_id
        if conn_id is None:
            return
        data = encode(CANCEL, conn_id, self.serial, give_back)
        deadline = monotonic() + REPLY_GRACE
        if self.deadline is not None and self.deadline <= deadline:
            deadline = self.deadline  # (the request gives up by then too: no second try)
        try:
            self.client.call(data, deadline)
        except NoAnswer:
            if deadline != self.deadline:
                with contextlib.suppress(RuntimeError):  # (no thread left: the request ends)
                    threading.Thread(target=self._cancel_again, args=(data,), daemon=True).start()
        except (ConnectionError, RuntimeError):
            pass

    def _cancel_again(self, data: bytes) -> None:
        """:meth:`cancel`'s request, sent again with the request's own deadline."""
        with contextlib.suppress(ConnectionError, RuntimeError, NoAnswer):
            self.client.call(data, self.deadline)
