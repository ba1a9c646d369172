"""The Socket.IO Admin UI: ``instrument(server, ...)`` serves its ``/admin`` namespace.

The Admin UI (the ``@socket.io/admin-ui`` npm package, also hosted by the Socket.IO
project) is a web page that connects to a server's admin namespace with socket.io-client
and shows its sockets, rooms, clients and events. This module speaks that namespace's
protocol as the package's own server side (``instrument`` in ``lib/index.ts``, 0.5.1)
defines it:

- on connect: ``config`` ``{supportedFeatures}``, then in development mode
  ``all_sockets`` (every socket of this node, serialized as below);
- every 2 s: ``server_stats`` ``{serverId, hostname, pid, uptime, clientsCount,
  pollingClientsCount, aggregatedEvents, namespaces: [{name, socketsCount}]}``;
- in development mode, live: ``socket_connected`` (socket, time), ``socket_updated``
  ``{id, nsp, transport}`` after an upgrade to WebSocket, ``socket_disconnected`` (nsp,
  id, reason, time), ``room_joined`` / ``room_left`` (nsp, room, id, time), and the
  events feed ``event_received`` / ``event_sent`` (nsp, id, [event, *args], time);
- actions from the UI (unless ``read_only``): ``emit`` (nsp, room filter, event, *args),
  ``join`` / ``leave`` (nsp, room, filter), ``_disconnect`` (nsp, close, filter); a
  filter is a room (a socket's id names its own room), none means the whole namespace;
- authentication: refused with ``invalid credentials`` (the message the UI shows its
  login form for); an accepted login is sent a ``session`` id, which the UI keeps and
  connects with next time instead of the password.

Times are ISO 8601 strings (what ``JSON.stringify(new Date())`` sends).

What this node shows is its own: the live feed and ``all_sockets`` list the sockets
connected here (in a cluster, connect the UI to each node), while the actions act
through the adapter, on every node. ``aggregatedEvents`` counts Engine.IO connections and
disconnections (``rawConnection``, ``rawDisconnection`` by reason), and the packets and
bytes of every connection (``packetsIn``/``packetsOut``/``bytesIn``/``bytesOut``, from the
server's traffic counters, summed per stats interval: the dashboard's bytes chart).

Costs: with the Admin UI off nothing is installed (each hook is one test of
``Server.observer``, about 20 ns). Instrumented, every hook first tests whether an admin
socket is connected here (about 75 ns when none is); a watched server in development
mode serializes each event once for all admin sockets, and reports a broadcast once per
recipient (as the UI expects), so development mode is for development. ``server_stats``
walks the connections (for ``pollingClientsCount``) every 2 s.
"""

from __future__ import annotations

import datetime
import hmac
import logging
import math
import os
import secrets
import socket as _socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import attrs
import trio

from roomcast.engine.errors import ConnectRefusedError
from roomcast.protocol import Event, JsonValue, LocalProtocolError

if TYPE_CHECKING:
    from roomcast.engine.actors.connection import Connection
    from roomcast.engine.adapters.base import BroadcastOptions
    from roomcast.engine.namespace import BroadcastOperator, Namespace
    from roomcast.engine.server import Server
    from roomcast.engine.socket import Socket

__all__ = ["AdminAuth", "AdminUI", "Credentials", "instrument"]

logger = logging.getLogger(__name__)

Credentials: TypeAlias = Mapping[str, str]
"""``{"username": ..., "password": ...}``: what the UI's login form sends."""
AdminAuth: TypeAlias = (
    "Literal[False] | Credentials | Sequence[Credentials] | Callable[[JsonValue], Awaitable[bool]]"
)
"""False (no authentication), one login, a list of logins, or ``async def check(auth) ->
bool`` given the CONNECT auth payload (to check a password hash, say)."""

STATS_INTERVAL: Final = 2.0
"""Seconds between two ``server_stats`` (the package's own interval)."""
SESSION_DURATION: Final = 86_400.0
"""Seconds an admin login session stays valid (the package's Redis store's default)."""
MAX_SESSIONS: Final = 1_000
"""Login sessions kept at most; past it the oldest is forgotten (that UI logs in again)."""
CLIENT_ID_CHARS: Final = 12
"""How much of the Engine.IO session id the UI is shown (as the package does: the full id
would let an admin-UI user hijack a polling session)."""
MAX_DATA_DEPTH: Final = 16
"""Nesting of ``socket.data`` shown as JSON; deeper values are shown by their repr."""
_FEATURES_WRITE: Final = ("EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT")


def js_time(wall: float) -> str:
    """Wall-clock seconds as ``JSON.stringify(new Date(...))`` writes them (ISO 8601, UTC,
    milliseconds, ``Z``)."""
    moment = datetime.datetime.fromtimestamp(wall, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_safe(value: object, depth: int = 0) -> JsonValue:
    """``value`` as JSON the UI can show: containers copied, anything else by its repr
    (``socket.data`` may hold any Python object)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):  # JSON has no NaN or infinity
        return value
    if depth < MAX_DATA_DEPTH:
        if isinstance(value, Mapping):
            return {str(key): _json_safe(item, depth + 1) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [_json_safe(item, depth + 1) for item in value]
    return repr(value)


def _same_login(auth: JsonValue, login: Credentials) -> bool:
    if not isinstance(auth, dict):
        return False
    username, password = auth.get("username"), auth.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return False
    # Both compared in constant time, and both always compared (no early exit).
    same_user = hmac.compare_digest(username.encode(), login.get("username", "").encode())
    same_password = hmac.compare_digest(password.encode(), login.get("password", "").encode())
    return same_user and same_password


def _traffic_now(server: Server) -> tuple[int, int, int, int]:
    traffic = server.stats.traffic
    return (traffic.packets_in, traffic.packets_out, traffic.bytes_in, traffic.bytes_out)


@attrs.define(eq=False)
class AdminUI:
    """The Admin UI's side of a server: its namespace, its sessions, and the observer
    the server calls (``instrument`` makes it; see the module docstring)."""

    server: Server
    namespace: Namespace
    auth: AdminAuth
    mode: Literal["development", "production"]
    read_only: bool
    server_id: str
    _started: float = attrs.field(factory=time.monotonic, init=False)
    _sessions: dict[str, float] = attrs.field(factory=dict, init=False)
    _aggregated: dict[tuple[int, str, str | None], int] = attrs.field(factory=dict, init=False)
    _traffic_seen: tuple[int, int, int, int] = attrs.field(
        default=attrs.Factory(lambda self: _traffic_now(self.server), takes_self=True),
        init=False,
    )
    """The server's traffic counters when last reported (the next tick reports the rest)."""
    _polling: dict[Socket, None] = attrs.field(factory=dict, init=False)
    """Sockets last shown on polling: each tick tells the UI of those that upgraded."""
    development: bool = attrs.field(init=False)
    """Whether the UI gets every socket, room and event (else only ``server_stats``)."""
    _admins: dict[str, Socket] = attrs.field(init=False)
    """The admin namespace's sockets on this node (its ``sockets``: the hooks test it)."""

    def __attrs_post_init__(self) -> None:
        self.development = self.mode == "development"
        self._admins = self.namespace.sockets

    def supported_features(self) -> list[JsonValue]:
        """The ``config`` features: the actions (unless read-only), then the feeds."""
        features: list[JsonValue] = [] if self.read_only else [*_FEATURES_WRITE]
        features.append("AGGREGATED_EVENTS")
        if self.development:
            features.append("ALL_EVENTS")
        return features

    # -- sending to the admin sockets ------------------------------------------------------

    def _send_all(self, event: str, *args: JsonValue) -> None:
        """Queue ``event`` for every admin socket of this node, encoded once.

        An admin UI that cannot keep up is closed by the slow-consumer policy, like any
        client; it then reconnects and is sent the whole picture again.
        """
        ns = self.namespace
        try:
            frames = ns.encode(Event(name=event, args=args, namespace=ns.name))
        except LocalProtocolError as exc:
            # The hooks run inside the engine's own steps: they must never raise.
            logger.warning("admin UI: %s not shown: %s", event, exc)
            return
        for admin in list(ns.sockets.values()):
            admin.connection.send_frames(frames)

    def _send(self, admin: Socket, event: str, *args: JsonValue) -> None:
        # Straight to the connection: with recovery on, socket.emit would log it.
        try:
            admin.connection.send_packet(
                Event(name=event, args=args, namespace=admin.namespace.name)
            )
        except LocalProtocolError as exc:
            logger.warning("admin UI: %s not sent: %s", event, exc)

    def _now(self) -> str:
        return js_time(self.server.wall_now())

    def _count_traffic(self) -> None:
        """Add the packets and bytes of every connection since the last tick (the
        server's traffic counters) as ``packetsIn``/``packetsOut``/``bytesIn``/``bytesOut``
        events: what the dashboard's bytes chart plots."""
        now = _traffic_now(self.server)
        seen, self._traffic_seen = self._traffic_seen, now
        stamp = int(self.server.wall_now()) * 1000
        for kind, count in zip(
            ("packetsIn", "packetsOut", "bytesIn", "bytesOut"),
            (a - b for a, b in zip(now, seen, strict=True)),
            strict=True,
        ):
            if count:
                key = (stamp, kind, None)
                self._aggregated[key] = self._aggregated.get(key, 0) + count

    def _count(self, kind: str, sub_kind: str | None = None) -> None:
        key = (int(self.server.wall_now()) * 1000, kind, sub_kind)
        self._aggregated[key] = self._aggregated.get(key, 0) + 1

    # -- what the UI is shown ----------------------------------------------------------------

    def serialize(self, socket: Socket) -> dict[str, JsonValue]:
        """A socket as the UI lists it (the package's ``SerializedSocket``)."""
        conn = socket.connection
        handshake = socket.handshake
        headers = handshake.headers
        address = headers.get("cf-connecting-ip") or headers.get("x-forwarded-for")
        if address is None and handshake.address is not None:
            address = handshake.address.rpartition(":")[0] or handshake.address
        issued = self.server.wall_now() - (trio.current_time() - handshake.time)
        request = conn.request
        rooms: list[JsonValue] = [*sorted(socket.rooms)]
        return {
            "id": socket.sid,
            "clientId": conn.eio_sid[:CLIENT_ID_CHARS],
            "transport": conn.transport_name,
            "nsp": socket.namespace.name,
            "data": _json_safe(socket.data),
            "handshake": {
                "address": address or "",
                "headers": dict(headers),
                "query": dict(handshake.query),
                "issued": round(issued * 1000),
                # The built-in server speaks plain HTTP (a TLS terminator in front of it
                # says so with X-Forwarded-Proto).
                "secure": headers.get("x-forwarded-proto") == "https",
                "time": js_time(issued),
                "url": request.target if request is not None else "",
                "xdomain": "origin" in headers,
            },
            "rooms": rooms,
        }

    def all_sockets(self) -> list[JsonValue]:
        """Every socket connected to this node, in every namespace."""
        return [
            self.serialize(socket)
            for ns in list(self.server.namespaces.values())
            for socket in list(ns.sockets.values())
        ]

    def server_stats(self, *, aggregated: bool = True) -> dict[str, JsonValue]:
        """The ``server_stats`` payload; ``aggregated`` takes (and clears) the counts."""
        connections = self.server.connections
        events: list[JsonValue] = []
        if aggregated:
            for (stamp, kind, sub_kind), count in self._aggregated.items():
                entry: dict[str, JsonValue] = {"timestamp": stamp, "type": kind, "count": count}
                if sub_kind is not None:
                    entry["subType"] = sub_kind
                events.append(entry)
            self._aggregated.clear()
        namespaces: list[JsonValue] = [
            {"name": name, "socketsCount": len(ns.sockets)}
            for name, ns in sorted(self.server.namespaces.items())
        ]
        return {
            "serverId": self.server_id,
            "hostname": _socket.gethostname(),
            "pid": os.getpid(),
            "uptime": time.monotonic() - self._started,
            "clientsCount": len(connections),
            "pollingClientsCount": sum(
                1 for conn in list(connections.values()) if conn.transport_name == "polling"
            ),
            "aggregatedEvents": events,
            "namespaces": namespaces,
        }

    def tick(self) -> None:
        """Every ``STATS_INTERVAL``: ``server_stats``, and ``socket_updated`` for the
        sockets that upgraded to WebSocket since the last tick."""
        self._count_traffic()
        if not self._admins:
            self._aggregated.clear()  # nobody to show them to: do not let them pile up
            return
        self._send_all("server_stats", self.server_stats())
        for socket in list(self._polling):
            if not socket.connected:
                del self._polling[socket]
            elif socket.connection.transport_name != "polling":
                del self._polling[socket]
                update: dict[str, JsonValue] = {
                    "id": socket.sid,
                    "nsp": socket.namespace.name,
                    "transport": socket.connection.transport_name,
                }
                self._send_all("socket_updated", update)

    # -- the admin namespace's handlers ----------------------------------------------------

    def _session_valid(self, auth: JsonValue) -> bool:
        session = auth.get("sessionId") if isinstance(auth, dict) else None
        if not isinstance(session, str):
            return False
        expiry = self._sessions.get(session)
        if expiry is None:
            return False
        if expiry < trio.current_time():
            del self._sessions[session]
            return False
        return True

    async def _check_login(self, auth: JsonValue) -> bool:
        check = self.auth
        if check is False:
            await trio.lowlevel.checkpoint()
            return True
        if callable(check):
            return await check(auth)
        await trio.lowlevel.checkpoint()
        if isinstance(check, Mapping):
            return _same_login(auth, check)
        return any([_same_login(auth, login) for login in check])  # all compared

    async def authorize(self, socket: Socket, auth: JsonValue) -> None:
        """The admin namespace's middleware: a valid session id or a valid login.

        Raises:
            ConnectRefusedError: ``invalid credentials``.
        """
        if self._session_valid(auth) or await self._check_login(auth):
            return
        logger.warning("admin UI login refused from %s", socket.handshake.address)
        raise ConnectRefusedError("invalid credentials", namespace=self.namespace.name)

    def _new_session(self) -> str:
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]  # the oldest (insertion order)
        session = secrets.token_hex(8)
        self._sessions[session] = trio.current_time() + SESSION_DURATION
        return session

    async def on_admin_connect(self, admin: Socket, auth: JsonValue) -> None:
        """Greet an admin UI: a session for a fresh login, ``config``, then (development
        mode) ``all_sockets``, and the stats at once rather than in up to 2 s."""
        await trio.lowlevel.checkpoint()
        if self.auth is not False and not self._session_valid(auth):
            self._send(admin, "session", self._new_session())
        self._send(admin, "config", {"supportedFeatures": self.supported_features()})
        if self.development:
            self._send(admin, "all_sockets", self.all_sockets())
        self._send(admin, "server_stats", self.server_stats(aggregated=False))

    def _target(self, nsp: JsonValue, room_filter: JsonValue) -> BroadcastOperator | None:
        """The sockets an action is for: namespace ``nsp`` (an existing one), within room
        ``room_filter`` when given."""
        ns = self.server.namespaces.get(nsp) if isinstance(nsp, str) else None
        if ns is None or ns is self.namespace:
            logger.warning("admin UI action on an unknown namespace %r ignored", nsp)
            return None
        if isinstance(room_filter, str) and room_filter:
            return ns.to(room_filter)
        return ns.broadcast_operator()

    async def on_emit(
        self,
        admin: Socket,
        nsp: JsonValue,
        room_filter: JsonValue,
        event: JsonValue,
        *args: JsonValue,
    ) -> None:
        """``emit``: send ``event`` to the namespace (or the room ``room_filter``)."""
        target = self._target(nsp, room_filter)
        if target is None or not isinstance(event, str):
            await trio.lowlevel.checkpoint()
            return
        logger.info("admin UI: emit %r in %s (room %r)", event, nsp, room_filter)
        await target.emit(event, *args)

    async def on_join(
        self, admin: Socket, nsp: JsonValue, room: JsonValue, room_filter: JsonValue = None
    ) -> None:
        """``join``: make the sockets (of ``room_filter``, or all) join ``room``."""
        target = self._target(nsp, room_filter)
        if target is None or not isinstance(room, str):
            await trio.lowlevel.checkpoint()
            return
        logger.info("admin UI: sockets of %s (room %r) join %r", nsp, room_filter, room)
        await target.sockets_join(room)

    async def on_leave(
        self, admin: Socket, nsp: JsonValue, room: JsonValue, room_filter: JsonValue = None
    ) -> None:
        """``leave``: make the sockets (of ``room_filter``, or all) leave ``room``."""
        target = self._target(nsp, room_filter)
        if target is None or not isinstance(room, str):
            await trio.lowlevel.checkpoint()
            return
        logger.info("admin UI: sockets of %s (room %r) leave %r", nsp, room_filter, room)
        await target.sockets_leave(room)

    async def on_disconnect_action(
        self, admin: Socket, nsp: JsonValue, close: JsonValue, room_filter: JsonValue = None
    ) -> None:
        """``_disconnect``: disconnect the sockets (``close``: their connections too)."""
        target = self._target(nsp, room_filter)
        if target is None:
            await trio.lowlevel.checkpoint()
            return
        logger.info("admin UI: disconnect sockets of %s (room %r)", nsp, room_filter)
        await target.disconnect_sockets(close=close is True)

    # -- the Observer the server calls -------------------------------------------------------

    def connection_opened(self, conn: Connection) -> None:
        self._count("rawConnection")

    def connection_closed(self, conn: Connection, reason: str) -> None:
        self._count("rawDisconnection", reason)

    def socket_connected(self, socket: Socket) -> None:
        if not (self._admins and self.development):
            return
        if socket.connection.transport_name == "polling":
            self._polling[socket] = None
        self._send_all("socket_connected", self.serialize(socket), self._now())

    def socket_disconnected(self, socket: Socket, reason: str) -> None:
        self._polling.pop(socket, None)
        if not (self._admins and self.development):
            return
        nsp, now = socket.namespace.name, self._now()
        self._send_all("socket_disconnected", nsp, socket.sid, reason, now)
        # As Node's adapter does when a socket leaves all its rooms (its own included).
        for room in sorted(socket.rooms):
            self._send_all("room_left", nsp, room, socket.sid, now)

    def room_joined(self, socket: Socket, room: str) -> None:
        if self._admins and self.development:
            self._send_all("room_joined", socket.namespace.name, room, socket.sid, self._now())

    def room_left(self, socket: Socket, room: str) -> None:
        if self._admins and self.development:
            self._send_all("room_left", socket.namespace.name, room, socket.sid, self._now())

    def event_received(self, socket: Socket, event: str, args: tuple[JsonValue, ...]) -> None:
        ns = socket.namespace
        if self._admins and self.development and ns is not self.namespace:
            self._send_all("event_received", ns.name, socket.sid, [event, *args], self._now())

    def event_sent(self, socket: Socket, event: str, args: tuple[JsonValue, ...]) -> None:
        ns = socket.namespace
        if self._admins and self.development and ns is not self.namespace:
            self._send_all("event_sent", ns.name, socket.sid, [event, *args], self._now())

    def event_broadcast(
        self, namespace: Namespace, opts: BroadcastOptions, event: str, args: tuple[JsonValue, ...]
    ) -> None:
        if not (self._admins and self.development) or namespace is self.namespace:
            return
        now = self._now()
        payload: list[JsonValue] = [event, *args]
        # One event_sent per recipient on this node, as Node's onAnyOutgoing reports it.
        for ns in list(namespace.children.values()) or [namespace]:
            for sid in sorted(ns.adapter.sockets(opts)):
                if sid in ns.sockets:
                    self._send_all("event_sent", ns.name, sid, payload, now)


def instrument(
    server: Server,
    *,
    auth: AdminAuth,
    mode: Literal["development", "production"] = "development",
    read_only: bool = False,
    server_id: str | None = None,
    namespace: str = "/admin",
) -> AdminUI:
    """Serve the Socket.IO Admin UI's namespace on ``server`` (before or while it serves).

    Args:
        server: The server to show.
        auth: Required, as in the package: False for none (only on a trusted network),
            ``{"username": ..., "password": ...}``, a list of them, or
            ``async def check(auth) -> bool``.
        mode: ``development`` shows every socket, room and event live; ``production``
            only the periodic ``server_stats``.
        read_only: Refuse the UI's actions (emit, join, leave, disconnect).
        server_id: How the UI names this server (default: the host name).
        namespace: The admin namespace.

    Raises:
        RuntimeError: The server already has an observer (it is instrumented).
    """
    if server.observer is not None:
        raise RuntimeError("the server is instrumented already")
    admin = AdminUI(
        server=server,
        namespace=server.of(namespace),
        auth=auth,
        mode=mode,
        read_only=read_only,
        server_id=server_id or _socket.gethostname(),
    )
    ns = admin.namespace
    if auth is False:
        logger.warning("the admin UI at %s has no authentication", namespace)
    else:
        ns.use(admin.authorize)
    ns.on("connect")(admin.on_admin_connect)
    if not read_only:
        ns.on("emit")(admin.on_emit)
        ns.on("join")(admin.on_join)
        ns.on("leave")(admin.on_leave)
        ns.on("_disconnect")(admin.on_disconnect_action)
    server.observer = admin
    server.supervisor.every(STATS_INTERVAL, admin.tick)
    return admin
