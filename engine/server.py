"""``Server``: the Socket.IO server object an app builds, and ``serve`` to run it."""

from __future__ import annotations

import base64
import logging
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, NoReturn

import attrs
import trio

from roomcast.engine.actors.connection import Connection, EngineLayer
from roomcast.engine.actors.supervisor import Periodic, Supervisor
from roomcast.engine.adapters.base import Adapter
from roomcast.engine.adapters.memory import MemoryAdapter
from roomcast.engine.adapters.shared import PreparedRecovery
from roomcast.engine.broadcast import Broadcaster, Unrecorded, pick_broadcaster
from roomcast.engine.config import Config
from roomcast.engine.errors import ConnectRefusedError
from roomcast.engine.front import Endpoint, EngineFront, Origins, host_of
from roomcast.engine.handshake import Handshake
from roomcast.engine.listeners import admit_event
from roomcast.engine.log import EventLog, iter_records, open_event_log
from roomcast.engine.namespace import (
    BroadcastOperator,
    H,
    Middleware,
    Namespace,
    NamespaceMatcher,
    ack_args,
)
from roomcast.engine.observer import Observer
from roomcast.engine.recovery import (
    MissedEvent,
    RecoveryConfig,
    RecoveryStore,
    SavedSession,
)
from roomcast.engine.sequencer import Sequencer
from roomcast.engine.socket import Socket, SocketConnection
from roomcast.engine.stats import ServerStats
from roomcast.engine.transport.base import HttpExchange, MessageTransport
from roomcast.engine.transport.http import HttpRequest
from roomcast.engine.transport.tcp import accept_connections, open_tcp_sockets
from roomcast.protocol import (
    JSON_PARSER,
    Ack,
    DisconnectReason,
    EioServerSession,
    Event,
    JsonValue,
    LogValue,
    Parser,
    RecordKind,
)

if TYPE_CHECKING:
    from roomcast.engine.metrics import Metrics

__all__ = ["AdapterFactory", "Server"]

logger = logging.getLogger(__name__)

_MESSAGE = RecordKind.MESSAGE  # (read on every client event: an enum member lookup costs more)

AdapterFactory = Callable[[str, Callable[..., None], Config], Adapter]


def _memory_adapter(name: str, spawn_room: Callable[..., None], config: Config) -> Adapter:
    return MemoryAdapter(
        namespace=name, spawn_room=spawn_room, room_inbox_size=config.room_inbox_size
    )


@attrs.frozen(kw_only=True)
class _Restoring:
    """A session a CONNECT asked to recover, taken over: from this node's recovery store
    (``after``: the sequence number of the client's recovery offset), or from the
    cluster's shared log (``shared``)."""

    session: SavedSession
    after: int | None = None
    shared: PreparedRecovery | None = None


class _Ids:
    """Session ids: 15 bytes of the OS's CSPRNG each, in URL-safe base64 (20 characters,
    as ``secrets.token_urlsafe(15)`` makes them), drawn 64 ids' worth at a time so that a
    connection's ids cost no system call each. A forked child starts on fresh bytes."""

    _SIZE = 15
    _BATCH = 64

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(self._SIZE * self._BATCH), 0
        self._at = at + self._SIZE
        return base64.urlsafe_b64encode(self._pool[at : at + self._SIZE]).decode("ascii")

    def discard(self) -> None:
        self._pool, self._at = b"", 0


_new_id = _Ids()
os.register_at_fork(after_in_child=_new_id.discard)


@attrs.define(eq=False)
class Server:
    """A Socket.IO v5 server. Build it, register handlers, then run ``serve``.

    Example::

        server = Server()

        @server.on("chat")
        async def chat(socket: Socket, text: str) -> str:
            await server.to("lobby").emit("chat", text)
            return "ok"

        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve, "127.0.0.1", 5000)
    """

    config: Config = attrs.field(factory=Config)
    parser: Parser = JSON_PARSER
    adapter_factory: AdapterFactory = _memory_adapter
    supervisor: Supervisor = attrs.field(init=False)
    namespaces: dict[str, Namespace] = attrs.field(factory=dict, init=False)
    _dynamic: list[tuple[NamespaceMatcher, Namespace]] = attrs.field(factory=list, init=False)
    cors_allowed_origins: Origins = ()
    allow_request: Callable[[HttpRequest], Awaitable[bool]] | None = None
    static_dirs: dict[str, str] = attrs.field(factory=dict)
    recovery: RecoveryConfig | None = None
    broadcaster: Broadcaster = attrs.field(init=False)
    """How broadcasts are recorded and delivered (``engine/broadcast.py``): it owns the
    sequencer, the event log, the recovery store and the shared log; picked again when
    the settings or the log change."""
    _wall: tuple[float, Callable[[], float]] | None = attrs.field(default=None, init=False)
    """What ``wall_now`` adds to the run's clock, and that clock's reading."""
    connections: dict[str, Connection] = attrs.field(factory=dict, init=False)
    _per_address: dict[str, int] = attrs.field(factory=dict, init=False)
    _connections: trio.Nursery | None = attrs.field(default=None, init=False)
    _prune: Periodic | None = attrs.field(default=None, init=False)
    front: EngineFront = attrs.field(init=False)
    """The HTTP/Engine.IO front: routes each request (``front.py``)."""
    observer: Observer | None = attrs.field(default=None, init=False)
    """Told of sockets, rooms and events (the Admin UI, ``roomcast.engine.admin``); None
    by default, when each hook costs one attribute test."""
    stats: ServerStats = attrs.field(factory=ServerStats, init=False)
    metrics: Metrics | None = attrs.field(default=None, init=False)
    services: list[Callable[..., Awaitable[None]]] = attrs.field(factory=list, init=False)
    """What ``add_service`` added (``roomcast.engine.testing``'s harness runs them too)."""

    def __attrs_post_init__(self) -> None:
        self.supervisor = Supervisor(
            max_restarts=self.config.room_max_restarts,
            restart_window=self.config.room_restart_window,
        )
        self.broadcaster = Unrecorded(
            sequencer=Sequencer(), wall_now=self.wall_now, log_config=self.config.log
        )
        self.of("/")
        self._set_recovery(self.recovery)
        self._set_metrics()
        self.front = EngineFront(host=self)

    @property
    def log(self) -> EventLog | None:
        """The event log while the server runs with it on, else None."""
        return self.broadcaster.log

    @property
    def recovery_store(self) -> RecoveryStore | None:
        """The recovery store (recovery on), else None."""
        return self.broadcaster.store

    @property
    def sequencer(self) -> Sequencer:
        """The server's one sequence of offsets (recorded events, recovery turns)."""
        return self.broadcaster.sequencer

    def _pick_broadcaster(
        self, *, log: EventLog | None, store: RecoveryStore | None, sequencer: Sequencer
    ) -> None:
        """Pick the broadcast strategy for the settings as they are now."""
        self.broadcaster = pick_broadcaster(
            sequencer=sequencer,
            wall_now=self.wall_now,
            log_config=self.config.log,
            log=log,
            store=store,
            shared=self.of("/").adapter.shared_log,
        )
        self._time_broadcasts()

    def _time_broadcasts(self) -> None:
        """Broadcasts are timed while the metrics are on (``roomcast_broadcast_seconds``)."""
        self.broadcaster.observe = (
            self.stats.broadcast.observe if self.metrics is not None else None
        )

    def _set_metrics(self) -> None:
        """Make the metrics (``config.metrics``), or drop them.

        Raises:
            ImportError: ``config.metrics`` without prometheus-client (the metrics extra).
        """
        if not self.config.metrics:
            self.metrics = None
        elif self.metrics is None:
            try:
                from roomcast.engine.metrics import Metrics  # (an optional extra)
            except ImportError as exc:
                raise ImportError(
                    "Config(metrics=True) needs prometheus-client: pip install 'roomcast[metrics]'"
                ) from exc
            self.metrics = Metrics(server=self)
        self._time_broadcasts()

    def add_service(self, service: Callable[..., Awaitable[None]]) -> None:
        """Run ``service(task_status=...)`` while the server serves: started with
        ``nursery.start`` once the log is open (before the first connection), cancelled
        when the server stops (presence uses it)."""
        self.services.append(service)

    def _set_recovery(self, recovery: RecoveryConfig | None) -> None:
        """Make the recovery store for ``recovery`` (None: recovery off), with its sweep."""
        if self._prune is not None:
            self.supervisor.cancel(self._prune)
            self._prune = None
        self.recovery = recovery
        if recovery is None:
            self._pick_broadcaster(log=self.log, store=None, sequencer=self.sequencer)
            return
        store = RecoveryStore(
            config=recovery,
            delivery_bound=self.config.ping_interval + self.config.ping_timeout,
        )
        self._pick_broadcaster(log=self.log, store=store, sequencer=self.sequencer)
        # Sessions nobody comes back for, and the events kept for them, are forgotten
        # on the supervisor's timer, not only when a client recovers.
        self._prune = self.supervisor.every(
            recovery.prune_interval, lambda: store.prune(self.wall_now())
        )

    def reconfigure(
        self,
        *,
        config: Config,
        recovery: RecoveryConfig | None,
        adapter_factory: AdapterFactory | None = None,
    ) -> None:
        """Replace the settings the server was built with, before it serves: what an
        operator's flags override in an app's server (``roomcast serve``).

        ``adapter_factory``, when given, replaces the adapter of every namespace made so
        far (and of those made later): the server becomes a node of a cluster.
        (``room_max_restarts`` and ``room_restart_window`` stay as built: the supervisor
        already exists.)

        Raises:
            RuntimeError: The server is serving already.
        """
        if self.log is not None or self._connections is not None or self.connections:
            raise RuntimeError("a Server can only be reconfigured before it serves")
        self.config = config
        self._set_recovery(recovery)
        self._set_metrics()
        if adapter_factory is not None:
            self.adapter_factory = adapter_factory
            for ns in [*self.namespaces.values(), *(parent for _, parent in self._dynamic)]:
                ns.adapter = adapter_factory(ns.name, self.supervisor.spawn_room, config)
                ns.adapter.bind(ns)
            self._pick_broadcaster(
                log=self.log, store=self.recovery_store, sequencer=self.sequencer
            )

    # -- namespaces -------------------------------------------------------------------------

    def of(self, name: str | NamespaceMatcher) -> Namespace:
        """The namespace ``name``, created on first use.

        ``name`` may also be a compiled regex or a predicate ``(name, auth) -> bool``: a
        dynamic namespace. Any namespace a client asks for that it matches is created on
        demand, with the handlers and middleware registered on the returned parent, and a
        broadcast on the parent reaches all of its children.
        """
        if isinstance(name, str):
            ns = self.namespaces.get(name)
            if ns is None:
                if not name.startswith("/"):
                    raise ValueError(f"namespace must start with '/': {name!r}")
                ns = self._new_namespace(name)
                self.namespaces[name] = ns
            return ns
        parent = self._new_namespace(f"<dynamic {name!r}>")
        self._dynamic.append((name, parent))
        return parent

    def _new_namespace(self, name: str, parent: Namespace | None = None) -> Namespace:
        adapter = self.adapter_factory(name, self.supervisor.spawn_room, self.config)
        if parent is None:
            return Namespace(name=name, server=self, adapter=adapter)
        return Namespace(
            name=name,
            server=self,
            adapter=adapter,
            parent=parent,
            handlers=parent.handlers,
            any_handlers=parent.any_handlers,
            unhandled_handlers=parent.unhandled_handlers,
            packet_middlewares=parent.packet_middlewares,
            error_handlers=parent.error_handlers,
            outgoing_listeners=parent.outgoing_listeners,
            connect_handlers=parent.connect_handlers,
            disconnecting_handlers=parent.disconnecting_handlers,
            disconnect_handlers=parent.disconnect_handlers,
            middlewares=parent.middlewares,
        )

    def resolve_namespace(self, name: str, auth: JsonValue) -> Namespace | None:
        """The namespace a client's CONNECT to ``name`` (with ``auth``) reaches, or None.

        A name no namespace has yet is matched against the dynamic namespaces
        (``of(pattern)``) in the order they were added: the first that matches gets a
        child namespace for it, created here, as a client's CONNECT would create it.
        """
        ns = self.namespaces.get(name)
        if ns is not None:
            return ns
        for matcher, parent in self._dynamic:
            matched = (
                matcher.fullmatch(name) is not None
                if isinstance(matcher, re.Pattern)
                else matcher(name, auth)
            )
            if matched:
                child = self._new_namespace(name, parent)
                self.namespaces[name] = child
                parent.children[name] = child
                return child
        return None

    def on(self, event: str, *, namespace: str = "/") -> Callable[[H], H]:
        """Register a handler on a namespace (the main one by default); see Namespace.on."""
        return self.of(namespace).on(event)

    def use(self, middleware: Middleware, *, namespace: str = "/") -> Middleware:
        """Add connection middleware to a namespace; see Namespace.use."""
        return self.of(namespace).use(middleware)

    def to(self, *rooms: str) -> BroadcastOperator:
        """Broadcast to rooms of the main namespace."""
        return self.of("/").to(*rooms)

    in_ = to

    def except_(self, *rooms: str) -> BroadcastOperator:
        """Broadcast to the main namespace, leaving out ``rooms``."""
        return self.of("/").except_(*rooms)

    async def emit(self, event: str, *args: JsonValue) -> int:
        """Send ``event`` to every socket of the main namespace."""
        return await self.of("/").emit(event, *args)

    # -- the Socket.IO layer (called by connection actors) ----------------------------------

    async def on_connect(self, conn: Connection, namespace: str, auth: JsonValue) -> None:
        """Answer a client's CONNECT to ``namespace``: recover its session if it asks to
        and can be, run the namespace's middleware, register and record the socket, send
        a recovered one what it missed, then run the connect handlers.

        Cancellation: the socket may be registered without its connect handlers run.

        Raises:
            Exception: Whatever a connect handler or a non-refusing middleware raises.
        """
        ns = self.resolve_namespace(namespace, auth)
        if ns is None:
            conn.send_packet(conn.sio.refuse(namespace, {"message": "Invalid namespace"}))
            return
        restoring = await self._take_session(ns, auth)
        socket = self._new_socket(ns, conn, auth, restoring)
        if not await self._pass_middlewares(socket, restoring):
            return
        if not await self._register(socket, restoring):
            return
        if restoring is not None and restoring.shared is not None:
            await self._send_shared_missed(socket, restoring.shared)
        if self.observer is not None:
            self.observer.socket_connected(socket)
        if socket.recovered and ns.presence is not None:  # rooms taken back, not joined
            ns.presence.joined(socket, socket.rooms - {socket.sid})
        for handler in ns.connect_handlers:
            await handler(socket, socket.handshake.auth)

    async def _take_session(self, ns: Namespace, auth: JsonValue) -> _Restoring | None:
        """The session a CONNECT's auth (``{pid, offset}``) asks to recover, taken over,
        or None (recovery off, not asked for, or not possible: the socket is then new).

        Cancellation: a shared-log session may have been taken over.
        """
        store = self.recovery_store
        if store is None or not isinstance(auth, dict):
            return None
        pid, recovery_offset = auth.get("pid"), auth.get("offset")
        if not isinstance(pid, str) or not isinstance(recovery_offset, str):
            return None
        shared = ns.adapter.shared_log
        if shared is not None:  # the cluster's log and sessions, in Redis
            prepared = await shared.prepare_recovery(
                ns.name,
                pid,
                recovery_offset,
                now=self.wall_now(),
                max_age=store.config.max_disconnection_duration,
                max_events=store.config.max_events,
            )
            return (
                None if prepared is None else _Restoring(session=prepared.session, shared=prepared)
            )
        if not ns.adapter.history_is_local:
            # A multi-node adapter's broadcasts from other nodes never reach this node's
            # store without a shared log: recovering from it could hide events.
            return None
        # Decided once every broadcast made before this CONNECT is kept: recorded
        # broadcasts are kept when released, after their emitters went on.
        await self.sequencer.settle()
        taken = store.restore(ns.name, pid, recovery_offset, self.wall_now())
        return None if taken is None else _Restoring(session=taken[0], after=taken[1])

    def _new_socket(
        self, ns: Namespace, conn: Connection, auth: JsonValue, restoring: _Restoring | None
    ) -> Socket:
        """The socket a CONNECT makes: new, or with a recovered session's sid, pid and data."""
        request = conn.request
        restored = restoring.session if restoring is not None else None
        store = self.recovery_store
        return Socket(
            sid=restored.sid if restored is not None else _new_id(),
            namespace=ns,
            connection=conn,
            handshake=Handshake(
                auth=auth if auth is not None else {},
                headers=request.headers if request is not None else {},
                query=request.query if request is not None else {},
                address=request.remote if request is not None else None,
                time=trio.current_time(),
            ),
            data=dict(restored.data) if restored is not None else {},
            pid=(restored.pid if restored is not None else store.new_pid())
            if store is not None
            else None,
            recovered=restored is not None,
        )

    async def _pass_middlewares(self, socket: Socket, restoring: _Restoring | None) -> bool:
        """Run the namespace's connection middleware (skipped for a recovered socket when
        ``skip_middlewares``); False when one refused, the CONNECT then answered so (and
        a shared-log session taken over is let go).

        Raises:
            Exception: Whatever a middleware raises other than ``ConnectRefusedError``.
        """
        ns, conn = socket.namespace, socket.connection
        store = self.recovery_store
        skip = restoring is not None and store is not None and store.config.skip_middlewares
        try:
            if not skip:
                for middleware in ns.middlewares:
                    await middleware(socket, socket.handshake.auth)
        except ConnectRefusedError as exc:
            data: dict[str, JsonValue] = {"message": exc.message}
            if exc.data is not None:
                data["data"] = exc.data
            conn.send_packet(conn.sio.refuse(ns.name, data))
            shared = ns.adapter.shared_log
            if shared is not None and restoring is not None and restoring.shared is not None:
                await shared.close_session(restoring.session.pid)  # taken, refused
            return False
        return True

    async def _register(self, socket: Socket, restoring: _Restoring | None) -> bool:
        """Register the socket, answer its CONNECT and record it (a local recovery does
        all that with its missed events, in one turn of the broadcast sequence); False
        when its connection closed first.

        Cancellation: the socket may be registered without its record.
        """
        ns = socket.namespace
        if restoring is not None:
            # The same sid may still be leaving its rooms on this node (its disconnecting
            # handlers running): it must finish before this socket takes the rooms back.
            await ns.wait_left(socket.sid)
            if restoring.after is not None:
                return await self._recover_locally(socket, restoring.session, restoring.after)
        store, shared = self.recovery_store, ns.adapter.shared_log
        live = ns.socket_session(socket) if shared is not None and not socket.recovered else None
        if shared is not None and live is not None and store is not None:
            # Live in Redis before anybody can send it a recovery offset: if this node is
            # killed, another one can recover it.
            await shared.open_session(live, store.config.max_disconnection_duration)
        if socket.connection.closed:
            if shared is not None and socket.pid is not None:
                await shared.close_session(socket.pid)
            return False
        self._accept(socket)
        await self._record_connect(socket, restoring.session if restoring is not None else None)
        return True

    async def _send_shared_missed(self, socket: Socket, prepared: PreparedRecovery) -> None:
        """Send a socket recovered from the cluster's shared log what it missed, then
        join its rooms (see ``PreparedRecovery.finish``).

        Cancellation: some events may be sent; the rooms may not be joined.
        """
        ns, conn, session = socket.namespace, socket.connection, prepared.session

        def send(event: MissedEvent, recovery_offset: str) -> None:
            args = (*event.args, recovery_offset)
            conn.send_packet(Event(name=event.name, args=args, namespace=ns.name))

        await prepared.finish(
            rooms=session.rooms | {socket.sid},
            send=send,
            join=lambda: ns.adapter.add_all(socket.sid, session.rooms),
        )

    def _accept(self, socket: Socket) -> None:
        """Register a socket that passed the middleware and answer its CONNECT."""
        ns, conn = socket.namespace, socket.connection
        ns.sockets[socket.sid] = socket
        ns.adapter.add_socket(socket)
        conn.namespaces[ns.name] = socket
        conn.send_packet(conn.sio.accept(ns.name, socket.sid, pid=socket.pid))

    async def _recover_locally(self, socket: Socket, session: SavedSession, after: int) -> bool:
        """Accept a recovered socket, send it the events it missed after event seq ``after``
        and join its rooms, in one turn of the broadcast sequence: every earlier broadcast
        is then kept in the store, and every later one is either addressed to the socket
        when it joins (``Broadcaster.adopt``: made already, not released yet) or made
        after that, so the socket gets each event once (replayed or live) and in order.
        False when its connection closed meanwhile (the session is kept again).

        Cancellation: the socket may be accepted without its rooms.
        """
        store = self.recovery_store
        assert store is not None
        ns, conn = socket.namespace, socket.connection
        sequencer = self.sequencer
        turn = sequencer.take()
        try:
            await sequencer.wait_turn(turn)
            if conn.closed:
                store.save(session)
                return False
            # Accepted, sent what it missed and in its rooms before anything here waits:
            # a recorded broadcast is addressed to its recipients when it is made
            # (``Recorded.broadcast``).
            self._accept(socket)
            rooms = session.rooms | {socket.sid}
            for event in store.missed(ns.name, after, rooms):
                conn.send_packet(Event(name=event.name, args=event.args, namespace=ns.name))
            self.broadcaster.adopt(ns.name, socket, rooms, rooms)  # (made since the turn)
            await ns.adapter.add_all(socket.sid, session.rooms)  # (its index first)
            await self._record_connect(socket, session)
        finally:
            sequencer.finish(turn)
        return True

    async def on_event(
        self,
        conn: SocketConnection,
        namespace: str,
        name: str,
        args: tuple[JsonValue, ...],
        ack_id: int | None,
    ) -> None:
        socket = conn.namespaces.get(namespace)
        if not isinstance(socket, Socket) or not socket.connected:
            return
        if self.observer is not None:
            self.observer.event_received(socket, name, args)
        ns = socket.namespace
        broadcaster = self.broadcaster
        if broadcaster.records_client_events:
            try:
                broadcaster.record_nowait(_MESSAGE, namespace, "", socket.sid, name, args)
            except trio.WouldBlock:  # the log's inbox is full: wait for room
                await broadcaster.record_event(
                    _MESSAGE, namespace, sender=socket.sid, event=name, args=args
                )
        if (
            ns.any_handlers
            or ns.packet_middlewares
            or socket.any_listeners
            or socket.packet_middlewares
        ) and not await admit_event(socket, name, args):
            return  # refused by per-packet middleware: no handler, no ack (as in Node)
        handler = ns.handlers.get(name)
        handed_off = self.broadcaster.handed_off
        if handler is not None:
            result = await handler(socket, *args)
        elif ns.unhandled_handlers:
            result = None
            for catch_all in ns.unhandled_handlers:
                result = await catch_all(socket, name, *args)
        else:
            return
        if ack_id is None:
            return
        if self.broadcaster.handed_off != handed_off:
            # The handler's broadcasts went to the log and return before they go out:
            # its ack waits for them, so a publisher's ack still means its event is in
            # the log (synced under ``always`` and ``interval``) and went out.
            await self.sequencer.settle()
        if socket.connected:
            conn.send_packet(Ack(ack_id=ack_id, args=ack_args(result), namespace=namespace))

    async def _record_connect(self, socket: Socket, restored: SavedSession | None) -> None:
        """Record a socket's CONNECT with what recovery after a crash needs: its pid, its
        ``data`` as the middleware left it, and, when recovered, the rooms it got back
        (later rooms are its JOIN and LEAVE records). Data msgpack cannot hold is left
        out rather than losing the record."""
        info: dict[str, LogValue] = {
            "pid": socket.pid,
            "recovered": socket.recovered,
            "data": socket.data,
        }
        if restored is not None:
            rooms: list[LogValue] = [*sorted(restored.rooms)]
            info["rooms"] = rooms
        await self.broadcaster.record_session(
            RecordKind.CONNECT, socket.namespace.name, socket.sid, socket.handshake.auth, info
        )

    def on_ack(
        self, conn: Connection, namespace: str, ack_id: int, args: tuple[JsonValue, ...]
    ) -> None:
        socket = conn.namespaces.get(namespace)
        if isinstance(socket, Socket):
            waiter = socket.acks.pop(ack_id, None)
            if waiter is not None:
                waiter.resolve(socket.sid, args)

    async def on_namespace_disconnect(self, conn: Connection, namespace: str, reason: str) -> None:
        socket = conn.namespaces.get(namespace)
        if isinstance(socket, Socket):
            await socket.namespace.remove_socket(socket, reason)

    def on_closing(self, conn: Connection, reason: str) -> None:
        for socket in conn.namespaces.values():
            if isinstance(socket, Socket):
                socket._fail_acks(reason)

    async def on_close(self, conn: Connection, reason: str) -> None:
        self._forget(conn)
        if self.observer is not None:
            self.observer.connection_closed(conn, reason)
        for socket in list(conn.namespaces.values()):
            if isinstance(socket, Socket):
                await socket.namespace.remove_socket(socket, reason)

    # -- Engine.IO endpoints --------------------------------------------------------------

    def mount_engine(self, path: str, layer: EngineLayer) -> None:
        """Serve a bare Engine.IO endpoint (no Socket.IO layer) at ``path``.

        ``layer.on_message(conn, data)`` gets every message; ``conn.send_message`` answers.
        """
        self.front.mount(path, layer)

    # -- serving ---------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Listen on ``host:port`` and serve until cancelled; ``started`` gets the bound
        ``(host, port)`` (port 0 picks a free one).

        With ``ssl_context`` (a server context: ``ssl.create_default_context(
        ssl.Purpose.CLIENT_AUTH)`` with ``load_cert_chain``) every connection is TLS:
        HTTPS for polling and ``wss://`` for WebSocket, on the same port. The TLS
        handshake runs in the connection's own task, under ``request_header_timeout``.

        Cancellation: a clean shutdown: every connection is closed with the reason
        "server shutting down" (its disconnect handlers run and its client gets a close
        frame), each within ``config.close_grace``.
        """
        sockets = await open_tcp_sockets(port, host)
        sockname = sockets[0].getsockname()
        front = self.front
        serve: Callable[[trio.SocketStream, str], Awaitable[None]] = front.serve_stream
        if ssl_context is not None:
            context = ssl_context

            async def serve(stream: trio.SocketStream, remote: str) -> None:
                # https_compatible: a browser or Node client that closes the TCP
                # connection without a TLS close_notify is an end of stream, not a broken one.
                tls = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
                await front.serve_stream(tls, remote)

        scheme = "http" if ssl_context is None else "https"
        try:
            async with self.running() as connections:
                logger.info("roomcast listening on %s://%s:%d", scheme, sockname[0], sockname[1])
                task_status.started((sockname[0], sockname[1]))
                async with trio.open_nursery() as accepting:
                    for sock in sockets:
                        accepting.start_soon(accept_connections, sock, serve, connections)
        finally:
            for sock in sockets:
                sock.close()
        raise AssertionError("unreachable")  # pragma: no cover

    @asynccontextmanager
    async def running(self) -> AsyncIterator[trio.Nursery]:
        """Run everything serving needs but a listener, for the block: the event log, the
        supervisor (rooms, timers), the services (``add_service``) and the nursery
        connections run in, which it yields.
        ``serve`` runs its listener in it; the ASGI front (``roomcast.engine.asgi``)
        opens it for an ASGI app's lifespan.

        Leaving the block, however it is left, shuts down as a cancelled ``serve`` does:
        every connection closes with "server shutting down", then the supervisor stops,
        and the log closes last.

        Cancellation: as leaving the block.

        Raises:
            RuntimeError: The server is running already.
        """
        if self._connections is not None:
            raise RuntimeError("the server is running already")
        self._wall = None  # (``wall_now`` reads this run's clock, not a previous run's)
        async with self._open_log(), trio.open_nursery() as nursery:
            # Shut down in order: connections first (their cleanup leaves rooms and
            # runs disconnect handlers), then the supervisor with the room actors.
            system = await nursery.start(self._run_supervisor)
            for service in self.services:
                await nursery.start(service)
            try:
                async with trio.open_nursery() as connections:
                    self._connections = connections
                    yield connections
                    connections.cancel_scope.cancel()
            finally:
                self._connections = None
                system.cancel()
                nursery.cancel_scope.cancel()  # the services (add_service)

    @asynccontextmanager
    async def _open_log(self) -> AsyncIterator[None]:
        """Open the event log (when on) for the server's lifetime; the log closes last,
        after every connection, so their last records are written and synced."""
        config = self.config.log
        if not config.enabled:
            yield
            return
        async with open_event_log(
            config, io=self.metrics.log_io if self.metrics is not None else None
        ) as log:
            store = self.recovery_store
            sequencer = Sequencer(last=log.max_offset(), done=log.max_offset())
            if store is not None:
                await self._rebuild_recovery(log, store)
            self._pick_broadcaster(log=log, store=store, sequencer=sequencer)
            try:
                yield
            finally:
                self._pick_broadcaster(log=None, store=store, sequencer=self.sequencer)

    def wall_now(self) -> float:
        """Wall-clock seconds, advancing with Trio's clock (a MockClock in tests too)."""
        wall = self._wall
        if wall is None:
            # The run's clock itself, read directly: every recorded event reads it.
            clock_now = trio.lowlevel.current_clock().current_time
            wall = self._wall = (time.time() - clock_now(), clock_now)
        base, clock_now = wall
        return base + clock_now()

    async def _rebuild_recovery(self, log: EventLog, store: RecoveryStore) -> None:
        """Refill the recovery store from the log's current epoch, so a client that was
        connected before a restart can still be recovered.

        After a clean shutdown every socket's session is in its ``DISCONNECT`` record,
        so the recovery window is read. After a crash, the sockets that were connected
        are known only from their ``CONNECT``, ``JOIN`` and ``LEAVE`` records, however
        old, so the whole epoch is read (in one pass, in a worker thread).
        """
        store.epoch = log.epoch
        store.seq = log.max_offset()
        crashed = log.repair_report.clean_shutdown is False
        now = self.wall_now()
        since = None if crashed else now - store.config.max_disconnection_duration
        since = None if since is None else since - store.delivery_bound
        directory = str(log.directory)
        max_record_bytes = log.config.max_record_bytes

        def load() -> None:
            records = iter_records(
                directory, epoch=log.epoch, since_time=since, max_record_bytes=max_record_bytes
            )
            store.load(records, now=now, crashed=crashed)

        await trio.to_thread.run_sync(load)
        if crashed:
            logger.info(
                "recovery: the last run did not close the event log; %d session(s) can be "
                "recovered for %.0f s",
                store.sessions_kept,
                store.config.max_disconnection_duration,
            )

    async def _run_supervisor(
        self, *, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Shielded from the server's cancellation: serve() cancels it itself, once the
        # connections are closed.
        with trio.CancelScope(shield=True) as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.supervisor.run)
                task_status.started(scope)

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client's HTTP connection on any Trio stream (a socket or an in-memory
        pair): requests one after another, or a WebSocket (``EngineFront.serve_stream``).

        Needs ``supervisor.run`` to be running (``serve`` starts it).

        Cancellation: a WebSocket connection is closed as in a server shutdown.
        """
        await self.front.serve_stream(stream)

    async def handle_request(self, http: HttpExchange, request: HttpRequest) -> bool:
        """Answer one request (``EngineFront.handle_request``): what the built-in front
        and the ASGI one (``roomcast.engine.asgi``) both route through, so both answer
        alike. Returns False when the stream was taken over or must close.

        Cancellation: a held polling GET is answered CLOSE (within ``close_grace``); a
        WebSocket connection closes as in a server shutdown.
        """
        return await self.front.handle_request(http, request)

    # -- the connection registry (the front's host, front.py) -------------------

    def sessions_from(self, host: str) -> int:
        """How many open connections came from the address ``host``."""
        return self._per_address.get(host, 0)

    def open_connection(
        self,
        request: HttpRequest,
        endpoint: Endpoint,
        *,
        transport: str,
        ws: MessageTransport | None = None,
    ) -> Connection:
        """Make a new session's connection on ``endpoint`` (over ``ws`` when it starts on
        WebSocket) and register it; ``run_connection`` runs it."""
        config = self.config
        sid = _new_id()
        session = EioServerSession(
            sid=sid,
            transport=transport,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            max_payload=config.limits.max_payload_bytes,
            now=trio.current_time(),
        )
        conn = Connection(
            config=config,
            session=session,
            sio_layer=endpoint.sio_layer,
            engine_layer=endpoint.engine_layer,
            scheduler=self.supervisor.scheduler,
            parser=endpoint.parser,
            transport=ws,
            request=attrs.evolve(request, raw_headers=()),  # (only the handshake needs it)
            endpoint=endpoint.path,
            traffic=self.stats.traffic,
            reactor=self.supervisor.reactor,
        )
        self.connections[sid] = conn
        if self.observer is not None and endpoint.sio_layer is self:
            self.observer.connection_opened(conn)
        if request.remote is not None:
            host = host_of(request.remote)
            self._per_address[host] = self._per_address.get(host, 0) + 1
        return conn

    async def start_connection(self, conn: Connection) -> None:
        """Start a polling session's actor, which no request task owns: in the
        connections' nursery (``running``), or the supervisor's when served without it
        (in-memory streams). Returns once it runs.

        Cancellation: the actor may or may not have started.
        """
        if self._connections is not None:
            await self._connections.start(self.run_connection, conn)
        else:
            await self.supervisor.start_connection(partial(self.run_connection, conn))

    async def run_connection(  # noqa: ASYNC128 - conn.run calls task_status.started()
        self, conn: Connection, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run a connection's actor until it ends, then forget the connection.

        Cancellation: the connection closes as in a server shutdown.
        """
        try:
            await conn.run(task_status=task_status)
        finally:
            self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        if self.connections.get(conn.eio_sid) is conn:
            del self.connections[conn.eio_sid]
            self.stats.closed(conn.close_reason or DisconnectReason.SERVER_SHUTTING_DOWN)
            request = conn.request
            if request is not None and request.remote is not None:
                host = host_of(request.remote)
                left = self._per_address.get(host, 0) - 1
                if left > 0:
                    self._per_address[host] = left
                else:
                    self._per_address.pop(host, None)
