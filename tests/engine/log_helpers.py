"""Shared helpers for the event-log tests."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

from roomcast.engine.log import LogIO, iter_records
from roomcast.protocol import LogRecord, LogValue, RecordKind

T0 = 1_700_000_000.0


def record(
    offset: int,
    *,
    room: str = "lobby",
    namespace: str = "/",
    kind: RecordKind = RecordKind.MESSAGE,
    sender: str | None = "sid-a",
    event: str | None = "say",
    args: tuple[LogValue, ...] = ("hi",),
    time: float | None = None,
) -> LogRecord:
    """A record for a test; the log stamps the epoch."""
    return LogRecord(
        offset=offset,
        time=T0 + offset if time is None else time,
        namespace=namespace,
        room=room,
        kind=kind,
        sender=sender,
        event=event if kind is RecordKind.MESSAGE else None,
        args=args,
        epoch="",
    )


def room_records(directory: Path, room: str = "lobby", namespace: str = "/") -> list[LogRecord]:
    """Every record of one room, in log order."""
    return list(iter_records(directory, namespace=namespace, room=room))


def offsets(directory: Path, room: str = "lobby", namespace: str = "/") -> list[int]:
    """The offsets of one room's records, in log order."""
    return [r.offset for r in room_records(directory, room, namespace)]


class GatedIO(LogIO):
    """Syncs block while ``blocked`` is set, until ``gate`` opens (a slow disk: the writer
    syncs in a thread, so the server goes on and the inbox fills)."""

    def __init__(self) -> None:
        self.blocked = False
        self.entered = threading.Event()
        self.gate = threading.Event()

    def fsync(self, fd: int) -> None:
        if self.blocked:
            self.entered.set()
            self.gate.wait(10)
        super().fsync(fd)


class FailingIO(LogIO):
    """Fails writes with ``ENOSPC`` once ``budget`` bytes were written (the write that
    crosses the budget is partial first, as on a real full disk); or fails ``fsync``."""

    def __init__(self, *, budget: int | None = None, fail_fsync_after: int | None = None):
        self.budget = budget
        self.fail_fsync_after = fail_fsync_after
        self.written = 0
        self.fsyncs = 0

    def write(self, fd: int, data: memoryview) -> int:
        if self.budget is not None:
            room = self.budget - self.written
            if room <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[:room]
        n = super().write(fd, data)
        self.written += n
        return n

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        if self.fail_fsync_after is not None and self.fsyncs > self.fail_fsync_after:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fsync(fd)
