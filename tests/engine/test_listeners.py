"""When ``on_any_outgoing`` listeners are called for broadcasts (over in-memory streams):
a broadcast with acks (``call``) reaches them per recipient; a socket a broadcast leaves
out, or a volatile event dropped for a backed-up socket, does not."""

from __future__ import annotations

import trio
import trio.testing

from roomcast.engine import Config, Server, Socket
from roomcast.engine.log import LogConfig
from roomcast.protocol import JsonValue

from .conftest import open_memory_server


def listening_server() -> tuple[Server, list[tuple[str, str, tuple[JsonValue, ...]]]]:
    server = Server(config=Config(log=LogConfig(enabled=False), volatile_backlog=1))
    seen: list[tuple[str, str, tuple[JsonValue, ...]]] = []

    @server.of("/").on_any_outgoing
    def sent(socket: Socket, event: str, args: tuple[JsonValue, ...]) -> None:
        seen.append((socket.sid, event, args))

    return server, seen


async def test_a_broadcast_call_calls_the_listener_per_recipient(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, seen = listening_server()
    with trio.fail_after(30):
        async with open_memory_server(server) as srv, srv.client() as first, srv.client() as other:
            sid = await first.connect()
            other_sid = await other.connect()
            answers: list[dict[str, tuple[JsonValue, ...]]] = []

            async def ask() -> None:
                result = await server.of("/").except_(other_sid).call("q", 1, within=5)
                answers.append(result.answers)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                frame = await first.recv()
                assert isinstance(frame, str)
                assert frame.startswith("42")
                assert frame.endswith('["q",1]')
                ack_id = frame[2 : frame.index("[")]
                await first.send(f'43{ack_id}["a"]')
    assert answers == [{sid: ("a",)}]
    assert seen == [(sid, "q", (1,))]  # the socket left out was not "sent" anything


async def test_a_dropped_volatile_event_is_not_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With ``volatile_backlog=1`` a volatile emit to a socket whose outbox already holds
    a frame is dropped for it and not reported; a regular emit after it is."""
    server, seen = listening_server()
    with trio.fail_after(30):
        async with open_memory_server(server) as srv, srv.client() as client:
            sid = await client.connect()
            ns = server.of("/")
            ns.sockets[sid].connection.outbox.send_nowait("4held")  # a backlog of one
            assert await ns.volatile.emit("dropped") == 0
            assert await ns.emit("kept") == 1
            assert await client.recv() == "4held"
            assert await client.recv() == '42["kept"]'
    assert seen == [(sid, "kept", ())]
