"""A wake-up with the kernel timer's precision, for the deadline scheduler (Linux).

Trio sleeps in ``epoll_wait``, whose timeout is in whole milliseconds: Python rounds it
up, so a task that sleeps until a deadline wakes up to a millisecond after it (half a
millisecond on average), on top of the time the system takes to run it again. For the
heartbeat, where a silent client must be dropped within a few milliseconds of its
deadline, that is a large part of the budget. A ``timerfd`` armed for the deadline, with
nanosecond resolution, makes Trio's epoll instance ready at the deadline itself; the
task waits on it as on any file descriptor (what netty and smol do for the same reason).

It measures real time, so it serves Trio's default clock only: under a ``MockClock``
(tests), and where there is no ``timerfd`` (not Linux), ``WakeupTimer.open`` returns
None and the scheduler sleeps on its cancel scope's deadline alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Callable
from typing import Final

import attrs
import trio
import trio.testing

__all__ = ["WakeupTimer"]

_NS: Final = 1_000_000_000

# (open a non-blocking timerfd on CLOCK_MONOTONIC, arm it to fire once in ns nanoseconds)
_Calls = tuple[Callable[[], int], Callable[[int, int], None]]


def _os_calls() -> _Calls | None:
    """The os module's timerfd functions (Python 3.13 and later, on Linux)."""
    create = getattr(os, "timerfd_create", None)
    settime_ns = getattr(os, "timerfd_settime_ns", None)
    if create is None or settime_ns is None:
        return None
    flags = os.TFD_NONBLOCK | os.TFD_CLOEXEC  # type: ignore[attr-defined,unused-ignore]

    def open_fd() -> int:
        fd: int = create(time.CLOCK_MONOTONIC, flags=flags)
        return fd

    def arm(fd: int, ns: int) -> None:
        settime_ns(fd, initial=ns)

    return open_fd, arm


def _libc_calls() -> _Calls | None:
    """timerfd_create and timerfd_settime from the C library (Python 3.11 and 3.12)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None

    class Timespec(ctypes.Structure):
        _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))

    class Itimerspec(ctypes.Structure):
        _fields_ = (("it_interval", Timespec), ("it_value", Timespec))

    spec = Itimerspec()  # it_interval stays zero: the timer fires once
    flags = os.O_NONBLOCK | os.O_CLOEXEC  # (TFD_NONBLOCK and TFD_CLOEXEC are these)

    def check(result: int) -> int:
        if result < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        return result

    def open_fd() -> int:
        return check(create(time.CLOCK_MONOTONIC, flags))

    def arm(fd: int, ns: int) -> None:
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(ns, _NS)
        check(settime(fd, 0, ctypes.byref(spec), None))

    return open_fd, arm


@attrs.define(eq=False)
class WakeupTimer:
    """A one-shot timer a Trio task waits on: ``arm`` it, then ``wait``."""

    _fd: int
    _arm: Callable[[int, int], None]

    @classmethod
    def open(cls) -> WakeupTimer | None:
        """A timer, or None where the current Trio run cannot use one (see above)."""
        if isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
            return None
        calls = _os_calls() or _libc_calls()
        if calls is None:
            return None
        open_fd, arm = calls
        try:
            return cls(open_fd(), arm)
        except OSError:
            return None

    def arm(self, delay: float) -> None:
        """Become ready ``delay`` seconds from now (at once if it is not positive),
        replacing the time it was armed for."""
        self._arm(self._fd, max(1, int(delay * _NS)))  # (0 would disarm it)

    async def wait(self) -> None:
        """Wait until the timer fires (or fired since it was last waited on).

        Cancellation: nothing is lost; the timer stays armed.
        """
        await trio.lowlevel.wait_readable(self._fd)
        with contextlib.suppress(BlockingIOError):  # (re-armed since it fired)
            os.read(self._fd, 8)

    def close(self) -> None:
        """Release the file descriptor."""
        if self._fd >= 0:
            trio.lowlevel.notify_closing(self._fd)
            os.close(self._fd)
            self._fd = -1
