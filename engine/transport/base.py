"""What the connection actor and the server's router need of a transport.

Two fronts implement these: the built-in one (``transport.http`` and
``transport.websocket``, HTTP/1.1 and RFC 6455 on a Trio stream) and the ASGI one
(``transport.asgi``, where the ASGI server owns the socket, the HTTP parsing and the
WebSocket framing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from wsproto.frame_protocol import CloseReason

if TYPE_CHECKING:
    from roomcast.engine.errors import TransportClosed
    from roomcast.engine.stats import Traffic
    from roomcast.engine.transport.frames import OutFrame
    from roomcast.engine.transport.http import HttpRequest

__all__ = ["HttpExchange", "MessageTransport", "NonBlockingTransport"]


class MessageTransport(Protocol):
    """An accepted WebSocket as the connection actor drives it: one reader task
    (``receive_messages``) and one writer task (``send``, ``send_now``, ``aclose``)."""

    on_control: Callable[[], None] | None
    """Called when the transport queued frames of its own (pongs, a close answer) for
    the writer; the connection sets it to wake its writer."""
    traffic: Traffic
    """Where the transport counts the bytes (and the packets it writes) of its
    connection; the connection sets it."""

    @property
    def control(self) -> Sequence[bytes]:
        """Frames of the transport's own waiting for the writer (empty when none)."""

    async def receive_message(self) -> str | bytes:
        """Return the next whole message from the peer.

        Cancellation: safe; nothing is lost.

        Raises:
            TransportClosed: The peer closed or went away (``reason`` and ``code`` say how).
        """

    async def receive_messages(self) -> list[str | bytes]:
        """Return every whole message one read brought (at least one), in order.

        Cancellation: safe; nothing is lost.

        Raises:
            TransportClosed: As ``receive_message``.
        """

    def send_now(self, frames: tuple[OutFrame, ...]) -> bytes | None:
        """Write ``frames`` without blocking if possible (see ``Outbox.direct``): None
        when it could not try, else the bytes the writer must still send first."""

    async def send(self, frames: list[OutFrame]) -> None:
        """Write ``frames`` (and any control frames first).

        Cancellation: part of the data may have been written; the transport must close.

        Raises:
            TransportClosed: The peer is gone.
        """

    async def aclose(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close with ``code`` and ``reason`` (RFC 6455 §7.4.1), if not closed already.

        Cancellation: the transport is closed forcefully.
        """

    def nonblocking(self) -> NonBlockingTransport | None:
        """This transport, if a reactor can serve it (a plain socket), else None."""


class NonBlockingTransport(MessageTransport, Protocol):
    """A WebSocket on a plain socket, read and written without blocking by the reactor
    (``transport.reactor``) instead of by the connection's own reader and writer tasks."""

    def fileno(self) -> int:
        """The socket's file descriptor (to register with the reactor)."""

    def receive_nowait(self) -> list[str | bytes]:
        """Read once without blocking; the whole messages that read completed.

        Raises:
            TransportClosed: As ``receive_message``.
        """

    @property
    def peer_closed(self) -> TransportClosed | None:
        """What the next read raises once the peer's close frame arrived, else None."""

    @property
    def write_blocked(self) -> bool:
        """Whether ``write_nowait`` left bytes unsent."""

    def close_nowait(self, code: int, reason: str) -> None:
        """End the connection now without blocking: the close frame if the socket takes
        it, else a shutdown both ways (``aclose`` still releases the descriptor)."""

    def write_nowait(self, frames: list[OutFrame]) -> bool:
        """Write what is left, control frames and ``frames`` without blocking; True when
        all went (else wait until the socket is writable and call again, with no frames).

        Raises:
            TransportClosed: The peer is gone.
        """


class HttpExchange(Protocol):
    """One HTTP request as the server's router answers it: a whole response, the request
    body, the client going away, or the switch to WebSocket."""

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
        """Answer with a whole response (``close``: end the connection after it;
        ``head_only``: the headers only, for a HEAD request).

        Cancellation: part of the response may have been written.
        """

    async def read_body(self, max_bytes: int) -> bytes:
        """Read the whole request body (at most ``max_bytes``).

        Cancellation: the body is left partly read; the request cannot be answered.

        Raises:
            BodyTooLarge: Over the limit (answered 413).
            TransportClosed: The client went away.
        """

    async def wait_closed(self) -> None:
        """Return when the client goes away (what a held polling GET watches for).

        Cancellation: nothing is lost.
        """

    async def accept_websocket(
        self,
        request: HttpRequest,
        *,
        max_message_bytes: int,
        compression: bool,
        answer_later: bool = False,
    ) -> MessageTransport:
        """Accept the WebSocket this request asks for.

        ``answer_later``: the answer may wait for the first frames the server writes and
        go out with them (a new session, whose OPEN packet follows at once); never for a
        client that waits for the answer before it sends what the server must answer.

        Cancellation: the connection is left in an undefined state; it must close.

        Raises:
            TransportClosed: The handshake failed or the client went away.
        """
