"""Connection state recovery with npm's socket.io-client (connectionStateRecovery)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from roomcast.engine import Server, Socket
from roomcast.engine.recovery import RecoveryConfig
from tests.processes import PipedProcess, open_piped

pytestmark = pytest.mark.node


@attrs.define(eq=False, kw_only=True)
class NodeClient(PipedProcess):
    """The recovery_client.mjs process: commands in, JSON lines out."""

    _buffer: bytes = b""

    async def command(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    async def next(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(65536)
            assert chunk, f"the Node client exited: {self.stderr.decode(errors='replace')}"
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        value = json.loads(line)
        assert isinstance(value, dict)
        return value


@asynccontextmanager
async def node_client(js_peers: Path, url: str) -> AsyncIterator[NodeClient]:
    async with open_piped(
        lambda process: NodeClient(process=process),
        ["node", str(js_peers / "recovery_client.mjs"), url],
    ) as client:
        yield client


def app(config: RecoveryConfig) -> tuple[Server, trio.Event]:
    server = Server(recovery=config)
    state = {"gone": trio.Event()}

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        state["gone"].set()

    return server, state["gone"]


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve, "127.0.0.1", 0)
        try:
            yield f"http://{host}:{port}"
        finally:
            nursery.cancel_scope.cancel()


async def test_socket_io_client_recovers_missed_events(js_peers: Path) -> None:
    server, gone = app(RecoveryConfig())
    with trio.fail_after(20):
        async with serving(server) as url, node_client(js_peers, url) as client:
            first = await client.next()
            assert first["event"] == "connect"
            assert first["recovered"] is False
            await client.command("join r")
            assert await client.next() == {"event": "joined", "room": "r"}
            await server.to("r").emit("m", 1)
            assert (await client.next())["args"][0] == 1
            await client.command("drop")
            # socket.io-client calls closing its own transport "forced close"; the server
            # sees the transport close.
            assert (await client.next())["event"] == "disconnect"
            await gone.wait()
            await server.to("r").emit("m", 2)
            await server.to("r").emit("m", {"three": [3]})
            await server.to("other").emit("m", "not for it")
            await client.command("reconnect")
            again = await client.next()
            assert again == {"event": "connect", "sid": first["sid"], "recovered": True}
            assert (await client.next())["args"][0] == 2
            assert (await client.next())["args"][0] == {"three": [3]}
            await server.to("r").emit("m", 4)  # still in its room
            assert (await client.next())["args"][0] == 4


async def test_socket_io_client_too_far_behind_is_not_recovered(js_peers: Path) -> None:
    server, gone = app(RecoveryConfig(max_events=2))
    with trio.fail_after(20):
        async with serving(server) as url, node_client(js_peers, url) as client:
            first = await client.next()
            await client.command("join r")
            await client.next()
            await server.to("r").emit("m", 1)
            await client.next()
            await client.command("drop")
            await client.next()
            await gone.wait()
            for i in range(5):
                await server.to("r").emit("m", i)
            await client.command("reconnect")
            again = await client.next()
            assert again["event"] == "connect"
            assert again["recovered"] is False
            assert again["sid"] != first["sid"]
