"""Socket.IO v5 codecs: socket.io-parser (JSON + attachments) and socket.io-msgpack-parser.

Wire strings in this file are the Socket.IO payload of an Engine.IO MESSAGE; the
conformance suite's frames (``42[...]``) are ``"4"`` + payload, and the tests that quote
them say so.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.protocol._errors import LocalProtocolError, RemoteProtocolError
from roomcast.protocol._json import dumps, exceeds_depth, loads
from roomcast.protocol._limits import DEFAULT_LIMITS, MAX_SAFE_ACK_ID, Limits
from roomcast.protocol._sio import (
    JSON_PARSER,
    MSGPACK_PARSER,
    RESERVED_EVENTS,
    Ack,
    Connect,
    ConnectError,
    Decoder,
    Disconnect,
    Event,
    JsonValue,
    Parser,
    SioPacket,
    SioPacketType,
    encode_json,
)

FAST = settings(max_examples=250, deadline=None)
PARSERS = pytest.mark.parametrize("parser", [JSON_PARSER, MSGPACK_PARSER], ids=["json", "msgpack"])
# Round trips check the codec, not the depth limit: recursive strategies can nest deep.
ROOMY = Limits(max_nesting_depth=1_000, max_attachments=1_000)

# --------------------------------------------------------------------------- strategies

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry
scalars: st.SearchStrategy[JsonValue] = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)


def _nested(leaves: st.SearchStrategy[JsonValue]) -> st.SearchStrategy[JsonValue]:
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=12,
    )


plain_values = _nested(scalars)
values = _nested(st.one_of(scalars, st.binary(max_size=24)))  # bytes at any depth
plain_objects = st.dictionaries(st.text(max_size=8), plain_values, max_size=4)
namespaces = st.one_of(
    st.just("/"),
    st.text(st.characters(exclude_characters=",", exclude_categories=["Cs"]), max_size=30).map(
        lambda s: "/" + s
    ),
)
ack_ids = st.integers(min_value=0, max_value=MAX_SAFE_ACK_ID)
arg_tuples = st.lists(values, max_size=5).map(tuple)

packets: st.SearchStrategy[SioPacket] = st.one_of(
    st.builds(Connect, namespace=namespaces, data=st.none() | plain_objects),
    st.builds(Disconnect, namespace=namespaces),
    st.builds(
        Event,
        name=st.text(max_size=20).filter(lambda name: name not in RESERVED_EVENTS),
        args=arg_tuples,
        namespace=namespaces,
        ack_id=st.none() | ack_ids,
    ),
    st.builds(Ack, ack_id=ack_ids, args=arg_tuples, namespace=namespaces),
    st.builds(
        ConnectError,
        namespace=namespaces,
        data=st.none() | st.text(max_size=20) | plain_objects,
    ),
)


def decode_all(parser: Parser, frames: tuple[str | bytes, ...], limits: Limits) -> SioPacket:
    decoder = parser.decoder(limits)
    *head, last = frames
    for frame in head:
        assert decoder.receive(frame) is None
    packet = decoder.receive(last)
    assert packet is not None
    return packet


def json_decode(*frames: str | bytes, limits: Limits = DEFAULT_LIMITS) -> SioPacket:
    return decode_all(JSON_PARSER, frames, limits)


def json_rejects(*frames: str | bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    decoder = JSON_PARSER.decoder(limits)
    *head, last = frames
    for frame in head:
        assert decoder.receive(frame) is None
    with pytest.raises(RemoteProtocolError):
        decoder.receive(last)


def mp(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj)
    return packed


def msgpack_rejects(frame: str | bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    with pytest.raises(RemoteProtocolError):
        MSGPACK_PARSER.decoder(limits).receive(frame)


def nested(depth: int) -> str:
    """An event whose payload nests ``depth`` arrays deep (the outer array included)."""
    return "2" + '["a",' + "[" * (depth - 1) + "]" * (depth - 1) + "]"


# --------------------------------------------------------------------------- packet types


def test_packet_type_digits_match_the_spec() -> None:
    assert [(t.name, int(t)) for t in SioPacketType] == [
        ("CONNECT", 0),
        ("DISCONNECT", 1),
        ("EVENT", 2),
        ("ACK", 3),
        ("CONNECT_ERROR", 4),
        ("BINARY_EVENT", 5),
        ("BINARY_ACK", 6),
    ]


def test_reserved_events_are_socket_io_parsers() -> None:
    assert {
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
    } == RESERVED_EVENTS


def test_args_become_tuples() -> None:
    assert Event(name="a", args=[1, [2]]).args == (1, [2])
    assert Ack(ack_id=1, args=iter(["x"])).args == ("x",)


def test_parser_names() -> None:
    assert (JSON_PARSER.name, MSGPACK_PARSER.name) == ("json", "msgpack")


# --------------------------------------------------------------------------- JSON: exact strings


@pytest.mark.parametrize(
    ("packet", "wire"),
    [
        # The conformance suite's frames: Engine.IO's "4" + our payload.
        (
            Event(name="message-back", args=(1, "2", {"3": [True]})),
            '42["message-back",1,"2",{"3":[true]}]',
        ),
        (Ack(ack_id=456, args=(1, "2")), '43456[1,"2"]'),
        (
            ConnectError(namespace="/random", data={"message": "Invalid namespace"}),
            '44/random,{"message":"Invalid namespace"}',
        ),
        (Connect(namespace="/custom", data={"sid": "x"}), '40/custom,{"sid":"x"}'),
        (Connect(), "40"),
        (Connect(namespace="/custom"), "40/custom,"),
        (Connect(data={}), "40{}"),
        (Disconnect(), "41"),
        (Disconnect(namespace="/admin"), "41/admin,"),
        (ConnectError(), "44"),
        (ConnectError(data="nope"), '44"nope"'),
        (Event(name="a", namespace="/chat", ack_id=7), '42/chat,7["a"]'),
        (Event(name="a", ack_id=0), '420["a"]'),
        (Ack(ack_id=MAX_SAFE_ACK_ID), "439007199254740991[]"),
        (Ack(ack_id=3, namespace="/x"), "43/x,3[]"),
        (Event(name="ünï", args=("😀\u2028", {"é": 1.5})), '42["ünï","😀\u2028",{"é":1.5}]'),
        (Event(name="c", args=('\n\t\x01"\\',)), '42["c","\\n\\t\\u0001\\"\\\\"]'),
        (Event(name="n", args=(1, 1.0, -0, 10**20)), '42["n",1,1.0,0,100000000000000000000]'),
        (Event(name="o", args=({"b": 1, "a": 2},)), '42["o",{"b":1,"a":2}]'),
    ],
)
def test_json_encodes_exact_strings(packet: SioPacket, wire: str) -> None:
    text, attachments = encode_json(packet)
    assert "4" + text == wire
    assert attachments == ()
    assert JSON_PARSER.encode(packet) == (text,)
    assert json_decode(text) == packet


def test_json_binary_event_with_ack() -> None:
    packet = Event(name="message", args=(b"\x01\x02", b""), ack_id=789)
    text, attachments = encode_json(packet)
    ph = '{"_placeholder":true,"num":%d}'
    assert "4" + text == f'452-789["message",{ph % 0},{ph % 1}]'
    assert attachments == (b"\x01\x02", b"")
    assert JSON_PARSER.encode(packet) == (text, b"\x01\x02", b"")
    assert json_decode(text, *attachments) == packet


def test_json_binary_ack_in_a_namespace() -> None:
    packet = Ack(ack_id=3, args=(b"x",), namespace="/chat")
    assert encode_json(packet) == ('61-/chat,3[{"_placeholder":true,"num":0}]', (b"x",))


def test_json_placeholders_are_numbered_depth_first() -> None:
    args: tuple[JsonValue, ...] = ({"a": b"0", "b": [b"1", {"c": b"2"}], "d": 5}, b"3")
    text, attachments = encode_json(Event(name="e", args=args))
    assert attachments == (b"0", b"1", b"2", b"3")
    body = json.loads(text[text.index("[") :])
    assert body[1]["b"][1]["c"] == {"_placeholder": True, "num": 2}
    assert body[2] == {"_placeholder": True, "num": 3}
    assert body[1]["d"] == 5


def test_json_binary_encoding_leaves_the_record_alone() -> None:
    inner: list[JsonValue] = [b"x"]
    packet = Event(name="e", args=(inner,))
    encode_json(packet)
    assert inner == [b"x"]


# --------------------------------------------------------------------------- JSON: decoding


@pytest.mark.parametrize(
    ("text", "packet"),
    [
        ("0/custom", Connect(namespace="/custom")),
        ("0/custom,", Connect(namespace="/custom")),
        ('0/custom,{"token":"abc"}', Connect(namespace="/custom", data={"token": "abc"})),
        ('0{"token":"123"}', Connect(data={"token": "123"})),
        ("0", Connect()),
        ("0/", Connect()),
        ('2/,["a"]', Event(name="a")),
        ("1", Disconnect()),
        ("1/x", Disconnect(namespace="/x")),
        ("4", ConnectError()),
        ('4/x,"bad"', ConnectError(namespace="/x", data="bad")),
        ('2["publish",{"room":"r"}]', Event(name="publish", args=({"room": "r"},))),
        ('2007["a"]', Event(name="a", ack_id=7)),
        ('2["a"] \r\n\t', Event(name="a")),
        ('2[""]', Event(name="")),
        ('2["a",1e3,-0.5]', Event(name="a", args=(1000.0, -0.5))),
        ('2["\\ud83d\\ude00"]', Event(name="😀")),
        ('2["a",1,{"k":"\\uD83D\\uDE00"}]', Event(name="a", args=(1, {"k": "😀"}))),
        ('2["\\u00e9"]', Event(name="é")),
        ('3/admin,12["ok",null]', Ack(ack_id=12, args=("ok", None), namespace="/admin")),
        ('50-["a"]', Event(name="a")),
        ('60-5[{"_placeholder":false}]', Ack(ack_id=5, args=({"_placeholder": False},))),
        # Without BINARY_EVENT a placeholder-shaped object is just data (as in Node).
        (
            '2["a",{"_placeholder":true,"num":0}]',
            Event(name="a", args=({"_placeholder": True, "num": 0},)),
        ),
    ],
)
def test_json_decodes(text: str, packet: SioPacket) -> None:
    assert json_decode(text) == packet


def test_json_decoder_waits_for_attachments_then_resets() -> None:
    decoder = JSON_PARSER.decoder()
    assert (
        decoder.receive('52-/a,["b",{"_placeholder":true,"num":1},{"_placeholder":true,"num":0}]')
        is None
    )
    assert decoder.receive(b"first") is None
    assert decoder.receive(b"second") == Event(name="b", args=(b"second", b"first"), namespace="/a")
    assert decoder.receive('2["c"]') == Event(name="c")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "7",
        "9[]",
        "a",
        "abc",  # the brief's `4abc`
        "-1",
        '٢["a"]',  # a non-ASCII digit is not a packet type
        "2{}",  # the brief's `42{}`
        '2abc["a"]',  # the brief's `42abc[...]`
        "2",
        "2/x,",
        "2[]",
        "2[1]",
        "2[null]",
        '2[["a"]]',
        '2{"a":1}',
        '2"a"',
        "3[]",
        "31",
        "31{}",
        '31"a"',
        "0[]",
        '0"x"',
        "0 ",
        "01{}",
        "01",
        "1{}",
        '1/x,["a"]',
        "1/x,1",
        "4[1]",
        "4/x,1",
        "41",
        "44",
        '2["a"]x',
        '2["a"] x',
        '2 ["a"]',
        '2["a",]',
        "2['a']",
        '2["a",NaN]',
        '2["a",Infinity]',
        '2["a",-Infinity]',
        '2["a",1e400]',
        '2["a",-1e400]',
        '2["\\ud800"]',
        '2["a",{"\\udfff":1}]',
        '2["a",{"k":["\\uDBFF"]}]',
        '2["a",' + "1" * 5000 + "]",
        '2["a"',
        "5",
        "5-",
        '5["a"]',
        '5-["a"]',
        '5x-["a"]',
        '5\u0661-["a"]',  # ARABIC-INDIC DIGIT ONE
        '511-["a"]',
        '5100-["a"]',
        "50-",
        "50-2",
        '50-["connect"]',
        '50-["a",{"_placeholder":true,"num":0}]',
        '51-{"a":1}',
        '61-["a"]',
        '60-{"_placeholder":true,"num":0}',
    ]
    + [f'2["{name}"]' for name in sorted(RESERVED_EVENTS)],
)
def test_json_rejects(text: str) -> None:
    json_rejects(text)


@pytest.mark.parametrize(
    "frames",
    [
        [b"stray"],
        ['51-["a",{"_placeholder":true,"num":0}]', '2["b"]'],
        ['51-["a"]', b"unused"],
        ['51-["a",{"_placeholder":true,"num":1}]', b"x"],
        ['51-["a",{"_placeholder":true,"num":-1}]', b"x"],
        ['51-["a",{"_placeholder":true,"num":"0"}]', b"x"],
        ['51-["a",{"_placeholder":true,"num":true}]', b"x"],
        ['51-["a",{"_placeholder":true,"num":0.0}]', b"x"],
        ['51-["a",{"_placeholder":true}]', b"x"],
        ['52-["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":0}]', b"x", b"y"],
        ['52-["a",{"_placeholder":true,"num":0}]', b"x", b"y"],
        [
            '52-["a",[{"_placeholder":true,"num":0}],{"k":{"_placeholder":true,"num":5}}]',
            b"x",
            b"y",
        ],
    ],
)
def test_json_rejects_bad_attachments(frames: list[str | bytes]) -> None:
    json_rejects(*frames)


def test_json_decoder_refuses_other_types() -> None:
    decoder: Decoder = JSON_PARSER.decoder()
    with pytest.raises(RemoteProtocolError):
        decoder.receive(bytearray(b"x"))  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(RemoteProtocolError):
        decoder.receive(42)  # type: ignore[arg-type]  # the point of the test


# --------------------------------------------------------------------------- JSON: limits


def test_json_ack_id_limits() -> None:
    assert json_decode('29007199254740991["a"]') == Event(name="a", ack_id=MAX_SAFE_ACK_ID)
    json_rejects('29007199254740992["a"]')  # 2**53: 16 digits, but too large
    json_rejects('290071992547409910["a"]')  # 17 digits
    json_rejects("2" + "0" * 10_000 + '["a"]')  # stops counting at the limit
    small = Limits(max_ack_id=99)
    assert json_decode('299["a"]', limits=small) == Event(name="a", ack_id=99)
    json_rejects('2100["a"]', limits=small)
    json_rejects('3151["a"]', limits=Limits(max_ack_id=150))


def test_json_namespace_length_limit() -> None:
    longest = "/" + "a" * 255
    assert json_decode(f'2{longest},["a"]') == Event(name="a", namespace=longest)
    assert json_decode(f"0{longest}") == Connect(namespace=longest)
    json_rejects(f'2{longest}b,["a"]')
    json_rejects(f"0{longest}b")
    json_rejects("0/" + "a" * 1_000_000)


def test_json_attachment_count_limit() -> None:
    placeholders = ",".join(f'{{"_placeholder":true,"num":{n}}}' for n in range(10))
    frames = [f'510-["a",{placeholders}]'] + [bytes([n]) for n in range(10)]
    packet = json_decode(*frames)
    assert isinstance(packet, Event)
    assert packet.args == tuple(bytes([n]) for n in range(10))
    json_rejects('511-["a"]')
    json_rejects('53-["a"]', limits=Limits(max_attachments=2))


def test_json_event_args_limit() -> None:
    at_limit = "2" + json.dumps(["a", *range(1_000)])
    packet = json_decode(at_limit)
    assert isinstance(packet, Event)
    assert len(packet.args) == 1_000
    json_rejects("2" + json.dumps(["a", *range(1_001)]))
    json_rejects("31" + json.dumps(list(range(1_001))))
    assert json_decode("31" + json.dumps(list(range(1_000)))) == Ack(ack_id=1, args=range(1_000))


def test_json_200k_args_fail_fast() -> None:
    text = '2["a"' + ",0" * 200_000 + "]"
    started = time.perf_counter()
    json_rejects(text, limits=Limits(max_payload_bytes=10_000_000))
    assert time.perf_counter() - started < 2


def test_json_nesting_limit() -> None:
    assert isinstance(json_decode(nested(32)), Event)
    json_rejects(nested(33))
    json_rejects('2["a",' + '{"k":' * 32 + "1" + "}" * 32 + "]")
    # Brackets inside strings count towards the cheap estimate but not the depth.
    assert json_decode('2["' + "[" * 100 + '"]') == Event(name="[" * 100)
    assert isinstance(json_decode(nested(5), limits=Limits(max_nesting_depth=5)), Event)
    json_rejects(nested(6), limits=Limits(max_nesting_depth=5))


@pytest.mark.parametrize("opener", ["[", "{"])
def test_json_absurd_nesting_fails_fast(opener: str) -> None:
    depth = 100_000
    body = "[" * depth + "]" * depth if opener == "[" else '{"a":' * depth + "1" + "}" * depth
    started = time.perf_counter()
    json_rejects("2" + body, limits=Limits(max_payload_bytes=10_000_000))
    json_rejects('2["a",' + body + "]", limits=Limits(max_payload_bytes=10_000_000))
    assert time.perf_counter() - started < 2


def test_json_payload_size_limits() -> None:
    small = Limits(max_payload_bytes=10)
    assert json_decode('2["abcde"]', limits=small) == Event(name="abcde")
    json_rejects('2["abcdef"]', limits=small)
    head = '51-["a",{"_placeholder":true,"num":0}]'
    roomier = Limits(max_payload_bytes=len(head))
    assert json_decode(head, b"x" * len(head), limits=roomier) == Event(
        name="a", args=(b"x" * len(head),)
    )
    json_rejects(head, b"x" * (len(head) + 1), limits=roomier)


# --------------------------------------------------------------------------- JSON helpers


def test_json_helpers() -> None:
    assert dumps(["é", {"a": 1}]) == '["é",{"a":1}]'
    assert loads("xx[1, 2] ", 2, max_depth=1) == [1, 2]
    assert exceeds_depth("scalar", 0) is False
    assert exceeds_depth([], 0) is True
    assert exceeds_depth({"a": [{}]}, 3) is False
    assert exceeds_depth({"a": [{}]}, 2) is True
    with pytest.raises(RemoteProtocolError):
        loads("[[1]]", max_depth=1)


# --------------------------------------------------------------------------- encode refusals


@PARSERS
@pytest.mark.parametrize(
    "packet",
    [
        Event(name="connect"),
        Event(name="removeListener", namespace="/x"),
        Event(name="a", namespace="chat"),
        Event(name="a", namespace=""),
        Event(name="a", namespace="/a,b"),
        Event(name="a", ack_id=-1),
        Event(name="a", ack_id=MAX_SAFE_ACK_ID + 1),
        Ack(ack_id=-5),
        Ack(ack_id=1, namespace="x"),
        Connect(data=[1]),
        Connect(data="token"),
        Connect(namespace="nope"),
        Disconnect(namespace="/a,"),
        ConnectError(data=5),
        ConnectError(data=[1]),
        Event(name="a", args=(math.nan,)),
        Event(name="a", args=({"k": math.inf},)),
        Event(name="a", args=({1, 2},)),  # type: ignore[arg-type]  # not a JsonValue
        Event(name="a", args=(b"x", {1, 2})),  # type: ignore[arg-type]  # not a JsonValue
        Ack(ack_id=1, args=(object(),)),  # type: ignore[arg-type]  # not a JsonValue
        Connect(data={"k": object()}),  # type: ignore[dict-item]  # not a JsonValue
        ConnectError(data={"k": math.nan}),
    ],
)
def test_encoders_refuse_what_decoders_would_refuse(parser: Parser, packet: SioPacket) -> None:
    with pytest.raises(LocalProtocolError):
        parser.encode(packet)


def test_json_encoder_refuses_cycles_and_huge_nesting() -> None:
    cycle: list[JsonValue] = []
    cycle.append(cycle)
    with pytest.raises(LocalProtocolError):
        encode_json(Event(name="a", args=(cycle,)))
    deep: list[JsonValue] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(LocalProtocolError):
        encode_json(Ack(ack_id=1, args=(deep,)))


def test_json_encoder_refuses_non_string_keys_with_binary() -> None:
    with pytest.raises(LocalProtocolError):
        encode_json(Event(name="a", args=({(1, 2): b"x"},)))  # type: ignore[dict-item]  # the point


def test_msgpack_encoder_refuses_what_node_would_refuse() -> None:
    with pytest.raises(LocalProtocolError):
        MSGPACK_PARSER.encode(Event(name="a", args=(2**64,)))
    with pytest.raises(LocalProtocolError):
        MSGPACK_PARSER.encode(ConnectError(namespace="/x"))


@pytest.mark.parametrize(
    "args",
    [
        (1.7e308, -1.7e308),  # packed as cb 7f e. / cb ff e.: a false alarm, still finite
        (b"\xcb\x7f\xf0\x00", b"\xcb\xff"),  # the same bytes inside a bin
        ([1.5, [2.5, {"k": -1.0e300}]],),
    ],
)
def test_msgpack_non_finite_scan_has_no_false_positives(args: tuple[JsonValue, ...]) -> None:
    packet = Event(name="f", args=args)
    assert MSGPACK_PARSER.decoder().receive(MSGPACK_PARSER.encode(packet)[0]) == packet


# --------------------------------------------------------------------------- msgpack


def test_msgpack_frame_layout() -> None:
    (frame,) = MSGPACK_PARSER.encode(
        Event(name="e", args=(b"\x00", [1.5]), namespace="/n", ack_id=3)
    )
    assert isinstance(frame, bytes)
    decoded = msgpack.unpackb(frame)
    # The key order of a Node socket.io server's `socket.emit`, so the bytes match.
    assert list(decoded) == ["type", "data", "id", "nsp"]
    assert decoded == {"type": 2, "data": ["e", b"\x00", [1.5]], "id": 3, "nsp": "/n"}
    # bytes stay inline as msgpack bin (0xc4), no BINARY_EVENT and no placeholder
    assert b"\xc4\x01\x00" in frame


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (Connect(), {"type": 0, "nsp": "/"}),
        (
            Connect(namespace="/c", data={"sid": "x"}),
            {"type": 0, "data": {"sid": "x"}, "nsp": "/c"},
        ),
        (Disconnect(namespace="/d"), {"type": 1, "nsp": "/d"}),
        (Event(name="e"), {"type": 2, "data": ["e"], "nsp": "/"}),
        (Ack(ack_id=0, args=(b"z",)), {"id": 0, "type": 3, "data": [b"z"], "nsp": "/"}),
        (ConnectError(data={"message": "m"}), {"type": 4, "data": {"message": "m"}, "nsp": "/"}),
    ],
)
def test_msgpack_maps(packet: SioPacket, expected: dict[str, object]) -> None:
    (frame,) = MSGPACK_PARSER.encode(packet)
    assert isinstance(frame, bytes)
    decoded = msgpack.unpackb(frame)
    assert decoded == expected
    assert list(decoded) == list(expected)
    assert MSGPACK_PARSER.decoder().receive(frame) == packet


@pytest.mark.parametrize(
    ("obj", "packet"),
    [
        # python-socketio's MsgPackPacket writes nil data; socket.io-client adds "options".
        ({"type": 0, "data": None, "nsp": "/"}, Connect()),
        ({"type": 1, "data": None, "nsp": "/x"}, Disconnect(namespace="/x")),
        (
            {"type": 2, "data": ["e"], "options": {"compress": True}, "nsp": "/"},
            Event(name="e"),
        ),
        ({"nsp": "/", "id": 9, "data": ["e", 1], "type": 2}, Event(name="e", args=(1,), ack_id=9)),
        ({"type": 2, "data": ["e", None], "nsp": "/", "id": None}, Event(name="e", args=(None,))),
        # notepack.io: `undefined` is fixext 1 type 0; an ArrayBuffer is ext type 0.
        (
            {
                "type": 2,
                "data": ["e", msgpack.ExtType(0, b"\x00"), msgpack.ExtType(0, b"ab")],
                "nsp": "/",
            },
            Event(name="e", args=(None, b"ab")),
        ),
        ({"type": 0, "data": msgpack.ExtType(0, b"\x00"), "nsp": "/"}, Connect()),
        (
            {"type": 2, "data": ["e", msgpack.ExtType(0, b"abc")], "nsp": "/"},
            Event(name="e", args=(b"abc",)),
        ),
        (
            {"type": 2, "data": ["e", -(2**63), 2**64 - 1], "nsp": "/"},
            Event(name="e", args=(-(2**63), 2**64 - 1)),
        ),
    ],
)
def test_msgpack_decodes(obj: object, packet: SioPacket) -> None:
    assert MSGPACK_PARSER.decoder().receive(mp(obj)) == packet


def _deep(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth - 1):
        value = [value]
    return ["e", value]


@pytest.mark.parametrize(
    "frame",
    [
        "text",
        b"",
        b"\xc1",  # never-used byte
        b"\x81\xa4type",  # truncated
        mp({"type": 2, "data": ["e"], "nsp": "/"}) + b"\x00",  # trailing data
        mp([2, ["e"], "/"]),
        mp("map"),
        mp({"data": ["e"], "nsp": "/"}),
        mp({"type": None, "data": ["e"], "nsp": "/"}),
        mp({"type": True, "data": ["e"], "nsp": "/"}),
        mp({"type": 2.0, "data": ["e"], "nsp": "/"}),
        mp({"type": 7, "data": ["e"], "nsp": "/"}),
        # socket.io-msgpack-parser has no BINARY_EVENT / BINARY_ACK: bytes are inline.
        mp({"type": 5, "data": ["e", b"x"], "nsp": "/"}),
        mp({"type": 6, "data": [], "nsp": "/", "id": 2}),
        mp({"type": -1, "data": ["e"], "nsp": "/"}),
        mp({"type": 2, "data": ["e"]}),
        mp({"type": 2, "data": ["e"], "nsp": None}),
        mp({"type": 2, "data": ["e"], "nsp": b"/"}),
        mp({"type": 2, "data": ["e"], "nsp": "chat"}),
        mp({"type": 2, "data": ["e"], "nsp": ""}),
        mp({"type": 2, "data": ["e"], "nsp": "/" + "a" * 256}),
        mp({"type": 2, "data": ["e"], "nsp": "/", "id": True}),
        mp({"type": 2, "data": ["e"], "nsp": "/", "id": 1.0}),
        mp({"type": 2, "data": ["e"], "nsp": "/", "id": "1"}),
        mp({"type": 2, "data": ["e"], "nsp": "/", "id": -1}),
        mp({"type": 2, "data": ["e"], "nsp": "/", "id": MAX_SAFE_ACK_ID + 1}),
        mp({"type": 2, "nsp": "/"}),
        mp({"type": 2, "data": [], "nsp": "/"}),
        mp({"type": 2, "data": [1], "nsp": "/"}),
        mp({"type": 2, "data": [b"e"], "nsp": "/"}),
        mp({"type": 2, "data": ["connect"], "nsp": "/"}),
        mp({"type": 2, "data": {"e": 1}, "nsp": "/"}),
        mp({"type": 2, "data": ["e", *range(1_001)], "nsp": "/"}),
        mp({"type": 3, "data": [], "nsp": "/"}),
        mp({"type": 3, "data": "x", "nsp": "/", "id": 1}),
        mp({"type": 3, "data": list(range(1_001)), "nsp": "/", "id": 1}),
        mp({"type": 0, "data": [], "nsp": "/"}),
        mp({"type": 0, "data": "token", "nsp": "/"}),
        mp({"type": 0, "nsp": "/", "id": 1}),
        mp({"type": 1, "data": {}, "nsp": "/"}),
        mp({"type": 4, "data": 5, "nsp": "/"}),
        mp({"type": 4, "nsp": "/"}),  # socket.io-msgpack-parser wants a payload here
        mp({"type": 4, "data": None, "nsp": "/"}),
        mp({"type": 4, "data": [], "nsp": "/"}),
        mp({"type": 2, "data": ["e", math.nan], "nsp": "/"}),
        mp({"type": 2, "data": ["e", [math.inf]], "nsp": "/"}),
        mp({"type": 4, "data": -math.inf, "nsp": "/"}),
        mp({"type": 2, "data": ["e", {b"k": 1}], "nsp": "/"}),
        mp({"type": 2, "data": ["e", msgpack.ExtType(1, b"x")], "nsp": "/"}),
        mp({"type": 2, "data": ["e", msgpack.Timestamp(1, 0)], "nsp": "/"}),
        mp({"type": 4, "data": msgpack.Timestamp(1, 0), "nsp": "/"}),
        mp({"type": 2, "data": _deep(33), "nsp": "/"}),
        mp({"type": 2, "data": ["e", {"k": _deep(31)}], "nsp": "/"}),
        b"\x83\xa4type\x02\xa3nsp\xa1/\xa4data\x92\xa1e" + b"\x91" * 100_000 + b"\xc0",
        b"\x81\x01\x02",  # int map key
        b"\x81\x91\x01\x02",  # array map key
        b"\x83\xa4type\x02\xa3nsp\xa1/\xa4data\x92\xa1e\xa2\xff\xfe",  # invalid UTF-8
        b"\xdd\xff\xff\xff\xff",  # a 4-billion-item array header in 5 bytes
        b"\xc6\xff\xff\xff\xff",  # a 4 GB bin header
    ],
)
def test_msgpack_rejects(frame: str | bytes) -> None:
    msgpack_rejects(frame)


def test_msgpack_limits() -> None:
    ok = mp({"type": 2, "data": _deep(32), "nsp": "/"})
    assert isinstance(MSGPACK_PARSER.decoder().receive(ok), Event)
    frame = mp({"type": 2, "data": ["e", "x" * 100], "nsp": "/"})
    assert isinstance(
        MSGPACK_PARSER.decoder(Limits(max_payload_bytes=len(frame))).receive(frame), Event
    )
    msgpack_rejects(frame, Limits(max_payload_bytes=len(frame) - 1))
    msgpack_rejects(mp({"type": 2, "data": ["e"], "nsp": "/", "id": 100}), Limits(max_ack_id=99))
    msgpack_rejects(mp({"type": 2, "data": ["e", 1, 2], "nsp": "/"}), Limits(max_event_args=1))
    msgpack_rejects(mp({"type": 2, "data": ["e"], "nsp": "/abc"}), Limits(max_namespace_length=3))


def test_msgpack_200k_args_fail_fast() -> None:
    frame = mp({"type": 2, "data": ["e", *([0] * 200_000)], "nsp": "/"})
    started = time.perf_counter()
    msgpack_rejects(frame, Limits(max_payload_bytes=10_000_000))
    assert time.perf_counter() - started < 2


def mp_raw(obj: object, **raw: bytes) -> bytes:
    """Pack ``obj``, then swap each string ``"<name>"`` in it for the raw bytes ``raw[name]``.

    msgpack-python cannot write some encodings notepack.io writes (ext 8 with one byte of
    data, where it would pick fixext 1), so those frames are spliced by hand.
    """
    frame = mp(obj)
    for name, value in raw.items():
        marker = mp(f"<{name}>")
        assert frame.count(marker) == 1
        frame = frame.replace(marker, value)
    return frame


UNDEFINED = b"\xd4\x00\x00"  # notepack.io's `undefined`: fixext 1, type 0


def typed_array(data: bytes) -> bytes:
    """notepack.io's ArrayBuffer / typed array: ext 8, type 0 (never fixext)."""
    return bytes([0xC7, len(data), 0]) + data


def notepack_date(millis: int) -> bytes:
    """notepack.io's Date: fixext 8, type 0, milliseconds as a signed 64-bit int."""
    return b"\xd7\x00" + millis.to_bytes(8, "big", signed=True)


@pytest.mark.parametrize(
    ("frame", "packet"),
    [
        (
            mp_raw(
                {"type": 2, "data": ["up", "<a>", "<b>", "<c>"], "nsp": "/"},
                a=typed_array(b"\x00"),
                b=typed_array(b"12345678"),
                c=typed_array(b"xy"),
            ),
            Event(name="up", args=(b"\x00", b"12345678", b"xy")),
        ),
        (
            mp_raw({"type": 2, "data": ["ev", "<u>", 1], "nsp": "/"}, u=UNDEFINED),
            Event(name="ev", args=(None, 1)),
        ),
        (
            # socket.io 4.8 without connection state recovery: `pid: undefined` is dropped,
            # as JSON.stringify drops it.
            mp_raw({"type": 0, "data": {"sid": "s1", "pid": "<u>"}, "nsp": "/"}, u=UNDEFINED),
            Connect(data={"sid": "s1"}),
        ),
        (
            mp_raw({"type": 0, "data": "<u>", "nsp": "/", "id": "<v>"}, u=UNDEFINED, v=UNDEFINED),
            Connect(),
        ),
        (
            mp_raw(
                {"type": 2, "data": ["at", "<d>", "<e>", "<f>"], "nsp": "/"},
                d=notepack_date(1_700_000_000_123),
                e=notepack_date(-1),
                f=notepack_date(-62_135_596_800_000),
            ),
            Event(
                name="at",
                args=(
                    "2023-11-14T22:13:20.123Z",
                    "1969-12-31T23:59:59.999Z",
                    "0001-01-01T00:00:00.000Z",
                ),
            ),
        ),
        (
            mp_raw(
                {"type": 2, "data": ["d", {"k": ["<d>"]}], "nsp": "/a", "id": 5},
                d=notepack_date(253_402_300_799_999),
            ),
            Event(name="d", args=({"k": ["9999-12-31T23:59:59.999Z"]},), namespace="/a", ack_id=5),
        ),
    ],
)
def test_msgpack_reads_notepack_extensions(frame: bytes, packet: SioPacket) -> None:
    assert MSGPACK_PARSER.decoder().receive(frame) == packet


def _deep_exact(depth: int) -> bytes:
    # An event payload `depth` arrays deep, with an `undefined` inside to force the
    # byte-exact walk.
    inner = b"\x91" * (depth - 1) + UNDEFINED
    return mp_raw({"type": 2, "data": ["e", "<x>"], "nsp": "/"}, x=inner)


@pytest.mark.parametrize(
    "frame",
    [
        mp_raw({"type": 2, "data": ["e", "<u>"], "nsp": "/"}, u=UNDEFINED) + b"\x00",
        mp_raw({"type": 2, "data": ["e", "<u>"], "nsp": "/"}, u=UNDEFINED)[:-4],
        mp_raw(
            {"type": 2, "data": ["e", "<u>", "<x>"], "nsp": "/"}, u=UNDEFINED, x=b"\xd4\x05\x00"
        ),
        mp_raw(
            {"type": 2, "data": ["e", "<u>", "<x>"], "nsp": "/"}, u=UNDEFINED, x=b"\xc7\x02\x07ab"
        ),
        mp_raw({"type": 2, "data": ["e", "<u>", {1: 2}], "nsp": "/"}, u=UNDEFINED),
        mp_raw(
            {"type": 2, "data": ["e", "<u>", {"<x>": 2}], "nsp": "/"}, u=UNDEFINED, x=b"\x91\x01"
        ),
        mp_raw({"type": 2, "data": ["e", "<d>"], "nsp": "/"}, d=notepack_date(253_402_300_800_000)),
        mp_raw({"type": 2, "data": ["e", "<d>"], "nsp": "/"}, d=notepack_date(-62_135_596_800_001)),
        mp_raw({"type": 2, "data": ["e", "<d>"], "nsp": "/"}, d=notepack_date(-(2**63))),
        mp_raw({"type": 2, "data": ["e", "<d>"], "nsp": "/"}, d=b"\xd7\x00\x00\x00"),
        mp_raw({"type": 2, "data": ["<u>"], "nsp": "/"}, u=UNDEFINED),
        mp_raw({"type": 4, "data": "<u>", "nsp": "/"}, u=UNDEFINED),
        mp_raw({"type": 5, "data": ["e", "<u>"], "nsp": "/"}, u=UNDEFINED),
        UNDEFINED,
        _deep_exact(33),
        b"\x91" * 100_000 + UNDEFINED,
    ],
)
def test_msgpack_byte_exact_walk_rejects(frame: bytes) -> None:
    msgpack_rejects(frame)


def test_msgpack_byte_exact_walk_depth_limit() -> None:
    packet = MSGPACK_PARSER.decoder().receive(_deep_exact(32))
    assert isinstance(packet, Event)


# --------------------------------------------------------------------------- JSON numbers


@pytest.mark.parametrize(
    ("value", "text"),
    [
        # What JavaScript's String(number) prints (checked against Node 20).
        (0.00001, "0.00001"),
        (2.5e-5, "0.000025"),
        (1e-6, "0.000001"),
        (-3e-5, "-0.00003"),
        (1.25e-6, "0.00000125"),
        (1e-7, "1e-7"),
        (-1.5e-9, "-1.5e-9"),
        (1.5e-10, "1.5e-10"),
        (5e-324, "5e-324"),
        (0.0001, "0.0001"),
        (123.456, "123.456"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e21, "1e+21"),
        (1.5e300, "1.5e+300"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        # Integral floats below 1e21 keep Python's repr: they stay floats for our decoder.
        (2.0, "2.0"),
        (-0.0, "-0.0"),
        (1e16, "1e+16"),
        (1.2345678901234568e20, "1.2345678901234568e+20"),
        # ints are ints, however large
        (2**60, "1152921504606846976"),
        (-(2**64), "-18446744073709551616"),
    ],
)
def test_json_numbers_print_like_javascript(value: float, text: str) -> None:
    assert dumps([value]) == f"[{text}]"
    assert dumps({"k": [1, value, "e-0"]}) == f'{{"k":[1,{text},"e-0"]}}'  # the slow path
    assert loads(text, max_depth=1) == value


def test_json_slow_path_writes_what_the_fast_path_writes() -> None:
    value: JsonValue = {
        "e-0": ["e-0", None, True, False, 0, -7, 1.5, 'é\n\u2028😀"', [], {}],
        "nested": {"deep": [[{"x": 2.0}]]},
    }
    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_json_slow_path_coerces_keys_like_json_dumps() -> None:
    value = {True: 1, False: 2, None: 3, 4: 5, 1.5: 6, 1e-5: 7, "e-0": 8}
    expected = '{"true":1,"false":2,"null":3,"4":5,"1.5":6,"0.00001":7,"e-0":8}'
    assert dumps(value) == expected  # type: ignore[arg-type]  # non-str keys on purpose


@pytest.mark.parametrize(
    "value",
    [
        {"e-0": {(1, 2): 1}},
        {"e-0": {math.inf: 1}},
        {"e-0": [math.nan]},
        {"e-0": [object()]},
    ],
)
def test_dumps_refuses_what_json_dumps_refuses(value: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        dumps(value)  # type: ignore[arg-type]  # not JsonValues on purpose


@PARSERS
@pytest.mark.parametrize(
    "packet",
    [
        Event(name="s", args=("\ud800",)),
        Event(name="s", args=({"k": ["x\udfffy"]},)),
        Event(name="\udc00\ud800"),
        Ack(ack_id=1, args=("\ud83d",)),
        Connect(data={"\ud800": 1}),
        ConnectError(data="\udfff"),
    ],
)
def test_encoders_refuse_lone_surrogates(parser: Parser, packet: SioPacket) -> None:
    with pytest.raises(LocalProtocolError):
        parser.encode(packet)


# --------------------------------------------------------------------------- properties


@PARSERS
@FAST
@given(packet=packets)
def test_round_trip(parser: Parser, packet: SioPacket) -> None:
    if parser is MSGPACK_PARSER and isinstance(packet, ConnectError) and packet.data is None:
        with pytest.raises(LocalProtocolError):
            parser.encode(packet)
        return
    frames = parser.encode(packet)
    assert decode_all(parser, frames, ROOMY) == packet


@FAST
@given(packet=packets)
def test_json_binary_iff_bytes(packet: SioPacket) -> None:
    text, attachments = encode_json(packet)
    binary = text[0] in "56"
    assert binary == bool(attachments)
    assert all(isinstance(frame, bytes) for frame in attachments)


@FAST
@given(name=st.text(max_size=10), args=st.lists(values, max_size=3))
def test_json_packets_within_limits_decode_with_default_limits(
    name: str, args: list[JsonValue]
) -> None:
    if name in RESERVED_EVENTS or exceeds_depth([name, *args], DEFAULT_LIMITS.max_nesting_depth):
        return
    packet = Event(name=name, args=args)
    frames = JSON_PARSER.encode(packet)
    if len(frames) - 1 > DEFAULT_LIMITS.max_attachments:
        json_rejects(frames[0])  # refused on the text, before any attachment
        return
    assert decode_all(JSON_PARSER, frames, DEFAULT_LIMITS) == packet


def feed(decoder: Decoder, frames: list[str | bytes]) -> None:
    """Feed frames until the first error, which must be a RemoteProtocolError."""
    for frame in frames:
        try:
            decoder.receive(frame)
        except RemoteProtocolError:
            return


frames_any = st.lists(st.one_of(st.text(max_size=40), st.binary(max_size=40)), max_size=6)
sio_alphabet = st.sampled_from([*'0123456789-/,[]{}":_placeholdernumtrue ', "\\u", "1e999"])
sio_texts = st.builds(
    lambda head, body: head + body,
    st.sampled_from(["0", "1", "2", "3", "4", "5", "6", "51-", "52-", "61-2", "2/a,", "3/a,1"]),
    st.lists(sio_alphabet, max_size=30).map("".join),
)


@FAST
@given(frames=frames_any)
def test_fuzz_json_decoder(frames: list[str | bytes]) -> None:
    feed(JSON_PARSER.decoder(), frames)


@FAST
@given(frames=st.lists(st.one_of(sio_texts, st.binary(max_size=4)), max_size=6))
def test_fuzz_json_decoder_near_valid(frames: list[str | bytes]) -> None:
    feed(JSON_PARSER.decoder(), frames)


@FAST
@given(frames=st.lists(st.one_of(sio_texts, st.binary(max_size=4)), max_size=6))
def test_fuzz_json_decoder_tight_limits(frames: list[str | bytes]) -> None:
    tight = Limits(max_payload_bytes=20, max_attachments=1, max_ack_id=9, max_nesting_depth=2)
    feed(JSON_PARSER.decoder(tight), frames)


@FAST
@given(frames=frames_any)
def test_fuzz_msgpack_decoder(frames: list[str | bytes]) -> None:
    feed(MSGPACK_PARSER.decoder(), frames)


msgpack_junk = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(),
        st.text(max_size=5),
        st.binary(max_size=5),
        st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=3)),
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
msgpack_maps = st.fixed_dictionaries(
    {},
    optional={
        "type": st.integers(-1, 8) | msgpack_junk,
        "data": msgpack_junk | st.lists(msgpack_junk, max_size=3).map(lambda xs: ["e", *xs]),
        "nsp": st.sampled_from(["/", "/a", "a", ""]) | msgpack_junk,
        "id": st.integers(-1, 3) | msgpack_junk,
    },
)


@FAST
@given(obj=msgpack_maps)
def test_fuzz_msgpack_decoder_near_valid(obj: dict[str, object]) -> None:
    feed(MSGPACK_PARSER.decoder(), [mp(obj)])


# --------------------------------------------------------------------------- Node cross-check

_NODE_SCRIPT = r"""
const parser = require("socket.io-parser");
const msgpackParser = require("socket.io-msgpack-parser");
const revive = (v) => {
  if (Array.isArray(v)) return v.map(revive);
  if (v !== null && typeof v === "object") {
    if ("$bin" in v) return Buffer.from(v.$bin, "hex");
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = revive(x);
    return out;
  }
  return v;
};
const dump = (v) => {
  if (Buffer.isBuffer(v)) return { $bin: v.toString("hex") };
  if (Array.isArray(v)) return v.map(dump);
  if (v !== null && typeof v === "object") {
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = dump(x);
    return out;
  }
  return v;
};
const packetOut = (p) => {
  const out = { type: p.type, nsp: p.nsp };
  if (p.data !== undefined) out.data = dump(p.data);
  if (p.id !== undefined) out.id = p.id;
  return out;
};
const decodeWith = (DecoderClass, frames) => {
  const decoder = new DecoderClass();
  let got = null;
  decoder.on("decoded", (p) => { got = p; });
  try {
    for (const f of frames) decoder.add(typeof f === "string" ? f : Buffer.from(f.$bin, "hex"));
  } catch (err) {
    return { error: String(err) };
  }
  return packetOut(got);
};
let input = "";
process.stdin.on("data", (d) => { input += d; });
process.stdin.on("end", () => {
  const req = JSON.parse(input);
  const result = { json: [], msgpack: [], jsonDecoded: [], msgpackDecoded: [] };
  for (const p of req.jsonPackets) {
    result.json.push(new parser.Encoder().encode(revive(p)).map(dump));
  }
  for (const p of req.msgpackPackets) {
    result.msgpack.push(new msgpackParser.Encoder().encode(revive(p)).map(dump));
  }
  for (const frames of req.jsonFrames) {
    result.jsonDecoded.push(decodeWith(parser.Decoder, frames));
  }
  for (const frames of req.msgpackFrames) {
    result.msgpackDecoded.push(decodeWith(msgpackParser.Decoder, frames));
  }
  process.stdout.write(JSON.stringify(result));
});
"""


def _to_node(value: object) -> object:
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, list | tuple):
        return [_to_node(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_node(item) for key, item in value.items()}
    return value


def _node_packet(packet: SioPacket) -> dict[str, object]:
    """The packet object a Node socket.io server hands its parser (its key order)."""
    match packet:
        case Event():
            out: dict[str, object] = {"type": 2, "data": [packet.name, *packet.args]}
            if packet.ack_id is not None:
                out["id"] = packet.ack_id
        case Ack():
            out = {"id": packet.ack_id, "type": 3, "data": list(packet.args)}
        case Connect() | ConnectError():
            out = {"type": 0 if isinstance(packet, Connect) else 4}
            if packet.data is not None:
                out["data"] = packet.data
        case Disconnect():
            out = {"type": 1}
    out["nsp"] = packet.namespace
    return {key: _to_node(value) for key, value in out.items()}


def _random_value(rng: random.Random, depth: int = 0) -> JsonValue:
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-(2**53), 2**53)
    if kind == 3:
        # Non-integral multiples of 1/8 print the same in JavaScript and Python.
        return rng.randrange(-(10**6), 10**6) * 2 + 1 / 8 * rng.choice([1, 3, 5])
    if kind in (4, 5):
        alphabet = 'abcXYZ 019"\\/\n\t\x00\x1f\x7féü€😀\u2028[]{},:'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if kind == 6:
        return rng.randbytes(rng.randrange(6))
    if kind in (7, 8):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        f"k{n}{rng.choice('aé😀')}": _random_value(rng, depth + 1) for n in range(rng.randrange(4))
    }


def _random_packets(seed: int, count: int) -> list[SioPacket]:
    rng = random.Random(seed)
    out: list[SioPacket] = []
    for n in range(count):
        namespace = rng.choice(["/", "/admin", "/ünï", "/a/b"])
        ack_id = rng.choice([None, 0, 7, rng.randrange(MAX_SAFE_ACK_ID + 1)])
        args = tuple(_random_value(rng) for _ in range(rng.randrange(5)))
        match n % 6:
            case 0 | 1:
                out.append(Event(name=f"ev{n}é", args=args, namespace=namespace, ack_id=ack_id))
            case 2:
                out.append(Ack(ack_id=ack_id or 1, args=args, namespace=namespace))
            case 3:
                auth: list[JsonValue] = [None, {"token": "t", "n": [1, 2.5]}]
                out.append(Connect(namespace=namespace, data=rng.choice(auth)))
            case 4:
                errors: list[JsonValue] = [None, "bad", {"message": "no", "data": {"why": None}}]
                out.append(ConnectError(namespace=namespace, data=rng.choice(errors)))
            case _:
                out.append(Disconnect(namespace=namespace))
    return out


def _from_node(value: object) -> object:
    if isinstance(value, list):
        return [_from_node(item) for item in value]
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {key: _from_node(item) for key, item in value.items()}
    return value


def _node_frames(frames: list[object]) -> tuple[str | bytes, ...]:
    out: list[str | bytes] = []
    for frame in frames:
        decoded = _from_node(frame)
        assert isinstance(decoded, str | bytes)
        out.append(decoded)
    return tuple(out)


@pytest.mark.node
def test_matches_node_parsers(js_peers: Path) -> None:
    """We write what socket.io-parser 4.2.4 and socket.io-msgpack-parser 3.0.2 write, byte
    for byte, and each side decodes the other's output to the same packet."""
    corpus = _random_packets(seed=1234, count=300)
    corpus.append(Event(name="message", args=(b"\x01", {"x": [b"\x02", b""]}), ack_id=789))
    # socket.io-msgpack-parser refuses a CONNECT_ERROR without data, and so do we.
    refused = [p for p in corpus if isinstance(p, ConnectError) and p.data is None]
    assert refused
    for packet in refused:
        with pytest.raises(LocalProtocolError):
            MSGPACK_PARSER.encode(packet)
    mp_corpus = [p for p in corpus if p not in refused]
    ours_json = [JSON_PARSER.encode(p) for p in corpus]
    ours_msgpack = [MSGPACK_PARSER.encode(p) for p in mp_corpus]
    request = {
        "jsonPackets": [_node_packet(p) for p in corpus],
        "msgpackPackets": [_node_packet(p) for p in mp_corpus],
        "jsonFrames": [[_to_node(f) for f in frames] for frames in ours_json],
        "msgpackFrames": [[_to_node(f) for f in frames] for frames in ours_msgpack],
    }
    result = subprocess.run(
        ["node", "-e", _NODE_SCRIPT],
        cwd=js_peers,
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    node = json.loads(result.stdout)
    for parser, packets, ours_all, node_all in [
        (JSON_PARSER, corpus, ours_json, node["json"]),
        (MSGPACK_PARSER, mp_corpus, ours_msgpack, node["msgpack"]),
    ]:
        for sent, ours, theirs in zip(packets, ours_all, node_all, strict=True):
            assert ours == _node_frames(theirs), sent
            assert decode_all(parser, _node_frames(theirs), DEFAULT_LIMITS) == sent
    # Node decodes our frames to the packet object it would have sent itself
    # (socket.io-parser hands BINARY_EVENT/BINARY_ACK back as EVENT/ACK).
    for packets, decoded_all in [
        (corpus, node["jsonDecoded"]),
        (mp_corpus, node["msgpackDecoded"]),
    ]:
        for sent, decoded in zip(packets, decoded_all, strict=True):
            assert _from_node(decoded) == _from_node(_node_packet(sent)), sent
