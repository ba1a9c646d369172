"""A socket's last moments: ``disconnecting`` handlers run in the rooms, ``disconnect``
handlers after the rooms were left, with ``socket.rooms`` kept; for every reason."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from roomcast.engine import Config, Server, Socket
from roomcast.engine.adapters.base import BroadcastOptions
from roomcast.engine.errors import ConnectionLostError
from roomcast.engine.log import LogConfig
from roomcast.engine.recovery import RecoveryConfig
from roomcast.engine.testing import Harness, HarnessClient, open_harness
from roomcast.protocol import RecordKind

from .conftest import open_memory_server
from .test_recovery import connect_raw, event


@attrs.frozen(kw_only=True)
class Moment:
    """What one handler saw."""

    kind: str
    sid: str
    reason: str
    rooms: frozenset[str]
    connected: bool
    members_of_r: frozenset[str]
    told: int = -1


def last_moments_app() -> tuple[Server, list[Moment]]:
    """An app that tells room "r" who left, and records what its handlers saw."""
    server = Server()
    seen: list[Moment] = []

    def members_of_r(socket: Socket) -> frozenset[str]:
        return frozenset(socket.namespace.adapter.sockets(BroadcastOptions(rooms=frozenset({"r"}))))

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)

    @server.on("disconnecting")
    async def disconnecting(socket: Socket, reason: str) -> None:
        members = members_of_r(socket)
        with pytest.raises(ConnectionLostError):
            await socket.call("are you there")
        await socket.emit("to itself", "dropped")
        told = 0
        for room in sorted(socket.rooms - {socket.sid}):
            told += await socket.to(room).emit("left", socket.sid, room, reason)
        seen.append(
            Moment(
                kind="disconnecting",
                sid=socket.sid,
                reason=reason,
                rooms=socket.rooms,
                connected=socket.connected,
                members_of_r=members,
                told=told,
            )
        )

    @server.on("disconnect")
    async def disconnect(socket: Socket, reason: str) -> None:
        seen.append(
            Moment(
                kind="disconnect",
                sid=socket.sid,
                reason=reason,
                rooms=socket.rooms,
                connected=socket.connected,
                members_of_r=members_of_r(socket),
            )
        )

    return server, seen


async def client_leaves(harness: Harness, alice: HarnessClient, sid: str) -> None:
    await alice.disconnect("/")


async def transport_closes(harness: Harness, alice: HarnessClient, sid: str) -> None:
    await alice.faults.drop()


async def pings_stop(harness: Harness, alice: HarnessClient, sid: str) -> None:
    alice.faults.silence_pings()


async def server_disconnects(harness: Harness, alice: HarnessClient, sid: str) -> None:
    await harness.sockets()[sid].disconnect()


@pytest.mark.parametrize(
    ("cause", "reason"),
    [
        (client_leaves, "client namespace disconnect"),
        (transport_closes, "transport close"),
        (pings_stop, "ping timeout"),
        (server_disconnects, "server namespace disconnect"),
    ],
)
async def test_disconnecting_runs_in_the_rooms_and_disconnect_sees_them_after(
    autojump_clock: trio.testing.MockClock,
    cause: Callable[[Harness, HarnessClient, str], Awaitable[None]],
    reason: str,
) -> None:
    server, seen = last_moments_app()
    with trio.fail_after(200):
        async with open_harness(server) as harness:
            alice = await harness.connect(reconnect=False)
            bob = await harness.connect()
            alice_sid, bob_sid = alice.sid(), bob.sid()
            assert alice_sid is not None
            assert bob_sid is not None
            await alice.call("join", "r")
            await bob.call("join", "r")
            await cause(harness, alice, alice_sid)
            assert await harness.wait_disconnect(alice_sid, within=100) == reason
            assert await bob.wait_for("left") == (alice_sid, "r", reason)
            await harness.settle()
            assert alice.events("left") == []
            assert alice.events("to itself") == []
            # The harness's own disconnect handler saw the rooms too.
            assert harness.disconnects[0].rooms == {alice_sid, "r"}
            assert harness.sockets() == {bob_sid: harness.sockets()[bob_sid]}
    assert seen[:2] == [
        Moment(
            kind="disconnecting",
            sid=alice_sid,
            reason=reason,
            rooms=frozenset({alice_sid, "r"}),
            connected=False,
            members_of_r=frozenset({alice_sid, bob_sid}),
            told=1,  # bob; socket.to leaves alice out
        ),
        Moment(
            kind="disconnect",
            sid=alice_sid,
            reason=reason,
            rooms=frozenset({alice_sid, "r"}),
            connected=False,
            members_of_r=frozenset({bob_sid}),
        ),
    ]


async def test_a_shutdown_runs_both_for_every_socket_in_its_rooms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, seen = last_moments_app()
    with trio.fail_after(60):
        async with open_harness(server) as harness:
            alice = await harness.connect(reconnect=False)
            bob = await harness.connect(reconnect=False)
            sids = {alice.sid(), bob.sid()}
            await alice.call("join", "r")
            await bob.call("join", "r")
            # The server's connection tasks are cancelled under the clients: their
            # cleanup runs shielded, with the reason "server shutting down".
            harness.nursery.cancel_scope.cancel()
            await trio.lowlevel.checkpoint()  # Cancelled here
    assert len(sids) == 2
    by_sid = {sid: [m for m in seen if m.sid == sid] for sid in sids}
    for sid, moments in by_sid.items():
        assert sid is not None
        assert [(m.kind, m.reason, m.rooms, m.connected) for m in moments] == [
            ("disconnecting", "server shutting down", frozenset({sid, "r"}), False),
            ("disconnect", "server shutting down", frozenset({sid, "r"}), False),
        ]
        assert sid in moments[0].members_of_r
        assert sid not in moments[1].members_of_r
    assert seen[-1].members_of_r == frozenset()  # the last one out left "r" empty


async def test_a_handler_that_raises_is_isolated_and_the_rooms_are_left(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server()
    ran: list[str] = []

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)

    @server.on("disconnecting")
    async def broken(socket: Socket, reason: str) -> None:
        raise RuntimeError("boom")

    @server.on("disconnecting")
    async def second(socket: Socket, reason: str) -> None:
        ran.append(f"disconnecting {sorted(socket.rooms - {socket.sid})}")

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        ran.append(f"disconnect {sorted(socket.rooms - {socket.sid})}")
        # Once the rooms are left, join and leave change nothing.
        await socket.join("late")
        await socket.leave("r")
        ran.append(f"still {sorted(socket.rooms - {socket.sid})}")

    with trio.fail_after(30):
        async with open_harness(server) as harness:
            alice = await harness.connect(reconnect=False)
            sid = alice.sid()
            assert sid is not None
            await alice.call("join", "r")
            await alice.disconnect("/")
            await harness.wait_disconnect(sid)
            await harness.settle()
            assert server.of("/").adapter.rooms() == frozenset()
    assert ran == ["disconnecting ['r']", "disconnect ['r']", "still ['r']"]
    assert "disconnecting handler failed for " + sid in caplog.text


async def test_dynamic_namespaces_run_the_parents_disconnecting_handlers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = Server()
    parent = server.of(re.compile(r"/team-\w+"))
    seen: list[tuple[str, frozenset[str]]] = []

    @parent.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)

    @parent.on("disconnecting")
    async def disconnecting(socket: Socket, reason: str) -> None:
        seen.append((socket.namespace.name, socket.rooms - {socket.sid}))
        await socket.to("r").emit("left", socket.sid)

    with trio.fail_after(30):
        async with open_harness(server) as harness:
            alice = await harness.connect("/team-a", reconnect=False)
            bob = await harness.connect("/team-a")
            sid = alice.sid("/team-a")
            await alice.call("join", "r", namespace="/team-a")
            await bob.call("join", "r", namespace="/team-a")
            await alice.disconnect("/team-a")
            assert await bob.wait_for("left", namespace="/team-a") == (sid,)
            assert seen == [("/team-a", frozenset({"r"}))]


def test_other_reserved_names_take_no_handler() -> None:
    server = Server()
    for name in ("connect_error", "newListener", "removeListener"):
        with pytest.raises(ValueError, match="reserved"):
            server.on(name)


async def test_a_recovering_client_waits_until_its_old_socket_left_the_rooms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = Server(recovery=RecoveryConfig())
    gate = trio.Event()
    in_disconnecting = trio.Event()

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)

    @server.on("disconnecting")
    async def slow(socket: Socket, reason: str) -> None:
        in_disconnecting.set()
        await gate.wait()

    with trio.fail_after(30):
        async with open_memory_server(server) as srv:
            async with srv.client() as client:
                sid, pid = await connect_raw(client)
                await client.send('421["join","r"]')
                assert await client.recv() == "431[]"
                await server.to("r").emit("m", 1)
                offset = event(await client.recv())[2]
            await in_disconnecting.wait()  # "transport close"; its handler is held
            async with srv.client() as client, trio.open_nursery() as nursery:
                nursery.start_soon(connect_raw, client, {"pid": pid, "offset": offset})
                await trio.testing.wait_all_tasks_blocked()
                assert sid not in server.of("/").sockets  # waiting for the old cleanup
                gate.set()
                await trio.testing.wait_all_tasks_blocked()
                socket = server.of("/").sockets[sid]
                assert socket.recovered
                assert socket.rooms == {sid, "r"}
                assert await server.to("r").emit("m", 2) == 1
                assert event(await client.recv())[:2] == ["m", 2]


async def test_the_disconnect_and_its_session_are_recorded_before_the_room_hears_it(
    tmp_path: Path,
) -> None:
    server = Server(
        config=Config(log=LogConfig(directory=tmp_path, fsync="never")),
        recovery=RecoveryConfig(),
    )

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)

    @server.on("disconnecting")
    async def tell(socket: Socket, reason: str) -> None:
        await socket.to("r").emit("left", socket.sid)

    with trio.fail_after(20):
        async with open_harness(server, transport="tcp") as harness:
            alice = await harness.connect(reconnect=False)
            bob = await harness.connect()
            sid = alice.sid()
            await alice.call("join", "r")
            await bob.call("join", "r")
            await alice.faults.drop()  # "transport close": recoverable, a session is saved
            (told, _offset) = await bob.wait_for("left")  # recovery adds the offset
            assert told == sid
            records = await harness.log_records(namespace="/")
    disconnect, left = records[-2:]
    assert (disconnect.kind, disconnect.sender) == (RecordKind.DISCONNECT, sid)
    reason, session = disconnect.args
    assert reason == "transport close"
    assert isinstance(session, dict)
    assert session["rooms"] == ["r"]  # the rooms as they were, saved before any handler
    assert (left.kind, left.sender, left.room, left.event) == (
        RecordKind.MESSAGE,
        None,
        "r",
        "left",
    )
    assert left.args[0] == sid
    assert left.exclude == (sid,)  # socket.to leaves the sender out, in recovery too
