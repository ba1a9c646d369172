"""roomcast's own Trio client against roomcast's own server, through the pytest plugin.

Each scenario runs on a real socket (127.0.0.1, port 0) and on in-memory streams; the ones
about timers run in virtual time (``autojump_clock``, in-memory only).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from roomcast.engine import ConnectRefusedError, Server, Socket
from roomcast.engine.pytest_plugin import ServeFactory
from roomcast.engine.testing import HarnessTransport
from roomcast.protocol import MSGPACK_PARSER, JsonValue, Parser

TRANSPORTS: tuple[HarnessTransport, ...] = ("tcp", "memory")


def app(parser: Parser | None = None) -> Server:
    server = Server(parser=parser) if parser is not None else Server()
    admin = server.of("/admin")

    @admin.use
    async def only_admins(socket: Socket, auth: JsonValue) -> None:
        if auth != {"token": "s3cret"}:
            raise ConnectRefusedError("not allowed", {"hint": "token"})

    @server.on("echo")
    async def echo(socket: Socket, *args: JsonValue) -> tuple[JsonValue, ...]:
        return args

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)

    @server.on("say")
    async def say(socket: Socket, room: str, text: str) -> None:
        await server.to(room).emit("said", text)

    @server.on("ask-me")
    async def ask_me(socket: Socket, question: str) -> JsonValue:
        reply = await socket.call("question", question)
        return list(reply)

    return server


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("parser", ["json", "msgpack"])
async def test_our_client_and_server_talk_both_parsers(
    roomcast_serve: ServeFactory, parser: str, transport: HarnessTransport
) -> None:
    server = app(MSGPACK_PARSER if parser == "msgpack" else None)
    harness = await roomcast_serve(server, transport=transport)
    with trio.fail_after(10):
        client = await harness.connect()  # speaks the server's parser
        assert await client.call("echo", 1, "two", {"3": [True]}, b"\x00\xff") == (
            1,
            "two",
            {"3": [True]},
            b"\x00\xff",
        )

        @client.on("question")
        async def answer(question: str) -> str:
            return question.upper()

        assert await client.call("ask-me", "why") == (["WHY"],)
        await client.emit("join", "r")
        await client.call("echo")  # the join is handled before this ack
        await client.emit("say", "r", "hello")
        assert await client.receive() == ("said", ("hello",))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_our_client_sees_a_refusal_with_data_and_joins_with_auth(
    roomcast_serve: ServeFactory, transport: HarnessTransport
) -> None:
    server = app()
    harness = await roomcast_serve(server, transport=transport)
    with trio.fail_after(10):
        with pytest.raises(ConnectRefusedError) as info:
            await harness.connect("/admin", auth={"token": "no"})
        assert info.value.data == {"hint": "token"}
        client = await harness.connect("/admin", auth={"token": "s3cret"})
        assert client.sid("/admin") in server.of("/admin").sockets


async def test_a_clean_client_close_runs_the_servers_cleanup(roomcast_serve: ServeFactory) -> None:
    # Our client closes with DISCONNECT, Engine.IO CLOSE and a WebSocket close at once:
    # the server must still leave the socket's rooms and run its disconnect handlers.
    server = app()
    reasons: list[str] = []

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        reasons.append(reason)

    harness = await roomcast_serve(server)
    with trio.fail_after(10):
        async with harness.client() as client:
            await client.call("join", "r")
            sid = client.sid()
        assert sid is not None
        assert await harness.wait_disconnect(sid) == "client namespace disconnect"
        await harness.settle()
        assert reasons == ["client namespace disconnect"]
        assert server.of("/").adapter.rooms() == frozenset()
        assert server.supervisor.rooms_running == 0
        assert server.connections == {}


async def test_heartbeats_both_ways_in_virtual_time(
    autojump_clock: trio.testing.MockClock, roomcast_serve: ServeFactory
) -> None:
    harness = await roomcast_serve(app())
    with trio.fail_after(1_000):
        healthy = await harness.connect()
        silent = await harness.connect(reconnect=False)
        silent_sid = silent.sid()
        assert silent_sid is not None
        silent.faults.silence_pings()
        start = trio.current_time()
        assert await harness.wait_disconnect(silent_sid, within=60) == "ping timeout"
        assert trio.current_time() - start == pytest.approx(45.0)
        # Ten ping intervals later the healthy client is still connected, same sid.
        sid = healthy.sid()
        await trio.sleep(250.0)
        assert healthy.sid() == sid
        assert await healthy.call("echo", "alive") == ("alive",)
        assert [d.sid for d in harness.disconnects] == [silent_sid]


async def test_our_client_reconnects_and_keeps_its_handlers(
    autojump_clock: trio.testing.MockClock, roomcast_serve: ServeFactory
) -> None:
    server = app()
    harness = await roomcast_serve(server)
    with trio.fail_after(100):
        client = await harness.connect()

        @client.on("connect")
        async def rejoin() -> None:
            await client.emit("join", "r")

        await client.emit("join", "r")
        first = client.server_socket()
        await client.faults.drop()
        assert await harness.wait_disconnect(first.sid) in ("transport close", "transport error")
        second_sid = await client.wait_connected(2)
        assert second_sid != first.sid
        await client.call("echo")  # the rejoin emitted by the connect handler went first
        assert client.server_socket().rooms == {second_sid, "r"}
        await server.to("r").emit("said", "again")
        assert await client.wait_for("said") == ("again",)
