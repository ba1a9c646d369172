"""Deliveries written straight to an idle connection's socket (``Outbox.direct``).

A room hands a frame to a recipient whose writer is parked with nothing queued: the
frame is written at once, without waking the writer. What the socket cannot take now
(a full send buffer) is queued first for the writer, so the peer gets every frame,
whole and in order, whatever mix of direct and queued writes carried them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import BytesMessage, CloseConnection, Request, TextMessage

from roomcast.engine import Config, Server, Socket
from roomcast.engine.actors.outbox import Offer, Outbox
from roomcast.engine.errors import TransportClosed
from roomcast.engine.transport.frames import OutFrame, SharedFrame
from roomcast.engine.transport.websocket import WebSocketTransport, accept_websocket
from roomcast.protocol import JsonValue

WS_PATH = "/socket.io/?EIO=4&transport=websocket"


def test_offer_writes_directly_only_when_the_writer_is_idle() -> None:
    written: list[tuple[OutFrame, ...]] = []

    def direct(frames: tuple[OutFrame, ...]) -> bytes | None:
        written.append(frames)
        return b""

    outbox = Outbox(max_frames=4)
    outbox.direct = direct
    # No writer parked: the frames are queued (the writer may be about to write).
    assert outbox.offer(("a",)) is Offer.QUEUED
    assert written == []
    assert outbox.take(10) == ["a"]


async def test_a_parked_writer_is_bypassed_and_a_remainder_goes_first() -> None:
    written: list[tuple[OutFrame, ...]] = []
    rest: list[bytes | None] = [b"", b"tail", None]

    def direct(frames: tuple[OutFrame, ...]) -> bytes | None:
        written.append(frames)
        return rest.pop(0)

    outbox = Outbox(max_frames=4)
    outbox.direct = direct
    taken: list[list[OutFrame]] = []
    async with trio.open_nursery() as nursery:

        async def writer() -> None:
            taken.append(await outbox.receive_batch(10))

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert outbox.offer(("one",)) is Offer.QUEUED  # written whole: nothing queued
        assert len(outbox) == 0
        assert outbox.offer(("two",)) is Offer.QUEUED  # partly written: the rest queued
        assert outbox.offer(("three",)) is Offer.QUEUED  # writer woken: queued behind
    assert written == [("one",), ("two",)]
    (batch,) = taken
    assert len(batch) == 2
    first, second = batch
    assert isinstance(first, SharedFrame)
    assert first.wire == b"tail"
    assert second == "three"


async def _socket_transport() -> tuple[WebSocketTransport, socket.socket, WSConnection]:
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    peer = WSConnection(ConnectionType.CLIENT)
    head = peer.send(Request(host="x", target="/"))
    transport = await accept_websocket(stream, head, max_message_bytes=1 << 20)
    theirs.setblocking(True)
    peer.receive_data(theirs.recv(65_536))  # the handshake's answer
    list(peer.events())
    return transport, theirs, peer


async def test_direct_and_queued_writes_reach_the_peer_whole_and_in_order() -> None:
    transport, theirs, peer = await _socket_transport()
    outbox = Outbox(max_frames=10_000)
    sent: list[str | bytes] = []
    received: list[str | bytes] = []

    direct_writes: list[int] = []

    def send_now(frames: tuple[OutFrame, ...]) -> bytes | None:
        rest = transport.send_now(frames)
        direct_writes.append(-1 if rest is None else len(rest))
        return rest

    async def write_loop() -> None:
        outbox.direct = send_now
        try:
            while True:
                await transport.send(await outbox.receive_batch(64))
        except trio.EndOfChannel:
            pass
        finally:
            outbox.direct = None

    def read_all() -> None:
        theirs.settimeout(10)
        text, binary = "", b""
        while len(received) < len(sent):
            data = theirs.recv(65_536)
            assert data, "closed early"
            peer.receive_data(data)
            for event in peer.events():  # (wsproto hands out a message in pieces)
                if isinstance(event, TextMessage):
                    text += event.data
                    if event.message_finished:
                        received.append(text)
                        text = ""
                elif isinstance(event, BytesMessage):
                    binary += event.data
                    if event.message_finished:
                        received.append(binary)
                        binary = b""

    shared = SharedFrame(eio="4" + "s" * 300)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_loop)
        await trio.testing.wait_all_tasks_blocked()
        for n in range(400):  # far more than the socket buffers hold: partial writes
            frame: OutFrame = shared if n % 7 == 0 else f"4{n}:" + "x" * (n % 50) * 20
            if n % 11 == 0:
                frame = bytes([n % 256]) * 700
            assert outbox.offer((frame,)) is Offer.QUEUED
            sent.append(frame.eio if isinstance(frame, SharedFrame) else frame)
            if n % 50 == 0:
                await trio.lowlevel.checkpoint()  # let the writer run now and then
        outbox.close()
        await trio.to_thread.run_sync(read_all)
    assert received == sent
    assert 0 in direct_writes  # some went whole, directly
    assert any(n > 0 for n in direct_writes)  # and some only partly (the rest queued)
    theirs.close()
    await transport.stream.aclose()


async def test_nothing_follows_a_close_frame() -> None:
    client, server = trio.testing.memory_stream_pair()
    peer = WSConnection(ConnectionType.CLIENT)
    head = peer.send(Request(host="x", target="/"))
    transport = await accept_websocket(server, head, max_message_bytes=1 << 20)
    peer.receive_data(bytes(await client.receive_some()))
    list(peer.events())
    # The peer closes; the transport queues its answer (a close frame) for the writer.
    await client.send_all(peer.send(CloseConnection(code=1000)))
    with pytest.raises(TransportClosed):
        await transport.receive_message()
    assert transport.send_now(("4late",)) is None  # closing: not written directly
    await transport.send(["4queued before the close"])
    await transport.send(["4after the close"])  # dropped
    await transport.aclose()
    wire = b""
    while chunk := await client.receive_some():
        wire += chunk
    peer.receive_data(wire)
    events = list(peer.events())
    assert isinstance(events[0], TextMessage)
    assert events[0].data == "4queued before the close"
    assert [type(e) for e in events[1:]] == [CloseConnection]


async def test_a_held_outbox_queues_for_the_writer_instead_of_writing_directly() -> None:
    written: list[tuple[OutFrame, ...]] = []

    def direct(frames: tuple[OutFrame, ...]) -> bytes | None:
        written.append(frames)
        return b""

    outbox = Outbox(max_frames=4)
    outbox.direct = direct
    taken: list[list[OutFrame]] = []
    async with trio.open_nursery() as nursery:

        async def writer() -> None:
            taken.append(await outbox.receive_batch(10))

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        outbox.hold(True)
        assert outbox.offer(("a",)) is Offer.QUEUED
        assert outbox.offer(("b",)) is Offer.QUEUED
        outbox.hold(False)
    assert written == []
    assert taken == [["a", "b"]]  # woken once, both in one batch
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert outbox.offer(("c",)) is Offer.QUEUED  # released: direct again
        outbox.kick()
    assert written == [("c",)]


async def test_the_acks_of_one_read_go_out_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(config=Config())

    @server.on("echo")
    async def echo(socket: Socket, value: JsonValue) -> tuple[JsonValue, ...]:
        return (value,)

    acks_per_write: list[int] = []
    send_now, send = WebSocketTransport.send_now, WebSocketTransport.send
    write_nowait = WebSocketTransport.write_nowait

    def acks(frames: Iterable[OutFrame]) -> int:
        return sum(isinstance(f, str) and f.startswith("43") for f in frames)

    def spy_send_now(self: WebSocketTransport, frames: tuple[OutFrame, ...]) -> bytes | None:
        acks_per_write.append(acks(frames))
        return send_now(self, frames)

    async def spy_send(self: WebSocketTransport, frames: list[OutFrame]) -> None:
        acks_per_write.append(acks(frames))
        await send(self, frames)

    def spy_write_nowait(self: WebSocketTransport, frames: list[OutFrame]) -> bool:
        acks_per_write.append(acks(frames))
        return write_nowait(self, frames)

    # (The writer task sends with ``send``; the reactor's writes are ``write_nowait``.)
    monkeypatch.setattr(WebSocketTransport, "send_now", spy_send_now)
    monkeypatch.setattr(WebSocketTransport, "send", spy_send)
    monkeypatch.setattr(WebSocketTransport, "write_nowait", spy_write_nowait)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve, "127.0.0.1", 0)
            stream = await trio.open_tcp_stream(host, port)
            peer = WSConnection(ConnectionType.CLIENT)
            await stream.send_all(peer.send(Request(host=host, target=WS_PATH)))
            texts: list[str] = []

            async def receive(count: int) -> None:
                while len(texts) < count:
                    peer.receive_data(await stream.receive_some())
                    texts.extend(e.data for e in peer.events() if isinstance(e, TextMessage))

            await receive(1)  # the Engine.IO open packet
            await stream.send_all(peer.send(TextMessage(data="40")))
            await receive(2)
            # Three calls in one TCP write: the server reads them in one read.
            calls = [peer.send(TextMessage(data=f'42{n}["echo",{n}]')) for n in range(3)]
            await stream.send_all(b"".join(calls))
            await receive(5)
            assert texts[2:] == ["430[0]", "431[1]", "432[2]"]
            assert [n for n in acks_per_write if n] == [3]
            await stream.aclose()
            nursery.cancel_scope.cancel()
