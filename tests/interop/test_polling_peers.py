"""Real clients over HTTP long-polling: Node ``socket.io-client`` with its default
transports (polling first, then the upgrade to WebSocket) and with ``transports:
['polling']``, and python-socketio's ``AsyncClient`` with polling only.

The server is the workspace chat example (plus an ``echo`` handler) in this process, so
the test checks the server's side too: which transport each peer's session ends up on.
The peers print JSON lines; at ``checkpoint`` they wait for a line on stdin while the test
inspects the server.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import pytest
import trio

from examples.workspace_chat import build_server
from roomcast.engine import Config, Server, Socket
from roomcast.protocol import JsonValue
from tests.processes import PipedProcess, open_piped

HERE: Final = Path(__file__).parent
PEER_TIMEOUT: Final = 20.0
DISCONNECT_WITHIN: Final = 1.5
LEFT: Final = frozenset({"client namespace disconnect", "transport close"})
"""How a peer's ``disconnect()`` may be reported (its DISCONNECT and the Engine.IO CLOSE
may arrive in one polling payload)."""


@attrs.define(eq=False)
class ChatApp:
    """The workspace chat server with an ``echo`` handler, and what its sockets did."""

    server: Server
    disconnects: dict[str, str] = attrs.field(factory=dict)
    all_gone: trio.Event = attrs.field(factory=trio.Event)
    expected: int = 0


def chat_app(expected: int) -> ChatApp:
    app = ChatApp(server=build_server(Config(ping_interval=2.0, ping_timeout=2.0)))
    app.expected = expected
    server = app.server

    @server.on("echo")
    async def echo(socket: Socket, *args: JsonValue) -> tuple[JsonValue, ...]:
        await trio.lowlevel.checkpoint()
        return args

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        app.disconnects[socket.sid] = reason
        if len(app.disconnects) == app.expected:
            app.all_gone.set()
        await trio.lowlevel.checkpoint()

    return app


@asynccontextmanager
async def serving(app: ChatApp) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(app.server.serve, "127.0.0.1", 0)
        try:
            yield f"http://{host}:{port}"
        finally:
            nursery.cancel_scope.cancel()


@attrs.define(eq=False, kw_only=True)
class Peer(PipedProcess):
    """A peer script: its JSON lines, and one line on stdin to let it finish."""

    lines: list[dict[str, object]] = attrs.field(factory=list)
    _buffer: bytearray = attrs.field(factory=bytearray)

    async def expect(self, event: str) -> dict[str, object]:
        """Read lines up to the first with ``event``; fail on an ``error`` line or EOF."""
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            while b"\n" not in self._buffer:
                chunk = await stdout.receive_some(65_536)
                if not chunk:
                    raise AssertionError(f"peer ended before {event!r}: {self._story()}")
                self._buffer += chunk
            raw, _, rest = bytes(self._buffer).partition(b"\n")
            self._buffer = bytearray(rest)
            line = json.loads(raw)
            assert isinstance(line, dict), raw
            self.lines.append(line)
            if line["event"] == "error":
                raise AssertionError(f"peer failed: {self._story()}")
            if line["event"] == event:
                return line

    def connected(self) -> dict[str, dict[str, object]]:
        """The ``connected`` lines by client name."""
        return {str(line["name"]): line for line in self.lines if line["event"] == "connected"}

    async def go_on(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        await stdin.send_all(b"go\n")

    def _story(self) -> str:
        return f"\n  lines: {self.lines}\n  stderr: {self.stderr.decode(errors='replace')[-3000:]}"


@asynccontextmanager
async def open_peer(argv: Sequence[str]) -> AsyncIterator[Peer]:
    """Start a peer script; kill it (by its pid) if it still runs on the way out. A peer
    that is left to finish must exit 0 within 5 s."""
    async with open_piped(lambda process: Peer(process=process), argv) as peer:
        yield peer
        with trio.fail_after(5):
            code = await peer.process.wait()
        assert code == 0, f"peer exited {code}: {peer._story()}"


async def wait_all_gone(app: ChatApp) -> None:
    """Every socket's disconnect handler ran, soon after the peer disconnected (well
    before a ping timeout could have ended the sessions)."""
    with trio.move_on_after(DISCONNECT_WITHIN):
        await app.all_gone.wait()
    assert app.all_gone.is_set(), (
        f"disconnect handlers ran for {app.disconnects} only, of {app.expected} sockets;"
        f" sessions left: {list(app.server.connections)}"
    )


def transports_of(server: Server) -> dict[str, str]:
    """Socket id -> the transport its Engine.IO session is on now."""
    return {sid: socket.connection.transport_name for sid, socket in server.of("/").sockets.items()}


@pytest.mark.node
@pytest.mark.parametrize(
    ("mode", "final"),
    [("default", "websocket"), ("polling", "polling")],
    ids=["default", "polling"],
)
async def test_node_client_over_polling(js_peers: Path, mode: str, final: str) -> None:
    node = shutil.which("node")
    assert node is not None
    app = chat_app(expected=3)
    with trio.fail_after(PEER_TIMEOUT):
        async with (
            serving(app) as url,
            open_peer([node, str(js_peers / "polling_client.mjs"), url, mode]) as peer,
        ):
            checkpoint = await peer.expect("checkpoint")
            clients = peer.connected()
            # Every client starts on polling: in default mode too (polling first).
            assert {c["firstTransport"] for c in clients.values()} == {"polling"}
            sids = {str(c["sid"]) for c in clients.values()}
            # The server agrees on where each session is now.
            assert transports_of(app.server) == dict.fromkeys(sids, final)
            assert checkpoint["transports"] == dict.fromkeys(sids, final)
            assert len(app.server.connections) == 3  # no session left behind by an upgrade
            assert checkpoint["received"] == [31, 31, 0]
            await peer.go_on()
            await peer.expect("done")
            await wait_all_gone(app)
    assert set(app.disconnects) == sids
    assert set(app.disconnects.values()) <= LEFT, app.disconnects


@pytest.mark.peer
async def test_python_socketio_client_over_polling() -> None:
    app = chat_app(expected=2)
    script = HERE / "polling_psio_client.py"
    with trio.fail_after(PEER_TIMEOUT):
        async with serving(app) as url, open_peer([sys.executable, str(script), url]) as peer:
            checkpoint = await peer.expect("checkpoint")
            clients = peer.connected()
            assert {c["transport"] for c in clients.values()} == {"polling"}
            sids = {str(c["sid"]) for c in clients.values()}
            assert transports_of(app.server) == dict.fromkeys(sids, "polling")
            assert checkpoint["received"] == [1, 0]
            binary = next(line for line in peer.lines if line["event"] == "binary")
            assert binary == {"event": "binary", "size": 50_000, "tail": "AP8="}
            await peer.go_on()
            await peer.expect("done")
            await wait_all_gone(app)
    assert set(app.disconnects) == sids
    assert set(app.disconnects.values()) <= LEFT, app.disconnects
