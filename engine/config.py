"""One frozen Config: every limit, queue size and timer of a roomcast server."""

from __future__ import annotations

import attrs

from roomcast.engine.log.config import LogConfig
from roomcast.protocol import DEFAULT_LIMITS, Limits

__all__ = ["Config", "default_log_config"]


def default_log_config() -> LogConfig:
    """The event log a Config gets when none is given: on, in ``./roomcast-log``.

    (A function, looked up when a Config is made, so a test suite can point every
    default log at a temporary directory.)
    """
    return LogConfig()


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Config:
    """Server configuration. Durations are float seconds, sizes ``max_*_bytes``, counts ``max_*``.

    Attributes:
        path: The Engine.IO endpoint path (Socket.IO's default ``/socket.io/``).
        ping_interval: Seconds between a PONG and the next PING (Engine.IO v4 heartbeat).
        ping_timeout: Seconds a client has to answer a PING before it is dropped.
        connect_timeout: Seconds an Engine.IO session may live without joining any
            Socket.IO namespace (Node's ``connectTimeout``).
        limits: Decoder limits (payload bytes, attachments, ack ids, nesting, ...).
        log: The event log (on by default, in ``./roomcast-log``; ``LogConfig(enabled=
            False)`` turns it off). ``serve`` opens it; see docs/event-log.md.
        outbox_size: Frames one connection may have queued for writing. A non-volatile
            frame that does not fit disconnects that connection as a slow consumer.
        volatile_backlog: A volatile emit is dropped for a connection that already has this
            many frames queued (it "cannot take it now").
        max_write_batch: Most frames the writer joins into one ``send_all``.
        handler_queue_size: Incoming app events buffered per connection while its handler
            runs. When full, the reader stops reading (TCP backpressure), but the session's
            control traffic already read is still handled first.
        room_inbox_size: Commands a room actor may have queued; senders wait when full.
        room_max_restarts: Room actor crashes tolerated within ``room_restart_window``
            before the failure escalates and stops the server (OTP restart intensity).
        room_restart_window: Seconds of the restart-intensity window.
        close_grace: Seconds allowed for a close frame and a clean shutdown of a transport.
        cleanup_timeout: Seconds a closed connection's cleanup (leaving rooms, the app's
            disconnect handlers, its log records) may take, also during a shutdown; past
            it the cleanup is cut off with a warning.
        max_request_header_bytes: Largest HTTP request line plus headers.
        request_header_timeout: Seconds a client has to send its whole request head.
        request_body_timeout: Seconds a client has to send a whole polling POST body;
            then HTTP 408 and the session closes.
        websocket_handshake_timeout: Seconds to complete the WebSocket upgrade.
        upgrade_timeout: Seconds a polling session's WebSocket probe may take to finish
            the Engine.IO upgrade (probe, then UPGRADE).
        attachment_timeout: Seconds a binary packet may wait for its announced
            attachments; then the connection closes ("attachment timeout").
        max_events_per_second: Sustained Engine.IO messages per second one connection
            may send (a token bucket; 0 turns the limit off). Over it, the connection
            closes with the reason "rate limit exceeded".
        max_events_burst: The bucket's size: how many messages may arrive at once.
        max_connections: Most Engine.IO sessions at once; more get HTTP 503.
        max_connections_per_address: Most sessions from one remote address (None: no
            per-address limit; set it when clients do not share addresses through a
            proxy).
        websocket_compression: Agree on WebSocket permessage-deflate (RFC 7692) when a
            client offers it (off by default, like Node's socket.io). The payload limit
            then applies to each message's decompressed size.
        metrics: Serve Prometheus metrics at ``GET /metrics`` (needs the ``metrics``
            extra, prometheus-client; see docs/operations.md, "Metrics"). Off by default:
            the endpoint is on the clients' port.
    """

    path: str = "/socket.io/"
    ping_interval: float = attrs.field(default=25.0, validator=_positive)
    ping_timeout: float = attrs.field(default=20.0, validator=_positive)
    connect_timeout: float = attrs.field(default=45.0, validator=_positive)
    limits: Limits = DEFAULT_LIMITS
    log: LogConfig = attrs.field(factory=lambda: default_log_config())
    outbox_size: int = 1024
    volatile_backlog: int = 32
    max_write_batch: int = 512
    handler_queue_size: int = 256
    room_inbox_size: int = 256
    room_max_restarts: int = 5
    room_restart_window: float = 10.0
    close_grace: float = 2.0
    cleanup_timeout: float = 30.0
    max_request_header_bytes: int = 16_384
    request_header_timeout: float = 10.0
    request_body_timeout: float = 30.0
    websocket_handshake_timeout: float = 10.0
    upgrade_timeout: float = 10.0
    attachment_timeout: float = 10.0
    max_events_per_second: float = 1_000.0
    max_events_burst: int = 2_000
    max_connections: int = 50_000
    max_connections_per_address: int | None = None
    websocket_compression: bool = False
    metrics: bool = False
