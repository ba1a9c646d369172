"""Write errors: a full disk or a failing sync fails cleanly, is reported, and never
acknowledges what was not written."""

from __future__ import annotations

import errno
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from roomcast.engine.log import (
    LogConfig,
    LogIO,
    LogWriteError,
    iter_records,
    open_event_log,
    verify_log,
)
from roomcast.engine.log.segment import FAILED_MARKER

from .log_helpers import FailingIO, offsets, record

ROOMS = ("a", "b", "c", "d")


async def append_until_failure(
    directory: Path, io: LogIO | None, *, policy: str = "always", blob: int = 200
) -> tuple[dict[str, list[int]], dict[str, list[int]], LogWriteError | None]:
    """Four rooms append concurrently until the log fails; return what was acknowledged,
    what was refused, and the log's failure."""
    acked: dict[str, list[int]] = {room: [] for room in ROOMS}
    refused: dict[str, list[int]] = {room: [] for room in ROOMS}
    codes: set[int | None] = set()
    config = LogConfig(directory=directory, fsync=policy)
    async with open_event_log(config, io=io) as log:

        async def room_writer(room: str) -> None:
            for offset in range(1, 2001):
                try:
                    await log.append(record(offset, room=room, args=(b"\x5a" * blob,)))
                except LogWriteError as exc:
                    refused[room].append(offset)
                    codes.add(exc.errno)
                    if len(refused[room]) >= 3:
                        return
                else:
                    assert not refused[room], "an append succeeded after the log failed"
                    acked[room].append(offset)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for room in ROOMS:
                    nursery.start_soon(room_writer, room)
        failure = log.failed
    assert codes <= {errno.ENOSPC, errno.EIO}
    return acked, refused, failure


def check_nothing_unwritten_was_acknowledged(directory: Path, acked: dict[str, list[int]]) -> None:
    report = verify_log(directory)
    assert report.ok, [p.describe() for p in report.problems]  # no partial record left
    for room in ROOMS:
        found = offsets(directory, room)
        assert found == list(range(1, len(found) + 1))
        assert acked[room] == list(range(1, len(acked[room]) + 1))
        assert set(acked[room]) <= set(found), room


async def test_disk_full_fails_cleanly_and_acknowledges_only_what_was_written(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "log"
    io = FailingIO(budget=50_000)  # the write that crosses it is partial, then ENOSPC
    acked, refused, failure = await append_until_failure(directory, io)
    assert failure is not None
    assert failure.errno == errno.ENOSPC
    assert "No space left on device" in str(failure)
    assert all(refused[room] for room in ROOMS)  # every later append was refused
    assert sum(len(v) for v in acked.values()) > 10
    assert (directory / FAILED_MARKER).exists()
    check_nothing_unwritten_was_acknowledged(directory, acked)
    # The next open knows events may be missing after the failure: a new epoch.
    async with open_event_log(LogConfig(directory=directory)) as log:
        assert log.repair_report.epoch_changed
        assert "write error" in log.repair_report.reasons[0]
    assert not (directory / FAILED_MARKER).exists()


@pytest.mark.parametrize("policy", ["always", "interval"])
async def test_a_failing_sync_acknowledges_nothing_it_covered(tmp_path: Path, policy: str) -> None:
    directory = tmp_path / "log"
    io = FailingIO(fail_fsync_after=5)
    acked, refused, failure = await append_until_failure(directory, io, policy=policy)
    assert failure is not None
    assert failure.errno == errno.EIO
    assert all(refused[room] for room in ROOMS)
    # Every acknowledged append was covered by one of the five successful syncs.
    assert sum(len(v) for v in acked.values()) <= io.fsyncs * len(ROOMS)
    check_nothing_unwritten_was_acknowledged(directory, acked)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 192 KiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mountpoint = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mountpoint.mkdir()
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount command")
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode(errors='replace')}")
    yield mountpoint
    subprocess.run(["umount", str(mountpoint)], check=False)


async def test_a_real_full_tmpfs(small_tmpfs: Path, tmp_path: Path) -> None:
    directory = small_tmpfs / "log"
    acked, _, failure = await append_until_failure(directory, None, blob=1500)
    assert failure is not None
    assert failure.errno == errno.ENOSPC
    assert sum(len(v) for v in acked.values()) > 20
    check_nothing_unwritten_was_acknowledged(directory, acked)
    # Reopen a copy where there is room: repaired, and a new epoch.
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    async with open_event_log(LogConfig(directory=copy)) as log:
        assert log.repair_report.epoch_changed
    assert {r.room for r in iter_records(copy) if r.namespace == "/"} == set(ROOMS)
