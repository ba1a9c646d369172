"""Opening a log directory: lock it, check continuity, repair a torn tail, pick the epoch.

`repair_log` is synchronous (the writer runs it in a thread). What it checks and decides is
specified in ``docs/event-log.md`` ("Opening and repair"). In short:

* A torn or corrupt **last** record (nothing readable after it, up to the end of the
  newest segment) is cut off, and reported with its segment, byte position and cause.
* Damage with readable records after it ("in the middle") is never cut off: it is
  reported with its position, left in place for inspection, and the writer starts a
  new segment.
* The epoch changes whenever continuity with the records already in the log cannot be
  guaranteed: a new or replaced log, a missing or unreadable epoch file, missing
  segments, a truncated tail, damage in the newest segment, a previous write error,
  or an unclean stop with ``fsync=never`` followed by a reboot.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import secrets
from pathlib import Path

import attrs

from roomcast.engine.log.config import FsyncPolicy, LogConfig
from roomcast.engine.log.errors import LogLockedError, LogUnsupportedError
from roomcast.engine.log.segment import (
    EPOCH_FILE,
    FAILED_MARKER,
    LOCK_FILE,
    Corruption,
    DamageKind,
    LogState,
    SegmentSummary,
    SummaryBuilder,
    boot_id,
    fsync_directory,
    iter_segment,
    list_segments,
    read_state,
    read_summary,
    segment_name,
    segment_path,
    summary_path,
    write_state,
    write_summary,
)

__all__ = [
    "RepairReport",
    "RepairedLog",
    "TailRepair",
    "lock_directory",
    "new_epoch_id",
    "repair_log",
    "summarise_segment",
]

logger = logging.getLogger(__name__)


def new_epoch_id() -> str:
    """A fresh epoch id: 16 random hex digits."""
    return secrets.token_hex(8)


@attrs.frozen(kw_only=True)
class TailRepair:
    """A damaged last record that was cut off when the log was opened.

    Attributes:
        segment: The segment that was truncated.
        position: Where it was cut: its new size, the end of the last intact record.
        dropped_bytes: How many bytes were removed.
        kind: ``"torn"`` (the record was incomplete) or ``"corrupt"`` (bad bytes).
        detail: What was wrong, for humans.
    """

    segment: int
    position: int
    dropped_bytes: int
    kind: DamageKind
    detail: str

    def describe(self) -> str:
        """One line for humans."""
        return (
            f"truncated {segment_name(self.segment)} at byte {self.position}: dropped"
            f" {self.dropped_bytes} bytes of a {self.kind} last record ({self.detail})"
        )


@attrs.frozen(kw_only=True)
class RepairReport:
    """What opening the log found and did.

    Attributes:
        directory: The log directory.
        epoch: The epoch the writer appends in.
        previous_epoch: The epoch before, when it changed (None for a new log).
        epoch_changed: Whether this open started a new epoch.
        reasons: Why the epoch changed, for humans (empty when it did not).
        clean_shutdown: Whether the previous writer closed the log (None: no epoch file).
        repairs: Damaged last records that were cut off.
        corruptions: Damage left in place (reported, never skipped silently).
        removed_segments: Segments already retired by retention whose deletion had been
            interrupted, and which were deleted now.
        segments: How many segments the log has after opening.
    """

    directory: str
    epoch: str
    previous_epoch: str | None
    epoch_changed: bool
    reasons: tuple[str, ...]
    clean_shutdown: bool | None
    repairs: tuple[TailRepair, ...]
    corruptions: tuple[Corruption, ...]
    removed_segments: tuple[int, ...]
    segments: int


@attrs.define(eq=False)
class RepairedLog:
    """The state `repair_log` hands to the writer."""

    report: RepairReport
    state: LogState
    sealed: list[SegmentSummary]
    active: int
    active_size: int
    builder: SummaryBuilder
    last_offsets: dict[tuple[str, str], int]


def lock_directory(directory: Path) -> int:
    """Create ``directory`` if needed and take its writer lock; return the lock's fd.

    The lock is released when the fd is closed (or the process dies). The holder writes
    its process id into the lock file, so that a second writer can say who holds it (the
    id stays after the holder is gone, but is only read while the lock is held).

    Raises:
        LogLockedError: Another writer holds it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            os.close(fd)
            raise
        holder = _lock_holder(fd)
        os.close(fd)
        held_by = "" if holder is None else f" (PID {holder})"
        raise LogLockedError(
            f"{directory} is open by another writer{held_by}",
            directory=str(directory),
            pid=holder,
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def _lock_holder(fd: int) -> int | None:
    """The process id the lock's holder wrote, or None (an older writer wrote none)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def summarise_segment(
    directory: Path, segment: int, *, max_record_bytes: int
) -> tuple[SegmentSummary, SummaryBuilder]:
    """Read a whole segment and summarise it (damage included)."""
    builder = SummaryBuilder()
    damage: list[Corruption] = []
    path = segment_path(directory, segment)
    with path.open("rb") as file:
        for item in iter_segment(file, segment, max_record_bytes=max_record_bytes):
            if isinstance(item, Corruption):
                damage.append(item)
            else:
                builder.add(item[1])
        size = os.fstat(file.fileno()).st_size
    return builder.build(segment, size, tuple(damage)), builder


def _merge_offsets(offsets: dict[tuple[str, str], int], summary: SegmentSummary) -> None:
    for key, span in summary.rooms.items():
        if span.last_offset > offsets.get(key, -1):
            offsets[key] = span.last_offset


def _check_unsupported(damage: tuple[Corruption, ...] | list[Corruption]) -> None:
    for corruption in damage:
        if corruption.kind == "unsupported":
            raise LogUnsupportedError(
                f"the log holds records this roomcast cannot read ({corruption.describe()});"
                " a newer roomcast wrote it, so this one will not append to it"
            )


def repair_log(directory: Path, *, config: LogConfig, now: float) -> RepairedLog:
    """Check and repair the log in ``directory`` (locked by the caller); pick the epoch.

    Creates the first segment of a new log, cuts off a damaged last record, starts a new
    segment when the epoch changes, and writes ``epoch.json`` with ``open: true``.

    Raises:
        LogUnsupportedError: The log holds records of a newer schema.
        OSError: The directory or its files cannot be read or written.
    """
    max_record_bytes = config.max_record_bytes
    for leftover in directory.glob("*.tmp"):
        leftover.unlink(missing_ok=True)
    reasons: list[str] = []
    numbers = list_segments(directory)
    state_error: str | None = None
    try:
        state = read_state(directory)
    except ValueError as exc:
        state, state_error = None, str(exc)
    failed_marker = (directory / FAILED_MARKER).exists()

    if state_error is not None:
        reasons.append(f"{state_error}; continuity with the records before cannot be checked")
    elif state is None:
        if numbers:
            reasons.append(f"{EPOCH_FILE} is missing but segments exist: the log was replaced")
        else:
            reasons.append("new log")

    removed: list[int] = []
    if state is not None:
        # Retention updates epoch.json before deleting: older segments are leftovers.
        for number in [n for n in numbers if n < state.first_segment]:
            segment_path(directory, number).unlink(missing_ok=True)
            summary_path(directory, number).unlink(missing_ok=True)
            removed.append(number)
        if removed:
            fsync_directory(directory)
            numbers = [n for n in numbers if n >= state.first_segment]
        if not numbers:
            reasons.append("every segment of the log is gone (deleted)")
        elif numbers[-1] < state.last_segment:
            reasons.append(
                f"segments {numbers[-1] + 1}..{state.last_segment} are missing at the end (deleted)"
            )
        elif numbers[-1] > state.last_segment + 1:
            # A roll creates the new segment before it updates epoch.json, so one more
            # is expected after a crash; more than one was not written by this log.
            reasons.append(
                f"unknown segments after segment {state.last_segment}: the log was replaced"
            )
        if state.open and state.fsync == FsyncPolicy.NEVER and state.boot_id != boot_id():
            reasons.append(
                "the previous writer did not close the log, its fsync policy was 'never'"
                " and the machine restarted since: acknowledged records may be lost"
            )
    gaps = tuple(
        (before + 1, after - 1)
        for before, after in itertools.pairwise(numbers)
        if after != before + 1
    )
    known = set(state.gaps) if state is not None else set()
    for first, last in gaps:
        if (first, last) not in known:
            reasons.append(f"segments {first}..{last} are missing")
    if failed_marker:
        reasons.append(
            "the previous writer stopped recording after a write error: later events are"
            " not in the log"
        )

    sealed: list[SegmentSummary] = []
    corruptions: list[Corruption] = []
    offsets: dict[tuple[str, str], int] = {}
    newest_epoch: str | None = None
    for number in numbers[:-1]:
        size = segment_path(directory, number).stat().st_size
        summary = read_summary(directory, number, size=size)
        if summary is None:
            summary, _ = summarise_segment(directory, number, max_record_bytes=max_record_bytes)
            _check_unsupported(summary.damage)
            write_summary(directory, summary)
        _check_unsupported(summary.damage)
        corruptions.extend(summary.damage)
        sealed.append(summary)
        _merge_offsets(offsets, summary)
        if summary.epochs:
            newest_epoch = summary.epochs[-1]

    repairs: list[TailRepair] = []
    builder = SummaryBuilder()
    active_damage: list[Corruption] = []
    active_size = 0
    if numbers:
        last = numbers[-1]
        path = segment_path(directory, last)
        with path.open("rb") as file:
            for item in iter_segment(file, last, max_record_bytes=max_record_bytes):
                if isinstance(item, Corruption):
                    active_damage.append(item)
                else:
                    builder.add(item[1])
            active_size = os.fstat(file.fileno()).st_size
        _check_unsupported(active_damage)
        if active_damage and active_damage[-1].tail:
            cut = active_damage.pop()
            with path.open("r+b") as file:
                file.truncate(cut.position)
                os.fsync(file.fileno())
            repair = TailRepair(
                segment=last,
                position=cut.position,
                dropped_bytes=active_size - cut.position,
                kind=cut.kind,
                detail=cut.detail,
            )
            repairs.append(repair)
            reasons.append(repair.describe())
            active_size = cut.position
        for corruption in active_damage:
            reasons.append(f"damaged record in the newest segment: {corruption.describe()}")
        corruptions.extend(active_damage)
        # Only the newest segment's own records count: after an epoch change the sealed
        # segment before it legitimately belongs to the previous epoch.
        if builder.epochs:
            newest_epoch = builder.epochs[-1]
            if state is not None and newest_epoch != state.epoch:
                reasons.append(
                    f"the newest records belong to epoch {newest_epoch} but {EPOCH_FILE}"
                    f" names {state.epoch}: the log was replaced"
                )

    epoch_changed = bool(reasons)
    if epoch_changed:
        epoch = new_epoch_id()
        previous = state.epoch if state is not None else newest_epoch
        started = now
    else:
        assert state is not None
        epoch, previous, started = state.epoch, state.previous_epoch, state.epoch_started

    # After lost tail segments the next number follows the last one found (a gap would
    # look like a new loss to every later open); the epoch tells readers of the reset.
    highest = numbers[-1] if numbers else (state.last_segment if state is not None else 0)
    active = numbers[-1] if numbers else highest + 1
    if numbers:
        summary = builder.build(active, active_size, tuple(active_damage))
        _merge_offsets(offsets, summary)
        # One epoch per segment, and never append after damage: start a new segment
        # (an empty one without damage can take the new epoch as it is).
        if active_damage or (
            active_size and (epoch_changed or active_size >= config.segment_bytes)
        ):
            write_summary(directory, summary)
            sealed.append(summary)
            active = highest + 1
            builder = SummaryBuilder()
            active_size = 0
    if not numbers or active != numbers[-1]:
        fd = os.open(segment_path(directory, active), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        fsync_directory(directory)

    new_state = LogState(
        epoch=epoch,
        epoch_started=started,
        previous_epoch=previous,
        reasons=tuple(reasons) if epoch_changed else (state.reasons if state else ()),
        first_segment=sealed[0].segment if sealed else active,
        last_segment=active,
        fsync=config.fsync.value,
        boot_id=boot_id(),
        open=True,
        gaps=gaps,
    )
    write_state(directory, new_state)
    if failed_marker:
        with contextlib.suppress(FileNotFoundError):
            (directory / FAILED_MARKER).unlink()
        fsync_directory(directory)

    report = RepairReport(
        directory=str(directory),
        epoch=epoch,
        previous_epoch=previous if epoch_changed else None,
        epoch_changed=epoch_changed,
        reasons=tuple(reasons) if epoch_changed else (),
        clean_shutdown=None if state is None else not state.open,
        repairs=tuple(repairs),
        corruptions=tuple(corruptions),
        removed_segments=tuple(removed),
        segments=len(sealed) + 1,
    )
    return RepairedLog(
        report=report,
        state=new_state,
        sealed=sealed,
        active=active,
        active_size=active_size,
        builder=builder,
        last_offsets=offsets,
    )
