"""Event-log records and their on-disk frames (pure: no file I/O).

One record is one frame::

    length (uint32 BE) | checksum (uint32 BE, zlib.crc32 of body) | body

and the body is a msgpack array led by the schema version::

    [SCHEMA_VERSION, offset, time, namespace, room, kind, sender, event, args, epoch, exclude]

The format, and the reason for each choice in it, is specified in
``docs/event-log.md``. The engine's log writer and reader (``roomcast.engine.log``)
own the files; this module only turns records into bytes and back.
"""

from __future__ import annotations

import enum
import math
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Final, TypeAlias, cast

import attrs
import msgpack

from roomcast.protocol._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "HEADER_BYTES",
    "SCHEMA_VERSION",
    "CorruptRecordError",
    "LogRecord",
    "LogValue",
    "RecordEncoder",
    "RecordKind",
    "RecordReader",
    "ScanResult",
    "TornRecordError",
    "UnsupportedRecordError",
    "decode_record",
    "encode_record",
    "encode_record_fields",
    "record_encoder",
    "scan",
]

SCHEMA_VERSION: Final = 1
"""Version of the record body layout; the first element of every body."""

DEFAULT_MAX_RECORD_BYTES: Final = 16 * 1024 * 1024
"""Default bound on one record's body (16 MiB), for writing and for reading."""

HEADER_BYTES: Final = 8
"""Size of the frame header: body length and body checksum, each a big-endian uint32."""

_HEADER: Final = struct.Struct(">II")
_HEADER_PACK: Final = _HEADER.pack
_packb: Final = msgpack.packb
_fast_pack: Callable[[object], bytes] | None
# What msgspec's encoder raises on what it refuses (a str subclass, a cycle).
_fast_pack_errors: tuple[type[Exception], ...]
try:
    from msgspec import EncodeError as _MsgspecEncodeError
    from msgspec.msgpack import Encoder as _MsgspecEncoder
except ImportError:  # pragma: no cover - the speedups extra is not installed: msgpack only
    _fast_pack, _fast_pack_errors = None, ()
else:
    # The same bytes as msgpack's packer (use_bin_type=True) for every LogValue, in
    # about 40% of the time; thread-safe (each call has its own buffer).
    _fast_pack = _MsgspecEncoder().encode
    _fast_pack_errors = (TypeError, ValueError, OverflowError, RecursionError, _MsgspecEncodeError)
_crc32: Final = zlib.crc32
_MAX_LENGTH_FIELD: Final = 0xFFFF_FFFF
_MAX_OFFSET: Final = 2**63 - 1
# Deepest nesting of arrays/maps inside one argument. Far above what the Socket.IO
# decoders accept (Limits.max_nesting_depth), so the log can store anything the wire
# carried, and low enough that recursive consumers of a decoded record stay well inside
# Python's recursion limit.
_MAX_NESTING_DEPTH: Final = 256
_FIELD_COUNT: Final = 11

LogValue: TypeAlias = (
    bool | int | float | str | bytes | list["LogValue"] | dict[str, "LogValue"] | None
)
"""A value an event argument may hold: what msgpack carries, minus extension types."""

_SCALAR_TYPES: Final = frozenset({type(None), bool, int, float, str, bytes})


class RecordKind(enum.IntEnum):
    """What a log record records. The numbers are part of the on-disk format.

    Specified in ``docs/event-log.md`` ("Record kinds"). Values are never reused or
    renumbered; a new kind is a new number and a new ``SCHEMA_VERSION``, so that an
    older reader stops at it (``UnsupportedRecordError``) instead of misreading it.
    Zero is deliberately unused: a zero-filled region never decodes as a record.
    """

    SERVER_START = 1
    """The server opened the log and started serving."""
    SERVER_STOP = 2
    """The server stopped cleanly (the log was flushed and closed)."""
    CONNECT = 3
    """A socket connected to a namespace (``sender`` is its sid)."""
    DISCONNECT = 4
    """A socket left a namespace (``args`` may carry the reason)."""
    JOIN = 5
    """A socket joined ``room``."""
    LEAVE = 6
    """A socket left ``room``."""
    MESSAGE = 7
    """An event was emitted to ``room``; ``event`` is its name, ``args`` its arguments."""
    EPOCH = 8
    """A new epoch begins: continuity with the records before it is not guaranteed."""


def _args(value: Iterable[LogValue]) -> tuple[LogValue, ...]:
    return tuple(value)


def _sids(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _time(value: float) -> float:
    return float(value)


@attrs.frozen(kw_only=True)
class LogRecord:
    """One event-log record.

    Attributes:
        offset: The record's offset within its room's stream (``>= 0``).
        time: Wall-clock time in seconds since the Unix epoch, given by the caller.
        namespace: The Socket.IO namespace (``"/"`` for the main one).
        room: The room, or ``""`` for a record that belongs to no room.
        kind: What happened.
        sender: The Socket.IO ``sid`` of the socket that caused it, if any.
        event: The event name, for ``MESSAGE`` records.
        args: The event arguments (msgpack-able values, including bytes).
        epoch: The id of the log epoch the record belongs to (``""`` allowed).
        exclude: Socket ids a ``MESSAGE`` was not for (the sender of a
            ``socket.broadcast``, the members of ``except`` rooms), so that replaying
            the record for recovery leaves them out as the broadcast did.
    """

    offset: int
    time: float = attrs.field(converter=_time)
    namespace: str
    room: str
    kind: RecordKind
    sender: str | None = None
    event: str | None = None
    args: tuple[LogValue, ...] = attrs.field(default=(), converter=_args)
    epoch: str
    exclude: tuple[str, ...] = attrs.field(default=(), converter=_sids)


class CorruptRecordError(RemoteProtocolError):
    """Bytes that should hold a record do not hold a valid one.

    Attributes:
        position: Byte offset, in the stream or buffer being decoded, where the bad
            record starts (the length of the intact prefix before it).
        detail: What is wrong, for humans.
    """

    def __init__(self, detail: str, *, position: int, reason: str = "corrupt record") -> None:
        super().__init__(f"{reason} at byte {position}: {detail}", reason=reason)
        self.position = position
        self.detail = detail


class TornRecordError(CorruptRecordError):
    """The data ends part-way through a record: a torn write at the tail."""

    def __init__(self, detail: str, *, position: int) -> None:
        super().__init__(detail, position=position, reason="torn record")


class UnsupportedRecordError(CorruptRecordError):
    """An intact record (its checksum matches) from a schema this build cannot read.

    Raised for an unknown schema version or record kind: the log was written by a newer
    roomcast. It is not damage, so a writer must not truncate it away.
    """

    def __init__(self, detail: str, *, position: int) -> None:
        super().__init__(detail, position=position, reason="unsupported record")


class _InvalidRecord(Exception):
    """Internal: why a body or record is not valid; the caller adds the position."""

    def __init__(self, detail: str, *, unsupported: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.unsupported = unsupported


# What makes a record go the msgpack way (see encode_record_fields).
_FAST_PACK_REFUSALS: tuple[type[Exception], ...] = (*_fast_pack_errors, _InvalidRecord)


def _check_max_record_bytes(max_record_bytes: int) -> None:
    if not 0 < max_record_bytes <= _MAX_LENGTH_FIELD:
        raise ValueError(f"max_record_bytes must be in 1..{_MAX_LENGTH_FIELD}")


def _check_args(args: Sequence[object]) -> None:
    """Raise `_InvalidRecord` unless every argument is a `LogValue`.

    The common record (scalars, and flat maps or lists of them) passes in one loop over
    its values; anything else goes to `_check_nested`.
    """
    scalars = _SCALAR_TYPES
    for value in args:
        kind = type(value)
        if kind in scalars:
            continue
        if kind is dict:
            if not scalars.issuperset(map(type, value.values())):  # type: ignore[attr-defined]
                return _check_nested(args)
            for key in value:  # type: ignore[attr-defined]
                if type(key) is not str:
                    return _check_nested(args)
        elif kind is list:
            if not scalars.issuperset(map(type, value)):  # type: ignore[call-overload]
                return _check_nested(args)
        else:
            return _check_nested(args)
    return None


def _check_nested(args: Sequence[object]) -> None:
    """`_check_args` for any shape: iterative, one nesting level at a time, so depth
    costs no Python recursion."""
    level: Sequence[object] = args
    depth = 0
    while level:
        depth += 1
        children: list[object] = []
        for value in level:
            if type(value) in _SCALAR_TYPES:
                continue
            # ExtType is a tuple subclass and Timestamp an extension type: msgpack packs
            # both, but they are not LogValues, so neither is accepted either way.
            if isinstance(value, msgpack.ExtType | msgpack.Timestamp):
                raise _InvalidRecord(f"argument holds a msgpack {type(value).__name__}")
            if isinstance(value, list | tuple | dict):
                if depth > _MAX_NESTING_DEPTH:
                    raise _InvalidRecord(f"argument nested deeper than {_MAX_NESTING_DEPTH}")
                if isinstance(value, dict):
                    for key in value:
                        if type(key) is not str and not isinstance(key, str):
                            raise _InvalidRecord(f"map key of type {type(key).__name__}")
                    children.extend(value.values())
                else:
                    children.extend(value)
            elif not isinstance(value, str | bytes | int | float):
                raise _InvalidRecord(f"argument of type {type(value).__name__}")
        level = children


def _check_fields(
    offset: object,
    time: object,
    namespace: object,
    room: object,
    sender: object,
    event: object,
    epoch: object,
) -> None:
    """Raise `_InvalidRecord` unless the scalar fields have their declared types (str
    subclasses pass)."""
    if type(offset) is not int:
        raise _InvalidRecord(f"offset is a {type(offset).__name__}, not an int")
    if not 0 <= offset <= _MAX_OFFSET:
        raise _InvalidRecord(f"offset {offset} is out of range 0..{_MAX_OFFSET}")
    if type(time) is not float:
        raise _InvalidRecord(f"time is a {type(time).__name__}, not a float")
    if not math.isfinite(time):
        raise _InvalidRecord(f"time {time} is not finite")
    # (The exact-type tests first: the common case, and cheaper than isinstance.)
    if not (type(namespace) is str and type(room) is str and type(epoch) is str):
        for name, value in (("namespace", namespace), ("room", room), ("epoch", epoch)):
            if not isinstance(value, str):
                raise _InvalidRecord(f"{name} is a {type(value).__name__}, not a str")
    if sender is not None and not isinstance(sender, str):
        raise _InvalidRecord(f"sender is a {type(sender).__name__}, not a str or None")
    if event is not None and not isinstance(event, str):
        raise _InvalidRecord(f"event is a {type(event).__name__}, not a str or None")


def _check_exclude(exclude: Iterable[object]) -> None:
    for sid in exclude:
        if not isinstance(sid, str):
            raise _InvalidRecord(f"exclude holds a {type(sid).__name__}, not a str")


def encode_record(record: LogRecord, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> bytes:
    """Encode one record as one frame: length, checksum, msgpack body.

    Args:
        record: The record to encode.
        max_record_bytes: Largest body allowed; readers must use at least this bound.

    Returns:
        The frame, ready to append to a segment.

    Raises:
        LocalProtocolError: The record cannot be stored: a field has the wrong type
            or range, an argument is not a `LogValue` (or is nested too deep), or
            the body would exceed ``max_record_bytes``. Nothing was encoded.
    """
    return encode_record_fields(
        record.offset,
        record.time,
        record.namespace,
        record.room,
        record.kind,
        record.sender,
        record.event,
        record.args,
        record.epoch,
        record.exclude,
        max_record_bytes=max_record_bytes,
    )


def encode_record_fields(
    offset: int,
    time: float,
    namespace: str,
    room: str,
    kind: RecordKind,
    sender: str | None,
    event: str | None,
    args: Sequence[LogValue],
    epoch: str,
    exclude: Sequence[str] = (),
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    packer: msgpack.Packer | None = None,
) -> bytes:
    """`encode_record` for a record given by its fields, without building a
    `LogRecord`: the same checks, the same bytes (the writer's hot path: one record per
    event a client sends).

    With the ``speedups`` extra, msgspec's encoder packs the body (the same bytes).
    What it refuses, and what is not a `LogValue`, goes to msgpack's packer, so what is
    accepted and every error are as without it. ``packer``, a
    ``msgpack.Packer(use_bin_type=True)`` with its default ``autoreset``, is reused
    instead of a new one per call (a third of msgpack's packing cost); the caller owns
    it and uses it from one thread at a time.

    Raises:
        LocalProtocolError: As `encode_record`.
    """
    if max_record_bytes != DEFAULT_MAX_RECORD_BYTES:
        _check_max_record_bytes(max_record_bytes)
    try:
        # The common record passes one expression; anything else gets the checks that
        # say what is wrong (and accept the str subclasses the expression does not).
        if not (
            type(offset) is int
            and 0 <= offset <= _MAX_OFFSET
            and type(time) is float
            and -math.inf < time < math.inf  # (False for NaN too)
            and type(namespace) is str
            and type(room) is str
            and type(epoch) is str
            and (sender is None or type(sender) is str)
            and (event is None or type(event) is str)
            and type(kind) is RecordKind
            and not exclude
        ):
            _check_fields(offset, time, namespace, room, sender, event, epoch)
            if type(kind) is not RecordKind:
                raise _InvalidRecord(f"kind {kind!r} is not a RecordKind")
            _check_exclude(exclude)
        # Pack before walking the arguments: the packer bounds recursion itself, so a
        # cyclic argument fails here instead of sending the walk round forever.
        fields = [SCHEMA_VERSION, offset, time, namespace, room, int(kind), sender, event,
                  args, epoch, exclude]  # fmt: skip
        if _fast_pack is not None:
            # What msgspec refuses (a str subclass, a cycle), or packs but is no LogValue
            # (a set), goes the msgpack way: it accepts and refuses as without it.
            try:
                body = _fast_pack(fields)
                _check_args(args)
            except _FAST_PACK_REFUSALS:
                body = _slow_pack(fields, args, packer)
        else:
            body = _slow_pack(fields, args, packer)
    except _InvalidRecord as exc:
        raise LocalProtocolError(f"cannot encode log record: {exc.detail}") from None
    size = len(body)
    if size > max_record_bytes:
        raise LocalProtocolError(
            f"cannot encode log record: body is {size} bytes,"
            f" over max_record_bytes={max_record_bytes}"
        )
    return _HEADER_PACK(size, _crc32(body)) + body


RecordEncoder: TypeAlias = Callable[
    [int, float, str, str, RecordKind, "str | None", "str | None", Sequence[LogValue]], bytes
]
"""``encode(offset, time, namespace, room, kind, sender, event, args) -> frame``: see
`record_encoder`."""


def record_encoder(
    epoch: str,
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    packer: msgpack.Packer | None = None,
) -> RecordEncoder:
    """`encode_record_fields` with the epoch and the bounds fixed, and no ``exclude``:
    a log writer's encoder for the records it appends one by one (a client's event).

    The same bytes and the same errors as `encode_record_fields`, which it calls for
    every record but the common one: scalar fields of their exact types and scalar
    arguments, packed by msgspec (the ``speedups`` extra) into a body within the bound.
    That one costs one Python call, where `encode_record_fields` costs three (the
    arguments' check is a loop here, and the epoch and the bound were checked once).

    Raises:
        LocalProtocolError: ``epoch`` is not a str.
        ValueError: ``max_record_bytes`` is out of range.
    """
    _check_max_record_bytes(max_record_bytes)
    if type(epoch) is not str:
        raise LocalProtocolError(
            f"cannot encode log record: epoch is a {type(epoch).__name__}, not a str"
        )
    fast_pack, scalars, header, crc32 = _fast_pack, _SCALAR_TYPES, _HEADER_PACK, _crc32
    fast_refusals = _FAST_PACK_REFUSALS
    version, max_offset, no_exclude = SCHEMA_VERSION, _MAX_OFFSET, ()

    def encode(
        offset: int,
        time: float,
        namespace: str,
        room: str,
        kind: RecordKind,
        sender: str | None,
        event: str | None,
        args: Sequence[LogValue],
    ) -> bytes:
        if (
            fast_pack is not None
            and type(offset) is int
            and 0 <= offset <= max_offset
            and type(time) is float
            and -math.inf < time < math.inf  # (False for NaN too)
            and type(namespace) is str
            and type(room) is str
            and (sender is None or type(sender) is str)
            and (event is None or type(event) is str)
            and type(kind) is RecordKind
        ):
            for value in args:
                if type(value) not in scalars:
                    break
            else:
                # (msgspec packs an IntEnum as its value, as msgpack does.)
                try:
                    body = fast_pack([version, offset, time, namespace, room, kind, sender,
                                      event, args, epoch, no_exclude])  # fmt: skip
                except fast_refusals:  # (an int beyond 64 bits: refused below, in detail)
                    pass
                else:
                    size = len(body)
                    if size <= max_record_bytes:
                        return header(size, crc32(body)) + body
        return encode_record_fields(
            offset, time, namespace, room, kind, sender, event, args, epoch,
            max_record_bytes=max_record_bytes, packer=packer,
        )  # fmt: skip

    return encode


def _slow_pack(
    fields: list[object], args: Sequence[object], packer: msgpack.Packer | None
) -> bytes:
    """A record's body packed by msgpack (``packer`` if given), then its arguments
    checked.

    Raises:
        _InvalidRecord: The arguments cannot be packed, or are not `LogValue`s.
    """
    try:
        body: bytes = _packb(fields, use_bin_type=True) if packer is None else packer.pack(fields)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _InvalidRecord(f"arguments cannot be packed: {exc}") from exc
    _check_args(args)
    return body


def _decode_body(body: bytes) -> LogRecord:
    """Decode a checksum-verified body; raise `_InvalidRecord` if it is not a record."""
    try:
        fields: object = msgpack.unpackb(body, use_list=True, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise _InvalidRecord(f"body is not valid msgpack: {exc}") from None
    if type(fields) is not list or not fields:
        raise _InvalidRecord("body is not a non-empty msgpack array")
    version = fields[0]
    if type(version) is not int:
        raise _InvalidRecord(f"schema version is a {type(version).__name__}, not an int")
    if version != SCHEMA_VERSION:
        # Checked before the field count: a newer schema may well have more fields.
        raise _InvalidRecord(
            f"schema version {version}; this build reads {SCHEMA_VERSION}", unsupported=True
        )
    if len(fields) != _FIELD_COUNT:
        raise _InvalidRecord(f"body has {len(fields)} fields, schema 1 has {_FIELD_COUNT}")
    _, offset, time, namespace, room, kind, sender, event, args, epoch, exclude = fields
    _check_fields(offset, time, namespace, room, sender, event, epoch)
    if type(exclude) is not list:
        raise _InvalidRecord(f"exclude is a {type(exclude).__name__}, not an array")
    _check_exclude(exclude)
    if type(kind) is not int:
        raise _InvalidRecord(f"kind is a {type(kind).__name__}, not an int")
    try:
        record_kind = RecordKind(kind)
    except ValueError:
        raise _InvalidRecord(f"unknown record kind {kind}", unsupported=True) from None
    if type(args) is not list:
        raise _InvalidRecord(f"args is a {type(args).__name__}, not an array")
    _check_args(args)
    return LogRecord(
        offset=offset,
        time=time,
        namespace=namespace,
        room=room,
        kind=record_kind,
        sender=sender,
        event=event,
        args=cast("list[LogValue]", args),
        epoch=epoch,
        exclude=cast("list[str]", exclude),
    )


def _parse_frame(
    data: bytes | bytearray, start: int, *, max_record_bytes: int, base: int
) -> tuple[LogRecord, int] | None:
    """Decode the frame at ``data[start:]``.

    Returns:
        The record and the index just past its frame, or None if ``data`` ends first.

    Raises:
        CorruptRecordError: The frame is bad; ``position`` is ``base + start``.
    """
    if len(data) - start < HEADER_BYTES:
        return None
    length, checksum = _HEADER.unpack_from(data, start)
    if length > max_record_bytes:
        # Judged from the header alone, so a garbage length never makes us buffer it.
        raise CorruptRecordError(
            f"length field {length} is over max_record_bytes={max_record_bytes}",
            position=base + start,
        )
    end = start + HEADER_BYTES + length
    if len(data) < end:
        return None
    body = bytes(data[start + HEADER_BYTES : end])
    actual = zlib.crc32(body)
    if actual != checksum:
        raise CorruptRecordError(
            f"checksum mismatch (header {checksum:#010x}, body {actual:#010x})",
            position=base + start,
        )
    try:
        record = _decode_body(body)
    except _InvalidRecord as exc:
        error = UnsupportedRecordError if exc.unsupported else CorruptRecordError
        raise error(exc.detail, position=base + start) from None
    return record, end


def _torn_detail(data: bytes | bytearray, start: int) -> str:
    """Describe the incomplete frame at ``data[start:]``."""
    have = len(data) - start
    if have < HEADER_BYTES:
        return f"data ends {have} bytes into the {HEADER_BYTES}-byte header"
    length, _ = _HEADER.unpack_from(data, start)
    return f"data ends {have} bytes into a {HEADER_BYTES + length}-byte record"


def decode_record(data: bytes, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> LogRecord:
    """Decode exactly one whole frame.

    Raises:
        TornRecordError: ``data`` ends before the frame does.
        UnsupportedRecordError: An intact record of an unknown schema version or kind.
        CorruptRecordError: Anything else is wrong, including bytes after the frame.
            ``position`` is 0, the start of ``data``.
    """
    _check_max_record_bytes(max_record_bytes)
    parsed = _parse_frame(data, 0, max_record_bytes=max_record_bytes, base=0)
    if parsed is None:
        raise TornRecordError(_torn_detail(data, 0), position=0)
    record, end = parsed
    if end != len(data):
        raise CorruptRecordError(f"{len(data) - end} bytes follow the record", position=0)
    return record


@attrs.define(eq=False)
class RecordReader:
    """Decode a stream of frames fed in pieces (sans-I/O, like wsproto's connection).

    Feed bytes with `feed`, drain records with `next_record` until it returns None,
    and call `finish` at the end of the stream. The reader holds at most what was fed
    and not yet decoded: a length field over ``max_record_bytes`` fails at once, before
    any of that body is buffered.

    After an error the reader is broken: `next_record` and `finish` raise the same
    error again and `feed` discards its data.

    Attributes:
        max_record_bytes: Largest body accepted (1 .. 2**32-1).
    """

    max_record_bytes: int = attrs.field(default=DEFAULT_MAX_RECORD_BYTES, kw_only=True)
    _buffer: bytearray = attrs.field(init=False, factory=bytearray)
    _start: int = attrs.field(init=False, default=0)
    _base: int = attrs.field(init=False, default=0)
    _error: CorruptRecordError | None = attrs.field(init=False, default=None)

    @max_record_bytes.validator
    def _validate_max_record_bytes(self, _attribute: object, value: int) -> None:
        _check_max_record_bytes(value)

    @property
    def position(self) -> int:
        """Byte offset in the stream where the next record starts."""
        return self._base + self._start

    def feed(self, data: bytes) -> None:
        """Append the next bytes of the stream."""
        if self._error is not None:
            return
        if self._start:
            # Drop consumed frames only here, so draining many small records from one
            # large feed does not shift the buffer once per record.
            del self._buffer[: self._start]
            self._base += self._start
            self._start = 0
        self._buffer += data

    def next_record(self) -> LogRecord | None:
        """Decode the next record.

        Returns:
            The record, or None if more data is needed to complete it.

        Raises:
            CorruptRecordError: The record at `position` is bad (or
                `UnsupportedRecordError`: it is from a newer schema).
        """
        if self._error is not None:
            raise self._error
        try:
            parsed = _parse_frame(
                self._buffer, self._start, max_record_bytes=self.max_record_bytes, base=self._base
            )
        except CorruptRecordError as exc:
            self._error = exc
            raise
        if parsed is None:
            return None
        record, self._start = parsed
        return record

    def finish(self) -> None:
        """Declare the end of the stream.

        Raises:
            TornRecordError: Bytes of an incomplete record remain (a torn tail);
                ``position`` is where that record starts.
            CorruptRecordError: `next_record` failed earlier (the same error).
            LocalProtocolError: A whole record is still buffered: call `next_record`
                until it returns None first.
        """
        if self._error is not None:
            raise self._error
        have = len(self._buffer) - self._start
        if have == 0:
            return
        if have >= HEADER_BYTES:
            length, _ = _HEADER.unpack_from(self._buffer, self._start)
            if length > self.max_record_bytes:
                self.next_record()  # raises the over-limit CorruptRecordError
            if have >= HEADER_BYTES + length:
                raise LocalProtocolError("finish() called before every record was read")
        self._error = TornRecordError(
            _torn_detail(self._buffer, self._start), position=self.position
        )
        raise self._error


@attrs.frozen(kw_only=True)
class ScanResult:
    """What `scan` found in a segment's bytes.

    Attributes:
        records: Every record of the intact prefix, in order.
        valid_bytes: Length of the intact prefix; the first bad record starts here.
        error: The problem at ``valid_bytes`` (`TornRecordError` for an incomplete
            tail, `UnsupportedRecordError` for a newer schema), or None if every byte
            belongs to a whole, valid record.
    """

    records: tuple[LogRecord, ...]
    valid_bytes: int
    error: CorruptRecordError | None


def scan(data: bytes, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> ScanResult:
    """Decode records from the start of ``data`` until the first problem, and report it.

    The tail-repair helper the log writer runs when it opens a segment. It never
    raises for bad data: the problem, if any, is in the result.
    """
    _check_max_record_bytes(max_record_bytes)
    records: list[LogRecord] = []
    start = 0
    error: CorruptRecordError | None = None
    while start < len(data):
        try:
            parsed = _parse_frame(data, start, max_record_bytes=max_record_bytes, base=0)
        except CorruptRecordError as exc:
            error = exc
            break
        if parsed is None:
            error = TornRecordError(_torn_detail(data, start), position=start)
            break
        record, start = parsed
        records.append(record)
    return ScanResult(records=tuple(records), valid_bytes=start, error=error)
