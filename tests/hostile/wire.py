"""A raw WebSocket client for hostile tests: wsproto parses what the server sends, and
frames we send are built by hand, so they can break any rule (bad UTF-8, reserved bits,
unmasked frames, lying lengths, compressed bombs)."""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections import deque
from collections.abc import Sequence
from typing import Final

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Closed",
    "RawWebSocket",
    "Rejected",
    "build_frame",
    "open_raw_websocket",
    "open_socketio",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
SOCKET_IO: Final = "/socket.io/?EIO=4&transport=websocket"


def build_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One client frame, exactly as asked (``length`` may lie about the payload size;
    ``rsv`` is the three reserved bits as 0..7)."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65_536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = (
        bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        if len(payload) < 4096
        else (_mask_fast(payload, key))
    )
    return head + key + masked


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


class Rejected(Exception):
    """The server refused the WebSocket handshake with an HTTP status."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


@attrs.frozen
class Closed:
    """The server's close frame (code 1006: the TCP connection ended without one)."""

    code: int
    reason: str = ""


@attrs.define(eq=False)
class RawWebSocket:
    """A client WebSocket whose outgoing frames are raw bytes."""

    stream: trio.SocketStream
    ws: WSConnection
    extensions: Sequence[Extension] = ()
    _events: deque[Event] = attrs.field(factory=deque)
    _text: list[str] = attrs.field(factory=list)
    _bytes: list[bytes] = attrs.field(factory=list)
    closed: Closed | None = None

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are."""
        await self.stream.send_all(data)

    async def send_frame(self, opcode: int, payload: bytes = b"", **kwargs: object) -> None:
        """Write one hand-built frame (see ``build_frame``)."""
        await self.stream.send_all(build_frame(opcode, payload, **kwargs))  # type: ignore[arg-type]  # kwargs are build_frame's

    async def send(self, message: str | bytes) -> None:
        """Send a proper message through wsproto (compressed if deflate was agreed)."""
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(message)
        await self.stream.send_all(self.ws.send(event))

    async def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)

    async def _next_event(self) -> Event | None:
        # Frames that came with the handshake's response are in wsproto already.
        self._events.extend(self.ws.events())
        while not self._events:
            try:
                data = await self.stream.receive_some(65_536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                return None
            self.ws.receive_data(data)
            self._events.extend(self.ws.events())
        return self._events.popleft()

    async def receive(self) -> str | bytes | Closed:
        """The next whole message; pings are answered; a close (or EOF) ends it."""
        if self.closed is not None:
            return self.closed
        while True:
            event = await self._next_event()
            if event is None:
                self.closed = Closed(1006)
                return self.closed
            if isinstance(event, Ping):
                await self._send_quietly(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.closed = Closed(event.code, event.reason or "")
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._send_quietly(self.ws.send(event.response()))
                return self.closed
            elif isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    text = "".join(self._text)
                    self._text.clear()
                    return text
            elif isinstance(event, BytesMessage):
                self._bytes.append(bytes(event.data))
                if event.message_finished:
                    data = b"".join(self._bytes)
                    self._bytes.clear()
                    return data

    async def receive_message(self) -> str | bytes:
        """The next message; fails if the server closed instead."""
        message = await self.receive()
        assert not isinstance(message, Closed), f"closed instead of a message: {message}"
        return message

    async def receive_until_closed(self) -> tuple[list[str | bytes], Closed]:
        """Every message until the server closes, and its close."""
        messages: list[str | bytes] = []
        while True:
            message = await self.receive()
            if isinstance(message, Closed):
                return messages, message
            messages.append(message)

    async def aclose(self) -> None:
        """Close the TCP connection (no close handshake)."""
        await trio.aclose_forcefully(self.stream)


async def open_raw_websocket(
    host: str,
    port: int,
    target: str = SOCKET_IO,
    *,
    headers: Sequence[tuple[str, str]] = (),
    deflate: bool = False,
) -> RawWebSocket:
    """Open a WebSocket (offering permessage-deflate with ``deflate``).

    Raises:
        Rejected: The server answered the handshake with an HTTP status.
    """
    stream = await trio.open_tcp_stream(host, port)
    ws = WSConnection(ConnectionType.CLIENT)
    extensions: list[Extension] = [PerMessageDeflate()] if deflate else []
    request = Request(
        host=f"{host}:{port}",
        target=target,
        extra_headers=[(k.encode(), v.encode()) for k, v in headers],
        extensions=extensions,
    )
    await stream.send_all(ws.send(request))
    status: int | None = None
    body = b""
    while True:
        data = await stream.receive_some(65_536)
        if not data:
            await trio.aclose_forcefully(stream)
            raise Rejected(status or 0, body)
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return RawWebSocket(
                    stream=stream, ws=ws, extensions=[e for e in extensions if e.enabled()]
                )
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    await trio.aclose_forcefully(stream)
                    raise Rejected(status, b"")
            elif isinstance(event, RejectData):
                body += event.data
                if event.body_finished:
                    await trio.aclose_forcefully(stream)
                    raise Rejected(status or 0, body)


async def open_socketio(
    host: str, port: int, *, connect: bool = True, headers: Sequence[tuple[str, str]] = ()
) -> RawWebSocket:
    """A WebSocket Engine.IO session (handshake read), CONNECTed to ``/`` if asked."""
    ws = await open_raw_websocket(host, port, headers=headers)
    first = await ws.receive_message()
    assert isinstance(first, str), first
    assert first.startswith("0{"), first
    assert json.loads(first[1:])["sid"]
    if connect:
        await ws.send("40")
        reply = await ws.receive_message()
        assert isinstance(reply, str), reply
        assert reply.startswith("40{"), reply
    return ws
