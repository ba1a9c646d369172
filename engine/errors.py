"""The engine's exceptions. One root, ``EngineError``; families callers can tell apart."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from roomcast.protocol import JsonValue

__all__ = [
    "AckError",
    "ConnectRefusedError",
    "ConnectionFailedError",
    "ConnectionLostError",
    "EngineError",
    "EventOverrunError",
    "HandlerError",
    "NamespaceDisconnected",
    "TransportClosed",
]


class EngineError(Exception):
    """Root of every error raised by ``roomcast.engine``."""


class TransportClosed(EngineError):  # an end-of-stream signal, like trio.EndOfChannel
    """The transport under a connection ended.

    Attributes:
        reason: Socket.IO's disconnect reason for it ("transport close", "transport error").
        code: The WebSocket close code when there is one (1006: no close frame).
    """

    def __init__(self, reason: str, *, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class ConnectRefusedError(EngineError):
    """A namespace connection was refused (middleware, connect handler, or unknown namespace).

    Raise it from a middleware or connect handler to refuse; clients receive a
    CONNECT_ERROR whose data is ``{"message": message, "data": data}`` (``data`` omitted
    when None), exactly as Node ``socket.io`` sends ``new Error(message)`` with ``.data``.
    The client raises it when the server refuses.

    Attributes:
        message: Human-readable reason.
        data: Extra JSON data for the client, or None.
        namespace: The namespace refused.
    """

    def __init__(self, message: str, data: JsonValue = None, *, namespace: str = "/") -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        self.namespace = namespace


class AckError(EngineError):
    """An acknowledgement will never come: the connection or namespace went away first."""


class ConnectionLostError(AckError):
    """The connection closed while something was waiting on it.

    Attributes:
        reason: The disconnect reason.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"connection lost: {reason}")
        self.reason = reason


# --------------------------------------------------------------------------- client


class ConnectionFailedError(EngineError):
    """The client could not open a connection: TCP, the WebSocket upgrade or the handshake.

    Attributes:
        status_code: The HTTP status when the server refused the WebSocket upgrade.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class NamespaceDisconnected(EngineError):  # end-of-stream signal, like trio.EndOfChannel
    """A client namespace is disconnected for good: nothing more arrives or can be sent.

    ``Client.receive`` raises it once the events buffered before the disconnect are
    consumed; ``emit`` and ``call`` raise it at once.

    Attributes:
        namespace: The namespace.
        reason: Socket.IO's disconnect reason: ``"io server disconnect"``,
            ``"io client disconnect"``, ``"reconnect failed"``, or the transport's reason
            (``"transport close"``, ``"ping timeout"``, ...) when reconnecting is off.
    """

    def __init__(self, namespace: str, reason: str) -> None:
        super().__init__(f"namespace {namespace!r} disconnected: {reason}")
        self.namespace = namespace
        self.reason = reason


class EventOverrunError(EngineError):
    """The client received events faster than its handlers or ``receive`` took them.

    Overrun is an error, not a silent drop (as in tractor): the client stops and
    ``open_client`` raises this.

    Attributes:
        namespace: The namespace whose buffer was full.
        max_buffered_events: The bound that was hit.
    """

    def __init__(self, namespace: str, max_buffered_events: int) -> None:
        super().__init__(
            f"more than {max_buffered_events} events waiting in namespace {namespace!r}: "
            "register a handler (or on_any) or call receive() faster"
        )
        self.namespace = namespace
        self.max_buffered_events = max_buffered_events


class HandlerError(EngineError):
    """A client event handler raised; the handler's exception is the ``__cause__``.

    Attributes:
        namespace: The namespace of the event.
        event: The event name (``"connect"``/``"disconnect"`` for those handlers).
    """

    def __init__(self, namespace: str, event: str) -> None:
        super().__init__(f"handler for {event!r} in namespace {namespace!r} raised")
        self.namespace = namespace
        self.event = event
