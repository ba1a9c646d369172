"""The event-log writer: appends, group commit, fsync policies, rolling, retention, closing."""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from roomcast.engine.log import (
    EventLog,
    FsyncPolicy,
    LogClosedError,
    LogConfig,
    LogLockedError,
    iter_records,
    open_event_log,
    verify_log,
)
from roomcast.engine.log.segment import (
    SummaryBuilder,
    iter_segment,
    list_segments,
    read_state,
    read_summary,
    segment_path,
)
from roomcast.protocol import LocalProtocolError, LogValue, RecordKind

from .log_helpers import T0, GatedIO, offsets, record


def config(tmp_path: Path, **changes: object) -> LogConfig:
    # The test records are dated 2023: age-based rolling and retention only where asked.
    # Sequential appends under "interval" wait one interval each: "always" is faster here.
    changes.setdefault("fsync", "always")
    changes.setdefault("segment_age", None)
    changes.setdefault("retention_age", None)
    return LogConfig(directory=tmp_path / "log", **changes)  # type: ignore[arg-type]


def test_config_defaults_and_validation(tmp_path: Path) -> None:
    default = LogConfig()
    assert default.enabled
    assert default.directory == "./roomcast-log"
    assert default.fsync is FsyncPolicy.INTERVAL
    assert default.fsync_interval == 0.005
    assert LogConfig(fsync="always").fsync is FsyncPolicy.ALWAYS
    assert LogConfig(directory=tmp_path).directory == str(tmp_path)
    with pytest.raises(ValueError, match="sometimes"):
        LogConfig(fsync="sometimes")
    with pytest.raises(ValueError, match="segment_bytes must be > 0"):
        LogConfig(segment_bytes=0)
    with pytest.raises(ValueError, match="retention_age must be > 0"):
        LogConfig(retention_age=-1.0)
    assert LogConfig(retention_bytes=None, retention_age=None).retention_bytes is None


async def test_disabled_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="disabled"):
        async with open_event_log(config(tmp_path, enabled=False)):
            pass  # pragma: no cover


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
async def test_appends_round_trip_with_binary_payloads(tmp_path: Path, policy: str) -> None:
    with trio.fail_after(10):
        async with open_event_log(config(tmp_path, fsync=policy), clock=lambda: T0) as log:
            assert log.repair_report.epoch_changed
            assert log.repair_report.reasons == ("new log",)
            stored = []
            for offset in range(1, 21):
                payload: tuple[LogValue, ...] = (
                    bytes([offset, 0, 255]),
                    {"n": offset, "text": "héllo"},
                    [1.5, None],
                )
                stored.append(await log.append(record(offset, args=payload)))
            assert all(r.epoch == log.epoch for r in stored)
            epoch = log.epoch
    records = list(iter_records(tmp_path / "log"))
    kinds = [r.kind for r in records]
    assert kinds == [
        RecordKind.EPOCH,
        RecordKind.SERVER_START,
        *[RecordKind.MESSAGE] * 20,
        RecordKind.SERVER_STOP,
    ]
    assert [r for r in records if r.kind is RecordKind.MESSAGE] == stored
    assert {r.epoch for r in records} == {epoch}
    # The server stream numbers the log's own records 1, 2, 3.
    assert [r.offset for r in records if r.namespace == ""] == [1, 2, 3]
    assert records[0].args == ({"previous": None, "reasons": ["new log"]},)
    assert records[1].args[0] == {"pid": records[1].args[0]["pid"], "fsync": policy}  # type: ignore[index,call-overload]
    state = read_state(tmp_path / "log")
    assert state is not None
    assert not state.open
    assert state.fsync == policy
    assert verify_log(tmp_path / "log").ok


async def test_reopen_keeps_epoch_and_recovers_last_offsets(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_event_log(config(tmp_path)) as log:
            for offset in range(1, 6):
                await log.append(record(offset, room="a"))
            await log.append(record(7, room="b", namespace="/chat"))
            assert log.last_offset("/", "a") == 5
            epoch = log.epoch
        async with open_event_log(config(tmp_path)) as log:
            assert not log.repair_report.epoch_changed
            assert log.repair_report.clean_shutdown is True
            assert log.epoch == epoch
            assert log.last_offset("/", "a") == 5
            assert log.last_offset("/chat", "b") == 7
            assert log.last_offset("/", "nowhere") is None
            assert log.last_offset("", "") == 4  # EPOCH, START, STOP, and this START
            await log.append(record(6, room="a"))
    assert offsets(tmp_path / "log", "a") == [1, 2, 3, 4, 5, 6]


async def test_record_epoch_is_replaced_by_the_logs(tmp_path: Path) -> None:
    async with open_event_log(config(tmp_path), record_start=False) as log:
        stored = await log.append(attrs.evolve(record(1), epoch="someone-elses"))
        assert stored.epoch == log.epoch
        assert log.append_nowait(record(2)).epoch == log.epoch


async def test_append_nowait_stores_every_field(tmp_path: Path) -> None:
    """A record with ``exclude`` and one without (the common record, which the log's
    own encoder packs) read back as appended, with the log's epoch, in order; one the
    log cannot store is refused and queues nothing."""
    plain = attrs.evolve(record(1, sender="sid-1", args=("hi", 2, None)), exclude=())
    excluding = attrs.evolve(record(2, args=({"k": [1.5]},)), exclude=("sid-2", "sid-3"))
    async with open_event_log(config(tmp_path), record_start=False, record_stop=False) as log:
        log.append_nowait(plain)
        with pytest.raises(LocalProtocolError, match="argument of type bytearray"):
            log.append_nowait(record(3, args=(bytearray(b"x"),)))  # type: ignore[arg-type]  # the error under test
        log.append_nowait(excluding)
        assert log.statistics().queued == 2
        epoch = log.epoch
    stored = [r for r in iter_records(tmp_path / "log") if r.namespace]
    assert stored == [attrs.evolve(plain, epoch=epoch), attrs.evolve(excluding, epoch=epoch)]


async def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    """With fsync=always, appends that queue while a sync runs share the next one."""
    with trio.fail_after(20):
        async with open_event_log(
            config(tmp_path, fsync="always"), record_start=False, record_stop=False
        ) as log:
            before = log.statistics()

            async def room_writer(room: str) -> None:
                for offset in range(1, 21):
                    await log.append(record(offset, room=room))

            async with trio.open_nursery() as nursery:
                for i in range(25):
                    nursery.start_soon(room_writer, f"room-{i}")
            after = log.statistics()
    written = after.records_written - before.records_written
    batches = after.batches - before.batches
    assert written == 500
    assert batches < written / 2, (batches, written)
    assert after.syncs - before.syncs == batches  # always: one sync per batch
    for i in range(25):
        assert offsets(tmp_path / "log", f"room-{i}") == list(range(1, 21))


async def test_interval_policy_syncs_far_less_than_always(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_event_log(
            config(tmp_path, fsync="interval", fsync_interval=0.05),
            record_start=False,
            record_stop=False,
        ) as log:
            before = log.statistics()

            async def room_writer(room: str) -> None:
                for offset in range(1, 11):
                    await log.append(record(offset, room=room))

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(room_writer, f"room-{i}")
            after = log.statistics()
    assert after.records_written - before.records_written == 200
    # Ten rounds of appends, each acknowledged by one interval sync.
    assert after.syncs - before.syncs <= 12


async def test_never_policy_does_not_sync_until_flush_or_close(tmp_path: Path) -> None:
    async with open_event_log(config(tmp_path, fsync="never"), record_start=False) as log:
        await log.flush()
        syncs = log.statistics().syncs
        for offset in range(1, 51):
            await log.append(record(offset))
        assert log.statistics().syncs == syncs
        await log.flush()
        assert log.statistics().syncs == syncs + 1
    assert offsets(tmp_path / "log") == list(range(1, 51))


@pytest.mark.parametrize("policy", ["interval", "never"])
async def test_appends_nobody_waits_for_go_in_one_write_within_the_interval(
    tmp_path: Path, policy: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A stream of ``append_nowait`` does not wake the writer for each one: they are
    written together ``fsync_interval`` after the first was queued."""
    interval = 0.05
    async with open_event_log(
        config(tmp_path, fsync=policy, fsync_interval=interval),
        record_start=False,
        record_stop=False,
    ) as log:
        await log.flush()
        before = log.statistics()
        start = trio.current_time()
        for offset in range(1, 21):
            log.append_nowait(record(offset))
            await trio.sleep(interval / 100)  # the writer could run between them
        assert log.statistics().records_written == before.records_written
        await trio.sleep_until(start + interval * 1.5)
        after = log.statistics()
        assert after.records_written - before.records_written == 20
        assert after.batches - before.batches == 1
    assert offsets(tmp_path / "log") == list(range(1, 21))


async def test_an_awaited_append_takes_the_queued_ones_with_it(tmp_path: Path) -> None:
    async with open_event_log(
        config(tmp_path, fsync="never", fsync_interval=10.0),
        record_start=False,
        record_stop=False,
    ) as log:
        await log.flush()
        before = log.statistics()
        log.append_nowait(record(1))
        log.append_nowait(record(2))
        with trio.fail_after(5):  # far less than the interval: the append woke the writer
            await log.append(record(3))
        after = log.statistics()
        assert after.records_written - before.records_written == 3
        assert after.batches - before.batches == 1
    assert offsets(tmp_path / "log") == [1, 2, 3]


@pytest.mark.parametrize(("policy", "max_batch"), [("always", 1024), ("interval", 4)])
async def test_append_nowait_is_written_at_once_under_always_or_a_full_batch(
    tmp_path: Path, policy: str, max_batch: int
) -> None:
    async with open_event_log(
        config(tmp_path, fsync=policy, fsync_interval=10.0, max_batch=max_batch),
        record_start=False,
        record_stop=False,
    ) as log:
        await log.flush()
        before = log.statistics()
        count = 1 if policy == "always" else max_batch
        for offset in range(1, count + 1):
            log.append_nowait(record(offset))
        # Not a wait for the interval: the writer was woken, and it wrote them before
        # it went on to sync them (in a thread) or to wait again.
        await trio.testing.wait_all_tasks_blocked()
        assert log.statistics().records_written - before.records_written == count


@contextlib.asynccontextmanager
async def stuck_writer(tmp_path: Path, inbox_size: int) -> AsyncIterator[tuple[EventLog, GatedIO]]:
    """A log whose writer took record 1 and is stuck syncing it (until ``io.gate`` opens),
    so what is appended next stays in the inbox."""
    io = GatedIO()
    async with open_event_log(
        config(tmp_path, inbox_size=inbox_size), io=io, record_start=False, record_stop=False
    ) as log:
        io.blocked = True
        log.append_nowait(record(1))
        await trio.to_thread.run_sync(io.entered.wait)
        yield log, io


async def test_append_nowait_raises_would_block_when_the_inbox_is_full(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with stuck_writer(tmp_path, inbox_size=3) as (log, io):
            for offset in (2, 3, 4):
                log.append_nowait(record(offset))
            assert log.statistics().queued == 3
            with pytest.raises(trio.WouldBlock):
                log.append_nowait(record(5))
            # A blocking append that is cancelled while waiting for room is not accepted.
            with trio.move_on_after(0.01):
                await log.append(record(99))
            assert log.last_offset("/", "lobby") == 4
            io.blocked = False
            io.gate.set()
            await log.flush()
    assert offsets(tmp_path / "log") == [1, 2, 3, 4]


async def test_appends_waiting_for_room_are_admitted_first_come_first(tmp_path: Path) -> None:
    """Awaited appends that find the inbox full wait in line: they are written in the
    order they came, and one cancelled while it waits is not accepted."""
    with trio.fail_after(10):
        async with stuck_writer(tmp_path, inbox_size=2) as (log, io):
            log.append_nowait(record(2))
            log.append_nowait(record(3))
            acknowledged: list[int] = []

            async def append(offset: int) -> None:
                await log.append(record(offset))
                acknowledged.append(offset)

            async with trio.open_nursery() as nursery:
                for offset in (4, 5, 6):
                    nursery.start_soon(append, offset)
                    await trio.testing.wait_all_tasks_blocked()
                cancelled = trio.CancelScope()

                async def append_cancelled() -> None:
                    with cancelled:
                        await append(99)

                nursery.start_soon(append_cancelled)
                await trio.testing.wait_all_tasks_blocked()
                cancelled.cancel()  # while it waits
                await trio.testing.wait_all_tasks_blocked()
                assert log.statistics().queued == 2
                with pytest.raises(trio.WouldBlock):
                    log.append_nowait(record(7))
                io.blocked = False
                io.gate.set()
            assert sorted(acknowledged) == [4, 5, 6]  # (99 was not accepted)
            assert log.last_offset("/", "lobby") == 6
    assert offsets(tmp_path / "log") == [1, 2, 3, 4, 5, 6]


async def test_closing_refuses_the_appends_waiting_for_room(tmp_path: Path) -> None:
    refused: list[int] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, stuck_writer(tmp_path, 1) as (log, io):
            log.append_nowait(record(2))

            async def append(offset: int) -> None:
                try:
                    await log.append(record(offset))
                except LogClosedError:
                    refused.append(offset)

            nursery.start_soon(append, 3)
            await trio.testing.wait_all_tasks_blocked()
            io.blocked = False
            io.gate.set()
            # Leaving the block closes the log while 3 waits for room.
    assert refused == [3]
    assert offsets(tmp_path / "log") == [1, 2]


async def test_a_batch_is_cut_at_max_batch_and_max_batch_bytes(tmp_path: Path) -> None:
    async with open_event_log(
        config(tmp_path, fsync="never", fsync_interval=10.0, max_batch=4, max_batch_bytes=400),
        record_start=False,
        record_stop=False,
    ) as log:
        await log.flush()
        before = log.statistics()
        for offset in range(1, 4):
            log.append_nowait(record(offset))
        for offset in range(4, 7):  # 244 bytes each, the others 45: two reach max_batch_bytes
            log.append_nowait(record(offset, args=("x" * 200,)))
        for offset in range(7, 17):
            log.append_nowait(record(offset))
        await log.flush()
        after = log.statistics()
        assert after.records_written - before.records_written == 16
        # 1-4 (max_batch), 5-6 (the bytes), 7-10, 11-14, 15-16.
        assert after.batches - before.batches == 5
    assert offsets(tmp_path / "log") == list(range(1, 17))


async def test_unencodable_record_is_refused_before_it_is_accepted(tmp_path: Path) -> None:
    async with open_event_log(config(tmp_path), record_start=False) as log:
        with pytest.raises(LocalProtocolError):
            await log.append(record(1, args=(object(),)))  # type: ignore[arg-type]
        log.append_nowait(record(1, args=(b"x" * 2000,)))
        with pytest.raises(LocalProtocolError):
            log.append_nowait(record(2, time=float("nan")))
        assert log.last_offset("/", "lobby") == 1


async def test_appends_after_close_are_refused(tmp_path: Path) -> None:
    async with open_event_log(config(tmp_path)) as log:
        kept: EventLog = log
    with pytest.raises(LogClosedError):
        await kept.append(record(1))
    with pytest.raises(LogClosedError):
        kept.append_nowait(record(1))
    with pytest.raises(LogClosedError):
        await kept.flush()


async def test_cancelled_owner_still_writes_what_was_accepted(tmp_path: Path) -> None:
    with trio.CancelScope() as scope:
        async with open_event_log(config(tmp_path, fsync="never")) as log:
            for offset in range(1, 101):
                log.append_nowait(record(offset))
            scope.cancel()
            await trio.sleep_forever()
    assert offsets(tmp_path / "log") == list(range(1, 101))
    records = list(iter_records(tmp_path / "log"))
    assert records[-1].kind is RecordKind.SERVER_STOP
    state = read_state(tmp_path / "log")
    assert state is not None
    assert not state.open


async def test_a_second_writer_is_locked_out(tmp_path: Path) -> None:
    async with open_event_log(config(tmp_path)):
        with pytest.raises(LogLockedError) as info:
            async with open_event_log(config(tmp_path)):
                pass  # pragma: no cover
    # It says which directory and which process holds it (here: this one).
    assert info.value.directory == str(tmp_path / "log")
    assert info.value.pid == os.getpid()
    assert f"(PID {os.getpid()})" in str(info.value)
    async with open_event_log(config(tmp_path)) as log:  # released on close
        assert not log.repair_report.epoch_changed


async def test_segments_roll_at_size_with_summaries(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    async with open_event_log(
        config(tmp_path, fsync="never", segment_bytes=2000, retention_bytes=None),
        record_start=False,
    ) as log:
        for offset in range(1, 201):
            await log.append(record(offset, args=("x" * 40,)))
        assert log.statistics().segment > 5
    numbers = list_segments(directory)
    assert numbers == list(range(1, len(numbers) + 1))
    for number in numbers[:-1]:
        size = (directory / f"{number:020d}.seg").stat().st_size
        assert size <= 2000
        summary = read_summary(directory, number, size=size)
        assert summary is not None
        assert summary.size == size
    assert offsets(directory) == list(range(1, 201))
    state = read_state(directory)
    assert state is not None
    assert (state.first_segment, state.last_segment) == (1, numbers[-1])
    assert verify_log(directory).ok


async def test_summaries_count_batches_of_many_rooms_kinds_and_times(tmp_path: Path) -> None:
    # The writer sums a batch up at once (one pass per part of the summary); here every
    # sealed segment's summary is rebuilt record by record from what the segment holds:
    # they agree, for batches in one place and in several, with times out of order.
    directory = tmp_path / "log"
    async with open_event_log(
        config(tmp_path, fsync="never", segment_bytes=2000, retention_bytes=None),
        record_start=False,
    ) as log:
        offset = 0
        for round_ in range(30):
            for _ in range(5):  # a client's events: the lobby only
                offset += 1
                log.append_fields_nowait(
                    offset, T0 + 100 - offset, "/", "", RecordKind.MESSAGE, "sid", "m", ("x",)
                )
            if round_ % 2:  # a broadcast's records for two rooms, and a join elsewhere
                offset += 1
                await log.append_all(
                    [record(offset, room="a"), record(offset, room="b", time=T0 + offset)]
                )
                offset += 1
                log.append_fields_nowait(offset, T0, "/chat", "c", RecordKind.JOIN, "sid")
            await log.flush()
    assert verify_log(directory).ok
    sealed = list_segments(directory)[:-1]
    assert len(sealed) > 3
    for number in sealed:
        rebuilt = SummaryBuilder()
        with segment_path(directory, number).open("rb") as file:
            items = list(iter_segment(file, number, max_record_bytes=1 << 20))
        records = [item[1] for item in items if isinstance(item, tuple)]
        assert len(records) == len(items)  # (no damage)
        for record_ in records:
            rebuilt.add(record_)
        size = segment_path(directory, number).stat().st_size
        summary = read_summary(directory, number)
        assert summary == rebuilt.build(number, size)
        assert summary.kinds == dict(Counter(r.kind.name.lower() for r in records))
        assert summary.first_time == min(r.time for r in records)


async def test_batches_cut_between_appends_of_several_records_keep_their_summaries(
    tmp_path: Path,
) -> None:
    """Appends of one record and of three (a broadcast's, one per room) queued together
    and taken two appends a batch, over segments that roll inside batches: every segment's
    summary counts exactly the records it holds, and no append is split."""
    directory = tmp_path / "log"
    async with open_event_log(
        config(tmp_path, fsync="never", fsync_interval=10.0, max_batch=2, segment_bytes=800),
        record_start=False,
    ) as log:
        offset = 0
        for round_ in range(24):
            for _ in range(round_ % 4):
                offset += 1
                log.append_nowait(record(offset, room="", args=("x" * 30,)))
            offset += 1
            rooms = [record(offset, room=room, time=T0 - offset) for room in "abc"]
            await log.submit(rooms, lambda error: None)
        await log.flush()
        statistics = log.statistics()
        assert statistics.segment > 5
        assert statistics.batches > 30  # (24 appends of three records, 36 of one)
    assert verify_log(directory).ok
    for number in list_segments(directory)[:-1]:  # (the sealed ones: they have summaries)
        with segment_path(directory, number).open("rb") as file:
            items = list(iter_segment(file, number, max_record_bytes=1 << 20))
        records = [item[1] for item in items if isinstance(item, tuple)]
        assert len(records) == len(items)
        rebuilt = SummaryBuilder()
        for record_ in records:
            rebuilt.add(record_)
        size = segment_path(directory, number).stat().st_size
        assert size <= 800  # (a batch that does not fit is cut between its appends)
        summary = read_summary(directory, number)
        assert summary == rebuilt.build(number, size)
        # A broadcast's three records are in one segment.
        by_offset = Counter(r.offset for r in records if r.room in ("a", "b", "c"))
        assert set(by_offset.values()) <= {3}


async def test_a_record_larger_than_a_segment_gets_one_alone(tmp_path: Path) -> None:
    async with open_event_log(config(tmp_path, segment_bytes=100), record_start=False) as log:
        await log.append(record(1, args=("y" * 500,)))
        await log.append(record(2, args=("y" * 500,)))
    assert offsets(tmp_path / "log") == [1, 2]
    assert verify_log(tmp_path / "log").ok


async def test_retention_by_size_deletes_oldest_segments(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    async with open_event_log(
        config(tmp_path, fsync="never", segment_bytes=1000, retention_bytes=3000),
        record_start=False,
    ) as log:
        for offset in range(1, 151):
            await log.append(record(offset, args=("z" * 40,)))
    numbers = list_segments(directory)
    assert numbers[0] > 1
    total = sum((directory / f"{n:020d}.seg").stat().st_size for n in numbers)
    assert total <= 3000 + 1000
    state = read_state(directory)
    assert state is not None
    assert state.first_segment == numbers[0]
    assert not list(directory.glob(f"{1:020d}.*"))
    kept = offsets(directory)
    assert kept == list(range(kept[0], 151))  # a suffix of the stream, no holes
    assert verify_log(directory).ok
    async with open_event_log(config(tmp_path, segment_bytes=1000, retention_bytes=3000)) as log:
        assert not log.repair_report.epoch_changed  # retention is not a reset
        assert log.last_offset("/", "lobby") == 150


async def test_retention_by_age_and_segment_age_roll(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    now = [T0]

    def clock() -> float:
        return now[0]

    cfg = config(tmp_path, segment_age=60.0, retention_age=3600.0, retention_bytes=None)
    async with open_event_log(cfg, clock=clock, record_start=False) as log:
        for offset in range(1, 4):
            await log.append(record(offset, time=now[0]))
        now[0] += 61  # the segment is now too old: the next write rolls it
        await log.append(record(4, time=now[0]))
        assert log.statistics().segment == 2
        now[0] += 3600  # segment 1's newest record is now past retention
        await log.append(record(5, time=now[0]))  # rolls again, then retention runs
        assert log.statistics().segment == 3
    assert list_segments(directory) == [2, 3]
    assert offsets(directory) == [4, 5]


async def test_epoch_file_is_valid_json_while_open(tmp_path: Path) -> None:
    async with open_event_log(config(tmp_path)) as log:
        data = json.loads((tmp_path / "log" / "epoch.json").read_text())
        assert data["open"] is True
        assert data["epoch"] == log.epoch
        assert data["format"] == 1


async def test_lock_and_fds_are_released_when_recovery_fails(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    directory.mkdir()
    (directory / "epoch.json").write_text("{not json")
    (directory / f"{1:020d}.seg").write_bytes(b"")
    (directory / f"{1:020d}.seg").chmod(0o000)
    try:
        # Root reads anything: then the open succeeds with a new epoch instead.
        async with open_event_log(config(tmp_path)) as log:
            assert log.repair_report.epoch_changed
            assert "not a valid epoch file" in log.repair_report.reasons[0]
    except PermissionError:
        pass
    finally:
        (directory / f"{1:020d}.seg").chmod(0o644)
    async with open_event_log(config(tmp_path)):
        pass
