"""``Server``: the Socket.IO server object an app builds, and ``serve`` to run it."""

from __future__ import annotations

import logging
import mimetypes
import os
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn
from urllib.parse import urlsplit

import attrs
import trio

from roomcast.engine.actors.connection import Connection, EngineLayer
from roomcast.engine.actors.supervisor import Periodic, Supervisor
from roomcast.engine.adapters.base import Adapter
from roomcast.engine.adapters.memory import MemoryAdapter
from roomcast.engine.broadcast import Broadcaster, Unrecorded, pick_broadcaster
from roomcast.engine.config import Config
from roomcast.engine.errors import ConnectRefusedError, TransportClosed
from roomcast.engine.listeners import admit_event
from roomcast.engine.log import EventLog, iter_records, open_event_log
from roomcast.engine.namespace import (
    BroadcastOperator,
    H,
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
from roomcast.engine.socket import Handshake, Socket
from roomcast.engine.stats import ServerStats
from roomcast.engine.transport.base import HttpExchange, MessageTransport
from roomcast.engine.transport.http import HttpConnection, HttpRequest, error_body
from roomcast.protocol._eio import EioServerSession
from roomcast.protocol._log import LogValue, RecordKind
from roomcast.protocol._sio import JSON_PARSER, Ack, Event, JsonValue, Parser

if TYPE_CHECKING:
    from roomcast.engine.metrics import Metrics

__all__ = ["AdapterFactory", "Server"]

logger = logging.getLogger(__name__)

CLOSE_PAYLOAD: Final = b"1"  # an Engine.IO CLOSE packet, as a polling body
ORIGIN_LOG_INTERVAL: Final = 10.0
"""Seconds between two log lines about refused Origins (a page hammering the server
must not flood the log); the line after a quiet spell counts those left out."""
_LINGER_TIMEOUT: Final = 1.0
_LINGER_BYTES: Final = 65_536

AdapterFactory = Callable[[str, Callable[..., None], Config], Adapter]


def _memory_adapter(name: str, spawn_room: Callable[..., None], config: Config) -> Adapter:
    return MemoryAdapter(
        namespace=name, spawn_room=spawn_room, room_inbox_size=config.room_inbox_size
    )


def _new_id() -> str:
    return secrets.token_urlsafe(15)


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
    cors_allowed_origins: Sequence[str] | Literal["*"] | Callable[[str], bool] = ()
    allow_request: Callable[[HttpRequest], Awaitable[bool]] | None = None
    static_dirs: dict[str, str] = attrs.field(factory=dict)
    recovery: RecoveryConfig | None = None
    broadcaster: Broadcaster = attrs.field(init=False)
    """How broadcasts are recorded and delivered (``engine/broadcast.py``): it owns the
    sequencer, the event log, the recovery store and the shared log; picked again when
    the settings or the log change."""
    _wall_base: float | None = attrs.field(default=None, init=False)
    connections: dict[str, Connection] = attrs.field(factory=dict, init=False)
    _engines: dict[str, EngineLayer] = attrs.field(factory=dict, init=False)
    _per_address: dict[str, int] = attrs.field(factory=dict, init=False)
    _connections: trio.Nursery | None = attrs.field(default=None, init=False)
    _prune: Periodic | None = attrs.field(default=None, init=False)
    _origin_log_after: float = attrs.field(default=-float("inf"), init=False)
    _origins_unlogged: int = attrs.field(default=0, init=False)
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

    def _resolve(self, name: str, auth: JsonValue) -> Namespace | None:
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

    def use(self, middleware: Any, *, namespace: str = "/") -> Any:
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
        ns = self._resolve(namespace, auth)
        if ns is None:
            conn.send_packet(conn.sio.refuse(namespace, {"message": "Invalid namespace"}))
            return
        request = conn.request
        store = self.recovery_store
        shared = ns.adapter.shared_log
        restored: SavedSession | None = None
        local_after: int | None = None  # a local recovery: the client's offset
        shared_recovery = None
        if store is not None and isinstance(auth, dict):
            pid, offset = auth.get("pid"), auth.get("offset")
            if isinstance(pid, str) and isinstance(offset, str):
                if shared is not None:  # the cluster's log and sessions, in Redis
                    shared_recovery = await shared.prepare_recovery(
                        namespace,
                        pid,
                        offset,
                        now=self.wall_now(),
                        max_age=store.config.max_disconnection_duration,
                        max_events=store.config.max_events,
                    )
                    if shared_recovery is not None:
                        restored = shared_recovery.session
                elif ns.adapter.history_is_local:
                    # (A multi-node adapter's broadcasts from other nodes never reach
                    # this node's store without a shared log: recovering from it could
                    # hide events, so it is not tried.)
                    taken = store.restore(namespace, pid, offset, self.wall_now())
                    if taken is not None:
                        restored, local_after = taken
        socket = Socket(
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
        skip = restored is not None and store is not None and store.config.skip_middlewares
        try:
            if not skip:
                for middleware in ns.middlewares:
                    await middleware(socket, socket.handshake.auth)
        except ConnectRefusedError as exc:
            data: dict[str, JsonValue] = {"message": exc.message}
            if exc.data is not None:
                data["data"] = exc.data
            conn.send_packet(conn.sio.refuse(namespace, data))
            if shared is not None and shared_recovery is not None:
                await shared.close_session(shared_recovery.session.pid)  # taken, refused
            return
        if restored is not None:
            # The same sid may still be leaving its rooms on this node (its disconnecting
            # handlers running): it must finish before this socket takes the rooms back.
            await ns.wait_left(socket.sid)
        if restored is not None and local_after is not None:
            if not await self._recover_locally(socket, restored, local_after):
                return
        else:
            live = (
                ns.socket_session(socket) if shared is not None and not socket.recovered else None
            )
            if shared is not None and live is not None and store is not None:
                # Live in Redis before anybody can send it an offset: if this node is
                # killed, another one can recover it.
                await shared.open_session(live, store.config.max_disconnection_duration)
            if conn.closed:
                if shared is not None and socket.pid is not None:
                    await shared.close_session(socket.pid)
                return
            self._accept(socket)
            await self._record_connect(socket, restored)
        if shared_recovery is not None and shared is not None:
            session = shared_recovery.session

            def send(event: MissedEvent, offset: str) -> None:
                args = (*event.args, offset)
                conn.send_packet(Event(name=event.name, args=args, namespace=namespace))

            await shared.finish_recovery(
                shared_recovery,
                rooms=session.rooms | {socket.sid},
                send=send,
                join=lambda: ns.adapter.add_all(socket.sid, session.rooms),
            )
        if self.observer is not None:
            self.observer.socket_connected(socket)
        if socket.recovered and ns.presence is not None:  # rooms taken back, not joined
            ns.presence.joined(socket, socket.rooms - {socket.sid})
        for handler in ns.connect_handlers:
            await handler(socket, socket.handshake.auth)

    def _accept(self, socket: Socket) -> None:
        """Register a socket that passed the middleware and answer its CONNECT."""
        ns, conn = socket.namespace, socket.connection
        ns.sockets[socket.sid] = socket
        ns.adapter.add_socket(socket)
        conn.namespaces[ns.name] = socket
        conn.send_packet(conn.sio.accept(ns.name, socket.sid, pid=socket.pid))

    async def _recover_locally(self, socket: Socket, session: SavedSession, after: int) -> bool:
        """Accept a recovered socket, send it the events it missed after offset ``after``
        and join its rooms, all in one turn of the broadcast sequence: every earlier
        broadcast is then kept in the store and queued to its rooms, and no later one is,
        so the socket gets each event once (replayed or live) and in order. False when
        its connection closed meanwhile (the session is kept again).

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
            self._accept(socket)
            await self._record_connect(socket, session)
            for event in store.missed(ns.name, after, session.rooms | {socket.sid}):
                conn.send_packet(Event(name=event.name, args=event.args, namespace=ns.name))
            await ns.adapter.add_all(socket.sid, session.rooms)
        finally:
            sequencer.finish(turn)
        return True

    async def on_event(
        self,
        conn: Connection,
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
            await broadcaster.record_event(
                RecordKind.MESSAGE, namespace, sender=socket.sid, event=name, args=args
            )
        if (
            ns.any_handlers
            or ns.packet_middlewares
            or socket.any_listeners
            or socket.packet_middlewares
        ) and not await admit_event(socket, name, args):
            return  # refused by per-packet middleware: no handler, no ack (as in Node)
        handler = ns.handlers.get(name)
        if handler is not None:
            result = await handler(socket, *args)
        elif ns.unhandled_handlers:
            result = None
            for catch_all in ns.unhandled_handlers:
                result = await catch_all(socket, name, *args)
        else:
            return
        if ack_id is not None and socket.connected:
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
        self._engines[_normal_path(path)] = layer

    async def on_message(self, conn: Connection, data: str | bytes) -> None:
        """Unused: the Socket.IO endpoint decodes messages itself."""

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
        tcp = await trio.open_tcp_listeners(port, host=host)
        sockname = tcp[0].socket.getsockname()
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(tcp)
        if ssl_context is not None:
            # https_compatible: a browser or Node client that closes the TCP connection
            # without a TLS close_notify is an end of stream, not a broken one.
            listeners = [
                trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in tcp
            ]
        scheme = "http" if ssl_context is None else "https"
        try:
            async with self.running() as connections:
                logger.info("roomcast listening on %s://%s:%d", scheme, sockname[0], sockname[1])
                task_status.started((sockname[0], sockname[1]))
                await trio.serve_listeners(
                    self.serve_stream, listeners, handler_nursery=connections
                )
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
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
        if self._wall_base is None:
            self._wall_base = time.time() - trio.current_time()
        return self._wall_base + trio.current_time()

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
        crashed = log.recovery.clean_shutdown is False
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
        pair): requests one after another, or a WebSocket.

        Needs ``supervisor.run`` to be running (``serve`` starts it).

        Cancellation: a WebSocket connection is closed as in a server shutdown.
        """
        config = self.config
        http = HttpConnection(
            stream=stream,
            max_head_bytes=config.max_request_header_bytes,
            remote=_remote_address(stream),
        )
        try:
            while True:
                try:
                    with trio.fail_after(config.request_header_timeout):
                        request = await http.next_request()
                except trio.TooSlowError:
                    if http.received_in_cycle:  # an idle keep-alive just ends quietly
                        await http.respond(408, error_body(3, "request head timeout"), close=True)
                    return
                if request is None:
                    return
                if not await self.handle_request(http, request) or not http.reusable:
                    return
        except TransportClosed:
            await _linger(stream)
        except Exception:
            # The per-connection boundary: a bug in handling one client's requests is
            # logged and ends that client's connection, never the server.
            logger.exception("request handling failed for %s", http.remote)
        finally:
            await trio.aclose_forcefully(stream)

    def _origin_allowed(self, request: HttpRequest) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            return True  # not a browser: the Origin check protects browsers' users
        allowed = self.cors_allowed_origins
        if allowed == "*":
            return True
        if callable(allowed):
            if allowed(origin):
                return True
            self._log_refused_origin(origin, "the cors_allowed_origins predicate refused it")
            return False
        if origin in allowed:
            return True
        # Same origin: the page was served by this host.
        host = request.headers.get("host")
        if urlsplit(origin).netloc == host:
            return True
        listed = "is not in cors_allowed_origins" if allowed else "cors_allowed_origins is empty"
        self._log_refused_origin(origin, f"{listed} and it is not this server's (Host {host})")
        return False

    def _log_refused_origin(self, origin: str, rule: str) -> None:
        """A warning with the refused Origin and the rule that refused it, at most one
        per ORIGIN_LOG_INTERVAL."""
        now = trio.current_time()
        if now < self._origin_log_after:
            self._origins_unlogged += 1
            return
        left_out = self._origins_unlogged
        more = f" ({left_out} more refused since the last such line)" if left_out else ""
        logger.warning("refused Origin %r: %s%s", origin, rule, more)
        self._origin_log_after = now + ORIGIN_LOG_INTERVAL
        self._origins_unlogged = 0

    def _cors_headers(self, request: HttpRequest) -> tuple[tuple[str, str], ...]:
        origin = request.headers.get("origin")
        if origin is None:
            return ()
        return (
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Vary", "Origin"),
        )

    async def handle_request(self, http: HttpExchange, request: HttpRequest) -> bool:
        """Answer one request: Engine.IO polling or a WebSocket (served until it closes),
        ``/healthz``, static files. The built-in front and the ASGI one
        (``roomcast.engine.asgi``) both route through here, so both answer alike.

        Returns False when the stream was taken over or must close.

        Cancellation: a held polling GET is answered CLOSE (within ``close_grace``); a
        WebSocket connection closes as in a server shutdown.
        """
        path = _normal_path(request.path)
        if request.path == "/healthz":
            await http.respond(200, b"ok")
            return True
        if request.path == "/metrics" and self.metrics is not None:
            from roomcast.engine.metrics import CONTENT_TYPE  # (an optional extra)

            body = self.metrics.render()
            await http.respond(200, body, content_type=CONTENT_TYPE)
            return True
        layer: EngineLayer
        if path == _normal_path(self.config.path):
            layer, parser = self, self.parser
        elif path in self._engines:
            layer, parser = self._engines[path], None
        else:
            return await self._static(http, request)
        cors = self._cors_headers(request)
        if not self._origin_allowed(request):
            await http.respond(403, error_body(4, "Forbidden"), close=True)
            return False
        if request.method == "OPTIONS":
            requested = request.headers.get("access-control-request-headers", "")
            headers = (
                *cors,
                ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                ("Access-Control-Allow-Headers", requested),
                ("Access-Control-Max-Age", "86400"),
            )
            await http.respond(204, headers=headers)
            return True
        if self.allow_request is not None and not await self.allow_request(request):
            await http.respond(403, error_body(4, "Forbidden"), headers=cors, close=True)
            return False
        query = request.query
        if "sid" not in query and not self._admit(request):
            await http.respond(503, error_body(3, "Too many connections"), headers=cors)
            return True
        if query.get("EIO") != "4":
            await http.respond(400, error_body(5, "Unsupported protocol version"), headers=cors)
            return True
        transport = query.get("transport")
        sid = query.get("sid")
        if transport == "websocket":
            if not request.is_websocket:
                await http.respond(400, error_body(3, "Bad request"), headers=cors)
                return True
            if sid is None:
                await self._new_websocket(http, request, layer, parser, path)
                return False
            conn = self.connections.get(sid)
            if conn is None or conn.endpoint != path:
                await http.respond(400, error_body(1, "Session ID unknown"), headers=cors)
                return True
            ws = await self._accept_websocket(http, request)
            if ws is not None:
                await conn.upgrade(ws)
            return False
        if transport != "polling":
            await http.respond(400, error_body(0, "Transport unknown"), headers=cors)
            return True
        if sid is None:
            if request.method != "GET":
                await http.respond(400, error_body(2, "Bad handshake method"), headers=cors)
                return True
            conn = self._new_connection(request, layer, parser, path, transport="polling")
            if self._connections is not None:
                await self._connections.start(self._run_connection, conn)
            else:  # served without serve() (in-memory streams): the supervisor hosts it
                await self.supervisor.start_connection(partial(self._run_connection, conn))
            handshake = "0" + str(conn.session.handshake().data)
            await http.respond(200, handshake.encode(), headers=cors)
            return True
        conn = self.connections.get(sid)
        if conn is None or conn.endpoint != path or conn.closed or conn.transport_name != "polling":
            await http.respond(400, error_body(1, "Session ID unknown"), headers=cors)
            return True
        if request.method == "GET":
            result: tuple[int, str] | None = None
            try:
                result = await self._poll(http, conn)
            finally:
                # The answer is written even when the server is shutting down (then it
                # is CLOSE), within close_grace.
                status, body = (
                    (200, CLOSE_PAYLOAD)
                    if result is None
                    else (
                        result[0],
                        result[1].encode(),
                    )
                )
                self.stats.traffic.bytes_out += len(body)
                with trio.move_on_after(self.config.close_grace, shield=True):
                    await http.respond(status, body, headers=cors, close=result is None)
            return status == 200
        if request.method == "POST":
            try:
                with trio.fail_after(self.config.request_body_timeout):
                    body = await http.read_body(self.config.limits.max_payload_bytes)
            except trio.TooSlowError:
                conn.close("transport error")
                await http.respond(408, error_body(3, "request body timeout"), close=True)
                return False
            except TransportClosed:
                conn.close("transport error")
                raise
            self.stats.traffic.bytes_in += len(body)
            if await conn.receive_payload(body):
                await http.respond(200, b"ok", headers=cors)
                return True
            await http.respond(400, error_body(3, "Bad request"), headers=cors)
            return True
        await http.respond(400, error_body(3, "Bad request"), headers=cors)
        return True

    def _admit(self, request: HttpRequest) -> bool:
        """Whether a new session fits under the connection limits."""
        config = self.config
        if len(self.connections) >= config.max_connections:
            logger.warning("refusing a session: %d connections", len(self.connections))
            return False
        per_address = config.max_connections_per_address
        if per_address is not None and request.remote is not None:
            host = _host_of(request.remote)
            if self._per_address.get(host, 0) >= per_address:
                logger.warning("refusing a session from %s: %d connections", host, per_address)
                return False
        return True

    async def _poll(self, http: HttpExchange, conn: Connection) -> tuple[int, str]:
        """Hold a polling GET; if the client goes away meanwhile, close the session."""
        result: tuple[int, str] = (400, "")

        async def poll(cancel: trio.CancelScope) -> None:
            nonlocal result
            result = await conn.poll()
            cancel.cancel()

        async def watch(cancel: trio.CancelScope) -> None:
            await http.wait_closed()
            conn.client_gone()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll, nursery.cancel_scope)
            nursery.start_soon(watch, nursery.cancel_scope)
        return result

    def _new_connection(
        self,
        request: HttpRequest,
        layer: EngineLayer,
        parser: Parser | None,
        path: str,
        *,
        transport: str,
        ws: MessageTransport | None = None,
    ) -> Connection:
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
            layer=layer,
            scheduler=self.supervisor.scheduler,
            parser=parser,
            transport=ws,
            request=attrs.evolve(request, raw_headers=()),  # (only the handshake needs it)
            endpoint=path,
            traffic=self.stats.traffic,
        )
        self.connections[sid] = conn
        if self.observer is not None and layer is self:
            self.observer.connection_opened(conn)
        if request.remote is not None:
            host = _host_of(request.remote)
            self._per_address[host] = self._per_address.get(host, 0) + 1
        return conn

    def _forget(self, conn: Connection) -> None:
        if self.connections.get(conn.eio_sid) is conn:
            del self.connections[conn.eio_sid]
            self.stats.closed(conn.close_reason or "server shutting down")
            request = conn.request
            if request is not None and request.remote is not None:
                host = _host_of(request.remote)
                left = self._per_address.get(host, 0) - 1
                if left > 0:
                    self._per_address[host] = left
                else:
                    self._per_address.pop(host, None)

    async def _accept_websocket(
        self, http: HttpExchange, request: HttpRequest
    ) -> MessageTransport | None:
        try:
            with trio.fail_after(self.config.websocket_handshake_timeout):
                return await http.accept_websocket(
                    request,
                    max_message_bytes=self.config.limits.max_payload_bytes,
                    compression=self.config.websocket_compression,
                )
        except (TransportClosed, trio.TooSlowError):
            return None

    async def _new_websocket(
        self,
        http: HttpExchange,
        request: HttpRequest,
        layer: EngineLayer,
        parser: Parser | None,
        path: str,
    ) -> None:
        ws = await self._accept_websocket(http, request)
        if ws is None:
            return
        conn = self._new_connection(request, layer, parser, path, transport="websocket", ws=ws)
        await self._run_connection(conn)

    async def _run_connection(  # noqa: ASYNC128 - conn.run calls task_status.started()
        self, conn: Connection, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await conn.run(task_status=task_status)
        finally:
            self._forget(conn)

    async def _static(self, http: HttpExchange, request: HttpRequest) -> bool:
        for prefix, directory in self.static_dirs.items():
            if not request.path.startswith(prefix):
                continue
            relative = request.path[len(prefix) :].lstrip("/") or "index.html"
            target = await trio.to_thread.run_sync(_static_file, directory, relative)
            if request.method in ("GET", "HEAD") and target is not None:
                content = await trio.Path(target).read_bytes()
                kind = mimetypes.guess_type(target)[0] or "application/octet-stream"
                await http.respond(
                    200, content, content_type=kind, head_only=request.method == "HEAD"
                )
                return True
        await http.respond(404, b"not found")
        return True


def _host_of(remote: str) -> str:
    return remote.rpartition(":")[0] or remote


def _static_file(directory: str, relative: str) -> str | None:
    """The file ``relative`` names under ``directory``, or None (never outside it)."""
    root = os.path.realpath(directory)
    target = os.path.realpath(os.path.join(root, relative))
    if target.startswith(root + os.sep) and os.path.isfile(target):
        return target
    return None


def _normal_path(path: str) -> str:
    return path.rstrip("/") + "/"


async def _linger(stream: trio.abc.Stream) -> None:
    """After an error answer, read (bounded) what the peer still sends before closing, so
    the kernel does not reset the connection before the peer has read the answer."""
    with trio.move_on_after(_LINGER_TIMEOUT):
        received = 0
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            while received < _LINGER_BYTES:
                data = await stream.receive_some(16_384)
                if not data:
                    break
                received += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _remote_address(stream: trio.abc.Stream) -> str | None:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    socket = getattr(stream, "socket", None)
    if socket is None:
        return None
    try:
        host, port = socket.getpeername()[:2]
    except OSError:
        return None
    return f"{host}:{port}"
