"""The HTTP/Engine.IO front: which request goes where, and the answers HTTP gives.

Both fronts hand every request to ``EngineFront.handle_request``: the built-in one
(``EngineFront.serve_stream``, HTTP/1.1 on any Trio stream) and the ASGI one
(``roomcast.engine.asgi``), so both answer alike. A request is ``/healthz``,
``/metrics``, one of the static files, or Engine.IO for an endpoint: the server's
Socket.IO endpoint at ``config.path``, or a bare Engine.IO one (``mount``). An Engine.IO
request goes through these phases, in order, each of which may answer it:

1. the origin check and the CORS preflight (``OPTIONS``);
2. admission: the app's ``allow_request``, the connection limits (a new session only)
   and the protocol version;
3. the transport: the polling handshake, a polling GET or POST of a session, or a
   WebSocket (a new session, or the upgrade of a polling one).

The front knows the server only as a ``FrontHost``: its settings, the Socket.IO layer of
its main endpoint and its registry of connections, which makes, runs and forgets them.
"""

from __future__ import annotations

import logging
import mimetypes
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeAlias
from urllib.parse import urlsplit

import attrs
import trio

from roomcast.engine.actors.connection import SocketLayer
from roomcast.engine.errors import TransportClosed
from roomcast.engine.transport.http import HttpConnection, HttpRequest, error_body
from roomcast.engine.transport.tcp import address_text
from roomcast.protocol import DisconnectReason, EioPacket, EioPacketType, encode_payload

if TYPE_CHECKING:
    from roomcast.engine.actors.connection import Connection, EngineLayer
    from roomcast.engine.config import Config
    from roomcast.engine.stats import ServerStats
    from roomcast.engine.transport.base import HttpExchange, MessageTransport
    from roomcast.protocol import Parser

__all__ = [
    "ORIGIN_LOG_INTERVAL",
    "Endpoint",
    "EngineFront",
    "FrontHost",
    "MetricsPage",
    "Origins",
    "host_of",
    "normal_path",
]

logger = logging.getLogger(__name__)

CLOSE_PAYLOAD: Final = encode_payload([EioPacket(type=EioPacketType.CLOSE)]).encode()
"""A polling body of one CLOSE packet: the answer to a GET held through a shutdown."""
ORIGIN_LOG_INTERVAL: Final = 10.0
"""Seconds between two log lines about refused Origins (a page hammering the server
must not flood the log); the line after a quiet spell counts those left out."""
_LINGER_TIMEOUT: Final = 1.0
_LINGER_BYTES: Final = 65_536

Origins: TypeAlias = Sequence[str] | Literal["*"] | Callable[[str], bool]
"""The pages allowed to connect (``Server.cors_allowed_origins``): a list of origins,
``"*"`` for any, or a predicate on the ``Origin`` header."""
Answered: TypeAlias = bool | None
"""What a phase of ``handle_request`` did: None when it let the request through to the
next phase, else it answered it, and the value is ``handle_request``'s."""


class MetricsPage(Protocol):
    """The ``/metrics`` page (``roomcast.engine.metrics.Metrics``)."""

    @property
    def content_type(self) -> str:
        """The page's content type."""

    def render(self) -> bytes:
        """The page, in the Prometheus text format."""


class FrontHost(SocketLayer, Protocol):
    """What the front needs of the server behind it (``Server`` implements it): the
    settings the front applies, the Socket.IO layer of its main endpoint and its
    registry of connections."""

    @property
    def config(self) -> Config:
        """The server's settings (the Socket.IO path, limits and timeouts)."""

    @property
    def parser(self) -> Parser:
        """The Socket.IO endpoint's packet codec."""

    @property
    def cors_allowed_origins(self) -> Origins:
        """The pages allowed to connect, besides the server's own."""

    @property
    def allow_request(self) -> Callable[[HttpRequest], Awaitable[bool]] | None:
        """The app's admission check of an Engine.IO request (False: 403)."""

    @property
    def static_dirs(self) -> Mapping[str, str]:
        """Directories served as static files, by path prefix."""

    @property
    def metrics(self) -> MetricsPage | None:
        """The ``/metrics`` page, or None when metrics are off."""

    @property
    def stats(self) -> ServerStats:
        """The server's counters (the front counts polling bytes in its traffic)."""

    @property
    def connections(self) -> Mapping[str, Connection]:
        """The open connections by Engine.IO session id."""

    def sessions_from(self, host: str) -> int:
        """How many open connections came from the address ``host``."""

    def open_connection(
        self,
        request: HttpRequest,
        endpoint: Endpoint,
        *,
        transport: str,
        ws: MessageTransport | None = None,
    ) -> Connection:
        """Make and register a new session's connection (not yet running)."""

    async def start_connection(self, conn: Connection) -> None:
        """Start a polling session's actor, which no request task owns; return once it
        runs."""

    async def run_connection(
        self, conn: Connection, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run a connection's actor until it ends, then forget the connection."""


@attrs.frozen
class Endpoint:
    """An Engine.IO endpoint: its path (normalised, ``/socket.io/``), and who its
    connections report to: the Socket.IO layer with its codec, or for a bare Engine.IO
    endpoint (``mount``), the Engine.IO app."""

    path: str
    sio_layer: SocketLayer | None = None
    engine_layer: EngineLayer | None = None
    parser: Parser | None = None


@attrs.define(eq=False)
class EngineFront:
    """The server's HTTP/Engine.IO front (see the module docstring)."""

    host: FrontHost
    engines: dict[str, EngineLayer] = attrs.field(factory=dict, init=False)
    """The bare Engine.IO endpoints (``mount``), by normalised path."""
    _origin_log_after: float = attrs.field(default=-float("inf"), init=False)
    _origins_unlogged: int = attrs.field(default=0, init=False)

    def mount(self, path: str, layer: EngineLayer) -> None:
        """Serve a bare Engine.IO endpoint (no Socket.IO layer) at ``path``."""
        self.engines[normal_path(path)] = layer

    async def serve_stream(self, stream: trio.abc.Stream, remote: str | None = None) -> None:
        """Serve one client's HTTP connection on any Trio stream (a socket or an in-memory
        pair): requests one after another, or a WebSocket. The stream is closed at the end.
        ``remote``: the peer's ``host:port`` when the caller has it (``accept`` gives it);
        otherwise it is asked of the stream's socket, if it has one.

        Cancellation: a WebSocket connection is closed as in a server shutdown.
        """
        config = self.host.config
        http = HttpConnection(
            stream=stream,
            max_head_bytes=config.max_request_header_bytes,
            remote=_remote_address(stream) if remote is None else remote,
        )
        try:
            while True:
                # (move_on_after and a check rather than fail_after, whose generator
                # wrapper adds a fifth to the scope's cost: a connect has two deadlines.)
                with trio.move_on_after(config.request_header_timeout) as deadline:
                    request = await http.next_request()
                if deadline.cancelled_caught:
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

    async def handle_request(self, http: HttpExchange, request: HttpRequest) -> bool:
        """Answer one request: Engine.IO polling or a WebSocket (served until it closes),
        ``/healthz``, ``/metrics``, static files.

        Returns False when the stream was taken over or must close.

        Cancellation: a held polling GET is answered CLOSE (within ``close_grace``); a
        WebSocket connection closes as in a server shutdown.
        """
        host = self.host
        if request.path == "/healthz":
            await http.respond(200, b"ok")
            return True
        metrics = host.metrics
        if request.path == "/metrics" and metrics is not None:
            await http.respond(200, metrics.render(), content_type=metrics.content_type)
            return True
        endpoint = self._endpoint(normal_path(request.path))
        if endpoint is None:
            return await self._static(http, request)
        cors = self._cors_headers(request)
        answered = await self._check_origin(http, request, cors)
        if answered is None:
            answered = await self._admit(http, request, cors)
        if answered is not None:
            return answered
        transport = request.query.get("transport")
        if transport == "websocket":
            return await self._websocket(http, request, cors, endpoint)
        if transport != "polling":
            await http.respond(400, error_body(0, "Transport unknown"), headers=cors)
            return True
        if "sid" not in request.query:
            return await self._handshake(http, request, cors, endpoint)
        return await self._polling(http, request, cors, endpoint)

    def _endpoint(self, path: str) -> Endpoint | None:
        """The Engine.IO endpoint at ``path`` (normalised), or None."""
        host = self.host
        if path == normal_path(host.config.path):
            return Endpoint(path=path, sio_layer=host, parser=host.parser)
        layer = self.engines.get(path)
        return None if layer is None else Endpoint(path=path, engine_layer=layer)

    # -- phase 1: the origin check and the CORS preflight -------------------------------

    async def _check_origin(
        self, http: HttpExchange, request: HttpRequest, cors: tuple[tuple[str, str], ...]
    ) -> Answered:
        """Refuse a page of a foreign origin (403) and answer a CORS preflight."""
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
        return None

    def _origin_allowed(self, request: HttpRequest) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            return True  # not a browser: the Origin check protects browsers' users
        allowed = self.host.cors_allowed_origins
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

    # -- phase 2: admission -------------------------------------------------------------

    async def _admit(
        self, http: HttpExchange, request: HttpRequest, cors: tuple[tuple[str, str], ...]
    ) -> Answered:
        """Refuse what the app's ``allow_request`` refuses (403), a new session over the
        connection limits (503) and a protocol version other than Engine.IO 4 (400)."""
        allow_request = self.host.allow_request
        if allow_request is not None and not await allow_request(request):
            await http.respond(403, error_body(4, "Forbidden"), headers=cors, close=True)
            return False
        if "sid" not in request.query and not self._room_for_session(request):
            await http.respond(503, error_body(3, "Too many connections"), headers=cors)
            return True
        if request.query.get("EIO") != "4":
            await http.respond(400, error_body(5, "Unsupported protocol version"), headers=cors)
            return True
        return None

    def _room_for_session(self, request: HttpRequest) -> bool:
        """Whether a new session fits under the connection limits."""
        host = self.host
        config = host.config
        open_now = len(host.connections)
        if open_now >= config.max_connections:
            logger.warning("refusing a session: %d connections", open_now)
            return False
        per_address = config.max_connections_per_address
        if per_address is not None and request.remote is not None:
            address = host_of(request.remote)
            if host.sessions_from(address) >= per_address:
                logger.warning("refusing a session from %s: %d connections", address, per_address)
                return False
        return True

    # -- phase 3: the transports --------------------------------------------------------

    async def _handshake(
        self,
        http: HttpExchange,
        request: HttpRequest,
        cors: tuple[tuple[str, str], ...],
        endpoint: Endpoint,
    ) -> bool:
        """Open a polling session: start its actor and answer its OPEN packet."""
        if request.method != "GET":
            await http.respond(400, error_body(2, "Bad handshake method"), headers=cors)
            return True
        host = self.host
        conn = host.open_connection(request, endpoint, transport="polling")
        await host.start_connection(conn)
        body = encode_payload([conn.session.handshake()])
        await http.respond(200, body.encode(), headers=cors)
        return True

    async def _polling(
        self,
        http: HttpExchange,
        request: HttpRequest,
        cors: tuple[tuple[str, str], ...],
        endpoint: Endpoint,
    ) -> bool:
        """A GET or POST of a polling session (400 for an unknown one)."""
        conn = self.host.connections.get(request.query["sid"])
        if (
            conn is None
            or conn.endpoint != endpoint.path
            or conn.closed
            or conn.transport_name != "polling"
        ):
            await http.respond(400, error_body(1, "Session ID unknown"), headers=cors)
            return True
        if request.method == "GET":
            return await self._polling_get(http, conn, cors)
        if request.method == "POST":
            return await self._polling_post(http, conn, cors)
        await http.respond(400, error_body(3, "Bad request"), headers=cors)
        return True

    async def _polling_get(
        self, http: HttpExchange, conn: Connection, cors: tuple[tuple[str, str], ...]
    ) -> bool:
        """Hold a GET until the session has something to send, and send it.

        Cancellation: answered CLOSE, within ``close_grace``.
        """
        result: tuple[int, str] | None = None
        try:
            result = await self._poll(http, conn)
        finally:
            # The answer is written even when the server is shutting down (then it is
            # CLOSE), within close_grace.
            status, body = (
                (200, CLOSE_PAYLOAD) if result is None else (result[0], result[1].encode())
            )
            self.host.stats.traffic.bytes_out += len(body)
            with trio.move_on_after(self.host.config.close_grace, shield=True):
                await http.respond(status, body, headers=cors, close=result is None)
        return status == 200

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

    async def _polling_post(
        self, http: HttpExchange, conn: Connection, cors: tuple[tuple[str, str], ...]
    ) -> bool:
        """Read a POST body (within ``request_body_timeout``) and hand its packets to the
        session.

        Raises:
            TransportClosed: The client went away while sending (the session closes).
        """
        config = self.host.config
        try:
            with trio.fail_after(config.request_body_timeout):
                body = await http.read_body(config.limits.max_payload_bytes)
        except trio.TooSlowError:
            conn.close(DisconnectReason.TRANSPORT_ERROR)
            await http.respond(408, error_body(3, "request body timeout"), close=True)
            return False
        except TransportClosed:
            conn.close(DisconnectReason.TRANSPORT_ERROR)
            raise
        self.host.stats.traffic.bytes_in += len(body)
        if await conn.receive_payload(body):
            await http.respond(200, b"ok", headers=cors)
            return True
        await http.respond(400, error_body(3, "Bad request"), headers=cors)
        return True

    async def _websocket(
        self,
        http: HttpExchange,
        request: HttpRequest,
        cors: tuple[tuple[str, str], ...],
        endpoint: Endpoint,
    ) -> bool:
        """Serve a WebSocket until it closes: a new session, or the upgrade of a polling
        session (``sid``)."""
        if not request.is_websocket:
            await http.respond(400, error_body(3, "Bad request"), headers=cors)
            return True
        sid = request.query.get("sid")
        if sid is None:
            # A new session: its OPEN packet is written at once, with the 101 answer.
            ws = await self._accept_websocket(http, request, answer_later=True)
            if ws is not None:
                host = self.host
                await host.run_connection(
                    host.open_connection(request, endpoint, transport="websocket", ws=ws)
                )
            return False
        conn = self.host.connections.get(sid)
        if conn is None or conn.endpoint != endpoint.path:
            await http.respond(400, error_body(1, "Session ID unknown"), headers=cors)
            return True
        ws = await self._accept_websocket(http, request)
        if ws is not None:
            await conn.upgrade(ws)
        return False

    async def _accept_websocket(
        self, http: HttpExchange, request: HttpRequest, *, answer_later: bool = False
    ) -> MessageTransport | None:
        """Complete the WebSocket handshake (within ``websocket_handshake_timeout``); None
        when the client went away or was too slow. ``answer_later``: see
        ``HttpExchange.accept_websocket``."""
        config = self.host.config
        with trio.move_on_after(config.websocket_handshake_timeout):
            try:
                return await http.accept_websocket(
                    request,
                    max_message_bytes=config.limits.max_payload_bytes,
                    compression=config.websocket_compression,
                    answer_later=answer_later,
                )
            except TransportClosed:
                return None
        return None  # too slow

    # -- static files -------------------------------------------------------------------

    async def _static(self, http: HttpExchange, request: HttpRequest) -> bool:
        """Serve a file of ``static_dirs`` (``index.html`` for a directory), else 404."""
        for prefix, directory in self.host.static_dirs.items():
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


def host_of(remote: str) -> str:
    """The host part of a ``host:port`` remote address (what per-address limits count)."""
    return remote.rpartition(":")[0] or remote


def normal_path(path: str) -> str:
    """``path`` with exactly one trailing slash (how endpoints are matched)."""
    return path.rstrip("/") + "/"


def _static_file(directory: str, relative: str) -> str | None:
    """The file ``relative`` names under ``directory``, or None (never outside it)."""
    root = os.path.realpath(directory)
    target = os.path.realpath(os.path.join(root, relative))
    if target.startswith(root + os.sep) and os.path.isfile(target):
        return target
    return None


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
        return address_text(socket.getpeername())
    except OSError:
        return None
