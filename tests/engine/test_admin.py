"""The Admin UI's namespace (``roomcast.engine.admin``), spoken to by roomcast's own client
through the harness, in virtual time: what the UI is sent, its actions, its login.

The same protocol against npm's socket.io-client (as the UI itself runs it) is in
``tests/interop/test_admin_ui.py``, and the UI's page in Chromium in
``tests/browser/test_admin_ui.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import pytest
import trio
import trio.testing

from roomcast.engine import ConnectRefusedError, Server, Socket
from roomcast.engine import admin as admin_module
from roomcast.engine.admin import STATS_INTERVAL, AdminAuth, AdminUI, instrument
from roomcast.engine.pytest_plugin import ServeFactory
from roomcast.engine.testing import Harness, HarnessClient
from roomcast.protocol import JsonValue

ALL_FEATURES = [
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
LOGIN = {"username": "admin", "password": "s3cret"}


def app(
    *,
    auth: AdminAuth = False,
    mode: Literal["development", "production"] = "development",
    read_only: bool = False,
) -> tuple[Server, AdminUI]:
    server = Server()

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)

    @server.on("leave")
    async def leave(socket: Socket, room: str) -> None:
        await socket.leave(room)

    @server.on("shout")
    async def shout(socket: Socket, room: str, text: str) -> None:
        await server.to(room).emit("shouted", text)

    @server.on("whisper")
    async def whisper(socket: Socket, text: str) -> None:
        await socket.emit("whispered", text)

    admin = instrument(server, auth=auth, mode=mode, read_only=read_only, server_id="node-1")
    return server, admin


async def connect_admin(
    harness: Harness, auth: Mapping[str, JsonValue] | None = None
) -> HarnessClient:
    return await harness.connect("/admin", auth=dict(auth) if auth is not None else None)


def admin_events(admin: HarnessClient, event: str) -> list[tuple[JsonValue, ...]]:
    return admin.args(event, namespace="/admin")


async def next_admin(admin: HarnessClient, event: str) -> tuple[JsonValue, ...]:
    return await admin.wait_for(event, namespace="/admin")


def as_dict(value: JsonValue) -> dict[str, JsonValue]:
    assert isinstance(value, dict), value
    return value


async def test_config_all_sockets_and_stats_on_connect(roomcast_serve: ServeFactory) -> None:
    server, _ = app()
    harness = await roomcast_serve(server)
    with trio.fail_after(10):
        user = await harness.connect(headers={"x-forwarded-for": "203.0.113.7"})
        await user.call("join", "lobby")  # acked once joined
        sid = user.sid()
        assert sid is not None
        admin = await connect_admin(harness)
        (config,) = await next_admin(admin, "config")
        assert config == {"supportedFeatures": ALL_FEATURES}
        (sockets,) = await next_admin(admin, "all_sockets")
        assert isinstance(sockets, list)
        by_id = {as_dict(s)["id"]: as_dict(s) for s in sockets}
        # The user, and the admin UI's own socket (it shows the /admin namespace too).
        assert set(by_id) == {sid, admin.sid("/admin")}
        shown = by_id[sid]
        conn = server.of("/").sockets[sid].connection
        assert shown["nsp"] == "/"
        assert shown["clientId"] == conn.eio_sid[:12]
        assert shown["transport"] == "websocket"
        assert shown["rooms"] == sorted([sid, "lobby"])
        assert shown["data"] == {}
        handshake = as_dict(shown["handshake"])
        assert handshake["address"] == "203.0.113.7"  # the proxy's header wins, as in Node
        assert as_dict(handshake["headers"])["x-forwarded-for"] == "203.0.113.7"
        assert as_dict(handshake["query"])["EIO"] == "4"
        assert isinstance(handshake["issued"], int)
        assert isinstance(handshake["time"], str)
        assert handshake["time"].endswith("Z")
        assert handshake["secure"] is False
        assert handshake["xdomain"] is False
        assert isinstance(handshake["url"], str)
        assert handshake["url"].startswith("/socket.io/?")
        # The stats at once, without the aggregated counts (those go to every admin).
        (stats,) = await next_admin(admin, "server_stats")
        stats = as_dict(stats)
        assert stats["serverId"] == "node-1"
        assert stats["clientsCount"] == 2
        assert stats["pollingClientsCount"] == 0
        assert stats["aggregatedEvents"] == []
        assert stats["namespaces"] == [
            {"name": "/", "socketsCount": 1},
            {"name": "/admin", "socketsCount": 1},
        ]
        assert isinstance(stats["pid"], int)
        assert isinstance(stats["hostname"], str)
        assert isinstance(stats["uptime"], float)


TRAFFIC_KINDS = ("packetsIn", "packetsOut", "bytesIn", "bytesOut")


async def test_server_stats_every_two_seconds_with_aggregated_events(
    roomcast_serve: ServeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    server, _ = app()
    harness = await roomcast_serve(server)
    with trio.fail_after(30):
        admin = await connect_admin(harness)
        await next_admin(admin, "server_stats")  # the one on connect
        user = await harness.connect()
        await user.aclose()
        first = await admin.receive(namespace="/admin")
        while first[0] != "server_stats":
            first = await admin.receive(namespace="/admin")
        second = await next_admin(admin, "server_stats")
    stats = [item for item in admin.events("server_stats", namespace="/admin")]
    assert stats[2].time - stats[1].time == pytest.approx(STATS_INTERVAL)
    counted: dict[tuple[str, JsonValue], int] = {}
    for (payload,) in (first[1], second):
        for entry in as_dict(payload)["aggregatedEvents"]:  # type: ignore[union-attr]
            entry = as_dict(entry)
            assert isinstance(entry["timestamp"], int)
            assert entry["timestamp"] % 1000 == 0
            key = (str(entry["type"]), entry.get("subType"))
            count = entry["count"]
            assert isinstance(count, int)
            counted[key] = counted.get(key, 0) + count
    # The admin's connection and the user's, and the user's close (the Engine.IO reason).
    traffic = {kind: counted.pop((kind, None), 0) for kind in TRAFFIC_KINDS}
    assert counted == {("rawConnection", None): 2, ("rawDisconnection", "transport close"): 1}
    # And the packets and bytes both ways since the first tick: the dashboard's bytes chart
    # (the user's CONNECT and its answer at least, and what the admin was sent).
    assert all(traffic[kind] > 0 for kind in TRAFFIC_KINDS), traffic
    assert traffic["bytesOut"] > traffic["packetsOut"]


async def test_live_feed_of_sockets_rooms_and_events(roomcast_serve: ServeFactory) -> None:
    server, _ = app()
    harness = await roomcast_serve(server)
    with trio.fail_after(10):
        admin = await connect_admin(harness)
        # An admin UI is told of its own socket too (as Node's admin namespace does).
        mine, _ = await next_admin(admin, "socket_connected")
        assert as_dict(mine)["id"] == admin.sid("/admin")
        assert as_dict(mine)["nsp"] == "/admin"
        await next_admin(admin, "all_sockets")
        ann = await harness.connect()
        ann_sid = ann.sid()
        connected, when = await next_admin(admin, "socket_connected")
        assert as_dict(connected)["id"] == ann_sid
        assert as_dict(connected)["rooms"] == [ann_sid]
        assert isinstance(when, str)
        assert when.endswith("Z")
        await ann.emit("join", "lobby")
        received = await next_admin(admin, "event_received")
        assert received[:3] == ("/", ann_sid, ["join", "lobby"])
        nsp, room, sid, _ = await next_admin(admin, "room_joined")
        assert (nsp, room, sid) == ("/", "lobby", ann_sid)
        bob = await harness.connect()
        bob_sid = bob.sid()
        await bob.emit("join", "lobby")
        await next_admin(admin, "room_joined")
        await ann.emit("shout", "lobby", "hi")
        await ann.wait_for("shouted")
        await bob.wait_for("shouted")
        sent: list[tuple[JsonValue, ...]] = []
        while len(sent) < 2:
            args = await next_admin(admin, "event_sent")
            sent.append(args[:3])
        # One event_sent per recipient.
        assert sorted(sent) == sorted(
            [("/", ann_sid, ["shouted", "hi"]), ("/", bob_sid, ["shouted", "hi"])]
        )
        await bob.emit("whisper", "psst")
        await bob.wait_for("whispered")
        assert (await next_admin(admin, "event_sent"))[:3] == ("/", bob_sid, ["whispered", "psst"])
        await ann.emit("leave", "lobby")
        assert (await next_admin(admin, "room_left"))[:3] == ("/", "lobby", ann_sid)
        await bob.aclose()
        nsp, sid, reason, _ = await next_admin(admin, "socket_disconnected")
        assert (nsp, sid, reason) == ("/", bob_sid, "client namespace disconnect")
        # Then the rooms it left, its own included (as Node's adapter reports them).
        left = {(await next_admin(admin, "room_left"))[1] for _ in range(2)}
        assert left == {"lobby", bob_sid}
    # The admin namespace's own traffic is not in the events feed.
    assert all(args[0] == "/" for args in admin_events(admin, "event_received"))


async def test_actions_join_leave_emit_disconnect(roomcast_serve: ServeFactory) -> None:
    server, _ = app()
    harness = await roomcast_serve(server)
    with trio.fail_after(10):
        ann, bob = await harness.connect(), await harness.connect()
        ann_sid, bob_sid = ann.sid(), bob.sid()
        assert ann_sid is not None
        assert bob_sid is not None
        sockets = server.of("/").sockets
        admin = await connect_admin(harness)
        await next_admin(admin, "all_sockets")
        # join (one socket, by its own room), as the UI's socket page does.
        await admin.emit("join", "/", "vip", ann_sid, namespace="/admin")
        await next_admin(admin, "room_joined")
        assert "vip" in sockets[ann_sid].rooms
        assert "vip" not in sockets[bob_sid].rooms
        # join (every socket), then emit to a room.
        await admin.emit("join", "/", "all", namespace="/admin")
        await next_admin(admin, "room_joined")
        await next_admin(admin, "room_joined")
        assert "all" in sockets[bob_sid].rooms
        await admin.emit("emit", "/", "vip", "notice", {"n": 1}, namespace="/admin")
        assert await ann.wait_for("notice") == ({"n": 1},)
        await admin.emit("emit", "/", None, "everyone", namespace="/admin")
        assert await bob.wait_for("everyone") == ()
        assert bob.args("notice") == []
        # leave (by room filter), then an unknown namespace is ignored.
        await admin.emit("leave", "/", "all", "vip", namespace="/admin")
        await next_admin(admin, "room_left")
        assert "all" not in sockets[ann_sid].rooms
        assert "all" in sockets[bob_sid].rooms
        await admin.emit("join", "/nowhere", "x", namespace="/admin")
        await admin.emit("join", "/", 5, namespace="/admin")  # not a room name
        await admin.emit("leave", "/", ["all"], namespace="/admin")
        await admin.emit("emit", "/", None, 42, namespace="/admin")  # not an event name
        # _disconnect (one socket).
        await admin.emit("_disconnect", "/", False, bob_sid, namespace="/admin")
        assert await bob.wait_disconnected() == "io server disconnect"
        assert set(sockets) == {ann_sid}
    assert "/nowhere" not in server.namespaces
    assert sockets[ann_sid].rooms == {ann_sid, "vip"}  # the malformed actions did nothing


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


async def test_socket_data_is_shown_as_json(roomcast_serve: ServeFactory) -> None:
    server, _ = app()

    @server.of("/").use
    async def tag(socket: Socket, auth: JsonValue) -> None:
        deep: object = "bottom"
        for _ in range(20):
            deep = [deep]
        socket.data.update(
            user="ann", tags=("a", "b"), nested={3: Opaque()}, deep=deep, bad=float("nan")
        )

    harness = await roomcast_serve(server)
    with trio.fail_after(10):
        await harness.connect()
        admin = await connect_admin(harness)
        (sockets,) = await next_admin(admin, "all_sockets")
    assert isinstance(sockets, list)
    (user,) = [as_dict(s) for s in sockets if as_dict(s)["nsp"] == "/"]
    data = as_dict(user["data"])
    assert data["user"] == "ann"
    assert data["tags"] == ["a", "b"]
    assert data["nested"] == {"3": "<opaque>"}
    assert data["bad"] == "nan"  # JSON has no NaN: shown by its repr
    deep = data["deep"]
    for _ in range(15):  # nesting past MAX_DATA_DEPTH is shown by its repr
        assert isinstance(deep, list)
        (deep,) = deep
    assert isinstance(deep, str)
    assert deep.startswith("[[")


async def test_read_only_production_mode_has_stats_only(roomcast_serve: ServeFactory) -> None:
    server, _ = app(mode="production", read_only=True)
    harness = await roomcast_serve(server)
    with trio.fail_after(10):
        user = await harness.connect()
        sid = user.sid()
        assert sid is not None
        admin = await connect_admin(harness)
        (config,) = await next_admin(admin, "config")
        assert config == {"supportedFeatures": ["AGGREGATED_EVENTS"]}
        await next_admin(admin, "server_stats")
        await admin.emit("join", "/", "vip", sid, namespace="/admin")
        await user.emit("join", "lobby")
        await user.aclose()
        while sid in server.of("/").sockets:
            await trio.testing.wait_all_tasks_blocked()
        # A round trip on the admin connection: anything it was sent has arrived.
        await admin.emit("emit", "/", None, "x", namespace="/admin")
        await trio.testing.wait_all_tasks_blocked()
    names = {item.event for item in admin.received if item.namespace == "/admin"}
    assert names == {"config", "server_stats"}


@pytest.mark.parametrize(
    "auth",
    [LOGIN, [{"username": "other", "password": "x"}, LOGIN]],
    ids=["one-login", "login-list"],
)
async def test_login_refused_then_accepted_with_a_session(
    roomcast_serve: ServeFactory, auth: AdminAuth
) -> None:
    server, _ = app(auth=auth)
    harness = await roomcast_serve(server)
    with trio.fail_after(10):
        wrongs: list[dict[str, JsonValue] | None] = [
            None,
            {"username": "admin", "password": "nope"},
            {"sessionId": "made-up"},
        ]
        for wrong in wrongs:
            with pytest.raises(ConnectRefusedError) as refused:
                await connect_admin(harness, wrong)
            assert refused.value.message == "invalid credentials"  # what the UI checks
        admin = await connect_admin(harness, LOGIN)
        (session,) = await next_admin(admin, "session")
        assert isinstance(session, str)
        assert session
        await next_admin(admin, "config")
        # The UI reconnects (a page reload) with its session id instead of the password.
        again = await connect_admin(harness, {"sessionId": session})
        await next_admin(again, "config")
        assert admin_events(again, "session") == []


async def test_what_cannot_be_encoded_is_left_out_and_the_server_goes_on(
    roomcast_serve: ServeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = app()

    @server.of("/").use
    async def tag(socket: Socket, auth: JsonValue) -> None:
        socket.data["name"] = "\ud800"  # a lone surrogate: no UTF-8 for it

    harness = await roomcast_serve(server)
    with trio.fail_after(10):
        watching = await connect_admin(harness)
        await next_admin(watching, "config")
        user = await harness.connect()  # its socket_connected cannot be encoded
        await user.call("join", "lobby")  # the server goes on
        await next_admin(watching, "room_joined")
        late = await connect_admin(harness)  # nor can all_sockets now
        await next_admin(late, "config")
        await next_admin(late, "server_stats")
    shown = {as_dict(args[0])["nsp"] for args in admin_events(watching, "socket_connected")}
    assert shown == {"/admin"}  # the admin UIs, not the user
    assert admin_events(late, "all_sockets") == []
    assert "admin UI: socket_connected not shown" in caplog.text
    assert "admin UI: all_sockets not sent" in caplog.text


async def test_sessions_expire_and_are_bounded(
    roomcast_serve: ServeFactory,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin_module, "MAX_SESSIONS", 2)
    # (A day of virtual time still costs a day of heartbeats: five minutes will do.)
    monkeypatch.setattr(admin_module, "SESSION_DURATION", 300.0)
    server, _ = app(auth=LOGIN)
    harness = await roomcast_serve(server)
    with trio.fail_after(admin_module.SESSION_DURATION * 2):
        sessions = []
        for _ in range(3):
            client = await connect_admin(harness, LOGIN)
            (session,) = await next_admin(client, "session")
            assert isinstance(session, str)
            sessions.append(session)
        with pytest.raises(ConnectRefusedError):  # the oldest was forgotten
            await connect_admin(harness, {"sessionId": sessions[0]})
        await connect_admin(harness, {"sessionId": sessions[2]})
        await trio.sleep(admin_module.SESSION_DURATION + 1)
        with pytest.raises(ConnectRefusedError):  # expired
            await connect_admin(harness, {"sessionId": sessions[2]})


async def test_counts_do_not_pile_up_unwatched(
    roomcast_serve: ServeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    server, _ = app()
    harness = await roomcast_serve(server)
    with trio.fail_after(30):
        user = await harness.connect()
        await user.aclose()
        await trio.sleep(STATS_INTERVAL * 1.5)  # a tick with no admin UI connected
        admin = await connect_admin(harness)
        await next_admin(admin, "server_stats")  # at once, without the counts
        (stats,) = await next_admin(admin, "server_stats")  # the next tick
    # Only the admin UI's own connection: the user's came before and was dropped (and so was
    # its traffic: the UI's own since the tick before is all that is counted).
    events = as_dict(stats)["aggregatedEvents"]
    assert isinstance(events, list)
    raw = [as_dict(e) for e in events if as_dict(e)["type"] not in TRAFFIC_KINDS]
    assert [(e["type"], e["count"]) for e in raw] == [("rawConnection", 1)]


async def test_login_checked_by_an_async_function(roomcast_serve: ServeFactory) -> None:
    seen: list[JsonValue] = []

    async def check(auth: JsonValue) -> bool:
        seen.append(auth)
        return auth == {"token": "t0k"}

    server, _ = app(auth=check)
    harness = await roomcast_serve(server)
    with trio.fail_after(10):
        with pytest.raises(ConnectRefusedError):
            await connect_admin(harness, {"token": "bad"})
        admin = await connect_admin(harness, {"token": "t0k"})
        await next_admin(admin, "session")
    assert seen == [{"token": "bad"}, {"token": "t0k"}]


async def test_no_observer_by_default_and_instrument_only_once() -> None:
    assert Server().observer is None
    server = Server()
    admin = instrument(server, auth=False)
    assert server.observer is admin
    with pytest.raises(RuntimeError):
        instrument(server, auth=False)
