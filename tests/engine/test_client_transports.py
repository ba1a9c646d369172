"""roomcast's client against roomcast's server: long-polling, the upgrade, recovery, backoff.

In-process, through the pytest plugin's harness: on in-memory streams in virtual time
(``autojump_clock``), and on real sockets (127.0.0.1) where said.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import pytest
import trio
import trio.testing

from roomcast.engine import Config, Server, Socket
from roomcast.engine.client import Client, ClientConfig, open_client
from roomcast.engine.errors import ConnectionFailedError
from roomcast.engine.log import LogConfig
from roomcast.engine.pytest_plugin import ServeFactory
from roomcast.engine.recovery import RecoveryConfig
from roomcast.engine.testing import MEMORY_URL, HarnessTransport
from roomcast.engine.transport.eio_client import TransportName
from roomcast.protocol import JsonValue

POLLING: tuple[TransportName, ...] = ("polling",)
UPGRADING: tuple[TransportName, ...] = ("polling", "websocket")
WEBSOCKET: tuple[TransportName, ...] = ("websocket",)
Status: TypeAlias = trio.TaskStatus[tuple[str, int]]


def app(*, recovery: bool = False) -> Server:
    server = Server(recovery=RecoveryConfig()) if recovery else Server()

    @server.on("echo")
    async def echo(socket: Socket, *args: JsonValue) -> tuple[JsonValue, ...]:
        return args

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)

    @server.on("transport")
    async def transport(socket: Socket) -> JsonValue:
        return socket.connection.transport_name

    return server


async def wait_upgrade(client: Client) -> trio.Event:
    """An event set when the client's session moves to the WebSocket."""
    upgraded = trio.Event()

    @client.on_manager("upgrade")
    async def on_upgrade(transport: str) -> None:
        assert transport == "websocket"
        upgraded.set()

    await trio.lowlevel.checkpoint()
    return upgraded


@pytest.mark.parametrize("transport", ["memory", "tcp"])
@pytest.mark.parametrize("transports", [POLLING, UPGRADING], ids=["polling", "upgrade"])
async def test_polling_and_the_upgrade(
    roomcast_serve: ServeFactory,
    transport: HarnessTransport,
    transports: Sequence[TransportName],
) -> None:
    server = app()
    harness = await roomcast_serve(server, transport=transport)
    with trio.fail_after(10):
        client = await harness.connect(transports=transports)
        upgraded = await wait_upgrade(client.client)
        # Binary over polling goes base64 in the payload ("b" prefix); \x1e in a binary
        # attachment is no separator.
        payload: tuple[JsonValue, ...] = ("text", {"n": [1, 2]}, b"\x00\x1e\xff")
        assert await client.call("echo", *payload) == payload
        await client.emit("join", "r")
        await client.call("echo")
        await server.to("r").emit("said", "hello", b"\x01")
        assert await client.wait_for("said") == ("hello", b"\x01")
        if transports == UPGRADING:
            await upgraded.wait()
            assert client.client.transport == "websocket"
            # Everything after the upgrade goes over the WebSocket, in order.
            assert await client.call("transport") == ("websocket",)
            await server.to("r").emit("said", "again")
            assert await client.wait_for("said") == ("again",)
        else:
            assert client.client.transport == "polling"
            assert await client.call("transport") == ("polling",)
            assert not upgraded.is_set()


@pytest.mark.parametrize("transports", [POLLING, UPGRADING, WEBSOCKET])
async def test_text_with_the_payload_separator(
    roomcast_serve: ServeFactory, transports: Sequence[TransportName]
) -> None:
    # JSON escapes it (\u001e), so it never splits a polling payload in two.
    harness = await roomcast_serve(app())
    with trio.fail_after(10):
        client = await harness.connect(transports=transports)
        assert await client.call("echo", "a\x1eb", "\x1e") == ("a\x1eb", "\x1e")


async def test_polling_survives_many_heartbeats(
    autojump_clock: trio.testing.MockClock, roomcast_serve: ServeFactory
) -> None:
    # The server's PINGs come in answers to GETs, our PONGs go in POSTs.
    harness = await roomcast_serve(app())
    with trio.fail_after(1_000):
        client = await harness.connect(transports=POLLING, reconnect=False)
        sid = client.sid()
        await trio.sleep(300.0)  # a dozen ping intervals
        assert client.sid() == sid
        assert await client.call("echo", "alive") == ("alive",)
        assert harness.disconnects == []


@pytest.mark.parametrize("transports", [WEBSOCKET, UPGRADING], ids=["websocket", "upgrade"])
async def test_recovery_after_a_dropped_transport(
    autojump_clock: trio.testing.MockClock,
    roomcast_serve: ServeFactory,
    transports: Sequence[TransportName],
) -> None:
    server = app(recovery=True)
    harness = await roomcast_serve(server)
    with trio.fail_after(100):
        client = await harness.connect(transports=transports, reconnect_delay=5.0)
        upgraded = await wait_upgrade(client.client)
        await client.emit("join", "r")
        await client.call("echo")
        if transports == UPGRADING:
            await upgraded.wait()  # a dropped polling session is noticed only by its heartbeat
        await server.to("r").emit("m", "one")
        (text, first_offset) = await client.wait_for("m")
        assert text == "one"
        assert isinstance(first_offset, str)
        assert not client.client.recovered()
        sid = client.sid()
        assert sid is not None

        await client.faults.drop()
        assert await harness.wait_disconnect(sid) in ("transport close", "transport error")
        # Sent while the client is away (it comes back after its 5 s backoff).
        await server.to("r").emit("m", "two")
        await server.to("r").emit("m", "three")
        assert await client.wait_connected(2) == sid  # the same sid: recovered
        assert client.client.recovered()
        missed = [await client.wait_for("m"), await client.wait_for("m")]
        assert [args[0] for args in missed] == ["two", "three"]
        assert len({first_offset, missed[0][1], missed[1][1]}) == 3
        assert client.server_socket().rooms == {sid, "r"}
        # The client keeps the newest offset: a second drop misses nothing either.
        await client.faults.drop()
        await harness.wait_disconnect(sid)
        await server.to("r").emit("m", "four")
        assert await client.wait_connected(3) == sid
        assert (await client.wait_for("m"))[0] == "four"
        assert [args[0] for args in client.args("m")] == ["one", "two", "three", "four"]


async def test_without_recovery_on_the_server_nothing_is_recovered(
    autojump_clock: trio.testing.MockClock, roomcast_serve: ServeFactory
) -> None:
    harness = await roomcast_serve(app())
    with trio.fail_after(100):
        client = await harness.connect()
        sid = client.sid()
        assert sid is not None
        await client.faults.drop()
        assert await client.wait_connected(2) != sid
        assert not client.client.recovered()


async def test_backoff_events_and_the_send_buffer(
    autojump_clock: trio.testing.MockClock, roomcast_serve: ServeFactory
) -> None:
    server = app()
    harness = await roomcast_serve(server)
    said: list[JsonValue] = []

    @server.on("say")
    async def say(socket: Socket, text: JsonValue) -> None:
        said.append(text)

    with trio.fail_after(1_000):
        client = await harness.connect(reconnect_delay=1.0, reconnect_delay_max=4.0)
        events: list[tuple[str, float, tuple[JsonValue, ...]]] = []
        start = trio.current_time()

        def recorder(name: str) -> None:
            @client.client.on_manager(name)  # type: ignore[arg-type]  # a literal each time
            async def record(*args: JsonValue) -> None:
                events.append((name, trio.current_time() - start, args))

        for name in ("reconnect_attempt", "reconnect", "reconnect_error", "reconnect_failed"):
            recorder(name)
        harness.refuse_connections()
        await client.faults.drop()
        # Emits made while reconnecting wait in the send buffer, in order.
        await client.emit("say", "buffered 1")
        await client.emit("say", "buffered 2")
        await trio.sleep(10.0)
        harness.accept_connections()
        await client.wait_connected(2)
        await client.emit("say", "after")
        await client.call("echo")
        assert said == ["buffered 1", "buffered 2", "after"]
        names = [name for name, _, _ in events]
        # 1, 2, 4, 4 s: attempts at 1, 3, 7 and 11 s; the fourth gets through.
        assert names == [
            "reconnect_attempt",
            "reconnect_error",
            "reconnect_attempt",
            "reconnect_error",
            "reconnect_attempt",
            "reconnect_error",
            "reconnect_attempt",
            "reconnect",
        ]
        attempts = [(at, args) for name, at, args in events if name == "reconnect_attempt"]
        assert attempts == [(1.0, (1,)), (3.0, (2,)), (7.0, (3,)), (11.0, (4,))]
        assert events[-1][2] == (4,)


async def test_a_full_send_buffer_makes_emit_wait(
    autojump_clock: trio.testing.MockClock, roomcast_serve: ServeFactory
) -> None:
    server = app()
    said: list[JsonValue] = []

    @server.on("say")
    async def say(socket: Socket, text: JsonValue) -> None:
        said.append(text)

    @server.on("drop")
    async def drop(socket: Socket) -> None:
        socket.connection.close("forced close")

    harness = await roomcast_serve(server)

    async def memory_stream(host: str, port: int) -> trio.abc.Stream:
        return await harness.open_stream()

    config = ClientConfig(send_buffer_size=2, reconnection_delay=5.0, randomization_factor=0.0)
    with trio.fail_after(100):
        async with open_client(MEMORY_URL, config, stream_factory=memory_stream) as client:
            lost = trio.Event()

            @client.on("disconnect")
            async def on_disconnect(reason: str) -> None:
                lost.set()

            await client.emit("drop")
            await lost.wait()
            await client.emit("say", 1)  # buffered: returns at once
            await client.emit("say", 2)
            with trio.move_on_after(1.0) as waited:
                await client.emit("say", "not queued")  # the buffer is full: it waits
            assert waited.cancelled_caught  # cancelled: nothing was queued
            await client.emit("say", 3)  # waits for the reconnect, then goes after 1, 2
            assert client.connected
            await client.call("echo")
            assert said == [1, 2, 3]


@pytest.mark.parametrize("retry", [False, True])
async def test_retrying_the_first_connection(
    autojump_clock: trio.testing.MockClock, roomcast_serve: ServeFactory, retry: bool
) -> None:
    harness = await roomcast_serve(app())
    opened_at: list[float] = []

    async def memory_stream(host: str, port: int) -> trio.abc.Stream:
        return await harness.open_stream()

    config = ClientConfig(
        retry_first_connection=retry,
        reconnection_delay=1.0,
        reconnection_delay_max=4.0,
        randomization_factor=0.0,
    )

    async def connect() -> None:
        async with open_client(MEMORY_URL, config, stream_factory=memory_stream) as client:
            opened_at.append(trio.current_time())
            assert await client.call("echo", "up") == ("up",)

    harness.refuse_connections()
    start = trio.current_time()
    with trio.fail_after(100):
        if not retry:
            with pytest.raises(ConnectionFailedError):
                await connect()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connect)
            await trio.sleep(5.0)  # attempts at 1, 3 and 7 s: the third gets through
            harness.accept_connections()
        assert [at - start for at in opened_at] == [7.0]


async def test_reconnect_failed_after_the_attempts_run_out(
    autojump_clock: trio.testing.MockClock, roomcast_serve: ServeFactory
) -> None:
    harness = await roomcast_serve(app())
    with trio.fail_after(1_000):
        client = await harness.connect(max_attempts=2)
        failed = trio.Event()

        @client.client.on_manager("reconnect_failed")
        async def on_failed() -> None:
            failed.set()

        harness.refuse_connections()
        await client.faults.drop()
        await failed.wait()
        assert not client.connected


# --------------------------------------------------------------------------- a restart


async def free_port() -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = int(listeners[0].socket.getsockname()[1])
    for listener in listeners:
        await listener.aclose()
    return port


def logged_app(directory: Path) -> tuple[Server, trio.Event]:
    server = Server(
        config=Config(log=LogConfig(directory=directory, fsync="always")),
        recovery=RecoveryConfig(),
    )
    gone = trio.Event()

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)

    @server.on("drop")
    async def drop(socket: Socket) -> None:
        socket.connection.close("forced close")

    @server.on("disconnect")
    async def disconnected(socket: Socket, reason: str) -> None:
        gone.set()

    return server, gone


@pytest.mark.parametrize("transports", [WEBSOCKET, UPGRADING], ids=["websocket", "upgrade"])
async def test_backoff_and_recovery_across_a_server_restart(
    tmp_path: Path, transports: Sequence[TransportName]
) -> None:
    """Real sockets: the server stops while the client is away; attempts are refused,
    with backoff, until another server starts on the same port and event log; the client
    gets its sid, its room and the event it missed back."""
    directory = tmp_path / "log"
    port = await free_port()
    first, first_gone = logged_app(directory)
    first_scope = trio.CancelScope()
    config = ClientConfig(
        transports=transports,
        reconnection_delay=0.5,
        reconnection_delay_max=0.5,
        randomization_factor=0.0,
    )

    async def run(  # noqa: ASYNC128 - serve() calls started()
        server: Server, scope: trio.CancelScope, *, task_status: Status
    ) -> None:
        with scope:
            await server.serve("127.0.0.1", port, task_status=task_status)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(run, first, first_scope)
            async with open_client(f"http://127.0.0.1:{port}", config) as client:
                refused = trio.Event()
                reconnected = trio.Event()
                seen, got = trio.open_memory_channel[tuple[JsonValue, ...]](10)
                upgraded = await wait_upgrade(client)

                @client.on_manager("reconnect_error")
                async def on_error(message: str) -> None:
                    refused.set()

                @client.on_manager("reconnect")
                async def on_reconnect(attempt: int) -> None:
                    reconnected.set()

                @client.on("m")
                async def on_m(*args: JsonValue) -> None:
                    seen.send_nowait(args)

                await client.call("join", "r")
                if transports == UPGRADING:
                    await upgraded.wait()
                await first.to("r").emit("m", 1)
                assert (await got.receive())[0] == 1
                sid = client.sid()
                await client.emit("drop")
                await first_gone.wait()
                await first.to("r").emit("m", 2)  # missed by the client; durable in the log
                first_scope.cancel()
                await refused.wait()  # the first attempt is refused: nobody listens
                second, _ = logged_app(directory)
                await nursery.start(run, second, trio.CancelScope())
                await reconnected.wait()
                assert client.recovered()
                assert client.sid() == sid
                assert (await got.receive())[0] == 2
                await second.to("r").emit("m", 3)  # in its room again
                assert (await got.receive())[0] == 3
            nursery.cancel_scope.cancel()
