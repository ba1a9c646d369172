"""Slow consumers, embedding on a real socket, shutdown and disconnect reasons."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from roomcast.engine import Config, Server, Socket
from roomcast.protocol import JsonValue

from .conftest import WS_PATH, close_client_stream, open_memory_server


class StalledClient:
    """A client on a lockstep stream that does the handshake, joins a room, then never
    reads again: the server's writes to it block for good."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[str] = []

    async def _until_message(self) -> str:
        while not self.messages:
            data = await self.stream.receive_some(65536)
            assert data, "server closed"
            self.ws.receive_data(bytes(data))
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self.messages.append(event.data)
                else:
                    assert isinstance(event, AcceptConnection), event
        return self.messages.pop(0)

    async def start(self, room: str) -> None:
        await self.stream.send_all(self.ws.send(Request(host="localhost", target=WS_PATH)))
        assert (await self._until_message()).startswith("0")
        await self.stream.send_all(self.ws.send(TextMessage(data="40")))
        assert (await self._until_message()).startswith("40")
        await self.stream.send_all(self.ws.send(TextMessage(data=f'421["join","{room}"]')))
        assert await self._until_message() == "431[]"


async def test_slow_consumer_is_disconnected_and_the_room_keeps_receiving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = Server(config=Config(outbox_size=64))
    reasons: list[str] = []

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        reasons.append(reason)

    with trio.fail_after(60):
        async with open_memory_server(server) as srv, srv.client() as healthy:
            await healthy.connect()
            await healthy.send('421["join","room"]')
            assert await healthy.recv() == "431[]"
            client_stream, server_stream = trio.testing.lockstep_stream_pair()
            srv.nursery.start_soon(server.serve_stream, server_stream)
            stalled = StalledClient(client_stream)
            await stalled.start("room")
            assert len(server.connections) == 2
            peak = 0
            for i in range(500):
                await server.to("room").emit("tick", i)
                for conn in server.connections.values():
                    peak = max(peak, len(conn.outbox))
                if i % 20 == 0:
                    await (
                        trio.lowlevel.checkpoint()
                    )  # let the healthy writer drain, as real traffic would
            for i in range(500):
                assert await healthy.recv() == f'42["tick",{i}]'
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(server.config.close_grace * 3)
            assert reasons == ["slow consumer"]
            assert len(server.connections) == 1
            # Memory stayed bounded: no outbox ever held more than its bound.
            assert peak <= server.config.outbox_size


async def test_volatile_emits_are_dropped_for_a_backed_up_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = Server(config=Config(outbox_size=64, volatile_backlog=8))
    with trio.fail_after(60):
        async with open_memory_server(server) as srv:
            client_stream, server_stream = trio.testing.lockstep_stream_pair()
            srv.nursery.start_soon(server.serve_stream, server_stream)

            @server.on("join")
            async def join(socket: Socket, room: str) -> None:
                await socket.join(room)

            stalled = StalledClient(client_stream)
            await stalled.start("r")
            (conn,) = server.connections.values()
            delivered = [await server.to("r").volatile.emit("v", i) for i in range(40)]
            assert sum(delivered) < 40  # some were dropped rather than queued
            assert len(conn.outbox) <= 8 + 1
            assert not conn.closed  # volatile drops never evict


async def test_embedding_serves_on_a_real_socket_and_shuts_down_cleanly() -> None:
    server = Server()
    reasons: list[str] = []

    @server.on("echo")
    async def echo(socket: Socket, value: JsonValue) -> JsonValue:
        return value

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        reasons.append(reason)

    server_scope = trio.CancelScope()

    async def run_server(  # noqa: ASYNC128 - serve() calls started()
        *, task_status: trio.TaskStatus[tuple[str, int]]
    ) -> None:
        with server_scope:
            await server.serve("127.0.0.1", 0, task_status=task_status)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(run_server)
            assert host == "127.0.0.1"
            assert port > 0
            async with trio_websocket.open_websocket_url(f"ws://{host}:{port}{WS_PATH}") as ws:
                assert str(await ws.get_message()).startswith("0")
                await ws.send_message("40")
                assert str(await ws.get_message()).startswith("40")
                await ws.send_message('421["echo",{"a":[1,2]}]')
                assert await ws.get_message() == '431[{"a":[1,2]}]'
                server_scope.cancel()
                with pytest.raises(trio_websocket.ConnectionClosed) as info:
                    await ws.get_message()
                assert info.value.reason is not None
                assert info.value.reason.code == 1001
                assert info.value.reason.reason == "server shutting down"
                await close_client_stream(ws)
    assert reasons == ["server shutting down"]
    assert server.connections == {}


async def test_transport_close_and_client_close_packet_reasons() -> None:
    server = Server()
    reasons: list[str] = []

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        reasons.append(reason)

    with trio.fail_after(10):
        async with open_memory_server(server) as srv:
            async with srv.client() as client:
                await client.connect()
            await trio.testing.wait_all_tasks_blocked()
            async with srv.client() as client:
                await client.connect()
                await client.send("1")  # Engine.IO CLOSE
                await client.closed()
            await trio.testing.wait_all_tasks_blocked()
    assert reasons == ["transport close", "transport close"]


async def test_healthz_and_bad_requests_get_http_answers() -> None:
    server = Server()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve, "127.0.0.1", 0)

            async def get(target: str, extra: str = "") -> bytes:
                stream = await trio.open_tcp_stream(host, port)
                async with stream:
                    await stream.send_all(
                        f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        f"{extra}\r\n".encode()
                    )
                    data = b""
                    while chunk := await stream.receive_some(65536):
                        data += chunk
                    return data

            assert (await get("/healthz")).startswith(b"HTTP/1.1 200")
            assert (await get("/nope")).startswith(b"HTTP/1.1 404")
            assert (await get("/socket.io/?EIO=3&transport=websocket")).startswith(b"HTTP/1.1 400")
            assert (await get("/socket.io/?EIO=4&transport=abc")).startswith(b"HTTP/1.1 400")
            assert (await get("/socket.io/?EIO=4")).startswith(b"HTTP/1.1 400")
            huge = "X-Pad: " + "a" * 20_000 + "\r\n"
            assert (await get("/healthz", huge)).startswith(b"HTTP/1.1 431")
            nursery.cancel_scope.cancel()


async def test_disconnect_right_before_the_close_frame_is_handled_in_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A DISCONNECT in the same write as the close frame is not lost, and the disconnect
    handler it triggers runs to its end (it is not cancelled by the close)."""
    server = Server()
    finished: list[str] = []

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        await trio.sleep(0.5)  # a handler that awaits (a database write, say)
        finished.append(reason)

    with trio.fail_after(30):
        async with open_memory_server(server) as srv:
            client_stream, server_stream = trio.testing.memory_stream_pair()
            srv.nursery.start_soon(server.serve_stream, server_stream)
            client = StalledClient(client_stream)
            await client.stream.send_all(client.ws.send(Request(host="localhost", target=WS_PATH)))
            assert (await client._until_message()).startswith("0")
            await client.stream.send_all(client.ws.send(TextMessage(data="40")))
            assert (await client._until_message()).startswith("40")
            await client.stream.send_all(
                client.ws.send(TextMessage(data="41")) + client.ws.send(CloseConnection(code=1000))
            )
            await trio.sleep(5)
    assert finished == ["client namespace disconnect"]
