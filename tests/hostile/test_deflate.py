"""permessage-deflate (RFC 7692): opt-in, negotiated strictly, bounded when inflating.

Most cases run on examples/ws_echo.py (the engine's WebSocket transport, echoing), live on
127.0.0.1; the offer table runs on in-memory streams; the engine itself is checked for
the default (off).
"""

from __future__ import annotations

import contextlib
import inspect
import zlib
from functools import partial

import pytest
import trio
import trio.testing
from wsproto.events import TextMessage

from examples.ws_echo import serve_ws_echo
from roomcast.engine import Config
from roomcast.engine.front import EngineFront
from roomcast.engine.transport.websocket import DEFLATE_THRESHOLD, accept_websocket

from .conftest import Live, build_server, hostile_config, peak_rss_bytes, serve_live
from .wire import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    RawWebSocket,
    build_frame,
    open_raw_websocket,
    open_socketio,
)

LIMIT = 1_000_000


def deflate(data: bytes, *, chunks: int = 1) -> bytes:
    """A raw deflate stream of ``data`` repeated ``chunks`` times, without the
    ``00 00 ff ff`` tail (RFC 7692 §7.2.1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [compressor.compress(data) for _ in range(chunks)]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]


@pytest.fixture
async def echo(nursery: trio.Nursery) -> tuple[str, int]:
    """examples/ws_echo.py with compression on and a 1 MB message limit."""
    serve = partial(serve_ws_echo, "127.0.0.1", 0, max_message_bytes=LIMIT, compression=True)
    address: tuple[str, int] = await nursery.start(serve)
    return address


async def open_echo(address: tuple[str, int], *, deflate: bool = True) -> RawWebSocket:
    return await open_raw_websocket(*address, target="/", deflate=deflate)


async def test_compressed_messages_are_inflated_and_echoed(echo: tuple[str, int]) -> None:
    ws = await open_echo(echo)
    assert [e.name for e in ws.extensions] == ["permessage-deflate"]
    text = "hello, deflate " * 1000
    for _ in range(3):  # with the client's context takeover
        await ws.send(text)
        assert await ws.receive_message() == text
    await ws.send(b"\x00\x01" * 5000)
    assert await ws.receive_message() == b"\x00\x01" * 5000
    # Uncompressed messages (RSV1 clear) are still fine.
    await ws.send_frame(OP_TEXT, b"plain")
    assert await ws.receive_message() == "plain"
    await ws.aclose()


async def test_a_compression_bomb_is_refused_with_1009_and_bounded_memory(
    echo: tuple[str, int],
) -> None:
    bomb = deflate(b"\x00" * 1_000_000, chunks=200)  # 200 MB inflated, ~200 kB sent
    assert len(bomb) < 300_000
    peak = peak_rss_bytes()
    ws = await open_echo(echo)
    with contextlib.suppress(trio.BrokenResourceError):
        await ws.send_frame(OP_BINARY, bomb, rsv=4)
    with trio.fail_after(10):
        messages, closed = await ws.receive_until_closed()
    await ws.aclose()
    assert messages == []
    assert closed.code == 1009
    assert peak_rss_bytes() - peak < 50 * 1024 * 1024


async def test_a_bomb_spread_over_fragments_is_refused(echo: tuple[str, int]) -> None:
    bomb = deflate(b"a" * 100_000, chunks=30)  # 3 MB of text
    pieces = [bomb[i : i + 1000] for i in range(0, len(bomb), 1000)]
    ws = await open_echo(echo)
    frames = [build_frame(OP_TEXT, pieces[0], fin=False, rsv=4)]
    frames += [build_frame(OP_CONTINUATION, p, fin=False) for p in pieces[1:]]
    frames.append(build_frame(OP_CONTINUATION, b""))
    with contextlib.suppress(trio.BrokenResourceError):
        await ws.send_raw(b"".join(frames))
    with trio.fail_after(10):
        _, closed = await ws.receive_until_closed()
    await ws.aclose()
    assert closed.code == 1009


async def test_a_message_just_under_the_limit_inflates(echo: tuple[str, int]) -> None:
    data = b"z" * LIMIT
    ws = await open_echo(echo)
    await ws.send_frame(OP_BINARY, deflate(data), rsv=4)
    with trio.fail_after(10):
        assert await ws.receive_message() == data
    await ws.aclose()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (build_frame(OP_BINARY, b"\xff\xff\xff not deflate", rsv=4), 1007),
        (build_frame(OP_PING, b"", rsv=4), 1002),  # control frames are never compressed
        (
            build_frame(OP_TEXT, deflate(b"ab"), fin=False, rsv=4)
            + build_frame(OP_CONTINUATION, deflate(b"cd"), rsv=4),
            1002,
        ),  # RSV1 on a continuation
        (build_frame(OP_TEXT, b"x", rsv=2), 1002),  # RSV2 means nothing here
        (build_frame(OP_TEXT, deflate(b"\xff\xfe"), rsv=4), 1007),  # inflates to bad UTF-8
    ],
)
async def test_bad_compressed_frames_close(echo: tuple[str, int], frame: bytes, code: int) -> None:
    ws = await open_echo(echo)
    await ws.send_raw(frame)
    with trio.fail_after(5):
        _, closed = await ws.receive_until_closed()
    await ws.aclose()
    assert closed.code == code


async def test_large_messages_go_out_compressed_and_small_ones_plain() -> None:
    client, server = trio.testing.memory_stream_pair()
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import Request
    from wsproto.extensions import PerMessageDeflate

    peer = WSConnection(ConnectionType.CLIENT)
    head = peer.send(Request(host="x", target="/", extensions=[PerMessageDeflate()]))
    transport = await accept_websocket(server, head, max_message_bytes=LIMIT, compression=True)
    assert transport.deflate is not None
    peer.receive_data(bytes(await client.receive_some()))
    big = "b" * (DEFLATE_THRESHOLD * 4)
    await transport.send(["small", big])
    wire = bytes(await client.receive_some())
    small_frame, big_frame = wire[:7], wire[7:]
    assert small_frame[0] == 0x81
    assert small_frame[2:] == b"small"
    assert big_frame[0] == 0xC1  # FIN, RSV1, text
    assert len(big_frame) < 100
    peer.receive_data(wire)
    texts = [e.data for e in peer.events() if isinstance(e, TextMessage)]
    assert texts == ["small", big]


def _upgrade(offer: str | None) -> bytes:
    lines = [
        "GET / HTTP/1.1",
        "Host: x",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if offer is not None:
        lines.append(f"Sec-WebSocket-Extensions: {offer}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ("permessage-deflate", "permessage-deflate"),
        ("permessage-deflate; client_max_window_bits", "permessage-deflate"),
        ("permessage-deflate; client_max_window_bits=10", "permessage-deflate"),
        (
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10",
        ),
        (
            'permessage-deflate; server_max_window_bits="12"',
            "permessage-deflate; server_max_window_bits=12",
        ),
        (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        ("permessage-deflate; server_max_window_bits=8", None),  # zlib cannot do 8 bits
        ("permessage-deflate; server_max_window_bits", None),  # the value is required
        ("permessage-deflate; server_max_window_bits=16", None),
        ("permessage-deflate; server_max_window_bits=abc", None),
        ("permessage-deflate; server_max_window_bits=010", None),
        ("permessage-deflate; client_max_window_bits=7", None),
        ("permessage-deflate; server_no_context_takeover=1", None),
        ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
        ("permessage-deflate; unknown_parameter", None),
        ("x-webkit-deflate-frame", None),
        # The first acceptable offer wins, untouched by the others.
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; "
            "client_no_context_takeover",
            "permessage-deflate; client_no_context_takeover",
        ),
        (
            "permessage-deflate; server_max_window_bits=9, permessage-deflate; "
            "client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=9",
        ),
        (None, None),
    ],
)
async def test_offers_are_negotiated_strictly(offer: str | None, answer: str | None) -> None:
    client, server = trio.testing.memory_stream_pair()
    transport = await accept_websocket(
        server, _upgrade(offer), max_message_bytes=LIMIT, compression=True
    )
    response = (await client.receive_some()).decode()
    assert response.startswith("HTTP/1.1 101 ")
    headers = dict(line.split(": ", 1) for line in response.split("\r\n")[1:] if ": " in line)
    assert headers.get("Sec-WebSocket-Extensions") == answer
    assert (transport.deflate is not None) == (answer is not None)


async def test_compression_off_declines_every_offer() -> None:
    client, server = trio.testing.memory_stream_pair()
    transport = await accept_websocket(
        server, _upgrade("permessage-deflate"), max_message_bytes=LIMIT
    )
    assert "Sec-WebSocket-Extensions" not in (await client.receive_some()).decode()
    assert transport.deflate is None


async def test_the_engine_does_not_compress_by_default(live: Live) -> None:
    assert Config().websocket_compression is False
    ws = await open_raw_websocket(live.host, live.port, deflate=True)
    assert ws.extensions == []
    await ws.aclose()


_WIRED = "compression" in inspect.getsource(EngineFront._accept_websocket)


@pytest.mark.skipif(not _WIRED, reason="the front does not pass websocket_compression yet")
async def test_the_engine_with_compression_refuses_a_bomb() -> None:
    config = hostile_config(websocket_compression=True)
    async with serve_live(build_server(config)) as live:
        ws = await open_raw_websocket(live.host, live.port, deflate=True)
        assert [e.name for e in ws.extensions] == ["permessage-deflate"]
        assert isinstance(await ws.receive_message(), str)  # the Engine.IO handshake
        await ws.send("40")
        assert str(await ws.receive_message()).startswith("40{")
        payload = "compressible " * 500
        await ws.send(f'421["echo","{payload}"]')
        assert await ws.receive_message() == f'431["{payload}"]'  # echo acks its arguments
        await ws.send_frame(OP_TEXT, deflate(b"4" * 1_000_000, chunks=100), rsv=4)
        with trio.fail_after(5):
            _, closed = await ws.receive_until_closed()
        await ws.aclose()
        assert closed.code == 1009
        await live.drained()
        assert live.reasons == ["message too big"]
        plain = await open_socketio(live.host, live.port)  # a client without deflate
        await plain.aclose()
