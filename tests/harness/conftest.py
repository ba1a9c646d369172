"""The app the harness's own tests run: rooms, broadcasts, acks and server-side calls.

Only ``roomcast_app`` is defined here; the harness fixtures come from the installed
plugin (the ``pytest11`` entry point), never from an import.
"""

from __future__ import annotations

import pytest
import trio

from roomcast.engine import Config, ConnectRefusedError, Server, Socket
from roomcast.protocol import JsonValue


def room_app(config: Config | None = None) -> Server:
    """A small app exercising what the harness must observe.

    The Config is made here, per test, so that its default event log lands in the
    test's tmp_path (tests/conftest.py), never in a directory shared by two runs.
    """
    server = Server(config=config or Config(ping_interval=25.0, ping_timeout=20.0))
    admin = server.of("/admin")

    @admin.use
    async def only_admins(socket: Socket, auth: JsonValue) -> None:
        if auth != {"token": "s3cret"}:
            raise ConnectRefusedError("not allowed", {"hint": "token"})

    @admin.on("whoami")
    async def whoami(socket: Socket) -> str:
        return "admin"

    @server.on("echo")
    async def echo(socket: Socket, *args: JsonValue) -> tuple[JsonValue, ...]:
        return args

    @server.on("join")
    async def join(socket: Socket, room: str) -> list[str]:
        await socket.join(room)
        return sorted(socket.rooms - {socket.sid})

    @server.on("say")
    async def say(socket: Socket, room: str, text: JsonValue) -> int:
        return await server.to(room).emit("said", text)

    @server.on("ask")
    async def ask(socket: Socket, question: str) -> JsonValue:
        return list(await socket.call("question", question))

    @server.on("stall")
    async def stall(socket: Socket) -> None:
        await trio.sleep_forever()

    return server


@pytest.fixture
def roomcast_app() -> Server:
    return room_app()
