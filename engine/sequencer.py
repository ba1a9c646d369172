"""Server-wide sequence numbers for recorded events, and delivery in their order."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

__all__ = ["Sequencer"]


@attrs.define(eq=False)
class Sequencer:
    """Hands out increasing numbers and lets their holders take turns in that order.

    A broadcast that is logged takes a number and is released once its records are
    durable and it is its turn (``engine/broadcast.py``), so clients receive events in the
    order of their offsets, which is the log's order. Every number taken must be
    ``finish``-ed (in a ``finally``): a holder that is cancelled before its turn is skipped.
    """

    last: int = 0
    done: int = 0
    _finished: set[int] = attrs.field(factory=set)
    _waiting: dict[int, Callable[[], None]] = attrs.field(factory=dict)

    def take(self) -> int:
        """The next number."""
        self.last += 1
        return self.last

    def take_done(self) -> int:
        """The next number, finished at once (a record nothing waits on: ``take``
        then ``finish``)."""
        number = self.last = self.last + 1
        if number == self.done + 1 and not self._finished:  # (nothing taken is pending)
            self.done = number
            return number
        self.finish(number)
        return number

    async def wait_turn(self, number: int) -> None:
        """Wait until every smaller number has finished.

        Cancellation: nothing changes (still call ``finish``).
        """
        if self.done >= number - 1:
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        self._waiting[number] = event.set
        try:
            await event.wait()
        finally:
            self._waiting.pop(number, None)

    async def settle(self) -> None:
        """Wait until every number taken so far has finished (a broadcast made before
        this call is then released or dropped).

        Cancellation: nothing changes.
        """
        number = self.take()
        try:
            await self.wait_turn(number)
        finally:
            self.finish(number)

    def when_turn(self, number: int, wake: Callable[[], None]) -> None:
        """Call ``wake`` once every smaller number has finished: now if that is so, else
        from the ``finish`` that makes it so. One waiter per number (``wait_turn`` or
        this); ``forget`` drops it."""
        if self.done >= number - 1:
            wake()
        else:
            self._waiting[number] = wake

    def forget(self, number: int) -> None:
        """Drop the waiter ``when_turn`` left for ``number`` (if any)."""
        self._waiting.pop(number, None)

    def finish(self, number: int) -> None:
        """Mark ``number`` done (delivered, skipped or failed) and wake the next turn."""
        if number == self.done + 1 and not self._finished:  # the common case: in order
            self.done = number
            waiter = self._waiting.pop(number + 1, None)
            if waiter is not None:
                waiter()
            return
        self._finished.add(number)
        advanced = False
        while self.done + 1 in self._finished:
            self._finished.remove(self.done + 1)
            self.done += 1
            advanced = True
        if advanced:
            waiter = self._waiting.pop(self.done + 1, None)
            if waiter is not None:
                waiter()
