"""The WebSocket upgrade heads the HTTP front parses itself, without h11.

Every Socket.IO client opens its WebSocket with the same plain head. The front parses
that head with h11's own grammar (a strict subset of it) and only feeds it to h11 when
the connection stays HTTP; anything else goes to h11 as before.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from roomcast.engine.errors import TransportClosed
from roomcast.engine.transport.http import HttpConnection, HttpRequest

HEAD = (
    b"GET /socket.io/?EIO=4&transport=websocket&x=%20y HTTP/1.1\r\n"
    b"Host: 127.0.0.1:5000\r\n"
    b"Connection: Upgrade\r\n"
    b"Upgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"X-Odd:   spaced  value \t\r\n"
    b"X-Latin: caf\xe9\r\n"
    b"X-Empty:\r\n"
    b"\r\n"
)


def _connection() -> tuple[
    HttpConnection,
    trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream],
]:
    server_side, client_side = trio.testing.memory_stream_pair()
    return HttpConnection(server_side, max_head_bytes=8192), client_side


async def _read(chunks: list[bytes]) -> tuple[HttpConnection, HttpRequest | None]:
    """``next_request`` on ``chunks``, each arriving in a read of its own."""
    http, client = _connection()
    result: list[HttpRequest | TransportClosed | None] = []

    async def read() -> None:
        try:
            result.append(await http.next_request())
        except TransportClosed as exc:
            result.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        for chunk in chunks:
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(chunk)
    if isinstance(result[0], TransportClosed):
        raise result[0]
    return http, result[0]


async def test_a_plain_upgrade_head_is_the_request_h11_reads() -> None:
    fast_http, fast = await _read([HEAD])
    # In two pieces the first read has no whole head: h11 reads it.
    slow_http, slow = await _read([HEAD[:10], HEAD[10:]])
    assert fast_http._head  # (parsed by the front, h11 has not seen it)
    assert not slow_http._head
    assert fast == slow
    assert fast is not None
    assert fast.query == {"EIO": "4", "transport": "websocket", "x": " y"}
    assert fast.headers["x-odd"] == "spaced  value"
    assert fast.headers["x-latin"] == "caf\u00e9"
    assert fast.headers["x-empty"] == ""
    assert fast.raw_headers[0] == (b"Host", b"127.0.0.1:5000")


@pytest.mark.parametrize(
    "head",
    [
        HEAD.replace(b"\r\n", b"\n"),  # bare LF lines (h11 takes them)
        HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
        HEAD.replace(b"GET ", b"POST "),
        HEAD.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        HEAD.replace(b"Host: 127.0.0.1:5000\r\n", b""),
        HEAD.replace(b"Host: 127.0.0.1:5000\r\n", b"Host: a\r\nHost: b\r\n"),
        HEAD.replace(b"X-Empty:\r\n", b"Content-Length: 0\r\n"),
        HEAD.replace(b"X-Empty:\r\n", b"Transfer-Encoding: chunked\r\n"),
        HEAD.replace(b"X-Empty:\r\n", b"X-Empty:\r\n folded\r\n"),  # obs-fold
        HEAD.replace(b"X-Empty:", b"X-Empty :"),  # space before the colon
        HEAD.replace(b"X-Empty:", b"X-Em\x00pty:"),
    ],
)
async def test_any_other_head_goes_to_h11(head: bytes) -> None:
    async def outcome(chunks: list[bytes]) -> HttpRequest | str:
        try:
            http, request = await _read(chunks)
        except TransportClosed as exc:  # h11 refused it
            return str(exc)
        assert not http._head  # (never parsed by the front)
        assert request is not None
        return request

    # Whole in one read or in two pieces (which the front never parses), h11 decides.
    assert await outcome([head]) == await outcome([head[:10], head[10:]])


async def test_a_head_over_the_limit_goes_to_h11_and_gets_431() -> None:
    http, client = _connection()
    big = HEAD.replace(b"X-Empty:", b"X-Big: " + b"a" * 9000)
    await client.send_all(big)
    with pytest.raises(TransportClosed, match="too large"):
        await http.next_request()
    assert (await client.receive_some()).startswith(b"HTTP/1.1 431 ")


async def test_a_refused_upgrade_is_answered_through_h11_and_the_connection_ends() -> None:
    http, client = _connection()
    await client.send_all(HEAD)
    request = await http.next_request()
    assert request is not None
    assert http._head
    await http.respond(403, b"no", close=True)
    answer = await client.receive_some()
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"content-length: 2\r\n" in answer.lower()
    assert answer.endswith(b"\r\n\r\nno")
    assert not http.reusable


def _masked_text(text: bytes) -> bytes:
    return (
        b"\x81"
        + bytes((0x80 | len(text),))
        + b"abcd"
        + bytes(b ^ b"abcd"[i % 4] for i, b in enumerate(text))
    )


async def test_bytes_after_a_plain_head_go_to_the_websocket_with_it() -> None:
    http, client = _connection()
    await client.send_all(HEAD + _masked_text(b"hi"))  # (too early, but not lost)
    request = await http.next_request()
    assert request is not None
    transport = await http.accept_websocket(request, max_message_bytes=1000, compression=False)
    assert not transport.fast  # wsproto's handshake, which keeps the bytes after the head
    await client.send_all(_masked_text(b"there"))
    assert await transport.receive_message() == "hi"
    assert await transport.receive_message() == "there"
