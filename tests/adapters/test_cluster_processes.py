"""Three roomcast nodes as separate processes on one Redis, with npm ``socket.io-client``
clients spread over them (tests/js/cluster_driver.mjs).

Each test starts its own nodes with a fresh channel prefix; the Redis outage test starts
a private redis-server it can kill. Nodes and the driver are killed by PID on the way out.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import pytest
import trio

from tests.adapters.conftest import PrivateRedis, free_port, unique_prefix
from tests.adapters.processes import (
    NODE_ARGV,
    ROOT,
    Driver,
    NodeProcess,
    node_listening,
    open_driver,
    open_line_process,
)

pytestmark = pytest.mark.node

TEST_TIMEOUT: Final = 25.0
NODE_TIMEOUT: Final = 1.0


@asynccontextmanager
async def open_cluster(
    redis_url: str,
    count: int,
    js_peers: Path,
    workdir: Path,
    *,
    shared_log: bool = False,
    app: str = "",
) -> AsyncIterator[tuple[list[NodeProcess], Driver]]:
    """``count`` nodes that all see each other, and a client driver. Each node runs in
    its own directory under ``workdir`` (its event log lives there). ``app="chat"``: the
    nodes serve the workspace chat example (see tests/adapters/cluster_node.py)."""
    env = {
        "REDIS_URL": redis_url,
        "CLUSTER_PREFIX": unique_prefix(),
        "HEARTBEAT_INTERVAL": "0.2",
        "NODE_TIMEOUT": str(NODE_TIMEOUT),
        "SHARED_LOG": "1" if shared_log else "0",
        "APP": app,
    }
    async with AsyncExitStack() as stack:
        procs = [
            await stack.enter_async_context(
                open_line_process(f"node{i}", NODE_ARGV, env, cwd=workdir / f"node{i}")
            )
            for i in range(count)
        ]  # all start at once; then wait for each
        nodes = [await node_listening(proc) for proc in procs]
        for node in nodes:
            await node.proc.expect_event("connected", outage=None)
            for other in nodes:
                if other is not node:
                    await node.proc.expect_event("peer_joined", node=other.node_id)
        driver = await stack.enter_async_context(open_driver(js_peers))
        yield nodes, driver


async def test_broadcasts_reach_every_client_exactly_once(
    redis_url: str, js_peers: Path, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_cluster(redis_url, 3, js_peers, tmp_path) as (nodes, driver):
            clients = [f"c{i}" for i in range(9)]
            for i, client in enumerate(clients):
                await driver.connect(client, nodes[i % 3].url)
                rooms = ["all", "odd"] if i % 2 else ["all"]
                (joined,) = await driver.call(client, "join", *rooms)
                assert isinstance(joined, list)
                assert set(rooms) <= set(joined)
            for n in range(10):
                await driver.call("c0", "publish", "all", "m", n)
            for n in range(5):
                await driver.call("c4", "publish", "odd", "o", n)
            await driver.call("c0", "publish", "all", "end", 0)
            await driver.call("c4", "publish", "all", "end", 4)
            for client in clients:
                for origin in (0, 4):
                    await driver.proc.expect_event("recv", id=client, name="end", args=[origin])
            received = {client: driver.take_received(client) for client in clients}
    for i, client in enumerate(clients):
        got = received[client]
        assert [args for name, args in got if name == "m"] == [[n] for n in range(10)], client
        odd = [args for name, args in got if name == "o"]
        assert odd == ([[n] for n in range(5)] if i % 2 else []), client
        assert len(got) == 10 + len(odd)


def _sids(entries: list[object]) -> set[str]:
    found = set()
    for entry in entries:
        assert isinstance(entry, dict)
        sid = entry["sid"]
        assert isinstance(sid, str)
        found.add(sid)
    return found


async def test_cross_node_operations_and_broadcast_acks(
    redis_url: str, js_peers: Path, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_cluster(redis_url, 3, js_peers, tmp_path) as (nodes, driver):
            clients = [f"c{i}" for i in range(6)]
            sids: dict[str, str] = {}
            for i, client in enumerate(clients):
                answers: dict[str, list[object]] = {} if i == 3 else {"poll": [f"yes-{i}"]}
                sids[client] = await driver.connect(client, nodes[i % 3].url, answers)
                await driver.call(client, "join", "all", "odd" if i % 2 else "even")

            # fetch_sockets: every node's sockets, with their rooms and data.
            (found,) = await driver.call("c0", "fetch", "all")
            assert isinstance(found, list)
            assert _sids(found) == set(sids.values())
            for entry in found:
                assert isinstance(entry, dict)
                i = list(sids.values()).index(entry["sid"])
                assert entry["data"] == {"node": nodes[i % 3].node_id}
                rooms = entry["rooms"]
                assert isinstance(rooms, list)
                assert set(rooms) == {entry["sid"], "all", "odd" if i % 2 else "even"}

            # sockets_join / sockets_leave on every node, then a broadcast to the new room.
            assert await driver.call("c0", "remote_join", "odd", "club") == [True]
            assert await driver.call("c0", "remote_leave", "c-none", "club") == [True]
            await driver.call("c2", "publish", "club", "club", 1)
            for i in (1, 3, 5):
                assert await driver.received(f"c{i}", "club") == [1]
            (in_club,) = await driver.call("c4", "fetch", "club")
            assert isinstance(in_club, list)
            assert _sids(in_club) == {sids["c1"], sids["c3"], sids["c5"]}

            # A broadcast with ack: answers from clients on every node, c3 stays silent.
            (poll,) = await driver.call("c0", "poll", "all", 1.0)
            assert isinstance(poll, dict)
            assert poll["answers"] == {sids[f"c{i}"]: [f"yes-{i}"] for i in range(6) if i != 3}
            assert poll["missing"] == [sids["c3"]]

            # Server-side calls reach the other nodes' handlers.
            (called,) = await driver.call("c0", "server_call", "x")
            assert isinstance(called, dict)
            assert called["answers"] == {
                node.node_id: [{"node": node.node_id, "got": "x"}] for node in nodes[1:]
            }

            # disconnect_sockets on every node.
            assert await driver.call("c1", "kick", "even") == [True]
            for i in (0, 2, 4):
                await driver.proc.expect_event(
                    "disconnected", id=f"c{i}", reason="io server disconnect"
                )
            (left,) = await driver.call("c1", "fetch", "all")
            assert isinstance(left, list)
            assert _sids(left) == {sids["c1"], sids["c3"], sids["c5"]}


async def test_a_dead_node_is_noticed_and_its_sockets_stop_being_listed(
    redis_url: str, js_peers: Path, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_cluster(redis_url, 3, js_peers, tmp_path) as (nodes, driver):
            sids = [await driver.connect(f"c{i}", nodes[i].url) for i in range(3)]
            (found,) = await driver.call("c0", "fetch", "all-sockets-room-nobody-joined")
            assert found == []
            (everyone,) = await driver.call("c0", "fetch", sids[2])
            assert isinstance(everyone, list)
            assert _sids(everyone) == {sids[2]}
            nodes[2].proc.kill()  # SIGKILL: no goodbye
            killed = trio.current_time()
            with trio.fail_after(NODE_TIMEOUT + 4.0):  # generous: CI machines get busy
                line = await nodes[0].proc.expect_event("peer_lost", node=nodes[2].node_id)
            assert line["reason"] == "timeout"
            assert trio.current_time() - killed > NODE_TIMEOUT / 2  # noticed by timeout
            await nodes[1].proc.expect_event("peer_lost", node=nodes[2].node_id)
            with trio.fail_after(2.5):  # less than request_timeout: no waiting for the dead
                (listed,) = await driver.call("c0", "fetch", sids[2])
            assert listed == []


async def test_a_clean_shutdown_says_goodbye(
    redis_url: str, js_peers: Path, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_cluster(redis_url, 2, js_peers, tmp_path) as (nodes, _driver):
            nodes[1].proc.terminate()  # SIGTERM: a clean shutdown
            line = await nodes[0].proc.expect_event("peer_lost", node=nodes[1].node_id)
            assert line["reason"] == "left"  # its goodbye, not a timeout


async def test_redis_outage_keeps_local_service_and_reports_what_was_lost(
    private_redis: PrivateRedis, js_peers: Path, tmp_path: Path
) -> None:
    private_redis.start()
    with trio.fail_after(TEST_TIMEOUT):
        async with open_cluster(private_redis.url, 2, js_peers, tmp_path) as (nodes, driver):
            await driver.connect("a", nodes[0].url)
            await driver.connect("b", nodes[1].url)
            for client in ("a", "b"):
                await driver.call(client, "join", "r")
            await driver.call("a", "publish", "r", "before", 1)
            assert await driver.received("b", "before") == [1]

            private_redis.kill()
            for node in nodes:
                await node.proc.expect_event("disconnected")
            # Node 0 still serves its own clients; the other node's client cannot get it.
            assert await driver.call("a", "publish", "r", "during", 2) == [1]
            assert await driver.received("a", "during") == [2]
            assert await driver.call("a", "fetch", "r") == [{"error": "ClusterUnavailableError"}]
            (status,) = await driver.call("a", "status")
            assert isinstance(status, dict)
            assert status["connected"] is False

            private_redis.start()
            for node in nodes:
                line = await node.proc.expect_event("connected")
                outage = line["outage"]
                assert isinstance(outage, dict)
                assert isinstance(outage["duration"], float)
                if node is nodes[0]:
                    assert outage["not_sent"] == {"broadcast": 1, "request": 1}
            await nodes[0].proc.expect_event("peer_joined", node=nodes[1].node_id)
            await nodes[1].proc.expect_event("peer_joined", node=nodes[0].node_id)
            await driver.call("a", "publish", "r", "after", 3)
            assert await driver.received("b", "after") == [3]
            # Node 1 tells which of node 0's messages never arrived.
            line = await nodes[1].proc.expect_event("traffic_missed", node=nodes[0].node_id)
            assert line["count"] == 1
            assert [name for name, _ in driver.take_received("b")] == []  # no "during"
            (found,) = await driver.call("a", "fetch", "r")
            assert isinstance(found, list)
            assert len(found) == 2


async def test_contract_app_joins_a_cluster_when_redis_url_is_set(
    redis_url: str, js_peers: Path, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    ports = [free_port(), free_port()]
    argv = [sys.executable, str(ROOT / "bench" / "contract_app.py")]
    with trio.fail_after(TEST_TIMEOUT):
        async with AsyncExitStack() as stack:
            apps = [
                await stack.enter_async_context(
                    open_line_process(
                        f"app{i}",
                        argv,
                        {"PORT": str(port), "REDIS_URL": redis_url, "REDIS_PREFIX": prefix},
                        cwd=tmp_path / f"app{i}",
                    )
                )
                for i, port in enumerate(ports)
            ]
            for app in apps:
                await app.expect(lambda line: "roomcast serving on" in str(line.get("text", "")))
            driver = await stack.enter_async_context(open_driver(js_peers))
            for i, port in enumerate(ports):
                await driver.connect(f"c{i}", f"http://127.0.0.1:{port}")
                assert await driver.call(f"c{i}", "join", "lobby") == ["lobby"]
            # The nodes hear each other within a heartbeat; publish until it crosses.
            await driver.call("c0", "publish", {"room": "lobby", "payload": "hello"})
            assert await driver.received("c0", "message") == ["hello"]
            assert await driver.received("c1", "message") == ["hello"]


@attrs.define(eq=False)
class LoadBalancer:
    """A TCP proxy in front of the nodes, like a load balancer: new connections go to
    ``targets`` in turn (round robin); ``cut`` drops every connection it carries (the
    clients see their transport close)."""

    targets: list[int]
    port: int = 0
    _carried: set[trio.CancelScope] = attrs.field(factory=set)
    _turn: itertools.count[int] = attrs.field(factory=itertools.count)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._carry, listeners)

    async def _carry(self, downstream: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._carried.add(scope)
            try:
                target = self.targets[next(self._turn) % len(self.targets)]
                upstream = await trio.open_tcp_stream("127.0.0.1", target)
                async with downstream, upstream, trio.open_nursery() as nursery:

                    async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                        async for chunk in source:
                            await sink.send_all(chunk)
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(pump, downstream, upstream)
                    nursery.start_soon(pump, upstream, downstream)
            except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # one side went away (a node that is stopped resets its connections)
            finally:
                self._carried.discard(scope)

    def cut(self) -> None:
        for scope in list(self._carried):
            scope.cancel()


async def test_a_client_is_recovered_by_another_node_through_the_shared_log(
    redis_url: str, js_peers: Path, tmp_path: Path
) -> None:
    """npm socket.io-client behind a load balancer: its connection is cut and it comes
    back on another node, which recovers it (same id, rooms, every missed event once)."""
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            open_cluster(redis_url, 3, js_peers, tmp_path, shared_log=True) as (nodes, driver),
            trio.open_nursery() as nursery,
        ):
            balancer = LoadBalancer(targets=[nodes[0].port])
            await nursery.start(balancer.run)
            sid = await driver.connect("c", f"http://127.0.0.1:{balancer.port}")
            await driver.connect("p", nodes[2].url)
            await driver.connect("q", nodes[0].url)
            await driver.call("c", "join", "r")
            await driver.call("p", "publish", "r", "m", 1)
            first = await driver.received("c", "m")
            assert first[0] == 1
            assert isinstance(first[-1], str)  # the offset

            balancer.targets = [nodes[1].port]  # the next connection lands on node 1
            balancer.cut()
            await driver.proc.expect_event("disconnected", id="c")
            await driver.call("p", "publish", "r", "m", 2)  # from node 2
            await driver.call("q", "publish", "r", "m", 3)  # from node 0, where it was
            await driver.call("p", "publish", "elsewhere", "m", "not for it")
            again, recovered = await driver.reconnect("c")
            assert (again, recovered) == (sid, True)
            await driver.call("p", "publish", "r", "m", 4)
            for n in (2, 3, 4):
                assert (await driver.received("c", "m"))[0] == n
            (found,) = await driver.call("p", "fetch", "r")
            assert isinstance(found, list)
            assert _sids(found) == {sid}
            entry = found[0]
            assert isinstance(entry, dict)
            assert entry["data"] == {"node": nodes[1].node_id}  # served by node 1 now
            assert driver.take_received("c") == []  # nothing twice, nothing else
            nursery.cancel_scope.cancel()


KILL_CLIENTS: Final = 30
KILL_ROOMS: Final = 3
KILL_EVENTS_BEFORE: Final = 60
"""Events published before the kill (and as many again after the recoveries)."""


async def test_a_killed_nodes_clients_are_recovered_by_the_others_with_nothing_lost(
    redis_url: str, js_peers: Path, tmp_path: Path
) -> None:
    """Clients spread over three nodes by a round-robin balancer, in a few rooms, while
    publishers on nodes 1 and 2 keep publishing. Node 0 is killed (SIGKILL: no goodbye,
    no session saved on the way out). Every client it held comes back through the
    balancer on node 1 or 2, recovered (same sid, same rooms), and each client gets every
    event of its room once, in the log's order (the order they were published in)."""
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            open_cluster(redis_url, 3, js_peers, tmp_path, shared_log=True) as (nodes, driver),
            open_driver(js_peers) as publishers,  # its own process: read by its own task
            trio.open_nursery() as nursery,
        ):
            balancer = LoadBalancer(targets=[node.port for node in nodes])
            await nursery.start(balancer.run)
            url = f"http://127.0.0.1:{balancer.port}"
            clients = [f"c{i}" for i in range(KILL_CLIENTS)]
            room_of = {c: f"r{(i // 3) % KILL_ROOMS}" for i, c in enumerate(clients)}
            sids: dict[str, str] = {}
            node_of: dict[str, str] = {}
            for client in clients:
                sids[client] = await driver.connect(client, url)
                await driver.call(client, "join", room_of[client])
                (status,) = await driver.call(client, "status")
                assert isinstance(status, dict)
                node_of[client] = str(status["node"])
            victims = [c for c in clients if node_of[c] == nodes[0].node_id]
            assert len(victims) == KILL_CLIENTS // 3
            assert {room_of[c] for c in victims} == {f"r{n}" for n in range(KILL_ROOMS)}
            for publisher, node in (("p1", nodes[1]), ("p2", nodes[2])):
                await publishers.connect(publisher, node.url)

            published: dict[str, list[int]] = {f"r{n}": [] for n in range(KILL_ROOMS)}
            stop, stopped = trio.Event(), trio.Event()

            async def publish() -> None:
                for n in itertools.count():
                    if stop.is_set():
                        stopped.set()
                        return
                    room = f"r{n % KILL_ROOMS}"
                    await publishers.call(f"p{1 + n % 2}", "publish", room, "m", n)
                    published[room].append(n)  # acknowledged: in the log

            def got_at_least(count: int) -> Callable[[dict[str, object]], bool]:
                def check(line: dict[str, object]) -> bool:
                    args = line.get("args")
                    return (
                        line.get("event") == "recv"
                        and isinstance(args, list)
                        and isinstance(args[0], int)
                        and args[0] >= count
                    )

                return check

            nursery.start_soon(publish)
            await driver.proc.wait_for(got_at_least(KILL_EVENTS_BEFORE))
            nodes[0].proc.kill()  # SIGKILL, by PID
            balancer.targets = [nodes[1].port, nodes[2].port]
            for client in victims:
                line = await driver.proc.expect_event("disconnected", id=client)
                assert line["reason"] == "transport close"
            for client in victims:  # all at once, as after a crash
                await driver.proc.send({"cmd": "reconnect", "id": client})
            for client in victims:
                line = await driver.proc.expect_event("connected", id=client)
                assert (line["sid"], line["recovered"]) == (sids[client], True), client
            resumed = len([n for room in published.values() for n in room])
            await driver.proc.wait_for(got_at_least(resumed + KILL_EVENTS_BEFORE))
            stop.set()
            for client in victims:  # served by node 1 or 2 now, in the same room
                (status,) = await driver.call(client, "status")
                assert isinstance(status, dict)
                assert status["node"] in (nodes[1].node_id, nodes[2].node_id)
                (found,) = await driver.call(client, "fetch", sids[client])
                assert isinstance(found, list)
                assert len(found) == 1
                entry = found[0]
                assert isinstance(entry, dict)
                assert entry["rooms"] == sorted({sids[client], room_of[client]})
            await stopped.wait()
            for n in range(KILL_ROOMS):  # one last event per room marks the end
                await publishers.call("p1", "publish", f"r{n}", "end", 0)
            for client in clients:
                await driver.proc.expect_event("recv", id=client, name="end")
            received = {client: driver.take_received(client) for client in clients}
            nursery.cancel_scope.cancel()
    for client in clients:
        events = received[client]
        values = [args[0] for name, args in events if name == "m"]
        offsets = [int(str(args[-1]).rpartition("-")[2]) for _, args in events]
        assert offsets == sorted(set(offsets)), client  # in the log's order, none twice
        # Every acknowledged event of its room, once, in order: none lost or reordered.
        assert values == published[room_of[client]], client
