"""The event-log writer: one actor that batches appends, writes, syncs and rolls.

``open_event_log`` repairs the directory (in a thread), starts the writer task in a
nursery it owns and yields an `EventLog`. Appends go through a bounded inbox; the
writer takes everything queued (up to ``max_batch``), writes it with one ``write`` (to the
page cache, from the event loop), and syncs by the fsync policy in a thread (group commit:
one ``fsync`` covers every append that queued while the previous one ran). The guarantees
are specified in ``docs/event-log.md`` ("Durability").
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Final

import attrs
import msgpack
import trio

from roomcast.engine.log.config import FsyncPolicy, LogConfig
from roomcast.engine.log.errors import LogClosedError, LogError, LogWriteError
from roomcast.engine.log.repair import RepairReport, lock_directory, repair_log
from roomcast.engine.log.segment import (
    FAILED_MARKER,
    LogState,
    RecordKey,
    SegmentSummary,
    SummaryBuilder,
    fsync_directory,
    segment_name,
    segment_path,
    summary_path,
    write_state,
    write_summary,
)
from roomcast.protocol import (
    LogRecord,
    LogValue,
    RecordEncoder,
    RecordKind,
    encode_record_fields,
    record_encoder,
)

__all__ = ["EventLog", "LogIO", "LogStatistics", "open_event_log"]

logger = logging.getLogger(__name__)

SERVER_NAMESPACE: Final = ""
"""Namespace of the writer's own records (``EPOCH``, ``SERVER_START``, ``SERVER_STOP``)."""


class LogIO:
    """The system calls the writer makes on segment files.

    A seam for tests: a subclass can fail a write (``ENOSPC``) or a sync (``EIO``) at a
    chosen moment without touching the real ``os`` module.
    """

    def write(self, fd: int, data: memoryview) -> int:
        """Write some of ``data``; return how many bytes were written."""
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        """Make what was written to ``fd`` durable (data and the file size)."""
        os.fdatasync(fd)


@attrs.frozen(kw_only=True)
class LogStatistics:
    """Counters of a running log (for tests and monitoring).

    Attributes:
        queued: Appends waiting in the inbox.
        records_written: Records written since the log was opened.
        batches: Batches written (each one ``write``).
        syncs: ``fsync`` calls on segments.
        segment: The segment being written.
        segment_bytes: Its size.
    """

    queued: int
    records_written: int
    batches: int
    syncs: int
    segment: int
    segment_bytes: int


@attrs.define(eq=False)
class _Files:
    """The writer's files. Synchronous: only the writer task calls it, directly for a
    plain write and through a thread for what can block long (sync, roll, close)."""

    directory: Path
    config: LogConfig
    io: LogIO
    clock: Callable[[], float]
    state: LogState
    sealed: list[SegmentSummary]
    active: int
    size: int
    builder: SummaryBuilder
    fd: int
    lock_fd: int
    since: float | None = None
    """When the first record of the segment being written was written (``clock``)."""
    records_written: int = 0
    batches: int = 0
    syncs: int = 0
    closed: bool = False

    @classmethod
    def open(
        cls, directory: Path, config: LogConfig, io: LogIO, clock: Callable[[], float]
    ) -> tuple[_Files, RepairReport, dict[tuple[str, str], int]]:
        lock_fd = lock_directory(directory)
        try:
            repaired = repair_log(directory, config=config, now=clock())
            fd = os.open(segment_path(directory, repaired.active), os.O_WRONLY | os.O_APPEND)
        except BaseException:
            os.close(lock_fd)
            raise
        files = cls(
            directory=directory,
            config=config,
            io=io,
            clock=clock,
            state=repaired.state,
            sealed=repaired.sealed,
            active=repaired.active,
            size=repaired.active_size,
            builder=repaired.builder,
            fd=fd,
            lock_fd=lock_fd,
        )
        try:
            files.apply_retention()
        except BaseException:
            files.close(clean=False)
            raise
        return files, repaired.report, repaired.last_offsets

    def _too_old(self) -> bool:
        age = self.config.segment_age
        if age is None or self.size == 0:
            return False
        if self.since is None:
            # A segment reopened after a restart: its oldest record tells its age.
            self.since = self.builder.first_time
        return self.since is not None and self.clock() - self.since > age

    def write_batch(
        self, keys: list[RecordKey], counts: list[int], frames: list[bytes], sync: bool
    ) -> None:
        """Append ``frames`` (rolling segments as needed), then sync if ``sync``.
        ``frames[i]`` holds the encoded records of one append, ``counts[i]`` how many
        (they are written together: a segment never splits them), and ``keys`` what the
        summary needs of every record, in order.

        Raises:
            OSError: A write, sync or roll failed. A partly written chunk was cut off
                again, so the segment ends with whole records.
        """
        limit = self.config.segment_bytes
        start, count = 0, len(frames)
        first = 0  # the first record of ``frames[start]`` in ``keys``
        rest = sum(map(len, frames))  # the bytes of ``frames[start:]``
        while start < count:
            if self.size and (self.size + len(frames[start]) > limit or self._too_old()):
                self.roll()
            end = count  # (the common case: the rest fits, and no loop over the appends)
            if self.size + rest > limit:
                end, total = start + 1, self.size + len(frames[start])
                while end < count and total + len(frames[end]) <= limit:
                    total += len(frames[end])
                    end += 1
            if self.size == 0:
                self.since = self.clock()
            data = b"".join(frames[start:end] if start or end < count else frames)
            self._write(data)
            records = sum(counts[start:end])
            written = keys if records == len(keys) else keys[first : first + records]
            self.records_written += self.builder.add_keys(written, self.state.epoch)
            start, first, rest = end, first + records, rest - len(data)
        if frames:
            self.batches += 1
        if sync:
            self.io.fsync(self.fd)
            self.syncs += 1

    def rolls_for(self, frames: list[bytes]) -> bool:
        """Whether writing ``frames`` would roll a segment (which syncs and writes the
        summary and ``epoch.json``: work for a thread, unlike a plain write)."""
        if not self.size:
            return False
        return self.size + sum(map(len, frames)) > self.config.segment_bytes or self._too_old()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                n = self.io.write(self.fd, view[written:])
                if n <= 0:  # pragma: no cover - write(2) on a regular file never returns 0
                    raise OSError("write wrote nothing")
                written += n
        except OSError:
            if written:
                # Never leave part of a record behind us: later appends would follow it.
                try:
                    os.ftruncate(self.fd, self.size)
                except OSError:
                    logger.exception("could not cut a partial write off %s", self._name())
            raise
        self.size += written

    def _name(self) -> str:
        return segment_name(self.active)

    def sync(self) -> None:
        """Sync the segment being written."""
        self.io.fsync(self.fd)
        self.syncs += 1

    def roll(self) -> None:
        """Seal the segment being written (sync it, summarise it) and start the next."""
        self.io.fsync(self.fd)
        self.syncs += 1
        summary = self.builder.build(self.active, self.size)
        write_summary(self.directory, summary)
        number = self.active + 1
        fd = os.open(
            segment_path(self.directory, number),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
            0o644,
        )
        try:
            fsync_directory(self.directory)
            state = attrs.evolve(self.state, last_segment=number)
            write_state(self.directory, state)
        except BaseException:
            os.close(fd)
            raise
        os.close(self.fd)
        self.fd, self.active, self.size, self.state = fd, number, 0, state
        self.builder = SummaryBuilder()
        self.sealed.append(summary)
        logger.info("event log rolled to %s", segment_name(number))
        self.apply_retention()

    def apply_retention(self) -> None:
        """Delete the oldest sealed segments while the log is too large or they too old."""
        config = self.config
        total = sum(s.size for s in self.sealed) + self.size
        oldest = None if config.retention_age is None else self.clock() - config.retention_age
        drop = 0
        for summary in self.sealed:
            too_big = config.retention_bytes is not None and total > config.retention_bytes
            too_old = oldest is not None and (
                summary.last_time is None or summary.last_time < oldest
            )
            if not (too_big or too_old):
                break
            total -= summary.size
            drop += 1
        if not drop:
            return
        victims, self.sealed = self.sealed[:drop], self.sealed[drop:]
        first = self.sealed[0].segment if self.sealed else self.active
        # epoch.json first: a crash in between leaves files that the next open deletes,
        # never an epoch file naming segments that are gone.
        gaps = tuple(gap for gap in self.state.gaps if gap[1] >= first)
        self.state = attrs.evolve(self.state, first_segment=first, gaps=gaps)
        write_state(self.directory, self.state)
        for summary in victims:
            segment_path(self.directory, summary.segment).unlink(missing_ok=True)
            summary_path(self.directory, summary.segment).unlink(missing_ok=True)
        fsync_directory(self.directory)
        logger.info(
            "event log retention deleted %d segment(s) up to %s",
            drop,
            segment_name(victims[-1].segment),
        )

    def mark_failed(self) -> None:
        """Leave a marker so that the next open starts a new epoch (best effort)."""
        try:
            # An empty file needs no data blocks, so this works on a full disk too.
            os.close(os.open(self.directory / FAILED_MARKER, os.O_WRONLY | os.O_CREAT, 0o644))
            fsync_directory(self.directory)
        except OSError:
            logger.exception("could not leave the %s marker", FAILED_MARKER)

    def close(self, *, clean: bool) -> None:
        """Close the files; if ``clean``, sync and record in epoch.json that we closed."""
        if self.closed:
            return
        self.closed = True
        try:
            if clean:
                self.io.fsync(self.fd)
                self.syncs += 1
                self.state = attrs.evolve(self.state, open=False)
                write_state(self.directory, self.state)
        finally:
            os.close(self.fd)
            os.close(self.lock_fd)


@attrs.define(eq=False, slots=True)
class _Item:
    """One append that may wait for room in the inbox (its records, encoded together in
    ``frame``, and what the segment's summary needs of each). ``done``, if any, is
    called once the writer is done with it: with None when it is acknowledged by the
    fsync policy, else with the error."""

    keys: tuple[RecordKey, ...]
    frame: bytes
    done: Callable[[LogError | None], None] | None


@attrs.define(eq=False, slots=True)
class _Mark:
    """A ``done`` in the inbox: called once the first ``position`` appends the log ever
    queued are acknowledged (``sync``: a flush, which syncs whatever the policy)."""

    position: int
    done: Callable[[LogError | None], None]
    sync: bool = False


@attrs.define(eq=False, slots=True)
class _Batch:
    """What the writer took from the inbox in one round."""

    frames: list[bytes]
    keys: list[RecordKey]
    counts: list[int]
    """How many records each frame holds."""
    marks: list[_Mark]
    """The ``done`` of every append taken (and of every flush before the last of them)."""
    ended: bool
    """The log is closing and nothing is left in the inbox."""


@attrs.define(eq=False, slots=True)
class _Waiting:
    """An append somebody waits for, waiting for room in the inbox (first come, first
    admitted: the writer admits it as it takes a batch)."""

    item: _Item
    task: trio.lowlevel.Task
    refused: bool = False
    """Closing refused it (it was not accepted)."""


@attrs.define(eq=False, slots=True)
class _Acknowledgement:
    """What a caller that waits for its item (``append``, ``flush``) passes as its
    ``done``: it remembers the writer's answer, and ``wait`` returns it or raises."""

    _done: trio.Event = attrs.field(factory=trio.Event)
    _error: LogError | None = None

    def __call__(self, error: LogError | None) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> None:
        """Wait for the writer's answer.

        Raises:
            LogError: The item failed (the error the writer gave).
        """
        await self._done.wait()
        if self._error is not None:
            raise self._error


@attrs.frozen(kw_only=True)
class _Failure:
    message: str
    errno: int | None
    segment: int
    cause: OSError


@attrs.define(eq=False)
class EventLog:
    """An open event log: append records, read what opening it found and repaired.

    Create it with `open_event_log`. Records carry the offsets their room actors give
    them; the log stamps each with its epoch (the record's own ``epoch`` is replaced).
    """

    config: LogConfig
    repair_report: RepairReport
    _files: _Files
    _clock: Callable[[], float]
    _last_offsets: dict[tuple[str, str], int]
    # The inbox: the appends queued for the writer, oldest first (their frames, how many
    # records each holds, and what the segment's summary needs of every record), and the
    # ``done`` of each that somebody waits for. Plain lists: an append nobody waits for (a
    # client's event) is three list appends, and the writer swaps the lists out whole.
    _frames: list[bytes] = attrs.field(factory=list, init=False)
    _keys: list[RecordKey] = attrs.field(factory=list, init=False)
    _counts: list[int] = attrs.field(factory=list, init=False)
    _marks: collections.deque[_Mark] = attrs.field(factory=collections.deque, init=False)
    _taken: int = attrs.field(default=0, init=False)
    """Appends the writer took since the log was opened (with those in the inbox: the
    position a `_Mark` counts in)."""
    _waiting: collections.deque[_Waiting] = attrs.field(factory=collections.deque, init=False)
    _failure: _Failure | None = attrs.field(default=None, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    on_batch_done: Callable[[], None] | None = attrs.field(default=None, init=False)
    """Called by the writer after it has called the ``done`` of every append of a
    batch (see ``submit``): the broadcaster releases all a sync made durable in one pass."""
    _finished: trio.Event = attrs.field(factory=trio.Event, init=False)
    _writer_scope: trio.CancelScope = attrs.field(
        factory=lambda: trio.CancelScope(shield=True), init=False
    )
    _parked: trio.lowlevel.Task | None = attrs.field(default=None, init=False)
    """The writer, while it waits for work (``_kick`` wakes it)."""
    _park_scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _urgent: bool = attrs.field(default=False, init=False)
    """An append somebody waits for (or a flush, a full batch, the close) is queued: the
    writer takes the inbox at once."""
    _lazy_deadline: float = attrs.field(default=math.inf, init=False)
    """When the oldest queued append nobody waits for must be taken (``math.inf``: none
    is queued): ``fsync_interval`` after it was queued."""
    _kick_at: int = attrs.field(init=False)
    """Queued appends that wake the writer at once: ``max_batch`` (1 under ``always``)."""
    _packer: msgpack.Packer = attrs.field(
        factory=lambda: msgpack.Packer(use_bin_type=True), init=False
    )
    """Encodes the records appended (from the event loop only)."""
    _encode_record: RecordEncoder = attrs.field(init=False)
    """Encodes a record with the log's epoch and bound (and ``_packer``)."""

    def __attrs_post_init__(self) -> None:
        config = self.config
        self._kick_at = 1 if config.fsync is FsyncPolicy.ALWAYS else config.max_batch
        self._encode_record = record_encoder(
            self.repair_report.epoch, max_record_bytes=config.max_record_bytes, packer=self._packer
        )

    # -- reading the state --------------------------------------------------------------

    @property
    def epoch(self) -> str:
        """The epoch every record appended now belongs to."""
        return self.repair_report.epoch

    @property
    def directory(self) -> Path:
        """The log directory."""
        return self._files.directory

    @property
    def failed(self) -> LogWriteError | None:
        """Why the log stopped accepting appends after a write error, or None."""
        return None if self._failure is None else self._failure_error()

    def last_offset(self, namespace: str, room: str) -> int | None:
        """The largest offset appended for ``room`` (read back from disk on open), or None.

        (The server numbers records from one sequence, continued from ``max_offset``.)
        """
        return self._last_offsets.get((namespace, room))

    def max_offset(self) -> int:
        """The largest offset appended outside the writer's own stream (0 if none): a
        server numbering its events log-wide continues from here after a restart."""
        return max(
            (o for (ns, _), o in self._last_offsets.items() if ns != SERVER_NAMESPACE),
            default=0,
        )

    def statistics(self) -> LogStatistics:
        """The writer's counters."""
        files = self._files
        return LogStatistics(
            queued=len(self._frames),
            records_written=files.records_written,
            batches=files.batches,
            syncs=files.syncs,
            segment=files.active,
            segment_bytes=files.size,
        )

    # -- appending ----------------------------------------------------------------------

    def _failure_error(self) -> LogWriteError:
        failure = self._failure
        assert failure is not None
        return LogWriteError(failure.message, errno=failure.errno, segment=failure.segment)

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure_error() from self._failure.cause
        if self._closing:
            raise LogClosedError("the event log is closed")

    def _item(
        self, records: Sequence[LogRecord], done: Callable[[LogError | None], None] | None
    ) -> _Item:
        """One append of ``records``, stamped with the log's epoch and encoded."""
        self._check_open()
        encoded = [
            self._encode(r.offset, r.time, r.namespace, r.room, r.kind, r.sender, r.event,
                         r.args, r.exclude)
            for r in records
        ]  # fmt: skip
        frame = encoded[0][0] if len(encoded) == 1 else b"".join(f for f, _ in encoded)
        return _Item(keys=tuple(key for _, key in encoded), frame=frame, done=done)

    def _encode(
        self,
        offset: int,
        time: float,
        namespace: str,
        room: str,
        kind: RecordKind,
        sender: str | None,
        event: str | None,
        args: Sequence[LogValue],
        exclude: Sequence[str] = (),
    ) -> tuple[bytes, RecordKey]:
        """One record's frame, with the log's epoch, and what its segment's summary
        needs of it.

        Raises:
            LocalProtocolError: The record cannot be encoded.
        """
        epoch = self.repair_report.epoch
        if exclude:
            frame = encode_record_fields(
                offset, time, namespace, room, kind, sender, event, args, epoch, exclude,
                max_record_bytes=self.config.max_record_bytes, packer=self._packer,
            )  # fmt: skip
        else:
            frame = self._encode_record(offset, time, namespace, room, kind, sender, event, args)
        return frame, (offset, time, (namespace, room), kind)

    def _stored(self, record: LogRecord) -> LogRecord:
        """``record`` as the log stores it: with the log's epoch."""
        epoch = self.epoch
        return record if record.epoch == epoch else attrs.evolve(record, epoch=epoch)

    def _put(self, item: _Item) -> None:
        """Queue an append (there is room): it is accepted."""
        self._frames.append(item.frame)
        self._keys.extend(item.keys)
        self._counts.append(len(item.keys))
        offsets = self._last_offsets
        for offset, _, place, _ in item.keys:
            if offset > offsets.get(place, -1):
                offsets[place] = offset
        if item.done is not None:
            self._marks.append(_Mark(self._taken + len(self._frames), item.done))

    def _kick(self) -> None:
        """Have the writer take the inbox now."""
        self._urgent = True
        task = self._parked
        if task is not None:
            self._parked = None
            trio.lowlevel.reschedule(task)

    async def _queue(self, item: _Item) -> None:
        """Queue an append that may wait (built by ``_item``, which checked that the log
        is open): while the inbox is full it waits for room, behind the appends that
        already wait. The writer takes it at once.

        Cancellation: if cancelled while waiting, it was not accepted.
        """
        if len(self._frames) < self.config.inbox_size:
            self._put(item)
            self._kick()
            return
        self._kick()
        waiting = _Waiting(item, trio.lowlevel.current_task())
        self._waiting.append(waiting)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiting.remove(waiting)
            return trio.lowlevel.Abort.SUCCEEDED

        # The writer admits it (``_admit``), or closing refuses it.
        await trio.lowlevel.wait_task_rescheduled(abort)
        if waiting.refused:
            raise LogClosedError("the event log is closed")

    def _admit(self) -> None:
        """Move the appends that wait for room into the inbox, first come first. The
        writer calls it whenever it took appends out, so appends wait only while the
        inbox is full, and no later append can pass them."""
        waiting, frames, size = self._waiting, self._frames, self.config.inbox_size
        while waiting and len(frames) < size:
            admitted = waiting.popleft()
            self._put(admitted.item)
            trio.lowlevel.reschedule(admitted.task)
            self._urgent = True

    def _stop_accepting(self) -> None:
        """Closing: no append is accepted from now on, and those still waiting for room
        are refused."""
        self._closing = True
        while self._waiting:
            refused = self._waiting.popleft()
            refused.refused = True
            trio.lowlevel.reschedule(refused.task)

    async def append(self, record: LogRecord) -> LogRecord:
        """Append ``record`` and return once it is durable by the fsync policy.

        ``always`` and ``interval``: after an ``fsync`` that covers it. ``never``: after
        it was written to the OS. Returns the record as stored (with the log's epoch).

        Cancellation: if cancelled while the inbox is full, the record was not accepted.
        Once accepted it is written whatever happens to the caller; a cancel then only
        abandons the wait for it.

        Raises:
            LogWriteError: Writing or syncing failed: the record was not acknowledged
                (it may or may not be on disk). Every later append raises it too.
            LogClosedError: The log is closed.
            LocalProtocolError: The record cannot be encoded (nothing was accepted).
        """
        await self.append_all((record,))
        return self._stored(record)

    async def append_all(self, records: Sequence[LogRecord]) -> None:
        """Append ``records`` as one append (as ``submit`` queues them) and return once
        they are durable by the fsync policy, as ``append`` does.

        Cancellation and Raises: as ``append``.
        """
        acknowledged = _Acknowledgement()
        # Queued at once when there is room: the wait below is the checkpoint.
        await self._queue(self._item(records, acknowledged))
        await acknowledged.wait()

    def append_nowait(self, record: LogRecord) -> LogRecord:
        """Queue ``record`` for writing without waiting (fire and forget).

        A later write error is not reported to this caller; it is logged, and every
        later append raises it.

        Raises:
            trio.WouldBlock: The inbox is full; nothing was accepted.
            LogWriteError: The log already failed.
            LogClosedError: The log is closed.
            LocalProtocolError: The record cannot be encoded.
        """
        self.append_fields_nowait(
            record.offset, record.time, record.namespace, record.room, record.kind,
            record.sender, record.event, record.args, record.exclude,
        )  # fmt: skip
        return self._stored(record)

    def append_fields_nowait(
        self,
        offset: int,
        time: float,
        namespace: str,
        room: str,
        kind: RecordKind,
        sender: str | None = None,
        event: str | None = None,
        args: Sequence[LogValue] = (),
        exclude: Sequence[str] = (),
    ) -> None:
        """`append_nowait` for a record given by its fields, with the log's epoch: the
        hot path of a client's event, which builds no `LogRecord`.

        The append does not wake the writer: it goes with the next append somebody
        waits for, or ``fsync_interval`` after it was queued (at once under ``always``,
        or when a batch is full), so that a stream of them costs one wake-up and one
        ``write`` per interval, not one per scheduler pass.

        Raises:
            As `append_nowait`.
        """
        if self._failure is not None or self._closing:
            self._check_open()
        frames = self._frames
        if len(frames) >= self.config.inbox_size:
            self._kick()
            raise trio.WouldBlock
        if exclude:
            frame, key = self._encode(
                offset, time, namespace, room, kind, sender, event, args, exclude
            )
        else:
            frame = self._encode_record(offset, time, namespace, room, kind, sender, event, args)
            key = (offset, time, (namespace, room), kind)
        frames.append(frame)
        self._keys.append(key)
        self._counts.append(1)
        place = key[2]
        offsets = self._last_offsets
        if offset > offsets.get(place, -1):
            offsets[place] = offset
        if len(frames) >= self._kick_at:
            self._kick()
        elif self._lazy_deadline == math.inf:
            self._lazy_deadline = deadline = trio.current_time() + self.config.fsync_interval
            scope = self._park_scope
            if scope is not None and deadline < scope.deadline:
                scope.deadline = deadline

    async def submit(
        self, records: Sequence[LogRecord], done: Callable[[LogError | None], None]
    ) -> None:
        """Queue ``records`` as one append (encoded once, written together, made durable
        by one sync), waiting only while the inbox is full; ``done`` is called from the
        writer when they are acknowledged by the fsync policy (as ``append`` returns:
        with None) or failed (with the ``LogWriteError`` or ``LogClosedError``). The
        writer calls the ``done`` of one batch in the order the appends were queued, in
        one step, then ``on_batch_done``, so a caller can release everything a sync made
        durable at once.

        Cancellation: if cancelled while the inbox is full, nothing was accepted (and
        ``done`` is never called); once accepted, ``done`` will be called.

        Raises:
            LogWriteError: The log already failed (nothing was accepted).
            LogClosedError: The log is closed.
            LocalProtocolError: A record cannot be encoded (nothing was accepted).
        """
        await self._queue(self._item(records, done))

    async def flush(self) -> None:
        """Wait until everything accepted before this call is written and synced,
        whatever the fsync policy.

        Cancellation: the flush still happens; only the wait is abandoned.

        Raises:
            LogWriteError: Writing or syncing failed.
            LogClosedError: The log is closed.
        """
        self._check_open()
        acknowledged = _Acknowledgement()
        self._marks.append(_Mark(self._taken + len(self._frames), acknowledged, sync=True))
        self._kick()
        await acknowledged.wait()

    def server_record(self, kind: RecordKind, *args: LogValue) -> LogRecord:
        """A record of the server's own stream (namespace and room ``""``), numbered
        after the last one: used for ``EPOCH``, ``SERVER_START`` and ``SERVER_STOP``."""
        offset = (self.last_offset(SERVER_NAMESPACE, "") or 0) + 1
        return LogRecord(
            offset=offset,
            time=self._clock(),
            namespace=SERVER_NAMESPACE,
            room="",
            kind=kind,
            args=args,
            epoch=self.epoch,
        )

    # -- the writer actor ---------------------------------------------------------------

    async def _park(self) -> None:
        """Wait for ``_kick`` (or a cancellation: the deadline of the enclosing scope)."""
        self._parked = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._parked = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _next_batch(self, deadline: float) -> _Batch:
        """Wait until an append somebody waits for is queued, or until ``deadline`` (a
        sync is due) or the oldest append nobody waits for is due; then take all that
        are queued, up to the batch limits, and admit the appends that wait for room.

        Woken, it first lets every task that is ready to run go (one pass of the
        scheduler), so that the appends they make join this batch: without that, a
        writer that is always waiting would write (and sync) one append at a time.

        Cancellation: never raises ``Cancelled`` once an append was taken (it would be
        lost): appends are taken after the last checkpoint.
        """
        if not self._urgent:
            with trio.move_on_at(min(deadline, self._lazy_deadline)) as scope:
                self._park_scope = scope
                try:
                    await self._park()
                finally:
                    self._park_scope = None
        await trio.lowlevel.cancel_shielded_checkpoint()
        self._urgent = False
        config = self.config
        frames, keys, counts = self._frames, self._keys, self._counts
        count = len(frames)
        if count <= config.max_batch and sum(map(len, frames)) <= config.max_batch_bytes:
            self._frames, self._keys, self._counts = [], [], []
        else:
            count, size = 0, 0
            while count < config.max_batch and size < config.max_batch_bytes:
                size += len(frames[count])
                count += 1
            records = sum(counts[:count])
            frames, keys, counts = frames[:count], keys[:records], counts[:count]
            del self._frames[:count], self._keys[:records], self._counts[:count]
            self._urgent = True  # more is queued: the next round takes it at once
        self._taken += count
        marks: list[_Mark] = []
        queued_marks = self._marks
        while queued_marks and queued_marks[0].position <= self._taken:
            marks.append(queued_marks.popleft())
        self._admit()
        self._lazy_deadline = math.inf
        ended = self._closing and not self._frames and not self._marks
        return _Batch(frames, keys, counts, marks, ended)

    def _finish(self, marks: list[_Mark], error: LogError | None = None) -> None:
        for mark in marks:
            mark.done(error)
        if marks and self.on_batch_done is not None:
            self.on_batch_done()

    async def _run(self) -> None:
        """The writer: batch, write, sync, acknowledge; until the log is closed and its
        inbox empty.

        Shielded: it keeps draining while its owner shuts down, and is cancelled only
        through ``_writer_scope`` when closing takes longer than ``close_timeout``.
        """
        policy = self.config.fsync
        interval = self.config.fsync_interval
        files = self._files
        unsynced: list[_Mark] = []  # written, waiting for a sync
        dirty = False  # something was written since the last sync
        deadline = math.inf  # when the unsynced writes must be synced (``interval``)
        last_sync = -math.inf
        try:
            with self._writer_scope:
                while True:
                    batch = await self._next_batch(deadline)
                    if self._failure is not None:
                        self._finish(batch.marks, self._failure_error())
                        if batch.ended:
                            break
                        continue
                    written = bool(batch.frames)
                    flush = any(mark.sync for mark in batch.marks)
                    now = trio.current_time()
                    # ``interval`` syncs at most once per interval: right away after a
                    # quiet spell, else when the interval since the last sync is over.
                    sync = (
                        batch.ended
                        or flush
                        or policy is FsyncPolicy.ALWAYS
                        or (
                            policy is FsyncPolicy.INTERVAL
                            and (dirty or written)
                            and now >= last_sync + interval
                        )
                    )
                    if written or (sync and (dirty or flush)):
                        try:
                            await self._write(batch, sync)
                        except OSError as exc:
                            await self._fail(exc, unsynced + batch.marks)
                            unsynced, dirty, deadline = [], False, math.inf
                            if batch.ended:
                                break
                            continue
                    if sync:
                        self._finish(unsynced + batch.marks)
                        unsynced, dirty, deadline, last_sync = [], False, math.inf, now
                    elif policy is FsyncPolicy.NEVER:
                        self._finish(batch.marks)
                    else:
                        unsynced.extend(batch.marks)
                        dirty = dirty or written
                        if dirty:
                            deadline = last_sync + interval
                    if batch.ended:
                        break
                await trio.to_thread.run_sync(self._close_files)
        finally:
            # Whatever is still here was not written: fail it, never leave it waiting.
            self._stop_accepting()
            leftover = unsynced + list(self._marks)
            self._marks.clear()
            self._frames, self._keys, self._counts = [], [], []
            self._finish(leftover, LogClosedError("the event log closed before writing this"))
            if not files.closed:
                files.close(clean=False)
            self._finished.set()

    async def _write(self, batch: _Batch, sync: bool) -> None:
        """Write a batch, then sync if ``sync``.

        A plain write goes to the page cache from the event loop: a thread hop per batch
        would cost more than the ``write`` (and on one core the writer thread and the
        event loop would hand the GIL back and forth for every batch). What can block for
        long runs in a thread: ``fsync`` (which holds no GIL while it runs), and a batch
        that rolls a segment (a sync, the summary and ``epoch.json``).

        Raises:
            OSError: As ``_Files.write_batch``.
        """
        files = self._files
        if files.rolls_for(batch.frames):
            await trio.to_thread.run_sync(
                files.write_batch, batch.keys, batch.counts, batch.frames, sync
            )
            return
        files.write_batch(batch.keys, batch.counts, batch.frames, False)
        if sync:
            await trio.to_thread.run_sync(files.sync)
        else:
            await trio.lowlevel.checkpoint()

    def _close_files(self) -> None:
        try:
            self._files.close(clean=self._failure is None)
        except OSError:
            # What was acknowledged stays acknowledged: under ``never`` that was the
            # contract; under the other policies every acknowledged record was synced.
            logger.exception("event log: the final sync or epoch.json update failed")

    async def _fail(self, exc: OSError, marks: list[_Mark]) -> None:
        files = self._files
        self._failure = _Failure(
            message=f"writing the event log ({segment_name(files.active)}) failed: {exc}",
            errno=exc.errno,
            segment=files.active,
            cause=exc,
        )
        logger.error("event log write failed; no more appends are accepted: %s", exc, exc_info=exc)
        await trio.to_thread.run_sync(files.mark_failed)
        error = self._failure_error()
        error.__cause__ = exc
        self._finish(marks, error)

    async def _drain(self, record_stop: bool) -> None:
        """Stop accepting, then wait for the writer to write, sync and close what was
        accepted. The caller shields it and bounds it by ``close_timeout``."""
        if record_stop and self._failure is None and not self._closing:
            item = self._item((self.server_record(RecordKind.SERVER_STOP),), None)
            with contextlib.suppress(LogClosedError):
                await self._queue(item)
        self._stop_accepting()
        self._kick()
        await self._finished.wait()

    def _abandon(self) -> None:
        """After ``close_timeout``: cancel the writer; what it had not written fails."""
        self._stop_accepting()
        if not self._finished.is_set():
            logger.error("event log: closing took longer than %ss", self.config.close_timeout)
            self._writer_scope.cancel()


def _report(report: RepairReport) -> None:
    for repair in report.repairs:
        logger.warning("event log: %s", repair.describe())
    for corruption in report.corruptions:
        logger.error("event log: damaged record left in place: %s", corruption.describe())
    if report.reasons == ("new log",):
        logger.info("event log %s: new log, epoch %s", report.directory, report.epoch)
    elif report.epoch_changed:
        logger.warning(
            "event log %s: new epoch %s (previous %s): %s",
            report.directory,
            report.epoch,
            report.previous_epoch,
            "; ".join(report.reasons),
        )


@contextlib.asynccontextmanager
async def open_event_log(
    config: LogConfig,
    *,
    record_start: bool = True,
    record_stop: bool = True,
    clock: Callable[[], float] = time.time,
    io: LogIO | None = None,
) -> AsyncIterator[EventLog]:
    """Open (or create) the log in ``config.directory`` and run its writer.

    Opening takes the directory's writer lock, repairs a torn tail, decides the epoch
    (see `RepairReport`) and, when the epoch changed, appends an ``EPOCH`` record
    (args: ``{"previous": ..., "reasons": [...]}``). With ``record_start`` a
    ``SERVER_START`` record follows; with ``record_stop`` closing appends
    ``SERVER_STOP`` last. These records are in the server stream: namespace ``""``,
    room ``""``, numbered 1, 2, ... across restarts.

    Args:
        config: Where and how to log (``config.enabled`` must be true).
        record_start: Append ``SERVER_START`` once open.
        record_stop: Append ``SERVER_STOP`` when closing.
        clock: Wall-clock time for the log's own records and for retention.
        io: The system calls used on segments (tests inject failures here).

    Cancellation: closing still writes and syncs what was accepted (shielded, within
    ``config.close_timeout``).

    Raises:
        LogLockedError: Another writer has the directory open.
        LogUnsupportedError: The log holds records of a newer schema.
        OSError: The directory cannot be created or read.
    """
    if not config.enabled:
        raise ValueError("the event log is disabled in this LogConfig")
    files, report, offsets = await trio.to_thread.run_sync(
        _Files.open, Path(config.directory), config, io or LogIO(), clock
    )
    _report(report)
    log = EventLog(
        config=config, repair_report=report, files=files, clock=clock, last_offsets=dict(offsets)
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log._run)
            try:
                if report.epoch_changed:
                    await log.append(
                        log.server_record(
                            RecordKind.EPOCH,
                            {"previous": report.previous_epoch, "reasons": list(report.reasons)},
                        )
                    )
                if record_start:
                    await log.append(
                        log.server_record(
                            RecordKind.SERVER_START,
                            {"pid": os.getpid(), "fsync": config.fsync.value},
                        )
                    )
                yield log
            finally:
                with trio.move_on_after(config.close_timeout, shield=True):
                    await log._drain(record_stop)
                log._abandon()
    finally:
        if not files.closed:  # the writer never ran (cancelled before it started)
            files.close(clean=False)
