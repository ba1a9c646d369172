"""The supervisor's deadline scheduler: how it wakes and what it does in one step.

A step handles every deadline that passes while it runs, jobs queued with
``call_after_pass`` run once nothing more is due, and on Linux a timerfd wakes it on
time rather than Trio's millisecond-rounded epoll timeout.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import pytest
import trio
import trio.testing

from roomcast.engine.actors.supervisor import DeadlineScheduler
from roomcast.engine.actors.wakeup import WakeupTimer, _Calls, _libc_calls, _os_calls


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


# -- the timer ---------------------------------------------------------------------------


async def test_there_is_no_wakeup_timer_under_a_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # It measures real time; virtual time is the cancel scope's business.
    assert WakeupTimer.open() is None


def _calls() -> list[_Calls]:
    available = [c for c in (_os_calls(), _libc_calls()) if c is not None]
    if sys.platform.startswith("linux"):
        assert available, "Linux has timerfd (the C library's, at least)"
    return available


@pytest.mark.parametrize("calls", _calls())
async def test_a_wakeup_timer_fires_once_when_armed_and_can_be_rearmed(calls: _Calls) -> None:
    open_fd, arm = calls
    timer = WakeupTimer(open_fd(), arm)
    with trio.fail_after(10):
        timer.arm(0.001)
        await timer.wait()
        # It fired once: armed far off, it does not fire again now.
        timer.arm(1000)
        with trio.move_on_after(0.05) as waiting:
            await timer.wait()
        assert waiting.cancelled_caught
        # Re-armed sooner, the new time replaces the old one; not positive means now.
        timer.arm(0.001)
        await timer.wait()
        timer.arm(-5)
        await timer.wait()
    fd = timer._fd
    timer.close()
    timer.close()  # (twice is harmless)
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd: Linux only")
async def test_the_scheduler_wakes_on_its_timer_with_the_real_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With Trio's own clock the scheduler waits on the timer, which wakes it (the cancel
    # scope's deadline, which Trio rounds up to a millisecond, is only the fallback),
    # also for a target scheduled earlier than the one it sleeps for.
    scheduler = DeadlineScheduler()
    log: list[str] = []
    done = trio.Event()
    fired = 0
    wait = WakeupTimer.wait

    async def counting(self: WakeupTimer) -> None:
        nonlocal fired
        await wait(self)
        fired += 1

    monkeypatch.setattr(WakeupTimer, "wait", counting)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            assert scheduler._timer is not None
            now = trio.current_time()
            late, early = Target("late", log, done.set), Target("early", log)  # (held weakly)
            scheduler.schedule(late, now + 0.2)
            await trio.sleep(0.01)
            scheduler.schedule(early, now + 0.05)
            await done.wait()
            nursery.cancel_scope.cancel()
    assert log == ["early", "late"]
    assert fired == 2
    assert scheduler._timer is None  # closed when the scheduler ended
