"""The ASGI side of a request: an ``http`` or ``websocket`` scope as the server's router
and the connection actor see a transport (``HttpExchange``, ``MessageTransport``).

The ASGI server (hypercorn, with its Trio worker) owns the socket, parses HTTP and frames
WebSocket messages; what reaches us are whole request bodies and whole messages
(ASGI 3.0, HTTP and WebSocket specification 2.3). So WebSocket pings, the close handshake,
the message size bound on the socket and permessage-deflate are the ASGI server's: the
transport here has no control frames of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final, TypeAlias
from urllib.parse import parse_qsl

import attrs
import trio
from wsproto.frame_protocol import CloseReason

from roomcast.engine.errors import TransportClosed
from roomcast.engine.stats import UNCOUNTED, Traffic
from roomcast.engine.transport.frames import OutFrame, SharedFrame
from roomcast.engine.transport.http import BodyTooLarge, HttpRequest, error_body
from roomcast.protocol import DisconnectReason

__all__ = [
    "AsgiHttpExchange",
    "AsgiMessage",
    "AsgiReceive",
    "AsgiScope",
    "AsgiSend",
    "AsgiWebSocket",
    "asgi_request",
]

AsgiScope: TypeAlias = Mapping[str, object]
AsgiMessage: TypeAlias = Mapping[str, object]
AsgiReceive: TypeAlias = Callable[[], Awaitable[AsgiMessage]]
# What we send is a plain dict: the ASGI servers' and frameworks' own send callables take a
# (mutable) dict, so it must be one for them to be passed here.
AsgiSend: TypeAlias = Callable[[dict[str, object]], Awaitable[None]]

_HTTP_RESPONSE_EXTENSION: Final = "websocket.http.response"


def _text(value: object, default: str = "") -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else default


def asgi_request(scope: AsgiScope) -> HttpRequest:
    """The request head of an ``http`` or ``websocket`` scope, as the built-in front
    reads it from the wire.

    ``path`` is the scope's whole path (an app mounted under a prefix still sees it, as
    Starlette and hypercorn pass it); a WebSocket scope's method is ``GET`` (RFC 6455
    §4.1: the opening handshake is a GET).
    """
    raw_headers = tuple(
        (bytes(name), bytes(value))
        for name, value in _pairs(scope.get("headers"))
        if isinstance(name, bytes | bytearray) and isinstance(value, bytes | bytearray)
    )
    query = _text(scope.get("query_string"))
    path = _text(scope.get("path"), "/")
    raw_path = scope.get("raw_path")
    target = (_text(raw_path) if raw_path else path) + ("?" + query if query else "")
    client = scope.get("client")
    remote = None
    if isinstance(client, Sequence) and len(client) == 2:
        remote = f"{client[0]}:{client[1]}"
    method = "GET" if scope.get("type") == "websocket" else _text(scope.get("method"), "GET")
    return HttpRequest(
        method=method,
        target=target,
        path=path,
        query=dict(parse_qsl(query, keep_blank_values=True)),
        headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers},
        raw_headers=raw_headers,
        remote=remote,
    )


def _pairs(value: object) -> list[Sequence[object]]:
    if not isinstance(value, Sequence):
        return []
    return [pair for pair in value if isinstance(pair, Sequence) and len(pair) == 2]


def _response_headers(
    status: int,
    body: bytes,
    content_type: str,
    headers: tuple[tuple[str, str], ...],
    close: bool,
) -> list[tuple[bytes, bytes]]:
    """The response headers the built-in front sends (``HttpConnection.respond``)."""
    all_headers = [(b"content-type", content_type.encode())]
    if status not in (204, 304):  # RFC 9110 §8.6: no Content-Length on a 204
        all_headers.append((b"content-length", b"%d" % len(body)))
    # Echoed request values (Origin, requested headers) may hold any character.
    all_headers.extend(
        (name.lower().encode("ascii"), value.encode("latin-1", "replace"))
        for name, value in headers
    )
    if close:
        all_headers.append((b"connection", b"close"))
    return all_headers


@attrs.define(eq=False)
class AsgiHttpExchange:
    """One request of an ASGI ``http`` scope, or the opening handshake of a ``websocket``
    scope (answered with a WebSocket or, through the ``websocket.http.response``
    extension, with an HTTP response), for the server's router.
    """

    scope: AsgiScope
    receive: AsgiReceive
    send: AsgiSend
    responded: bool = attrs.field(default=False, init=False)
    disconnected: bool = attrs.field(default=False, init=False)

    @property
    def is_websocket(self) -> bool:
        """Whether the scope is a WebSocket handshake."""
        return self.scope.get("type") == "websocket"

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "text/plain; charset=UTF-8",
        headers: tuple[tuple[str, str], ...] = (),
        close: bool = False,
        head_only: bool = False,
    ) -> None:
        """Answer with a whole response. On a WebSocket scope whose server lacks the
        ``websocket.http.response`` extension, the handshake is refused instead (the
        ASGI server answers 403).

        Cancellation: part of the response may have been sent.
        """
        if self.responded:
            await trio.lowlevel.checkpoint()
            return
        self.responded = True
        all_headers = _response_headers(status, body, content_type, headers, close)
        prefix = "http.response"
        if self.is_websocket:
            extensions = self.scope.get("extensions")
            if not isinstance(extensions, Mapping) or _HTTP_RESPONSE_EXTENSION not in extensions:
                await self._send_quietly(
                    {"type": "websocket.close", "code": CloseReason.NORMAL_CLOSURE}
                )
                return
            prefix = "websocket.http.response"
        await self._send_quietly(
            {"type": prefix + ".start", "status": status, "headers": all_headers}
        )
        await self._send_quietly(
            {"type": prefix + ".body", "body": b"" if head_only else body, "more_body": False}
        )

    async def _send_quietly(self, message: dict[str, object]) -> None:
        # The client may be gone: like the built-in front, an answer nobody reads is
        # dropped (ASGI servers raise OSError subclasses or their own errors for it).
        try:
            await self.send(message)
        except OSError:
            self.disconnected = True

    async def read_body(self, max_bytes: int) -> bytes:
        """Read the whole body (at most ``max_bytes``).

        Raises:
            BodyTooLarge: Over the limit (answered 413).
            TransportClosed: The client went away.
        """
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            kind = message.get("type")
            if kind == "http.disconnect":
                self.disconnected = True
                raise TransportClosed(DisconnectReason.TRANSPORT_CLOSE)
            if kind != "http.request":
                continue
            chunk = message.get("body", b"")
            if isinstance(chunk, bytes | bytearray) and chunk:
                size += len(chunk)
                if size > max_bytes:
                    await self.respond(413, error_body(4, "payload too large"), close=True)
                    raise BodyTooLarge("payload too large")
                parts.append(bytes(chunk))
            if not message.get("more_body", False):
                return b"".join(parts)

    async def wait_closed(self) -> None:
        """Return when the ASGI server reports ``http.disconnect`` (the client left).

        Cancellation: nothing is lost.
        """
        while not self.disconnected:
            message = await self.receive()
            if message.get("type") in ("http.disconnect", "websocket.disconnect"):
                self.disconnected = True

    async def accept_websocket(
        self,
        request: HttpRequest,
        *,
        max_message_bytes: int,
        compression: bool,
        answer_later: bool = False,
    ) -> AsgiWebSocket:
        """Accept the WebSocket (``websocket.accept``). ``compression`` is the ASGI
        server's choice, not ours (hypercorn agrees permessage-deflate when offered), and
        so is when the answer goes (``answer_later`` changes nothing here).

        Raises:
            TransportClosed: Not a WebSocket scope (answered 400), or the client left.
        """
        if not self.is_websocket:
            await self.respond(400, error_body(3, "Bad request"), close=True)
            raise TransportClosed("not a WebSocket scope")
        self.responded = True
        try:
            await self.send({"type": "websocket.accept"})
        except OSError as exc:
            raise TransportClosed(
                DisconnectReason.TRANSPORT_ERROR, code=CloseReason.ABNORMAL_CLOSURE
            ) from exc
        return AsgiWebSocket(
            receive=self.receive, send=self.send, max_message_bytes=max_message_bytes
        )


@attrs.define(eq=False)
class AsgiWebSocket:
    """An accepted ASGI WebSocket, driven by the connection actor (``MessageTransport``).

    Messages arrive whole (``websocket.receive``); each frame the writer sends is one
    ``websocket.send``. A frame shared by a broadcast cannot share its wire bytes here
    (the ASGI server frames every message itself), so it goes as its Engine.IO text.
    ``send_now`` never writes: every send goes through the writer task.
    """

    receive: AsgiReceive
    send_message: AsgiSend = attrs.field(alias="send")
    max_message_bytes: int
    on_control: Callable[[], None] | None = attrs.field(default=None, init=False)
    traffic: Traffic = attrs.field(default=UNCOUNTED, init=False)  # (its connection's)
    close_code: int | None = attrs.field(default=None, init=False)
    _closing: tuple[int, str] | None = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    @property
    def control(self) -> Sequence[bytes]:
        """Always empty: pongs and the close answer are the ASGI server's."""
        return ()

    async def receive_message(self) -> str | bytes:
        """Return the next whole message.

        Cancellation: safe; nothing is lost.

        Raises:
            TransportClosed: The client closed or left (``websocket.disconnect``, its code),
                or sent a message over ``max_message_bytes`` (code 1009).
        """
        while True:
            if self._closed:
                raise TransportClosed(DisconnectReason.TRANSPORT_CLOSE, code=self.close_code)
            message = await self.receive()
            kind = message.get("type")
            if kind == "websocket.disconnect":
                self._closed = True
                code = message.get("code")
                self.close_code = code if isinstance(code, int) else CloseReason.NO_STATUS_RCVD
                raise TransportClosed(DisconnectReason.TRANSPORT_CLOSE, code=self.close_code)
            if kind != "websocket.receive":
                continue
            text, data = message.get("text"), message.get("bytes")
            payload: str | bytes
            if isinstance(text, str):
                payload = text
            elif isinstance(data, bytes | bytearray):
                payload = bytes(data)
            else:
                continue
            if len(payload) > self.max_message_bytes:
                # As the built-in transport: RFC 6455 §7.4.1, 1009 "message too big".
                self._closing = (CloseReason.MESSAGE_TOO_BIG, DisconnectReason.MESSAGE_TOO_BIG)
                raise TransportClosed(
                    DisconnectReason.MESSAGE_TOO_BIG, code=CloseReason.MESSAGE_TOO_BIG
                )
            # (Payload bytes: the ASGI server keeps the frame headers to itself; a text
            # message counts its characters, which is its bytes for ASCII.)
            self.traffic.bytes_in += len(payload)
            return payload

    async def receive_messages(self) -> list[str | bytes]:
        """Return the next whole message, as a list of one: the ASGI server hands
        messages over one at a time.

        Cancellation: safe; nothing is lost.

        Raises:
            TransportClosed: As ``receive_message``.
        """
        return [await self.receive_message()]

    def send_now(self, frames: tuple[OutFrame, ...]) -> bytes | None:
        """None: an ASGI send is awaited, so only the writer sends."""
        return None

    async def send(self, frames: list[OutFrame]) -> None:
        """Send each frame as one WebSocket message.

        Cancellation: some frames may have been sent; the transport must close.

        Raises:
            TransportClosed: The client is gone.
        """
        if self._closed:
            raise TransportClosed(DisconnectReason.TRANSPORT_CLOSE, code=self.close_code)
        traffic = self.traffic
        traffic.packets_out += len(frames)
        try:
            for frame in frames:
                data = frame.eio if isinstance(frame, SharedFrame) else frame
                traffic.bytes_out += len(data)
                if isinstance(data, str):
                    await self.send_message({"type": "websocket.send", "text": data})
                else:
                    await self.send_message({"type": "websocket.send", "bytes": data})
        except OSError as exc:
            raise TransportClosed(
                DisconnectReason.TRANSPORT_ERROR, code=CloseReason.ABNORMAL_CLOSURE
            ) from exc

    def nonblocking(self) -> None:
        """None: the ASGI server owns the socket (no reactor can serve it)."""
        return None

    async def aclose(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close with ``code`` (or the code a refused message called for), unless the
        client is gone already.

        Cancellation: the ASGI server closes the connection when the app returns.
        """
        if self._closing is not None:
            code, reason = self._closing
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        with contextlib.suppress(OSError):
            await self.send_message({"type": "websocket.close", "code": code, "reason": reason})
