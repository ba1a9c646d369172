"""The protocol-conformance app: the server exactly as docs/conformance.md describes.

- ``/engine.io/``: a bare Engine.IO v4 endpoint that echoes every message to its sender.
- ``/socket.io/``: Socket.IO v5 with the namespaces ``/`` and ``/custom``; both emit
  ``auth`` (the CONNECT auth payload, ``{}`` when none) right after accepting; ``/``
  answers ``message`` with ``message-back`` and acks ``message-with-ack`` with its
  arguments.
- Heartbeat 300 ms / 200 ms, max payload 1,000,000 bytes, any origin, connect timeout 1 s.

Run: ``python examples/conformance_app.py --host 127.0.0.1 --port 3000``
(``HOST`` and ``PORT`` in the environment work too), or through the ASGI front:
``hypercorn --worker-class trio --bind 127.0.0.1:3000 examples.conformance_app:asgi_app``.
"""

from __future__ import annotations

import argparse
import logging
import os

import trio

from roomcast.engine import Config, Server, Socket
from roomcast.engine.actors.connection import Connection
from roomcast.engine.asgi import AsgiApp
from roomcast.engine.cli import serve_until_signal
from roomcast.engine.log import LogConfig
from roomcast.protocol import JsonValue, Limits

CONFORMANCE_CONFIG = Config(
    ping_interval=0.3,
    ping_timeout=0.2,
    connect_timeout=1.0,
    limits=Limits(max_payload_bytes=1_000_000),
    # A protocol-conformance target has no use for an event log.
    log=LogConfig(enabled=False),
)


class EchoEngine:
    """The ``/engine.io/`` app: every message goes straight back, text as text, binary as
    binary."""

    async def on_message(self, conn: Connection, data: str | bytes) -> None:
        conn.send_message(data)

    async def on_close(self, conn: Connection, reason: str) -> None:
        """Nothing to clean up."""


def build_server(config: Config = CONFORMANCE_CONFIG) -> Server:
    """The conformance server."""
    server = Server(config=config, cors_allowed_origins="*")
    server.mount_engine("/engine.io/", EchoEngine())

    async def send_auth(socket: Socket, auth: JsonValue) -> None:
        await socket.emit("auth", auth)

    for name in ("/", "/custom"):
        server.of(name).on("connect")(send_auth)

    @server.on("message")
    async def message(socket: Socket, *args: JsonValue) -> None:
        await socket.emit("message-back", *args)

    @server.on("message-with-ack")
    async def message_with_ack(socket: Socket, *args: JsonValue) -> tuple[JsonValue, ...]:
        return args

    return server


asgi_app = AsgiApp(build_server())
"""The conformance server as an ASGI app (tests/conformance runs against it too)."""


def main() -> None:
    """Parse the options and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    trio.run(serve_until_signal, build_server(), args.host, args.port)


if __name__ == "__main__":
    main()
