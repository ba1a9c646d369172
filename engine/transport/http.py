"""The HTTP front: one request head read with h11 under a size limit and a deadline.

The server routes what it gets: a WebSocket upgrade on the Engine.IO path is handed to
``transport.websocket`` with the bytes already read; anything else gets an HTTP answer.
"""

from __future__ import annotations

import contextlib
import json
from typing import Final
from urllib.parse import parse_qsl, urlsplit

import attrs
import h11
import trio

from roomcast.engine.errors import TransportClosed

__all__ = ["HttpRequest", "read_request", "send_response"]

_RECEIVE_BYTES: Final = 16_384
_REASONS: Final = {
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


@attrs.frozen(kw_only=True)
class HttpRequest:
    """A request head.

    Attributes:
        method: ``GET``, ``POST``, ...
        path: The decoded path of the target, without the query.
        query: Query parameters (the last value wins for a repeated name).
        headers: Header names lower-cased, values as sent (latin-1 decoded).
        head: Every byte read from the stream so far (the head and anything after it),
            for a protocol the request switches to.
        remote: The peer's address as ``host:port``, or None when not a socket.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    head: bytes
    remote: str | None

    @property
    def is_websocket(self) -> bool:
        """Whether this asks to upgrade to WebSocket (RFC 6455 §4.2.1)."""
        return (
            self.headers.get("upgrade", "").lower() == "websocket"
            and "upgrade" in self.headers.get("connection", "").lower()
        )


async def read_request(
    stream: trio.abc.Stream, *, max_head_bytes: int, remote: str | None
) -> HttpRequest:
    """Read one request head from ``stream``; the caller owns the deadline.

    A head over ``max_head_bytes`` is answered with 431 here.

    Cancellation: the stream is left mid-request; the caller closes it.

    Raises:
        TransportClosed: The peer left, or sent something that is not HTTP/1.1 (it was
            answered with 400 or 431 when possible).
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_bytes)
    raw = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = 431 if len(raw) > max_head_bytes else exc.error_status_hint
            await send_response(stream, status, _error_body(str(exc)), close=True)
            raise TransportClosed(f"bad HTTP request: {exc}") from exc
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive_some(_RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise TransportClosed("transport error") from exc
            if not data:
                raise TransportClosed("transport close")
            raw += data
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            # h11 bounds only a head still incomplete; a whole oversized head that arrived
            # at once is refused here.
            head_end = raw.find(b"\r\n\r\n")
            if head_end < 0 or head_end + 4 > max_head_bytes:
                await send_response(stream, 431, _error_body("request head too large"))
                raise TransportClosed("request head too large")
            target = urlsplit(event.target.decode("latin-1"))
            return HttpRequest(
                method=event.method.decode("ascii", "replace"),
                path=target.path,
                query=dict(parse_qsl(target.query, keep_blank_values=True)),
                headers={k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers},
                head=bytes(raw),
                remote=remote,
            )
        raise TransportClosed("connection closed before a request")  # pragma: no cover


def _error_body(message: str) -> bytes:
    return json.dumps({"code": 3, "message": message}).encode()


async def send_response(
    stream: trio.abc.Stream,
    status: int,
    body: bytes = b"",
    *,
    content_type: str = "text/plain; charset=UTF-8",
    headers: tuple[tuple[str, str], ...] = (),
    close: bool = True,
) -> None:
    """Write a whole HTTP/1.1 response; a peer that already left is ignored.

    Cancellation: part of the response may have been written.
    """
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")),
        b"Content-Type: %s\r\n" % content_type.encode("latin-1"),
        b"Content-Length: %d\r\n" % len(body),
    ]
    lines.extend(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(b"".join(lines))
