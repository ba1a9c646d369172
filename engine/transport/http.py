"""The HTTP front: HTTP/1.1 on h11, request after request on one stream (keep-alive).

A plain WebSocket upgrade that arrives whole in one read (what every Socket.IO client
sends) is parsed here with h11's grammar instead, and h11 is given it only if the
connection stays HTTP (``HttpConnection._parse_upgrade``). Heads have a size limit and the
caller a deadline (slowloris); bodies have a size limit.
The server routes each request: Engine.IO polling, a WebSocket upgrade (handed over to
``transport.websocket`` with the bytes already read), static files, ``/healthz``.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Final
from urllib.parse import parse_qsl, urlsplit

import attrs
import h11
import trio

from roomcast.engine.errors import TransportClosed
from roomcast.engine.transport.websocket import (
    WebSocketTransport,
    accept_plain_websocket,
    accept_websocket,
)
from roomcast.protocol import DisconnectReason

__all__ = ["BodyTooLarge", "HttpConnection", "HttpRequest", "error_body"]

_RECEIVE_BYTES: Final = 16_384
_REASONS: Final = {
    101: b"Switching Protocols",
    200: b"OK",
    204: b"No Content",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


def error_body(code: int, message: str) -> bytes:
    """An Engine.IO-style JSON error body (``{"code":..,"message":..}``)."""
    return json.dumps({"code": code, "message": message}, separators=(",", ":")).encode()


class BodyTooLarge(TransportClosed):
    """A request body exceeded its limit; it was answered with 413."""


@attrs.frozen(kw_only=True)
class HttpRequest:
    """A request head.

    Attributes:
        method: ``GET``, ``POST``, ...
        target: The raw request target.
        path: The path of the target, without the query.
        query: Query parameters (the last value wins for a repeated name).
        headers: Header names lower-cased, values as sent (latin-1 decoded).
        remote: The peer's address as ``host:port``, or None when not a socket.
    """

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_headers: tuple[tuple[bytes, bytes], ...]
    remote: str | None

    @property
    def is_websocket(self) -> bool:
        """Whether this asks to upgrade to WebSocket (RFC 6455 §4.2.1)."""
        return (
            self.headers.get("upgrade", "").lower() == "websocket"
            and "upgrade" in self.headers.get("connection", "").lower()
        )

    def head_bytes(self) -> bytes:
        """The request head re-serialised (what a protocol taking over needs to parse)."""
        lines = [f"{self.method} {self.target} HTTP/1.1\r\n".encode("latin-1")]
        lines.extend(b"%s: %s\r\n" % (k, v) for k, v in self.raw_headers)
        lines.append(b"\r\n")
        return b"".join(lines)


_HANDSHAKE_HEADERS: Final = frozenset(
    (b"connection", b"upgrade", b"sec-websocket-version", b"sec-websocket-key", b"host")
)


# h11's own grammar (h11._abnf), for the heads the front parses itself (``_parse_upgrade``).
_TOKEN: Final = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_UPGRADE_LINE: Final = re.compile(rb"(GET) ([\x21-\x7e]+) HTTP/1\.1")
_HEADER_LINE: Final = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*"
)
_BODY_HEADERS: Final = frozenset((b"content-length", b"transfer-encoding"))


def _make_request(
    method: bytes, target: bytes, raw_headers: tuple[tuple[bytes, bytes], ...], remote: str | None
) -> HttpRequest:
    target_text = target.decode("latin-1")
    split = urlsplit(target_text)
    return HttpRequest(
        method=method.decode("ascii", "replace"),
        target=target_text,
        path=split.path,
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        headers={k.lower().decode("latin-1"): v.decode("latin-1") for k, v in raw_headers},
        raw_headers=raw_headers,
        remote=remote,
    )


def plain_websocket_key(request: HttpRequest, *, compression: bool) -> bytes | None:
    """The ``Sec-WebSocket-Key`` of a WebSocket handshake with nothing for wsproto to
    judge, or None.

    Plain means: a GET; ``Connection`` has the ``upgrade`` token; ``Upgrade:
    websocket``; version 13; a key; an ASCII host; each of those headers once; no
    extension to negotiate (none offered, or compression off and the offers ASCII) and
    no subprotocol. That
    is what wsproto checks before it accepts (RFC 6455 §4.2.1); anything else goes
    through wsproto, which answers exactly what is wrong.
    """
    if request.method != "GET":
        return None
    seen: set[bytes] = set()
    key: bytes | None = None
    for name, value in request.raw_headers:
        name = name.lower()
        if name in _HANDSHAKE_HEADERS:
            if name in seen:
                return None
            seen.add(name)
            if name == b"sec-websocket-key":
                key = value
        elif name == b"sec-websocket-protocol":
            return None
        elif name == b"sec-websocket-extensions" and (compression or not value.isascii()):
            return None  # (offers are ignored with compression off, once read as ASCII)
    if len(seen) != len(_HANDSHAKE_HEADERS) or key is None:
        return None
    headers = request.headers
    tokens = headers["connection"].split(",")
    if (
        not any(token.strip().lower() == "upgrade" for token in tokens)
        or headers["upgrade"].lower() != "websocket"
        or headers["sec-websocket-version"] != "13"
        or not headers["host"].isascii()
        or not all(value.isascii() for value in (headers["connection"], headers["upgrade"]))
    ):
        return None
    return key


@attrs.define(eq=False)
class HttpConnection:
    """One client's HTTP/1.1 connection, read request by request (keep-alive)."""

    stream: trio.abc.Stream
    max_head_bytes: int
    remote: str | None = None
    received_in_cycle: int = attrs.field(default=0, init=False)
    _h11: h11.Connection = attrs.field(init=False)
    # A WebSocket upgrade's head parsed by ``_parse_upgrade`` and what came after it,
    # which h11 has not seen: it is given them only if the connection stays HTTP.
    _head: bytes = attrs.field(default=b"", init=False)
    _rest: bytes = attrs.field(default=b"", init=False)

    def __attrs_post_init__(self) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_bytes)

    @property
    def _conn(self) -> h11.Connection:
        """The h11 state, caught up with a head the front parsed itself (h11 then reads
        the same request from it: the front's grammar is a strict subset of h11's)."""
        conn = self._h11
        head = self._head
        if head:
            conn.receive_data(head + self._rest)
            self._head = self._rest = b""
            event = conn.next_event()
            assert isinstance(event, h11.Request), event
        return conn

    def _parse_upgrade(self, data: bytes) -> HttpRequest | None:
        """The WebSocket upgrade request ``data`` starts with, when its whole head is
        there and is as plain as every Socket.IO client sends it (a GET over HTTP/1.1,
        CRLF lines in h11's grammar, one Host, no body); else None, and h11 reads it.

        This is the head of every WebSocket connection: parsed here it costs a fifth of
        what h11 costs, and h11 never sees it unless the connection stays HTTP (a refused
        upgrade is answered through h11 as before).
        """
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 > self.max_head_bytes:
            return None
        lines = data[:end].split(b"\r\n")
        first = _UPGRADE_LINE.fullmatch(lines[0])
        if first is None:
            return None
        raw: list[tuple[bytes, bytes]] = []
        hosts = 0
        upgrade = False
        for line in lines[1:]:
            field = _HEADER_LINE.fullmatch(line)
            if field is None:
                return None
            name, value = field[1], field[2]
            lower = name.lower()
            if lower in _BODY_HEADERS:
                return None
            if lower == b"host":
                hosts += 1
            elif lower == b"upgrade":
                upgrade = value.lower() == b"websocket"
            raw.append((name, value))
        if hosts != 1 or not upgrade:
            return None
        self._head, self._rest = data[: end + 4], data[end + 4 :]
        return _make_request(first[1], first[2], tuple(raw), self.remote)

    async def _next_event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        while True:
            error: h11.RemoteProtocolError | None = None
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                error = exc
            if error is not None:
                await self._send_raw_error(error.error_status_hint, str(error))
                raise TransportClosed(f"bad HTTP request: {error}") from error
            if event is not h11.NEED_DATA:
                return event
            self._conn.receive_data(await self._receive())

    async def _receive(self) -> bytes:
        """One read of the request (empty: the peer closed), counted in the cycle."""
        try:
            data = bytes(await self.stream.receive_some(_RECEIVE_BYTES))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed(DisconnectReason.TRANSPORT_ERROR) from exc
        self.received_in_cycle += len(data)
        return data

    async def next_request(self) -> HttpRequest | None:
        """Read the next request head; None when the peer closed between requests.

        The caller owns the deadline (``trio.fail_after``). A head over the limit is
        answered with 431 here.

        Cancellation: the connection is left mid-request; close it.

        Raises:
            TransportClosed: The peer broke HTTP/1.1 (answered 400/431 when possible) or
                went away mid-request.
        """
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        self.received_in_cycle = 0
        if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
            # The first bytes of a request: a plain WebSocket upgrade is parsed here.
            data = await self._receive()
            request = self._parse_upgrade(data) if data else None
            if request is not None:
                return request
            conn.receive_data(data)
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):  # pragma: no cover - h11 guarantees it
            raise TransportClosed(f"unexpected HTTP event {event!r}")
        head_size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if head_size > self.max_head_bytes:
            # h11 bounds only a head still incomplete; a whole head that arrived at once
            # over the limit is refused here.
            await self._send_raw_error(431, "request head too large")
            raise TransportClosed("request head too large")
        return _make_request(
            event.method, event.target, tuple(event.headers.raw_items()), self.remote
        )

    async def read_body(self, max_bytes: int) -> bytes:
        """Read the whole body of the current request (at most ``max_bytes``).

        Raises:
            BodyTooLarge: Over the limit (answered 413; the connection must close).
            TransportClosed: The peer left or broke HTTP/1.1.
        """
        parts: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_bytes:
                    await self.respond(413, error_body(4, "payload too large"), close=True)
                    raise BodyTooLarge("payload too large")
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            else:
                raise TransportClosed("connection closed during the request body")

    async def wait_closed(self) -> None:
        """Return when the peer closes the connection (a held request's client left).

        Anything the client sends meanwhile belongs to its next request: it is kept for
        ``next_request``.

        Cancellation: nothing is lost.
        """
        try:
            while data := await self.stream.receive_some(_RECEIVE_BYTES):
                self._conn.receive_data(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def accept_websocket(
        self,
        request: HttpRequest,
        *,
        max_message_bytes: int,
        compression: bool,
        answer_later: bool = False,
    ) -> WebSocketTransport:
        """Switch this connection to the WebSocket ``request`` asks for (RFC 6455 §4.2).

        ``answer_later``: a plain handshake's 101 answer goes out with the first frames
        (see ``accept_plain_websocket``); any other is answered at once.

        Cancellation: the stream is left in an undefined state; the caller closes it.

        Raises:
            TransportClosed: Not a valid WebSocket handshake, or the peer left.
        """
        key = plain_websocket_key(request, compression=compression)
        trailing = self._rest if self._head else self._conn.trailing_data[0]
        if key is not None and not trailing:
            del self._h11  # (as upgrade_bytes does: it serves no more requests)
            self._head = self._rest = b""
            return await accept_plain_websocket(
                self.stream, key, max_message_bytes=max_message_bytes, answer_later=answer_later
            )
        return await accept_websocket(
            self.stream,
            self.upgrade_bytes(request),
            max_message_bytes=max_message_bytes,
            compression=compression,
        )

    def upgrade_bytes(self, request: HttpRequest) -> bytes:
        """The bytes for a protocol taking over after ``request`` (its head, and anything
        the client already sent after it). The connection is handed over: its HTTP state
        is dropped (a long-lived WebSocket does not keep it), and it serves no more
        requests."""
        trailing, _closed = self._conn.trailing_data
        del self._h11
        return request.head_bytes() + bytes(trailing)

    @property
    def reusable(self) -> bool:
        """Whether another request may follow on this connection.

        A request with no body left to read (a GET) is finished here: h11 reports its
        end without needing more data. A body nobody read means the connection closes.
        """
        conn = self._conn
        while conn.their_state is h11.SEND_BODY:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return False
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return False
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

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
        """Answer the current request with a whole response (``head_only``: the headers
        of that response, for a HEAD request).

        Cancellation: part of the response may have been written; close the connection.
        """
        all_headers: list[tuple[bytes, bytes]] = [(b"Content-Type", content_type.encode())]
        if status not in (204, 304):  # RFC 9110 §8.6: no Content-Length on a 204
            all_headers.append((b"Content-Length", b"%d" % len(body)))
        # Header values echoed from a request (Origin, requested headers) may hold any
        # character: sent as bytes, latin-1 where possible, so h11 never fails on them.
        all_headers.extend((name.encode("ascii"), _header_value(value)) for name, value in headers)
        if close:
            all_headers.append((b"Connection", b"close"))
        conn = self._conn
        try:
            parts = [
                conn.send(
                    h11.Response(status_code=status, headers=all_headers, reason=_reason(status))
                )
            ]
            if body and not head_only:
                parts.append(conn.send(h11.Data(data=body)))
            parts.append(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            # Not in a state to answer (an error while reading the request): answer raw.
            await self._send_raw_error(status, body.decode("utf-8", "replace"))
            return
        await self._send(b"".join(p for p in parts if p))

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)

    async def _send_raw_error(self, status: int, message: str) -> None:
        body = message.encode()
        head = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=UTF-8\r\n" % (
            status,
            _reason(status),
        )
        head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        await self._send(head + body)


def _header_value(value: str) -> bytes:
    # h11 encodes str header values as ASCII; bytes 0x80-0xFF (obs-text) it takes as is.
    return value.encode("latin-1", "replace")


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")
