"""An actor's bounded inbox: producers that never wait, one consumer task that does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import attrs
import trio

__all__ = ["Inbox"]

T = TypeVar("T")


@attrs.define(eq=False, slots=True)
class Inbox(Generic[T]):
    """Work for one actor task, in order, with a bound its producer keeps.

    ``put`` never waits and always queues, so all the work one read produced stays
    together and in order; it returns False once the inbox is full (``max_items`` or
    more waiting), and the producer then stops producing (a connection stops reading)
    until ``on_room`` is called: the consumer calls it as it takes the inbox back under
    the bound. So the bound is exceeded by at most one producer's batch.

    Unlike a memory channel (a deque and two ordered dicts, about 2 KiB), an empty
    inbox is an empty list and a slot for the one waiting task: it exists once per
    connection.
    """

    max_items: int
    on_room: Callable[[], None] | None = None
    _items: list[T] = attrs.field(factory=list, init=False)
    _waiter: trio.lowlevel.Task | None = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _full: bool = attrs.field(default=False, init=False)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called (then ``put`` refuses)."""
        return self._closed

    def put(self, item: T) -> bool:
        """Queue ``item``; False once the inbox is full (stop producing until ``on_room``).

        Raises:
            trio.ClosedResourceError: The inbox is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("the inbox is closed")
        items = self._items
        items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)
        if len(items) >= self.max_items:
            self._full = True
            return False
        return True

    def get_nowait(self) -> T:
        """Take the oldest item.

        Raises:
            trio.WouldBlock: Nothing is queued (and the inbox is open).
            trio.EndOfChannel: Nothing is queued and the inbox is closed.
        """
        items = self._items
        if not items:
            raise trio.EndOfChannel if self._closed else trio.WouldBlock
        item = items.pop(0)
        if self._full and len(items) < self.max_items:
            self._full = False
            if self.on_room is not None:
                self.on_room()
        return item

    async def get(self) -> T:
        """Wait for the oldest item and take it.

        Cancellation: nothing is taken.

        Raises:
            trio.EndOfChannel: The inbox is closed and empty.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._items and not self._closed:
            self._waiter = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return self.get_nowait()

    def close(self) -> None:
        """Refuse further items; the consumer still takes what is queued, then gets
        ``trio.EndOfChannel``."""
        self._closed = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)
