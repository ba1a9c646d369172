"""The event log: append-only segment files, a group-commit writer, tail repair on
opening, and readers. Specified in ``docs/event-log.md``; re-driving records against an app is
``roomcast.engine.replay``, which sits above the log.

Writing (Trio)::

    async with open_event_log(LogConfig(directory="./roomcast-log")) as log:
        next_offset = (log.last_offset("/", "lobby") or 0) + 1
        await log.append(LogRecord(offset=next_offset, ..., epoch=log.epoch))

Reading (synchronous; from Trio, through ``trio.to_thread.run_sync``)::

    for record in iter_records("./roomcast-log", namespace="/", room="lobby"):
        ...
"""

from __future__ import annotations

from roomcast.engine.log.config import FsyncPolicy, LogConfig
from roomcast.engine.log.errors import (
    LogClosedError,
    LogCorruptError,
    LogError,
    LogLockedError,
    LogUnsupportedError,
    LogWriteError,
)
from roomcast.engine.log.reader import (
    LogStats,
    Problem,
    ReadProgress,
    VerifyReport,
    iter_records,
    log_stats,
    membership_at,
    record_to_json,
    room_history,
    verify_log,
)
from roomcast.engine.log.repair import RepairReport, TailRepair
from roomcast.engine.log.segment import Corruption, RoomSpan
from roomcast.engine.log.writer import EventLog, LogIO, LogStatistics, open_event_log

__all__ = [
    "Corruption",
    "EventLog",
    "FsyncPolicy",
    "LogClosedError",
    "LogConfig",
    "LogCorruptError",
    "LogError",
    "LogIO",
    "LogLockedError",
    "LogStatistics",
    "LogStats",
    "LogUnsupportedError",
    "LogWriteError",
    "Problem",
    "ReadProgress",
    "RepairReport",
    "RoomSpan",
    "TailRepair",
    "VerifyReport",
    "iter_records",
    "log_stats",
    "membership_at",
    "open_event_log",
    "record_to_json",
    "room_history",
    "verify_log",
]
