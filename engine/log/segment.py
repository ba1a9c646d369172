"""The files of a log directory: segments, summaries, the epoch file, and damage.

Layout (specified in ``docs/event-log.md``, "Files and durability")::

    LOGDIR/
      epoch.json                  the epoch and what the writer knows of the segments
      lock                        held (flock) by the one writer
      write-failed                present after a write error, until the next open
      00000000000000000001.seg    segments: record frames back to back, no header
      00000000000000000001.idx    summary of a sealed segment (JSON)

Everything here is synchronous file I/O: the writer calls it through
``trio.to_thread.run_sync``, the readers and the CLI call it directly.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zlib
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import IO, Final, Literal, TypeAlias

import attrs

from roomcast.protocol import (
    HEADER_BYTES,
    CorruptRecordError,
    LogRecord,
    RecordKind,
    RecordReader,
    TornRecordError,
    UnsupportedRecordError,
    decode_record,
)

__all__ = [
    "EPOCH_FILE",
    "FAILED_MARKER",
    "LOCK_FILE",
    "SEGMENT_SUFFIX",
    "SUMMARY_SUFFIX",
    "Corruption",
    "DamageKind",
    "LogState",
    "RecordKey",
    "RoomSpan",
    "SegmentSummary",
    "SummaryBuilder",
    "boot_id",
    "find_next_frame",
    "fsync_directory",
    "iter_segment",
    "list_segments",
    "read_state",
    "read_summary",
    "segment_name",
    "segment_path",
    "summary_path",
    "write_atomically",
    "write_state",
    "write_summary",
]

SEGMENT_SUFFIX: Final = ".seg"
SUMMARY_SUFFIX: Final = ".idx"
EPOCH_FILE: Final = "epoch.json"
LOCK_FILE: Final = "lock"
FAILED_MARKER: Final = "write-failed"
FILE_FORMAT: Final = 1
"""Version of the JSON layout of ``epoch.json`` and of the summaries."""

_SEGMENT_RE: Final = re.compile(r"^(\d{20})\.seg$")
_READ_CHUNK: Final = 1 << 20
_HEADER: Final = struct.Struct(">II")
_ZEROS: Final = b"\0\0\0\0"
_NONZERO: Final = re.compile(rb"[^\x00]")
_BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")
_KIND_NAMES: Final = {kind: kind.name.lower() for kind in RecordKind}
# The parts of a `RecordKey`, for `SummaryBuilder.add_keys`.
_KEY_OFFSET: Final = itemgetter(0)
_KEY_TIME: Final = itemgetter(1)
_KEY_PLACE: Final = itemgetter(2)
_KEY_KIND: Final = itemgetter(3)

RecordKey: TypeAlias = tuple[int, float, tuple[str, str], RecordKind]
"""What a segment's summary needs of a record besides its epoch: offset, time, place
(namespace, room) and kind (`SummaryBuilder.add_keys`)."""

DamageKind: TypeAlias = Literal["torn", "corrupt", "unsupported"]


def segment_name(number: int) -> str:
    """The file name of segment ``number``: 20 zero-padded digits and ``.seg``."""
    return f"{number:020d}{SEGMENT_SUFFIX}"


def segment_path(directory: Path, number: int) -> Path:
    """The path of segment ``number`` in ``directory``."""
    return directory / segment_name(number)


def summary_path(directory: Path, number: int) -> Path:
    """The path of the summary of segment ``number`` in ``directory``."""
    return directory / f"{number:020d}{SUMMARY_SUFFIX}"


def list_segments(directory: Path) -> list[int]:
    """The numbers of the segments in ``directory``, ascending ([] if it does not exist)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    numbers = []
    for name in names:
        match = _SEGMENT_RE.match(name)
        if match is not None:
            numbers.append(int(match.group(1)))
    return sorted(numbers)


def fsync_directory(directory: Path) -> None:
    """Sync ``directory`` itself, so that files created, renamed or deleted in it stay so."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: write a temporary file, sync it, rename, sync the
    directory. A crash leaves the old file or the new one, never a mix."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_directory(path.parent)


def boot_id() -> str | None:
    """This boot's id (Linux), to tell a crash of the process from a crash of the machine."""
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


# ----------------------------------------------------------------------- JSON checks


def _int(data: dict[str, object], key: str) -> int:
    value = data.get(key)
    if type(value) is not int:
        raise ValueError(f"{key!r} is not an integer")
    return value


def _str(data: dict[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string")
    return value


def _optional_str(data: dict[str, object], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string or null")
    return value


def _optional_float(data: dict[str, object], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):  # type: ignore[arg-type]
        raise ValueError(f"{key!r} is not a finite number")
    return float(value)  # type: ignore[arg-type]


def _str_list(data: dict[str, object], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{key!r} is not a list of strings")
    return tuple(value)


def _load_object(text: str) -> dict[str, object]:
    data: object = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("format") != FILE_FORMAT:
        raise ValueError(f"format is {data.get('format')!r}, this build reads {FILE_FORMAT}")
    return data


# ---------------------------------------------------------------------- the epoch file


@attrs.frozen(kw_only=True)
class LogState:
    """What ``epoch.json`` holds: the epoch and what the writer knew of the segments.

    Attributes:
        epoch: The id of the current epoch.
        epoch_started: Wall-clock time the epoch began.
        previous_epoch: The epoch before it, if the log had one.
        reasons: Why the epoch began (empty when it did not change).
        first_segment: The oldest segment the writer keeps (retention moves it forward).
        last_segment: The newest segment the writer created.
        fsync: The fsync policy of the last writer.
        boot_id: The machine's boot id when the last writer opened the log.
        open: True while a writer has the log open; still True after a crash.
        gaps: Ranges of missing segments ``(first, last)`` already reported (and
            answered with a new epoch), so that they are not reported again.
    """

    epoch: str
    epoch_started: float
    previous_epoch: str | None = None
    reasons: tuple[str, ...] = ()
    first_segment: int
    last_segment: int
    fsync: str
    boot_id: str | None = None
    open: bool = False
    gaps: tuple[tuple[int, int], ...] = ()


def _gaps(data: dict[str, object]) -> tuple[tuple[int, int], ...]:
    value = data.get("gaps", [])
    if not isinstance(value, list) or not all(
        isinstance(item, list) and len(item) == 2 and all(type(n) is int for n in item)
        for item in value
    ):
        raise ValueError("'gaps' is not a list of [first, last] pairs")
    return tuple((item[0], item[1]) for item in value)


def read_state(directory: Path) -> LogState | None:
    """Read ``epoch.json``; None if there is none.

    Raises:
        ValueError: The file exists but is not a valid epoch file.
    """
    try:
        text = (directory / EPOCH_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{EPOCH_FILE} is not UTF-8 text") from exc
    try:
        data = _load_object(text)
        opened = data.get("open")
        if not isinstance(opened, bool):
            raise ValueError("'open' is not a boolean")
        started = _optional_float(data, "epoch_started")
        return LogState(
            epoch=_str(data, "epoch"),
            epoch_started=started if started is not None else 0.0,
            previous_epoch=_optional_str(data, "previous_epoch"),
            reasons=_str_list(data, "reasons"),
            first_segment=_int(data, "first_segment"),
            last_segment=_int(data, "last_segment"),
            fsync=_str(data, "fsync"),
            boot_id=_optional_str(data, "boot_id"),
            open=opened,
            gaps=_gaps(data),
        )
    except ValueError as exc:
        raise ValueError(f"{EPOCH_FILE} is not a valid epoch file: {exc}") from None


def write_state(directory: Path, state: LogState) -> None:
    """Replace ``epoch.json`` atomically (synced)."""
    data = {
        "format": FILE_FORMAT,
        "epoch": state.epoch,
        "epoch_started": state.epoch_started,
        "previous_epoch": state.previous_epoch,
        "reasons": list(state.reasons),
        "first_segment": state.first_segment,
        "last_segment": state.last_segment,
        "fsync": state.fsync,
        "boot_id": state.boot_id,
        "open": state.open,
        "gaps": [list(gap) for gap in state.gaps],
    }
    write_atomically(directory / EPOCH_FILE, (json.dumps(data, indent=1) + "\n").encode())


# ----------------------------------------------------------------------------- damage


@attrs.frozen(kw_only=True)
class Corruption:
    """A damaged record found in a segment.

    Attributes:
        segment: The segment number.
        position: Byte position in the segment file where the bad record starts.
        kind: ``"torn"`` (the data ends inside the record), ``"corrupt"`` (the bytes are
            not a valid record) or ``"unsupported"`` (an intact record of a newer schema).
        detail: What is wrong, for humans.
        resumes_at: Where the next readable record starts, or None if none follows.
        tail: True when the damage runs to the end of the segment: nothing after
            ``position`` is a record (only then may the writer cut it off).
    """

    segment: int
    position: int
    kind: DamageKind
    detail: str
    resumes_at: int | None = None
    tail: bool = False

    def describe(self) -> str:
        """One line for humans: which file, which byte, what, and what follows."""
        if self.resumes_at is not None:
            after = f"; the next record starts at byte {self.resumes_at}"
        elif self.tail:
            after = "; nothing after it is readable, up to the end of the segment"
        else:
            after = "; no readable record follows within one record's reach"
        where = f"{segment_name(self.segment)} byte {self.position}"
        return f"{where}: {self.kind}: {self.detail}{after}"


def _frame_at(data: bytes, view: memoryview, q: int, max_record_bytes: int) -> bool:
    """Whether a whole valid record (or an intact newer-schema one) starts at ``data[q]``."""
    length, checksum = _HEADER.unpack_from(data, q)
    stop = q + HEADER_BYTES + length
    if not (2 <= length <= max_record_bytes and stop <= len(data)):
        return False
    if zlib.crc32(view[q + HEADER_BYTES : stop]) != checksum:
        return False
    try:
        decode_record(bytes(view[q:stop]), max_record_bytes=max_record_bytes)
    except UnsupportedRecordError:
        return True
    except CorruptRecordError:
        return False
    return True


def find_next_frame(
    data: bytes, start: int, stop: int | None = None, *, max_record_bytes: int
) -> int | None:
    """The first index in ``start .. stop`` (default: the end) where a whole valid record
    of ``data`` begins.

    A candidate needs a plausible length, a matching checksum and a body that decodes
    (or that is an intact record of a newer schema), so a false match needs a CRC-32
    collision as well as a valid msgpack record. Runs of zero bytes are skipped at once:
    no record header starts with four zero bytes.
    """
    view = memoryview(data)
    end = len(data) - HEADER_BYTES
    if stop is not None:
        end = min(end, stop)
    q = start
    while q <= end:
        if data[q : q + 4] == _ZEROS:
            found = _NONZERO.search(data, q + 4)
            if found is None:
                return None
            q = max(q + 1, found.start() - 3)
            continue
        if _frame_at(data, view, q, max_record_bytes):
            return q
        q += 1
    return None


SegmentItem: TypeAlias = "tuple[int, LogRecord] | Corruption"
"""What `iter_segment` yields: ``(position, record)`` or a `Corruption`."""


def iter_segment(
    file: IO[bytes], segment: int, *, max_record_bytes: int
) -> Iterator[tuple[int, LogRecord] | Corruption]:
    """Read every record of one open segment file, reporting damage instead of stopping.

    Yields ``(position, record)`` for each record, and a `Corruption` for each damaged
    region; reading resumes at the next valid record after it, if there is one. A
    segment that a writer is appending to may end in a torn record (``tail=True``).
    Memory use is bounded by a read chunk plus one record (and, only after damage, by
    twice ``max_record_bytes`` while looking for the next record).
    """
    start: int | None = 0
    while start is not None:
        start = yield from _read_from(file, segment, start, max_record_bytes)


def _read_from(
    file: IO[bytes], segment: int, start: int, max_record_bytes: int
) -> Generator[tuple[int, LogRecord] | Corruption, None, int | None]:
    file.seek(start)
    reader = RecordReader(max_record_bytes=max_record_bytes)
    while True:
        chunk = file.read(_READ_CHUNK)
        if chunk:
            reader.feed(chunk)
        try:
            while True:
                position = start + reader.position
                record = reader.next_record()
                if record is None:
                    break
                yield position, record
            if not chunk:
                reader.finish()
                return None
        except CorruptRecordError as exc:
            corruption = _classify(file, segment, start + exc.position, exc, max_record_bytes)
            yield corruption
            return corruption.resumes_at


def _classify(
    file: IO[bytes],
    segment: int,
    position: int,
    error: CorruptRecordError,
    max_record_bytes: int,
) -> Corruption:
    """Turn a decoding error at ``position`` into a `Corruption`: is anything readable after?"""
    file.seek(position)
    window = 2 * (max_record_bytes + HEADER_BYTES)
    data = file.read(window)
    at_end = len(data) < window or not file.read(1)
    if isinstance(error, UnsupportedRecordError):
        (length,) = struct.unpack_from(">I", data)
        return Corruption(
            segment=segment,
            position=position,
            kind="unsupported",
            detail=error.detail,
            resumes_at=position + HEADER_BYTES + length,
        )
    found: int | None = None
    if len(data) >= HEADER_BYTES:
        # The damaged record's own length may be intact: try where it says the next
        # record starts before searching byte by byte.
        (length,) = struct.unpack_from(">I", data)
        guess = HEADER_BYTES + length
        if guess <= len(data) - HEADER_BYTES and _frame_at(
            data, memoryview(data), guess, max_record_bytes
        ):
            found = guess
    if found is None:
        # Without a usable length, the next record still starts within one maximal
        # record of this one; at the end of the file, search all that is left.
        stop = None if at_end else max_record_bytes + HEADER_BYTES
        found = find_next_frame(data, 1, stop, max_record_bytes=max_record_bytes)
    if found is not None:
        detail = error.detail
        if isinstance(error, TornRecordError):
            detail += " (its length field is wrong: a record follows)"
        return Corruption(
            segment=segment,
            position=position,
            kind="corrupt",
            detail=detail,
            resumes_at=position + found,
        )
    return Corruption(
        segment=segment,
        position=position,
        kind="torn" if isinstance(error, TornRecordError) else "corrupt",
        detail=error.detail,
        tail=at_end,
    )


# -------------------------------------------------------------------------- summaries


@attrs.frozen(kw_only=True)
class RoomSpan:
    """One room's records in a segment (or a log).

    Attributes:
        namespace: The namespace.
        room: The room (``""``: records of no room).
        first_offset: The smallest offset.
        last_offset: The largest offset.
        count: How many records.
    """

    namespace: str
    room: str
    first_offset: int
    last_offset: int
    count: int


def _corruption_json(corruption: Corruption) -> dict[str, object]:
    return {
        "position": corruption.position,
        "kind": corruption.kind,
        "detail": corruption.detail,
        "resumes_at": corruption.resumes_at,
        "tail": corruption.tail,
    }


@attrs.frozen(kw_only=True)
class SegmentSummary:
    """What a sealed segment holds, kept next to it so that opening a log and reading a
    room need not decode every segment.

    Attributes:
        segment: The segment number.
        size: The segment's size in bytes (a summary whose size does not match its
            segment is stale and ignored).
        records: How many readable records.
        first_time: The smallest record time, or None for an empty segment.
        last_time: The largest record time, or None.
        epochs: The epochs of its records, in order of appearance.
        kinds: Record count by kind name (``"message"``, ...).
        rooms: A `RoomSpan` per ``(namespace, room)``.
        damage: Damage found when the segment was summarised.
    """

    segment: int
    size: int
    records: int
    first_time: float | None
    last_time: float | None
    epochs: tuple[str, ...]
    kinds: dict[str, int]
    rooms: dict[tuple[str, str], RoomSpan]
    damage: tuple[Corruption, ...] = ()

    def overlaps(
        self,
        *,
        namespace: str | None,
        room: str | None,
        since_offset: int | None,
        until_offset: int | None,
        since_time: float | None,
        until_time: float | None,
    ) -> bool:
        """Whether the segment may hold a record matching these filters."""
        if self.damage:
            return True  # what the summary counts is not all that is there
        if self.records == 0:
            return False
        assert self.first_time is not None
        assert self.last_time is not None
        if since_time is not None and self.last_time < since_time:
            return False
        if until_time is not None and self.first_time > until_time:
            return False
        spans = [
            span
            for (ns, name), span in self.rooms.items()
            if (namespace is None or ns == namespace) and (room is None or name == room)
        ]
        return any(
            (since_offset is None or span.last_offset >= since_offset)
            and (until_offset is None or span.first_offset <= until_offset)
            for span in spans
        )


@attrs.define(eq=False)
class SummaryBuilder:
    """Accumulates a `SegmentSummary` record by record."""

    records: int = 0
    first_time: float | None = None
    last_time: float | None = None
    epochs: list[str] = attrs.field(factory=list)
    kinds: dict[str, int] = attrs.field(factory=dict)
    rooms: dict[tuple[str, str], list[int]] = attrs.field(factory=dict)

    def add(self, record: LogRecord) -> None:
        """Count one record."""
        key = (record.offset, record.time, (record.namespace, record.room), record.kind)
        self.add_keys([key], record.epoch)

    def add_keys(self, keys: Sequence[RecordKey], epoch: str) -> int:
        """Count records of ``epoch`` given by what a summary needs of them (the writer
        keeps only that of the records it writes); return how many.

        Each part of the summary is one pass in C over the keys (``map``, ``min``,
        ``Counter``): a batch of a thousand records costs no Python loop over them,
        unless they are in several rooms (then the room spans take one).
        """
        if not keys:
            return 0
        times = list(map(_KEY_TIME, keys))
        first, last = min(times), max(times)
        if self.first_time is None or first < self.first_time:
            self.first_time = first
        if self.last_time is None or last > self.last_time:
            self.last_time = last
        if epoch not in self.epochs:
            self.epochs.append(epoch)
        kinds = self.kinds
        for kind, count in Counter(map(_KEY_KIND, keys)).items():
            name = _KIND_NAMES[kind]
            kinds[name] = kinds.get(name, 0) + count
        places = dict.fromkeys(map(_KEY_PLACE, keys))
        if len(places) == 1:
            offsets = list(map(_KEY_OFFSET, keys))
            self._span(next(iter(places)), min(offsets), max(offsets), len(offsets))
        else:
            for offset, _, place, _ in keys:
                self._span(place, offset, offset, 1)
        self.records += len(keys)
        return len(keys)

    def _span(self, place: tuple[str, str], low: int, high: int, count: int) -> None:
        """Widen the offset span of ``place`` (namespace, room) to ``low``..``high`` and
        count ``count`` more records in it."""
        span = self.rooms.get(place)
        if span is None:
            self.rooms[place] = [low, high, count]
            return
        if low < span[0]:
            span[0] = low
        if high > span[1]:
            span[1] = high
        span[2] += count

    def build(self, segment: int, size: int, damage: tuple[Corruption, ...] = ()) -> SegmentSummary:
        """The summary of what was added, for segment ``segment`` of ``size`` bytes."""
        return SegmentSummary(
            segment=segment,
            size=size,
            records=self.records,
            first_time=self.first_time,
            last_time=self.last_time,
            epochs=tuple(self.epochs),
            kinds=dict(sorted(self.kinds.items())),
            rooms={
                key: RoomSpan(namespace=key[0], room=key[1], first_offset=a, last_offset=b, count=n)
                for key, (a, b, n) in sorted(self.rooms.items())
            },
            damage=damage,
        )


def write_summary(directory: Path, summary: SegmentSummary) -> None:
    """Write a segment's summary atomically (synced)."""
    data = {
        "format": FILE_FORMAT,
        "segment": summary.segment,
        "size": summary.size,
        "records": summary.records,
        "first_time": summary.first_time,
        "last_time": summary.last_time,
        "epochs": list(summary.epochs),
        "kinds": summary.kinds,
        "rooms": [
            [span.namespace, span.room, span.first_offset, span.last_offset, span.count]
            for span in summary.rooms.values()
        ],
        "damage": [_corruption_json(c) for c in summary.damage],
    }
    encoded = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    write_atomically(summary_path(directory, summary.segment), encoded)


def _summary_from_json(data: dict[str, object], segment: int) -> SegmentSummary:
    if _int(data, "segment") != segment:
        raise ValueError("summary of another segment")
    kinds = data.get("kinds")
    if not isinstance(kinds, dict) or not all(
        isinstance(k, str) and type(v) is int for k, v in kinds.items()
    ):
        raise ValueError("'kinds' is not a map of counts")
    rooms: dict[tuple[str, str], RoomSpan] = {}
    raw_rooms = data.get("rooms")
    if not isinstance(raw_rooms, list):
        raise ValueError("'rooms' is not a list")
    for item in raw_rooms:
        if not (
            isinstance(item, list)
            and len(item) == 5
            and isinstance(item[0], str)
            and isinstance(item[1], str)
            and all(type(v) is int for v in item[2:])
        ):
            raise ValueError("bad 'rooms' entry")
        rooms[(item[0], item[1])] = RoomSpan(
            namespace=item[0],
            room=item[1],
            first_offset=item[2],
            last_offset=item[3],
            count=item[4],
        )
    damage = []
    raw_damage = data.get("damage")
    if not isinstance(raw_damage, list):
        raise ValueError("'damage' is not a list")
    for entry in raw_damage:
        if not isinstance(entry, dict):
            raise ValueError("bad 'damage' entry")
        kind = _str(entry, "kind")
        if kind not in ("torn", "corrupt", "unsupported"):
            raise ValueError("bad damage kind")
        resumes = entry.get("resumes_at")
        if resumes is not None and type(resumes) is not int:
            raise ValueError("bad 'resumes_at'")
        tail = entry.get("tail")
        if not isinstance(tail, bool):
            raise ValueError("bad 'tail'")
        damage.append(
            Corruption(
                segment=segment,
                position=_int(entry, "position"),
                kind=kind,  # type: ignore[arg-type]  # checked against DamageKind above
                detail=_str(entry, "detail"),
                resumes_at=resumes,
                tail=tail,
            )
        )
    return SegmentSummary(
        segment=segment,
        size=_int(data, "size"),
        records=_int(data, "records"),
        first_time=_optional_float(data, "first_time"),
        last_time=_optional_float(data, "last_time"),
        epochs=_str_list(data, "epochs"),
        kinds=dict(kinds),
        rooms=rooms,
        damage=tuple(damage),
    )


def read_summary(
    directory: Path, segment: int, *, size: int | None = None
) -> SegmentSummary | None:
    """Read a segment's summary; None if it is missing, invalid, or (when ``size`` is
    given) stale, i.e. made for a segment of another size."""
    try:
        text = summary_path(directory, segment).read_text(encoding="utf-8")
        summary = _summary_from_json(_load_object(text), segment)
    except (OSError, ValueError):
        return None
    if size is not None and summary.size != size:
        return None
    return summary
