"""WebSockets on plain TCP sockets are served by the supervisor's epoll reactor.

One task reads and writes for all of them; each connection keeps one task of its own,
its handler runner. These tests drive the reactor path through real sockets: its task
count, the backpressure on a client that sends faster than its handlers run, a client
that does not read (the kernel pushes back on writes), and a failure confined to one
connection.
"""

from __future__ import annotations

import json
import socket

import pytest
import trio
import trio.testing
from wsproto import ConnectionType
from wsproto.connection import Connection as WsConnection
from wsproto.events import TextMessage

from roomcast.engine import Config, Server, Socket
from roomcast.engine.actors.connection import Connection
from roomcast.engine.transport.frames import OutFrame
from roomcast.engine.transport.reactor import Reactor
from roomcast.engine.transport.websocket import WebSocketTransport
from roomcast.protocol import JsonValue
from tests.hostile.conftest import task_count
from tests.hostile.wire import RawWebSocket, open_socketio

pytestmark = pytest.mark.skipif(not Reactor.available(), reason="epoll only (Linux)")


async def _serve(server: Server, nursery: trio.Nursery) -> tuple[str, int]:
    host, port = await nursery.start(server.serve, "127.0.0.1", 0)
    return host, port


def _with_echo(server: Server) -> None:
    """An "echo" handler that answers the ack with its argument."""

    @server.on("echo")
    async def echo(socket: Socket, value: JsonValue) -> tuple[JsonValue, ...]:
        return (value,)


def _only_connection(server: Server) -> Connection:
    (conn,) = server.connections.values()
    return conn


async def test_each_websocket_costs_one_task_and_the_reactor_serves_it() -> None:
    server = Server(config=Config())

    _with_echo(server)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            host, port = await _serve(server, nursery)
            await trio.testing.wait_all_tasks_blocked()
            before = task_count()
            clients: list[RawWebSocket] = [await open_socketio(host, port) for _ in range(20)]
            await trio.testing.wait_all_tasks_blocked()
            assert task_count() - before == 20  # one task per connection
            reactor = server.supervisor.reactor
            assert reactor is not None
            assert len(reactor) == 20
            for n, client in enumerate(clients):
                await client.send(f'42{n}["echo",{n}]')
            for n, client in enumerate(clients):
                assert await client.receive_message() == f"43{n}[{n}]"
            for client in clients:
                await client.aclose()
            for conn in list(server.connections.values()):
                await conn.finished.wait()
            assert len(reactor) == 0  # every socket left the reactor before it closed
            nursery.cancel_scope.cancel()


async def test_a_client_faster_than_its_handlers_is_paused_and_loses_nothing() -> None:
    server = Server(config=Config(handler_queue_size=2, max_events_per_second=0))
    release = trio.Event()
    seen: list[int] = []
    counted = {50: trio.Event(), 51: trio.Event()}

    @server.on("work")
    async def work(socket: Socket, n: int) -> None:
        await release.wait()
        seen.append(n)
        if len(seen) in counted:
            counted[len(seen)].set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            host, port = await _serve(server, nursery)
            client = await open_socketio(host, port)
            # 50 events in one write: 1 runs, 2 wait in the queue, the rest overflow.
            await client.send_raw(
                b"".join(client.ws.send(TextMessage(data=f'42["work",{n}]')) for n in range(50))
            )
            await trio.testing.wait_all_tasks_blocked()
            conn = _only_connection(server)
            reactor = server.supervisor.reactor
            assert reactor is not None
            fd = conn.transport.nonblocking().fileno()  # type: ignore[union-attr]
            assert reactor._masks[fd] == 0  # not reading while work overflows
            release.set()
            await counted[50].wait()
            assert seen == list(range(50))
            assert reactor._masks[fd] != 0  # reading again
            await client.send('421["work",50]')
            await counted[51].wait()
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_a_client_that_does_not_read_gets_every_frame_in_order_when_it_does() -> None:
    server = Server(config=Config(outbox_size=100_000))
    payload = "x" * 60_000

    @server.on("flood")
    async def flood(socket: Socket, count: int) -> None:
        for n in range(count):
            await socket.emit("chunk", n, payload)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            host, port = await _serve(server, nursery)
            client = await open_socketio(host, port)
            await client.send('42["flood",300]')  # 18 MB: far more than socket buffers
            conn = _only_connection(server)
            transport = conn.transport.nonblocking()  # type: ignore[union-attr]
            assert transport is not None
            await trio.testing.wait_all_tasks_blocked()
            assert transport.write_blocked
            assert len(conn.outbox) > 0  # the rest waits under the outbox's bound
            for n in range(300):
                message = await client.receive_message()
                assert isinstance(message, str)
                assert json.loads(message[2:]) == ["chunk", n, payload]
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_a_slow_consumer_is_evicted_by_the_outbox_bound() -> None:
    server = Server(config=Config(outbox_size=16))
    reasons: list[str] = []
    payload = "x" * 60_000

    @server.on("flood")
    async def flood(socket: Socket, count: int) -> None:
        for n in range(count):
            await socket.emit("chunk", n, payload)

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        reasons.append(reason)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            host, port = await _serve(server, nursery)
            client = await open_socketio(host, port)
            await client.send('42["flood",1000]')
            conn = _only_connection(server)
            await conn.finished.wait()
            assert conn.close_reason == "slow consumer"
            assert reasons == ["slow consumer"]
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_a_failure_while_serving_one_connection_closes_only_that_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = Server(config=Config())

    _with_echo(server)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            host, port = await _serve(server, nursery)
            doomed = await open_socketio(host, port)
            (victim,) = server.connections.values()
            healthy = await open_socketio(host, port)

            on_readable = Connection.on_readable

            def broken(conn: Connection, now: float) -> None:
                if conn is victim:
                    raise RuntimeError("a bug in reading")
                on_readable(conn, now)

            monkeypatch.setattr(Connection, "on_readable", broken)
            await doomed.send('421["echo",1]')
            await victim.finished.wait()
            assert victim.close_reason == "transport error"
            await healthy.send('422["echo",2]')
            assert await healthy.receive_message() == "432[2]"
            await doomed.aclose()
            await healthy.aclose()
            nursery.cancel_scope.cancel()


async def test_a_silent_client_s_socket_is_closed_at_the_ping_timeout_before_the_cleanup() -> None:
    server = Server(config=Config(ping_interval=0.2, ping_timeout=0.2))
    cleanup_may_end = trio.Event()
    in_cleanup = trio.Event()

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        assert reason == "ping timeout"
        in_cleanup.set()
        await cleanup_may_end.wait()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            host, port = await _serve(server, nursery)
            client = await open_socketio(host, port)  # connected; it never answers a ping
            conn = _only_connection(server)
            messages, closed = await client.receive_until_closed()
            assert messages == ["2"]  # the one ping it did not answer
            assert closed.code == 1000
            assert closed.reason == "ping timeout"
            # The client saw the end while the server's cleanup still runs.
            await in_cleanup.wait()
            assert not conn.finished.is_set()
            cleanup_may_end.set()
            await conn.finished.wait()
            reactor = server.supervisor.reactor
            assert reactor is not None
            assert len(reactor) == 0
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_what_handler_runners_send_is_written_after_their_pass_by_the_flusher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each runner holds its outbox while it works; the reactor's flusher then writes
    # every connection's frames back to back, each connection's in one write.
    server = Server(config=Config())
    writes: list[tuple[str, int]] = []
    write_nowait = WebSocketTransport.write_nowait

    def recording(self: WebSocketTransport, frames: list[OutFrame]) -> bool:
        if frames:
            writes.append((trio.lowlevel.current_task().name, len(frames)))
        return write_nowait(self, frames)

    _with_echo(server)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            host, port = await _serve(server, nursery)
            one, two = await open_socketio(host, port), await open_socketio(host, port)
            await trio.testing.wait_all_tasks_blocked()
            monkeypatch.setattr(WebSocketTransport, "write_nowait", recording)
            await one.send('421["echo",1]')
            await two.send_raw(
                b"".join(two.ws.send(TextMessage(data=f'42{n}["echo",{n}]')) for n in range(2, 5))
            )
            assert await one.receive_message() == "431[1]"
            for n in range(2, 5):
                assert await two.receive_message() == f"43{n}[{n}]"
            assert sorted(count for _, count in writes) == [1, 3]
            assert all(name.endswith("_flush_loop") for name, _ in writes), writes
            await one.aclose()
            await two.aclose()
            nursery.cancel_scope.cancel()


async def test_the_sockets_ready_in_one_pass_are_read_at_the_same_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The reactor reads the clock once a pass: the time a message arrived (a pong, for
    # the heartbeat) is not pushed back by the sockets served before its own.
    reactor = Reactor()
    seen: list[float] = []
    all_read = trio.Event()

    class Client:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def on_readable(self, now: float) -> None:
            seen.append(now)
            self.sock.recv(16)
            autojump_clock.jump(1.0)  # (serving this socket took a second)
            if len(seen) == 3:
                all_read.set()

        def on_writable(self) -> None:
            raise AssertionError("not asked for")

        def flush_held(self) -> None:
            raise AssertionError("not asked for")

        def on_reactor_error(self) -> None:
            raise AssertionError("nothing failed")

    pairs = [socket.socketpair() for _ in range(3)]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(reactor.run)
            for ours, _ in pairs:
                reactor.register(ours.fileno(), Client(ours))
            for _, theirs in pairs:
                theirs.send(b"x")
            await all_read.wait()
            for ours, _ in pairs:
                reactor.unregister(ours.fileno())
            nursery.cancel_scope.cancel()
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
    assert len(set(seen)) == 1


async def test_silent_clients_due_together_all_see_the_close_before_any_is_closed(
    mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Drops come in bursts (clients connected together go silent together): each one's
    # close frame goes out first, the bookkeeping of the closes once all have.
    server = Server(config=Config(ping_interval=10, ping_timeout=5))
    order: list[str] = []
    close_nowait = WebSocketTransport.close_nowait
    close = Connection.close

    def frame(self: WebSocketTransport, code: int, reason: str) -> None:
        order.append(f"frame: {reason}")
        close_nowait(self, code, reason)

    def closing(self: Connection, reason: str) -> None:
        if self.close_reason is None:
            order.append(f"close: {reason}")
        close(self, reason)

    monkeypatch.setattr(WebSocketTransport, "close_nowait", frame)
    monkeypatch.setattr(Connection, "close", closing)
    # Time stands still but when the test moves it (or nothing happens for a while of
    # real time): the three connect at the same time, so are due together.
    mock_clock.autojump_threshold = 0.5
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            host, port = await _serve(server, nursery)
            clients = [await open_socketio(host, port) for _ in range(3)]
            mock_clock.jump(10)
            for client in clients:
                assert await client.receive_message() == "2"  # the ping none answers
            mock_clock.jump(5)
            for client in clients:
                messages, closed = await client.receive_until_closed()
                assert messages == []
                assert (closed.code, closed.reason) == (1000, "ping timeout")
            for conn in list(server.connections.values()):
                await conn.finished.wait()
            for client in clients:
                await client.aclose()
            nursery.cancel_scope.cancel()
    assert order == ["frame: ping timeout"] * 3 + ["close: ping timeout"] * 3


def _transport_on_socketpair() -> tuple[WebSocketTransport, socket.socket]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    transport = WebSocketTransport(
        stream=trio.SocketStream(trio.socket.from_stdlib_socket(ours)),
        ws=WsConnection(ConnectionType.SERVER),
        max_message_bytes=1 << 20,
    )
    return transport, peer


def _drain(peer: socket.socket) -> tuple[bytes, bool]:
    """What the peer can read now, and whether the stream ended."""
    data = b""
    while True:
        try:
            chunk = peer.recv(1 << 16)
        except BlockingIOError:
            return data, False
        if not chunk:
            return data, True
        data += chunk


async def test_close_nowait_leaves_the_socket_open_when_the_close_frame_went() -> None:
    # The frame tells the peer; the descriptor is released after the server's cleanup.
    transport, peer = _transport_on_socketpair()
    with peer:
        transport.close_nowait(1000, "ping timeout")
        data, ended = _drain(peer)
        assert data == b"\x88\x0e\x03\xe8ping timeout"
        assert not ended
        await transport.aclose()
        assert _drain(peer) == (b"", True)


async def test_close_nowait_shuts_the_socket_down_when_the_close_frame_cannot_go() -> None:
    # A peer that stopped reading (the kernel pushed back): it sees the end all the same.
    transport, peer = _transport_on_socketpair()
    with peer:
        big = "x" * 60_000
        while transport.write_nowait([big]):
            pass
        assert transport.write_blocked
        transport.close_nowait(1000, "ping timeout")
        data, ended = b"", False
        while not ended:
            more, ended = _drain(peer)
            data += more
        assert b"ping timeout" not in data  # (no close frame: it could not be written)
        await transport.aclose()
