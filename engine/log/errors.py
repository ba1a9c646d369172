"""The event log's exceptions, all under ``roomcast.engine.EngineError``."""

from __future__ import annotations

from roomcast.engine.errors import EngineError

__all__ = [
    "LogClosedError",
    "LogCorruptError",
    "LogError",
    "LogLockedError",
    "LogUnsupportedError",
    "LogWriteError",
]


class LogError(EngineError):
    """Root of the event log's errors."""


class LogClosedError(LogError):
    """An append reached a log that is closed or closing; the record was not accepted."""


class LogWriteError(LogError):
    """Writing or syncing the log failed (disk full, I/O error); nothing more is accepted.

    Raised to every append that was not durable yet when the failure happened, and to
    every later append. A record whose append raised this was never acknowledged; it may
    or may not be on disk.

    Attributes:
        errno: The ``OSError.errno`` of the failure, when it came from the OS.
        segment: The segment being written.
    """

    def __init__(self, message: str, *, errno: int | None = None, segment: int | None = None):
        super().__init__(message)
        self.errno = errno
        self.segment = segment


class LogCorruptError(LogError):
    """A reader met a damaged record.

    Attributes:
        segment: The segment number.
        position: Byte position in the segment file where the bad record starts.
        detail: What is wrong, for humans.
        resumes_at: Where the next readable record starts, or None if nothing after it in
            the segment could be read.
    """

    def __init__(
        self, message: str, *, segment: int, position: int, detail: str, resumes_at: int | None
    ) -> None:
        super().__init__(message)
        self.segment = segment
        self.position = position
        self.detail = detail
        self.resumes_at = resumes_at


class LogUnsupportedError(LogError):
    """The log holds records of a newer schema; this build will not append to it."""


class LogLockedError(LogError):
    """Another writer has the log directory open.

    Attributes:
        directory: The log directory.
        pid: The process id of the writer that holds it, if it wrote one.
    """

    def __init__(self, message: str, *, directory: str, pid: int | None) -> None:
        super().__init__(message)
        self.directory = directory
        self.pid = pid
