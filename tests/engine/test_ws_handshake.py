"""Which WebSocket handshakes the HTTP front answers itself, and which go to wsproto.

A plain handshake (what every Socket.IO client sends) is answered without parsing its
head a second time; anything wsproto might judge differently goes to wsproto, which
answers exactly what is wrong. Either way the peer gets the same connection.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Request, TextMessage

from roomcast.engine.transport.http import HttpRequest, plain_websocket_key
from roomcast.engine.transport.websocket import (
    WebSocketTransport,
    accept_plain_websocket,
    accept_websocket,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
PLAIN = (
    (b"host", b"127.0.0.1:5000"),
    (b"upgrade", b"websocket"),
    (b"connection", b"keep-alive, Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
)


def _request(raw: tuple[tuple[bytes, bytes], ...], method: str = "GET") -> HttpRequest:
    return HttpRequest(
        method=method,
        target="/socket.io/?EIO=4&transport=websocket",
        path="/socket.io/",
        query={"EIO": "4", "transport": "websocket"},
        headers={k.decode("latin-1"): v.decode("latin-1") for k, v in raw},
        raw_headers=raw,
        remote=None,
    )


def _without(name: bytes) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(h for h in PLAIN if h[0] != name)


def test_a_plain_handshake_is_answered_by_the_front() -> None:
    assert plain_websocket_key(_request(PLAIN), compression=False) == KEY


@pytest.mark.parametrize(
    "raw",
    [
        _without(b"host"),
        _without(b"sec-websocket-key"),
        _without(b"connection"),
        (*_without(b"sec-websocket-version"), (b"sec-websocket-version", b"8")),
        (*_without(b"upgrade"), (b"upgrade", b"h2c")),
        (*_without(b"connection"), (b"connection", b"keep-alive")),
        (*PLAIN, (b"sec-websocket-key", b"c2Vjb25kIGtleSBoZXJlIQ==")),  # twice
        (*PLAIN, (b"sec-websocket-protocol", b"chat")),
        (*_without(b"sec-websocket-extensions"), (b"sec-websocket-extensions", b"x; \xff")),
        (*_without(b"host"), (b"host", "h\u00f6st".encode("latin-1"))),
    ],
)
def test_anything_wsproto_might_judge_goes_to_wsproto(
    raw: tuple[tuple[bytes, bytes], ...],
) -> None:
    assert plain_websocket_key(_request(raw), compression=False) is None


def test_with_compression_on_an_offer_goes_to_wsproto_to_be_agreed() -> None:
    assert plain_websocket_key(_request(PLAIN), compression=True) is None
    assert plain_websocket_key(_request(_without(b"sec-websocket-extensions")), compression=True)


def test_a_post_goes_to_wsproto() -> None:
    assert plain_websocket_key(_request(PLAIN, method="POST"), compression=False) is None


async def test_the_front_s_answer_is_the_one_a_client_accepts() -> None:
    server_side, client_side = trio.testing.memory_stream_pair()
    client = WSConnection(ConnectionType.CLIENT)
    client.send(Request(host="127.0.0.1:5000", target="/"))  # (sets the client's nonce)
    nonce = client.handshake._nonce  # the key it will check
    assert nonce is not None
    transport = await accept_plain_websocket(server_side, nonce, max_message_bytes=1000)
    client.receive_data(bytes(await client_side.receive_some()))
    assert isinstance(next(client.events()), AcceptConnection)
    await transport.send(["hello"])
    client.receive_data(bytes(await client_side.receive_some()))
    assert [e.data for e in client.events() if isinstance(e, TextMessage)] == ["hello"]


def _socket_pair() -> tuple[trio.SocketStream, socket.socket]:
    """The server's stream on a real socket (so the non-blocking writes apply) and the
    peer's end, a plain socket that reads with a timeout."""
    server_end, peer = socket.socketpair()
    peer.settimeout(5)
    return trio.SocketStream(trio.socket.from_stdlib_socket(server_end)), peer


def _client_with_nonce() -> tuple[WSConnection, bytes]:
    client = WSConnection(ConnectionType.CLIENT)
    client.send(Request(host="127.0.0.1:5000", target="/"))
    nonce = client.handshake._nonce
    assert nonce is not None
    return client, nonce


async def _accepted_answering_later() -> tuple[WebSocketTransport, WSConnection, socket.socket]:
    """A plain handshake accepted with ``answer_later``: the transport, the client (to
    read what the server sends) and the peer's socket."""
    stream, peer = _socket_pair()
    client, nonce = _client_with_nonce()
    transport = await accept_plain_websocket(
        stream, nonce, max_message_bytes=1000, answer_later=True
    )
    return transport, client, peer


def _texts(events: list[Event]) -> list[str]:
    return [str(e.data) for e in events if isinstance(e, TextMessage)]


async def test_an_answer_given_later_goes_out_with_the_first_frames_in_one_write() -> None:
    transport, client, peer = await _accepted_answering_later()
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing is written yet
        peer.recv(4096)
    peer.settimeout(5)
    assert transport.send_now(("0open",)) is None  # no shortcut past the answer
    assert transport.write_nowait(["0open"])
    client.receive_data(peer.recv(4096))  # the answer and the frame, in one write
    events = list(client.events())
    assert isinstance(events[0], AcceptConnection)
    assert _texts(events[1:]) == ["0open"]
    assert transport.send_now(("after",)) == b""  # the shortcut is open again
    client.receive_data(peer.recv(4096))
    assert _texts(list(client.events())) == ["after"]
    await transport.aclose()
    peer.close()


async def test_an_answer_given_later_precedes_what_the_writer_task_sends() -> None:
    transport, client, peer = await _accepted_answering_later()
    await transport.send(["hello"])
    client.receive_data(peer.recv(4096))
    events = list(client.events())
    assert isinstance(events[0], AcceptConnection)
    assert _texts(events[1:]) == ["hello"]
    await transport.aclose()
    peer.close()


async def test_closing_before_any_frame_still_sends_the_answer_then_the_close() -> None:
    transport, client, peer = await _accepted_answering_later()
    await transport.aclose(1001, "going away")
    received = b""
    while chunk := peer.recv(4096):
        received += chunk
    client.receive_data(received)
    events = list(client.events())
    assert isinstance(events[0], AcceptConnection)
    assert [(e.code, e.reason) for e in events[1:] if isinstance(e, CloseConnection)] == [
        (1001, "going away")
    ]
    peer.close()


async def test_frames_sent_before_the_answer_are_not_dropped() -> None:
    # RFC 6455 §4.1 says a client waits for the answer; one that does not still loses
    # nothing (wsproto's server side would drop the bytes after the head).
    server_side, _client_side = trio.testing.memory_stream_pair()
    head = WSConnection(ConnectionType.CLIENT).send(Request(host="127.0.0.1:5000", target="/"))
    early = b"\x81\x82abcd" + bytes(b ^ k for b, k in zip(b"hi", b"ab", strict=True))
    transport = await accept_websocket(server_side, head + early, max_message_bytes=1000)
    with trio.fail_after(5):  # (nothing else will come to read)
        assert await transport.receive_message() == "hi"
