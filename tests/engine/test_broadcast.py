"""The broadcast strategy (engine/broadcast.py): which one a server picks, and the release
of recorded broadcasts in offset order, one durable batch at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from roomcast.engine import Config, Server
from roomcast.engine.actors.outbox import Outbox
from roomcast.engine.broadcast import Recorded, Unrecorded
from roomcast.engine.log import LogConfig
from roomcast.engine.recovery import RecoveryConfig
from roomcast.engine.transport.frames import SharedFrame


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
        seen = both.offsets()
        assert len(seen) == 500
        assert seen == sorted(seen)
        assert len(only_a.offsets()) == 250
        store = server.recovery_store
        assert store is not None
        kept = [e.seq for e in store.missed("/", 0, frozenset({"a", "b"}))]
        assert kept == seen  # kept in the order they went out


async def test_a_broadcast_cancelled_before_its_release_is_neither_sent_nor_kept(
    tmp_path: Path,
) -> None:
    server = log_server(tmp_path, "always")
    async with server.running():
        socket = await member(server, "s", "a")
        sequencer = server.sequencer
        turn = sequencer.take()  # holds every later broadcast back (as a recovery does)
        counts: list[int] = []
        scope = trio.CancelScope()

        async def cancelled() -> None:
            with scope:
                await server.to("a").emit("m", "cancelled")

        async def later() -> None:
            counts.append(await server.to("a").emit("m", "later"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancelled)
            await trio.sleep(0.05)
            nursery.start_soon(later)
            await trio.sleep(0.05)
            scope.cancel()
            await trio.sleep(0.05)
            assert socket.offsets() == []  # nothing goes out before the held turn
            sequencer.finish(turn)  # from this task: the broadcasts go out from theirs
        offsets = socket.offsets()
        assert len(offsets) == 1  # the later one only
        assert counts == [1]
        store = server.recovery_store
        assert store is not None
        assert [e.seq for e in store.missed("/", 0, frozenset({"a"}))] == offsets


async def test_a_broadcast_to_an_adapter_without_direct_delivery_goes_out_in_its_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = log_server(tmp_path, "always")
    async with server.running():
        socket = await member(server, "s", "a")
        # (As a cluster adapter without the shared log: its emitter delivers each.)
        monkeypatch.setattr(server.of("/").adapter, "broadcast_now", lambda *a, **k: None)
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(server.to("a").emit, "m", "x")
        offsets = socket.offsets()
        assert len(offsets) == 20
        assert offsets == sorted(offsets)
