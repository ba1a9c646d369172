"""The cluster's shared ordered log on a Redis Stream: one order and one offset space for
every node, recovery on another node, history, replay, and what outages do to it.

Nodes run in this process on a real Redis (each test with its own prefix); clients are
raw wire clients over in-memory streams.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import attrs
import coredis
import msgpack
import pytest
import trio

from roomcast.engine import Config, Server, Socket
from roomcast.engine.adapters.redis import LogGap, RedisCluster
from roomcast.engine.adapters.redis_log import read_shared_log
from roomcast.engine.cli import main
from roomcast.engine.recovery import RecoveryConfig
from roomcast.engine.replay import replay
from roomcast.protocol import JsonValue, RecordKind
from tests.adapters.conftest import (
    FAILED_CONNECT_LEAK,
    Deployment,
    Node,
    PrivateRedis,
    _serve_memory,
    fast_settings,
    free_port,
    open_deployment,
    unique_prefix,
)
from tests.engine.conftest import RawClient

TEST_TIMEOUT: Final = 20.0


def build(
    config: Config,
    adapter_factory: Callable[..., Any] | None = None,
    recovery: RecoveryConfig | None = None,
) -> Server:
    assert adapter_factory is not None
    server = Server(
        config=config,
        adapter_factory=adapter_factory,
        recovery=recovery or RecoveryConfig(max_disconnection_duration=30.0, max_events=50),
    )

    @server.on("join")
    async def join(socket: Socket, room: JsonValue) -> None:
        assert isinstance(room, str)
        socket.data["joined"] = room
        await socket.join(room)

    @server.on("say")
    async def say(socket: Socket, room: JsonValue, value: JsonValue) -> None:
        assert isinstance(room, str)
        await socket.to(room).emit("said", value)

    return server


def prefix_of(deployment: Deployment) -> str:
    cluster = deployment.nodes[0].cluster
    assert cluster is not None
    return cluster.settings.channel_prefix


def cluster_of(node: Node) -> RedisCluster:
    assert node.cluster is not None
    return node.cluster


async def connect(client: RawClient, auth: object = None) -> tuple[str, str]:
    body = "" if auth is None else json.dumps(auth, separators=(",", ":"))
    await client.send(f"40{body}")
    reply = await client.recv()
    assert isinstance(reply, str)
    assert reply.startswith("40{"), reply
    data = json.loads(reply[2:])
    return data["sid"], data["pid"]


async def event(client: RawClient) -> list[JsonValue]:
    frame = await client.recv()
    assert isinstance(frame, str)
    assert frame.startswith("42"), frame
    value = json.loads(frame[2:])
    assert isinstance(value, list)
    return value


async def join(client: RawClient, room: str, ack: int = 1) -> None:
    await client.send(f'42{ack}["join","{room}"]')
    assert await client.recv() == f"43{ack}[]"


@asynccontextmanager
async def shared_deployment(redis_url: str, count: int = 3) -> AsyncIterator[Deployment]:
    kind = "redis-3-log" if count == 3 else "redis-1-log"
    async with open_deployment(kind, build, redis_url) as deployment:
        yield deployment


def offset_number(offset: JsonValue) -> int:
    assert isinstance(offset, str)
    return int(offset.rpartition("-")[2])


async def test_every_node_delivers_one_order_with_the_same_offsets(redis_url: str) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with shared_deployment(redis_url) as deployment, AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(deployment.client(i)) for i in range(3)]
            for client in clients:
                await connect(client)
                await join(client, "r")

            async def publish(node: Node, tag: int) -> None:
                for n in range(20):
                    await node.server.to("r").emit("m", tag, n)

            async with trio.open_nursery() as nursery:
                for tag, node in enumerate(deployment.nodes):
                    nursery.start_soon(publish, node, tag)
            seen = [[await event(client) for _ in range(60)] for client in clients]
    assert seen[0] == seen[1] == seen[2]  # the same events, in the same order, same offsets
    offsets = [offset_number(e[-1]) for e in seen[0]]
    assert offsets == sorted(set(offsets))
    for tag in range(3):  # each node's own broadcasts keep their order
        assert [e[2] for e in seen[0] if e[1] == tag] == list(range(20))


async def test_a_client_is_recovered_on_another_node_with_everything_it_missed(
    redis_url: str,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with shared_deployment(redis_url) as deployment:
            first, second, third = deployment.nodes
            async with deployment.client(0) as client:
                sid, pid = await connect(client)
                await join(client, "r")
                await first.server.to("r").emit("m", 1)
                offset = (await event(client))[-1]
            await trio.sleep(0.05)  # the socket's session is saved as it goes
            await second.server.to("r").emit("m", 2)
            await third.server.emit("all", "x")
            await third.server.to("elsewhere").emit("m", "not for it")
            await first.server.to("r").except_("r").emit("m", "excluded")
            async with deployment.client(1) as client:  # node 1 this time
                again, again_pid = await connect(client, {"pid": pid, "offset": offset})
                assert (again, again_pid) == (sid, pid)
                missed = [await event(client), await event(client)]
                assert [m[:2] for m in missed] == [["m", 2], ["all", "x"]]
                assert offset_number(missed[0][-1]) > offset_number(offset)
                socket = second.server.of("/").sockets[sid]
                assert socket.recovered
                assert socket.rooms == {sid, "r"}
                assert socket.data == {"joined": "r"}
                await third.server.to("r").emit("m", 3)  # live again, from any node
                assert (await event(client))[:2] == ["m", 3]
                # The session was taken: the same pid cannot be recovered twice.
                async with deployment.client(2) as other:
                    new_sid, _ = await connect(other, {"pid": pid, "offset": offset})
                    assert new_sid != sid


async def test_an_offset_that_cannot_be_served_is_not_recovered(redis_url: str) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            shared_deployment(redis_url, count=1) as deployment,
            coredis.Redis.from_url(redis_url) as raw,
        ):
            node = deployment.nodes[0]
            stream = f"{prefix_of(deployment)}#~log"
            for case in ("unknown-pid", "other-epoch", "trimmed", "too-many"):
                async with deployment.client(0) as client:
                    sid, pid = await connect(client)
                    await join(client, "r")
                    await node.server.to("r").emit("m", 1)
                    offset = (await event(client))[-1]
                    assert isinstance(offset, str)
                await trio.sleep(0.05)
                if case == "unknown-pid":
                    pid = "not-a-pid"
                elif case == "other-epoch":
                    offset = "0000-" + offset.rpartition("-")[2]
                elif case == "trimmed":
                    await node.server.to("r").emit("m", 2)
                    await raw.xtrim(stream, coredis.PureToken.MAXLEN, 1)
                else:  # more events than max_events followed the offset
                    for n in range(60):
                        await node.server.to("r").emit("m", n)
                async with deployment.client(0) as client:
                    new_sid, _ = await connect(client, {"pid": pid, "offset": offset})
                    assert new_sid != sid, case
                    socket = node.server.of("/").sockets[new_sid]
                    assert not socket.recovered
                    assert socket.rooms == {new_sid}


async def test_history_and_replay_read_the_cluster_log(redis_url: str) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with shared_deployment(redis_url) as deployment, AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(deployment.client(i)) for i in range(2)]
            sids = [(await connect(client))[0] for client in clients]
            for client in clients:
                await join(client, "r")
            await clients[0].send('42["say","r","hello"]')
            assert (await event(clients[1]))[:2] == ["said", "hello"]
            await deployment.nodes[2].server.to("r").emit("m", 1)
            for client in clients:
                while (await event(client))[0] != "m":
                    pass
            # Any node reads the same history, with the cluster's offsets.
            history = [await node.server.of("/").history("r", last=10) for node in deployment.nodes]
            assert history[0] == history[1] == history[2]
            kinds = [(r.kind, r.sender, r.event) for r in history[0]]
            assert kinds == [
                (RecordKind.JOIN, sids[0], None),
                (RecordKind.JOIN, sids[1], None),
                (RecordKind.MESSAGE, None, "said"),
                (RecordKind.MESSAGE, None, "m"),
            ]
            assert history[0][2].exclude == (sids[0],)
            later = (
                await deployment.nodes[1].server.of("/").history("r", after=history[0][2].offset)
            )
            assert later == history[0][3:]
            async with coredis.Redis.from_url(redis_url) as raw:
                records = await read_shared_log(raw, prefix_of(deployment))
    kinds_all = [r.kind for r in records]
    assert kinds_all.count(RecordKind.CONNECT) == 2
    assert [r.offset for r in records] == sorted(r.offset for r in records)
    assert len({r.epoch for r in records}) == 1
    # The records replay against the app like a file log's.
    fresh = build(Config(), adapter_factory=lambda *a: _memory_adapter(*a))
    steps = await replay(records, fresh)
    said = [s for s in steps if s.record.event == "say"]
    assert said
    assert said[0].handled


def _memory_adapter(name: str, spawn_room: Callable[..., None], config: Config) -> Any:
    from roomcast.engine.adapters.memory import MemoryAdapter

    return MemoryAdapter(
        namespace=name, spawn_room=spawn_room, room_inbox_size=config.room_inbox_size
    )


@FAILED_CONNECT_LEAK
async def test_a_lost_connection_loses_nothing_that_reached_the_log(
    redis_url: str, collect_garbage: None
) -> None:
    """Node 1's Redis connections are killed again and again while node 0 broadcasts;
    node 1 catches up from the stream each time: its client gets every event once."""
    with trio.fail_after(TEST_TIMEOUT):
        async with shared_deployment(redis_url, count=3) as deployment:
            sender, receiver = deployment.nodes[0], deployment.nodes[1]
            name = f"roomcast-{cluster_of(receiver).node_id}"
            async with deployment.client(1) as client, coredis.Redis.from_url(redis_url) as raw:
                await connect(client)
                await join(client, "r")
                for n in range(60):
                    await sender.server.to("r").emit("m", n)
                    if n % 15 == 7:
                        raw_list = await raw.client_list()
                        for info in raw_list:
                            if info.get("name") == name:
                                await raw.client_kill(identifier=info["id"])
                got = [await event(client) for _ in range(60)]
                assert [e[1] for e in got] == list(range(60))
                status = cluster_of(receiver).status()
                assert status.outages >= 1


@FAILED_CONNECT_LEAK
async def test_redis_losing_the_log_is_reported_and_old_offsets_are_refused(
    private_redis: PrivateRedis, collect_garbage: None
) -> None:
    private_redis.start()
    gaps: list[LogGap] = []
    prefix = unique_prefix()
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:

            def on_event(event: object) -> None:
                if isinstance(event, LogGap):
                    gaps.append(event)

            cluster = RedisCluster(
                settings=fast_settings(private_redis.url, prefix, shared_log=True),
                on_event=on_event,
            )
            server = build(Config(), adapter_factory=cluster.adapter_factory)
            await nursery.start(cluster.run)
            memory = await nursery.start(_serve_memory, server)
            async with memory.client() as client:
                sid, pid = await connect(client)
                await join(client, "r")
                await server.to("r").emit("m", 1)
                offset = (await event(client))[-1]
            await trio.sleep(0.05)
            epoch = cluster.status().log_epoch
            private_redis.kill()
            await cluster.wait_until(lambda status: not status.connected)
            # Without Redis the node still serves its own clients (no offset then).
            async with memory.client() as client:
                await connect(client)
                await join(client, "r")
                await server.to("r").emit("m", 2)
                assert await event(client) == ["m", 2]
            private_redis.start()
            await cluster.wait_until(lambda status: status.connected)
            assert cluster.status().log_epoch != epoch
            assert gaps == [LogGap(reason="reset", missed=None)]
            async with memory.client() as client:
                new_sid, _ = await connect(client, {"pid": pid, "offset": offset})
                assert new_sid != sid
                await join(client, "r")
                await server.to("r").emit("m", 3)
                value = await event(client)
                assert value[:2] == ["m", 3]
                assert offset_number(value[-1]) >= 1
            nursery.cancel_scope.cancel()


@FAILED_CONNECT_LEAK
def test_roomcast_replay_reads_a_cluster_log_from_redis(
    redis_url: str, capsys: pytest.CaptureFixture[str], collect_garbage: None
) -> None:
    prefix = unique_prefix()

    async def produce() -> str:
        cluster = RedisCluster(settings=fast_settings(redis_url, prefix, shared_log=True))
        server = build(Config(), adapter_factory=cluster.adapter_factory)
        async with trio.open_nursery() as nursery:
            await nursery.start(cluster.run)
            memory = await nursery.start(_serve_memory, server)
            async with memory.client() as client:
                sid, _ = await connect(client)
                await join(client, "r")
                await server.to("r").emit("m", "hello")
                assert (await event(client))[:2] == ["m", "hello"]
            nursery.cancel_scope.cancel()
        return sid

    sid = trio.run(produce)
    code = main(["replay", "--redis", redis_url, "--prefix", prefix, "--room", "r"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    assert len(lines) == 2, out
    assert lines[0].endswith(f" join from {sid}")
    assert "hello" in lines[1]
    # One source at a time, and a Redis that does not answer is a clear error.
    assert main(["replay", "somewhere", "--redis", redis_url]) == 2
    assert "one of them" in capsys.readouterr().err
    assert main(["replay", "--redis", f"redis://127.0.0.1:{free_port()}/0"]) == 2
    assert "cannot read the shared log" in capsys.readouterr().err


async def test_history_and_the_log_are_read_across_pages(redis_url: str) -> None:
    """More entries than one read returns (1,000): every reader pages through them."""
    with trio.fail_after(TEST_TIMEOUT * 2):
        async with (
            shared_deployment(redis_url, count=1) as deployment,
            coredis.Redis.from_url(redis_url) as raw,
        ):
            server = deployment.nodes[0].server
            async with trio.open_nursery() as nursery:  # concurrent: batched appends
                for n in range(1_100):
                    nursery.start_soon(server.to("r").emit, "m", n)
            await server.to("other").emit("m", "elsewhere")
            ns = server.of("/")
            newest = await ns.history("r", last=1_050)
            everything = await ns.history("r")
            after = await ns.history("r", after=everything[20].offset)
            records = await read_shared_log(raw, prefix_of(deployment))
    assert len(everything) == 1_100
    assert sorted(r.args[0] for r in everything) == list(range(1_100))  # type: ignore[type-var]
    assert [r.offset for r in everything] == sorted(r.offset for r in everything)
    assert newest == everything[-1_050:]
    assert after == everything[21:]
    assert len(records) == 1_101


# -- sessions: live from CONNECT on, so that a killed node's sockets are recoverable -------


async def stored_session(raw: coredis.Redis[bytes], prefix: str, pid: str) -> list[Any] | None:
    """The session value of ``pid`` (``[state, node, sid, namespace, rooms, data, at,
    epoch]``), or None when Redis has none."""
    value = await raw.get(f"{prefix}#~session#{pid}")
    if value is None:
        return None
    decoded = msgpack.unpackb(value, raw=False)
    assert isinstance(decoded, list)
    return decoded


async def session_becomes(
    raw: coredis.Redis[bytes], prefix: str, pid: str, state: str | None
) -> list[Any] | None:
    """Wait until the session of ``pid`` is in ``state`` (None: gone). The disconnect
    is the server's to notice, so this reads Redis until it shows (bounded)."""
    with trio.fail_after(5):
        while True:
            value = await stored_session(raw, prefix, pid)
            if (value[0] if value is not None else None) == state:
                return value
            await trio.sleep(0.01)


async def test_a_live_session_follows_its_socket_until_it_is_saved_or_deleted(
    redis_url: str,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            shared_deployment(redis_url) as deployment,
            coredis.Redis.from_url(redis_url) as raw,
        ):
            prefix = prefix_of(deployment)
            node = deployment.nodes[0]
            node_id = cluster_of(node).node_id
            async with deployment.client(0) as client:
                sid, pid = await connect(client)
                # In Redis from the CONNECT on (before the client had its answer).
                value = await stored_session(raw, prefix, pid)
                assert value is not None
                assert value[:6] == ["live", node_id, sid, "/", [], {}]
                ttl = await raw.pttl(f"{prefix}#~session#{pid}")
                window = 30.0  # build()'s max_disconnection_duration
                settings = cluster_of(node).settings
                bound = window + 2 * settings.session_refresh_interval + settings.node_timeout
                assert window * 1000 < ttl <= bound * 1000
                # A join is in Redis when it returns, with the data as it is then.
                await join(client, "r")
                value = await stored_session(raw, prefix, pid)
                assert value is not None
                assert value[:6] == ["live", node_id, sid, "/", ["r"], {"joined": "r"}]
                socket = node.server.of("/").sockets[sid]
                await socket.join("s")
                await socket.leave("r")
                value = await stored_session(raw, prefix, pid)
                assert value is not None
                assert value[4] == ["s"]
            # A recoverable disconnect (the transport closed) saves it for the window.
            saved = await session_becomes(raw, prefix, pid, "saved")
            assert saved is not None
            assert saved[1:6] == [node_id, sid, "/", ["s"], {"joined": "r"}]
            assert 0 < await raw.pttl(f"{prefix}#~session#{pid}") <= 30_000
            # A disconnect the client asked for deletes it.
            async with deployment.client(1) as client:
                _, pid = await connect(client)
                assert await stored_session(raw, prefix, pid) is not None
                await client.send("41")
                await session_becomes(raw, prefix, pid, None)


def live_value(node: str, sid: str, rooms: list[str], epoch: str) -> bytes:
    """A live session value as a node writes it (the layout of redis_log's docstring)."""
    packed: bytes = msgpack.packb(["live", node, sid, "/", rooms, {"joined": "r"}, 0.0, epoch])
    return packed


async def test_a_session_whose_node_is_dead_is_recovered_elsewhere_once(
    redis_url: str,
) -> None:
    """A live session of a node that never answers (killed: no bye, no heartbeat): the
    node a client comes back to asks it, takes it for dead after ``node_timeout``, and
    recovers the client; the session is then live there, and nobody else can take it."""
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            shared_deployment(redis_url) as deployment,
            coredis.Redis.from_url(redis_url) as raw,
        ):
            prefix = prefix_of(deployment)
            first, second, _ = deployment.nodes
            async with deployment.client(0) as client:
                _, pid = await connect(client)
                await join(client, "r")
                await first.server.to("r").emit("m", 1)
                offset = (await event(client))[-1]
                assert isinstance(offset, str)
                epoch = offset.rpartition("-")[0]
                # The node holding it is "killed": its session stays live, its node gone.
                await raw.set(f"{prefix}#~session#{pid}", live_value("dead", "s1", ["r"], epoch))
            await second.server.to("r").emit("m", 2)
            results: dict[int, tuple[str, bool]] = {}
            both = trio.Event()

            async def come_back(index: int) -> None:
                async with deployment.client(index) as other:
                    again, _ = await connect(other, {"pid": pid, "offset": offset})
                    node = deployment.node_of(index)
                    socket = node.server.of("/").sockets[again]
                    results[index] = (again, socket.recovered)
                    if socket.recovered:
                        assert socket.rooms == {"s1", "r"}
                        assert socket.data == {"joined": "r"}
                        assert (await event(other))[:2] == ["m", 2]
                        value = await stored_session(raw, prefix, pid)
                        assert value is not None
                        assert value[:3] == ["live", cluster_of(node).node_id, "s1"]
                    if len(results) == 2:
                        both.set()
                    await both.wait()  # (once the winner leaves, its session is saved)

            async with trio.open_nursery() as nursery:  # two nodes try at once
                nursery.start_soon(come_back, 1)
                nursery.start_soon(come_back, 2)
    assert sorted(recovered for _, recovered in results.values()) == [False, True]
    assert {sid for sid, recovered in results.values() if recovered} == {"s1"}


async def test_a_live_session_its_node_no_longer_holds_is_taken_at_once(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its node answers that it does not hold the socket (its disconnect is still on
    the way to Redis, say): the session is recovered without waiting for a timeout."""
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            shared_deployment(redis_url) as deployment,
            coredis.Redis.from_url(redis_url) as raw,
        ):
            prefix = prefix_of(deployment)
            first, second, _ = deployment.nodes
            async with deployment.client(0) as client:
                _, pid = await connect(client)
                await join(client, "r")
                await first.server.to("r").emit("m", 1)
                offset = (await event(client))[-1]
                assert isinstance(offset, str)
            await session_becomes(raw, prefix, pid, "saved")
            epoch = offset.rpartition("-")[0]
            owner = cluster_of(first).node_id
            await raw.set(f"{prefix}#~session#{pid}", live_value(owner, "s2", ["r"], epoch))
            async with deployment.client(1) as client:
                again, _ = await connect(client, {"pid": pid, "offset": offset})
                assert again == "s2"
                assert second.server.of("/").sockets[again].recovered
    assert "taken for dead" not in caplog.text  # its node answered


async def test_a_session_whose_node_still_holds_it_is_not_taken(redis_url: str) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            shared_deployment(redis_url) as deployment,
            coredis.Redis.from_url(redis_url) as raw,
        ):
            prefix = prefix_of(deployment)
            first = deployment.nodes[0]
            async with deployment.client(0) as client:
                sid, pid = await connect(client)
                await join(client, "r")
                await first.server.to("r").emit("m", 1)
                offset = (await event(client))[-1]
                for index in (1, 0):  # another node asks node 0; node 0 knows it itself
                    async with deployment.client(index) as other:
                        again, _ = await connect(other, {"pid": pid, "offset": offset})
                        assert again != sid
                value = await stored_session(raw, prefix, pid)
                assert value is not None
                assert value[:3] == ["live", cluster_of(first).node_id, sid]
                await first.server.to("r").emit("m", 2)  # the first socket is unharmed
                assert (await event(client))[:2] == ["m", 2]


async def test_a_node_keeps_its_live_sessions_in_redis_while_it_holds_them(
    redis_url: str,
) -> None:
    """Live sessions expire unless their node renews them (so a killed node's go away);
    a node renews its own, and writes back what Redis lost."""
    prefix = unique_prefix()
    settings = attrs.evolve(
        fast_settings(redis_url, prefix, shared_log=True), session_refresh_interval=0.1
    )
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery, coredis.Redis.from_url(redis_url) as raw:
            cluster = RedisCluster(settings=settings)
            server = build(Config(), adapter_factory=cluster.adapter_factory)
            await nursery.start(cluster.run)
            memory = await nursery.start(_serve_memory, server)
            async with memory.client() as client:
                _, pid = await connect(client)
                await join(client, "r")
                key = f"{prefix}#~session#{pid}"
                await raw.pexpire(key, 300)
                await trio.sleep(0.6)  # longer than that TTL: renewed meanwhile
                assert await raw.pttl(key) > 30_000
                await raw.delete([key])  # say Redis lost it
                value = await session_becomes(raw, prefix, pid, "live")
                assert value is not None
                assert value[1] == cluster.node_id
                assert value[4] == ["r"]
            await session_becomes(raw, prefix, pid, "saved")
            await trio.sleep(0.3)  # renewals go on: a saved session is not theirs
            value = await stored_session(raw, prefix, pid)
            assert value is not None
            assert value[0] == "saved"
            assert 0 < await raw.pttl(key) <= 30_000
            nursery.cancel_scope.cancel()
