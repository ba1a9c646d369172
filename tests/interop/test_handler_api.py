"""Handler API parity with Node socket.io, against npm's ``socket.io-client``: per-packet
middleware (``use_packet``, ``Socket.use``) and its refusals (``on_error``), ``on_any`` for
every incoming event, ``on_unhandled``, ``on_any_outgoing`` (direct emits and broadcasts)
and removing handlers (``off``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

import pytest
import trio

from roomcast.engine import Config, RecoveryConfig, Server, Socket
from roomcast.engine.log import LogConfig
from roomcast.protocol import JsonValue
from tests.interop.app import open_peer, serve_app

pytestmark = pytest.mark.node

DEADLINE: Final = 20.0


def build_server(*, recovery: bool) -> tuple[Server, dict[str, list[JsonValue]]]:
    server = Server(
        config=Config(log=LogConfig(enabled=False)),
        recovery=RecoveryConfig() if recovery else None,
    )
    ns = server.of("/")
    seen: dict[str, list[JsonValue]] = {
        "any": [],
        "middleware": [],
        "errors": [],
        "outgoing": [],
        "ns_outgoing": [],
    }

    @ns.on_any
    async def any_event(socket: Socket, event: str, *args: JsonValue) -> None:
        seen["any"].append(event)

    @ns.use_packet
    async def every_packet(socket: Socket, event: str, args: tuple[JsonValue, ...]) -> None:
        seen["middleware"].append(event)

    @ns.on_error
    async def refused(socket: Socket, event: str, error: Exception) -> None:
        seen["errors"].append([event, repr(error)])

    @ns.on_any_outgoing
    def sent(socket: Socket, event: str, args: tuple[JsonValue, ...]) -> None:
        seen["ns_outgoing"].append(event)

    async def only_allowed(socket: Socket, event: str, args: tuple[JsonValue, ...]) -> None:
        if event == "forbidden":
            raise PermissionError("no")

    def sent_to_this_socket(socket: Socket, event: str, args: tuple[JsonValue, ...]) -> None:
        seen["outgoing"].append([event, *args])

    @ns.on("connect")
    async def connected(socket: Socket, auth: JsonValue) -> None:
        socket.use(only_allowed)
        socket.on_any_outgoing(sent_to_this_socket)
        await socket.emit("welcome", 1)

    @ns.on("forbidden")
    async def forbidden(socket: Socket, n: int) -> str:
        raise AssertionError("a refused event reached its handler")

    @ns.on("echo")
    async def echo(socket: Socket, text: JsonValue) -> JsonValue:
        return text

    @ns.on("remove_echo")
    async def remove_echo(socket: Socket) -> None:
        ns.off("echo")

    @ns.on_unhandled
    async def unhandled(socket: Socket, event: str, *args: JsonValue) -> str:
        return f"unhandled:{event}"

    @ns.on("ping_me")
    async def ping_me(socket: Socket) -> str:
        await server.emit("news", "all")
        await socket.broadcast.emit("not_you")  # leaves this socket out: not "outgoing"
        return "pong"

    @ns.on("report")
    async def report(socket: Socket) -> dict[str, JsonValue]:
        return {key: list(value) for key, value in seen.items()}

    return server, seen


@pytest.mark.parametrize("recovery", [False, True], ids=["direct", "recovery"])
async def test_handler_api_with_the_npm_client(js_peers: Path, recovery: bool) -> None:
    """With recovery on, ``socket.emit`` is a broadcast to the socket's own room, so the
    outgoing listener is called from the fan-out, not from ``emit``."""
    node = shutil.which("node")
    assert node is not None
    server, seen = build_server(recovery=recovery)
    with trio.fail_after(DEADLINE):
        async with (
            serve_app(server) as running,
            open_peer([node, str(js_peers / "parity_peer.mjs"), "handlers", running.url]) as peer,
        ):
            lines = await peer.finish()
    result = lines[-2]
    assert result["event"] == "result"
    assert result["allowed"] == "fine"
    assert result["refusedAck"] is False  # no ack for a refused event, as in Node
    assert result["unhandledAck"] == ["unhandled:echo"]  # after off("echo")
    assert result["afterOff"] == "pong"
    events = ["forbidden", "echo", "remove_echo", "echo", "ping_me", "report"]
    reported = result["seen"]
    assert isinstance(reported, dict)
    assert reported["any"] == events  # every event, the refused one and unhandled ones too
    assert reported["middleware"] == events  # the namespace's, before the socket's
    assert reported["errors"] == [["forbidden", "PermissionError('no')"]]
    # Acks are not events: the outgoing listeners saw the two events the client got.
    assert reported["outgoing"] == [["welcome", 1], ["news", "all"]]
    assert reported["ns_outgoing"] == ["welcome", "news"]
    # What the client got (with recovery on, each event also carries its offset, which
    # the server's listeners do not see).
    got = result["outgoing"]
    assert isinstance(got, list)
    assert all(isinstance(event, list) for event in got)
    assert [event[:2] for event in got] == [["welcome", 1], ["news", "all"]]  # type: ignore[index]
    assert [len(event) for event in got] == [3 if recovery else 2] * 2  # type: ignore[arg-type]
    assert seen["ns_outgoing"] == ["welcome", "news"]


async def test_off_removes_handlers_and_listeners() -> None:
    server = Server(config=Config(log=LogConfig(enabled=False)))
    ns = server.of("/")

    async def first(socket: Socket, reason: str) -> None: ...

    async def second(socket: Socket, reason: str) -> None: ...

    async def handler(socket: Socket) -> None: ...

    async def other(socket: Socket) -> None: ...

    async def any_event(socket: Socket, event: str, *args: JsonValue) -> None: ...

    def out(socket: Socket, event: str, args: tuple[JsonValue, ...]) -> None: ...

    ns.on("disconnect")(first)
    ns.on("disconnect")(second)
    ns.off("disconnect", first)
    assert ns.disconnect_handlers == [second]
    ns.off("disconnect")
    assert ns.disconnect_handlers == []
    ns.on("event")(handler)
    ns.off("event", other)  # not its handler: kept
    assert ns.handlers["event"] is handler
    ns.off("event")
    assert "event" not in ns.handlers
    ns.on_any(any_event)
    ns.on_any_outgoing(out)
    ns.off_any(any_event)
    ns.off_any_outgoing()
    assert ns.any_handlers == []
    assert ns.outgoing_listeners == []
    with pytest.raises(TypeError, match="async"):
        ns.use_packet(out)  # type: ignore[arg-type]
