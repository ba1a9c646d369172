"""Connection state recovery on the wire (Socket.IO's pid + offset handshake)."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from roomcast.engine import Server, Socket
from roomcast.engine.recovery import RecoveryConfig
from roomcast.protocol import JsonValue

from .conftest import RawClient, open_memory_server


def recovering_server(**config: float) -> tuple[Server, list[tuple[str, bool]]]:
    server = Server(recovery=RecoveryConfig(**config))  # type: ignore[arg-type]
    connects: list[tuple[str, bool]] = []

    @server.on("connect")
    async def connected(socket: Socket, auth: JsonValue) -> None:
        connects.append((socket.sid, socket.recovered))

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        socket.data["joined"] = room
        await socket.join(room)

    return server, connects


async def connect_raw(client: RawClient, auth: object = None) -> tuple[str, str]:
    body = "" if auth is None else json.dumps(auth, separators=(",", ":"))
    await client.send(f"40{body}")
    reply = await client.recv()
    assert isinstance(reply, str)
    assert reply.startswith("40{")
    data = json.loads(reply[2:])
    assert list(data) == ["sid", "pid"]
    return data["sid"], data["pid"]


def event(frame: str | bytes) -> list[JsonValue]:
    assert isinstance(frame, str)
    assert frame.startswith("42")
    value = json.loads(frame[2:])
    assert isinstance(value, list)
    return value


async def test_a_dropped_client_gets_its_id_rooms_data_and_missed_events_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, connects = recovering_server()
    with trio.fail_after(30):
        async with open_memory_server(server) as srv:
            async with srv.client() as client:
                sid, pid = await connect_raw(client)
                await client.send('421["join","r"]')
                assert await client.recv() == "431[]"
                await server.to("r").emit("m", 1)
                _, value, offset = event(await client.recv())
                assert value == 1
                assert isinstance(offset, str)
            # The transport is gone ("transport close"); events go on without it.
            await trio.testing.wait_all_tasks_blocked()
            assert server.of("/").sockets == {}
            await server.to("r").emit("m", 2)
            await server.emit("all", "x")
            await server.to("elsewhere").emit("m", "not for it")
            async with srv.client() as client:
                again_sid, again_pid = await connect_raw(client, {"pid": pid, "offset": offset})
                assert (again_sid, again_pid) == (sid, pid)
                assert event(await client.recv())[:2] == ["m", 2]
                assert event(await client.recv())[:2] == ["all", "x"]
                socket = server.of("/").sockets[sid]
                assert socket.recovered
                assert socket.rooms == {sid, "r"}
                assert socket.data == {"joined": "r"}
                # It is a member of its rooms again.
                await server.to("r").emit("m", 3)
                assert event(await client.recv())[:2] == ["m", 3]
    assert connects == [(sid, False), (sid, True)]


@pytest.mark.parametrize("case", ["expired", "unknown-pid", "other-epoch", "dropped-offset"])
async def test_a_gap_that_cannot_be_filled_is_reported_as_not_recovered(
    autojump_clock: trio.testing.MockClock, case: str
) -> None:
    server, connects = recovering_server(max_disconnection_duration=10.0, max_events=3)
    with trio.fail_after(60):
        async with open_memory_server(server) as srv:
            async with srv.client() as client:
                sid, pid = await connect_raw(client)
                await client.send('421["join","r"]')
                assert await client.recv() == "431[]"
                await server.to("r").emit("m", 1)
                offset = event(await client.recv())[-1]
                assert isinstance(offset, str)
            await trio.testing.wait_all_tasks_blocked()
            if case == "expired":
                await trio.sleep(11)
            elif case == "unknown-pid":
                pid = "not-a-pid"
            elif case == "other-epoch":
                offset = "0000-" + offset.rpartition("-")[2]
            else:
                for i in range(5):  # more than max_events: the client's offset fell out
                    await server.to("r").emit("m", i)
            async with srv.client() as client:
                new_sid, new_pid = await connect_raw(client, {"pid": pid, "offset": offset})
                assert new_sid != sid
                assert new_pid != pid
                assert not server.of("/").sockets[new_sid].recovered
                assert server.of("/").sockets[new_sid].rooms == {new_sid}
    assert connects[-1] == (new_sid, False)


async def test_client_initiated_disconnect_is_not_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, _ = recovering_server()
    with trio.fail_after(30):
        async with open_memory_server(server) as srv:
            async with srv.client() as client:
                sid, pid = await connect_raw(client)
                await server.emit("m", 1)
                offset = event(await client.recv())[-1]
                await client.send("41")
                await client.send("40")
                assert str(await client.recv()).startswith("40")
            async with srv.client() as client:
                new_sid, _ = await connect_raw(client, {"pid": pid, "offset": offset})
                assert new_sid != sid


async def test_volatile_and_ack_broadcasts_carry_no_offset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, _ = recovering_server()
    with trio.fail_after(30):
        async with open_memory_server(server) as srv, srv.client() as client:
            await connect_raw(client)
            await server.of("/").volatile.emit("v", 1)
            assert event(await client.recv()) == ["v", 1]
            await server.emit("n", 1)
            assert len(event(await client.recv())) == 3


async def test_direct_emits_are_replayed_too(autojump_clock: trio.testing.MockClock) -> None:
    server, _ = recovering_server()
    with trio.fail_after(30):
        async with open_memory_server(server) as srv:
            async with srv.client() as client:
                sid, pid = await connect_raw(client)
                await server.of("/").sockets[sid].emit("direct", 1)
                offset = event(await client.recv())[-1]
            await trio.testing.wait_all_tasks_blocked()
            await server.to(sid).emit("direct", 2)
            async with srv.client() as client:
                assert await connect_raw(client, {"pid": pid, "offset": offset}) == (sid, pid)
                assert event(await client.recv())[:2] == ["direct", 2]
                await server.of("/").sockets[sid].emit("direct", 3)
                assert event(await client.recv())[:2] == ["direct", 3]
