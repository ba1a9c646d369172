"""Server-side WebSocket transport over any Trio stream, on wsproto.

wsproto parses what the peer sends (masking, fragments, control frames, UTF-8, the
close handshake). Data frames we send are built here: a server frame is never masked
(RFC 6455 §5.1), so one finished frame can be written to every member of a room.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Final

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from roomcast.engine.actors.outbox import OutFrame, SharedFrame
from roomcast.engine.errors import TransportClosed

__all__ = ["WebSocketTransport", "accept_websocket", "encode_frame"]

_RECEIVE_BYTES: Final = 65_536
_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
_FIN: Final = 0x80
_HEADER_16: Final = struct.Struct("!BBH")
_HEADER_64: Final = struct.Struct("!BBQ")

# RFC 6455 §7.4.1 close codes used by the engine.
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_TOO_BIG: Final = 1009
CLOSE_POLICY: Final = 1008


def encode_frame(data: str | bytes) -> bytes:
    """Return one unmasked, unfragmented WebSocket frame carrying ``data``.

    ``str`` goes as a text frame (UTF-8), ``bytes`` as a binary frame.
    """
    if isinstance(data, str):
        payload = data.encode()
        first = _FIN | _OP_TEXT
    else:
        payload = data
        first = _FIN | _OP_BINARY
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65_536:
        return _HEADER_16.pack(first, 126, n) + payload
    return _HEADER_64.pack(first, 127, n) + payload


def wire_bytes(frame: OutFrame) -> bytes:
    """The WebSocket bytes of an outbox frame (a shared frame is encoded only once)."""
    if isinstance(frame, SharedFrame):
        wire = frame.wire
        if wire is None:
            wire = frame.wire = encode_frame(frame.eio)
        return wire
    return encode_frame(frame)


async def accept_websocket(
    stream: trio.abc.Stream, head: bytes, *, max_message_bytes: int
) -> WebSocketTransport:
    """Complete the WebSocket handshake whose HTTP request head (and any bytes after it)
    were already read from ``stream`` into ``head``.

    Cancellation: the stream is left in an undefined state; the caller closes it.

    Raises:
        TransportClosed: The request is not a valid WebSocket handshake, or the peer left.
    """
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.receive_data(head)
        request = next((e for e in ws.events() if isinstance(e, Request)), None)
    except WsRemoteProtocolError as exc:
        reject = exc.event_hint or RejectConnection(status_code=400)
        await _send_quietly(stream, ws.send(reject))
        raise TransportClosed(f"bad WebSocket handshake: {exc}") from exc
    if request is None:  # pragma: no cover - the HTTP front only calls us with a whole head
        raise TransportClosed("incomplete WebSocket handshake")
    try:
        await stream.send_all(ws.send(AcceptConnection()))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise TransportClosed("peer left during the WebSocket handshake") from exc
    return WebSocketTransport(stream=stream, ws=ws, max_message_bytes=max_message_bytes)


async def _send_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


@attrs.define(eq=False)
class WebSocketTransport:
    """An accepted WebSocket: one reader (``receive_message``) and one writer (``send``).

    The reader answers WebSocket pings and the peer's close by queueing frames for the
    writer through ``control``, a callback the connection actor sets to its outbox, so
    that only the writer ever writes to the stream.
    """

    stream: trio.abc.Stream
    ws: WSConnection
    max_message_bytes: int
    control: list[bytes] = attrs.field(factory=list, init=False)
    close_code: int | None = attrs.field(default=None, init=False)
    close_reason: str = attrs.field(default="", init=False)
    _parts: list[str | bytes] = attrs.field(factory=list, init=False)
    _size: int = attrs.field(default=0, init=False)
    _pending: list[str | bytes] = attrs.field(factory=list, init=False)
    _write_interrupted: bool = attrs.field(default=False, init=False)

    async def receive_message(self) -> str | bytes:
        """Return the next whole message from the peer.

        Cancellation: safe; a message partly read stays buffered for the next call.

        Raises:
            TransportClosed: The peer closed, broke the protocol, or went away; its
                ``code`` says which (1000/1001 from the peer, 1002, 1009, or 1006).
        """
        while not self._pending:
            try:
                data = await self.stream.receive_some(_RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise TransportClosed("transport error", code=1006) from exc
            if not data:
                raise TransportClosed("transport close", code=1006)
            try:
                self.ws.receive_data(data if isinstance(data, bytes) else bytes(data))
                self._take_events()
            except WsRemoteProtocolError as exc:
                self._queue_close(CLOSE_PROTOCOL_ERROR, "protocol error")
                raise TransportClosed(f"WebSocket protocol error: {exc}", code=1002) from exc
        return self._pending.pop(0)

    def _take_events(self) -> None:
        for event in self.ws.events():
            if isinstance(event, Message):
                self._size += len(event.data)
                if self._size > self.max_message_bytes:
                    self._queue_close(CLOSE_TOO_BIG, "message too big")
                    raise TransportClosed("message too big", code=CLOSE_TOO_BIG)
                self._parts.append(event.data)
                if event.message_finished:
                    if len(self._parts) == 1:
                        self._pending.append(self._parts[0])
                    elif isinstance(event, TextMessage):
                        self._pending.append("".join(p for p in self._parts if isinstance(p, str)))
                    else:
                        assert isinstance(event, BytesMessage)
                        self._pending.append(
                            b"".join(p for p in self._parts if isinstance(p, bytes))
                        )
                    self._parts.clear()
                    self._size = 0
            elif isinstance(event, Ping):
                self.control.append(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code, self.close_reason = event.code, event.reason or ""
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.control.append(self.ws.send(event.response()))
                raise TransportClosed("transport close", code=event.code)

    def _queue_close(self, code: int, reason: str) -> None:
        if self.ws.state is ConnectionState.OPEN:
            self.control.append(self.ws.send(CloseConnection(code=code, reason=reason)))

    async def send(self, frames: list[OutFrame]) -> None:
        """Write queued control frames and then ``frames`` with one ``send_all``.

        Cancellation: part of the data may have been written; the stream must be closed.

        Raises:
            TransportClosed: The peer is gone.
        """
        if self.control:
            parts = [*self.control, *map(wire_bytes, frames)]
            self.control.clear()
        else:
            parts = list(map(wire_bytes, frames))
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        # Until send_all returns, a cancel leaves a frame half-written: nothing more may
        # be written to this stream after that (not even the close frame).
        self._write_interrupted = True
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed("transport error", code=1006) from exc
        self._write_interrupted = False

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame (if still open) and close the stream.

        Cancellation: the stream is closed forcefully.
        """
        self._queue_close(code, reason)
        try:
            if self.control and not self._write_interrupted:
                data = b"".join(self.control)
                self.control.clear()
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)
