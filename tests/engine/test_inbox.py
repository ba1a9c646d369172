"""The connection actor's inbox: producers never wait, the consumer does."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from roomcast.engine.actors.inbox import Inbox


def test_put_keeps_order_and_says_when_full_and_room_is_told_once() -> None:
    rooms: list[int] = []
    inbox: Inbox[int] = Inbox(max_items=2, on_room=lambda: rooms.append(len(inbox)))
    assert inbox.put(1) is True
    assert inbox.put(2) is False  # full: the producer stops
    assert inbox.put(3) is False  # (still queued: one read's work stays together)
    assert [inbox.get_nowait(), inbox.get_nowait()] == [1, 2]
    assert rooms == [1]  # back under the bound once
    assert inbox.get_nowait() == 3
    assert rooms == [1]
    with pytest.raises(trio.WouldBlock):
        inbox.get_nowait()


async def test_get_waits_for_an_item_and_ends_after_close_with_what_was_queued() -> None:
    inbox: Inbox[str] = Inbox(max_items=8)
    got: list[str] = []

    async def consume() -> None:
        while True:
            try:
                got.append(await inbox.get())
            except trio.EndOfChannel:
                got.append("end")
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        inbox.put("a")
        await trio.testing.wait_all_tasks_blocked()
        inbox.put("b")
        inbox.put("c")
        inbox.close()
        with pytest.raises(trio.ClosedResourceError):
            inbox.put("d")
    assert got == ["a", "b", "c", "end"]


async def test_a_cancelled_get_takes_nothing() -> None:
    inbox: Inbox[int] = Inbox(max_items=8)
    with trio.move_on_after(0.01):
        await inbox.get()
    inbox.put(7)
    assert await inbox.get() == 7
