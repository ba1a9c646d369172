"""Namespaces: handlers, middleware, sockets, and broadcasting to rooms."""

from __future__ import annotations

import inspect
import itertools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import attrs
import trio

from roomcast.engine.actors.outbox import OutFrame, SharedFrame
from roomcast.engine.adapters.base import Adapter, BroadcastOptions
from roomcast.protocol._sio import Event, JsonValue, SioPacket

if TYPE_CHECKING:
    from roomcast.engine.server import Server
    from roomcast.engine.socket import Socket

__all__ = [
    "BroadcastAckResult",
    "BroadcastOperator",
    "Namespace",
    "NamespaceMatcher",
]

logger = logging.getLogger(__name__)

Handler: TypeAlias = Callable[..., Awaitable[Any]]
Middleware: TypeAlias = Callable[["Socket", JsonValue], Awaitable[None]]
NamespaceMatcher: TypeAlias = "re.Pattern[str] | Callable[[str, JsonValue], bool]"
H = TypeVar("H", bound=Handler)

_RESERVED: frozenset[str] = frozenset({"connect", "disconnect"})


def _check_handler(handler: Callable[..., Any], what: str) -> None:
    # Signatures are checked once, here, never sniffed at call time (STYLE.md §10).
    if not inspect.iscoroutinefunction(handler):
        raise TypeError(f"{what} handler {handler!r} must be an async function")


def ack_args(result: object) -> tuple[JsonValue, ...]:
    """The ack arguments for a handler's return value: None -> (), a tuple -> itself."""
    if result is None:
        return ()
    if isinstance(result, tuple):
        return result
    return (result,)  # type: ignore[return-value]


@attrs.frozen(kw_only=True)
class BroadcastAckResult:
    """The answers to a broadcast with ack.

    Attributes:
        answers: Each answering socket id with its ack arguments.
        missing: Socket ids that were sent the event and did not answer in time.
    """

    answers: dict[str, tuple[JsonValue, ...]]
    missing: frozenset[str]


@attrs.define(eq=False)
class _AckCollector:
    expected: set[str] = attrs.field(factory=set)
    answers: dict[str, tuple[JsonValue, ...]] = attrs.field(factory=dict)
    counted: bool = False
    all_in: trio.Event = attrs.field(factory=trio.Event)

    def resolve(self, sid: str, args: tuple[JsonValue, ...]) -> None:
        if sid in self.expected:
            self.answers[sid] = args
            self._check()

    def fail(self, sid: str, error: Exception) -> None:
        self._check()

    def _check(self) -> None:
        if self.counted and len(self.answers) >= len(self.expected):
            self.all_in.set()


@attrs.frozen(kw_only=True)
class BroadcastOperator:
    """Who to send to, built up fluently: ``ns.to("a").except_("b").volatile.emit(...)``."""

    namespace: Namespace
    opts: BroadcastOptions = attrs.field(factory=BroadcastOptions)

    def to(self, *rooms: str) -> BroadcastOperator:
        """Add target rooms (the union of all)."""
        return attrs.evolve(self, opts=attrs.evolve(self.opts, rooms=self.opts.rooms | set(rooms)))

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
        """Send ``event`` to every matching socket once; return how many it reached.

        The frames are encoded once for all recipients. Two emits from one task reach
        each socket in the order they were made.

        Cancellation: some recipients may have it queued and others not.
        """
        ns = self.namespace
        packet = Event(name=event, args=args, namespace=ns.name)
        return await ns.broadcast_packet(packet, self.opts)

    async def call(self, event: str, *args: JsonValue, within: float) -> BroadcastAckResult:
        """Send ``event`` with an ack to every matching socket and collect the answers.

        Waits until every recipient answered or ``within`` seconds passed, then returns
        the answers and who did not answer. (A deadline argument, not the caller's cancel
        scope, because the partial result is the point: cancelling would lose it.)

        Cancellation: the answers collected so far are lost; late answers are ignored.
        """
        ns = self.namespace
        ack_id = ns.next_ack_id()
        collector = _AckCollector()

        def register(sid: str) -> None:
            socket = ns.sockets.get(sid)
            if socket is not None:
                collector.expected.add(sid)
                socket.acks[ack_id] = collector
                socket.connection.sio.expect_ack(ns.name, ack_id)

        packet = Event(name=event, args=args, namespace=ns.name, ack_id=ack_id)
        try:
            with trio.move_on_after(within):
                await ns.broadcast_packet(packet, self.opts, on_member=register)
                collector.counted = True
                collector._check()
                await collector.all_in.wait()
        finally:
            for sid in collector.expected:
                socket = ns.sockets.get(sid)
                if socket is not None:
                    socket.acks.pop(ack_id, None)
        answers = dict(collector.answers)
        return BroadcastAckResult(
            answers=answers, missing=frozenset(collector.expected - answers.keys())
        )

    def _matching(self) -> list[Socket]:
        ns = self.namespace
        return [ns.sockets[sid] for sid in ns.adapter.sockets(self.opts) if sid in ns.sockets]

    async def fetch_sockets(self) -> list[Socket]:
        """The matching sockets. Cancellation: nothing changes."""
        await trio.lowlevel.checkpoint()
        return self._matching()

    async def sockets_join(self, *rooms: str) -> None:
        """Make every matching socket join ``rooms``."""
        for socket in self._matching():
            await socket.join(*rooms)

    async def sockets_leave(self, *rooms: str) -> None:
        """Make every matching socket leave ``rooms``."""
        for socket in self._matching():
            for room in rooms:
                await socket.leave(room)

    async def disconnect_sockets(self, *, close: bool = False) -> None:
        """Disconnect every matching socket (``close`` also closes their connections)."""
        for socket in self._matching():
            await socket.disconnect(close=close)


@attrs.define(eq=False)
class Namespace:
    """A Socket.IO namespace: its handlers, middleware, sockets and adapter.

    Register handlers with ``@ns.on("event")``: ``async def handler(socket, *args)``;
    its return value answers the client's ack (None: no arguments, a tuple: several).
    ``@ns.on("connect")`` handlers take ``(socket, auth)`` and run after the client was
    accepted; ``@ns.on("disconnect")`` handlers take ``(socket, reason)``. Middleware
    (``ns.use``) takes ``(socket, auth)`` and refuses by raising ConnectRefusedError.
    """

    name: str
    server: Server
    adapter: Adapter
    parent: Namespace | None = None
    handlers: dict[str, Handler] = attrs.field(factory=dict)
    any_handlers: list[Handler] = attrs.field(factory=list)
    connect_handlers: list[Handler] = attrs.field(factory=list)
    disconnect_handlers: list[Handler] = attrs.field(factory=list)
    middlewares: list[Middleware] = attrs.field(factory=list)
    sockets: dict[str, Socket] = attrs.field(factory=dict)
    children: dict[str, Namespace] = attrs.field(factory=dict)
    _ack_ids: itertools.count[int] = attrs.field(factory=itertools.count)

    def on(self, event: str) -> Callable[[H], H]:
        """Register an async handler for ``event`` (or ``connect`` / ``disconnect``)."""

        def register(handler: H) -> H:
            _check_handler(handler, repr(event))
            if event == "connect":
                self.connect_handlers.append(handler)
            elif event == "disconnect":
                self.disconnect_handlers.append(handler)
            else:
                self.handlers[event] = handler
            return handler

        return register

    def on_any(self, handler: H) -> H:
        """Register a catch-all handler ``(socket, event, *args)`` for events with no handler."""
        _check_handler(handler, "catch-all")
        self.any_handlers.append(handler)
        return handler

    def use(self, middleware: Middleware) -> Middleware:
        """Add connection middleware ``(socket, auth)``; raise ConnectRefusedError to refuse."""
        _check_handler(middleware, "middleware")
        self.middlewares.append(middleware)
        return middleware

    def next_ack_id(self) -> int:
        """A fresh ack id, unique in the namespace (so one id serves a whole broadcast)."""
        return next(self._ack_ids)

    def encode(self, packet: SioPacket) -> tuple[OutFrame, ...]:
        """Encode ``packet`` once as shared Engine.IO frames for many recipients."""
        return tuple(
            SharedFrame(eio="4" + p if isinstance(p, str) else p)
            for p in self.server.parser.encode(packet)
        )

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

    async def fetch_sockets(self) -> list[Socket]:
        """Every socket of the namespace."""
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

    async def remove_socket(self, socket: Socket, reason: str) -> None:
        """Clean up after a socket left: fail its acks, leave its rooms, run handlers.

        Cancellation: the socket is marked gone first; room leaves may be incomplete.
        """
        if not socket.connected:
            await trio.lowlevel.checkpoint()
            return
        socket.connected = False
        socket.connection.namespaces.pop(self.name, None)
        self.sockets.pop(socket.sid, None)
        socket._fail_acks(reason)
        await self.adapter.delete_all(socket.sid)
        for handler in self.disconnect_handlers:
            try:
                await handler(socket, reason)
            except Exception:
                logger.exception("disconnect handler failed for %s", socket.sid)
