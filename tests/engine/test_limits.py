"""Per-connection limits: each hit has a defined outcome and affects only the offender."""

from __future__ import annotations

import pytest
import trio
import trio.testing
import trio_websocket

from roomcast.engine import Config, Server, Socket
from roomcast.protocol import JsonValue

from .conftest import WS_PATH, close_client_stream, open_memory_server


def echo_server(config: Config) -> tuple[Server, list[str]]:
    server = Server(config=config)
    reasons: list[str] = []

    @server.on("echo")
    async def echo(socket: Socket, value: JsonValue) -> JsonValue:
        return value

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        reasons.append(reason)

    return server, reasons


async def test_rate_limit_disconnects_the_flooder_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, reasons = echo_server(Config(max_events_per_second=10, max_events_burst=20))
    with trio.fail_after(30):
        async with open_memory_server(server) as srv, srv.client() as calm:
            await calm.connect()
            async with srv.client() as flooder:
                await flooder.connect()
                for i in range(100):
                    try:
                        await flooder.send(f'42["echo",{i}]')
                    except trio_websocket.ConnectionClosed:
                        break
                await flooder.closed()
            assert reasons == ["rate limit exceeded"]
            # A sustained rate under the limit is fine.
            for i in range(30):
                await calm.send(f'42{i}["echo",{i}]')
                assert await calm.recv() == f"43{i}[{i}]"
                await trio.sleep(0.2)
            assert reasons == ["rate limit exceeded"]


async def test_attachments_that_never_come_close_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, reasons = echo_server(Config(attachment_timeout=5.0))
    with trio.fail_after(30):
        async with open_memory_server(server) as srv, srv.client() as client:
            await client.connect()
            start = trio.current_time()
            await client.send('451-["echo",{"_placeholder":true,"num":0}]')
            await client.closed()
            assert trio.current_time() - start == pytest.approx(5.0, abs=0.1)
            assert reasons == ["attachment timeout"]


async def test_attachments_that_arrive_in_time_clear_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, reasons = echo_server(Config(attachment_timeout=5.0))
    with trio.fail_after(30):
        async with open_memory_server(server) as srv, srv.client() as client:
            await client.connect()
            await client.send('451-17["echo",{"_placeholder":true,"num":0}]')
            await trio.sleep(4)
            await client.send(b"\x00\x01")
            assert await client.recv() == '461-17[{"_placeholder":true,"num":0}]'
            assert await client.recv() == b"\x00\x01"
            await trio.sleep(10)
            await client.send('42["echo",1]')
            assert reasons == []


async def raw_upgrade(host: str, port: int) -> bytes:
    """Send a WebSocket upgrade request by hand; return the status line and headers."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(
            f"GET {WS_PATH} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
        return data


async def test_connection_limits_answer_503_and_free_up() -> None:
    server, _ = echo_server(Config(max_connections=10, max_connections_per_address=2))
    gone = trio.Event()

    @server.on("disconnect")
    async def released(socket: Socket, reason: str) -> None:
        gone.set()

    url_path = WS_PATH
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve, "127.0.0.1", 0)
            url = f"ws://{host}:{port}{url_path}"
            first = await trio_websocket.connect_websocket_url(nursery, url)
            assert str(await first.get_message()).startswith("0")
            await first.send_message("40")
            assert str(await first.get_message()).startswith("40")
            second = await trio_websocket.connect_websocket_url(nursery, url)
            assert (await raw_upgrade(host, port)).startswith(b"HTTP/1.1 503 ")
            await first.aclose()
            await close_client_stream(first)
            await gone.wait()
            third = await trio_websocket.connect_websocket_url(nursery, url)
            assert str(await third.get_message()).startswith("0")
            for ws in (second, third):
                await ws.aclose()
                await close_client_stream(ws)
            nursery.cancel_scope.cancel()


async def test_a_polling_body_sent_too_slowly_gets_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, _ = echo_server(Config(request_body_timeout=5.0))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.supervisor.run)
            client, server_end = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve_stream, server_end)
            await client.send_all(
                b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            head = b""
            while b'"maxPayload"' not in head:
                head += await client.receive_some(65536)
            sid = head.split(b'"sid":"')[1].split(b'"')[0].decode()
            await client.send_all(
                f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
                "Host: x\r\nContent-Length: 100\r\n\r\n4".encode()
            )
            for _ in range(10):  # one byte a second: never finishes the body
                await trio.sleep(1)
                try:
                    await client.send_all(b"x")
                except trio.BrokenResourceError:
                    break  # the server answered and closed
            answer = b""
            while chunk := await client.receive_some(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408 ")
            assert sid not in server.connections
            nursery.cancel_scope.cancel()
