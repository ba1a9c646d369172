"""The sequencer: numbers taken in one order are served in that order, whatever order
their holders finish in."""

from __future__ import annotations

import trio
import trio.testing

from roomcast.engine.sequencer import Sequencer


async def test_turns_follow_the_numbers_when_holders_finish_out_of_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sequencer = Sequencer()
    served: list[int] = []

    async def holder(number: int, delay: float) -> None:
        try:
            await trio.sleep(delay)  # e.g. waiting for its record to be durable
            await sequencer.wait_turn(number)
            served.append(number)
        finally:
            sequencer.finish(number)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for number, delay in zip((1, 2, 3, 4), (0.3, 0.1, 0.2, 0.0), strict=True):
                assert sequencer.take() == number
                nursery.start_soon(holder, number, delay)
    assert served == [1, 2, 3, 4]
    assert sequencer.done == 4


async def test_a_cancelled_holder_is_skipped() -> None:
    sequencer = Sequencer()
    first, second = sequencer.take(), sequencer.take()
    assert sequencer.done == first - 1  # the first one's turn; not yet the second's
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def waiting() -> None:
                try:
                    await sequencer.wait_turn(second)
                finally:
                    sequencer.finish(second)

            nursery.start_soon(waiting)
            await trio.testing.wait_all_tasks_blocked()
            sequencer.finish(first)  # (its holder was cancelled before its turn)
    assert sequencer.done == 2


def test_numbers_finished_in_order_advance_at_once() -> None:
    sequencer = Sequencer(last=10, done=10)
    numbers = [sequencer.take() for _ in range(3)]
    assert numbers == [11, 12, 13]
    sequencer.finish(12)  # early: held until 11 is done
    assert sequencer.done == 10
    sequencer.finish(11)
    assert sequencer.done == 12
    sequencer.finish(13)
    assert sequencer.done == 13


def test_a_number_taken_done_waits_for_nothing_and_holds_nothing_up() -> None:
    sequencer = Sequencer(last=10, done=10)
    assert sequencer.take_done() == 11  # nothing pending: done at once
    assert sequencer.done == 11
    pending = sequencer.take()
    assert sequencer.take_done() == 13  # finished, but behind the pending 12
    assert sequencer.done == 11
    turns: list[int] = []
    sequencer.when_turn(14, lambda: turns.append(14))
    sequencer.finish(pending)
    assert sequencer.done == 13
    assert turns == [14]  # the number after it got its turn
