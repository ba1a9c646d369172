"""``Server``: the Socket.IO server object an app builds, and ``serve`` to run it."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable
from typing import Any, Final, NoReturn

import attrs
import trio

from roomcast.engine.actors.connection import Connection
from roomcast.engine.actors.supervisor import Supervisor
from roomcast.engine.adapters.base import Adapter
from roomcast.engine.adapters.memory import MemoryAdapter
from roomcast.engine.config import Config
from roomcast.engine.errors import ConnectRefusedError, TransportClosed
from roomcast.engine.namespace import (
    BroadcastOperator,
    H,
    Namespace,
    NamespaceMatcher,
    ack_args,
)
from roomcast.engine.socket import Handshake, Socket
from roomcast.engine.transport.http import HttpRequest, read_request, send_response
from roomcast.engine.transport.websocket import accept_websocket
from roomcast.protocol._eio import EioServerSession
from roomcast.protocol._sio import JSON_PARSER, Ack, Event, JsonValue, Parser

__all__ = ["AdapterFactory", "Server"]

logger = logging.getLogger(__name__)

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
    connections: dict[str, Connection] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.supervisor = Supervisor(
            max_restarts=self.config.room_max_restarts,
            restart_window=self.config.room_restart_window,
        )
        self.of("/")

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
            connect_handlers=parent.connect_handlers,
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
        socket = Socket(
            sid=_new_id(),
            namespace=ns,
            connection=conn,
            handshake=Handshake(
                auth=auth if auth is not None else {},
                headers=request.headers if request is not None else {},
                query=request.query if request is not None else {},
                address=request.remote if request is not None else None,
                time=trio.current_time(),
            ),
        )
        try:
            for middleware in ns.middlewares:
                await middleware(socket, socket.handshake.auth)
        except ConnectRefusedError as exc:
            data: dict[str, JsonValue] = {"message": exc.message}
            if exc.data is not None:
                data["data"] = exc.data
            conn.send_packet(conn.sio.refuse(namespace, data))
            return
        if conn.closed:
            return
        ns.sockets[socket.sid] = socket
        ns.adapter.add_socket(socket)
        conn.namespaces[namespace] = socket
        conn.send_packet(conn.sio.accept(namespace, socket.sid))
        for handler in ns.connect_handlers:
            await handler(socket, socket.handshake.auth)

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
        ns = socket.namespace
        handler = ns.handlers.get(name)
        if handler is not None:
            result = await handler(socket, *args)
        elif ns.any_handlers:
            result = None
            for catch_all in ns.any_handlers:
                result = await catch_all(socket, name, *args)
        else:
            return
        if ack_id is not None and socket.connected:
            conn.send_packet(Ack(ack_id=ack_id, args=ack_args(result), namespace=namespace))

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

    async def on_close(self, conn: Connection, reason: str) -> None:
        self.connections.pop(conn.eio_sid, None)
        for socket in list(conn.namespaces.values()):
            if isinstance(socket, Socket):
                await socket.namespace.remove_socket(socket, reason)

    # -- serving ---------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Listen on ``host:port`` and serve until cancelled; ``started`` gets the bound
        ``(host, port)`` (port 0 picks a free one).

        Cancellation: a clean shutdown: every connection is closed with the reason
        "server shutting down" (its disconnect handlers run and its client gets a close
        frame), each within ``config.close_grace``.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.supervisor.run)
                async with trio.open_nursery() as connections:
                    logger.info("roomcast listening on http://%s:%d", sockname[0], sockname[1])
                    task_status.started((sockname[0], sockname[1]))
                    await trio.serve_listeners(
                        self.serve_stream, listeners, handler_nursery=connections
                    )
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
        raise AssertionError("unreachable")  # pragma: no cover

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection on any Trio stream (a socket or an in-memory pair).

        Needs ``supervisor.run`` to be running (``serve`` starts it).

        Cancellation: the connection is closed as in a server shutdown.
        """
        remote = _remote_address(stream)
        config = self.config
        try:
            try:
                with trio.fail_after(config.request_header_timeout):
                    request = await read_request(
                        stream, max_head_bytes=config.max_request_header_bytes, remote=remote
                    )
            except trio.TooSlowError:
                await send_response(stream, 408, b"request head timeout")
                return
            except TransportClosed:
                await _linger(stream)
                return
            await self._route(stream, request)
        finally:
            await trio.aclose_forcefully(stream)

    async def _route(self, stream: trio.abc.Stream, request: HttpRequest) -> None:
        config = self.config
        if request.path == "/healthz":
            await send_response(stream, 200, b"ok")
            return
        if request.path.rstrip("/") != config.path.rstrip("/"):
            await send_response(stream, 404, b"not found")
            return
        query = request.query
        if query.get("EIO") != "4":
            await send_response(stream, 400, b'{"code":5,"message":"Unsupported protocol version"}')
            return
        if query.get("transport") != "websocket" or not request.is_websocket:
            await send_response(stream, 400, b'{"code":0,"message":"Transport unknown"}')
            return
        if "sid" in query:
            await send_response(stream, 400, b'{"code":1,"message":"Session ID unknown"}')
            return
        try:
            with trio.fail_after(config.websocket_handshake_timeout):
                transport = await accept_websocket(
                    stream, request.head, max_message_bytes=config.limits.max_payload_bytes
                )
        except (TransportClosed, trio.TooSlowError):
            return
        sid = _new_id()
        session = EioServerSession(
            sid=sid,
            transport="websocket",
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            max_payload=config.limits.max_payload_bytes,
            now=trio.current_time(),
        )
        conn = Connection(
            config=config,
            session=session,
            transport=transport,
            parser=self.parser,
            layer=self,
            scheduler=self.supervisor.scheduler,
            request=request,
        )
        self.connections[sid] = conn
        try:
            await conn.run()
        finally:
            self.connections.pop(sid, None)


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
    socket = getattr(stream, "socket", None)
    if socket is None:
        return None
    try:
        host, port = socket.getpeername()[:2]
    except OSError:
        return None
    return f"{host}:{port}"


_ = Event  # re-exported for app code building packets
