"""Raw wire clients for the conformance tests: HTTP/1.1 on h11 and WebSocket on trio-websocket.

Nothing here knows Engine.IO beyond building its query strings: the tests spell out every
packet, status and body themselves, as docs/conformance.md does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final

import attrs
import h11
import trio
import trio.testing
import trio_websocket

__all__ = [
    "Endpoint",
    "HttpClient",
    "Response",
    "WS_UPGRADE_HEADERS",
    "eio_target",
    "expect_ws_closed",
    "open_ws",
    "ws_handshake",
]

_RECEIVE_BYTES: Final = 65_536
REMOTE_SETTLE: Final = 0.1
"""Seconds a server in another process gets to take what a test sent (well below the
conformance app's 300 ms ping interval)."""
WS_DISCONNECT_TIMEOUT: Final = 0.5
"""Seconds a test's WebSocket waits for the server's side of the close handshake."""


def eio_target(
    path: str,
    *,
    transport: str | None = "polling",
    sid: str | None = None,
    eio: str | None = "4",
    extra: str = "",
) -> str:
    """An Engine.IO request target: ``path?EIO=4&transport=...&sid=...`` (None leaves a
    parameter out; ``extra`` is appended verbatim, e.g. ``t=abc``)."""
    params = []
    if eio is not None:
        params.append(f"EIO={eio}")
    if transport is not None:
        params.append(f"transport={transport}")
    if sid is not None:
        params.append(f"sid={sid}")
    if extra:
        params.append(extra)
    return f"{path}?{'&'.join(params)}"


@attrs.frozen(kw_only=True)
class Response:
    """One HTTP response, body read whole."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        """The body as UTF-8."""
        return self.body.decode()


@attrs.define(eq=False)
class HttpClient:
    """One HTTP/1.1 connection: requests one after another (keep-alive) on h11."""

    stream: trio.abc.Stream
    host: str = "127.0.0.1"
    _conn: h11.Connection = attrs.field(factory=lambda: h11.Connection(h11.CLIENT))

    async def send_request(
        self,
        method: str,
        target: str,
        body: bytes | str = b"",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Write one whole request (a body, if any, with Content-Length)."""
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        data = body.encode() if isinstance(body, str) else body
        all_headers = [("Host", self.host), *headers]
        if data or method in ("POST", "PUT"):
            all_headers.append(("Content-Length", str(len(data))))
        parts = [conn.send(h11.Request(method=method, target=target, headers=all_headers))]
        if data:
            parts.append(conn.send(h11.Data(data=data)))
        parts.append(conn.send(h11.EndOfMessage()))
        await self.stream.send_all(b"".join(p for p in parts if p))

    async def read_response(self) -> Response:
        """Read the next whole response.

        Raises:
            EOFError: The server closed the connection before a whole response.
        """
        conn = self._conn
        response: h11.Response | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(_RECEIVE_BYTES)
                if not data and response is None:
                    raise EOFError("the server closed the connection without answering")
                conn.receive_data(bytes(data))
                continue
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:  # the protocol switched: no body follows
                    return Response(status=101, headers=_headers(event), body=b"")
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return Response(
                    status=response.status_code, headers=_headers(response), body=bytes(body)
                )
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("the server closed the connection")

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | str = b"",
        headers: Sequence[tuple[str, str]] = (),
    ) -> Response:
        """Send a request and read its response."""
        await self.send_request(method, target, body, headers)
        return await self.read_response()

    @property
    def reusable(self) -> bool:
        """Whether the server left the connection open for another request."""
        return self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE


def _headers(response: h11.Response | h11.InformationalResponse) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in response.headers}


WS_UPGRADE_HEADERS: Final = (
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
)
"""A WebSocket opening handshake's headers (RFC 6455 §4.1; the key is §1.3's example)."""


@attrs.frozen(kw_only=True)
class Endpoint:
    """A server listening on a real socket (``remote``: in another process)."""

    host: str
    port: int
    remote: bool = False

    async def settle(self) -> None:
        """Let the server take what the test just sent. In this process, that is once
        every task is blocked (it has read everything on loopback); a server in another
        process cannot be watched, so it gets REMOTE_SETTLE seconds."""
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        if self.remote:
            await trio.sleep(REMOTE_SETTLE)

    @asynccontextmanager
    async def open_http(self) -> AsyncIterator[HttpClient]:
        """One keep-alive HTTP connection for the block."""
        stream = await trio.open_tcp_stream(self.host, self.port)
        async with stream:
            yield HttpClient(stream=stream, host=f"{self.host}:{self.port}")

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | str = b"",
        headers: Sequence[tuple[str, str]] = (),
    ) -> Response:
        """One request on a connection of its own."""
        async with self.open_http() as http:
            return await http.request(method, target, body, headers)

    async def get(self, target: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
        """``GET target`` on a connection of its own."""
        return await self.request("GET", target, headers=headers)

    async def post(self, target: str, body: bytes | str) -> Response:
        """``POST target`` with ``body`` on a connection of its own."""
        return await self.request("POST", target, body)

    async def websocket_status(
        self, target: str, headers: Sequence[tuple[str, str]] = ()
    ) -> Response:
        """Send a WebSocket opening handshake for ``target``; the server's answer (101 when
        it accepted, then the connection is dropped unused)."""
        return await self.request("GET", target, headers=[*WS_UPGRADE_HEADERS, *headers])

    async def polling_handshake(self, path: str) -> tuple[str, dict[str, object]]:
        """Open a polling session on ``path``: its sid and the handshake object."""
        response = await self.get(eio_target(path))
        assert response.status == 200, response
        assert response.text.startswith("0"), response.text
        data = json.loads(response.text[1:])
        assert isinstance(data, dict)
        sid = data["sid"]
        assert isinstance(sid, str)
        return sid, data


@asynccontextmanager
async def open_ws(
    endpoint: Endpoint, target: str, headers: Sequence[tuple[str, str]] = ()
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A WebSocket to ``target`` for the block; its TCP stream is closed on the way out.

    trio-websocket's client never closes its own stream once the server has closed the
    connection, so the stream is closed here (otherwise it leaks a socket).
    """
    async with trio_websocket.open_websocket(
        endpoint.host,
        endpoint.port,
        target,
        use_ssl=False,
        extra_headers=[(k.encode(), v.encode()) for k, v in headers],
        disconnect_timeout=WS_DISCONNECT_TIMEOUT,
        # Room for what the server sends that a test does not read: trio-websocket's reader
        # waits for room in this queue, and a reader left waiting holds the exit of this
        # block until the test's deadline.
        message_queue_size=64,
    ) as ws:
        try:
            yield ws
        finally:
            await trio.aclose_forcefully(ws._stream)


async def expect_ws_closed(ws: trio_websocket.WebSocketConnection) -> trio_websocket.CloseReason:
    """The next thing on ``ws`` must be the end of the connection (no frame before it)."""
    try:
        message = await ws.get_message()
    except trio_websocket.ConnectionClosed as exc:
        reason = exc.reason
    else:
        raise AssertionError(f"expected the connection to close, got the frame {message!r}")
    assert reason is not None
    return reason


async def ws_handshake(ws: trio_websocket.WebSocketConnection) -> dict[str, object]:
    """Read the Engine.IO open packet (the first frame of a WebSocket session)."""
    first = await ws.get_message()
    assert isinstance(first, str), first
    assert first.startswith("0"), first
    data = json.loads(first[1:])
    assert isinstance(data, dict)
    return data
