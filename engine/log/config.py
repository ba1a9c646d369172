"""``LogConfig``: where the event log lives and how it trades durability for speed."""

from __future__ import annotations

import enum
import os

import attrs

from roomcast.protocol import DEFAULT_MAX_RECORD_BYTES

__all__ = ["FsyncPolicy", "LogConfig"]


class FsyncPolicy(enum.StrEnum):
    """When the writer calls ``fsync``, and so when an append counts as done.

    Specified in ``docs/event-log.md`` ("Durability").
    """

    ALWAYS = "always"
    """Every batch is synced before its appends return: an acknowledged record survives
    a crash of the process or of the machine."""
    INTERVAL = "interval"
    """The log is synced at most once per ``fsync_interval``: at once after a quiet
    spell, else when the interval since the last sync is over, covering every batch
    written since. Appends return after the sync that covers them, so the guarantee is
    the same as ``ALWAYS``, with fewer syncs and up to ``fsync_interval`` more latency."""
    NEVER = "never"
    """Appends return once the record is written to the OS (it survives a crash of the
    process, not of the machine). The log is still synced when it rolls a segment and
    when it closes."""


def _fsync_policy(value: str) -> FsyncPolicy:
    return FsyncPolicy(value)


def _directory(value: str | os.PathLike[str]) -> str:
    return os.fspath(value)


def _positive(instance: object, attribute: object, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{getattr(attribute, 'name', '?')} must be > 0, got {value!r}")


def _positive_or_none(instance: object, attribute: object, value: float | None) -> None:
    if value is not None:
        _positive(instance, attribute, value)


@attrs.frozen(kw_only=True)
class LogConfig:
    """Event log configuration. Durations are float seconds, sizes bytes.

    Attributes:
        enabled: Whether the server keeps an event log at all.
        record_client_events: Whether events clients send are recorded too (as
            ``MESSAGE`` records with their sender and no room), so ``replay`` can
            re-drive a session against the handlers.
        directory: The log directory (created if missing).
        fsync: The `FsyncPolicy` (a name is accepted: ``"always"``, ``"interval"``,
            ``"never"``).
        fsync_interval: Under ``interval``, the shortest time between two syncs, and
            so the longest a written append waits for the sync that covers it. Under
            ``interval`` and ``never``, also the longest an append nobody waits for
            (``append_nowait``) stays queued before the writer takes it.
        segment_bytes: A segment is rolled before a batch would take it past this size
            (one record larger than that still goes into one segment).
        segment_age: A segment whose first record is older than this is rolled at the
            next write, so that age-based retention can retire it.
        retention_bytes: Oldest segments are deleted while the log is larger than this
            (None: no size limit). The segment being written is never deleted.
        retention_age: Segments whose newest record is older than this are deleted
            (None: no age limit).
        max_batch: Most records written with one ``write``.
        max_batch_bytes: Most bytes in one batch (a larger single record still goes).
        inbox_size: Records that may be queued for the writer; ``append`` waits and
            ``append_nowait`` raises ``trio.WouldBlock`` when it is full.
        max_record_bytes: Largest record body written or read.
        close_timeout: Seconds closing may take to write and sync what was accepted.
    """

    enabled: bool = True
    record_client_events: bool = True
    directory: str = attrs.field(default="./roomcast-log", converter=_directory)
    fsync: FsyncPolicy = attrs.field(default=FsyncPolicy.INTERVAL, converter=_fsync_policy)
    fsync_interval: float = attrs.field(default=0.005, validator=_positive)
    segment_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_positive)
    segment_age: float | None = attrs.field(default=24 * 3600.0, validator=_positive_or_none)
    retention_bytes: int | None = attrs.field(
        default=1024 * 1024 * 1024, validator=_positive_or_none
    )
    retention_age: float | None = attrs.field(default=7 * 24 * 3600.0, validator=_positive_or_none)
    max_batch: int = attrs.field(default=1024, validator=_positive)
    max_batch_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    inbox_size: int = attrs.field(default=8192, validator=_positive)
    max_record_bytes: int = attrs.field(default=DEFAULT_MAX_RECORD_BYTES, validator=_positive)
    close_timeout: float = attrs.field(default=5.0, validator=_positive)
