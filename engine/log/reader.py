"""The read side of the event log: filtered iteration, room history and membership,
verification and statistics.

Everything here is synchronous file reading (the CLI calls it directly); from Trio code
call it through ``trio.to_thread.run_sync``. Readers never take the writer's lock and may
run while a writer appends: a torn record at the very end of the newest segment is a
write in progress and reads as the end of the log. Any other damage is reported, never
skipped silently: with ``on_corrupt=None`` a reader raises `LogCorruptError`; with a
callback it reports each damaged region to it and goes on at the next readable record.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Final, TypeAlias

import attrs

from roomcast.engine.log.errors import LogCorruptError
from roomcast.engine.log.segment import (
    EPOCH_FILE,
    LOCK_FILE,
    Corruption,
    LogState,
    RoomSpan,
    SegmentSummary,
    SummaryBuilder,
    iter_segment,
    list_segments,
    read_state,
    read_summary,
    segment_name,
    segment_path,
)
from roomcast.protocol import DEFAULT_MAX_RECORD_BYTES, LogRecord, RecordKind

__all__ = [
    "JsonRecord",
    "LogStats",
    "OnProgress",
    "Problem",
    "ReadProgress",
    "VerifyReport",
    "is_log_directory",
    "iter_records",
    "json_value",
    "log_stats",
    "membership_at",
    "record_to_json",
    "room_history",
    "verify_log",
]

OnCorrupt: TypeAlias = Callable[[Corruption], None]
JsonRecord: TypeAlias = dict[str, object]

PROGRESS_STEP: Final = 1 << 20
"""Bytes read between two progress reports within a segment."""


@attrs.frozen(kw_only=True)
class ReadProgress:
    """How far a reader is through a log (what ``on_progress`` callbacks get).

    Attributes:
        bytes_done: Bytes of segments read or skipped (by their summary) so far.
        bytes_total: The segments' size when reading began (a segment being appended to
            may grow meanwhile: ``bytes_done`` never passes this).
        segments_done: Segments finished.
        segments_total: Segments to go through.
    """

    bytes_done: int
    bytes_total: int
    segments_done: int
    segments_total: int


OnProgress: TypeAlias = Callable[[ReadProgress], None]


@attrs.define(eq=False)
class _Meter:
    """Reports a reader's progress: at the start, every `PROGRESS_STEP` bytes within a
    segment, and at the end of each segment (read, skipped or gone)."""

    _report: OnProgress
    _sizes: dict[int, int]
    _total: int
    _done: int = 0
    _segments_done: int = 0
    next_at: int = PROGRESS_STEP
    """The position in the current segment at which to report next (a plain comparison
    per record: the reader's loop stays cheap)."""

    @classmethod
    def start(cls, report: OnProgress, directory: Path, numbers: list[int]) -> _Meter:
        sizes = {}
        for number in numbers:
            try:
                sizes[number] = segment_path(directory, number).stat().st_size
            except FileNotFoundError:  # retention deleted it since the listing
                sizes[number] = 0
        meter = cls(report, sizes, sum(sizes.values()))
        meter._send(0)
        return meter

    def at(self, position: int) -> None:
        """Reached ``position`` in the current segment."""
        self.next_at = position + PROGRESS_STEP
        self._send(position)

    def segment_done(self, number: int) -> None:
        """Finished segment ``number``."""
        self._done += self._sizes.get(number, 0)
        self._segments_done += 1
        self.next_at = PROGRESS_STEP
        self._send(0)

    def _send(self, within: int) -> None:
        self._report(
            ReadProgress(
                bytes_done=min(self._done + within, self._total),
                bytes_total=self._total,
                segments_done=self._segments_done,
                segments_total=len(self._sizes),
            )
        )


def _raise(corruption: Corruption) -> None:
    raise LogCorruptError(
        f"damaged event log: {corruption.describe()}",
        segment=corruption.segment,
        position=corruption.position,
        detail=corruption.detail,
        resumes_at=corruption.resumes_at,
    )


def _segment_records(
    directory: Path,
    number: int,
    *,
    newest: bool,
    on_corrupt: OnCorrupt,
    max_record_bytes: int,
    skip: Callable[[SegmentSummary], bool] | None = None,
    meter: _Meter | None = None,
) -> Iterator[LogRecord]:
    """The records of one segment, damage reported to ``on_corrupt``; nothing if the
    segment is gone (retention) or its summary says ``skip``. ``meter`` hears of the
    positions reached (the caller reports the segment's end)."""
    try:
        file = segment_path(directory, number).open("rb")
    except FileNotFoundError:
        return
    with file:
        if skip is not None:
            summary = read_summary(directory, number, size=os.fstat(file.fileno()).st_size)
            if summary is not None and skip(summary):
                return
        for item in iter_segment(file, number, max_record_bytes=max_record_bytes):
            if isinstance(item, Corruption):
                if newest and item.kind == "torn" and item.tail:
                    return  # a write in progress, or a crash the next open repairs
                on_corrupt(item)
            else:
                if meter is not None and item[0] >= meter.next_at:
                    meter.at(item[0])
                yield item[1]


def _records(
    directory: Path,
    *,
    on_corrupt: OnCorrupt | None,
    max_record_bytes: int,
    skip: Callable[[SegmentSummary], bool] | None = None,
    segments: Iterable[int] | None = None,
    on_progress: OnProgress | None = None,
) -> Iterator[LogRecord]:
    numbers = list_segments(directory)
    newest = numbers[-1] if numbers else None
    chosen = numbers if segments is None else list(segments)
    meter = None if on_progress is None else _Meter.start(on_progress, directory, chosen)
    for number in chosen:
        yield from _segment_records(
            directory,
            number,
            newest=number == newest,
            on_corrupt=on_corrupt or _raise,
            max_record_bytes=max_record_bytes,
            skip=skip,
            meter=meter,
        )
        if meter is not None:
            meter.segment_done(number)


def iter_records(
    directory: str | os.PathLike[str],
    *,
    namespace: str | None = None,
    room: str | None = None,
    since_offset: int | None = None,
    until_offset: int | None = None,
    since_time: float | None = None,
    until_time: float | None = None,
    epoch: str | None = None,
    on_corrupt: OnCorrupt | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    on_progress: OnProgress | None = None,
) -> Iterator[LogRecord]:
    """The records of the log in ``directory``, oldest first, filtered.

    Every bound is inclusive; None means unbounded. Offsets are per room, so an offset
    range is most useful with ``room``. Sealed segments whose summary shows nothing in
    range are not read. ``on_progress``, if given, hears how far reading is (`ReadProgress`)
    at the start, every MiB and at the end of each segment.

    Raises:
        LogCorruptError: A damaged record (only when ``on_corrupt`` is None).
    """

    def wanted(record: LogRecord) -> bool:
        return (
            (namespace is None or record.namespace == namespace)
            and (room is None or record.room == room)
            and (since_offset is None or record.offset >= since_offset)
            and (until_offset is None or record.offset <= until_offset)
            and (since_time is None or record.time >= since_time)
            and (until_time is None or record.time <= until_time)
            and (epoch is None or record.epoch == epoch)
        )

    def skip(summary: SegmentSummary) -> bool:
        if epoch is not None and not summary.damage and epoch not in summary.epochs:
            return True
        return not summary.overlaps(
            namespace=namespace,
            room=room,
            since_offset=since_offset,
            until_offset=until_offset,
            since_time=since_time,
            until_time=until_time,
        )

    records = _records(
        Path(directory),
        on_corrupt=on_corrupt,
        max_record_bytes=max_record_bytes,
        skip=skip,
        on_progress=on_progress,
    )
    return (record for record in records if wanted(record))


def room_history(
    directory: str | os.PathLike[str],
    namespace: str,
    room: str,
    *,
    last: int | None = None,
    after: int | None = None,
    on_corrupt: OnCorrupt | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> list[LogRecord]:
    """A room's recorded events, oldest first: everything with an offset greater than
    ``after`` (all if None), or only the ``last`` of those.

    For ``last`` the segments are read newest first and reading stops as soon as enough
    records were found.

    Raises:
        LogCorruptError: A damaged record was met (only when ``on_corrupt`` is None).
    """
    since = None if after is None else after + 1
    if last is None:
        return list(
            iter_records(
                directory,
                namespace=namespace,
                room=room,
                since_offset=since,
                on_corrupt=on_corrupt,
                max_record_bytes=max_record_bytes,
            )
        )
    if last <= 0:
        return []
    path = Path(directory)
    numbers = list_segments(path)
    found: list[list[LogRecord]] = []
    total = 0

    def skip(summary: SegmentSummary) -> bool:
        return not summary.overlaps(
            namespace=namespace,
            room=room,
            since_offset=since,
            until_offset=None,
            since_time=None,
            until_time=None,
        )

    for number in reversed(numbers):
        records = [
            record
            for record in _segment_records(
                path,
                number,
                newest=number == numbers[-1],
                on_corrupt=on_corrupt or _raise,
                max_record_bytes=max_record_bytes,
                skip=skip,
            )
            if record.namespace == namespace
            and record.room == room
            and (since is None or record.offset >= since)
        ]
        found.append(records)
        total += len(records)
        if total >= last:
            break
    ordered = list(itertools.chain.from_iterable(reversed(found)))
    return ordered[-last:]


def membership_at(
    directory: str | os.PathLike[str],
    namespace: str,
    room: str,
    offset: int,
    *,
    on_corrupt: OnCorrupt | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> frozenset[str]:
    """The sids in ``room`` right after its last record with an offset ``<= offset``:
    who was a member when that event happened (empty before the room's first record).

    Replays, in log order: ``JOIN`` and ``LEAVE`` of the room, ``DISCONNECT`` of a
    member from the namespace (room ``""``), and ``SERVER_START``, ``SERVER_STOP`` and
    ``EPOCH`` (nobody stays connected across a restart). Changes recorded after that
    last room record are not applied.

    Raises:
        LogCorruptError: A damaged record was met (only when ``on_corrupt`` is None).
    """
    keys = {(namespace, room), (namespace, ""), ("", "")}

    def skip(summary: SegmentSummary) -> bool:
        return not summary.damage and not any(key in summary.rooms for key in keys)

    members: set[str] = set()
    # Namespace-wide changes wait here until a later record of the room shows that
    # they happened before the offset asked for.
    pending: list[str | None] = []
    resets = (RecordKind.SERVER_START, RecordKind.SERVER_STOP, RecordKind.EPOCH)
    for record in _records(
        Path(directory), on_corrupt=on_corrupt, max_record_bytes=max_record_bytes, skip=skip
    ):
        if record.namespace == "" and record.kind in resets:
            pending.append(None)
        elif record.namespace != namespace:
            continue
        elif record.room == room:
            if record.offset > offset:
                break
            for sid in pending:
                if sid is None:
                    members.clear()
                else:
                    members.discard(sid)
            pending.clear()
            if record.sender is None:
                continue
            if record.kind is RecordKind.JOIN:
                members.add(record.sender)
            elif record.kind in (RecordKind.LEAVE, RecordKind.DISCONNECT):
                members.discard(record.sender)
        elif (
            record.room == "" and record.kind is RecordKind.DISCONNECT and record.sender is not None
        ):
            pending.append(record.sender)
    return frozenset(members)


# -------------------------------------------------------------------------- JSON view


def json_value(value: object) -> object:
    """A log value (or a payload) in the JSON view: bytes become ``{"$bytes": base64}``,
    non-finite floats ``{"$float": "nan" | "inf" | "-inf"}``, tuples lists."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    return value


def record_to_json(record: LogRecord) -> JsonRecord:
    """A record as a JSON object (the ``--json`` output of ``roomcast replay``).

    ``kind`` is the lower-case kind name; bytes become ``{"$bytes": base64}`` and
    non-finite floats ``{"$float": "nan" | "inf" | "-inf"}``.
    """
    return {
        "offset": record.offset,
        "time": record.time,
        "namespace": record.namespace,
        "room": record.room,
        "kind": record.kind.name.lower(),
        "sender": record.sender,
        "event": record.event,
        "args": [json_value(arg) for arg in record.args],
        "epoch": record.epoch,
    }


# ------------------------------------------------------------------- verify and stats


@attrs.frozen(kw_only=True)
class Problem:
    """Something wrong with a log.

    Attributes:
        message: What is wrong, for humans.
        segment: The segment concerned, if one is.
        position: The byte position in that segment, if known.
    """

    message: str
    segment: int | None = None
    position: int | None = None

    def describe(self) -> str:
        """One line for humans."""
        where = ""
        if self.segment is not None:
            where = segment_name(self.segment)
            if self.position is not None:
                where += f" byte {self.position}"
            where += ": "
        return where + self.message


@attrs.frozen(kw_only=True)
class VerifyReport:
    """What `verify_log` found.

    Attributes:
        directory: The log directory.
        ok: True when there is no problem.
        segments: Segments checked.
        records: Readable records.
        bytes: Total size of the segments.
        epoch: The epoch named by ``epoch.json``.
        in_use: Whether a writer had the log open (its newest record may be in flight).
        problems: Everything wrong, with positions.
        notes: Things worth knowing that are not damage.
    """

    directory: str
    ok: bool
    segments: int
    records: int
    bytes: int
    epoch: str | None
    in_use: bool
    problems: tuple[Problem, ...]
    notes: tuple[str, ...]


def is_log_directory(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds an event log (its ``epoch.json`` or a segment), as
    opposed to a directory that never had one."""
    path = Path(directory)
    return (path / EPOCH_FILE).exists() or bool(list_segments(path))


def _in_use(directory: Path) -> bool:
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)
    return False


def verify_log(
    directory: str | os.PathLike[str],
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    on_progress: OnProgress | None = None,
) -> VerifyReport:
    """Read every record of every segment and check the log's structure.

    Checks that each record decodes (checksum, schema), that nothing but a write in
    progress is torn, that segment numbers have no gaps and match ``epoch.json``, that a
    segment holds one epoch, that offsets never go back within a room and an epoch, that
    summaries match their segments, and that the newest records carry the epoch
    ``epoch.json`` names. Never writes anything. ``on_progress`` as for `iter_records`.
    """
    path = Path(directory)
    if not path.is_dir():
        return VerifyReport(
            directory=str(path),
            ok=False,
            segments=0,
            records=0,
            bytes=0,
            epoch=None,
            in_use=False,
            problems=(Problem(message="not a directory"),),
            notes=(),
        )
    check = _Verification(path=path, in_use=_in_use(path), numbers=list_segments(path))
    if check.in_use:
        check.notes.append("a writer has the log open: its newest record may still be in flight")
    check.check_files()
    meter = None if on_progress is None else _Meter.start(on_progress, path, check.numbers)
    for number in check.numbers:
        check.check_segment(number, max_record_bytes=max_record_bytes, meter=meter)
        if meter is not None:
            meter.segment_done(number)
    check.check_newest_epoch()
    return check.report()


@attrs.define(eq=False)
class _Verification:
    """What `verify_log` found so far, phase by phase."""

    path: Path
    in_use: bool
    numbers: list[int]
    problems: list[Problem] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    state: LogState | None = None
    records: int = 0
    total_bytes: int = 0
    last_offsets: dict[tuple[str, str, str], int] = attrs.field(factory=dict)
    """The last record offset seen per (epoch, namespace, room)."""
    newest_epoch: str | None = None

    def check_files(self) -> None:
        """Check ``epoch.json`` and the segment numbers against each other."""
        numbers, problems, notes = self.numbers, self.problems, self.notes
        try:
            self.state = state = read_state(self.path)
        except ValueError as exc:
            state = None
            problems.append(Problem(message=str(exc)))
        else:
            if state is None:
                problems.append(Problem(message=f"{EPOCH_FILE} is missing"))
        if not numbers:
            problems.append(Problem(message="the log has no segments"))
        known = set(state.gaps) if state is not None else set()
        for before, after in itertools.pairwise(numbers):
            if after != before + 1:
                gap = f"segments {before + 1}..{after - 1} are missing"
                if (before + 1, after - 1) in known:
                    notes.append(f"{gap} (a known loss: a new epoch began after it)")
                else:
                    problems.append(Problem(message=gap))
        if state is None or not numbers:
            return
        stale = [n for n in numbers if n < state.first_segment]
        if stale:
            notes.append(
                f"{len(stale)} segment(s) before segment {state.first_segment} were retired"
                " by retention and will be deleted by the next writer"
            )
        if numbers[-1] < state.last_segment:
            problems.append(
                Problem(
                    message=f"segments {numbers[-1] + 1}..{state.last_segment} named by"
                    f" {EPOCH_FILE} are missing"
                )
            )
        elif numbers[-1] > state.last_segment + 1:
            problems.append(
                Problem(message=f"segments after {state.last_segment} are unknown to {EPOCH_FILE}")
            )
        if state.open and not self.in_use:
            notes.append("the last writer did not close the log (a crash); the next open repairs")

    def check_segment(self, number: int, *, max_record_bytes: int, meter: _Meter | None) -> None:
        """Decode segment ``number`` and check its records, its epochs and its summary."""
        newest = number == self.numbers[-1]
        builder = SummaryBuilder()
        damaged = False
        with segment_path(self.path, number).open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            for item in iter_segment(file, number, max_record_bytes=max_record_bytes):
                if isinstance(item, Corruption):
                    if newest and self.in_use and item.kind == "torn" and item.tail:
                        self.notes.append(f"in-flight write at the end: {item.describe()}")
                        continue
                    damaged = True
                    self.problems.append(
                        Problem(message=item.describe(), segment=number, position=item.position)
                    )
                    continue
                position, record = item
                if meter is not None and position >= meter.next_at:
                    meter.at(position)
                builder.add(record)
                self._check_order(record, number, position)
        self.total_bytes += size
        self.records += builder.records
        if len(builder.epochs) > 1:
            self.problems.append(
                Problem(
                    message=f"records of several epochs in one segment: {list(builder.epochs)}",
                    segment=number,
                )
            )
        if newest and builder.epochs:
            self.newest_epoch = builder.epochs[-1]
        if not newest:
            self._check_summary(number, size, builder, damaged=damaged)

    def _check_order(self, record: LogRecord, number: int, position: int) -> None:
        """A record's offset never goes back within its room and epoch."""
        key = (record.epoch, record.namespace, record.room)
        previous = self.last_offsets.get(key)
        if previous is not None and record.offset < previous:
            self.problems.append(
                Problem(
                    message=f"offset of {record.namespace!r} room {record.room!r}"
                    f" goes back from {previous} to {record.offset}",
                    segment=number,
                    position=position,
                )
            )
        self.last_offsets[key] = record.offset

    def _check_summary(
        self, number: int, size: int, builder: SummaryBuilder, *, damaged: bool
    ) -> None:
        """A sealed segment's summary matches what was read of it (or is missing)."""
        summary = read_summary(self.path, number)
        if summary is None:
            self.notes.append(f"{segment_name(number)} has no summary (the next open writes it)")
        elif summary.size != size or (not damaged and summary.records != builder.records):
            self.problems.append(
                Problem(
                    message=f"summary does not match the segment (summary: {summary.size}"
                    f" bytes, {summary.records} records; segment: {size} bytes,"
                    f" {builder.records} records)",
                    segment=number,
                )
            )

    def check_newest_epoch(self) -> None:
        """The newest records carry the epoch ``epoch.json`` names."""
        # Only the newest segment counts: the segment before an epoch change legitimately
        # belongs to the previous epoch, and the new one may still be empty.
        state, newest_epoch = self.state, self.newest_epoch
        if state is not None and newest_epoch is not None and newest_epoch != state.epoch:
            self.problems.append(
                Problem(
                    message=f"the newest records belong to epoch {newest_epoch} but"
                    f" {EPOCH_FILE} names {state.epoch}"
                )
            )

    def report(self) -> VerifyReport:
        """What was found."""
        return VerifyReport(
            directory=str(self.path),
            ok=not self.problems,
            segments=len(self.numbers),
            records=self.records,
            bytes=self.total_bytes,
            epoch=self.state.epoch if self.state is not None else None,
            in_use=self.in_use,
            problems=tuple(self.problems),
            notes=tuple(self.notes),
        )


def _segment_stats(
    path: Path, number: int, newest: int, max_record_bytes: int, meter: _Meter | None
) -> SegmentSummary | None:
    """A segment's summary: its own, if valid, or built by reading it (None: it is gone)."""
    try:
        size = segment_path(path, number).stat().st_size
    except FileNotFoundError:
        return None
    summary = read_summary(path, number, size=size)
    if summary is not None:
        return summary
    builder = SummaryBuilder()
    damage: list[Corruption] = []
    for record in _segment_records(
        path,
        number,
        newest=number == newest,
        on_corrupt=damage.append,
        max_record_bytes=max_record_bytes,
        meter=meter,
    ):
        builder.add(record)
    return builder.build(number, size, tuple(damage))


@attrs.frozen(kw_only=True)
class LogStats:
    """A log's size and contents, by kind and by room.

    Attributes:
        directory: The log directory.
        epoch: The current epoch (from ``epoch.json``).
        epoch_started: When it began.
        epoch_reasons: Why it began.
        segments: How many segments.
        bytes: Their total size.
        records: Readable records.
        first_time: Time of the oldest record.
        last_time: Time of the newest record.
        epochs: Every epoch with records, oldest first.
        kinds: Record count by kind name.
        rooms: A `RoomSpan` per ``(namespace, room)``.
        damaged: Damaged regions met.
    """

    directory: str
    epoch: str | None
    epoch_started: float | None
    epoch_reasons: tuple[str, ...]
    segments: int
    bytes: int
    records: int
    first_time: float | None
    last_time: float | None
    epochs: tuple[str, ...]
    kinds: dict[str, int]
    rooms: tuple[RoomSpan, ...]
    damaged: int


def log_stats(
    directory: str | os.PathLike[str],
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    on_progress: OnProgress | None = None,
) -> LogStats:
    """Count the log's records by kind and room (from summaries where they are valid).
    ``on_progress`` as for `iter_records` (a segment with a valid summary is done at once).

    Raises:
        ValueError: ``epoch.json`` is invalid.
    """
    path = Path(directory)
    state = read_state(path)
    numbers = list_segments(path)
    summaries: list[SegmentSummary] = []
    meter = None if on_progress is None else _Meter.start(on_progress, path, numbers)
    for number in numbers:
        summary = _segment_stats(path, number, numbers[-1], max_record_bytes, meter)
        if meter is not None:
            meter.segment_done(number)
        if summary is not None:
            summaries.append(summary)
    kinds: dict[str, int] = {}
    rooms: dict[tuple[str, str], RoomSpan] = {}
    epochs: list[str] = []
    for summary in summaries:
        for kind, count in summary.kinds.items():
            kinds[kind] = kinds.get(kind, 0) + count
        for key, span in summary.rooms.items():
            seen = rooms.get(key)
            rooms[key] = (
                span
                if seen is None
                else attrs.evolve(
                    seen,
                    first_offset=min(seen.first_offset, span.first_offset),
                    last_offset=max(seen.last_offset, span.last_offset),
                    count=seen.count + span.count,
                )
            )
        epochs.extend(e for e in summary.epochs if e not in epochs)
    times = [s for s in summaries if s.records]
    return LogStats(
        directory=str(path),
        epoch=state.epoch if state is not None else None,
        epoch_started=state.epoch_started if state is not None else None,
        epoch_reasons=state.reasons if state is not None else (),
        segments=len(summaries),
        bytes=sum(s.size for s in summaries),
        records=sum(s.records for s in summaries),
        first_time=min((s.first_time for s in times if s.first_time is not None), default=None),
        last_time=max((s.last_time for s in times if s.last_time is not None), default=None),
        epochs=tuple(epochs),
        kinds=dict(sorted(kinds.items())),
        rooms=tuple(rooms[key] for key in sorted(rooms)),
        damaged=sum(len(s.damage) for s in summaries),
    )
