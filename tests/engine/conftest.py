"""Helpers for the engine tests: a server on in-memory streams and a raw wire client.

``open_memory_server`` is a thin wrapper over ``roomcast.engine.testing.open_harness`` (the
pytest plugin's harness); ``RawClient`` speaks the wire format for the tests that check
exact frames. Tests that need a Socket.IO client use the plugin's fixtures directly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing
import trio_websocket

from roomcast.engine import Config, Server
from roomcast.engine.testing import Harness, open_harness

WS_PATH = "/socket.io/?EIO=4&transport=websocket"


@attrs.define(eq=False)
class RawClient:
    """Speaks the wire format directly. A pump task reads every frame; pings are answered
    at once when ``auto_pong`` (and then not shown), everything else is queued for
    ``recv``."""

    ws: trio_websocket.WebSocketConnection
    auto_pong: bool = True
    handshake: dict[str, object] = attrs.field(factory=dict)
    _send: trio.MemorySendChannel[str | bytes] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[str | bytes] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[str | bytes](10_000)

    async def pump(self) -> None:
        with self._send:
            try:
                while True:
                    frame = await self.ws.get_message()
                    if frame == "2" and self.auto_pong:
                        await self.ws.send_message("3")
                        continue
                    await self._send.send(frame)
            except trio_websocket.ConnectionClosed:
                return

    async def recv_raw(self) -> str | bytes:
        """The next frame, pings included (when not auto-answered)."""
        return await self._receive.receive()

    async def recv(self) -> str | bytes:
        """The next frame that is not a ping."""
        while True:
            frame = await self._receive.receive()
            if frame != "2":
                return frame

    async def send(self, frame: str | bytes) -> None:
        await self.ws.send_message(frame)

    async def connect(self, namespace: str = "/", auth: object = None) -> str:
        """CONNECT to ``namespace`` and return the socket id."""
        prefix = "" if namespace == "/" else f"{namespace},"
        body = "" if auth is None else json.dumps(auth, separators=(",", ":"))
        await self.send(f"40{prefix}{body}")
        reply = await self.recv()
        assert isinstance(reply, str)
        assert reply.startswith(f"40{prefix}"), reply
        sid = json.loads(reply[len(f"40{prefix}") :])["sid"]
        assert isinstance(sid, str)
        return sid

    async def closed(self) -> trio_websocket.CloseReason:
        """Wait until the server closes the WebSocket (skipping frames); its close reason."""
        async for _ in self._receive:
            pass
        reason = self.ws.closed
        assert reason is not None
        return reason


@attrs.define(eq=False)
class MemoryServer:
    """A Server whose clients connect over in-memory streams (safe with autojump_clock).

    Attributes:
        harness: The plugin's harness running the server (``harness.connect()`` makes a
            full Socket.IO client; ``harness.disconnects`` has every server disconnect).
        nursery: The harness's nursery, for tests that serve streams of their own.
    """

    harness: Harness

    @property
    def server(self) -> Server:
        return self.harness.server

    @property
    def nursery(self) -> trio.Nursery:
        return self.harness.nursery

    @asynccontextmanager
    async def client(self, *, auto_pong: bool = True) -> AsyncIterator[RawClient]:
        client_stream = await self.harness.open_stream()
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                # Its annotation says SocketStream, but any trio Stream works.
                nursery,
                client_stream,  # type: ignore[arg-type]
                "localhost",
                WS_PATH,
            )
            client = RawClient(ws=ws, auto_pong=auto_pong)
            first = await ws.get_message()
            assert isinstance(first, str)
            assert first.startswith("0"), first
            client.handshake = json.loads(first[1:])
            nursery.start_soon(client.pump)
            try:
                yield client
            finally:
                await ws.aclose()
                nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_memory_server(server: Server) -> AsyncIterator[MemoryServer]:
    async with open_harness(server, transport="memory") as harness:
        yield MemoryServer(harness=harness)


@pytest.fixture
def config() -> Config:
    return Config(ping_interval=25.0, ping_timeout=20.0)


async def close_client_stream(ws: trio_websocket.WebSocketConnection) -> None:
    """Close a trio-websocket client's TCP stream.

    trio-websocket's client never closes its own stream after the server closed the
    connection (its reader stops on EOF once the close handshake is done), which leaks
    the socket; the server side did everything right.
    """
    await trio.aclose_forcefully(ws._stream)
