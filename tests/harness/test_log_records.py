"""``log_records`` and ``Harness.log_records``: assertions on what the event log recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from roomcast.engine import Config
from roomcast.engine.log import LogConfig, open_event_log
from roomcast.engine.pytest_plugin import ServeFactory
from roomcast.engine.testing import log_records
from roomcast.protocol import LogRecord, RecordKind

from .conftest import room_app


def entry(offset: int, room: str, kind: RecordKind, event: str | None = None) -> LogRecord:
    return LogRecord(
        offset=offset,
        time=1_700_000_000.0 + offset,
        namespace="/",
        room=room,
        kind=kind,
        sender="sid-a",
        event=event,
        args=("hi",) if event else (),
        epoch="",
    )


async def test_log_records_filters_by_room_kind_and_event(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_event_log(LogConfig(directory=tmp_path, fsync="never")) as log:
            await log.append(entry(1, "lobby", RecordKind.JOIN))
            await log.append(entry(2, "lobby", RecordKind.MESSAGE, "say"))
            await log.append(entry(1, "other", RecordKind.JOIN))
            await log.append(entry(3, "lobby", RecordKind.MESSAGE, "shout"))
            await log.flush()
            lobby = log_records(tmp_path, room="lobby")
            assert [(r.offset, r.kind) for r in lobby] == [
                (1, RecordKind.JOIN),
                (2, RecordKind.MESSAGE),
                (3, RecordKind.MESSAGE),
            ]
            said = log_records(tmp_path, namespace="/", kind=RecordKind.MESSAGE, event="say")
            assert [(r.room, r.args) for r in said] == [("lobby", ("hi",))]
            assert [r.room for r in log_records(tmp_path, kind=RecordKind.JOIN)] == [
                "lobby",
                "other",
            ]
    # The server's own records (start, stop, epoch) are in namespace "".
    kinds = {r.kind for r in log_records(tmp_path, namespace="")}
    assert RecordKind.SERVER_START in kinds
    assert RecordKind.SERVER_STOP in kinds


async def test_a_damaged_log_is_reported_not_skipped(tmp_path: Path) -> None:
    from roomcast.engine.log import LogCorruptError

    with trio.fail_after(10):
        async with open_event_log(LogConfig(directory=tmp_path, fsync="never")) as log:
            for offset in range(1, 6):
                await log.append(entry(offset, "lobby", RecordKind.MESSAGE, "say"))
    flip_a_middle_byte(tmp_path)
    with pytest.raises(LogCorruptError):
        log_records(tmp_path, room="lobby")


def flip_a_middle_byte(directory: Path) -> None:
    """Damage the log with whole records after the damage (so not a torn tail)."""
    (segment,) = [p for p in directory.iterdir() if p.suffix == ".seg"]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))


async def test_the_harness_reads_what_the_servers_log_recorded(
    roomcast_serve: ServeFactory, tmp_path: Path
) -> None:
    server = room_app(Config(log=LogConfig(directory=tmp_path / "log", fsync="never")))
    harness = await roomcast_serve(server, transport="tcp")
    with trio.fail_after(10):
        client = await harness.connect()
        await client.call("join", "r")
        await client.call("say", "r", "hi")
        joins = await harness.log_records(room="r", kind=RecordKind.JOIN)
        assert [(r.namespace, r.sender) for r in joins] == [("/", client.sid())]
        said = await harness.log_records(room="r", kind=RecordKind.MESSAGE, event="said")
        assert [r.args for r in said] == [("hi",)]
        starts = await harness.log_records(namespace="", kind=RecordKind.SERVER_START)
        assert len(starts) == 1


async def test_no_log_no_records(roomcast_serve: ServeFactory) -> None:
    harness = await roomcast_serve(room_app(Config(log=LogConfig(enabled=False))), transport="tcp")
    with pytest.raises(RuntimeError, match="no event log open"):
        await harness.log_records()
