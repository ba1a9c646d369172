"""The server core on the wire: namespaces, events, acks, rooms, broadcast, disconnects."""

from __future__ import annotations

import json
import logging
import re

import pytest
import trio
import trio.testing

from roomcast.engine import Config, ConnectRefusedError, RecoveryConfig, Server, Socket
from roomcast.engine.actors.supervisor import RoomCrashLoopError
from roomcast.engine.adapters.memory import MemoryAdapter
from roomcast.engine.server import _Ids
from roomcast.engine.testing import open_harness
from roomcast.protocol import JsonValue

from .conftest import RawClient, open_memory_server


def chat_server() -> Server:
    server = Server()

    @server.on("message")
    async def message(socket: Socket, *args: JsonValue) -> None:
        await socket.emit("message-back", *args)

    @server.on("message-with-ack")
    async def message_with_ack(socket: Socket, *args: JsonValue) -> tuple[JsonValue, ...]:
        return args

    @server.on("join")
    async def join(socket: Socket, *rooms: str) -> list[str]:
        await socket.join(*rooms)
        return sorted(socket.rooms - {socket.sid})

    @server.on("leave")
    async def leave(socket: Socket, room: str) -> None:
        await socket.leave(room)

    @server.on("publish")
    async def publish(socket: Socket, rooms: list[str], payload: JsonValue) -> int:
        return await server.to(*rooms).emit("message", payload)

    @server.on("shout")
    async def shout(socket: Socket, payload: JsonValue) -> None:
        await socket.broadcast.emit("shout", payload)

    return server


async def test_handshake_has_exactly_the_v4_fields() -> None:
    with trio.fail_after(10):
        async with open_memory_server(chat_server()) as srv, srv.client() as client:
            assert list(client.handshake) == [
                "sid",
                "upgrades",
                "pingInterval",
                "pingTimeout",
                "maxPayload",
            ]
            assert client.handshake["upgrades"] == []
            assert client.handshake["pingInterval"] == 25000
            assert client.handshake["pingTimeout"] == 20000
            assert client.handshake["maxPayload"] == 1_000_000


def test_session_ids_are_20_url_safe_characters_from_fresh_random_bytes() -> None:
    ids = _Ids()
    drawn = [ids() for _ in range(1000)]  # across many refills of its pool
    assert len(set(drawn)) == len(drawn)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{20}", sid) for sid in drawn)
    pool = ids._pool
    ids.discard()  # (what a forked child does: it must not repeat its parent's ids)
    ids()
    assert ids._pool != pool


async def test_connect_event_ack_and_binary_exactly_as_node() -> None:
    with trio.fail_after(10):
        async with open_memory_server(chat_server()) as srv, srv.client() as client:
            sid = await client.connect()
            assert sid != client.handshake["sid"]  # the Socket.IO id is not the Engine.IO id
            await client.send('42["message",1,"2",{"3":[true]}]')
            assert await client.recv() == '42["message-back",1,"2",{"3":[true]}]'
            await client.send('42456["message-with-ack",1,"2",{"3":[false]}]')
            assert await client.recv() == '43456[1,"2",{"3":[false]}]'
            await client.send(
                '452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
            )
            await client.send(b"\x01\x02\x03")
            await client.send(b"\x04\x05\x06")
            assert await client.recv() == (
                '452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
            )
            assert await client.recv() == b"\x01\x02\x03"
            assert await client.recv() == b"\x04\x05\x06"
            await client.send(
                '452-789["message-with-ack",'
                '{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
            )
            await client.send(b"\x01")
            await client.send(b"\x02")
            assert await client.recv() == (
                '462-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
            )
            assert await client.recv() == b"\x01"
            assert await client.recv() == b"\x02"


async def test_unknown_namespace_is_refused_and_connection_stays() -> None:
    with trio.fail_after(10):
        async with open_memory_server(chat_server()) as srv, srv.client() as client:
            await client.send("40/random")
            assert await client.recv() == '44/random,{"message":"Invalid namespace"}'
            await client.connect()
            await client.send('42["message","still here"]')
            assert await client.recv() == '42["message-back","still here"]'


async def test_middleware_refuses_with_data_and_connect_handler_sees_auth() -> None:
    server = Server()
    admin = server.of("/admin")
    seen: list[JsonValue] = []

    @admin.use
    async def check_token(socket: Socket, auth: JsonValue) -> None:
        if not isinstance(auth, dict) or auth.get("token") != "s3cret":
            raise ConnectRefusedError("not authorized", {"code": 4001})

    @admin.on("connect")
    async def connected(socket: Socket, auth: JsonValue) -> None:
        seen.append(auth)
        await socket.emit("auth", auth)

    with trio.fail_after(10):
        async with open_memory_server(server) as srv, srv.client() as client:
            await client.send('40/admin,{"token":"wrong"}')
            assert await client.recv() == (
                '44/admin,{"message":"not authorized","data":{"code":4001}}'
            )
            await client.connect("/admin", {"token": "s3cret"})
            assert await client.recv() == '42/admin,["auth",{"token":"s3cret"}]'
            assert seen == [{"token": "s3cret"}]
            assert "/admin" not in {s.namespace.name for s in server.of("/").sockets.values()}


async def test_two_namespaces_on_one_connection_and_namespace_disconnect() -> None:
    server = chat_server()
    custom = server.of("/custom")
    reasons: list[str] = []

    @custom.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        reasons.append(reason)

    with trio.fail_after(10):
        async with open_memory_server(server) as srv, srv.client() as client:
            await client.connect("/")
            await client.connect("/custom")
            await client.send("41/custom,")
            await client.send('42["message","main"]')
            assert await client.recv() == '42["message-back","main"]'
            assert reasons == ["client namespace disconnect"]
            assert not custom.sockets
            # An event for a namespace the client left is a protocol violation: closed.
            await client.send('42/custom,["message"]')
            await client.closed()


@pytest.mark.parametrize(
    "bad", ["4abc", "42{}", '42abc["x"]', "9", "abc", '42[1,"numeric event name"]', "47"]
)
async def test_malformed_packets_close_only_that_connection(bad: str) -> None:
    server = chat_server()
    reasons: list[str] = []

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        reasons.append(reason)

    with trio.fail_after(10):
        async with open_memory_server(server) as srv, srv.client() as other:
            await other.connect()
            async with srv.client() as client:
                await client.connect()
                await client.send(bad)
                await client.closed()
            assert reasons == ["parse error"]
            await other.send('42["message","ok"]')
            assert await other.recv() == '42["message-back","ok"]'


async def test_rooms_broadcast_union_except_and_exclude_sender() -> None:
    server = chat_server()
    with trio.fail_after(10):
        async with (
            open_memory_server(server) as srv,
            srv.client() as a,
            srv.client() as b,
            srv.client() as c,
        ):
            sid_a, _, sid_c = await a.connect(), await b.connect(), await c.connect()
            await a.send('421["join","red","blue"]')
            assert await a.recv() == '431[["blue","red"]]'
            await b.send('421["join","red"]')
            assert await b.recv() == '431[["red"]]'
            await c.send('421["join","green"]')
            assert await c.recv() == '431[["green"]]'

            # Union of two rooms: a (in both) gets it once.
            await c.send('422["publish",["red","blue"],"hi"]')
            assert await a.recv() == '42["message","hi"]'
            assert await b.recv() == '42["message","hi"]'
            assert await c.recv() == "432[2]"

            # Except: red minus blue.
            n = await server.to("red").except_("blue").emit("message", "no-a")
            assert n == 1
            assert await b.recv() == '42["message","no-a"]'

            # socket.broadcast leaves out the sender, reaches everyone else.
            await a.send('42["shout","x"]')
            assert await b.recv() == '42["shout","x"]'
            assert await c.recv() == '42["shout","x"]'

            # A socket's own id is a room.
            assert await server.to(sid_c).emit("message", "direct") == 1
            assert await c.recv() == '42["message","direct"]'
            assert await server.to(sid_a, "red").emit("message", "dedup") == 2
            assert await a.recv() == '42["message","dedup"]'
            assert await b.recv() == '42["message","dedup"]'

            # Leaving a room stops delivery; the last member leaving retires the room.
            await b.send('42["leave","red"]')
            await a.send('42["leave","red"]')
            await a.send('423["message-with-ack"]')
            assert await a.recv() == "433[]"
            assert await server.to("red").emit("message", "nobody") == 0
            assert "red" not in server.of("/").adapter.rooms()


async def test_ordering_per_publisher_across_rooms() -> None:
    server = chat_server()
    with trio.fail_after(10):
        async with open_memory_server(server) as srv, srv.client() as a, srv.client() as pub:
            await a.connect()
            await pub.connect()
            await a.send('421["join","r1","r2"]')
            await a.recv()
            for i in range(50):
                room = ["r1", "r2", "r1,r2"][i % 3].split(",")
                await pub.send(f"42{json.dumps(['publish', room, i])}")
            got = [json.loads(str(await a.recv())[2:])[1] for _ in range(50)]
            assert got == list(range(50))


async def test_server_awaits_client_ack_and_broadcast_ack_reports_missing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = chat_server()
    with trio.fail_after(30):
        async with (
            open_memory_server(server) as srv,
            srv.client() as a,
            srv.client() as b,
            srv.client() as silent,
        ):
            sid_a, sid_b, sid_s = await a.connect(), await b.connect(), await silent.connect()
            socket_a = server.of("/").sockets[sid_a]

            async def answer(client: RawClient, reply: str) -> None:
                frame = await client.recv()
                assert isinstance(frame, str)
                match = re.fullmatch(r"42(\d+)\[.*\]", frame)
                assert match, frame
                await client.send(f"43{match.group(1)}{reply}")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer, a, '["pong-a"]')
                assert await socket_a.call("ping?", 1) == ("pong-a",)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer, a, '["yes"]')
                nursery.start_soon(answer, b, '["no",2]')
                result = await server.of("/").broadcast_operator().call("vote", within=5.0)
            assert result.answers == {sid_a: ("yes",), sid_b: ("no", 2)}
            assert result.missing == {sid_s}
            frame = await silent.recv()
            assert isinstance(frame, str)
            assert frame.startswith("42")
            assert frame.endswith('["vote"]')


async def test_handler_exception_is_logged_and_confined(caplog: pytest.LogCaptureFixture) -> None:
    server = chat_server()

    @server.on("boom")
    async def boom(socket: Socket) -> None:
        raise RuntimeError("app bug")

    with trio.fail_after(10), caplog.at_level(logging.ERROR):
        async with open_memory_server(server) as srv, srv.client() as client:
            await client.connect()
            await client.send('427["boom"]')
            await client.send('42["message","after"]')
            assert await client.recv() == '42["message-back","after"]'
    assert any("app bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)


async def test_dynamic_namespaces_by_regex_and_predicate() -> None:
    server = Server()
    tenants = server.of(re.compile(r"/tenant-\d+"))
    allowed = server.of(lambda name, auth: name.startswith("/ok-"))

    @tenants.on("who")
    async def who(socket: Socket) -> str:
        return socket.namespace.name

    @allowed.on("ping")
    async def ping(socket: Socket) -> str:
        return "pong"

    with trio.fail_after(10):
        async with open_memory_server(server) as srv, srv.client() as client:
            await client.connect("/tenant-42")
            await client.send('42/tenant-42,1["who"]')
            assert await client.recv() == '43/tenant-42,1["/tenant-42"]'
            await client.connect("/ok-x")
            await client.send('42/ok-x,2["ping"]')
            assert await client.recv() == '43/ok-x,2["pong"]'
            await client.send("40/tenant-x")
            assert await client.recv() == '44/tenant-x,{"message":"Invalid namespace"}'
            assert await tenants.emit("hello") == 1
            assert await client.recv() == '42/tenant-42,["hello"]'


async def test_server_side_operations_fetch_join_leave_disconnect() -> None:
    server = chat_server()
    reasons: list[str] = []

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        reasons.append(reason)

    with trio.fail_after(10):
        async with open_memory_server(server) as srv, srv.client() as a, srv.client() as b:
            sid_a, sid_b = await a.connect(), await b.connect()
            await server.of("/").sockets_join("all")
            await server.in_(sid_a).sockets_join("only-a")
            sockets = await server.in_("all").fetch_sockets()
            assert {s.sid for s in sockets} == {sid_a, sid_b}
            assert {s.sid for s in await server.in_("only-a").fetch_sockets()} == {sid_a}
            await server.in_("only-a").sockets_leave("all")
            assert {s.sid for s in await server.in_("all").fetch_sockets()} == {sid_b}
            await server.in_("all").disconnect_sockets()
            assert await b.recv() == "41"
            assert reasons == ["server namespace disconnect"]
            assert list(server.of("/").sockets) == [sid_a]


async def test_heartbeat_drops_a_silent_client_and_keeps_a_healthy_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = chat_server()
    reasons: list[tuple[str, float]] = []

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        reasons.append((reason, trio.current_time()))

    with trio.fail_after(200):
        async with (
            open_memory_server(server) as srv,
            srv.client(auto_pong=False) as silent,
            srv.client() as healthy,
        ):
            start = trio.current_time()
            await silent.connect()
            await healthy.connect()
            assert await silent.recv_raw() == "2"
            await silent.closed()
            assert [r for r, _ in reasons] == ["ping timeout"]
            assert reasons[0][1] - start == pytest.approx(45.0, abs=0.5)
            # The healthy one answers every ping and is still there three intervals on.
            await trio.sleep(100)
            await healthy.send('42["message","alive"]')
            assert await healthy.recv() == '42["message-back","alive"]'


async def test_connect_timeout_closes_a_connection_without_namespace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with open_memory_server(chat_server()) as srv, srv.client() as client:
            start = trio.current_time()
            await client.closed()
            assert trio.current_time() - start == pytest.approx(45.0, abs=0.5)


async def test_cleanup_leaves_no_rooms_connections_or_tasks() -> None:
    server = chat_server()
    with trio.fail_after(10):
        async with open_memory_server(server) as srv:
            async with srv.client() as a, srv.client() as b:
                await a.connect()
                await b.connect()
                await a.send('421["join","x","y"]')
                await a.recv()
                await b.send('421["join","x"]')
                await b.recv()
                assert server.supervisor.rooms_running == 2
            await trio.testing.wait_all_tasks_blocked()
            assert server.connections == {}
            assert server.of("/").sockets == {}
            assert server.of("/").adapter.rooms() == frozenset()
            assert server.supervisor.rooms_running == 0


async def test_a_crashed_room_actor_is_restarted_with_its_members(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = chat_server()
    adapter = server.of("/").adapter
    assert isinstance(adapter, MemoryAdapter)
    with trio.fail_after(10), caplog.at_level(logging.ERROR):
        async with open_memory_server(server) as srv, srv.client() as a:
            await a.connect()
            await a.send('421["join","r"]')
            assert await a.recv() == '431[["r"]]'
            assert await adapter.crash_room("r")
            assert await server.to("r").emit("message", "after crash") == 1
            assert await a.recv() == '42["message","after crash"]'
            assert not await adapter.crash_room("nope")
    assert any("crashed" in r.getMessage() for r in caplog.records)


async def test_room_crash_loop_escalates(autojump_clock: trio.testing.MockClock) -> None:
    server = chat_server()
    adapter = server.of("/").adapter
    assert isinstance(adapter, MemoryAdapter)
    with trio.fail_after(10), pytest.RaisesGroup(RoomCrashLoopError, flatten_subgroups=True):
        async with open_memory_server(server) as srv, srv.client() as a:
            await a.connect()
            await a.send('421["join","r"]')
            assert await a.recv() == '431[["r"]]'
            for _ in range(server.config.room_max_restarts + 1):
                await adapter.crash_room("r")
            await trio.sleep_forever()


async def test_deadline_scheduler_keeps_waking_after_compacting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Rescheduling many targets makes most heap entries stale; after the heap is rebuilt,
    deadlines scheduled later must still fire (the loop must watch the new heap)."""
    from roomcast.engine.actors.supervisor import DeadlineScheduler

    class Target:
        def __init__(self) -> None:
            self.timer_token = 0
            self.fired: list[float] = []

        def on_deadline(self, now: float) -> None:
            self.fired.append(now)

    scheduler = DeadlineScheduler()
    targets = [Target() for _ in range(200)]
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            for _ in range(5):  # 800 stale entries: the heap gets rebuilt
                for target in targets:
                    scheduler.schedule(target, trio.current_time() + 50)
                await trio.sleep(1)
            late = Target()
            scheduler.schedule(late, trio.current_time() + 10)
            await trio.sleep(60)
            assert late.fired
            assert all(len(t.fired) == 1 for t in targets)
            assert len(scheduler) == 0
            nursery.cancel_scope.cancel()


async def test_deadline_scheduler_does_not_keep_cancelled_targets_alive() -> None:
    """A connection that closed is freed at once, not kept by its heap entry until its
    old deadline (up to 45 s of a dead connection's memory per entry)."""
    import gc
    import weakref

    from roomcast.engine.actors.supervisor import DeadlineScheduler

    class Target:
        def __init__(self) -> None:
            self.timer_token = 0

        def on_deadline(self, now: float) -> None:
            raise AssertionError("a cancelled target was woken")

    await trio.lowlevel.checkpoint()
    scheduler = DeadlineScheduler()
    target = Target()
    scheduler.schedule(target, trio.current_time() + 100)
    alive = weakref.ref(target)
    scheduler.cancel(target)
    del target
    gc.collect()
    assert alive() is None


async def test_a_failing_handler_is_logged_with_namespace_event_and_socket_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server()
    chat = server.of("/chat")

    @chat.on("boom")
    async def boom(socket: Socket, *args: JsonValue) -> None:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("handler bug")

    @chat.on("ping")
    async def ping(socket: Socket) -> str:
        await trio.lowlevel.checkpoint()
        return "pong"

    with trio.fail_after(10):
        async with open_harness(server) as harness:
            client = await harness.connect(namespace="/chat")
            sid = client.sid("/chat")
            await client.emit("boom", 1, namespace="/chat")
            # Handlers run in order per connection: once ping is answered, boom has failed.
            assert await client.call("ping", namespace="/chat") == ("pong",)
            (eio_sid,) = server.connections
    (failure,) = [r for r in caplog.records if r.name == "roomcast.engine.actors.connection"]
    assert failure.levelno == logging.ERROR
    assert failure.getMessage() == (
        f"handler of event 'boom' failed (namespace /chat, socket {sid}, connection {eio_sid})"
    )
    assert failure.exc_info is not None
    assert isinstance(failure.exc_info[1], RuntimeError)


def test_recovery_config_is_public() -> None:
    import roomcast.engine
    from roomcast.engine.recovery import RecoveryConfig

    assert "RecoveryConfig" in roomcast.engine.__all__
    assert roomcast.engine.RecoveryConfig is RecoveryConfig


async def test_reconfigure_only_before_serving() -> None:
    server = Server()
    server.reconfigure(config=Config(ping_interval=3.0), recovery=RecoveryConfig())
    assert server.recovery_store is not None
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, "127.0.0.1", 0)
            with pytest.raises(RuntimeError, match="before it serves"):
                server.reconfigure(config=Config(), recovery=None)
            assert server.config.ping_interval == 3.0
            nursery.cancel_scope.cancel()


def test_wall_clock_follows_the_clock_of_each_run_the_server_serves_in() -> None:
    """A server served again in a later ``trio.run`` reads that run's clock: here a
    MockClock standing still, then one that jumps an hour."""
    server = Server(config=Config())
    stamps: list[float] = []

    async def serve_once(advance: float) -> None:
        async with server.running():
            first = server.wall_now()
            trio.lowlevel.current_clock().jump(advance)  # type: ignore[attr-defined]
            stamps.append(server.wall_now() - first)

    trio.run(serve_once, 0.0, clock=trio.testing.MockClock(autojump_threshold=0))
    trio.run(serve_once, 3600.0, clock=trio.testing.MockClock(autojump_threshold=0))
    assert stamps[0] == pytest.approx(0.0, abs=0.5)
    assert stamps[1] == pytest.approx(3600.0, abs=0.5)
