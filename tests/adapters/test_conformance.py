"""One behaviour, every adapter: the in-memory adapter and the Redis cluster adapter (one
node, and three nodes with the clients spread over them) must pass the same tests.

Clients are raw wire clients over in-memory streams; the tests act on the server side
directly (joins, broadcasts, cluster-wide operations from node 0).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import pytest
import trio

from roomcast.engine import Config, Server, Socket
from roomcast.engine.namespace import RemoteSocket
from tests.adapters.conftest import DEPLOYMENTS, Deployment, open_deployment
from tests.engine.conftest import RawClient

TEST_TIMEOUT: Final = 15.0
END: Final = "__end__"


def build(config: Config, adapter_factory: Callable[..., Any] | None = None) -> Server:
    server = (
        Server(config=config)
        if adapter_factory is None
        else Server(config=config, adapter_factory=adapter_factory)
    )

    server.of("/admin")
    return server


@pytest.fixture(params=DEPLOYMENTS)
def kind(request: pytest.FixtureRequest) -> str:
    value = request.param
    assert isinstance(value, str)
    return value


@asynccontextmanager
async def deployment_with_clients(
    kind: str, redis_url: str, count: int, namespace: str = "/"
) -> AsyncIterator[tuple[Deployment, list[RawClient], list[str]]]:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_deployment(kind, build, redis_url) as deployment, AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(deployment.client(i)) for i in range(count)]
            sids = [await client.connect(namespace) for client in clients]
            yield deployment, clients, sids


def events(frames: list[str | bytes]) -> list[list[object]]:
    decoded = []
    for frame in frames:
        assert isinstance(frame, str), frame
        match = re.fullmatch(r"42(?:/[^,]*,)?(\[.*\])", frame)
        assert match, frame
        decoded.append(json.loads(match.group(1)))
    return decoded


async def until_end(client: RawClient) -> list[list[object]]:
    """The events a client got before the END marker."""
    frames: list[str | bytes] = []
    while True:
        frame = await client.recv()
        if isinstance(frame, str) and END in frame:
            return events(frames)
        frames.append(frame)


async def drain(deployment: Deployment, clients: list[RawClient]) -> list[list[list[object]]]:
    """Send END to everyone from node 0 (after whatever it sent before) and collect."""
    await deployment.nodes[0].server.emit(END)
    return [await until_end(client) for client in clients]


async def join(deployment: Deployment, sid: str, *rooms: str) -> None:
    socket = deployment.socket(sid)
    assert isinstance(socket, Socket)
    await socket.join(*rooms)


async def test_rooms_union_and_except_reach_each_socket_exactly_once(
    kind: str, redis_url: str
) -> None:
    async with deployment_with_clients(kind, redis_url, 6) as (deployment, clients, sids):
        for i, sid in enumerate(sids):
            rooms = ["even" if i % 2 == 0 else "odd"]
            if i < 3:
                rooms.append("low")
            await join(deployment, sid, *rooms)
        server = deployment.nodes[0].server
        await server.to("even", "low").emit("a", 1)  # 0, 1, 2, 4 once each (0, 2 in both)
        await server.to("low").except_("odd").emit("b", 2)  # 0, 2
        await server.except_("even").emit("c", 3)  # 1, 3, 5
        await server.to(sids[5]).emit("d", 4)  # a socket's own room
        got = await drain(deployment, clients)
    assert got[0] == [["a", 1], ["b", 2]]
    assert got[1] == [["a", 1], ["c", 3]]
    assert got[2] == [["a", 1], ["b", 2]]
    assert got[3] == [["c", 3]]
    assert got[4] == [["a", 1]]
    assert got[5] == [["c", 3], ["d", 4]]


async def test_socket_broadcast_leaves_out_the_sender_on_every_node(
    kind: str, redis_url: str
) -> None:
    async with deployment_with_clients(kind, redis_url, 4) as (deployment, clients, sids):
        for sid in sids:
            await join(deployment, sid, "room")
        sender = deployment.socket(sids[1])
        assert isinstance(sender, Socket)
        await sender.to("room").emit("hi", "from-1")
        await sender.broadcast.emit("all", "from-1")
        await deployment.nodes[1 % len(deployment.nodes)].server.emit(END)
        got = [await until_end(client) for client in clients]
    assert got[1] == []
    for i in (0, 2, 3):
        assert got[i] == [["hi", "from-1"], ["all", "from-1"]]


async def test_order_of_broadcasts_is_kept_per_socket(kind: str, redis_url: str) -> None:
    async with deployment_with_clients(kind, redis_url, 3) as (deployment, clients, sids):
        for sid in sids:
            await join(deployment, sid, "r")
        for i in range(50):
            await deployment.nodes[0].server.to("r").emit("n", i)
        got = await drain(deployment, clients)
    for received in got:
        assert received == [["n", i] for i in range(50)]


async def test_local_broadcast_stays_on_its_node(kind: str, redis_url: str) -> None:
    async with deployment_with_clients(kind, redis_url, 3) as (deployment, clients, _sids):
        await deployment.nodes[0].server.of("/").local.emit("local", 1)
        got = await drain(deployment, clients)
    on_node_0 = [deployment.node_of(i) is deployment.nodes[0] for i in range(3)]
    for received, local in zip(got, on_node_0, strict=True):
        assert received == ([["local", 1]] if local else [])


async def test_namespaces_are_separate(kind: str, redis_url: str) -> None:
    async with deployment_with_clients(kind, redis_url, 3) as (deployment, clients, sids):
        admin_sids = [await client.connect("/admin") for client in clients]
        await deployment.nodes[0].server.of("/admin").emit("admin-only", 1)
        await deployment.nodes[0].server.of("/admin").emit(END)
        for client in clients:
            assert await until_end(client) == [["admin-only", 1]]
        got = await drain(deployment, clients)
        assert got == [[], [], []]
        assert len(set(admin_sids) | set(sids)) == 6


async def test_fetch_sockets_lists_every_node_with_rooms_and_data(
    kind: str, redis_url: str
) -> None:
    async with deployment_with_clients(kind, redis_url, 4) as (deployment, _clients, sids):
        for i, sid in enumerate(sids):
            socket = deployment.socket(sid)
            assert isinstance(socket, Socket)
            socket.data["user"] = f"u{i}"
            if i != 2:
                await socket.join("team")
        server = deployment.nodes[0].server
        found = await server.in_("team").fetch_sockets()
        assert sorted(s.sid for s in found) == sorted(sids[i] for i in (0, 1, 3))
        everyone = await server.of("/").fetch_sockets()
        assert sorted(s.sid for s in everyone) == sorted(sids)
        for entry in everyone:
            i = sids.index(entry.sid)
            assert entry.data == {"user": f"u{i}"}
            assert entry.rooms == ({entry.sid} if i == 2 else {entry.sid, "team"})
            local = deployment.node_of(i) is deployment.nodes[0]
            assert isinstance(entry, Socket if local else RemoteSocket)
        assert {s.sid for s in await server.of("/").local.fetch_sockets()} == {
            sid for i, sid in enumerate(sids) if deployment.node_of(i) is deployment.nodes[0]
        }


async def test_sockets_join_leave_and_disconnect_act_on_every_node(
    kind: str, redis_url: str
) -> None:
    reasons: list[str] = []
    async with deployment_with_clients(kind, redis_url, 4) as (deployment, clients, sids):
        for node in deployment.nodes:

            @node.server.on("disconnect")
            async def gone(socket: Socket, reason: str) -> None:
                reasons.append(reason)

        server = deployment.nodes[0].server
        await server.of("/").sockets_join("all")
        await server.in_(sids[1], sids[2]).sockets_join("pair")
        await server.to("pair").emit("pair", 1)
        await server.in_("pair").sockets_leave("all")
        await server.to("all").emit("all", 2)
        got = await drain(deployment, clients)
        assert got == [[["all", 2]], [["pair", 1]], [["pair", 1]], [["all", 2]]]
        await server.in_("pair").disconnect_sockets()
        for i in (1, 2):
            assert await clients[i].recv() == "41"
        assert sorted(s.sid for s in await server.of("/").fetch_sockets()) == sorted(
            [sids[0], sids[3]]
        )
        assert reasons == ["server namespace disconnect"] * 2


async def test_a_disconnecting_socket_tells_its_room_on_every_node(
    kind: str, redis_url: str
) -> None:
    seen: list[tuple[str, str, frozenset[str]]] = []
    gone_done = trio.Event()
    async with deployment_with_clients(kind, redis_url, 4) as (deployment, clients, sids):
        for node in deployment.nodes:

            @node.server.on("disconnecting")
            async def tell(socket: Socket, reason: str) -> None:
                seen.append(("disconnecting", socket.sid, socket.rooms))
                await socket.to("room").emit("left", socket.sid, reason)

            @node.server.on("disconnect")
            async def gone(socket: Socket, reason: str) -> None:
                seen.append(("disconnect", socket.sid, socket.rooms))
                gone_done.set()

        for sid in sids:
            await join(deployment, sid, "room")
        await clients[1].send("41")  # it leaves the namespace
        await gone_done.wait()
        # END from the leaver's node, after its "left" (one sender's order is kept).
        await deployment.nodes[1 % len(deployment.nodes)].server.emit(END)
        got = [await until_end(clients[i]) for i in (0, 2, 3)]
        # Gone from every node's listing; the others are still in the room.
        stayed = [sid for sid in sids if sid != sids[1]]
        assert await server_rooms(deployment) == {sid: frozenset({sid, "room"}) for sid in stayed}
        rooms = frozenset({sids[1], "room"})
        assert seen == [("disconnecting", sids[1], rooms), ("disconnect", sids[1], rooms)]
    left = ["left", sids[1], "client namespace disconnect"]
    assert got == [[left]] * 3


async def server_rooms(deployment: Deployment) -> dict[str, frozenset[str]]:
    """Every socket's rooms as ``fetch_sockets`` lists them, from node 0."""
    found = await deployment.nodes[0].server.of("/").fetch_sockets()
    return {socket.sid: socket.rooms for socket in found}


async def test_remote_socket_methods_reach_its_node(kind: str, redis_url: str) -> None:
    async with deployment_with_clients(kind, redis_url, 3) as (deployment, clients, sids):
        server = deployment.nodes[0].server
        (target,) = await server.in_(sids[1]).fetch_sockets()
        await target.emit("direct", "x")
        await target.join("later")
        await server.to("later").emit("joined", 1)
        got = await drain(deployment, clients)
        assert got == [[], [["direct", "x"], ["joined", 1]], []]
        await target.disconnect()
        assert await clients[1].recv() == "41"


async def test_broadcast_ack_collects_answers_from_every_node(kind: str, redis_url: str) -> None:
    async with deployment_with_clients(kind, redis_url, 4) as (deployment, clients, sids):

        async def answer(index: int, reply: str) -> None:
            frame = await clients[index].recv()
            assert isinstance(frame, str)
            match = re.fullmatch(r"42(\d+)\[\"vote\",7\]", frame)
            assert match, frame
            await clients[index].send(f"43{match.group(1)}{reply}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer, 0, '["yes"]')
            nursery.start_soon(answer, 1, '["no",2]')
            nursery.start_soon(answer, 2, "[]")
            result = (
                await deployment.nodes[0]
                .server.of("/")
                .broadcast_operator()
                .call("vote", 7, within=2.0)
            )
        assert result.answers == {sids[0]: ("yes",), sids[1]: ("no", 2), sids[2]: ()}
        assert result.missing == {sids[3]}
        frame = await clients[3].recv()
        assert isinstance(frame, str)
        assert frame.endswith('["vote",7]')


async def test_node_count_and_history_scope(kind: str, redis_url: str) -> None:
    async with deployment_with_clients(kind, redis_url, 1) as (deployment, _, _sids):
        adapter = deployment.nodes[0].server.of("/").adapter
        assert adapter.node_count == len(deployment.nodes)
        # Only a single node sees every broadcast its sockets get (recovery relies on it).
        assert adapter.history_is_local is (kind == "memory")
