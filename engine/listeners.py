"""Node socket.io's per-event hooks: catch-all listeners for incoming and outgoing events,
and per-packet middleware.

What runs for an incoming event (a client's EVENT on a connected namespace), in order, as
in Node (``Socket.onevent`` then ``dispatch``):

1. the ``on_any`` listeners ``(socket, event, *args)``: the namespace's, then the socket's.
   They see every event, also those the middleware then refuses; what they return is
   ignored, and one that raises is logged and does not stop the others;
2. the per-packet middleware ``(socket, event, args)``: the namespace's (``use_packet``),
   then the socket's (``socket.use``). The first that raises refuses the event: it is not
   handled and, if the client asked for an ack, the ack is never sent (Node does the
   same: its ``next(err)`` emits ``error`` on the server socket and nothing to the
   client). The namespace's ``on_error`` handlers ``(socket, event, error)`` get the
   exception (Node's ``socket.on("error")``); without one it is logged at DEBUG;
3. the event's handler, whose return value answers the ack; if there is none, the
   ``on_unhandled`` catch-alls ``(socket, event, *args)`` (the last one's return value
   answers the ack).

``on_any_outgoing`` listeners ``(socket, event, args)`` are plain functions, called
synchronously for each EVENT sent to a socket of this node: by ``socket.emit`` and
``socket.call`` before the packet is queued, and by a broadcast (``emit``, ``call``,
delivery from a cluster's shared log) right after its frames were handed to that socket's
outbox (queued, or written at once), in the room's fan-out: so for a socket the broadcast
did not reach (left out, a volatile event dropped, a slow consumer evicted) it is not
called. ``args`` are the arguments as emitted (without the offset recovery appends). It is
not called for acks, for CONNECT and DISCONNECT packets, nor for missed events replayed to a
recovering client. A listener must not block; one that raises is logged. With no outgoing
listener registered in a namespace, broadcasting in it costs one check per broadcast.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from roomcast.protocol import Event, JsonValue, SioPacket

if TYPE_CHECKING:
    from roomcast.engine.namespace import Namespace
    from roomcast.engine.socket import Socket

__all__ = [
    "AnyListener",
    "OutgoingListener",
    "PacketMiddleware",
    "RefusalHandler",
    "admit_event",
    "notify_outgoing",
    "outgoing_hook",
]

logger = logging.getLogger(__name__)

AnyListener: TypeAlias = Callable[..., Awaitable[Any]]
"""``async def listener(socket, event, *args)``."""
PacketMiddleware: TypeAlias = Callable[["Socket", str, tuple[JsonValue, ...]], Awaitable[None]]
"""``async def middleware(socket, event, args)``; raise to refuse the event."""
RefusalHandler: TypeAlias = Callable[["Socket", str, Exception], Awaitable[None]]
"""``async def on_error(socket, event, error)``: a per-packet middleware refused ``event``."""
OutgoingListener: TypeAlias = Callable[["Socket", str, tuple[JsonValue, ...]], None]
"""``def listener(socket, event, args)`` (synchronous: it runs inside a room's fan-out)."""


async def admit_event(socket: Socket, name: str, args: tuple[JsonValue, ...]) -> bool:
    """Run the ``on_any`` listeners and the per-packet middleware for an incoming event;
    whether its handler may run.

    Cancellation: the listeners and middleware not yet run do not run.
    """
    ns = socket.namespace
    for listener in (*ns.any_handlers, *socket.any_listeners):
        try:
            await listener(socket, name, *args)
        except Exception:
            logger.exception("on_any listener failed for %s (event %r)", socket.sid, name)
    refusal: Exception | None = None
    for middleware in (*ns.packet_middlewares, *socket.packet_middlewares):
        try:
            await middleware(socket, name, args)
        except Exception as exc:  # noqa: BLE001 - any exception refuses, as Node's next(err)
            refusal = exc
            break
    if refusal is None:
        return True
    await _refused(socket, name, refusal)
    return False


async def _refused(socket: Socket, name: str, error: Exception) -> None:
    handlers = socket.namespace.error_handlers
    if not handlers:
        logger.debug("event %r of %s refused by middleware: %r", name, socket.sid, error)
    for handler in handlers:
        try:
            await handler(socket, name, error)
        except Exception:
            logger.exception("on_error handler failed for %s (event %r)", socket.sid, name)


def notify_outgoing(socket: Socket, name: str, args: tuple[JsonValue, ...]) -> None:
    """Call the namespace's and the socket's outgoing listeners for one sent event."""
    for listener in (*socket.namespace.outgoing_listeners, *socket.outgoing_listeners):
        try:
            listener(socket, name, args)
        except Exception:
            logger.exception("on_any_outgoing listener failed for %s (event %r)", socket.sid, name)


def outgoing_hook(
    ns: Namespace, packet: SioPacket, on_member: Callable[[str], None] | None
) -> Callable[[str], None] | None:
    """``on_member`` for a broadcast of ``packet`` in ``ns``: it also calls the outgoing
    listeners of each socket reached. ``on_member`` itself when nobody listens (the
    caller checks ``ns.outgoing_listeners or ns.outgoing_sockets`` first, so a broadcast
    with no listener pays only that check)."""
    if not isinstance(packet, Event):
        return on_member
    name, args, sockets = packet.name, packet.args, ns.sockets

    def reached(sid: str) -> None:
        if on_member is not None:
            on_member(sid)
        socket = sockets.get(sid)
        if socket is not None:
            notify_outgoing(socket, name, args)

    return reached
