"""``Socket``: one client's connection to one namespace, as app code sees it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from roomcast.engine.actors.outbox import Outbox
from roomcast.engine.errors import ConnectionLostError
from roomcast.engine.handlers import require_async
from roomcast.engine.handshake import Handshake
from roomcast.engine.listeners import (
    AnyListener,
    OutgoingListener,
    PacketMiddleware,
    notify_outgoing,
)
from roomcast.protocol import DisconnectReason, Event, JsonValue, RecordKind

if TYPE_CHECKING:
    from roomcast.engine.actors.connection import NamespaceMember
    from roomcast.engine.namespace import BroadcastOperator, Namespace
    from roomcast.engine.transport.frames import OutFrame
    from roomcast.engine.transport.http import HttpRequest
    from roomcast.protocol import SioPacket, SioServerConnection

__all__ = ["AckReceiver", "AckWaiter", "Socket", "SocketConnection"]


class SocketConnection(Protocol):
    """What a socket, and the namespace and server acting on it, need of the connection it
    is on: ``actors.connection.Connection`` serves clients; replay stands one in that
    captures what the app sends (``roomcast.engine.replay``)."""

    @property
    def eio_sid(self) -> str:
        """The Engine.IO session id."""
        ...

    @property
    def outbox(self) -> Outbox:
        """Where frames for the client wait for the writer."""
        ...

    @property
    def sio(self) -> SioServerConnection:
        """The Socket.IO state of the connection (namespaces, ack ids)."""
        ...

    @property
    def namespaces(self) -> dict[str, NamespaceMember]:
        """The sockets it carries, by namespace."""
        ...

    @property
    def request(self) -> HttpRequest | None:
        """The HTTP request that opened it, when there was one."""
        ...

    @property
    def transport_name(self) -> str:
        """``"polling"`` or ``"websocket"``."""
        ...

    @property
    def closed(self) -> bool:
        """Whether it is closing or closed."""
        ...

    def send_packet(self, packet: SioPacket) -> bool:
        """Queue one Socket.IO packet; False if it could not be queued."""
        ...

    def send_frames(self, frames: tuple[OutFrame, ...], *, volatile: bool = False) -> bool:
        """Queue encoded Engine.IO frames; False if dropped."""
        ...

    def close(self, reason: str) -> None:
        """Start closing it with a disconnect reason (the first one wins)."""

    def evict(self, reason: str) -> None:
        """Close it because it cannot keep up (never blocks)."""


class AckReceiver(Protocol):
    """What takes a client's answer to one ack id: an ``AckWaiter`` (``Socket.call``), or
    the collector of a broadcast with ack, which one ack id serves for many sockets."""

    def resolve(self, sid: str, args: tuple[JsonValue, ...]) -> None:
        """Socket ``sid`` answered with ``args``."""

    def fail(self, sid: str, error: Exception) -> None:
        """Socket ``sid`` will never answer (its connection or namespace went away)."""


@attrs.define(eq=False)
class AckWaiter:
    """Waits for one client's answer to an ack id (one per socket per call)."""

    event: trio.Event = attrs.field(factory=trio.Event)
    args: tuple[JsonValue, ...] = ()
    error: Exception | None = None

    def resolve(self, sid: str, args: tuple[JsonValue, ...]) -> None:
        self.args = args
        self.event.set()

    def fail(self, sid: str, error: Exception) -> None:
        self.error = error
        self.event.set()


@attrs.define(eq=False)
class Socket:
    """A client connected to one namespace.

    Attributes:
        sid: The Socket.IO socket id (not the Engine.IO session id).
        namespace: The namespace object.
        handshake: What the client sent when it connected.
        data: Free-form per-socket data for the app (kept across recovery, listed by
            ``fetch_sockets``).
        pid: The private session id (connection state recovery on), else None.
        recovered: Whether this socket is a recovered one (same sid, rooms and data,
            missed events replayed).
        connected: Whether it is still in its namespace: False from the moment it starts
            disconnecting (already in the ``disconnecting`` handlers).
        outbox: Its connection's outbox, where adapters put broadcast frames (a plain
            attribute: a fan-out reads it once per recipient).

    Per-socket hooks, as Node's socket has them (``roomcast.engine.listeners`` says when
    each runs): ``use`` (per-packet middleware), ``on_any`` / ``off_any``,
    ``on_any_outgoing`` / ``off_any_outgoing``; they add to the namespace's own.

    Its last moments (see ``Namespace``): ``disconnecting`` handlers run while it is still
    in its rooms; ``disconnect`` handlers run after it left them, and ``rooms`` then keeps
    answering with the rooms it was in when it left them.
    """

    sid: str
    namespace: Namespace
    connection: SocketConnection
    handshake: Handshake
    data: dict[str, Any] = attrs.field(factory=dict)
    pid: str | None = None
    recovered: bool = False
    connected: bool = True
    acks: dict[int, AckReceiver] = attrs.field(factory=dict, repr=False)
    _rooms_left: frozenset[str] | None = attrs.field(default=None, init=False, repr=False)
    # Tuples, replaced on change: a socket with no hooks shares the empty tuple.
    packet_middlewares: tuple[PacketMiddleware, ...] = attrs.field(default=(), repr=False)
    any_listeners: tuple[AnyListener, ...] = attrs.field(default=(), repr=False)
    outgoing_listeners: tuple[OutgoingListener, ...] = attrs.field(default=(), repr=False)
    outbox: Outbox = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.outbox = self.connection.outbox  # (a connection keeps its outbox for life)

    def use(self, middleware: PacketMiddleware) -> PacketMiddleware:
        """Add per-packet middleware ``async def middleware(socket, event, args)`` for this
        socket's incoming events (Node's ``socket.use``); raise to refuse the event."""
        require_async(middleware, "packet middleware")
        self.packet_middlewares = (*self.packet_middlewares, middleware)
        return middleware

    def on_any(self, listener: AnyListener) -> AnyListener:
        """Register ``async def listener(socket, event, *args)`` for every event this socket
        receives (Node's ``socket.onAny``), after the namespace's ``on_any`` listeners."""
        require_async(listener, "on_any")
        self.any_listeners = (*self.any_listeners, listener)
        return listener

    def off_any(self, listener: AnyListener | None = None) -> None:
        """Remove one of this socket's ``on_any`` listeners (all of them when None)."""
        self.any_listeners = _without(self.any_listeners, listener)

    def on_any_outgoing(self, listener: OutgoingListener) -> OutgoingListener:
        """Register ``def listener(socket, event, args)`` (synchronous) for every event sent
        to this socket (Node's ``socket.onAnyOutgoing``)."""
        if not self.outgoing_listeners and self.connected:
            self.namespace.outgoing_sockets += 1
        self.outgoing_listeners = (*self.outgoing_listeners, listener)
        return listener

    def off_any_outgoing(self, listener: OutgoingListener | None = None) -> None:
        """Remove one of this socket's outgoing listeners (all of them when None)."""
        had = bool(self.outgoing_listeners)
        self.outgoing_listeners = _without(self.outgoing_listeners, listener)
        if had and not self.outgoing_listeners and self.connected:
            self.namespace.outgoing_sockets -= 1

    def evict(self, reason: str) -> None:
        """Close this socket's connection because it cannot keep up (never blocks)."""
        self.connection.evict(reason)

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this socket is in, its own id included.

        Once it has left them (in ``disconnect`` handlers and after): the rooms it was in
        when it left them, a snapshot taken then.
        """
        if self._rooms_left is not None:
            return self._rooms_left
        return self.namespace.adapter.socket_rooms(self.sid)

    async def join(self, *rooms: str) -> None:
        """Join ``rooms`` (nothing once the socket has left its rooms for good).

        Cancellation: some of the rooms may have been joined.
        """
        if self._rooms_left is not None:
            await trio.lowlevel.checkpoint()
            return
        new = [room for room in rooms if room not in self.rooms]
        await self.namespace.adapter.add_all(self.sid, rooms)
        if new and self.namespace.presence is not None:
            self.namespace.presence.joined(self, new)
        if new:
            await self.namespace.session_changed(self)
        observer = self.namespace.server.observer
        for room in new:
            if observer is not None:
                observer.room_joined(self, room)
            await self.namespace.server.broadcaster.record_event(
                RecordKind.JOIN, self.namespace.name, room=room, sender=self.sid
            )

    async def leave(self, room: str) -> None:
        """Leave ``room`` (nothing once the socket has left its rooms for good).

        Cancellation: the room may or may not have been left.
        """
        if self._rooms_left is not None:
            await trio.lowlevel.checkpoint()
            return
        was_in = room in self.rooms
        await self.namespace.adapter.delete(self.sid, room)
        if was_in and self.namespace.presence is not None:
            self.namespace.presence.left(self, room)
        if was_in:
            if self.namespace.server.observer is not None:
                self.namespace.server.observer.room_left(self, room)
            await self.namespace.session_changed(self)
            await self.namespace.server.broadcaster.record_event(
                RecordKind.LEAVE, self.namespace.name, room=room, sender=self.sid
            )

    async def emit(self, event: str, *args: JsonValue) -> None:
        """Send ``event`` to this client only (queued; a closed socket drops it).

        Cancellation: not a cancellation point beyond one checkpoint.
        """
        if not self.connected:
            await trio.lowlevel.checkpoint()
            return
        if self.pid is not None:
            # With recovery on, a direct emit is a broadcast to the socket's own room, so
            # it gets an offset and is kept for replay (as in Node).
            await self.namespace.broadcast_operator(rooms=frozenset({self.sid})).emit(event, *args)
            return
        await trio.lowlevel.checkpoint()
        if self.outgoing_listeners or self.namespace.outgoing_listeners:
            notify_outgoing(self, event, args)
        self.connection.send_packet(Event(name=event, args=args, namespace=self.namespace.name))
        if self.namespace.server.observer is not None:
            self.namespace.server.observer.event_sent(self, event, args)

    async def call(self, event: str, *args: JsonValue) -> tuple[JsonValue, ...]:
        """Send ``event`` with an ack id and wait for the client's answer.

        The caller owns the timeout (``with trio.fail_after(5): await socket.call(...)``).

        Cancellation: the ack id is forgotten; a late answer is ignored.

        Raises:
            ConnectionLostError: The socket disconnected before answering.
        """
        if not self.connected:
            raise ConnectionLostError("socket is disconnected")
        ack_id = self.namespace.next_ack_id()
        waiter = AckWaiter()
        self.acks[ack_id] = waiter
        self.connection.sio.expect_ack(self.namespace.name, ack_id)
        try:
            if self.outgoing_listeners or self.namespace.outgoing_listeners:
                notify_outgoing(self, event, args)
            self.connection.send_packet(
                Event(name=event, args=args, namespace=self.namespace.name, ack_id=ack_id)
            )
            if self.namespace.server.observer is not None:
                self.namespace.server.observer.event_sent(self, event, args)
            await waiter.event.wait()
        finally:
            self.acks.pop(ack_id, None)
        if waiter.error is not None:
            raise waiter.error
        return waiter.args

    def to(self, *rooms: str) -> BroadcastOperator:
        """Broadcast to ``rooms``, leaving this socket out (Socket.IO's ``socket.to``)."""
        return self.broadcast.to(*rooms)

    @property
    def broadcast(self) -> BroadcastOperator:
        """Broadcast to the whole namespace but this socket."""
        return self.namespace.broadcast_operator(except_sids=frozenset({self.sid}))

    async def disconnect(self, *, close: bool = False) -> None:
        """Disconnect this socket from its namespace; ``close`` also closes the connection.

        The client sees a server-side disconnect ("io server disconnect").

        Cancellation: the socket is gone either way; its cleanup may be incomplete.
        """
        if not self.connected:
            await trio.lowlevel.checkpoint()
            return
        conn = self.connection
        if not conn.closed:
            conn.send_packet(conn.sio.disconnect(self.namespace.name))
        await self.namespace.remove_socket(self, DisconnectReason.SERVER_NAMESPACE_DISCONNECT)
        if close:
            conn.close(DisconnectReason.SERVER_NAMESPACE_DISCONNECT)

    def _fail_acks(self, reason: str) -> None:
        error = ConnectionLostError(reason)
        for ack_id, waiter in list(self.acks.items()):
            waiter.fail(self.sid, error)
            del self.acks[ack_id]


def _without(listeners: tuple[Any, ...], listener: object | None) -> tuple[Any, ...]:
    if listener is None:
        return ()
    if listener not in listeners:
        return listeners
    index = listeners.index(listener)
    return (*listeners[:index], *listeners[index + 1 :])
