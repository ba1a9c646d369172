"""The recovery store's bounds, its pruning, and its reload from the event log (after a
clean stop and after a crash)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytest
import trio
import trio.testing

from roomcast.engine import Server
from roomcast.engine.recovery import MissedEvent, RecoveryConfig, RecoveryStore, SavedSession
from roomcast.protocol import JsonValue, LogRecord, LogValue, RecordKind

from .conftest import open_memory_server
from .test_recovery import connect_raw, event


def store(**config: float) -> RecoveryStore:
    return RecoveryStore(config=RecoveryConfig(**config), epoch="ep")  # type: ignore[arg-type]


def keep(
    store: RecoveryStore, seq: int, *, room: str = "r", time: float = 0.0, size: int = 10
) -> None:
    args: tuple[JsonValue, ...] = (seq, store.recovery_offset(seq))
    store.keep(
        MissedEvent(
            seq=seq,
            namespace="/",
            rooms=frozenset({room}),
            exclude=frozenset(),
            name="m",
            args=args,
            time=time,
            size=size,
        )
    )


def session(
    pid: str, *, at: float = 0.0, rooms: Iterable[str] = ("r",), data: object = None
) -> SavedSession:
    return SavedSession(
        pid=pid,
        sid=f"sid-{pid}",
        namespace="/",
        rooms=frozenset(rooms),
        data={} if data is None else {"blob": data},
        disconnected_at=at,
    )


def seqs(store: RecoveryStore, pid: str, after: int) -> list[int] | None:
    taken = store.restore("/", pid, store.recovery_offset(after), now=1.0)
    if taken is None:
        return None
    saved, seq = taken
    return [e.seq for e in store.missed("/", seq, saved.rooms | {saved.sid})]


def test_events_past_the_count_bound_are_dropped_and_older_offsets_are_a_gap() -> None:
    s = store(max_events=3)
    for seq in range(1, 6):
        keep(s, seq)
    assert s.events_kept == 3
    s.save(session("a"))
    s.save(session("b"))
    assert seqs(s, "a", 1) is None  # 2 was dropped: a client at 1 cannot be served
    assert seqs(s, "b", 2) == [3, 4, 5]


def test_events_past_the_byte_bound_are_dropped() -> None:
    s = store(max_event_bytes=250)
    for seq in range(1, 6):
        keep(s, seq, size=100)
    assert s.events_kept == 2
    assert s.complete_after == 3


def test_sessions_past_the_count_bound_forget_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    s = store(max_sessions=2)
    keep(s, 1)
    with caplog.at_level(logging.WARNING, logger="roomcast.engine.recovery"):
        for pid in "abc":
            s.save(session(pid))
    assert s.sessions_kept == 2
    assert "forgot 1 disconnected session" in caplog.text
    assert seqs(s, "a", 1) is None
    assert seqs(s, "c", 1) == []


def test_sessions_past_the_byte_bound_forget_the_oldest() -> None:
    s = store(max_session_bytes=3000)
    keep(s, 1)
    for pid in "abcd":
        s.save(session(pid, data="x" * 1000))
    assert s.sessions_kept == 2
    assert seqs(s, "b", 1) is None
    assert seqs(s, "d", 1) == []


def test_prune_forgets_expired_sessions_and_events_nobody_can_ask_for() -> None:
    s = store(max_disconnection_duration=10.0)
    s.delivery_bound = 5.0
    keep(s, 1, time=0.0)
    keep(s, 2, time=8.0)
    s.save(session("old", at=1.0))
    s.save(session("new", at=12.0))
    s.prune(16.0)  # sessions before 6 expire; events before 16 - 10 - 5 = 1 go
    assert s.sessions_kept == 1
    assert s.events_kept == 1
    # Dropping event 1 is not a gap: a session still kept disconnected after 1 + 5.
    taken = s.restore("/", "new", s.recovery_offset(1), now=16.0)
    assert taken is not None
    assert [e.seq for e in s.missed("/", taken[1], frozenset({"r"}))] == [2]


def record(
    kind: RecordKind,
    offset: int,
    *,
    sender: str | None = None,
    room: str = "",
    args: tuple[LogValue, ...] = (),
    event: str | None = None,
    time: float = 100.0,
) -> LogRecord:
    return LogRecord(
        offset=offset,
        time=time,
        namespace="/",
        room=room,
        kind=kind,
        sender=sender,
        event=event,
        args=args,
        epoch="ep",
    )


def history() -> list[LogRecord]:
    """Socket a connects (pid P, data), joins r1 and r2, leaves r1; socket b connects and
    disconnects for good; a broadcast to r2 follows."""
    return [
        record(RecordKind.CONNECT, 1, sender="a", args=({}, {"pid": "P", "data": {"name": "ann"}})),
        record(RecordKind.JOIN, 2, sender="a", room="r1"),
        record(RecordKind.JOIN, 3, sender="a", room="r2"),
        record(RecordKind.LEAVE, 4, sender="a", room="r1"),
        record(RecordKind.CONNECT, 5, sender="b", args=({}, {"pid": "Q"})),
        record(RecordKind.DISCONNECT, 6, sender="b", args=("client namespace disconnect",)),
        record(RecordKind.MESSAGE, 7, room="r2", event="m", args=("hi", "ep-7")),
    ]


def test_a_crash_leaves_every_connected_socket_recoverable() -> None:
    s = store()
    s.load(history(), now=200.0, crashed=True)
    assert s.sessions_kept == 1
    taken = s.restore("/", "P", "ep-3", now=210.0)
    assert taken is not None
    saved, after = taken
    assert (saved.sid, saved.rooms, saved.data) == ("a", frozenset({"r2"}), {"name": "ann"})
    assert saved.disconnected_at == 200.0  # the window counts from the restart
    assert [e.args for e in s.missed("/", after, saved.rooms | {saved.sid})] == [("hi", "ep-7")]


def test_a_clean_stop_keeps_only_the_sessions_it_recorded() -> None:
    s = store()
    s.load(history(), now=200.0, crashed=False)
    assert s.sessions_kept == 0


def test_a_recovered_socket_keeps_its_rooms_across_a_later_crash() -> None:
    records = [
        *history()[:4],
        record(
            RecordKind.DISCONNECT,
            8,
            sender="a",
            args=("transport close", {"pid": "P", "rooms": ["r2"], "data": {}}),
        ),
        record(
            RecordKind.CONNECT,
            9,
            sender="a",
            args=({}, {"pid": "P", "recovered": True, "rooms": ["r2"], "data": {}}),
        ),
        record(RecordKind.JOIN, 10, sender="a", room="r3"),
    ]
    s = store()
    s.load(records, now=200.0, crashed=True)
    taken = s.restore("/", "P", "ep-9", now=200.0)
    assert taken is not None
    assert taken[0].rooms == {"r2", "r3"}


def test_events_of_a_long_dead_run_are_kept_for_its_sessions() -> None:
    """The server was down longer than the window: the crashed run's last events are still
    what its sessions may have missed."""
    records = [
        *history()[:4],
        record(RecordKind.MESSAGE, 7, room="r2", event="m", args=("late", "ep-7"), time=100.0),
    ]
    s = store(max_disconnection_duration=10.0)
    s.delivery_bound = 5.0
    s.load(records, now=1000.0, crashed=True)
    s.prune(1005.0)
    taken = s.restore("/", "P", "ep-4", now=1005.0)
    assert taken is not None
    assert [e.args[0] for e in s.missed("/", taken[1], frozenset({"a", "r2"}))] == ["late"]
    s.prune(1011.0)  # the window after the restart is over: nothing is kept for them
    assert s.events_kept == 0


async def test_the_supervisor_forgets_sessions_nobody_comes_back_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = Server(recovery=RecoveryConfig(max_disconnection_duration=10.0, prune_interval=1.0))
    store = server.recovery_store
    assert store is not None
    with trio.fail_after(60):
        async with open_memory_server(server) as srv:
            for _ in range(3):
                async with srv.client() as client:
                    await connect_raw(client)
                    await server.emit("m", 1)
                    event(await client.recv())
            await trio.testing.wait_all_tasks_blocked()
            assert store.sessions_kept == 3
            assert store.events_kept == 3
            await trio.sleep(10.0 + server.config.ping_interval + server.config.ping_timeout + 2)
            assert store.sessions_kept == 0
            assert store.events_kept == 0
