"""Short hypothesis runs over every fuzz target (tests/fuzz/targets.py), for CI.

Inputs are arbitrary bytes and mutations of valid inputs (flipped, inserted, deleted,
duplicated and truncated bytes), so the fuzzer gets past the first check of each
decoder. The long run is ``python bench/fuzz_long.py`` (docs/hardening.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomcast.protocol import LogRecord, RecordKind, encode_record

from ..hostile.wire import OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_TEXT, build_frame
from .targets import (
    FRAME_SEPARATOR,
    TARGETS,
    http_front,
    websocket_stream,
)

SEP = FRAME_SEPARATOR
EXAMPLES = 150
FAST = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _log_corpus() -> list[bytes]:
    records = [
        LogRecord(
            offset=i,
            time=1_700_000_000.5 + i,
            namespace="/",
            room="r",
            kind=RecordKind.MESSAGE,
            sender="s1",
            event="say",
            args=("hi", i, b"\x00", [1, {"k": None}]),
            epoch="e",
        )
        for i in range(3)
    ]
    frames = [encode_record(r) for r in records]
    return [frames[0], b"".join(frames)]


def _msgpack(obj: object) -> bytes:
    data = msgpack.packb(obj)
    assert isinstance(data, bytes)
    return data


CORPUS: dict[str, list[bytes]] = {
    "eio_frame": [b"0", b'0{"sid":"a"}', b"2probe", b"3", b"4hello", b"\x01\x02", b"5", b"6"],
    "eio_payload": [b"4hello\x1e4world", b"bAQID\x1e2", b"1", b"6\x1e6\x1e6"],
    "eio_handshake": [
        b'0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,'
        b'"pingTimeout":20000,"maxPayload":1000000}'
    ],
    "sio_json": [
        SEP.join(
            [
                b"t40",
                b't42["echo",1]',
                b't4212["echo",{"a":[1,2.5,"x",null,true]}]',
                b't451-["e",{"_placeholder":true,"num":0}]',
                b"b\x01\x02",
                b't43/chat,7["ok"]',
                b"t41",
                b't40/chat,{"token":"x"}',
            ]
        )
    ],
    "sio_msgpack": [
        SEP.join(
            [
                b"b" + _msgpack({"type": 0, "nsp": "/"}),
                b"b" + _msgpack({"type": 2, "nsp": "/", "data": ["echo", 1, b"\x00"]}),
                b"b" + _msgpack({"type": 2, "nsp": "/", "id": 3, "data": ["e", {"a": [1.5]}]}),
                b"b" + _msgpack({"type": 3, "nsp": "/", "id": 3, "data": []}),
                b"b" + _msgpack({"type": 1, "nsp": "/"}),
            ]
        )
    ],
    "json": [b'["echo",{"a":[1,-2.5e3,"\\u00e9\\ud83d\\ude00",null,true,false]}]', b"{}"],
    "log": _log_corpus(),
}

WEBSOCKET_CORPUS = [
    build_frame(OP_TEXT, b'42["echo",1]')
    + build_frame(OP_PING, b"hi")
    + build_frame(OP_BINARY, b"\x00" * 200)
    + build_frame(OP_TEXT, b"4", fin=False)
    + build_frame(OP_CONTINUATION, b"2")
    + build_frame(OP_CLOSE, b"\x03\xe8bye"),
    # A compressed message (RSV1): "hello" deflated.
    build_frame(OP_TEXT, bytes.fromhex("cb48cdc9c90700"), rsv=4),
]

_HEAD = b"GET /socket.io/?EIO=4&transport=%s HTTP/1.1\r\nHost: x\r\n"
HTTP_CORPUS = [
    _HEAD % b"polling" + b"\r\n",
    SEP.join(
        [
            _HEAD % b"websocket"
            + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            build_frame(OP_TEXT, b"40") + build_frame(OP_TEXT, b'421["echo",1]'),
        ]
    ),
    b"POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 5\r\n\r\n4abcd",
    b"OPTIONS /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n"
    b"Origin: http://x\r\nAccess-Control-Request-Headers: a\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /static/../../etc/passwd HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
]


@st.composite
def mutated(draw: st.DrawFn, corpus: Sequence[bytes]) -> bytes:
    """A corpus entry with a few random edits."""
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 32))]
        else:
            del data[at:]
    return bytes(data)


def inputs(corpus: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), mutated(corpus))


def _check(name: str) -> Callable[[], None]:
    target = TARGETS[name]

    @FAST
    @given(data=inputs(CORPUS[name]))
    def run(data: bytes) -> None:
        target(data)

    return run


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_decoders_raise_only_remote_protocol_errors(name: str) -> None:
    _check(name)()


def test_the_corpus_is_valid() -> None:
    # Each corpus entry goes through its target untouched: the mutations start from
    # inputs that reach deep into the decoders.
    for name, corpus in CORPUS.items():
        for data in corpus:
            TARGETS[name](data)


@FAST
@given(data=inputs(WEBSOCKET_CORPUS), compression=st.booleans())
async def test_the_websocket_reader_only_ever_closes(data: bytes, compression: bool) -> None:
    await websocket_stream(data, compression=compression)


@settings(FAST, max_examples=EXAMPLES // 2)
@given(data=inputs(HTTP_CORPUS))
async def test_the_http_front_never_raises_and_always_ends(data: bytes) -> None:
    await http_front(data)
