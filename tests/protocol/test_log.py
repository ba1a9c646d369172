"""Tests for the event-log record codec (roomcast.protocol._log)."""

from __future__ import annotations

import datetime
import decimal
import enum
import math
import struct
import uuid
import zlib

import attrs
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.protocol import _log
from roomcast.protocol._errors import LocalProtocolError, RemoteProtocolError
from roomcast.protocol._log import (
    DEFAULT_MAX_RECORD_BYTES,
    HEADER_BYTES,
    SCHEMA_VERSION,
    CorruptRecordError,
    LogRecord,
    LogValue,
    RecordKind,
    RecordReader,
    ScanResult,
    TornRecordError,
    UnsupportedRecordError,
    decode_record,
    encode_record,
    encode_record_fields,
    record_encoder,
    scan,
)

FAST = settings(max_examples=200, deadline=None)


def make_record(**changes: object) -> LogRecord:
    fields: dict[str, object] = {
        "offset": 42,
        "time": 1_700_000_000.25,
        "namespace": "/chat",
        "room": "lobby",
        "kind": RecordKind.MESSAGE,
        "sender": "sid-1",
        "event": "say",
        "args": ("héllo", b"\x00\xff", [1, {"k": None}], True, -1, 1.5),
        "epoch": "ep-1",
        "exclude": ("sid-2",),
    }
    fields.update(changes)
    return LogRecord(**fields)  # type: ignore[arg-type]  # test helper: fields vary per test


def frame(body: bytes) -> bytes:
    """Wrap a body in a header with the right length and checksum."""
    return struct.pack(">II", len(body), zlib.crc32(body)) + body


def body_of(fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def valid_fields() -> list[object]:
    return [SCHEMA_VERSION, 3, 1.5, "/", "r", 7, "s", "e", ["a", 1], "ep", ["x"]]


# --- Format constants -------------------------------------------------------------------


def test_record_kind_values_are_stable() -> None:
    # These numbers are on disk: changing one misreads every existing log.
    assert {kind.name: kind.value for kind in RecordKind} == {
        "SERVER_START": 1,
        "SERVER_STOP": 2,
        "CONNECT": 3,
        "DISCONNECT": 4,
        "JOIN": 5,
        "LEAVE": 6,
        "MESSAGE": 7,
        "EPOCH": 8,
    }
    assert SCHEMA_VERSION == 1
    assert HEADER_BYTES == 8
    assert DEFAULT_MAX_RECORD_BYTES == 16 * 1024 * 1024


# Every byte annotated, so a change to the format shows up here and nowhere silently.
GOLDEN_BODY = bytes.fromhex(
    "9b"  # array of 11 fields
    "01"  # schema version 1
    "2a"  # offset 42
    "cb41d954fc40100000"  # time 1700000000.25 as float64
    "a52f63686174"  # namespace "/chat"
    "a56c6f626279"  # room "lobby"
    "07"  # kind MESSAGE
    "a57369642d31"  # sender "sid-1"
    "a3736179"  # event "say"
    "96"  # args: array of 6
    "a668c3a96c6c6f"  # "héllo" (UTF-8, 6 bytes, str type)
    "c40200ff"  # b"\x00\xff" (bin 8 type)
    "920181a16bc0"  # [1, {"k": None}]
    "c3"  # True
    "ff"  # -1
    "cb3ff8000000000000"  # 1.5 as float64
    "a465702d31"  # epoch "ep-1"
    "91a57369642d32"  # exclude ["sid-2"]
)
GOLDEN_FRAME = bytes.fromhex("0000004cfa9c022d") + GOLDEN_BODY  # length 76, crc32


def test_golden_vector_encode() -> None:
    assert encode_record(make_record()) == GOLDEN_FRAME


def test_golden_vector_decode() -> None:
    assert len(GOLDEN_BODY) == 0x4C
    assert zlib.crc32(GOLDEN_BODY) == 0xFA9C022D
    assert decode_record(GOLDEN_FRAME) == make_record()


# --- Round trip -------------------------------------------------------------------------

log_values: st.SearchStrategy[LogValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

log_records = st.builds(
    LogRecord,
    offset=st.integers(min_value=0, max_value=2**63 - 1),
    time=st.floats(allow_nan=False, allow_infinity=False),
    namespace=st.text(max_size=20),
    room=st.text(max_size=20),
    kind=st.sampled_from(RecordKind),
    sender=st.none() | st.text(max_size=20),
    event=st.none() | st.text(max_size=20),
    args=st.lists(log_values, max_size=5).map(tuple),
    epoch=st.text(max_size=20),
)


@FAST
@given(record=log_records)
def test_round_trip(record: LogRecord) -> None:
    data = encode_record(record)
    assert decode_record(data) == record
    length, checksum = struct.unpack(">II", data[:HEADER_BYTES])
    assert length == len(data) - HEADER_BYTES
    assert checksum == zlib.crc32(data[HEADER_BYTES:])


@FAST
@given(records=st.lists(log_records, max_size=5), data=st.data())
def test_round_trip_stream_in_arbitrary_chunks(
    records: list[LogRecord], data: st.DataObject
) -> None:
    stream = b"".join(encode_record(record) for record in records)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    reader = RecordReader()
    decoded: list[LogRecord] = []
    positions: list[int] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        reader.feed(stream[previous:cut])
        previous = cut
        while (record := reader.next_record()) is not None:
            decoded.append(record)
            positions.append(reader.position)
    reader.finish()
    assert decoded == records
    ends = []
    end = 0
    for record in records:
        end += len(encode_record(record))
        ends.append(end)
    assert positions == ends
    assert scan(stream) == ScanResult(records=tuple(records), valid_bytes=len(stream), error=None)


@pytest.mark.parametrize("kind", list(RecordKind))
def test_every_kind_round_trips(kind: RecordKind) -> None:
    record = make_record(kind=kind, room="", sender=None, event=None, args=(), epoch="")
    assert decode_record(encode_record(record)) == record


def test_record_normalises_args_and_time() -> None:
    record = LogRecord(
        offset=0, time=5, namespace="/", room="", kind=RecordKind.SERVER_START, epoch=""
    )
    assert record.time == 5.0
    assert type(record.time) is float
    assert record.args == ()
    assert record.sender is None
    assert record.event is None
    assert make_record(args=["a", "b"]).args == ("a", "b")


def test_edge_values_round_trip() -> None:
    record = make_record(
        offset=2**63 - 1,
        time=-1.5,
        args=(2**64 - 1, -(2**63), math.inf, "", b"", [], {}, "\U0001f600\x00"),
    )
    assert decode_record(encode_record(record)) == record


def test_lenient_argument_types_are_written_as_their_base_type() -> None:
    class Color(enum.IntEnum):
        RED = 1

    class Name(enum.StrEnum):
        ALICE = "alice"

    record = make_record(args=((1, 2), Color.RED, {Name.ALICE: Name.ALICE}))
    decoded = decode_record(encode_record(record))
    assert decoded.args == ([1, 2], 1, {"alice": "alice"})
    assert type(decoded.args[1]) is int


# --- Encoding refuses what it could not read back ----------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"offset": -1}, "offset -1 is out of range"),
        ({"offset": 2**63}, "out of range"),
        ({"offset": True}, "offset is a bool"),
        ({"time": math.nan}, "not finite"),
        ({"time": math.inf}, "not finite"),
        ({"namespace": 1}, "namespace is a int"),
        ({"room": None}, "room is a NoneType"),
        ({"epoch": b"e"}, "epoch is a bytes"),
        ({"sender": 5}, "sender is a int"),
        ({"event": b"x"}, "event is a bytes"),
        ({"kind": 7}, "kind 7 is not a RecordKind"),
        ({"args": ({1, 2},)}, "cannot be packed"),
        ({"args": (object(),)}, "cannot be packed"),
        ({"args": (2**64,)}, "cannot be packed"),
        ({"args": ("\ud800",)}, "cannot be packed"),
        ({"namespace": "\udfff"}, "cannot be packed"),
        ({"args": (msgpack.ExtType(1, b"x"),)}, "msgpack ExtType"),
        ({"args": ([msgpack.Timestamp(1, 0)],)}, "msgpack Timestamp"),
        ({"args": ({b"k": 1},)}, "map key of type bytes"),
        ({"args": ({1: 1},)}, "map key of type int"),
        ({"args": (bytearray(b"x"),)}, "argument of type bytearray"),
    ],
)
def test_encode_rejects_invalid_records(changes: dict[str, object], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        encode_record(make_record(**changes))


def fields_of(record: LogRecord, packer: msgpack.Packer | None) -> bytes:
    return encode_record_fields(
        record.offset, record.time, record.namespace, record.room, record.kind,
        record.sender, record.event, record.args, record.epoch, record.exclude,
        packer=packer,
    )  # fmt: skip


PACKER = msgpack.Packer(use_bin_type=True)


@FAST
@given(record=log_records)
def test_encoding_from_fields_gives_the_same_bytes(record: LogRecord) -> None:
    assert fields_of(record, None) == encode_record(record)
    assert fields_of(record, PACKER) == encode_record(record)


def encoded_or_error(args: tuple[object, ...], *, fast: bool) -> tuple[str, object]:
    """What encoding a record with ``args`` gives, with msgspec's packer allowed or not."""
    saved = _log._fast_pack
    if not fast:
        _log._fast_pack = None
    try:
        return "bytes", fields_of(make_record(args=args), PACKER)
    except LocalProtocolError as exc:
        return "error", str(exc)
    finally:
        _log._fast_pack = saved


class Text(str):
    pass


class Color(enum.IntEnum):
    RED = 1


class Name(enum.StrEnum):
    ALICE = "alice"


def cyclic() -> list[object]:
    cycle: list[object] = []
    cycle.append(cycle)
    return cycle


odd_values = st.sampled_from(
    [
        Text("x"),
        {"k": Text("v")},
        Color.RED,
        Name.ALICE,
        {Name.ALICE: Color.RED},
        (1, (2, "3")),
        {1, 2},
        frozenset({"a"}),
        2**64,
        -(2**63) - 1,
        2**64 - 1,
        "\ud800",
        bytearray(b"x"),
        memoryview(b"x"),
        {1: 1},
        {None: 1},
        msgpack.ExtType(1, b"x"),
        msgpack.Timestamp(1, 0),
        datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        uuid.UUID(int=1),
        decimal.Decimal("1.5"),
        float("nan"),
        -0.0,
        object(),
    ]
)


@pytest.mark.skipif(_log._fast_pack is None, reason="msgspec (the speedups extra) is missing")
@FAST
@given(args=st.lists(log_values | odd_values | odd_values.map(lambda v: [v]), max_size=3))
def test_msgspec_packs_as_msgpack_does(args: list[object]) -> None:
    """With the speedups extra, a record is encoded to the same bytes, or refused with
    the same error, as with msgpack alone."""
    assert encoded_or_error(tuple(args), fast=True) == encoded_or_error(tuple(args), fast=False)


def test_msgspec_packs_a_cycle_as_msgpack_does() -> None:
    args = (cyclic(),)
    assert encoded_or_error(args, fast=True) == encoded_or_error(args, fast=False)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"args": ({"k": {1, 2}},)}, "cannot be packed"),
        ({"args": ({"k": msgpack.ExtType(1, b"x")},)}, "msgpack ExtType"),
        ({"args": ([msgpack.ExtType(1, b"x")],)}, "msgpack ExtType"),
        ({"args": ({"k": {1: 1}},)}, "map key of type int"),
        ({"args": ({"k": [{b"k": 1}]},)}, "map key of type bytes"),
        ({"args": ([bytearray(b"x")],)}, "argument of type bytearray"),
        ({"args": ({"k": bytearray(b"x")},)}, "argument of type bytearray"),
    ],
)
def test_encode_rejects_invalid_values_inside_flat_maps_and_lists(
    changes: dict[str, object], match: str
) -> None:
    """The one-loop check of flat maps and lists hands anything else to the full walk."""
    for packer in (None, PACKER):
        with pytest.raises(LocalProtocolError, match=match):
            fields_of(make_record(**changes), packer)
    # A packer that failed half-way is reset: the next record encodes as it should.
    assert fields_of(make_record(), PACKER) == encode_record(make_record())


# --- record_encoder: encode_record_fields with the epoch and bound fixed --------------------


def by_encoder(record: LogRecord, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> bytes:
    encode = record_encoder(record.epoch, max_record_bytes=max_record_bytes, packer=PACKER)
    return encode(
        record.offset, record.time, record.namespace, record.room, record.kind,
        record.sender, record.event, record.args,
    )  # fmt: skip


def encoder_outcome(record: LogRecord, *, fast: bool) -> tuple[str, object]:
    """What the encoder gives for ``record`` (made with msgspec's packer allowed or not)."""
    saved = _log._fast_pack
    if not fast:
        _log._fast_pack = None
    try:
        return "bytes", by_encoder(record)
    except LocalProtocolError as exc:
        return "error", str(exc)
    finally:
        _log._fast_pack = saved


def fields_outcome(record: LogRecord) -> tuple[str, object]:
    try:
        return "bytes", fields_of(record, None)
    except LocalProtocolError as exc:
        return "error", str(exc)


@FAST
@given(record=log_records)
def test_record_encoder_gives_the_same_bytes(record: LogRecord) -> None:
    assert by_encoder(record) == encode_record(record)
    assert encoder_outcome(record, fast=False) == ("bytes", encode_record(record))


@FAST
@given(args=st.lists(log_values | odd_values | odd_values.map(lambda v: [v]), max_size=3))
def test_record_encoder_accepts_and_refuses_as_encode_record_fields(args: list[object]) -> None:
    """Odd arguments (subclasses, enums, numbers beyond 64 bits, what is no LogValue):
    the same bytes or the same error, with msgspec's packer and without it."""
    record = make_record(args=tuple(args), exclude=())
    expected = fields_outcome(record)
    assert encoder_outcome(record, fast=True) == expected
    assert encoder_outcome(record, fast=False) == expected


@pytest.mark.parametrize(
    "changes",
    [
        {"offset": -1},
        {"offset": 2**63},
        {"offset": True},
        {"time": math.nan},
        {"time": -math.inf},
        {"time": 1},
        {"namespace": Text("/")},
        {"room": None},
        {"sender": 5},
        {"sender": Text("sid")},
        {"event": b"x"},
        {"kind": 7},
        {"kind": Color.RED},
        {"args": (2**64,)},
        {"args": (-(2**63) - 1,)},
        {"args": ("\ud800",)},
        {"args": (Text("x"),)},
        {"args": (msgpack.ExtType(1, b"x"),)},
        {"args": (bytearray(b"x"),)},
        {"args": ({"k": {1, 2}},)},
    ],
)
def test_record_encoder_takes_every_odd_field_the_detailed_way(changes: dict[str, object]) -> None:
    """A field the one-expression check does not pass goes to `encode_record_fields`,
    which accepts it (a str subclass) or says what is wrong with it, as it would."""
    record = make_record(**{"exclude": (), **changes})
    outcome = encoder_outcome(record, fast=True)
    assert outcome == fields_outcome(record)
    assert outcome == encoder_outcome(record, fast=False)


def test_record_encoder_checks_its_epoch_and_bound_once() -> None:
    with pytest.raises(LocalProtocolError, match="epoch is a bytes"):
        record_encoder(b"ep")  # type: ignore[arg-type]  # the error under test
    for bad in (0, 2**32):
        with pytest.raises(ValueError, match="max_record_bytes"):
            record_encoder("ep", max_record_bytes=bad)


def test_record_encoder_enforces_max_record_bytes() -> None:
    record = make_record(args=("x" * 1000,), exclude=())
    size = len(encode_record(record)) - HEADER_BYTES
    assert by_encoder(record, max_record_bytes=size) == encode_record(record)
    with pytest.raises(LocalProtocolError, match=f"body is {size} bytes"):
        by_encoder(record, max_record_bytes=size - 1)


def nested(depth: int) -> LogValue:
    value: LogValue = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_encode_nesting_bound() -> None:
    record = make_record(args=(nested(256),))
    assert decode_record(encode_record(record)) == record
    with pytest.raises(LocalProtocolError, match="nested deeper than 256"):
        encode_record(make_record(args=(nested(257),)))
    with pytest.raises(LocalProtocolError, match="nested deeper than 256"):
        encode_record(make_record(args=({"k": nested(256)},)))


def test_encode_rejects_cyclic_argument() -> None:
    cycle: list[LogValue] = []
    cycle.append(cycle)
    with pytest.raises(LocalProtocolError, match="cannot be packed"):
        encode_record(make_record(args=(cycle,)))


def test_encode_enforces_max_record_bytes() -> None:
    record = make_record(args=(b"x" * 1000,))
    size = len(encode_record(record)) - HEADER_BYTES
    encoded = encode_record(record, max_record_bytes=size)
    assert decode_record(encoded, max_record_bytes=size) == record
    with pytest.raises(LocalProtocolError, match=f"body is {size} bytes"):
        encode_record(record, max_record_bytes=size - 1)


@pytest.mark.parametrize("bad", [0, -1, 2**32])
def test_max_record_bytes_must_fit_the_length_field(bad: int) -> None:
    with pytest.raises(ValueError, match="max_record_bytes"):
        encode_record(make_record(), max_record_bytes=bad)
    with pytest.raises(ValueError, match="max_record_bytes"):
        decode_record(GOLDEN_FRAME, max_record_bytes=bad)
    with pytest.raises(ValueError, match="max_record_bytes"):
        scan(GOLDEN_FRAME, max_record_bytes=bad)
    with pytest.raises(ValueError, match="max_record_bytes"):
        RecordReader(max_record_bytes=bad)


# --- Decoding bad bodies (checksum intact) ----------------------------------------------


def with_field(index: int, value: object) -> bytes:
    fields = valid_fields()
    fields[index] = value
    return body_of(fields)


def deep_args(depth: int) -> bytes:
    fields = valid_fields()
    fields[8] = [nested(depth)]
    return msgpack.packb(fields)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),
        (body_of(valid_fields()) + b"\x00", "not valid msgpack"),
        (b"\x9b" + b"\xa1", "not valid msgpack"),
        (b"\x81\x91\x01\x01", "not valid msgpack"),  # {[1]: 1}: unhashable key
        (b"\xa2\xff\xfe", "not valid msgpack"),  # invalid UTF-8 in a str
        (body_of([]), "not a non-empty msgpack array"),
        (body_of({"v": 1}), "not a non-empty msgpack array"),
        (body_of(["1"]), "schema version is a str"),
        (body_of([True]), "schema version is a bool"),
        (body_of(valid_fields()[:10]), "body has 10 fields"),
        (body_of([*valid_fields(), 0]), "body has 12 fields"),
        (with_field(1, "3"), "offset is a str"),
        (with_field(1, -1), "out of range"),
        (with_field(1, 2**63), "out of range"),
        (with_field(2, 2), "time is a int"),
        (with_field(2, math.nan), "not finite"),
        (with_field(2, -math.inf), "not finite"),
        (with_field(3, None), "namespace is a NoneType"),
        (with_field(4, b"r"), "room is a bytes"),
        (with_field(6, 1), "sender is a int"),
        (with_field(7, ["e"]), "event is a list"),
        (with_field(9, None), "epoch is a NoneType"),
        (with_field(10, "x"), "exclude is a str"),
        (with_field(10, [1]), "exclude holds a int"),
        (with_field(5, "7"), "kind is a str"),
        (with_field(5, True), "kind is a bool"),
        (with_field(8, {"a": 1}), "args is a dict"),
        (with_field(8, "ab"), "args is a str"),
        (with_field(8, [msgpack.ExtType(3, b"")]), "msgpack ExtType"),
        (with_field(8, [msgpack.Timestamp(0, 0)]), "msgpack Timestamp"),
        (with_field(8, [{b"k": 1}]), "map key of type bytes"),
        (deep_args(257), "nested deeper than 256"),
        (b"\x91" * 2000 + b"\xc0", "not valid msgpack"),
    ],
)
def test_decode_rejects_bad_body(body: bytes, match: str) -> None:
    with pytest.raises(CorruptRecordError, match=match) as info:
        decode_record(frame(body))
    assert type(info.value) is CorruptRecordError
    assert info.value.position == 0
    assert info.value.reason == "corrupt record"
    assert isinstance(info.value, RemoteProtocolError)


def test_decode_accepts_deepest_allowed_nesting() -> None:
    assert decode_record(frame(deep_args(256))).args == (nested(256),)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (body_of([2, "anything", "newer", "schemas", "add"]), "schema version 2"),
        (body_of([0]), "schema version 0"),
        (with_field(5, 99), "unknown record kind 99"),
        (with_field(5, 0), "unknown record kind 0"),
    ],
)
def test_newer_schema_is_detected_not_misread(body: bytes, match: str) -> None:
    with pytest.raises(UnsupportedRecordError, match=match) as info:
        decode_record(frame(body))
    assert info.value.position == 0
    assert info.value.reason == "unsupported record"
    assert isinstance(info.value, CorruptRecordError)
    result = scan(GOLDEN_FRAME + frame(body) + GOLDEN_FRAME)
    assert result.records == (make_record(),)
    assert result.valid_bytes == len(GOLDEN_FRAME)
    assert isinstance(result.error, UnsupportedRecordError)


def test_decode_requires_exactly_one_frame() -> None:
    with pytest.raises(CorruptRecordError, match="3 bytes follow the record") as info:
        decode_record(GOLDEN_FRAME + b"abc")
    assert type(info.value) is CorruptRecordError
    assert info.value.position == 0
    with pytest.raises(TornRecordError, match="0 bytes into the 8-byte header"):
        decode_record(b"")
    with pytest.raises(TornRecordError, match="83 bytes into a 84-byte record"):
        decode_record(GOLDEN_FRAME[:-1])


def test_zero_filled_tail_never_decodes() -> None:
    # A crash can leave a zero-filled extension: length 0 with checksum 0 matches the
    # (empty) body, so the body itself must be rejected.
    result = scan(GOLDEN_FRAME + bytes(64))
    assert result.records == (make_record(),)
    assert result.valid_bytes == len(GOLDEN_FRAME)
    assert type(result.error) is CorruptRecordError
    assert result.error.position == len(GOLDEN_FRAME)


# --- Torn tails and corruption in a 3-record stream --------------------------------------

RECORDS = (
    make_record(offset=0, kind=RecordKind.JOIN, event=None, args=()),
    make_record(offset=1),
    make_record(offset=2, args=(b"\x01" * 40, "tail")),
)
FRAMES = tuple(encode_record(record) for record in RECORDS)
STREAM = b"".join(FRAMES)
STARTS = (0, len(FRAMES[0]), len(FRAMES[0]) + len(FRAMES[1]))


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_truncation_at_every_byte(cut: int) -> None:
    whole = sum(1 for start, f in zip(STARTS, FRAMES, strict=True) if start + len(f) <= cut)
    boundary = STARTS[whole] if whole < len(STARTS) else len(STREAM)
    data = STREAM[:cut]

    result = scan(data)
    assert result.records == RECORDS[:whole]
    assert result.valid_bytes == boundary
    if cut == boundary:
        assert result.error is None
    else:
        assert isinstance(result.error, TornRecordError)
        assert result.error.position == boundary
        assert result.error.reason == "torn record"

    # The streaming reader agrees, fed in two pieces split at the cut and byte by byte.
    for pieces in ([data[: cut // 2], data[cut // 2 :]], [data[i : i + 1] for i in range(cut)]):
        reader = RecordReader()
        decoded = []
        for piece in pieces:
            reader.feed(piece)
            while (record := reader.next_record()) is not None:
                decoded.append(record)
        assert tuple(decoded) == RECORDS[:whole]
        assert reader.position == boundary
        if cut == boundary:
            reader.finish()
        else:
            with pytest.raises(TornRecordError) as info:
                reader.finish()
            assert info.value.position == boundary


@pytest.mark.parametrize("index", range(len(FRAMES[1])))
def test_flipped_bit_in_middle_record(index: int) -> None:
    for bit in range(8):
        damaged = bytearray(STREAM)
        damaged[STARTS[1] + index] ^= 1 << bit
        result = scan(bytes(damaged))
        assert result.records == RECORDS[:1]
        assert result.valid_bytes == STARTS[1]
        assert isinstance(result.error, CorruptRecordError)
        assert result.error.position == STARTS[1]
        if index >= HEADER_BYTES:
            # CRC-32 catches every single-bit error in the body.
            assert type(result.error) is CorruptRecordError
            assert "checksum mismatch" in result.error.detail

        reader = RecordReader()
        reader.feed(bytes(damaged))
        assert reader.next_record() == RECORDS[0]
        with pytest.raises(CorruptRecordError) as info:
            read_to_end(reader)
        assert info.value.position == STARTS[1]


def read_to_end(reader: RecordReader) -> None:
    """Expect no further record: the next one fails now, or is torn at the end."""
    assert reader.next_record() is None  # a flipped length bit may point past the end
    reader.finish()


def test_flipped_byte_in_middle_record_body() -> None:
    damaged = bytearray(STREAM)
    damaged[STARTS[1] + HEADER_BYTES + 20] ^= 0xFF
    with pytest.raises(CorruptRecordError, match=f"corrupt record at byte {STARTS[1]}"):
        scan_or_raise(bytes(damaged))


def scan_or_raise(data: bytes) -> tuple[LogRecord, ...]:
    result = scan(data)
    if result.error is not None:
        raise result.error
    return result.records  # pragma: no cover - only called on damaged data


# --- Memory bound -----------------------------------------------------------------------


def test_giant_length_fails_at_once() -> None:
    reader = RecordReader()
    reader.feed(GOLDEN_FRAME)
    reader.feed(struct.pack(">II", 0xFFFF_FFFF, 0))
    assert reader.next_record() == make_record()
    with pytest.raises(CorruptRecordError, match="length field 4294967295") as info:
        reader.next_record()
    assert info.value.position == len(GOLDEN_FRAME)
    assert type(info.value) is CorruptRecordError


def test_length_limit_is_inclusive() -> None:
    reader = RecordReader(max_record_bytes=100)
    reader.feed(struct.pack(">II", 100, 0))
    assert reader.next_record() is None  # waits for 100 body bytes
    with pytest.raises(TornRecordError, match="8 bytes into a 108-byte record"):
        reader.finish()

    reader = RecordReader(max_record_bytes=100)
    reader.feed(struct.pack(">II", 101, 0))
    with pytest.raises(CorruptRecordError, match="over max_record_bytes=100"):
        reader.next_record()
    with pytest.raises(CorruptRecordError, match="over max_record_bytes=100"):
        decode_record(struct.pack(">II", 101, 0) + bytes(101), max_record_bytes=100)
    result = scan(struct.pack(">II", 101, 0), max_record_bytes=100)
    assert result.valid_bytes == 0
    assert type(result.error) is CorruptRecordError


def test_finish_reports_over_limit_header_without_next_record() -> None:
    reader = RecordReader(max_record_bytes=10)
    reader.feed(struct.pack(">II", 11, 0))
    with pytest.raises(CorruptRecordError, match="over max_record_bytes") as info:
        reader.finish()
    assert type(info.value) is CorruptRecordError


# --- Reader state -----------------------------------------------------------------------


def test_reader_positions_stay_absolute_across_feeds() -> None:
    reader = RecordReader()
    assert reader.position == 0
    assert reader.next_record() is None
    reader.finish()  # nothing buffered: a clean end
    for index, frame_bytes in enumerate(FRAMES):
        reader.feed(frame_bytes)
        assert reader.next_record() == RECORDS[index]
        assert reader.position == STARTS[index] + len(frame_bytes)
    reader.feed(b"\x00\x00\x00\x01\x00\x00\x00\x00\xc0")
    with pytest.raises(CorruptRecordError, match="checksum mismatch") as info:
        reader.next_record()
    assert info.value.position == len(STREAM)
    assert reader.position == len(STREAM)


def test_reader_stays_broken_after_an_error() -> None:
    reader = RecordReader()
    reader.feed(b"\x00\x00\x00\x00\x00\x00\x00\x00")
    with pytest.raises(CorruptRecordError) as first:
        reader.next_record()
    reader.feed(GOLDEN_FRAME)  # discarded
    with pytest.raises(CorruptRecordError) as again:
        reader.next_record()
    assert again.value is first.value
    with pytest.raises(CorruptRecordError) as at_finish:
        reader.finish()
    assert at_finish.value is first.value

    torn = RecordReader()
    torn.feed(GOLDEN_FRAME[:3])
    with pytest.raises(TornRecordError) as first_torn:
        torn.finish()
    with pytest.raises(TornRecordError) as again_torn:
        torn.next_record()
    assert again_torn.value is first_torn.value


def test_finish_with_unread_record_is_a_local_error() -> None:
    reader = RecordReader()
    reader.feed(GOLDEN_FRAME)
    with pytest.raises(LocalProtocolError, match="before every record was read"):
        reader.finish()
    assert reader.next_record() == make_record()  # nothing was consumed
    reader.finish()


def test_error_attributes() -> None:
    error = CorruptRecordError("bad", position=7)
    assert (error.position, error.detail, error.reason) == (7, "bad", "corrupt record")
    assert str(error) == "corrupt record at byte 7: bad"
    torn = TornRecordError("short", position=9)
    assert str(torn) == "torn record at byte 9: short"
    assert isinstance(torn, CorruptRecordError)


def test_scan_result_is_a_frozen_record() -> None:
    result = scan(STREAM)
    assert result == ScanResult(records=RECORDS, valid_bytes=len(STREAM), error=None)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        result.valid_bytes = 0  # type: ignore[misc]  # checking that it is frozen
    assert scan(b"") == ScanResult(records=(), valid_bytes=0, error=None)


# --- Fuzz: bad bytes raise only CorruptRecordError ---------------------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    lambda children: (
        st.lists(children, max_size=10)
        | st.dictionaries(
            st.text(max_size=4) | st.binary(max_size=4) | st.integers(-(2**63), 2**64 - 1), children
        )
    ),
    max_leaves=20,
)


def decode_all(data: bytes) -> None:
    """Run every decoder over ``data``; each may only return or raise CorruptRecordError."""
    positions = []
    try:
        decode_record(data)
    except CorruptRecordError as exc:
        positions.append(exc.position)
    result = scan(data)
    assert 0 <= result.valid_bytes <= len(data)
    assert (result.error is None) == (result.valid_bytes == len(data))
    if result.error is not None:
        assert result.error.position == result.valid_bytes
    reader = RecordReader(max_record_bytes=1024)
    for start in range(0, len(data), 7):
        reader.feed(data[start : start + 7])
        try:
            while reader.next_record() is not None:
                pass
        except CorruptRecordError:
            break
    try:
        reader.finish()
    except CorruptRecordError as exc:
        positions.append(exc.position)
    assert all(0 <= position <= len(data) for position in positions)


@FAST
@given(data=st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    decode_all(data)


@FAST
@given(body=st.binary(max_size=200))
def test_fuzz_arbitrary_body_with_valid_checksum(body: bytes) -> None:
    decode_all(frame(body))
    decode_all(frame(body_of(valid_fields())) + frame(body))


@FAST
@given(value=msgpack_values)
def test_fuzz_arbitrary_msgpack_body(value: object) -> None:
    decode_all(frame(msgpack.packb(value, use_bin_type=True)))


@FAST
@given(index=st.integers(0, 9), value=msgpack_values)
def test_fuzz_one_field_replaced(index: int, value: object) -> None:
    data = frame(with_field(index, value))
    decode_all(data)
    try:
        record = decode_record(data)
    except CorruptRecordError:
        return
    # Whatever decodes must encode back to the very same bytes.
    assert encode_record(record) == data


@FAST
@given(data=st.binary(max_size=100), position=st.integers(0, len(STREAM)))
def test_fuzz_garbage_spliced_into_a_stream(data: bytes, position: int) -> None:
    decode_all(STREAM[:position] + data + STREAM[position:])
