"""Workspace chat: the seed example.

Clients ``join_workspace`` (a room) and ``dispatch_message`` {workspaceId, textMarker};
everyone in that workspace, and nobody else, gets ``receive_message``
{sender, text, timestamp}. ``timestamp`` is what the seed's ``timestamp: new Date()`` puts on
the wire: ``JSON.stringify`` of a Date, an ISO 8601 UTC string with milliseconds and ``Z``
(``"2026-12-05T05:11:39.588Z"``), so ``Date.parse(m.timestamp)`` works in a client.

Presence and history (``docs/presence.md``): the connect ``auth`` may carry ``{name}`` (a
socket without one is ``guest-`` and the start of its sid). The ack of ``join_workspace``
carries ``history``: the workspace's last 50 ``receive_message`` payloads, oldest first,
with every later message delivered live (none missed, none twice). Members of a workspace
get ``presence_join`` and ``presence_leave`` {workspaceId, name} when a name's first tab
joins it and when its last one has left (a tab cut off for less than ``PRESENCE_DEBOUNCE``
seconds does not leave); ``who_is_here`` with a workspace id acks
``{ok: true, members: [{name, connections}]}``.

The seed's three console lines (a client connected, with its socket id; the socket joined a
workspace; it disconnected) are INFO log records of this module's logger.

One deliberate difference from the seed: ``dispatch_message`` from a socket that has not
joined that workspace is refused (``{"ok": false, "error": "join the workspace first"}``),
where the seed would broadcast it. Without the check, any client could post into any
workspace whose id it knows, which the rooms are there to prevent.

The server also serves the chat page (``examples/web/public``: a workspace picker, the
message list and a send box) at ``/``, and npm's socket.io-client browser bundle at
``/vendor/`` from ``examples/web/node_modules`` (install it once with
``(cd examples/web && npm ci)``; nothing is loaded from a CDN).

Run: ``python examples/workspace_chat.py --host 127.0.0.1 --port 5000``
or:  ``roomcast serve examples.workspace_chat:build_server --recovery``
then open http://127.0.0.1:5000/ (both take the same operator flags: ``--help``).

With ``--admin`` it also serves the Socket.IO Admin UI (development mode, no login, so on
127.0.0.1 only): open http://127.0.0.1:5000/admin/ to see every socket, room and event
live. The UI's page comes from the ``@socket.io/admin-ui`` npm package in
``examples/web/node_modules`` (``examples/web/admin/index.html`` loads it), its icons from
``@mdi/font``: nothing from a CDN. See ``docs/admin-ui.md``.

As one node of a cluster (several of these behind a load balancer, see
``docs/scaling.md``): ``--redis redis://127.0.0.1:6379/0 [--cluster NAME]``. The nodes
then share one ordered log on Redis, so a client that comes back on another node is
recovered there.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import logging
from pathlib import Path
from typing import Final

from roomcast.engine import Config, RecoveryConfig, Server, Socket
from roomcast.engine.admin import AdminAuth, instrument
from roomcast.engine.cli import (
    CommandError,
    add_server_options,
    apply_server_options,
    run_server,
    tls_context,
)
from roomcast.engine.history import join_with_history
from roomcast.engine.log import LogError
from roomcast.engine.presence import Member, Presence
from roomcast.engine.server import AdapterFactory
from roomcast.protocol import JsonValue

logger = logging.getLogger(__name__)

WEB_DIR: Final = Path(__file__).resolve().parent / "web"
PAGE_DIR: Final = WEB_DIR / "public"
"""The chat page: index.html, app.js, style.css."""
HISTORY_LENGTH: Final = 50
"""How many past messages the ack of ``join_workspace`` carries."""
PRESENCE_DEBOUNCE: Final = 5.0
"""Seconds a cut-off tab still counts as present."""
MAX_NAME_LENGTH: Final = 64
CLIENT_BUNDLE_DIR: Final = WEB_DIR / "node_modules" / "socket.io-client" / "dist"
"""socket.io-client's browser bundles, as ``npm ci`` in examples/web installs them."""
ADMIN_PAGE_DIR: Final = WEB_DIR / "admin"
"""The Admin UI's page (index.html), which loads the package's scripts and styles."""
ADMIN_UI_DIR: Final = WEB_DIR / "node_modules" / "@socket.io" / "admin-ui" / "ui" / "dist"
"""The Admin UI's built files (js/, css/, img/), as ``npm ci`` in examples/web installs them."""
ICON_FONT_DIR: Final = WEB_DIR / "node_modules" / "@mdi" / "font"
"""The Material Design icon font the Admin UI draws its buttons with (css/, fonts/)."""


def admin_static_dirs() -> dict[str, str]:
    """Where the server finds the Admin UI's files, by URL prefix (under ``/admin/``)."""
    return {
        "/admin/js/": str(ADMIN_UI_DIR / "js"),
        "/admin/css/": str(ADMIN_UI_DIR / "css"),
        "/admin/img/": str(ADMIN_UI_DIR / "img"),
        "/admin/mdi/": str(ICON_FONT_DIR),
        "/admin/": str(ADMIN_PAGE_DIR),
    }


def js_date_now() -> str:
    """Now as JavaScript's ``JSON.stringify(new Date())`` writes it (``Date.prototype.toJSON``:
    ISO 8601 in UTC, milliseconds, ``Z``)."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_server(
    config: Config | None = None,
    *,
    recovery: RecoveryConfig | None = None,
    adapter_factory: AdapterFactory | None = None,
    admin: AdminAuth | None = None,
) -> Server:
    """The chat app's server (it serves the chat page too).

    ``recovery`` turns on connection state recovery (``main`` does): a client that loses
    its connection gets the messages it missed when it comes back, even across a
    restart of the server, from the event log. ``adapter_factory`` makes it a node of a
    cluster (``RedisCluster.adapter_factory``). ``admin``, when not None, serves the
    Admin UI (its page at ``/admin/``, its namespace ``/admin``) in development mode,
    with that ``auth`` (False: none).
    """
    # The page comes from this server, so its Origin is our own: the default
    # (same-origin) CORS policy lets it in and keeps other sites' pages out.
    static = admin_static_dirs() if admin is not None else {}
    static.update({"/vendor/": str(CLIENT_BUNDLE_DIR), "/": str(PAGE_DIR)})
    config = config or Config()
    if adapter_factory is None:
        server = Server(config=config, recovery=recovery, static_dirs=static)
    else:
        server = Server(
            config=config, recovery=recovery, static_dirs=static, adapter_factory=adapter_factory
        )

    async def joined(room: str, member: Member) -> None:
        # Every node runs this for its own members: local, or they would get it twice.
        await server.to(room).local.emit("presence_join", {"workspaceId": room, "name": member.key})

    async def left(room: str, member: Member) -> None:
        await server.to(room).local.emit(
            "presence_leave", {"workspaceId": room, "name": member.key}
        )

    presence = Presence(
        namespace=server.of("/"), on_join=joined, on_leave=left, debounce=PRESENCE_DEBOUNCE
    )

    @server.use
    async def named(socket: Socket, auth: JsonValue) -> None:
        # In middleware, so the name is in the CONNECT record (presence after a restart,
        # and ``roomcast replay --presence``).
        name = auth.get("name") if isinstance(auth, dict) else None
        if not isinstance(name, str) or not name.strip():
            name = f"guest-{socket.sid[:6]}"
        name = name.strip()[:MAX_NAME_LENGTH]
        Presence.track(socket, name, {"name": name})

    @server.on("connect")
    async def connected(socket: Socket, auth: JsonValue) -> None:
        logger.info("client connected: %s", socket.sid)

    @server.on("join_workspace")
    async def join_workspace(socket: Socket, workspace_id: JsonValue) -> JsonValue:
        if not isinstance(workspace_id, str) or not workspace_id:
            return {"ok": False, "error": "workspaceId must be a non-empty string"}
        try:
            past = await join_with_history(
                socket, workspace_id, last=HISTORY_LENGTH, events=frozenset({"receive_message"})
            )
        except LogError:  # no event log (``--no-log``): no history
            past = []
            await socket.join(workspace_id)
        logger.info("socket %s joined workspace %s", socket.sid, workspace_id)
        history: list[JsonValue] = [event.args[0] for event in past if event.args]
        return {"ok": True, "workspaceId": workspace_id, "history": history}

    @server.on("who_is_here")
    async def who_is_here(socket: Socket, workspace_id: JsonValue) -> JsonValue:
        if not isinstance(workspace_id, str) or not workspace_id:
            return {"ok": False, "error": "workspaceId must be a non-empty string"}
        members: list[JsonValue] = [
            {"name": m.key, "connections": m.connections} for m in presence.members(workspace_id)
        ]
        return {"ok": True, "members": members}

    @server.on("dispatch_message")
    async def dispatch_message(socket: Socket, message: JsonValue) -> JsonValue:
        if not isinstance(message, dict):
            return {"ok": False, "error": "expected {workspaceId, textMarker}"}
        workspace_id, text = message.get("workspaceId"), message.get("textMarker")
        if not isinstance(workspace_id, str) or not isinstance(text, str):
            return {"ok": False, "error": "workspaceId and textMarker must be strings"}
        # Deliberately stricter than the seed (see the module docstring): only a member
        # of the workspace may post to it.
        if workspace_id not in socket.rooms:
            return {"ok": False, "error": "join the workspace first"}
        delivered = await server.to(workspace_id).emit(
            "receive_message", {"sender": socket.sid, "text": text, "timestamp": js_date_now()}
        )
        return {"ok": True, "delivered": delivered}

    @server.on("disconnect")
    async def disconnected(socket: Socket, reason: str) -> None:
        logger.info("client disconnected: %s (%s)", socket.sid, reason)

    if admin is not None:
        instrument(server, auth=admin, mode="development")
    return server


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main() -> None:
    """Parse the options and serve until SIGINT/SIGTERM.

    Takes ``roomcast serve``'s operator flags (``--log-dir``, ``--no-recovery``,
    ``--redis``, ...: see ``--help``), applied by the same code. Recovery is on unless
    ``--no-recovery``; an error (the log directory is open by another server, say) is one
    line on stderr and exit status 2.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on (5000)")
    parser.add_argument(
        "--admin",
        action="store_true",
        help="serve the Socket.IO Admin UI at /admin/ (development mode, no login: only"
        " with a loopback --host)",
    )
    add_server_options(parser)
    args = parser.parse_args()
    if args.admin and not is_loopback(args.host):
        parser.error("--admin has no login: use it with a loopback --host (127.0.0.1)")
    # INFO by default: the demo shows the seed's connect/join/disconnect lines.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not (CLIENT_BUNDLE_DIR / "socket.io.min.js").is_file():
        logger.warning(
            "the chat page needs the socket.io-client bundle: run (cd %s && npm ci)", WEB_DIR
        )
    if args.admin and not (ADMIN_UI_DIR / "index.html").is_file():
        logger.warning("the admin UI needs its npm package: run (cd %s && npm ci)", WEB_DIR)
    server = build_server(recovery=RecoveryConfig(), admin=False if args.admin else None)
    try:
        cluster = apply_server_options(server, args)
        run_server(server, args.host, args.port, cluster=cluster, ssl_context=tls_context(args))
    except CommandError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


if __name__ == "__main__":
    main()
