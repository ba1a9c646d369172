"""WebSocket compliance of the engine's transport, through examples/ws_echo.py.

The full check is Autobahn|Testsuite (cases 1-10, 12-13: test_autobahn.py, opt-in, and
docs/hardening.md). This is its quick subset for every CI run, one case per category:
framing and lengths, fragmentation, ping/pong, reserved bits and opcodes, UTF-8, close
codes, and the message size limit.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio

from examples.ws_echo import serve_ws_echo

from .wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Closed,
    build_frame,
    open_raw_websocket,
)

LIMIT = 100_000


@pytest.fixture
async def echo(nursery: trio.Nursery) -> tuple[str, int]:
    address: tuple[str, int] = await nursery.start(
        partial(serve_ws_echo, "127.0.0.1", 0, max_message_bytes=LIMIT)
    )
    return address


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, LIMIT])
async def test_lengths_are_echoed(echo: tuple[str, int], size: int) -> None:  # Autobahn 1.*
    ws = await open_raw_websocket(*echo, target="/")
    await ws.send("*" * size)
    await ws.send(b"\xfe" * size)
    assert await ws.receive_message() == "*" * size
    assert await ws.receive_message() == b"\xfe" * size
    await ws.aclose()


async def test_pings_get_their_pongs_and_close_is_answered(echo: tuple[str, int]) -> None:
    ws = await open_raw_websocket(*echo, target="/")  # Autobahn 2.*, 7.1.*
    await ws.send_raw(b"".join(build_frame(OP_PING, b"p%d" % i) for i in range(10)))
    await ws.send_frame(OP_PONG, b"unsolicited")  # ignored
    await ws.send_frame(OP_CLOSE, b"\x03\xe8")
    # wsproto answers pings in our reader; collect the raw pongs before the close.
    pongs = []
    while True:
        event = await ws._next_event()
        assert event is not None
        name = type(event).__name__
        if name == "Pong":
            pongs.append(event.payload)  # type: ignore[attr-defined]
        if name == "CloseConnection":
            assert event.code == 1000  # type: ignore[attr-defined]
            break
    assert pongs == [b"p%d" % i for i in range(10)]
    await ws.aclose()


async def test_fragments_with_interleaved_pings(echo: tuple[str, int]) -> None:  # 5.*
    ws = await open_raw_websocket(*echo, target="/")
    await ws.send_raw(
        build_frame(OP_TEXT, b"frag", fin=False)
        + build_frame(OP_PING, b"mid")
        + build_frame(OP_CONTINUATION, b"ment", fin=False)
        + build_frame(OP_CONTINUATION, "\u00e9".encode())
    )
    assert await ws.receive_message() == "fragment\u00e9"
    await ws.aclose()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (build_frame(OP_TEXT, b"x", rsv=1), 1002),  # 3.*: reserved bits
        (build_frame(OP_TEXT, b"x", rsv=7), 1002),
        (build_frame(0x3, b""), 1002),  # 4.*: reserved opcodes
        (build_frame(0xF, b""), 1002),
        (build_frame(OP_CONTINUATION, b"x"), 1002),  # 5.*: nothing to continue
        (build_frame(OP_PING, b"x", fin=False), 1002),
        (build_frame(OP_TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"), 1007),
        (build_frame(OP_TEXT, b"\xf4\x90\x80\x80"), 1007),  # 6.*: over U+10FFFF
        (build_frame(OP_CLOSE, b"\x03"), 1002),  # 7.*: a one-byte close payload
        (build_frame(OP_CLOSE, b"\x03\xed"), 1002),  # 1005 may not be sent
        (build_frame(OP_CLOSE, b"\x13\x88"), 1002),  # 5000 is not a defined code
        (build_frame(OP_CLOSE, b"\x03\xe8\xff"), 1007),  # close reason not UTF-8
        (build_frame(OP_BINARY, b"\x00" * (LIMIT + 1)), 1009),  # 9.*: over the limit
        (build_frame(OP_TEXT, b"x", mask=False), 1002),  # RFC 6455 §5.1
    ],
)
async def test_violations_close_with_the_right_code(
    echo: tuple[str, int], frame: bytes, code: int
) -> None:
    ws = await open_raw_websocket(*echo, target="/")
    await ws.send_raw(frame)
    with trio.fail_after(5):
        messages, closed = await ws.receive_until_closed()
    await ws.aclose()
    assert messages == []
    assert closed.code == code


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 3000, 4999])
async def test_valid_close_codes_are_echoed(echo: tuple[str, int], code: int) -> None:  # 7.7.*
    ws = await open_raw_websocket(*echo, target="/")
    await ws.send_frame(OP_CLOSE, code.to_bytes(2, "big") + b"bye")
    with trio.fail_after(5):
        _, closed = await ws.receive_until_closed()
    await ws.aclose()
    assert closed == Closed(code, "bye")


async def test_a_plain_http_request_is_refused(echo: tuple[str, int]) -> None:
    stream = await trio.open_tcp_stream(*echo)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    await stream.aclose()
