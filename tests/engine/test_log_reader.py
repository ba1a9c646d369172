"""The read side: filtered iteration, room history, membership at an offset, stats."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from roomcast.engine.log import (
    LogConfig,
    RoomSpan,
    iter_records,
    log_stats,
    membership_at,
    open_event_log,
    record_to_json,
    room_history,
    verify_log,
)
from roomcast.engine.log.segment import list_segments, segment_path
from roomcast.protocol import LogRecord, RecordKind, encode_record

from .log_helpers import T0, record

JOIN, LEAVE, MESSAGE, DISCONNECT = (
    RecordKind.JOIN,
    RecordKind.LEAVE,
    RecordKind.MESSAGE,
    RecordKind.DISCONNECT,
)

# (namespace, room, offset, kind, sender): a scripted session in two namespaces.
SESSION: list[tuple[str, str, int, RecordKind, str | None]] = [
    ("/", "lobby", 1, JOIN, "a"),
    ("/", "lobby", 2, JOIN, "b"),
    ("/", "lobby", 3, MESSAGE, "a"),
    ("/", "games", 1, JOIN, "b"),
    ("/", "lobby", 4, LEAVE, "a"),
    ("/chat", "lobby", 1, JOIN, "x"),
    ("/", "lobby", 5, JOIN, "c"),
    ("/", "games", 2, MESSAGE, "b"),
    ("/", "", 1, DISCONNECT, "b"),
    ("/", "lobby", 6, MESSAGE, "c"),
    ("/chat", "lobby", 2, MESSAGE, "x"),
    ("/", "lobby", 7, MESSAGE, None),
]


async def write_session(directory: Path, *, segment_bytes: int = 300) -> str:
    config = LogConfig(
        directory=directory,
        fsync="never",
        segment_bytes=segment_bytes,
        segment_age=None,
        retention_age=None,
    )
    async with open_event_log(config, clock=lambda: T0) as log:
        for index, (ns, room, offset, kind, sender) in enumerate(SESSION):
            await log.append(
                record(
                    offset,
                    namespace=ns,
                    room=room,
                    kind=kind,
                    sender=sender,
                    args=(f"step {index}", b"\x00" * index),
                    time=T0 + index,
                )
            )
        return log.epoch


def drop_summaries(directory: Path) -> None:
    for summary in directory.glob("*.idx"):
        summary.unlink()


def session_records(directory: Path) -> list[LogRecord]:
    return [r for r in iter_records(directory) if r.namespace != ""]


async def test_iter_records_returns_everything_in_order(tmp_path: Path) -> None:
    epoch = await write_session(tmp_path)
    assert len(list_segments(tmp_path)) > 3  # the session spans several segments
    found = session_records(tmp_path)
    assert [(r.namespace, r.room, r.offset, r.kind, r.sender) for r in found] == SESSION
    assert {r.epoch for r in found} == {epoch}
    assert found[5].args == ("step 5", b"\x00" * 5)


FILTERS = [
    {},
    {"namespace": "/"},
    {"namespace": "/chat", "room": "lobby"},
    {"room": "lobby"},
    {"namespace": "/", "room": "lobby", "since_offset": 3, "until_offset": 5},
    {"room": "lobby", "since_offset": 6},
    {"room": "games", "until_offset": 1},
    {"since_time": T0 + 4, "until_time": T0 + 8},
    {"until_time": T0 + 2},
    {"namespace": "/nowhere"},
    {"since_offset": 100},
]


@pytest.mark.parametrize("filters", FILTERS)
async def test_filters_match_a_full_scan_with_or_without_summaries(
    tmp_path: Path, filters: dict[str, object]
) -> None:
    epoch = await write_session(tmp_path)
    everything = list(iter_records(tmp_path))

    def expected(r: LogRecord) -> bool:
        f = filters
        return (
            f.get("namespace", r.namespace) == r.namespace
            and f.get("room", r.room) == r.room
            and r.offset >= f.get("since_offset", r.offset)  # type: ignore[operator]
            and r.offset <= f.get("until_offset", r.offset)  # type: ignore[operator]
            and r.time >= f.get("since_time", r.time)  # type: ignore[operator]
            and r.time <= f.get("until_time", r.time)  # type: ignore[operator]
        )

    want = [r for r in everything if expected(r)]
    assert list(iter_records(tmp_path, **filters)) == want  # type: ignore[arg-type]
    assert list(iter_records(tmp_path, epoch=epoch, **filters)) == want  # type: ignore[arg-type]
    assert list(iter_records(tmp_path, epoch="other", **filters)) == []  # type: ignore[arg-type]
    drop_summaries(tmp_path)
    assert list(iter_records(tmp_path, **filters)) == want  # type: ignore[arg-type]


async def test_room_history_last_and_after(tmp_path: Path) -> None:
    await write_session(tmp_path)
    lobby = [r.offset for r in room_history(tmp_path, "/", "lobby")]
    assert lobby == [1, 2, 3, 4, 5, 6, 7]
    assert [r.offset for r in room_history(tmp_path, "/", "lobby", last=3)] == [5, 6, 7]
    assert [r.offset for r in room_history(tmp_path, "/", "lobby", last=100)] == lobby
    assert [r.offset for r in room_history(tmp_path, "/", "lobby", after=4)] == [5, 6, 7]
    assert [r.offset for r in room_history(tmp_path, "/", "lobby", after=4, last=2)] == [6, 7]
    assert [r.offset for r in room_history(tmp_path, "/", "lobby", after=7)] == []
    assert room_history(tmp_path, "/", "lobby", last=0) == []
    assert room_history(tmp_path, "/", "nowhere", last=5) == []
    assert [r.offset for r in room_history(tmp_path, "/chat", "lobby", last=1)] == [2]


@pytest.mark.parametrize(
    ("offset", "members"),
    [
        (0, set()),
        (1, {"a"}),
        (2, {"a", "b"}),
        (3, {"a", "b"}),
        (4, {"b"}),
        (5, {"b", "c"}),
        (6, {"c"}),
        (7, {"c"}),
        (99, {"c"}),
    ],
)
async def test_membership_at_any_offset(tmp_path: Path, offset: int, members: set[str]) -> None:
    await write_session(tmp_path)
    assert membership_at(tmp_path, "/", "lobby", offset) == members


async def test_membership_resets_across_a_restart(tmp_path: Path) -> None:
    await write_session(tmp_path)
    config = LogConfig(
        directory=tmp_path,
        fsync="never",
        segment_age=None,
        retention_age=None,  # the records are dated 2023
    )
    async with open_event_log(config) as log:  # SERVER_STOP, then SERVER_START
        await log.append(record(8, kind=JOIN, sender="d"))
    assert membership_at(tmp_path, "/", "lobby", 7) == {"c"}
    assert membership_at(tmp_path, "/", "lobby", 8) == {"d"}
    assert membership_at(tmp_path, "/chat", "lobby", 2) == {"x"}


async def test_log_stats(tmp_path: Path) -> None:
    epoch = await write_session(tmp_path)
    stats = log_stats(tmp_path)
    assert stats.epoch == epoch
    assert stats.epochs == (epoch,)
    assert stats.epoch_reasons == ("new log",)
    assert stats.segments == len(list_segments(tmp_path))
    assert stats.records == len(SESSION) + 3
    assert stats.kinds == {
        "disconnect": 1,
        "epoch": 1,
        "join": 5,
        "leave": 1,
        "message": 5,
        "server_start": 1,
        "server_stop": 1,
    }
    assert stats.first_time == T0
    assert stats.last_time == T0 + len(SESSION) - 1
    assert RoomSpan(namespace="/", room="lobby", first_offset=1, last_offset=7, count=7) in (
        stats.rooms
    )
    assert stats.damaged == 0
    drop_summaries(tmp_path)
    assert log_stats(tmp_path) == stats


def test_record_to_json() -> None:
    rec = record(3, args=(b"\x00\xff", float("nan"), [float("-inf"), {"k": b""}], "é"))
    assert record_to_json(rec) == {
        "offset": 3,
        "time": T0 + 3,
        "namespace": "/",
        "room": "lobby",
        "kind": "message",
        "sender": "sid-a",
        "event": "say",
        "args": [
            {"$bytes": "AP8="},
            {"$float": "nan"},
            [{"$float": "-inf"}, {"k": {"$bytes": ""}}],
            "é",
        ],
        "epoch": "",
    }


async def test_a_write_in_progress_reads_as_the_end_of_the_log(tmp_path: Path) -> None:
    config = LogConfig(directory=tmp_path, fsync="always")
    async with open_event_log(config, record_stop=False) as log:
        for offset in (1, 2):
            await log.append(record(offset))
        active = segment_path(tmp_path, log.statistics().segment)
        with active.open("ab") as file:  # as a reader may see a batch half written
            file.write(encode_record(record(3))[:20])
        assert [r.offset for r in iter_records(tmp_path, room="lobby")] == [1, 2]
        report = verify_log(tmp_path)
        assert report.in_use
        assert report.ok
        assert any("in-flight" in note for note in report.notes)
    # Without a writer the same torn tail is damage until the next open repairs it.
    report = verify_log(tmp_path)
    assert not report.ok
    assert "torn" in report.problems[0].message
    assert [r.offset for r in iter_records(tmp_path, room="lobby")] == [1, 2]


def test_verify_an_empty_or_missing_directory(tmp_path: Path) -> None:
    assert not verify_log(tmp_path / "missing").ok
    report = verify_log(tmp_path)
    assert not report.ok
    assert {p.message for p in report.problems} == {
        "epoch.json is missing",
        "the log has no segments",
    }


def test_readers_of_an_empty_directory_find_nothing(tmp_path: Path) -> None:
    assert list(iter_records(tmp_path)) == []
    assert room_history(tmp_path, "/", "lobby", last=3) == []
    assert membership_at(tmp_path, "/", "lobby", 3) == frozenset()
    assert list(itertools.islice(iter_records(tmp_path / "missing"), 1)) == []
