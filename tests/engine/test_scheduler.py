"""The supervisor's deadline scheduler: how it wakes and what it does in one step.

A step handles every deadline that passes while it runs, and jobs queued with
``call_after_pass`` run once nothing more is due.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import trio
import trio.testing

from roomcast.engine.actors.supervisor import DeadlineScheduler


class Target:
    """A scheduler target that runs ``action`` when its deadline passes."""

    def __init__(self, name: str, log: list[str], action: Callable[[], None] = lambda: None):
        self.timer_token = 0
        self.name = name
        self.log = log
        self.action = action

    def on_deadline(self, now: float) -> None:
        self.log.append(self.name)
        self.action()


class StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def test_a_deadline_that_passes_while_others_are_handled_is_handled_in_the_same_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The first target's handling takes a second (the clock jumps): the second target,
    # due meanwhile, is handled before the scheduler yields, not after a pass of every
    # other task (after a burst of drops, the dropped connections' cleanup).
    scheduler = DeadlineScheduler()
    counter = StepCounter()
    log: list[str] = []
    steps: dict[str, int] = {}

    def slow() -> None:
        steps["first"] = counter.steps
        autojump_clock.jump(1.0)

    def count() -> None:
        steps["second"] = counter.steps

    first = Target("first", log, slow)
    second = Target("second", log, count)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        trio.lowlevel.add_instrument(counter)
        now = trio.current_time()
        scheduler.schedule(first, now + 1.0)
        scheduler.schedule(second, now + 1.5)
        await trio.sleep(3)
        trio.lowlevel.remove_instrument(counter)
        nursery.cancel_scope.cancel()
    assert log == ["first", "second"]
    assert steps["second"] == steps["first"]


async def test_jobs_queued_by_deadline_handlers_run_once_nothing_more_is_due(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = DeadlineScheduler()
    log: list[str] = []

    def broken() -> None:
        raise RuntimeError("a bug in a job")

    def queue(name: str, job: Callable[[], None]) -> Callable[[], None]:
        return lambda: scheduler.call_after_pass(job)

    targets = [
        Target("a", log, queue("a", lambda: log.append("job a"))),
        Target("b", log, queue("b", broken)),
        Target("c", log, queue("c", lambda: log.append("job c"))),
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        now = trio.current_time()
        for target in targets:
            scheduler.schedule(target, now + 1.0)
        await trio.sleep(2)
        assert log == ["a", "b", "c", "job a", "job c"]
        # The scheduler goes on after a job raised (it was logged).
        later = Target("later", log, queue("later", lambda: log.append("job later")))
        scheduler.schedule(later, trio.current_time() + 1.0)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert log[-2:] == ["later", "job later"]
    (failure,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failure.getMessage().startswith("deadline job")
    assert failure.exc_info is not None
    assert isinstance(failure.exc_info[1], RuntimeError)
