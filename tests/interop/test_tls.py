"""TLS on the built-in server: ``Server.serve(..., ssl_context=...)`` against npm's
``socket.io-client`` that trusts only a test CA (made by ``trustme``), over polling, over
WebSocket, and over polling upgraded to WebSocket."""

from __future__ import annotations

import shutil
import signal
import ssl
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Final

import pytest
import trio
import trustme
from wsproto import ConnectionType
from wsproto.connection import Connection as WsConnection

from roomcast.engine import Config, Server, Socket
from roomcast.engine.actors.connection import Connection
from roomcast.engine.cli import CommandError, build_parser, tls_context
from roomcast.engine.log import LogConfig
from roomcast.engine.transport.websocket import WebSocketTransport
from roomcast.protocol import JsonValue
from tests.engine.test_cli_serve import open_served
from tests.interop.app import Line, open_peer

pytestmark = pytest.mark.node

DEADLINE: Final = 20.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def ca_pem(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def build_server() -> tuple[Server, list[type]]:
    """An app with an ``echo`` and a ``shout`` (a broadcast to everyone); the list gets the
    stream type each WebSocket connection wrote through."""
    server = Server(config=Config(log=LogConfig(enabled=False)))
    streams: list[type] = []

    @server.on("echo")
    async def echo(socket: Socket, text: JsonValue) -> JsonValue:
        return text

    @server.on("shout")
    async def shout(socket: Socket, text: JsonValue) -> None:
        conn = socket.connection
        assert isinstance(conn, Connection)  # a served client's, not replay's stand-in
        if isinstance(conn.transport, WebSocketTransport):  # (the built-in front's)
            streams.append(type(conn.transport.stream))
        await server.emit("shouted", text)

    return server, streams


@asynccontextmanager
async def serve_tls(server: Server, context: ssl.SSLContext) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(partial(server.serve, "127.0.0.1", 0, ssl_context=context))
        yield f"https://{host}:{port}"
        nursery.cancel_scope.cancel()


async def run_peer(js_peers: Path, *args: str) -> list[Line]:
    node = shutil.which("node")
    assert node is not None
    async with open_peer([node, str(js_peers / "parity_peer.mjs"), *args]) as peer:
        return await peer.finish()


@pytest.mark.parametrize("transport", ["polling", "websocket", "upgrade"])
async def test_npm_client_over_tls(
    js_peers: Path, server_context: ssl.SSLContext, ca_pem: Path, transport: str
) -> None:
    server, streams = build_server()
    with trio.fail_after(DEADLINE):
        async with serve_tls(server, server_context) as url:
            lines = await run_peer(js_peers, "tls", url, str(ca_pem), transport)
    result = lines[-2]
    assert result["event"] == "result"
    assert result["echoed"] == "über TLS"
    assert result["heard"] == "to everyone"
    assert result["transport"] == ("polling" if transport == "polling" else "websocket")
    if transport != "polling":
        # The broadcast reached a TLS WebSocket: it went through the writer, since the
        # direct write to the socket's fd is only for plain TCP streams.
        assert streams == [trio.SSLStream]


async def test_client_without_the_ca_cannot_connect(
    js_peers: Path, server_context: ssl.SSLContext
) -> None:
    server, _ = build_server()
    with trio.fail_after(DEADLINE):
        async with serve_tls(server, server_context) as url:
            lines = await run_peer(js_peers, "untrusted", url, "websocket")
    assert lines[-2]["connected"] is False
    assert not server.connections


async def test_direct_write_is_never_tried_on_a_tls_stream(
    server_context: ssl.SSLContext, ca: trustme.CA
) -> None:
    """``send_now`` declines an SSLStream (so the outbox queues for the writer): writing
    to its file descriptor would put plaintext in the middle of the TLS stream."""
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(
                    trio.serve_ssl_over_tcp,
                    _hold,
                    0,
                    server_context,
                    host="127.0.0.1",
                )
            )
            port = listeners[0].transport_listener.socket.getsockname()[1]
            stream = await trio.open_ssl_over_tcp_stream(
                "127.0.0.1", port, ssl_context=client_context
            )
            await stream.do_handshake()
            transport = WebSocketTransport(
                stream=stream, ws=WsConnection(ConnectionType.SERVER), max_message_bytes=100
            )
            assert transport.send_now(("4hello",)) is None
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def _hold(stream: trio.SSLStream[trio.SocketStream]) -> None:
    await stream.receive_some()


def test_certfile_and_keyfile_flags(ca: trustme.CA, tmp_path: Path) -> None:
    """``--certfile``/``--keyfile`` (``roomcast serve`` and the demo) build a server context
    with that certificate; a key alone or an unreadable file is a one-line error."""
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    parser = build_parser()

    def context(*flags: str) -> ssl.SSLContext | None:
        return tls_context(parser.parse_args(["serve", "app:server", *flags]))

    assert context() is None
    made = context("--certfile", str(cert_path), "--keyfile", str(key_path))
    assert made is not None
    assert made.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(CommandError, match="--keyfile needs --certfile"):
        context("--keyfile", str(key_path))
    with pytest.raises(CommandError, match="cannot load it"):
        context("--certfile", str(tmp_path / "missing.pem"))
    with pytest.raises(CommandError, match="cannot load it"):
        context("--certfile", str(cert_path))  # no key anywhere


async def test_the_demo_serves_https_and_metrics(ca: trustme.CA, tmp_path: Path) -> None:
    """``examples/workspace_chat.py --certfile --keyfile --metrics``: it says it serves
    https, and ``/metrics`` answers over TLS to a client trusting the test CA."""
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    demo = [
        sys.executable,
        "examples/workspace_chat.py",
        "--no-log",
        "--metrics",
        "--certfile",
        str(cert_path),
        "--keyfile",
        str(key_path),
    ]
    client = ssl.create_default_context()
    ca.configure_trust(client)

    def get(url: str) -> str:
        with urllib.request.urlopen(url, timeout=5, context=client) as response:
            return str(response.read().decode())

    with trio.fail_after(60):
        async with open_served(demo) as served:
            assert b"roomcast serving on https://" in served.stdout
            app = served.endpoint
            page = await trio.to_thread.run_sync(get, f"https://{app.host}:{app.port}/metrics")
            served.process.send_signal(signal.SIGTERM)
            assert await served.wait() == 0
    assert 'roomcast_connected_sockets{namespace="/"} 0.0' in page
