"""A live roomcast server on 127.0.0.1 for the hostile-input tests.

Every test gets a fresh server (``live``); when the test is over, the fixture checks
that the server survived it: a new client connects, joins ``/`` and gets an echo, every
connection the test opened is finished, no task leaked, and the process's memory grew by
less than ``MEMORY_BOUND_BYTES`` over the test.
"""

from __future__ import annotations

import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import attrs
import msgpack
import pytest
import trio
import trio.testing

from roomcast.engine import Config, Server, Socket
from roomcast.protocol import JSON_PARSER, MSGPACK_PARSER, JsonValue, Parser

from .wire import open_socketio

MEMORY_BOUND_BYTES: Final = 256 * 1024 * 1024
"""How much the test process's peak RSS may grow during one hostile test."""


def hostile_config(**changes: object) -> Config:
    """The shipped limits with short timers (made per test, so that the event log goes
    to the test's temporary directory: see tests/conftest.py)."""
    base = Config(
        ping_interval=25.0,
        ping_timeout=20.0,
        request_header_timeout=1.0,
        request_body_timeout=1.0,
        websocket_handshake_timeout=1.0,
        attachment_timeout=0.5,
        close_grace=1.0,
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]  # attrs checks them


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """The process's resident set size now."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize()


def task_count() -> int:
    """How many Trio tasks exist in this run."""

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return count(root)


def build_server(config: Config | None = None, parser: Parser = JSON_PARSER) -> Server:
    """The app under attack: ``echo`` answers its arguments; ``join``/``say`` use rooms.

    Disconnect reasons are kept in ``server.of("/").data`` ... (see ``reasons``).
    """
    server = Server(config=config or hostile_config(), parser=parser)

    @server.on("echo")
    async def echo(socket: Socket, *args: JsonValue) -> tuple[JsonValue, ...]:
        await trio.lowlevel.checkpoint()
        return args

    @server.on("join")
    async def join(socket: Socket, room: JsonValue) -> bool:
        await socket.join(str(room))
        return True

    @server.on("say")
    async def say(socket: Socket, room: JsonValue, text: JsonValue) -> int:
        return await server.to(str(room)).emit("said", text)

    return server


@attrs.define(eq=False)
class Live:
    """A server on a real socket, and what its sockets' disconnect handlers saw."""

    server: Server
    host: str
    port: int
    reasons: list[str]

    async def check_healthy(self) -> None:
        """A fresh client connects, joins ``/`` and gets an echo back."""
        if self.server.parser is MSGPACK_PARSER:
            ws = await open_socketio(self.host, self.port, connect=False)
            await ws.send(msgpack.packb({"type": 0, "nsp": "/"}))
            accepted = await ws.receive_message()
            assert isinstance(accepted, bytes)
            assert msgpack.unpackb(accepted)["type"] == 0
            event = {"type": 2, "nsp": "/", "id": 17, "data": ["echo", "still here"]}
            await ws.send(msgpack.packb(event))
            answer = {"type": 3, "nsp": "/", "id": 17, "data": ["still here"]}
            reply = await ws.receive_message()
            assert isinstance(reply, bytes)
            assert msgpack.unpackb(reply) == answer
            await ws.aclose()
            return
        ws = await open_socketio(self.host, self.port)
        try:
            await ws.send('4217["echo","still here"]')
            assert await ws.receive_message() == '4317["still here"]'
        finally:
            await ws.aclose()

    async def drained(self) -> None:
        """Wait until every connection the server has is finished (fails after 5 s)."""
        with trio.fail_after(5):
            for conn in list(self.server.connections.values()):
                await conn.finished.wait()
        assert not self.server.connections


@asynccontextmanager
async def serve_live(server: Server) -> AsyncIterator[Live]:
    """Serve ``server`` on 127.0.0.1 for the block, then check it is still healthy."""
    reasons: list[str] = []

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        reasons.append(reason)
        await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve, "127.0.0.1", 0)
        tasks = task_count()
        peak = peak_rss_bytes()
        live = Live(server=server, host=host, port=port, reasons=reasons)
        yield live
        with trio.fail_after(10):
            await live.drained()
            await live.check_healthy()
            await live.drained()
        # Tasks may still be unwinding from the last close: wait for quiet, then count.
        await trio.testing.wait_all_tasks_blocked(0.05)
        assert task_count() <= tasks, "tasks leaked"
        grown = peak_rss_bytes() - peak
        assert grown < MEMORY_BOUND_BYTES, f"peak RSS grew by {grown / 2**20:.0f} MiB"
        nursery.cancel_scope.cancel()


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    """A fresh server with ``HOSTILE_CONFIG`` and the JSON parser."""
    async with serve_live(build_server()) as live:
        yield live
