"""``Observer``: what the server tells a watcher (the Admin UI) about sockets, rooms and events.

A server has no observer by default (``Server.observer`` is None), and then each point
below costs one attribute test. The calls are synchronous and must not block or raise:
an observer that needs to do I/O queues it (the Admin UI offers frames to outboxes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from roomcast.engine.actors.connection import Connection
    from roomcast.engine.adapters.base import BroadcastOptions
    from roomcast.engine.namespace import Namespace
    from roomcast.engine.socket import Socket
    from roomcast.protocol import JsonValue

__all__ = ["Observer"]


class Observer(Protocol):
    """The points of the engine an observer hears about."""

    def connection_opened(self, conn: Connection) -> None:
        """A new Engine.IO session of the Socket.IO endpoint."""

    def connection_closed(self, conn: Connection, reason: str) -> None:
        """An Engine.IO session of the Socket.IO endpoint closed."""

    def socket_connected(self, socket: Socket) -> None:
        """A socket was accepted into its namespace (its rooms restored if it recovered),
        before the ``connect`` handlers run."""

    def socket_disconnected(self, socket: Socket, reason: str) -> None:
        """A socket left its namespace and its rooms (``socket.rooms`` is what it left),
        before the ``disconnect`` handlers run."""

    def room_joined(self, socket: Socket, room: str) -> None:
        """A connected socket joined ``room``."""

    def room_left(self, socket: Socket, room: str) -> None:
        """A connected socket left ``room``."""

    def event_received(self, socket: Socket, event: str, args: tuple[JsonValue, ...]) -> None:
        """A client sent ``event``, before its handler runs."""

    def event_sent(self, socket: Socket, event: str, args: tuple[JsonValue, ...]) -> None:
        """``event`` was queued for one socket (``socket.emit`` or ``socket.call``)."""

    def event_broadcast(
        self, namespace: Namespace, opts: BroadcastOptions, event: str, args: tuple[JsonValue, ...]
    ) -> None:
        """``event`` was broadcast in ``namespace`` to the sockets ``opts`` selects."""
