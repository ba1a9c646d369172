"""Which WebSocket handshakes the HTTP front answers itself, and which go to wsproto.

A plain handshake (what every Socket.IO client sends) is answered without parsing its
head a second time; anything wsproto might judge differently goes to wsproto, which
answers exactly what is wrong. Either way the peer gets the same connection.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from roomcast.engine.transport.http import HttpRequest, plain_websocket_key
from roomcast.engine.transport.websocket import accept_plain_websocket

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
