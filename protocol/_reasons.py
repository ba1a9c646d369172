"""Why a connection or a socket ended: the disconnect reasons, in one place.

The values are the exact strings Socket.IO uses (the ``reason`` of a ``disconnect``
handler, on the server and in socket.io-client), plus roomcast's own; they are what
handlers, metrics labels and the event log's ``DISCONNECT`` records carry, so they never
change. ``DisconnectReason`` is a ``StrEnum``: each member *is* its string, so code that
compares or stores plain strings keeps working.
"""

from __future__ import annotations

import enum

__all__ = ["DisconnectReason"]


class DisconnectReason(enum.StrEnum):
    """A disconnect reason (its value is the string on the wire and in records)."""

    # -- Socket.IO's, on both sides ------------------------------------------------------
    TRANSPORT_CLOSE = "transport close"
    """The peer closed the connection (Engine.IO CLOSE, a close frame, end of stream)."""
    TRANSPORT_ERROR = "transport error"
    """The connection failed (reset, timeout, a protocol error below Engine.IO)."""
    PING_TIMEOUT = "ping timeout"
    """No PONG came within ``ping_timeout`` of a PING (no PING, on the client)."""
    PARSE_ERROR = "parse error"
    """The peer sent something we cannot accept."""

    # -- Socket.IO's, the server's ------------------------------------------------------
    FORCED_CLOSE = "forced close"
    """The server closed the Engine.IO session (the default of ``close``)."""
    SERVER_NAMESPACE_DISCONNECT = "server namespace disconnect"
    """The app disconnected the socket (``socket.disconnect()``)."""
    CLIENT_NAMESPACE_DISCONNECT = "client namespace disconnect"
    """The client left the namespace (its DISCONNECT packet)."""
    SERVER_SHUTTING_DOWN = "server shutting down"
    """The server is stopping."""

    # -- Socket.IO's, the client's ------------------------------------------------------
    IO_SERVER_DISCONNECT = "io server disconnect"
    """The server disconnected the socket (not reconnected)."""
    IO_CLIENT_DISCONNECT = "io client disconnect"
    """The client disconnected on purpose."""

    # -- roomcast's own -------------------------------------------------------------------
    SLOW_CONSUMER = "slow consumer"
    """A non-volatile frame did not fit in the connection's outbox (it was evicted)."""
    RATE_LIMIT_EXCEEDED = "rate limit exceeded"
    """The client sent more events than its rate limit allows."""
    MESSAGE_TOO_BIG = "message too big"
    """A WebSocket message over the size limit (close code 1009)."""
    CONNECT_TIMEOUT = "connect timeout"
    """No namespace got connected in time (the server waited for a CONNECT; the client
    for the handshake or a CONNECT's answer)."""
    ATTACHMENT_TIMEOUT = "attachment timeout"
    """A binary packet's attachments did not all arrive in time."""
    RECONNECT_FAILED = "reconnect failed"
    """The client gave up after ``reconnection_attempts`` failed attempts."""
    CONNECT_REFUSED = "connect refused"
    """The server refused the client's CONNECT to the namespace."""
