"""Opening a log: tail repair, damage in the middle, continuity checks and epochs."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomcast.engine.log import (
    Corruption,
    LogConfig,
    LogCorruptError,
    LogUnsupportedError,
    TailRepair,
    iter_records,
    open_event_log,
    verify_log,
)
from roomcast.engine.log.segment import (
    FAILED_MARKER,
    find_next_frame,
    iter_segment,
    list_segments,
    read_state,
    read_summary,
    segment_path,
    summary_path,
    write_state,
)
from roomcast.protocol import LogRecord, RecordKind, encode_record

from .log_helpers import offsets, record


def cfg(directory: Path, **changes: object) -> LogConfig:
    changes.setdefault("fsync", "always")
    changes.setdefault("segment_age", None)
    changes.setdefault("retention_age", None)
    return LogConfig(directory=directory, **changes)  # type: ignore[arg-type]


async def make_log(directory: Path, count: int = 10, *, start: int = 1, **changes: object) -> str:
    """Append ``count`` lobby records (no SERVER_STOP at the end); return the epoch."""
    async with open_event_log(cfg(directory, **changes), record_stop=False) as log:
        for offset in range(start, start + count):
            await log.append(record(offset, args=(f"message {offset}", b"\x00\x01")))
        return log.epoch


def frames(path: Path) -> list[tuple[int, LogRecord]]:
    """Positions and records of an intact segment."""
    with path.open("rb") as file:
        items = list(iter_segment(file, 0, max_record_bytes=1 << 20))
    assert not any(isinstance(item, Corruption) for item in items)
    return [item for item in items if not isinstance(item, Corruption)]


def position_of(path: Path, offset: int) -> tuple[int, int]:
    """Start and end of the lobby record with ``offset`` in segment ``path``."""
    found = frames(path)
    for index, (position, rec) in enumerate(found):
        if rec.room == "lobby" and rec.offset == offset:
            end = found[index + 1][0] if index + 1 < len(found) else path.stat().st_size
            return position, end
    raise AssertionError(f"no record {offset}")


def flip(path: Path, position: int, mask: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------ tail repair


async def test_torn_tail_is_truncated_reported_and_starts_a_new_epoch(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    old_epoch = await make_log(directory)
    seg = segment_path(directory, 1)
    intact = seg.stat().st_size
    torn = encode_record(record(11))[:30]
    with seg.open("ab") as file:
        file.write(torn)
    async with open_event_log(cfg(directory)) as log:
        report = log.repair_report
        assert report.repairs == (
            TailRepair(
                segment=1,
                position=intact,
                dropped_bytes=30,
                kind="torn",
                detail=report.repairs[0].detail,
            ),
        )
        assert "data ends 30 bytes into" in report.repairs[0].detail
        assert report.epoch_changed
        assert report.previous_epoch == old_epoch
        assert log.epoch != old_epoch
        assert any("truncated 00000000000000000001.seg at byte" in r for r in report.reasons)
        assert report.corruptions == ()
        assert report.clean_shutdown is True
        assert log.last_offset("/", "lobby") == 10
        assert log.statistics().segment == 2  # one epoch per segment
        new_epoch = log.epoch
    assert seg.stat().st_size == intact
    assert offsets(directory) == list(range(1, 11))
    epoch_records = [r for r in iter_records(directory) if r.kind is RecordKind.EPOCH]
    assert epoch_records[-1].epoch == new_epoch
    assert epoch_records[-1].args[0]["previous"] == old_epoch  # type: ignore[index,call-overload]
    assert verify_log(directory).ok


async def test_corrupt_last_record_is_truncated(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    await make_log(directory)
    seg = segment_path(directory, 1)
    start, end = position_of(seg, 10)
    flip(seg, end - 3)
    async with open_event_log(cfg(directory)) as log:
        (repair,) = log.repair_report.repairs
        assert (repair.segment, repair.position, repair.dropped_bytes) == (1, start, end - start)
        assert repair.kind == "corrupt"
        assert "checksum mismatch" in repair.detail
        assert log.last_offset("/", "lobby") == 9
    assert offsets(directory) == list(range(1, 10))
    assert verify_log(directory).ok


async def test_zero_filled_tail_is_truncated(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    await make_log(directory)
    seg = segment_path(directory, 1)
    size = seg.stat().st_size
    with seg.open("ab") as file:
        file.write(bytes(4096))
    async with open_event_log(cfg(directory)) as log:
        (repair,) = log.repair_report.repairs
        assert (repair.position, repair.dropped_bytes) == (size, 4096)
    assert offsets(directory) == list(range(1, 11))


# ------------------------------------------------------------------ damage in the middle


async def test_damage_in_the_middle_is_reported_with_its_position_never_cut(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "log"
    await make_log(directory)
    seg = segment_path(directory, 1)
    start, end = position_of(seg, 5)
    size = seg.stat().st_size
    flip(seg, start + 20)
    async with open_event_log(cfg(directory)) as log:
        report = log.repair_report
        assert report.repairs == ()
        (damage,) = report.corruptions
        assert (damage.segment, damage.position, damage.kind) == (1, start, "corrupt")
        assert damage.resumes_at == end
        assert not damage.tail
        assert report.epoch_changed
        assert any(f"byte {start}" in reason for reason in report.reasons)
        assert log.last_offset("/", "lobby") == 10  # records after the damage count
        assert log.statistics().segment == 2  # never append after damage
        await log.append(record(11))
    assert seg.stat().st_size == size  # nothing was cut

    with pytest.raises(LogCorruptError) as caught:
        list(iter_records(directory, room="lobby"))
    assert (caught.value.segment, caught.value.position) == (1, start)
    assert caught.value.resumes_at == end
    reported: list[Corruption] = []
    read = [r.offset for r in iter_records(directory, room="lobby", on_corrupt=reported.append)]
    assert read == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert [(c.segment, c.position) for c in reported] == [(1, start)]

    verified = verify_log(directory)
    assert not verified.ok
    assert [(p.segment, p.position) for p in verified.problems] == [(1, start)]

    # Reopening reports the known damage again (from the sealed segment's summary).
    async with open_event_log(cfg(directory)) as log:
        assert [(c.segment, c.position) for c in log.repair_report.corruptions] == [(1, start)]
        assert not log.repair_report.epoch_changed


async def test_a_damaged_length_field_in_the_middle_is_not_mistaken_for_a_torn_tail(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "log"
    await make_log(directory)
    seg = segment_path(directory, 1)
    start, end = position_of(seg, 5)
    size = seg.stat().st_size
    flip(seg, start + 1, 0x10)  # the length now reaches past the end of the file
    async with open_event_log(cfg(directory)) as log:
        assert log.repair_report.repairs == ()
        (damage,) = log.repair_report.corruptions
        assert (damage.position, damage.kind, damage.resumes_at) == (start, "corrupt", end)
        assert "a record follows" in damage.detail
    assert seg.stat().st_size == size
    found = [r.offset for r in iter_records(directory, room="lobby", on_corrupt=lambda c: None)]
    assert found == [1, 2, 3, 4, 6, 7, 8, 9, 10]


async def test_damage_in_a_sealed_segment_is_found_by_readers_and_verify(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    await make_log(directory, 40, segment_bytes=1000)
    assert len(list_segments(directory)) > 2
    seg = segment_path(directory, 1)
    position, _ = frames(seg)[2]
    flip(seg, position + 12)
    report = verify_log(directory)
    assert [(p.segment, p.position) for p in report.problems] == [(1, position)]
    with pytest.raises(LogCorruptError):
        list(iter_records(directory))


async def test_records_of_a_newer_schema_are_never_cut_off(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    await make_log(directory)
    seg = segment_path(directory, 1)
    body = msgpack.packb([2, 11, 1.0, "/", "lobby", 7, None, None, [], "", "new field"])
    with seg.open("ab") as file:
        file.write(struct.pack(">II", len(body), zlib.crc32(body)) + body)
    size = seg.stat().st_size
    for _ in range(2):  # the lock is released after the refusal
        with pytest.raises(LogUnsupportedError, match="schema version 2"):
            async with open_event_log(cfg(directory)):
                pass  # pragma: no cover
    assert seg.stat().st_size == size


# ------------------------------------------------------------------------- continuity


async def test_clean_and_unclean_reopen_keep_the_epoch(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    epoch = await make_log(directory)
    state = read_state(directory)
    assert state is not None
    write_state(directory, attrs.evolve(state, open=True))
    async with open_event_log(cfg(directory)) as log:
        # fsync=always: everything acknowledged was synced, a crash loses nothing.
        assert log.repair_report.clean_shutdown is False
        assert not log.repair_report.epoch_changed
        assert log.epoch == epoch


async def test_unclean_stop_with_fsync_never_after_a_reboot_changes_the_epoch(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "log"
    epoch = await make_log(directory, fsync="never")
    state = read_state(directory)
    assert state is not None
    write_state(directory, attrs.evolve(state, open=True))
    async with open_event_log(cfg(directory, fsync="never")) as log:
        # Same boot: the OS still had every write, nothing was lost.
        assert not log.repair_report.epoch_changed
    state = read_state(directory)
    assert state is not None
    write_state(directory, attrs.evolve(state, open=True, boot_id="x"))
    async with open_event_log(cfg(directory)) as log:
        assert log.repair_report.epoch_changed
        assert log.repair_report.previous_epoch == epoch
        assert "machine restarted" in log.repair_report.reasons[0]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("delete epoch file", "epoch.json is missing but segments exist"),
        ("garble epoch file", "not a valid epoch file"),
        ("delete last segment", "missing at the end"),
        ("delete middle segment", "segments 2..2 are missing"),
        ("delete all segments", "every segment of the log is gone"),
        ("failed marker", "stopped recording after a write error"),
    ],
)
async def test_lost_continuity_changes_the_epoch(tmp_path: Path, damage: str, reason: str) -> None:
    directory = tmp_path / "log"
    epoch = await make_log(directory, 30, segment_bytes=1000)
    numbers = list_segments(directory)
    assert len(numbers) >= 3
    if damage == "delete epoch file":
        (directory / "epoch.json").unlink()
    elif damage == "garble epoch file":
        (directory / "epoch.json").write_text('{"format": 1, "epoch": 3}')
    elif damage == "delete last segment":
        segment_path(directory, numbers[-1]).unlink()
    elif damage == "delete middle segment":
        segment_path(directory, 2).unlink()
    elif damage == "delete all segments":
        for number in numbers:
            segment_path(directory, number).unlink()
    else:
        (directory / FAILED_MARKER).touch()
    async with open_event_log(cfg(directory, segment_bytes=1000)) as log:
        report = log.repair_report
        assert report.epoch_changed
        assert any(reason in r for r in report.reasons), report.reasons
        assert report.previous_epoch == epoch
        assert log.epoch != epoch
        if damage == "delete all segments":
            assert log.statistics().segment == numbers[-1] + 1  # names are never reused
            assert log.last_offset("/", "lobby") is None
    assert not (directory / FAILED_MARKER).exists()
    assert verify_log(directory).ok
    async with open_event_log(cfg(directory, segment_bytes=1000)) as log:
        assert not log.repair_report.epoch_changed  # a loss is reported once


async def test_segments_of_another_log_are_detected(tmp_path: Path) -> None:
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    my_epoch = await make_log(mine)
    await make_log(theirs)
    shutil.copy(segment_path(theirs, 1), segment_path(mine, 1))
    async with open_event_log(cfg(mine)) as log:
        assert log.repair_report.epoch_changed
        assert "the log was replaced" in log.repair_report.reasons[0]
        assert log.repair_report.previous_epoch == my_epoch


async def test_interrupted_retention_and_roll_are_finished_quietly(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    epoch = await make_log(directory, 30, segment_bytes=1000)
    numbers = list_segments(directory)
    state = read_state(directory)
    assert state is not None
    # Retention had written epoch.json and crashed before deleting segment 1; a roll had
    # created the next segment and crashed before updating epoch.json; a summary is lost.
    write_state(directory, attrs.evolve(state, first_segment=2))
    segment_path(directory, numbers[-1] + 1).touch()
    summary_path(directory, 2).unlink()
    async with open_event_log(cfg(directory, segment_bytes=1000)) as log:
        assert not log.repair_report.epoch_changed
        assert log.epoch == epoch
        assert log.repair_report.removed_segments == (1,)
        assert log.statistics().segment == numbers[-1] + 1
    assert list_segments(directory)[0] == 2
    assert read_summary(directory, 2) is not None
    assert verify_log(directory).ok


# ------------------------------------------------------- damage detection, by property

_records = st.lists(
    st.builds(
        lambda offset, text, blob: record(offset, args=(text, blob)),
        st.integers(0, 2**40),
        st.text(max_size=30),
        st.binary(max_size=40),
    ),
    min_size=1,
    max_size=8,
)


def _layout(records: list[LogRecord]) -> tuple[bytes, list[int]]:
    encoded = [encode_record(r) for r in records]
    starts = [sum(len(e) for e in encoded[:i]) for i in range(len(encoded))]
    return b"".join(encoded), starts


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=_records, data=st.data())
def test_any_flipped_byte_costs_exactly_its_record_and_is_reported_there(
    records: list[LogRecord], data: st.DataObject
) -> None:
    segment, starts = _layout(records)
    where = data.draw(st.integers(0, len(segment) - 1))
    mask = data.draw(st.integers(1, 255))
    damaged = bytearray(segment)
    damaged[where] ^= mask
    hit = max(i for i, s in enumerate(starts) if s <= where)
    items = list(iter_segment(io.BytesIO(bytes(damaged)), 7, max_record_bytes=1 << 20))
    found = [item[1] for item in items if not isinstance(item, Corruption)]
    problems = [item for item in items if isinstance(item, Corruption)]
    assert found == records[:hit] + records[hit + 1 :]
    (problem,) = problems
    assert (problem.segment, problem.position) == (7, starts[hit])
    if hit + 1 < len(records):
        assert problem.resumes_at == starts[hit + 1]
        assert not problem.tail
    else:
        assert problem.resumes_at is None
        assert problem.tail


@settings(max_examples=150, deadline=None)
@given(records=_records, data=st.data())
def test_a_cut_anywhere_is_a_torn_tail_at_the_cut_record(
    records: list[LogRecord], data: st.DataObject
) -> None:
    segment, starts = _layout(records)
    cut = data.draw(st.integers(0, len(segment)))
    items = list(iter_segment(io.BytesIO(segment[:cut]), 0, max_record_bytes=1 << 20))
    whole = [i for i, s in enumerate(starts) if s + len(encode_record(records[i])) <= cut]
    found = [item[1] for item in items if not isinstance(item, Corruption)]
    assert found == [records[i] for i in whole]
    problems = [item for item in items if isinstance(item, Corruption)]
    if cut in (*starts, len(segment)):
        assert problems == []
    else:
        (problem,) = problems
        assert (problem.kind, problem.tail, problem.position) == ("torn", True, starts[len(whole)])


def test_find_next_frame_skips_zeros_and_garbage() -> None:
    frame = encode_record(record(1))
    assert find_next_frame(bytes(1000) + frame, 0, max_record_bytes=1 << 20) == 1000
    assert find_next_frame(b"\xff" * 999 + frame, 0, max_record_bytes=1 << 20) == 999
    assert find_next_frame(bytes(1000), 0, max_record_bytes=1 << 20) is None
    assert find_next_frame(frame + b"\x01", 1, max_record_bytes=1 << 20) is None
    assert find_next_frame(b"x" + frame, 0, 0, max_record_bytes=1 << 20) is None


def test_epoch_file_json_is_documented_shape(tmp_path: Path) -> None:
    state = read_state(tmp_path)
    assert state is None
    (tmp_path / "epoch.json").write_text(json.dumps({"format": 2}))
    with pytest.raises(ValueError, match="format is 2"):
        read_state(tmp_path)
