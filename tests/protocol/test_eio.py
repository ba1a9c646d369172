"""Engine.IO v4 codecs: WebSocket frames, polling payloads and the handshake."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.protocol._eio import (
    EioPacket,
    EioPacketType,
    SessionParams,
    check_payload_frame,
    decode_handshake,
    decode_payload,
    decode_ws_frame,
    decode_ws_message,
    encode_frames_payload,
    encode_handshake,
    encode_message,
    encode_payload,
    encode_ws_frame,
)
from roomcast.protocol._errors import LocalProtocolError, RemoteProtocolError
from roomcast.protocol._limits import DEFAULT_LIMITS, Limits

T = EioPacketType
FUZZ = settings(max_examples=300, deadline=None)


def msg(data: str | bytes) -> EioPacket:
    return EioPacket(type=T.MESSAGE, data=data)


# --------------------------------------------------------------------------- packet types


def test_packet_type_digits_match_the_spec() -> None:
    assert [(t.name, int(t)) for t in T] == [
        ("OPEN", 0),
        ("CLOSE", 1),
        ("PING", 2),
        ("PONG", 3),
        ("MESSAGE", 4),
        ("UPGRADE", 5),
        ("NOOP", 6),
    ]


def test_packet_defaults_to_empty_text() -> None:
    assert EioPacket(type=T.NOOP).data == ""


# --------------------------------------------------------------------------- WebSocket frames


@pytest.mark.parametrize(
    ("packet", "frame"),
    [
        (msg("hello"), "4hello"),
        (msg(""), "4"),
        (EioPacket(type=T.PING), "2"),
        (EioPacket(type=T.PING, data="probe"), "2probe"),
        (EioPacket(type=T.PONG, data="probe"), "3probe"),
        (EioPacket(type=T.CLOSE), "1"),
        (EioPacket(type=T.UPGRADE), "5"),
        (EioPacket(type=T.NOOP), "6"),
        (EioPacket(type=T.OPEN, data='{"sid":"x"}'), '0{"sid":"x"}'),
        (msg(b"\x01\x02\x03\x04"), b"\x01\x02\x03\x04"),
        (msg(b""), b""),
        (msg("héllo \U0001f600"), "4héllo \U0001f600"),
    ],
)
def test_ws_frame_round_trip(packet: EioPacket, frame: str | bytes) -> None:
    encoded = encode_ws_frame(packet)
    assert encoded == frame
    assert type(encoded) is type(frame)
    assert decode_ws_frame(frame) == packet


def test_ws_binary_message_is_raw_bytes_without_prefix() -> None:
    # docs/conformance.md §2.3: binary 01 02 03 04 goes out as exactly those bytes.
    assert encode_ws_frame(msg(b"\x01\x02\x03\x04")) == b"\x01\x02\x03\x04"


@pytest.mark.parametrize("packet_type", [t for t in T if t is not T.MESSAGE])
def test_encoding_binary_on_a_non_message_is_our_bug(packet_type: EioPacketType) -> None:
    packet = EioPacket(type=packet_type, data=b"\x00")
    with pytest.raises(LocalProtocolError):
        encode_ws_frame(packet)
    with pytest.raises(LocalProtocolError):
        encode_payload([packet])


@pytest.mark.parametrize("frame", ["", "7", "9x", "abc", "x4hello", " 4", "bAQIDBA==", "\x1e4a"])
def test_bad_ws_text_frames_are_remote_errors(frame: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_ws_frame(frame)
    assert info.value.reason == "parse error"


def test_ws_frame_limit_counts_utf8_bytes() -> None:
    limits = Limits(max_payload_bytes=8)
    assert decode_ws_frame("4abcdefg", limits) == msg("abcdefg")  # exactly 8 bytes
    with pytest.raises(RemoteProtocolError):
        decode_ws_frame("4abcdefgh", limits)
    assert decode_ws_frame("4aébéa", limits) == msg("aébéa")  # 6 chars, 8 bytes
    with pytest.raises(RemoteProtocolError):
        decode_ws_frame("4aébéab", limits)  # 7 chars, 9 bytes
    with pytest.raises(RemoteProtocolError):
        decode_ws_frame("4\U0001f600\U0001f600", limits)  # 3 chars, 9 bytes


def test_ws_binary_frame_limit() -> None:
    limits = Limits(max_payload_bytes=4)
    assert decode_ws_frame(b"\x01\x02\x03\x04", limits) == msg(b"\x01\x02\x03\x04")
    with pytest.raises(RemoteProtocolError):
        decode_ws_frame(b"\x01\x02\x03\x04\x05", limits)


def test_ws_message_is_the_data_of_a_message_frame() -> None:
    limits = Limits(max_payload_bytes=8)
    assert decode_ws_message("4aébéa", limits) == "aébéa"
    assert decode_ws_message("4", limits) == ""
    assert decode_ws_message(bytearray(b"\x01"), limits) == b"\x01"
    assert type(decode_ws_message(bytearray(b"\x01"), limits)) is bytes
    for other in ("2", "3probe", "1", "", "x4hello"):
        assert decode_ws_message(other, limits) is None
    for too_long in ("4aébéab", b"\x01" * 9):
        with pytest.raises(RemoteProtocolError):
            decode_ws_message(too_long, limits)


@FUZZ
@given(
    frame=st.text(max_size=12) | st.binary(max_size=12),
    limit=st.integers(1, 16),
)
def test_ws_message_agrees_with_the_frame_decoder(frame: str | bytes, limit: int) -> None:
    # The receive path takes a MESSAGE's data from decode_ws_message and decodes any
    # other frame with decode_ws_frame: together they accept, refuse and decode exactly
    # what decode_ws_frame alone does.
    limits = Limits(max_payload_bytes=limit)
    try:
        packet = decode_ws_frame(frame, limits)
    except RemoteProtocolError:
        packet = None
    try:
        message = decode_ws_message(frame, limits)
    except RemoteProtocolError:
        assert packet is None
        return
    if packet is not None and packet.type is T.MESSAGE:
        assert message == packet.data
        assert type(message) is type(packet.data)
    else:
        assert message is None


def test_ws_decoder_copies_a_bytearray_into_bytes() -> None:
    packet = decode_ws_frame(bytearray(b"\x01"))
    assert packet == msg(b"\x01")
    assert type(packet.data) is bytes


# --------------------------------------------------------------------------- polling payloads


@pytest.mark.parametrize(
    ("body", "packets"),
    [
        # docs/conformance.md §2.2, the echo examples: the GET body is the POST body,
        # byte-identical.
        ("4hello", (msg("hello"),)),
        ("4test1\x1e4test2\x1e4test3", (msg("test1"), msg("test2"), msg("test3"))),
        ("4hello\x1ebAQIDBA==", (msg("hello"), msg(b"\x01\x02\x03\x04"))),
        # and the other payloads the conformance flows exchange
        ("2", (EioPacket(type=T.PING),)),
        ("3", (EioPacket(type=T.PONG),)),
        ("1", (EioPacket(type=T.CLOSE),)),
        ("6", (EioPacket(type=T.NOOP),)),
        ("4", (msg(""),)),
        ("b", (msg(b""),)),
        ("4\x1e4", (msg(""), msg(""))),
        ("4é\x1ebAQ==\x1e2probe", (msg("é"), msg(b"\x01"), EioPacket(type=T.PING, data="probe"))),
    ],
)
def test_payload_round_trip(body: str, packets: tuple[EioPacket, ...]) -> None:
    assert decode_payload(body) == packets
    assert decode_payload(body.encode("utf-8")) == packets
    assert encode_payload(packets) == body
    assert encode_payload(iter(packets)) == body


def test_encode_payload_accepts_no_packets() -> None:
    assert encode_payload([]) == ""


def test_text_containing_the_record_separator_cannot_be_polled() -> None:
    with pytest.raises(LocalProtocolError):
        encode_payload([msg("a\x1eb")])
    with pytest.raises(LocalProtocolError, match="polling payload"):
        encode_frames_payload(["4a", "4b\x1ec"])
    with pytest.raises(LocalProtocolError, match="polling payload"):
        check_payload_frame("4a\x1e1")
    check_payload_frame(b"a\x1eb")  # binary goes as base64
    check_payload_frame("4ab")


@pytest.mark.parametrize("data", ["", "hello", "é\x1e", b"", b"\x00\x1e4"])
def test_encode_message_is_the_ws_frame_of_a_message(data: str | bytes) -> None:
    assert encode_message(data) == encode_ws_frame(msg(data))


def test_frames_payload_is_the_payload_of_their_packets() -> None:
    packets = (msg("hello"), msg(b"\x01\x02"), EioPacket(type=T.PING, data="probe"), msg(""))
    frames = [encode_ws_frame(p) for p in packets]
    assert (
        encode_frames_payload(frames) == encode_payload(packets) == "4hello\x1ebAQI=\x1e2probe\x1e4"
    )
    assert encode_frames_payload([]) == ""


@pytest.mark.parametrize(
    "body",
    [
        "",
        "\x1e",
        "4a\x1e",
        "\x1e4a",
        "4a\x1e\x1e4b",
        "abc",
        "7",
        "4a\x1e9",
        "bAQIDBA",  # missing padding
        "bAQID BA==",  # not in the alphabet
        "bAQIDBA==AA",  # data after the padding
        "b!!!!",
        "bAQé=",  # non-ASCII
        "b====",
    ],
)
def test_bad_payloads_are_remote_errors(body: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_payload(body)


@pytest.mark.parametrize("body", [b"4\xff", b"4\xc3", b"\xed\xa0\x80", b"4a\x1e4\x80"])
def test_payload_bytes_must_be_utf8(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_payload(body)


def test_payload_byte_limit() -> None:
    limits = Limits(max_payload_bytes=6)
    assert decode_payload("4ab\x1e4c", limits) == (msg("ab"), msg("c"))
    assert decode_payload(b"4ab\x1e4c", limits) == (msg("ab"), msg("c"))
    assert decode_payload("4aéé", limits) == (msg("aéé"),)  # 4 chars, 6 bytes
    for body in ("4ab\x1e4cd", b"4ab\x1e4cd", "4éé\x1e4", "4\U0001f600\U0001f600"):
        with pytest.raises(RemoteProtocolError):
            decode_payload(body, limits)


def test_payload_packet_count_limit() -> None:
    limits = Limits(max_packets_per_payload=3)
    assert len(decode_payload("4a\x1e4b\x1e4c", limits)) == 3
    with pytest.raises(RemoteProtocolError):
        decode_payload("4a\x1e4b\x1e4c\x1e4d", limits)


def test_default_limits_take_a_full_polling_body() -> None:
    body = "\x1e".join(["4x"] * DEFAULT_LIMITS.max_packets_per_payload)
    assert len(decode_payload(body)) == DEFAULT_LIMITS.max_packets_per_payload
    with pytest.raises(RemoteProtocolError):
        decode_payload(body + "\x1e4x")


# --------------------------------------------------------------------------- handshake

CONFORMANCE_HANDSHAKE = SessionParams(
    sid="abc",
    upgrades=("websocket",),
    ping_interval=0.3,
    ping_timeout=0.2,
    max_payload=1_000_000,
)


def test_handshake_json_is_compact_ordered_integer_milliseconds() -> None:
    packet = encode_handshake(CONFORMANCE_HANDSHAKE)
    assert packet.type is T.OPEN
    assert encode_ws_frame(packet) == (
        '0{"sid":"abc","upgrades":["websocket"],"pingInterval":300,'
        '"pingTimeout":200,"maxPayload":1000000}'
    )
    assert list(json.loads(packet.data)) == [
        "sid",
        "upgrades",
        "pingInterval",
        "pingTimeout",
        "maxPayload",
    ]


@pytest.mark.parametrize(
    ("seconds", "millis"), [(0.3, 300), (0.2, 200), (25.0, 25000), (0.001, 1), (0.0015, 2)]
)
def test_handshake_durations_are_rounded_not_truncated(seconds: float, millis: int) -> None:
    h = SessionParams(sid="s", upgrades=[], ping_interval=seconds, ping_timeout=1, max_payload=1)
    assert json.loads(encode_handshake(h).data)["pingInterval"] == millis


def test_handshake_upgrades_are_a_tuple() -> None:
    h = SessionParams(
        sid="s", upgrades=["websocket"], ping_interval=1, ping_timeout=1, max_payload=1
    )
    assert h.upgrades == ("websocket",)


def test_handshake_round_trip() -> None:
    assert decode_handshake(encode_handshake(CONFORMANCE_HANDSHAKE)) == CONFORMANCE_HANDSHAKE
    websocket = SessionParams(
        sid="é", upgrades=(), ping_interval=25, ping_timeout=20, max_payload=1
    )
    assert decode_handshake(encode_handshake(websocket)) == websocket


def test_handshake_ignores_unknown_keys_and_defaults_max_payload() -> None:
    data = '{"sid":"s","upgrades":[],"pingInterval":1000,"pingTimeout":500,"extra":[1]}'
    assert decode_handshake(EioPacket(type=T.OPEN, data=data)) == SessionParams(
        sid="s",
        upgrades=(),
        ping_interval=1.0,
        ping_timeout=0.5,
        max_payload=DEFAULT_LIMITS.max_payload_bytes,
    )


GOOD = {"sid": "s", "upgrades": ["websocket"], "pingInterval": 300, "pingTimeout": 200}


@pytest.mark.parametrize(
    "data",
    [
        "",
        "{",
        "[" * 100_000,  # RecursionError inside json
        "1" * 5000,  # over sys.int_max_str_digits
        "[]",
        '"s"',
        "null",
        json.dumps({**GOOD, "sid": 1}),
        json.dumps({**GOOD, "sid": ""}),
        json.dumps({k: v for k, v in GOOD.items() if k != "sid"}),
        json.dumps({**GOOD, "upgrades": "websocket"}),
        json.dumps({**GOOD, "upgrades": [1]}),
        json.dumps({k: v for k, v in GOOD.items() if k != "upgrades"}),
        json.dumps({**GOOD, "pingInterval": 300.0}),
        json.dumps({**GOOD, "pingInterval": True}),
        json.dumps({**GOOD, "pingInterval": 0}),
        json.dumps({**GOOD, "pingInterval": -1}),
        json.dumps({**GOOD, "pingInterval": 2**31}),
        json.dumps({**GOOD, "pingInterval": 10**400}),
        json.dumps({**GOOD, "pingInterval": "300"}),
        json.dumps({k: v for k, v in GOOD.items() if k != "pingInterval"}),
        json.dumps({**GOOD, "pingTimeout": None}),
        json.dumps({k: v for k, v in GOOD.items() if k != "pingTimeout"}),
        json.dumps({**GOOD, "maxPayload": 0}),
        json.dumps({**GOOD, "maxPayload": 2**53}),
        json.dumps({**GOOD, "maxPayload": None}),
        '{"sid":"s","upgrades":[],"pingInterval":NaN,"pingTimeout":1}',
    ],
)
def test_bad_handshakes_are_remote_errors(data: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_handshake(EioPacket(type=T.OPEN, data=data))


def test_good_reference_handshake_decodes() -> None:
    assert decode_handshake(EioPacket(type=T.OPEN, data=json.dumps(GOOD))).ping_interval == 0.3


@pytest.mark.parametrize(
    "packet",
    [
        EioPacket(type=T.MESSAGE, data=json.dumps(GOOD)),
        EioPacket(type=T.PING),
        EioPacket(type=T.OPEN, data=json.dumps(GOOD).encode()),
    ],
)
def test_handshake_must_be_a_text_open_packet(packet: EioPacket) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_handshake(packet)


# --------------------------------------------------------------------------- hypothesis

text_packets = st.builds(EioPacket, type=st.sampled_from(EioPacketType), data=st.text(max_size=50))
binary_packets = st.builds(EioPacket, type=st.just(T.MESSAGE), data=st.binary(max_size=50))
packets = text_packets | binary_packets
pollable_packets = (
    st.builds(
        EioPacket,
        type=st.sampled_from(EioPacketType),
        data=st.text(max_size=50).filter(lambda s: "\x1e" not in s),
    )
    | binary_packets
)


@FUZZ
@given(packets)
def test_ws_frame_round_trip_property(packet: EioPacket) -> None:
    assert decode_ws_frame(encode_ws_frame(packet)) == packet


@FUZZ
@given(st.lists(pollable_packets, min_size=1, max_size=10))
def test_payload_round_trip_property(packet_list: list[EioPacket]) -> None:
    body = encode_payload(packet_list)
    assert decode_payload(body) == tuple(packet_list)
    # st.text() has no lone surrogates, so every body is valid UTF-8, as an HTTP body is.
    assert decode_payload(body.encode("utf-8")) == tuple(packet_list)


@FUZZ
@given(
    sid=st.text(min_size=1, max_size=20),
    upgrades=st.lists(st.text(max_size=10), max_size=3),
    ping_interval=st.integers(1, 2**31 - 1),
    ping_timeout=st.integers(1, 2**31 - 1),
    max_payload=st.integers(1, 2**53 - 1),
)
def test_handshake_round_trip_property(
    sid: str, upgrades: list[str], ping_interval: int, ping_timeout: int, max_payload: int
) -> None:
    h = SessionParams(
        sid=sid,
        upgrades=upgrades,
        ping_interval=ping_interval / 1000,
        ping_timeout=ping_timeout / 1000,
        max_payload=max_payload,
    )
    assert decode_handshake(encode_handshake(h)) == h


SMALL = Limits(max_payload_bytes=64, max_packets_per_payload=4)


@FUZZ
@given(st.text(max_size=80) | st.binary(max_size=80))
def test_ws_decoder_raises_only_remote_errors(frame: str | bytes) -> None:
    for limits in (DEFAULT_LIMITS, SMALL):
        try:
            packet = decode_ws_frame(frame, limits)
        except RemoteProtocolError:
            continue
        assert decode_ws_frame(encode_ws_frame(packet), limits) == packet


payload_alphabet = st.sampled_from(["\x1e", "b", "4", "2", "=", "A", "Q", "é", " ", "9"])
payload_like = st.lists(payload_alphabet, max_size=40).map("".join)


@FUZZ
@given(st.text(max_size=80) | st.binary(max_size=80) | payload_like)
def test_payload_decoder_raises_only_remote_errors(body: str | bytes) -> None:
    for limits in (DEFAULT_LIMITS, SMALL):
        try:
            decoded = decode_payload(body, limits)
        except RemoteProtocolError:
            continue
        assert 1 <= len(decoded) <= limits.max_packets_per_payload


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
handshake_like = st.fixed_dictionaries(
    {},
    optional={
        key: json_values | st.just(value) for key, value in {**GOOD, "maxPayload": 10}.items()
    },
).map(json.dumps)


@FUZZ
@given(st.text(max_size=80) | handshake_like)
def test_handshake_decoder_raises_only_remote_errors(data: str) -> None:
    try:
        h = decode_handshake(EioPacket(type=T.OPEN, data=data))
    except RemoteProtocolError:
        return
    assert h.ping_interval > 0
    assert h.ping_timeout > 0
