"""Client-side WebSocket transport over a Trio TCP (or TLS) stream, on wsproto.

The mirror of ``transport.websocket``: one reader (``receive_message``) and one writer
(``send``). The reader never writes: it queues its answers to the server's WebSocket pings
and close frame in ``control``, and the writer sends them first. wsproto masks every
frame we send, as a client must (RFC 6455 §5.3).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeAlias
from urllib.parse import urlsplit

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
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from roomcast.engine.errors import ConnectionFailedError, TransportClosed
from roomcast.protocol import DisconnectReason

__all__ = ["StreamFactory", "WebSocketClient", "connect_websocket", "describe_failure"]

StreamFactory: TypeAlias = Callable[[str, int], Awaitable[trio.abc.Stream]]
"""``async (host, port) -> stream``: opens the byte stream a WebSocket runs over, in place
of TCP (and TLS). Tests use it for in-memory transports and to inject faults; it may
raise ``OSError`` (or ``trio.BrokenResourceError``) to refuse the connection."""

_RECEIVE_BYTES: Final = 65_536
_DEFAULT_PORTS: Final = {"ws": 80, "wss": 443}


def describe_failure(exc: BaseException) -> str:
    """The innermost cause of ``exc``, for a message: a TLS certificate error shows
    as itself, not as the ``trio.BrokenResourceError`` wrapped around it."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


def _split_url(url: str) -> tuple[bool, str, int, str]:
    """Return ``(tls, host, port, target)`` for a ``ws:`` or ``wss:`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"WebSocket URL scheme must be ws or wss, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"WebSocket URL has no host: {url!r}")
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return parts.scheme == "wss", parts.hostname, parts.port or _DEFAULT_PORTS[parts.scheme], target


async def connect_websocket(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    max_message_bytes: int,
    ssl_context: ssl.SSLContext | None = None,
    stream_factory: StreamFactory | None = None,
) -> WebSocketClient:
    """Open a TCP (``ws:``) or TLS (``wss:``) connection to ``url`` and upgrade it.

    With ``stream_factory``, the stream comes from ``await stream_factory(host, port)``
    instead (no TCP, no TLS), and the upgrade runs over it.

    Cancellation: nothing is left open; a half-made connection is closed.

    Raises:
        ConnectionFailedError: The TCP connect (or ``stream_factory``) failed, the server
            refused the upgrade (``status_code`` is its HTTP status), or it closed the
            connection first.
        ValueError: ``url`` is not a ``ws:``/``wss:`` URL with a host.
    """
    use_tls, host, port, target = _split_url(url)
    try:
        stream: trio.abc.Stream
        if stream_factory is not None:
            stream = await stream_factory(host, port)
        elif use_tls:
            stream = await trio.open_ssl_over_tcp_stream(
                host,
                port,
                ssl_context=ssl_context or ssl.create_default_context(),
                https_compatible=True,
            )
        else:
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.BrokenResourceError) as exc:
        raise ConnectionFailedError(f"cannot connect to {host}:{port}: {exc}") from exc
    ok = False
    try:
        client = await _upgrade(stream, host, port, target, headers, max_message_bytes)
        ok = True
        return client
    finally:
        if not ok:
            await trio.aclose_forcefully(stream)


async def _upgrade(
    stream: trio.abc.Stream,
    host: str,
    port: int,
    target: str,
    headers: Sequence[tuple[str, str]],
    max_message_bytes: int,
) -> WebSocketClient:
    ws = WSConnection(ConnectionType.CLIENT)
    host_header = host if port in _DEFAULT_PORTS.values() else f"{host}:{port}"
    request = Request(
        host=host_header,
        target=target,
        extra_headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    )
    client = WebSocketClient(stream=stream, ws=ws, max_message_bytes=max_message_bytes)
    try:
        await stream.send_all(ws.send(request))
        status: int | None = None
        while True:
            data = await stream.receive_some(_RECEIVE_BYTES)
            if not data:
                raise ConnectionFailedError(
                    "server closed the connection during the WebSocket handshake",
                    status_code=status,
                )
            ws.receive_data(bytes(data))
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    # Frames that came in the same read as the 101 answer are kept.
                    client._take_events()
                    return client
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise _rejected(status)
                elif isinstance(event, RejectData) and event.body_finished:
                    raise _rejected(status)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ConnectionFailedError(f"WebSocket handshake failed: {describe_failure(exc)}") from exc
    except WsRemoteProtocolError as exc:
        raise ConnectionFailedError(f"bad WebSocket handshake answer: {exc}") from exc
    except TransportClosed as exc:
        raise ConnectionFailedError(f"WebSocket closed at once: {exc.reason}") from exc


def _rejected(status: int | None) -> ConnectionFailedError:
    return ConnectionFailedError(
        f"server refused the WebSocket upgrade with HTTP {status}", status_code=status
    )


@attrs.define(eq=False)
class WebSocketClient:
    """An open client WebSocket: one reader task and one writer task share it.

    Attributes:
        control: Frames the reader queued (pong, close answer) for the writer to send
            before anything else; the reader's owner must wake the writer when it grows.
        close_code: The close code the server sent, once it sent one.
    """

    stream: trio.abc.Stream
    ws: WSConnection
    max_message_bytes: int
    control: list[bytes] = attrs.field(factory=list, init=False)
    close_code: int | None = attrs.field(default=None, init=False)
    _parts: list[str | bytes] = attrs.field(factory=list, init=False)
    _size: int = attrs.field(default=0, init=False)
    _pending: list[str | bytes] = attrs.field(factory=list, init=False)
    _closed: TransportClosed | None = attrs.field(default=None, init=False)

    async def receive_message(self) -> str | bytes:
        """Return the next whole message from the server.

        Cancellation: safe; a message partly read stays buffered for the next call.

        Raises:
            TransportClosed: The server closed (``"transport close"``, with its ``code``),
                broke the WebSocket protocol, sent a message over ``max_message_bytes``
                or went away (``"transport error"``, code 1006).
        """
        while not self._pending:
            if self._closed is not None:
                raise self._closed
            try:
                data = await self.stream.receive_some(_RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._close_with(
                    DisconnectReason.TRANSPORT_ERROR, CloseReason.ABNORMAL_CLOSURE
                ) from exc
            if not data:
                raise self._close_with(
                    DisconnectReason.TRANSPORT_CLOSE, CloseReason.ABNORMAL_CLOSURE
                )
            try:
                self.ws.receive_data(bytes(data))
                self._take_events()
            except WsRemoteProtocolError as exc:
                self._queue_close(CloseReason.PROTOCOL_ERROR, "protocol error")
                raise self._close_with(
                    DisconnectReason.TRANSPORT_ERROR, CloseReason.PROTOCOL_ERROR
                ) from exc
        return self._pending.pop(0)

    def _close_with(self, reason: str, code: int) -> TransportClosed:
        self._closed = TransportClosed(reason, code=code)
        return self._closed

    def _take_events(self) -> None:
        for event in self.ws.events():
            self._take_event(event)

    def _take_event(self, event: Event) -> None:
        if self._closed is not None:
            return  # nothing after the close (or an oversized message) is delivered
        if isinstance(event, TextMessage | BytesMessage):
            data = event.data
            self._size += len(data)
            if self._size > self.max_message_bytes:
                self._queue_close(CloseReason.MESSAGE_TOO_BIG, DisconnectReason.MESSAGE_TOO_BIG)
                # A later receive_message raises; messages before it are still delivered.
                self._closed = TransportClosed(
                    DisconnectReason.TRANSPORT_ERROR, code=CloseReason.MESSAGE_TOO_BIG
                )
                return
            self._parts.append(bytes(data) if isinstance(data, bytearray) else data)
            if event.message_finished:
                self._pending.append(self._join(event))
                self._parts.clear()
                self._size = 0
        elif isinstance(event, Ping):
            self.control.append(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            self.close_code = event.code
            if self.ws.state is ConnectionState.REMOTE_CLOSING:
                self.control.append(self.ws.send(event.response()))
            self._closed = TransportClosed(DisconnectReason.TRANSPORT_CLOSE, code=event.code)

    def _join(self, event: TextMessage | BytesMessage) -> str | bytes:
        parts = self._parts
        if len(parts) == 1:
            return parts[0]
        if isinstance(event, TextMessage):
            return "".join(p for p in parts if isinstance(p, str))
        assert isinstance(event, BytesMessage)
        return b"".join(p for p in parts if isinstance(p, bytes))

    def _queue_close(self, code: int, reason: str) -> None:
        if self.ws.state is ConnectionState.OPEN:
            self.control.append(self.ws.send(CloseConnection(code=code, reason=reason)))

    async def send(self, messages: Sequence[str | bytes]) -> None:
        """Write queued control frames and then ``messages`` with one ``send_all``.

        Cancellation: part of the data may have been written; the stream must be closed.

        Raises:
            TransportClosed: The server is gone, or the WebSocket is closing.
        """
        parts = self.control[:]
        self.control.clear()
        if self.ws.state is ConnectionState.OPEN:
            for message in messages:
                if isinstance(message, str):
                    parts.append(self.ws.send(TextMessage(data=message)))
                else:
                    parts.append(self.ws.send(BytesMessage(data=message)))
        elif messages:
            if parts:
                await self._send_all(b"".join(parts))
            raise TransportClosed(DisconnectReason.TRANSPORT_CLOSE, code=self.close_code)
        if parts:
            await self._send_all(b"".join(parts))

    async def _send_all(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed(
                DisconnectReason.TRANSPORT_ERROR, code=CloseReason.ABNORMAL_CLOSURE
            ) from exc

    async def aclose(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame (if still open) and close the stream.

        The server answers a close frame by closing TCP (RFC 6455 §7.1.1), so there is
        nothing useful to wait for.

        Cancellation: the stream is closed forcefully.
        """
        self._queue_close(code, reason)
        try:
            if self.control:
                data = b"".join(self.control)
                self.control.clear()
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)
