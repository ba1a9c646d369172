"""Replay: re-driving recorded records against an app's handlers."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from roomcast.engine import Server, Socket
from roomcast.engine.log import LogConfig, iter_records, open_event_log
from roomcast.engine.replay import ReplayAction, ReplayStep, replay
from roomcast.protocol import (
    JSON_PARSER,
    MSGPACK_PARSER,
    Disconnect,
    Event,
    JsonValue,
    Parser,
    RecordKind,
)

from .log_helpers import record

CONNECT, JOIN, MESSAGE, DISCONNECT = (
    RecordKind.CONNECT,
    RecordKind.JOIN,
    RecordKind.MESSAGE,
    RecordKind.DISCONNECT,
)


def build_app(parser: Parser) -> tuple[Server, list[tuple[str, str, object]]]:
    """A small chat app; ``calls`` records what its handlers saw."""
    server = Server(parser=parser)
    calls: list[tuple[str, str, object]] = []

    @server.on("connect")
    async def connected(socket: Socket, auth: JsonValue) -> None:
        calls.append(("connect", socket.sid, auth))

    @server.on("join")
    async def join(socket: Socket, room: str) -> dict[str, JsonValue]:
        calls.append(("join", socket.sid, room))
        await socket.join(room)
        return {"ok": True}

    @server.on("say")
    async def say(socket: Socket, room: str, text: JsonValue) -> int:
        calls.append(("say", socket.sid, text))
        return await server.to(room).emit("said", {"from": socket.sid, "text": text})

    @server.on("echo")
    async def echo(socket: Socket, *args: JsonValue) -> tuple[JsonValue, ...]:
        return args

    @server.on("boom")
    async def boom(socket: Socket) -> None:
        raise RuntimeError("boom")

    @server.on("ask")
    async def ask(socket: Socket) -> JsonValue:
        return (await socket.call("question"))[0]

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        calls.append(("disconnect", socket.sid, reason))

    return server, calls


SESSION = [
    record(1, room="", kind=CONNECT, sender="a", args=({"token": "t"},)),
    record(2, room="", kind=CONNECT, sender="b", args=()),
    record(1, kind=MESSAGE, sender="a", event="join", args=("lobby",)),
    record(1, kind=JOIN, sender="b", args=()),
    record(2, kind=MESSAGE, sender="a", event="say", args=("lobby", "hi")),
    record(3, kind=MESSAGE, sender="b", event="unknown", args=()),
    record(4, kind=MESSAGE, sender="a", event="echo", args=(b"\x00\xff", [1, {"k": None}])),
    record(5, kind=MESSAGE, sender="a", event="boom", args=()),
    record(6, kind=MESSAGE, sender="a", event="ask", args=()),
    record(7, kind=MESSAGE, sender=None, event="said", args=()),
    record(3, room="", kind=DISCONNECT, sender="a", args=("transport close",)),
    record(4, namespace="", room="", kind=RecordKind.SERVER_STOP, sender=None, args=()),
]


@pytest.mark.parametrize("parser", [JSON_PARSER, MSGPACK_PARSER], ids=["json", "msgpack"])
async def test_replay_re_drives_handlers_with_the_recorded_sids(parser: Parser) -> None:
    server, calls = build_app(parser)
    seen: list[ReplayStep] = []
    with trio.fail_after(10):
        steps = await replay(SESSION, server, on_step=seen.append)
    assert steps == seen
    assert [s.record for s in steps] == SESSION
    assert [s.action for s in steps] == [
        ReplayAction.CONNECT,
        ReplayAction.CONNECT,
        ReplayAction.EVENT,
        ReplayAction.JOIN,
        ReplayAction.EVENT,
        ReplayAction.EVENT,
        ReplayAction.EVENT,
        ReplayAction.EVENT,
        ReplayAction.EVENT,
        ReplayAction.SKIP,
        ReplayAction.DISCONNECT,
        ReplayAction.RESET,
    ]
    connect_a, connect_b, join, join_b, say, unknown, echo, boom, ask, no_sender, _, _ = steps
    assert calls[:2] == [("connect", "a", {"token": "t"}), ("connect", "b", {})]
    assert (join.handled, join.result) == (True, ({"ok": True},))
    assert say.result == (2,)  # both members of the room got it
    said = Event(name="said", args=({"from": "a", "text": "hi"},), namespace="/")
    assert sorted((d.sid, d.packet == said) for d in say.deliveries) == [("a", True), ("b", True)]
    assert (unknown.handled, unknown.result) == (False, None)
    assert unknown.note == "no handler for 'unknown'"
    assert echo.result == (b"\x00\xff", [1, {"k": None}])
    assert boom.error == "RuntimeError('boom')"
    assert ask.error is not None
    assert "ConnectionLostError" in ask.error
    assert no_sender.note == "no sender: nothing to re-drive"
    assert calls[-2:] == [
        ("disconnect", "a", "transport close"),
        ("disconnect", "b", "server shutting down"),
    ]
    assert not join_b.deliveries
    assert connect_a.error is None
    assert connect_b.result is None


async def test_replay_creates_unseen_sockets_and_can_ignore_recorded_membership() -> None:
    server, calls = build_app(JSON_PARSER)
    session = [
        record(1, kind=JOIN, sender="z", args=()),
        record(2, kind=MESSAGE, sender="y", event="say", args=("lobby", "hello")),
    ]
    steps = await replay(session, server)
    assert steps[1].result == (1,)  # z joined from the recording
    assert [d.sid for d in steps[1].deliveries] == ["z"]
    assert calls == [("say", "y", "hello")]  # no connect handlers for implicit sockets

    server, _ = build_app(JSON_PARSER)
    steps = await replay(session, server, apply_membership=False)
    assert steps[0].action is ReplayAction.SKIP
    assert steps[1].result == (0,)


async def test_replay_of_a_namespace_the_app_does_not_have_is_skipped() -> None:
    server, _ = build_app(JSON_PARSER)
    session = [record(1, namespace="/admin", kind=MESSAGE, sender="a", event="say")]
    (step,) = await replay(session, server)
    assert step.action is ReplayAction.SKIP
    assert step.note == "the app has no namespace '/admin'"


async def test_replay_a_recorded_log(tmp_path: Path) -> None:
    config = LogConfig(directory=tmp_path, fsync="never")
    async with open_event_log(config) as log:
        for rec in SESSION[:5]:
            await log.append(rec)
    server, calls = build_app(JSON_PARSER)
    steps = await replay(iter_records(tmp_path), server)
    kinds = [s.record.kind for s in steps]
    assert kinds[:2] == [RecordKind.EPOCH, RecordKind.SERVER_START]
    assert kinds[-1] is RecordKind.SERVER_STOP
    assert ("say", "a", "hi") in calls
    assert steps[-1].action is ReplayAction.RESET
    # The server-side DISCONNECT packets the sockets get at the reset are reported.
    assert all(isinstance(d.packet, Event | Disconnect) for s in steps for d in s.deliveries)


async def test_replay_refuses_a_running_server() -> None:
    server, _ = build_app(JSON_PARSER)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.supervisor.run)
        with pytest.raises(RuntimeError, match="not running"):
            await replay([], server)
        nursery.cancel_scope.cancel()


async def test_a_replayed_disconnect_runs_disconnecting_in_the_rooms() -> None:
    server, calls = build_app(JSON_PARSER)

    @server.on("disconnecting")
    async def tell(socket: Socket, reason: str) -> None:
        calls.append(("disconnecting", socket.sid, sorted(socket.rooms)))
        await socket.to("lobby").emit("left", socket.sid)

    session = [
        record(1, kind=JOIN, sender="a", args=()),
        record(2, kind=JOIN, sender="b", args=()),
        record(3, room="", kind=DISCONNECT, sender="a", args=("transport close",)),
    ]
    with trio.fail_after(10):
        steps = await replay(session, server)
    assert steps[2].action is ReplayAction.DISCONNECT
    left = Event(name="left", args=("a",), namespace="/")
    assert [(d.sid, d.packet) for d in steps[2].deliveries] == [("b", left)]
    assert calls == [
        ("disconnecting", "a", ["a", "lobby"]),
        ("disconnect", "a", "transport close"),
    ]
