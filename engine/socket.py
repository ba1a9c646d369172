"""``Socket``: one client's connection to one namespace, as app code sees it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import trio

from roomcast.engine.actors.outbox import Outbox
from roomcast.engine.errors import ConnectionLostError
from roomcast.protocol._log import RecordKind
from roomcast.protocol._sio import Event, JsonValue

if TYPE_CHECKING:
    from roomcast.engine.actors.connection import Connection
    from roomcast.engine.namespace import BroadcastOperator, Namespace

__all__ = ["AckWaiter", "Handshake", "Socket"]


@attrs.frozen(kw_only=True)
class Handshake:
    """What the client sent when it connected to the namespace.

    Attributes:
        auth: The CONNECT packet's auth payload (``{}`` when none was sent).
        headers: The HTTP request headers, names lower-cased.
        query: The query parameters of the Engine.IO request.
        address: The peer's address, when known.
        time: Trio time of the connection.
    """

    auth: JsonValue
    headers: dict[str, str]
    query: dict[str, str]
    address: str | None
    time: float


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

    Its last moments (see ``Namespace``): ``disconnecting`` handlers run while it is still
    in its rooms; ``disconnect`` handlers run after it left them, and ``rooms`` then keeps
    answering with the rooms it was in when it left them.
    """

    sid: str
    namespace: Namespace
    connection: Connection
    handshake: Handshake
    data: dict[str, Any] = attrs.field(factory=dict)
    pid: str | None = None
    recovered: bool = False
    connected: bool = True
    acks: dict[int, AckWaiter | Any] = attrs.field(factory=dict, repr=False)
    _rooms_left: frozenset[str] | None = attrs.field(default=None, init=False, repr=False)

    @property
    def outbox(self) -> Outbox:
        """The connection's outbox (adapters put broadcast frames in it)."""
        return self.connection.outbox

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
        for room in new:
            await self.namespace.server.record_event(
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
            await self.namespace.session_changed(self)
            await self.namespace.server.record_event(
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
        self.connection.send_packet(Event(name=event, args=args, namespace=self.namespace.name))

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
            self.connection.send_packet(
                Event(name=event, args=args, namespace=self.namespace.name, ack_id=ack_id)
            )
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
        await self.namespace.remove_socket(self, "server namespace disconnect")
        if close:
            conn.close("server namespace disconnect")

    def _fail_acks(self, reason: str) -> None:
        error = ConnectionLostError(reason)
        for ack_id, waiter in list(self.acks.items()):
            waiter.fail(self.sid, error)
            del self.acks[ack_id]
