"""Namespaces: handlers, middleware, sockets, and broadcasting to rooms."""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import attrs
import trio

from roomcast.engine.adapters.base import (
    AckAnswer,
    Adapter,
    BroadcastAckResult,
    BroadcastOptions,
    ServerSideResult,
    SocketInfo,
)
from roomcast.engine.adapters.cluster import ClusterError
from roomcast.engine.handlers import require_async
from roomcast.engine.listeners import (
    AnyListener,
    OutgoingListener,
    PacketMiddleware,
    RefusalHandler,
    notify_outgoing,
    outgoing_hook,
)
from roomcast.engine.log import LogError, room_history
from roomcast.engine.recovery import (
    RECOVERABLE_REASONS,
    MissedEvent,
    SavedSession,
)
from roomcast.engine.transport.frames import SharedFrame
from roomcast.protocol import (
    RESERVED_EVENTS,
    Event,
    JsonValue,
    LogRecord,
    RecordKind,
    SioPacket,
    encode_message,
)

if TYPE_CHECKING:
    from roomcast.engine.handshake import Handshake
    from roomcast.engine.presence import Presence
    from roomcast.engine.server import Server
    from roomcast.engine.socket import Socket

__all__ = [
    "BroadcastAckResult",
    "BroadcastOperator",
    "Namespace",
    "NamespaceMatcher",
    "RemoteSocket",
    "ServerSideHandler",
    "ServerSideResult",
]

logger = logging.getLogger(__name__)

Handler: TypeAlias = Callable[..., Awaitable[Any]]
Middleware: TypeAlias = Callable[["Socket", JsonValue], Awaitable[None]]
ServerSideHandler: TypeAlias = Callable[..., Awaitable[Any]]
"""``async def handler(*args)`` for events other nodes send with ``server_side_emit``;
its return value answers a ``server_side_call`` (None: no arguments, a tuple: several)."""
NamespaceMatcher: TypeAlias = "re.Pattern[str] | Callable[[str, JsonValue], bool]"
H = TypeVar("H", bound=Handler)

_LIFECYCLE_EVENTS: frozenset[str] = frozenset({"connect", "disconnecting", "disconnect"})
"""Reserved names a namespace handler may be registered for; the other reserved names
(``connect_error``, ``newListener``, ...) never reach a server, so a handler for one
would never run."""


def _remove(handlers: list[Any], handler: object | None) -> None:
    """Remove ``handler`` from ``handlers`` (every one when None; nothing if absent)."""
    if handler is None:
        handlers.clear()
    elif handler in handlers:
        handlers.remove(handler)


def ack_args(result: object) -> tuple[JsonValue, ...]:
    """The ack arguments for a handler's return value: None -> (), a tuple -> itself."""
    if result is None:
        return ()
    if isinstance(result, tuple):
        return result
    return (result,)  # type: ignore[return-value]


@attrs.define(eq=False)
class _AckCollector:
    """One broadcast ack on this node: registered on each recipient socket under one id."""

    on_answer: AckAnswer
    expected: set[str] = attrs.field(factory=set)
    answered: set[str] = attrs.field(factory=set)
    counted: bool = False
    all_in: trio.Event = attrs.field(factory=trio.Event)

    def resolve(self, sid: str, args: tuple[JsonValue, ...]) -> None:
        if sid in self.expected and sid not in self.answered:
            self.answered.add(sid)
            self.on_answer(sid, args)
            self._check()

    def fail(self, sid: str, error: Exception) -> None:
        self._check()

    def _check(self) -> None:
        if self.counted and len(self.answered) >= len(self.expected):
            self.all_in.set()


@attrs.define(eq=False)
class RemoteSocket:
    """A socket on another node, as ``fetch_sockets`` lists it.

    It has the attributes of a ``Socket`` that make sense at a distance, and its methods
    act through the cluster (its node does the work).

    Attributes:
        sid: The Socket.IO socket id.
        namespace: The namespace (this node's object for it).
        rooms: The rooms it was in when listed (its own id included).
        data: A copy of its ``socket.data`` when listed.
        handshake: What its client sent when it connected.
        node: The id of the node that holds it.
    """

    sid: str
    namespace: Namespace
    rooms: frozenset[str]
    data: dict[str, JsonValue]
    handshake: Handshake
    node: str

    @property
    def _operator(self) -> BroadcastOperator:
        return self.namespace.to(self.sid)

    async def emit(self, event: str, *args: JsonValue) -> None:
        """Send ``event`` to this socket's client. Cancellation: it may have been sent."""
        await self._operator.emit(event, *args)

    async def join(self, *rooms: str) -> None:
        """Make the socket join ``rooms`` (on its node). Cancellation: it may have joined."""
        await self._operator.sockets_join(*rooms)

    async def leave(self, room: str) -> None:
        """Make the socket leave ``room`` (on its node). Cancellation: it may have left."""
        await self._operator.sockets_leave(room)

    async def disconnect(self, *, close: bool = False) -> None:
        """Disconnect the socket (on its node). Cancellation: it may be disconnected."""
        await self._operator.disconnect_sockets(close=close)


@attrs.frozen(kw_only=True)
class BroadcastOperator:
    """Who to send to, built up fluently: ``ns.to("a").except_("b").volatile.emit(...)``."""

    namespace: Namespace
    opts: BroadcastOptions = attrs.field(factory=BroadcastOptions)

    def to(self, *rooms: str) -> BroadcastOperator:
        """Add target rooms (the union of all)."""
        opts = self.opts
        # (Built directly, not with attrs.evolve: this is on every broadcast's path.)
        return BroadcastOperator(
            namespace=self.namespace,
            opts=BroadcastOptions(
                rooms=opts.rooms.union(rooms),
                except_rooms=opts.except_rooms,
                except_sids=opts.except_sids,
                volatile=opts.volatile,
                local=opts.local,
            ),
        )

    in_ = to

    def except_(self, *rooms: str) -> BroadcastOperator:
        """Leave out the sockets in any of ``rooms``."""
        return attrs.evolve(
            self, opts=attrs.evolve(self.opts, except_rooms=self.opts.except_rooms | set(rooms))
        )

    @property
    def volatile(self) -> BroadcastOperator:
        """Drop the event for sockets that cannot take it now instead of queueing it."""
        return attrs.evolve(self, opts=attrs.evolve(self.opts, volatile=True))

    @property
    def local(self) -> BroadcastOperator:
        """Only sockets on this node."""
        return attrs.evolve(self, opts=attrs.evolve(self.opts, local=True))

    async def emit(self, event: str, *args: JsonValue) -> int:
        """Send ``event`` to every matching socket once; return how many sockets (on
        this node) it is for: its members when it is made.

        The frames are encoded once for all recipients. Each socket gets what the
        server sends it in the order it was sent: two emits from one task, or an emit
        and then an ack, reach it in that order. With the event log on, a recorded
        event (see ``docs/event-log.md``) is handed to the log and goes out once its
        records are durable: ``emit`` returns before that, so the handler goes on.

        Cancellation: some recipients may have it queued and others not (a recorded
        event: it goes to all of them, or to none if cancelled before its hand-off).
        """
        ns = self.namespace
        packet = Event(name=event, args=args, namespace=ns.name)
        count = await ns.broadcast_packet(packet, self.opts)
        if ns.server.observer is not None:
            ns.server.observer.event_broadcast(ns, self.opts, event, args)
        return count

    def _targets(self) -> list[Namespace]:
        # A dynamic parent namespace acts on its children (as broadcast_packet does).
        ns = self.namespace
        return list(ns.children.values()) or [ns]

    async def call(self, event: str, *args: JsonValue, within: float) -> BroadcastAckResult:
        """Send ``event`` with an ack to every matching socket and collect the answers.

        Waits until every recipient answered or ``within`` seconds passed, then returns
        the answers and who did not answer. (A deadline argument, not the caller's cancel
        scope, because the partial result is the point: cancelling would lose it.) With a
        cluster adapter the recipients on every node answer.

        Cancellation: the answers collected so far are lost; late answers are ignored.
        """
        targets = self._targets()
        results: list[BroadcastAckResult] = []

        async def one(ns: Namespace) -> None:
            results.append(
                await ns.adapter.broadcast_with_ack(event, args, self.opts, within=within)
            )

        if len(targets) == 1:
            await one(targets[0])
        else:
            async with trio.open_nursery() as nursery:
                for ns in targets:
                    nursery.start_soon(one, ns)
        answers: dict[str, tuple[JsonValue, ...]] = {}
        missing: set[str] = set()
        for result in results:
            answers.update(result.answers)
            missing.update(result.missing)
        return BroadcastAckResult(answers=answers, missing=frozenset(missing))

    async def fetch_sockets(self) -> list[Socket | RemoteSocket]:
        """The matching sockets of every node: this node's as ``Socket`` objects, other
        nodes' as ``RemoteSocket`` descriptions. Cancellation: nothing changes.

        Raises:
            ClusterError: A cluster adapter could not ask every node (see
                ``roomcast.engine.adapters.cluster``).
        """
        found: list[Socket | RemoteSocket] = []
        for ns in self._targets():
            for info in await ns.adapter.fetch_sockets(self.opts):
                socket = ns.sockets.get(info.sid) if info.node is None else None
                if socket is not None:
                    found.append(socket)
                elif info.node is not None:
                    found.append(
                        RemoteSocket(
                            sid=info.sid,
                            namespace=ns,
                            rooms=info.rooms,
                            data=info.data,
                            handshake=info.handshake,
                            node=info.node,
                        )
                    )
        return found

    async def sockets_join(self, *rooms: str) -> None:
        """Make every matching socket (on every node) join ``rooms``.

        Cancellation: some sockets may have joined.
        """
        for ns in self._targets():
            await ns.adapter.add_sockets(self.opts, frozenset(rooms))

    async def sockets_leave(self, *rooms: str) -> None:
        """Make every matching socket (on every node) leave ``rooms``.

        Cancellation: some sockets may have left.
        """
        for ns in self._targets():
            await ns.adapter.del_sockets(self.opts, frozenset(rooms))

    async def disconnect_sockets(self, *, close: bool = False) -> None:
        """Disconnect every matching socket, on every node (``close`` also closes their
        connections). Cancellation: some sockets may be disconnected."""
        for ns in self._targets():
            await ns.adapter.disconnect_sockets(self.opts, close=close)


@attrs.define(eq=False)
class Namespace:
    """A Socket.IO namespace: its handlers, middleware, sockets and adapter.

    Register handlers with ``@ns.on("event")``: ``async def handler(socket, *args)``;
    its return value answers the client's ack (None: no arguments, a tuple: several).
    ``@ns.on("connect")`` handlers take ``(socket, auth)`` and run after the client was
    accepted. Middleware (``ns.use``) takes ``(socket, auth)`` and refuses by raising
    ConnectRefusedError. ``off`` removes handlers.

    Per event, as in Node (``roomcast.engine.listeners`` has the order and the details):
    ``on_any`` listeners see every incoming event; per-packet middleware (``use_packet``,
    and ``Socket.use``) may refuse it (``on_error`` handlers hear of it); ``on_unhandled``
    catch-alls take the events no handler takes; ``on_any_outgoing`` listeners see every
    event sent to a socket.

    A socket's last moments (``remove_socket``), for every reason (the client left, its
    transport closed, ping timeout, a server-side disconnect, the server shutting down):

    1. its pending acks fail, its recovery session (if any) is saved with its rooms, and
       its DISCONNECT is recorded in the event log;
    2. ``@ns.on("disconnecting")`` handlers ``(socket, reason)`` run while the socket is
       still in its rooms (Node's ``disconnecting``), so they can tell a room it left:
       ``await socket.to(room).emit("left", socket.sid)`` reaches every other member.
       ``socket.connected`` is already False: the client has gone or is going, so an
       emit to the socket itself is dropped and ``socket.call`` raises;
    3. the socket leaves its rooms;
    4. ``@ns.on("disconnect")`` handlers ``(socket, reason)`` run; ``socket.rooms`` is
       still readable there: the rooms the socket was in when it left them.

    A handler that raises is logged and does not stop the others.
    """

    name: str
    server: Server
    adapter: Adapter
    parent: Namespace | None = None
    handlers: dict[str, Handler] = attrs.field(factory=dict)
    any_handlers: list[AnyListener] = attrs.field(factory=list)
    unhandled_handlers: list[Handler] = attrs.field(factory=list)
    packet_middlewares: list[PacketMiddleware] = attrs.field(factory=list)
    error_handlers: list[RefusalHandler] = attrs.field(factory=list)
    outgoing_listeners: list[OutgoingListener] = attrs.field(factory=list)
    connect_handlers: list[Handler] = attrs.field(factory=list)
    disconnecting_handlers: list[Handler] = attrs.field(factory=list)
    disconnect_handlers: list[Handler] = attrs.field(factory=list)
    middlewares: list[Middleware] = attrs.field(factory=list)
    sockets: dict[str, Socket] = attrs.field(factory=dict)
    children: dict[str, Namespace] = attrs.field(factory=dict)
    server_side_handlers: dict[str, ServerSideHandler] = attrs.field(factory=dict)
    _ack_ids: itertools.count[int] = attrs.field(factory=itertools.count)
    _leaving: dict[str, trio.Event] = attrs.field(factory=dict)
    outgoing_sockets: int = 0
    """How many sockets of the namespace have outgoing listeners of their own."""
    presence: Presence | None = None
    """Who is in this namespace's rooms, when the app tracks it (``roomcast.engine.presence``)."""

    def __attrs_post_init__(self) -> None:
        self.adapter.bind(self)

    def on(self, event: str) -> Callable[[H], H]:
        """Register an async handler for ``event`` (or ``connect`` / ``disconnecting`` /
        ``disconnect``).

        Raises:
            ValueError: ``event`` is another reserved name (``connect_error``, ...): no
                client can send it, so the handler would never run.
        """
        if event in RESERVED_EVENTS and event not in _LIFECYCLE_EVENTS:
            raise ValueError(f"{event!r} is a reserved event name")

        def register(handler: H) -> H:
            require_async(handler, repr(event))
            if event == "connect":
                self.connect_handlers.append(handler)
            elif event == "disconnecting":
                self.disconnecting_handlers.append(handler)
            elif event == "disconnect":
                self.disconnect_handlers.append(handler)
            else:
                self.handlers[event] = handler
            return handler

        return register

    def off(self, event: str, handler: Handler | None = None) -> None:
        """Remove the handler of ``event`` (for ``connect``, ``disconnecting`` and
        ``disconnect``: ``handler``, or all of them when None). Removing what is not
        registered does nothing; an event being handled keeps its handler."""
        if event in _LIFECYCLE_EVENTS:
            handlers = {
                "connect": self.connect_handlers,
                "disconnecting": self.disconnecting_handlers,
                "disconnect": self.disconnect_handlers,
            }[event]
            _remove(handlers, handler)
        elif handler is None or self.handlers.get(event) is handler:
            self.handlers.pop(event, None)

    def on_any(self, listener: H) -> H:
        """Register ``async def listener(socket, event, *args)``, called for every incoming
        event before its middleware and handler (Node's ``socket.onAny``); its return
        value is ignored. (``on_any`` used to be the catch-all for unhandled events: that
        is ``on_unhandled`` now.)"""
        require_async(listener, "on_any")
        self.any_handlers.append(listener)
        return listener

    def off_any(self, listener: AnyListener | None = None) -> None:
        """Remove an ``on_any`` listener (all of them when None)."""
        _remove(self.any_handlers, listener)

    def on_unhandled(self, handler: H) -> H:
        """Register a catch-all ``(socket, event, *args)`` for events with no handler; its
        return value answers the client's ack (with several, the last one's)."""
        require_async(handler, "catch-all")
        self.unhandled_handlers.append(handler)
        return handler

    def off_unhandled(self, handler: Handler | None = None) -> None:
        """Remove an ``on_unhandled`` catch-all (all of them when None)."""
        _remove(self.unhandled_handlers, handler)

    def use(self, middleware: Middleware) -> Middleware:
        """Add connection middleware ``(socket, auth)``; raise ConnectRefusedError to refuse."""
        require_async(middleware, "middleware")
        self.middlewares.append(middleware)
        return middleware

    def use_packet(self, middleware: PacketMiddleware) -> PacketMiddleware:
        """Add per-packet middleware ``async def middleware(socket, event, args)`` for every
        socket of the namespace (before each socket's own, ``Socket.use``); it refuses
        the event by raising (see ``roomcast.engine.listeners``)."""
        require_async(middleware, "packet middleware")
        self.packet_middlewares.append(middleware)
        return middleware

    def on_error(self, handler: RefusalHandler) -> RefusalHandler:
        """Register ``async def handler(socket, event, error)``, called when per-packet
        middleware refused ``event`` with ``error`` (Node's ``socket.on("error")``)."""
        require_async(handler, "on_error")
        self.error_handlers.append(handler)
        return handler

    def on_any_outgoing(self, listener: OutgoingListener) -> OutgoingListener:
        """Register ``def listener(socket, event, args)`` (synchronous), called for every
        event sent to any socket of the namespace (see ``roomcast.engine.listeners``)."""
        self.outgoing_listeners.append(listener)
        return listener

    def off_any_outgoing(self, listener: OutgoingListener | None = None) -> None:
        """Remove an ``on_any_outgoing`` listener (all of them when None)."""
        _remove(self.outgoing_listeners, listener)

    def on_server_side(self, event: str) -> Callable[[H], H]:
        """Register ``async def handler(*args)`` for ``event`` sent by another node's
        ``server_side_emit`` / ``server_side_call`` (its return value answers the call)."""

        def register(handler: H) -> H:
            require_async(handler, f"server-side {event!r}")
            self.server_side_handlers[event] = handler
            return handler

        return register

    async def server_side_emit(self, event: str, *args: JsonValue) -> None:
        """Send ``event`` to the server-side handlers of every other node of the cluster.

        Cancellation: some nodes may have been sent it.
        """
        await self.adapter.server_side_emit(event, args)

    async def server_side_call(
        self, event: str, *args: JsonValue, within: float
    ) -> ServerSideResult:
        """Send ``event`` to every other node and collect their handlers' answers for
        ``within`` seconds. Cancellation: the answers so far are lost."""
        return await self.adapter.server_side_call(event, args, within=within)

    # -- AdapterHost: what the adapter asks of this node's sockets ---------------------------

    def socket_info(self, sid: str) -> SocketInfo | None:
        """The description of local socket ``sid`` (None if it is not connected here)."""
        socket = self.sockets.get(sid)
        if socket is None:
            return None
        return SocketInfo(
            sid=sid,
            namespace=self.name,
            rooms=socket.rooms,
            data=dict(socket.data),
            handshake=socket.handshake,
        )

    async def disconnect_local(self, sid: str, *, close: bool) -> None:
        """Disconnect local socket ``sid`` if it is here (a server-side disconnect).

        Cancellation: the socket is gone either way; its cleanup may be incomplete.
        """
        socket = self.sockets.get(sid)
        if socket is None:
            await trio.lowlevel.checkpoint()
            return
        await socket.disconnect(close=close)

    async def join_local(self, sid: str, rooms: frozenset[str]) -> None:
        """Make local socket ``sid`` join ``rooms`` (a server-side join, recorded in the
        event log as the socket's own join is), if it is connected here.

        Cancellation: some rooms may be joined.
        """
        socket = self.sockets.get(sid)
        if socket is None:
            await trio.lowlevel.checkpoint()
            return
        await socket.join(*sorted(rooms))

    async def leave_local(self, sid: str, rooms: frozenset[str]) -> None:
        """Make local socket ``sid`` leave ``rooms`` (recorded), if it is connected here.

        Cancellation: some rooms may be left.
        """
        socket = self.sockets.get(sid)
        if socket is None:
            await trio.lowlevel.checkpoint()
            return
        for room in sorted(rooms):
            await socket.leave(room)

    async def call_local(
        self,
        event: str,
        args: tuple[JsonValue, ...],
        opts: BroadcastOptions,
        *,
        within: float,
        on_sent: Callable[[frozenset[str]], None],
        on_answer: AckAnswer,
    ) -> None:
        """Send ``event`` with one fresh ack id to the matching sockets of this node and
        report their answers until all answered or ``within`` seconds passed.

        Cancellation: the ack registrations are removed; late answers are ignored.
        """
        ack_id = self.next_ack_id()
        collector = _AckCollector(on_answer=on_answer)

        def register(sid: str) -> None:
            socket = self.sockets.get(sid)
            if socket is not None:
                collector.expected.add(sid)
                socket.acks[ack_id] = collector
                socket.connection.sio.expect_ack(self.name, ack_id)
                if self.outgoing_listeners or socket.outgoing_listeners:
                    notify_outgoing(socket, event, args)

        packet = Event(name=event, args=args, namespace=self.name, ack_id=ack_id)
        local = attrs.evolve(opts, local=True)
        try:
            with trio.move_on_after(within):
                await self.adapter.broadcast(self.encode(packet), local, on_member=register)
                collector.counted = True
                on_sent(frozenset(collector.expected))
                collector._check()
                await collector.all_in.wait()
        finally:
            for sid in collector.expected:
                socket = self.sockets.get(sid)
                if socket is not None:
                    socket.acks.pop(ack_id, None)
        if not collector.counted:  # the deadline passed during the fan-out
            on_sent(frozenset(collector.expected))

    async def handle_server_side(
        self, event: str, args: tuple[JsonValue, ...]
    ) -> tuple[JsonValue, ...] | None:
        """Run the server-side handler for ``event``; its answer, or None when there is no
        handler or it raised (which is logged).

        Cancellation: the handler is cancelled.
        """
        handler = self.server_side_handlers.get(event)
        if handler is None:
            await trio.lowlevel.checkpoint()
            return None
        try:
            return ack_args(await handler(*args))
        except Exception:
            logger.exception("server-side handler %r failed in %s", event, self.name)
            return None

    def next_ack_id(self) -> int:
        """A fresh ack id, unique in the namespace (so one id serves a whole broadcast)."""
        return next(self._ack_ids)

    def encode(self, packet: SioPacket) -> tuple[SharedFrame, ...]:
        """Encode ``packet`` once as shared Engine.IO frames for many recipients."""
        return tuple(SharedFrame(eio=encode_message(p)) for p in self.server.parser.encode(packet))

    async def broadcast_packet(
        self,
        packet: SioPacket,
        opts: BroadcastOptions,
        *,
        on_member: Callable[[str], None] | None = None,
    ) -> int:
        """Send one packet to the sockets ``opts`` selects, in this namespace and its children."""
        if self.children:
            total = 0
            for child in list(self.children.values()):
                total += await child.broadcast_packet(
                    attrs.evolve(packet, namespace=child.name), opts, on_member=on_member
                )
            return total
        if self.outgoing_listeners or self.outgoing_sockets:  # on_any_outgoing
            on_member = outgoing_hook(self, packet, on_member)
        return await self.server.broadcaster.broadcast(self, packet, opts, on_member)

    async def deliver_shared(self, event: MissedEvent, recovery_offset: str) -> int:
        """Deliver a broadcast read from the cluster's shared log to this node's sockets
        (with its recovery offset appended when recovery is on)."""
        args = (
            (*event.args, recovery_offset) if self.server.recovery_store is not None else event.args
        )
        packet = Event(name=event.name, args=args, namespace=self.name)
        opts = BroadcastOptions(rooms=event.rooms, except_rooms=event.exclude, local=True)
        on_member = None
        if self.outgoing_listeners or self.outgoing_sockets:  # on_any_outgoing
            on_member = outgoing_hook(self, attrs.evolve(packet, args=event.args), None)
        return await self.adapter.broadcast(self.encode(packet), opts, on_member=on_member)

    def broadcast_operator(self, **opts: Any) -> BroadcastOperator:
        """A broadcast operator with the given options."""
        return BroadcastOperator(namespace=self, opts=BroadcastOptions(**opts))

    def to(self, *rooms: str) -> BroadcastOperator:
        """Broadcast to ``rooms`` (their union)."""
        return self.broadcast_operator().to(*rooms)

    in_ = to

    def except_(self, *rooms: str) -> BroadcastOperator:
        """Broadcast to the namespace, leaving out the sockets in ``rooms``."""
        return self.broadcast_operator().except_(*rooms)

    @property
    def volatile(self) -> BroadcastOperator:
        """A volatile broadcast to the namespace."""
        return self.broadcast_operator(volatile=True)

    @property
    def local(self) -> BroadcastOperator:
        """A broadcast to this node's sockets only."""
        return self.broadcast_operator(local=True)

    async def emit(self, event: str, *args: JsonValue) -> int:
        """Send ``event`` to every socket of the namespace."""
        return await self.broadcast_operator().emit(event, *args)

    async def fetch_sockets(self) -> list[Socket | RemoteSocket]:
        """Every socket of the namespace (on every node)."""
        return await self.broadcast_operator().fetch_sockets()

    async def sockets_join(self, *rooms: str) -> None:
        """Make every socket join ``rooms``."""
        await self.broadcast_operator().sockets_join(*rooms)

    async def sockets_leave(self, *rooms: str) -> None:
        """Make every socket leave ``rooms``."""
        await self.broadcast_operator().sockets_leave(*rooms)

    async def disconnect_sockets(self, *, close: bool = False) -> None:
        """Disconnect every socket of the namespace."""
        await self.broadcast_operator().disconnect_sockets(close=close)

    async def history(
        self, room: str, *, last: int | None = None, after: int | None = None
    ) -> list[LogRecord]:
        """The room's recorded events from the event log: the last ``last`` of them, or
        every one after offset ``after`` (oldest first).

        Cancellation: the read (in a worker thread) finishes; its result is dropped.

        With a cluster's shared log, its records are read from Redis (offsets are the
        cluster's).

        Raises:
            LogError: The log is off, or cannot be read.
        """
        shared = self.adapter.shared_log
        if shared is not None:
            try:
                return await shared.history(self.name, room, last=last, after=after)
            except ClusterError as exc:
                raise LogError(str(exc)) from exc
        log = self.server.log
        if log is None:
            raise LogError("the event log is off: there is no history")
        await log.flush()
        directory = str(log.directory)
        return await trio.to_thread.run_sync(
            lambda: room_history(directory, self.name, room, last=last, after=after)
        )

    def socket_session(self, socket: Socket) -> SavedSession | None:
        """What the cluster's shared log keeps of a connected socket (recovery on): its
        rooms and ``socket.data`` as they are now; None without a pid."""
        if socket.pid is None:
            return None
        return SavedSession(
            pid=socket.pid,
            sid=socket.sid,
            namespace=self.name,
            rooms=socket.rooms - {socket.sid},
            data=socket.data,
            disconnected_at=self.server.wall_now(),
        )

    async def session_changed(self, socket: Socket) -> None:
        """Tell the cluster's shared log (when on) that a socket's rooms changed, so that
        its live session in Redis follows; queued (not waited for), it goes out ahead of
        what is queued after it (the JOIN or LEAVE record).

        Cancellation: it may have been queued.
        """
        shared = self.adapter.shared_log
        session = self.socket_session(socket) if shared is not None else None
        if shared is not None and session is not None and socket.connected:
            await shared.update_session(session)
        else:
            await trio.lowlevel.checkpoint()

    async def remove_socket(self, socket: Socket, reason: str) -> None:
        """Clean up after a socket left: fail its acks, save its recovery session, record
        its DISCONNECT, run the ``disconnecting`` handlers, leave its rooms, run the
        ``disconnect`` handlers (the order and what each sees: see the class docstring).

        Cancellation: the socket is marked gone first; leaving its rooms is shielded
        (within ``config.cleanup_timeout``), so a cancelled cleanup leaves no membership
        behind; the handlers not yet run do not run.
        """
        if not socket.connected:
            await trio.lowlevel.checkpoint()
            return
        if socket.outgoing_listeners:
            self.outgoing_sockets -= 1
        socket.connected = False
        socket.connection.namespaces.pop(self.name, None)
        self.sockets.pop(socket.sid, None)
        # A client recovering this sid waits until the rooms are left (wait_left), or
        # this cleanup would take the rooms it has just rejoined away from it.
        leaving = self._leaving[socket.sid] = trio.Event()
        socket._fail_acks(reason)
        server = self.server
        try:
            await self._record_disconnect(socket, reason)
            for handler in self.disconnecting_handlers:
                try:
                    await handler(socket, reason)
                except Exception:
                    logger.exception("disconnecting handler failed for %s", socket.sid)
        finally:
            socket._rooms_left = socket.rooms
            if self.presence is not None:
                self.presence.gone(socket, reason)
            with trio.move_on_after(server.config.cleanup_timeout, shield=True):
                await self.adapter.delete_all(socket.sid)
            if self._leaving.get(socket.sid) is leaving:
                del self._leaving[socket.sid]
            leaving.set()
        if server.observer is not None:
            server.observer.socket_disconnected(socket, reason)
        for handler in self.disconnect_handlers:
            try:
                await handler(socket, reason)
            except Exception:
                logger.exception("disconnect handler failed for %s", socket.sid)

    async def _record_disconnect(self, socket: Socket, reason: str) -> None:
        """Save the socket's recovery session (a recoverable reason, recovery on) with
        the rooms it is in, and record its DISCONNECT in the event log.

        Done before the ``disconnecting`` handlers and before the rooms are left, so
        that neither handlers nor busy room actors can cut the record off.

        Cancellation: the session may be saved and the record not written.
        """
        server = self.server
        store = server.recovery_store
        rooms = socket.rooms - {socket.sid}
        session: dict[str, Any] | None = None
        if store is not None and socket.pid is not None and reason in RECOVERABLE_REASONS:
            saved = SavedSession(
                pid=socket.pid,
                sid=socket.sid,
                namespace=self.name,
                rooms=rooms,
                data=socket.data,
                disconnected_at=server.wall_now(),
            )
            shared = self.adapter.shared_log
            kept = True
            if shared is None:
                store.save(saved)
            else:  # in Redis, so that any node can recover it
                window = store.config.max_disconnection_duration
                kept = await shared.save_session(saved, window)
            if kept:
                session = {"pid": saved.pid, "rooms": sorted(rooms), "data": saved.data}
        elif self.adapter.shared_log is not None and socket.pid is not None:
            await self.adapter.shared_log.close_session(socket.pid)  # not recoverable
        if session is None:
            await server.broadcaster.record_event(
                RecordKind.DISCONNECT, self.name, sender=socket.sid, args=(reason,)
            )
        else:
            await server.broadcaster.record_session(
                RecordKind.DISCONNECT, self.name, socket.sid, reason, session
            )

    async def wait_left(self, sid: str) -> None:
        """Wait until socket ``sid``, if it is disconnecting, has left its rooms (at once
        otherwise). Cancellation: nothing changes."""
        leaving = self._leaving.get(sid)
        if leaving is None:
            await trio.lowlevel.checkpoint()
            return
        await leaving.wait()
