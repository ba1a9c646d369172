"""The broadcast strategy (engine/broadcast.py): which one a server picks; recorded
broadcasts addressed when made, handed to the log, and released in offset order one durable
batch at a time, each recipient written once per batch and in the order the server sent."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from roomcast.engine import Config, Server, Socket
from roomcast.engine.actors.outbox import Outbox
from roomcast.engine.adapters.base import BroadcastOptions
from roomcast.engine.broadcast import Recorded, Unrecorded
from roomcast.engine.history import join_with_history
from roomcast.engine.log import (
    EventLog,
    LogConfig,
    LogWriteError,
    iter_records,
    open_event_log,
)
from roomcast.engine.recovery import RecoveryConfig
from roomcast.engine.testing import open_harness
from roomcast.engine.transport.frames import OutFrame, SharedFrame
from roomcast.protocol import Event, JsonValue, RecordKind

from .log_helpers import FailingIO, GatedIO


class FakeSocket:
    """A member whose outbox nobody drains: the test reads what was queued."""

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.outbox = Outbox(max_frames=100_000)
        self.evicted = False

    def evict(self, reason: str) -> None:
        self.evicted = True

    def offsets(self) -> list[int]:
        """The sequence numbers of the events queued so far (recovery's last argument)."""
        found = []
        for frame in self.outbox.take(100_000):
            assert isinstance(frame, SharedFrame)
            assert isinstance(frame.eio, str)
            args = json.loads(frame.eio[2:])
            found.append(int(args[-1].rpartition("-")[2]))
        return found


def log_server(directory: Path, fsync: str = "interval") -> Server:
    return Server(
        config=Config(log=LogConfig(directory=directory, fsync=fsync)),
        recovery=RecoveryConfig(),
    )


def with_join(server: Server) -> Server:
    """``server`` with a "join" handler: the client joins the room it names."""

    @server.on("join")
    async def join(socket: Socket, room: JsonValue) -> None:
        await socket.join(str(room))

    return server


async def member(server: Server, sid: str, *rooms: str) -> FakeSocket:
    socket = FakeSocket(sid)
    adapter = server.of("/").adapter
    adapter.add_socket(socket)
    await adapter.add_all(sid, rooms)
    return socket


async def test_the_strategy_is_picked_by_the_settings_and_the_open_log(tmp_path: Path) -> None:
    assert isinstance(Server().broadcaster, Unrecorded)
    server = Server(recovery=RecoveryConfig())
    assert isinstance(server.broadcaster, Recorded)
    assert server.broadcaster.log is None
    assert server.recovery_store is server.broadcaster.store is not None
    server.reconfigure(config=server.config, recovery=None)
    assert isinstance(server.broadcaster, Unrecorded)

    server = log_server(tmp_path)
    async with server.running():
        assert isinstance(server.broadcaster, Recorded)
        assert server.log is server.broadcaster.log is not None
        assert server.broadcaster.records_client_events
    assert server.log is None
    assert isinstance(server.broadcaster, Recorded)  # (recovery still on)


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
async def test_a_socket_in_several_rooms_gets_every_broadcast_in_offset_order(
    tmp_path: Path, fsync: str
) -> None:
    server = log_server(tmp_path, fsync)
    async with server.running():
        both = await member(server, "both", "a", "b")
        only_a = await member(server, "only-a", "a")

        async def publish(room: str) -> None:
            for _ in range(50):
                await server.to(room).emit("m", room)

        async with trio.open_nursery() as nursery:
            for room in ["a", "b"] * 5:
                nursery.start_soon(publish, room)
        assert server.log is not None
        await server.log.flush()  # (emit returns once handed to the log)
        seen = both.offsets()
        assert len(seen) == 500
        assert seen == sorted(seen)
        assert len(only_a.offsets()) == 250
        store = server.recovery_store
        assert store is not None
        kept = [e.seq for e in store.missed("/", 0, frozenset({"a", "b"}))]
        assert kept == seen  # kept in the order they went out


async def test_emit_returns_once_handed_off_and_the_broadcast_goes_out_in_its_turn(
    tmp_path: Path,
) -> None:
    server = log_server(tmp_path, "always")
    async with server.running():
        socket = await member(server, "s", "a")
        sequencer = server.sequencer
        turn = sequencer.take()  # holds every later broadcast back (as a recovery does)
        assert await server.to("a").emit("m", "first") == 1
        scope = trio.CancelScope()
        with scope:
            scope.cancel()  # (cancelled after its hand-off: it still goes out)
            assert await server.to("a").emit("m", "second") == 1
        assert server.log is not None
        await server.log.flush()
        assert socket.offsets() == []  # durable, but nothing goes out before the held turn
        sequencer.finish(turn)  # released from this step, in order
        offsets = socket.offsets()
        assert offsets == [turn + 1, turn + 2]
        store = server.recovery_store
        assert store is not None
        assert [e.seq for e in store.missed("/", 0, frozenset({"a"}))] == offsets


async def test_a_broadcast_is_for_the_members_when_it_is_made(tmp_path: Path) -> None:
    server = log_server(tmp_path, "always")
    async with server.running():
        early = await member(server, "early", "a")
        leaver = await member(server, "leaver", "a")
        turn = server.sequencer.take()
        assert await server.to("a").emit("m", "x") == 2
        late = await member(server, "late", "a")  # joins after it was made
        await server.of("/").adapter.delete("leaver", "a")  # leaves after it was made
        server.sequencer.finish(turn)
        assert server.log is not None
        await server.log.flush()
        assert len(early.offsets()) == 1
        assert len(leaver.offsets()) == 1
        assert late.offsets() == []


class WrittenSocket(FakeSocket):
    """A member whose outbox writes straight to a list, as an idle WebSocket does."""

    def __init__(self, sid: str) -> None:
        super().__init__(sid)
        self.writes: list[list[str]] = []
        self.outbox.direct = self._write
        self.outbox.flush = self._flush  # (its writer, called when frames are queued)

    def _write(self, frames: tuple[OutFrame, ...] | list[OutFrame]) -> bytes:
        self.writes.append([cast("str", cast("SharedFrame", f).eio) for f in frames])
        return b""

    def _flush(self) -> None:
        frames = self.outbox.take(100)
        if frames:
            self._write(frames)


async def test_one_release_writes_each_recipient_once(tmp_path: Path) -> None:
    server = log_server(tmp_path, "always")
    async with server.running():
        one = WrittenSocket("one")
        other = WrittenSocket("other")
        adapter = server.of("/").adapter
        for socket, rooms in ((one, ("a", "b")), (other, ("b",))):
            adapter.add_socket(socket)
            await adapter.add_all(socket.sid, rooms)
        turn = server.sequencer.take()
        for room in "abab":
            await server.to(room).emit("m", room)
        assert server.log is not None
        await server.log.flush()
        assert one.writes == other.writes == []
        server.sequencer.finish(turn)  # the four are durable: one pass releases them
        assert len(one.writes) == 1
        assert [json.loads(f[2:])[1] for f in one.writes[0]] == ["a", "b", "a", "b"]
        assert len(other.writes) == 1
        assert [json.loads(f[2:])[1] for f in other.writes[0]] == ["b", "b"]


async def test_a_send_made_after_a_broadcast_reaches_its_client_after_it(
    tmp_path: Path,
) -> None:
    server = log_server(tmp_path, "always")
    async with server.running():
        socket = WrittenSocket("s")
        bystander = WrittenSocket("t")
        adapter = server.of("/").adapter
        for each in (socket, bystander):
            adapter.add_socket(each)
            await adapter.add_all(each.sid, ["a"])
        turn = server.sequencer.take()
        await server.to("a").emit("m", "recorded")
        # An unrecorded send to one of its recipients (as an ack is) waits behind it...
        await server.to("s").volatile.emit("m", "after")
        # ...and a close waits for both.
        socket.outbox.close()
        closed_at_once = socket.outbox.closed
        assert not closed_at_once
        assert socket.writes == []
        server.sequencer.finish(turn)
        assert server.log is not None
        await server.log.flush()
        sent = [json.loads(f[2:])[1] for write in socket.writes for f in write]
        assert sent[0] == "recorded"
        assert sent[1] == "after"
        assert socket.outbox.closed
        assert [len(w) for w in bystander.writes] == [1]


async def test_a_broadcast_the_log_could_not_write_is_dropped_and_the_next_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server()  # (no log of its own: the test's log below fails its syncs)
    config = LogConfig(directory=tmp_path / "log", fsync="always")
    io = FailingIO()
    async with server.running(), open_event_log(config, io=io) as log:
        io.fail_fsync_after = io.fsyncs  # (the next sync fails)
        recorded = Recorded(
            sequencer=server.sequencer, wall_now=server.wall_now, log_config=config, log=log
        )
        socket = await member(server, "s", "a")
        ns = server.of("/")
        packet = Event(name="m", args=("x",), namespace="/")
        opts = BroadcastOptions(rooms=frozenset({"a"}))
        assert await recorded.broadcast(ns, packet, opts, None) == 1  # handed off
        # An ack for the client waits behind it.
        socket.outbox.offer((SharedFrame(eio="43[]"),))
        with pytest.raises(LogWriteError):
            await log.flush()  # (after the failed batch, which released what it had)
        # The sync failed: it is not delivered (the ack that waited behind it is).
        assert [cast("SharedFrame", f).eio for f in socket.outbox.take(10)] == ["43[]"]
        assert "1 recorded broadcast(s) not delivered" in caplog.text
        with pytest.raises(LogWriteError):
            await recorded.broadcast(ns, packet, opts, None)
        assert server.sequencer.done == server.sequencer.last  # no number left held


async def test_a_broadcast_to_an_adapter_without_direct_delivery_goes_out_in_its_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = log_server(tmp_path, "always")
    async with server.running():
        socket = await member(server, "s", "a")
        # (As a cluster adapter without the shared log: its emitter delivers each.)
        monkeypatch.setattr(server.of("/").adapter, "recipients_now", lambda opts: None)
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(server.to("a").emit, "m", "x")
        offsets = socket.offsets()
        assert len(offsets) == 20
        assert offsets == sorted(offsets)


async def test_a_publishers_ack_waits_for_the_broadcasts_its_handler_made() -> None:
    server = with_join(Server(recovery=RecoveryConfig()))  # (recorded: released in turn)

    @server.on("publish")
    async def publish(socket: Socket, room: JsonValue) -> str:
        await server.to(str(room)).emit("m", "x")  # (returns once handed off)
        return "ok"

    async with open_harness(server) as harness:
        publisher = await harness.connect()
        member_ = await harness.connect()
        await member_.call("join", "a")
        turn = server.sequencer.take()  # holds the broadcast back
        answers: list[tuple[JsonValue, ...]] = []

        async def call() -> None:
            answers.append(await publisher.call("publish", "a"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await harness.settle()
            assert answers == []  # not a member, and still no ack: it is not out yet
            assert member_.args("m") == []
            server.sequencer.finish(turn)
        assert answers == [("ok",)]
        assert member_.args("m") == [("x", member_.args("m")[0][1])]


async def test_a_join_with_history_gets_live_what_was_made_while_it_waited(
    tmp_path: Path,
) -> None:
    server = with_join(log_server(tmp_path, "always"))

    @server.on("join_history")
    async def join_history(socket: Socket, room: JsonValue) -> list[JsonValue]:
        past = await join_with_history(socket, str(room), last=10)
        return [event.args[0] for event in past]

    async with open_harness(server, transport="tcp") as harness:
        member_ = await harness.connect()
        await member_.call("join", "r")
        await server.to("r").emit("m", "before")
        held = server.sequencer.take()  # the history read waits behind it
        joiner = await harness.connect()
        answers: list[tuple[JsonValue, ...]] = []

        async def call() -> None:
            answers.append(await joiner.call("join_history", "r"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await harness.settle()  # (its turn is taken: it waits)
            # Made after the history's turn, before the join: for the members then.
            assert await server.to("r").emit("m", "while") == 1
            server.sequencer.finish(held)
        assert answers == [(["before"],)]
        assert (await joiner.wait_for("m", within=5))[0] == "while"  # live, not lost
        assert [args[0] for args in member_.args("m")] == ["before", "while"]


@pytest.mark.parametrize("close", [False, True])
async def test_a_disconnect_right_after_a_broadcast_reaches_the_client_after_it(
    tmp_path: Path, close: bool
) -> None:
    server = with_join(log_server(tmp_path, "always"))

    @server.on("bye")
    async def bye(socket: Socket) -> None:
        await server.to("r").emit("m", "last words")  # returns before it goes out
        await socket.disconnect(close=close)

    async with open_harness(server, transport="tcp") as harness:
        client = await harness.connect(reconnect=False)
        await client.call("join", "r")
        await client.emit("bye")
        reason = await client.wait_disconnected(1, within=5)
        assert client.args("m") == [("last words", client.args("m")[0][1])]
        assert reason == "io server disconnect"


async def test_emit_waits_while_too_many_deliveries_wait_for_their_release(
    tmp_path: Path,
) -> None:
    server = log_server(tmp_path, "always")
    async with server.running():
        broadcaster = server.broadcaster
        assert isinstance(broadcaster, Recorded)
        broadcaster.max_pending_deliveries = 5
        sockets = [await member(server, f"s{i}", "a") for i in range(3)]
        turn = server.sequencer.take()  # holds the releases back
        assert await server.to("a").emit("m", 1) == 3  # 3 wait
        assert await server.to("a").emit("m", 2) == 3  # 6 wait: the bound is reached
        made: list[int] = []

        async def third() -> None:
            made.append(await server.to("a").emit("m", 3))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(third)
            await trio.testing.wait_all_tasks_blocked()
            assert made == []  # waits for room
            server.sequencer.finish(turn)  # the two go out (once durable), making room
        assert made == [3]
        assert server.log is not None
        await server.log.flush()
        for socket in sockets:
            assert len(socket.offsets()) == 3


async def test_a_broadcast_cancelled_waiting_for_the_logs_inbox_is_withdrawn_in_its_turn(
    tmp_path: Path,
) -> None:
    server = Server()  # (no log of its own: the test's log below has a gated disk)
    config = LogConfig(directory=tmp_path / "log", fsync="always", inbox_size=1)
    io = GatedIO()
    async with server.running(), open_event_log(config, io=io) as log:
        recorded = Recorded(
            sequencer=server.sequencer, wall_now=server.wall_now, log_config=config, log=log
        )
        socket = await member(server, "s", "a")
        ns = server.of("/")
        opts = BroadcastOptions(rooms=frozenset({"a"}))

        def packet(text: str) -> Event:
            return Event(name="m", args=(text,), namespace="/")

        io.blocked = True  # the next sync waits for the gate: the inbox fills up
        assert await recorded.broadcast(ns, packet("first"), opts, None) == 1
        await trio.to_thread.run_sync(io.entered.wait)  # the writer syncs "first"
        assert await recorded.broadcast(ns, packet("second"), opts, None) == 1  # (queued)
        with trio.move_on_after(0.2) as scope:  # no room: it waits, then gives up
            await recorded.broadcast(ns, packet("withdrawn"), opts, None)
        assert scope.cancelled_caught
        socket.outbox.offer((SharedFrame(eio="43[]"),))  # an ack made after the three
        io.blocked = False
        io.gate.set()
        await log.flush()
        sent = [cast("SharedFrame", f).eio for f in socket.outbox.take(10)]
        assert [json.loads(f[2:])[1] for f in sent[:2]] == ["first", "second"]
        assert sent[2:] == ["43[]"]  # not stuck behind the withdrawn one
        assert server.sequencer.done == server.sequencer.last


async def test_a_record_nobody_waits_for_is_queued_without_waiting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = log_server(tmp_path / "log")
    async with server.running():
        broadcaster, log = server.broadcaster, server.log
        assert log is not None
        before = server.sequencer.last
        assert broadcaster.record_nowait(RecordKind.MESSAGE, "/", "", "sid-1", "m", ("a", 1))
        assert server.sequencer.done == server.sequencer.last == before + 1
        # What the log cannot hold is left out with a warning, as ``record_event`` does.
        assert not broadcaster.record_nowait(RecordKind.MESSAGE, "/", "", "sid-1", "m", ({1},))  # type: ignore[arg-type]
        assert "not logged (MESSAGE /)" in caplog.text
        # A join must be durable before it returns: only ``record_event`` records it.
        with pytest.raises(trio.WouldBlock):
            broadcaster.record_nowait(RecordKind.JOIN, "/", "r", "sid-1")
        await log.flush()
    records = [r for r in iter_records(tmp_path / "log") if r.namespace == "/"]
    assert [(r.kind, r.sender, r.event, r.args) for r in records] == [
        (RecordKind.MESSAGE, "sid-1", "m", ("a", 1))
    ]
    assert records[0].offset == before + 1


async def test_a_record_that_must_wait_goes_the_waiting_way(tmp_path: Path) -> None:
    server = Server()
    config = LogConfig(directory=tmp_path / "log", fsync="always", inbox_size=1)
    io = GatedIO()
    async with server.running(), open_event_log(config, io=io) as log:
        recorded = Recorded(
            sequencer=server.sequencer, wall_now=server.wall_now, log_config=config, log=log
        )
        io.blocked = True  # the next sync waits for the gate: the inbox fills up
        assert recorded.record_nowait(RecordKind.MESSAGE, "/", "", "s", "first")
        await trio.to_thread.run_sync(io.entered.wait)  # the writer syncs "first"
        assert recorded.record_nowait(RecordKind.MESSAGE, "/", "", "s", "second")  # queued
        with pytest.raises(trio.WouldBlock):  # no room: nothing is recorded
            recorded.record_nowait(RecordKind.MESSAGE, "/", "", "s", "third")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(recorded.record_event, RecordKind.MESSAGE, "/", sender="s", event="third")
            )
            await trio.testing.wait_all_tasks_blocked()
            io.blocked = False
            io.gate.set()
        await log.flush()
    events = [r.event for r in iter_records(tmp_path / "log") if r.namespace == "/"]
    assert events == ["first", "second", "third"]


async def test_a_client_event_the_log_cannot_take_at_once_waits_and_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = log_server(tmp_path / "log")

    @server.on("echo")
    async def echo(socket: Socket, value: JsonValue) -> tuple[JsonValue, ...]:
        return (value,)

    async with server.running(), open_harness(server) as harness:
        client = await harness.connect()
        log = server.log
        assert log is not None
        take = EventLog.append_fields_nowait
        refused: list[object] = []

        def full_once(self: EventLog, *fields: Any) -> None:
            if not refused:
                refused.append(fields)
                raise trio.WouldBlock  # (as when the inbox is full)
            take(self, *fields)

        monkeypatch.setattr(EventLog, "append_fields_nowait", full_once)
        assert await client.call("echo", "x") == ("x",)
        assert refused
        await log.flush()
    records = [r for r in iter_records(tmp_path / "log") if r.kind is RecordKind.MESSAGE]
    assert [(r.event, r.args) for r in records] == [("echo", ("x",))]
