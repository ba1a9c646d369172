"""The Admin UI's protocol against npm's socket.io-client 4.8, which the UI runs: a Node
script (tests/js/admin_ui_client.mjs) connects to ``/admin`` as the UI does (polling
first, then the upgrade; basic auth), next to two ordinary clients, and reports what it
was sent; this test checks the payloads field by field and what the actions did.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

import pytest
import trio

from roomcast.engine import Server, Socket
from roomcast.engine.admin import instrument
from tests.interop.app import Line, open_peer, serve_app, the

pytestmark = pytest.mark.node

SCRIPT_TIMEOUT: Final = 60.0
USERNAME: Final = "admin"
PASSWORD: Final = "correct horse"


def chat_app() -> Server:
    server = Server()

    @server.on("join")
    async def join(socket: Socket, room: str) -> bool:
        await socket.join(room)
        return True

    @server.on("chat")
    async def chat(socket: Socket, room: str, text: str) -> None:
        await socket.to(room).emit("chat", text)

    instrument(server, auth={"username": USERNAME, "password": PASSWORD}, server_id="roomcast-1")
    return server


def obj(value: object) -> dict[str, object]:
    assert isinstance(value, dict), value
    return value


def seq(value: object) -> list[object]:
    assert isinstance(value, list), value
    return value


async def test_npm_client_as_the_admin_ui(js_peers: Path) -> None:
    node = shutil.which("node")
    assert node is not None
    server = chat_app()
    with trio.fail_after(SCRIPT_TIMEOUT):
        async with serve_app(server) as running:
            argv = [node, str(js_peers / "admin_ui_client.mjs"), running.url, USERNAME, PASSWORD]
            async with open_peer(argv) as peer:
                lines: list[Line] = await peer.finish()
    assert the(lines, "refused")["message"] == "invalid credentials"

    greeting = the(lines, "greeting")
    assert isinstance(greeting["session"], str)
    assert greeting["config"] == {
        "supportedFeatures": [
            "EMIT",
            "JOIN",
            "LEAVE",
            "DISCONNECT",
            "MJOIN",
            "MLEAVE",
            "MDISCONNECT",
            "AGGREGATED_EVENTS",
            "ALL_EVENTS",
        ]
    }
    (me,) = seq(greeting["allSockets"])  # only the admin UI itself so far
    assert obj(me)["id"] == greeting["adminId"]
    assert obj(me)["nsp"] == "/admin"
    assert obj(me)["transport"] == "polling"  # the UI's first request is a long-poll
    stats = obj(greeting["firstStats"])
    assert set(stats) == {
        "serverId",
        "hostname",
        "pid",
        "uptime",
        "clientsCount",
        "pollingClientsCount",
        "aggregatedEvents",
        "namespaces",
    }
    assert stats["serverId"] == "roomcast-1"
    assert stats["clientsCount"] == 1

    feed = the(lines, "feed")
    ann, bob = feed["ann"], feed["bob"]
    for shown, sid in ((feed["annShown"], ann), (feed["bobShown"], bob)):
        assert obj(shown)["id"] == sid
        assert obj(shown)["rooms"] == [sid]  # connected, before its join
    for nsp, room, _, when in (seq(item) for item in seq(feed["joined"])):
        assert (nsp, room) == ("/", "lobby")
        assert isinstance(when, str)
        assert when.endswith("Z")
    assert seq(feed["received"])[:3] == ["/", ann, ["chat", "lobby", "hello"]]
    assert seq(feed["sent"])[:3] == ["/", bob, ["chat", "hello"]]

    actions = the(lines, "actions")
    assert seq(actions["vip"])[:3] == ["/", "vip", ann]
    assert actions["notice"] == {"n": 1}
    assert actions["bobReason"] == "io server disconnect"
    assert seq(actions["disconnected"])[:3] == ["/", bob, "server namespace disconnect"]

    periodic = obj(the(lines, "stats")["stats"])
    kinds = {obj(entry)["type"] for entry in seq(periodic["aggregatedEvents"])}
    assert "rawConnection" in kinds
    assert the(lines, "stats")["transport"] == "websocket"  # the admin UI upgraded

    again = the(lines, "session")
    assert again["config"] == greeting["config"]
    assert again["newSession"] is False
    for item in (me, feed["annShown"], feed["bobShown"]):
        check_serialized(obj(item))


def check_serialized(socket: dict[str, object]) -> None:
    """The keys of a socket as the package's ``serialize`` shapes it, and its handshake's."""
    assert set(socket) == {"id", "clientId", "transport", "nsp", "data", "handshake", "rooms"}
    assert set(obj(socket["handshake"])) == {
        "address",
        "headers",
        "query",
        "issued",
        "secure",
        "time",
        "url",
        "xdomain",
    }
    assert obj(socket["handshake"])["address"] == "127.0.0.1"
