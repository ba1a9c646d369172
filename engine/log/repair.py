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
    for leftover in directory.glob("*.tmp"):
        leftover.unlink(missing_ok=True)
    numbers = list_segments(directory)
    state, reasons = _read_state(directory, has_segments=bool(numbers))
    failed_marker = (directory / FAILED_MARKER).exists()
    numbers, removed = _delete_retired(directory, numbers, state)
    gaps = _check_continuity(numbers, state, reasons, failed_marker=failed_marker)
    sealed = _read_sealed(directory, numbers[:-1], max_record_bytes=config.max_record_bytes)
    tail = _repair_tail(directory, numbers[-1], state, reasons, config=config) if numbers else None

    epoch_changed = bool(reasons)
    if epoch_changed:
        epoch = new_epoch_id()
        if state is not None:
            previous: str | None = state.epoch
        else:  # the epoch of the newest records found
            previous = (tail.newest_epoch if tail is not None else None) or sealed.newest_epoch
        started = now
    else:
        assert state is not None
        epoch, previous, started = state.epoch, state.previous_epoch, state.epoch_started

    active, active_size, builder = _active_segment(
        directory, numbers, state, sealed, tail, config=config, epoch_changed=epoch_changed
    )
    new_state = LogState(
        epoch=epoch,
        epoch_started=started,
        previous_epoch=previous,
        reasons=tuple(reasons) if epoch_changed else (state.reasons if state else ()),
        first_segment=sealed.summaries[0].segment if sealed.summaries else active,
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
        repairs=tail.repairs if tail is not None else (),
        corruptions=tuple(sealed.corruptions) + (tuple(tail.damage) if tail is not None else ()),
        removed_segments=tuple(removed),
        segments=len(sealed.summaries) + 1,
    )
    return RepairedLog(
        report=report,
        state=new_state,
        sealed=sealed.summaries,
        active=active,
        active_size=active_size,
        builder=builder,
        last_offsets=sealed.last_offsets,
    )


def _read_state(directory: Path, *, has_segments: bool) -> tuple[LogState | None, list[str]]:
    """``epoch.json``, or None when it is missing or unreadable, with the reasons for a
    new epoch that this alone gives (a new log, a replaced one, an unreadable file)."""
    reasons: list[str] = []
    try:
        state = read_state(directory)
    except ValueError as exc:
        reasons.append(f"{exc}; continuity with the records before cannot be checked")
        return None, reasons
    if state is None:
        if has_segments:
            reasons.append(f"{EPOCH_FILE} is missing but segments exist: the log was replaced")
        else:
            reasons.append("new log")
    return state, reasons


def _delete_retired(
    directory: Path, numbers: list[int], state: LogState | None
) -> tuple[list[int], list[int]]:
    """Delete the segments an interrupted retention left (retention updates
    ``epoch.json`` before deleting: segments older than its ``first_segment``); the
    numbers of the segments kept, oldest first, and of those deleted."""
    removed: list[int] = []
    if state is None:
        return numbers, removed
    for number in [n for n in numbers if n < state.first_segment]:
        segment_path(directory, number).unlink(missing_ok=True)
        summary_path(directory, number).unlink(missing_ok=True)
        removed.append(number)
    if removed:
        fsync_directory(directory)
        numbers = [n for n in numbers if n >= state.first_segment]
    return numbers, removed


def _check_continuity(
    numbers: list[int], state: LogState | None, reasons: list[str], *, failed_marker: bool
) -> tuple[tuple[int, int], ...]:
    """Add to ``reasons`` what breaks continuity with the records before (segments
    missing or unknown, an unclean stop that may have lost records, a write error), and
    return the ranges of missing segments between the ones found."""
    if state is not None:
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
    return gaps


@attrs.define(eq=False)
class _Sealed:
    """What the sealed segments hold, from their summaries."""

    summaries: list[SegmentSummary] = attrs.field(factory=list)
    corruptions: list[Corruption] = attrs.field(factory=list)
    last_offsets: dict[tuple[str, str], int] = attrs.field(factory=dict)
    newest_epoch: str | None = None


def _read_sealed(directory: Path, numbers: list[int], *, max_record_bytes: int) -> _Sealed:
    """Read the summaries of the sealed segments ``numbers``, summarising (and decoding)
    a segment only when its summary is missing or stale.

    Raises:
        LogUnsupportedError: A segment holds records of a newer schema.
    """
    sealed = _Sealed()
    for number in numbers:
        size = segment_path(directory, number).stat().st_size
        summary = read_summary(directory, number, size=size)
        if summary is None:
            summary, _ = summarise_segment(directory, number, max_record_bytes=max_record_bytes)
            _check_unsupported(summary.damage)
            write_summary(directory, summary)
        _check_unsupported(summary.damage)
        sealed.corruptions.extend(summary.damage)
        sealed.summaries.append(summary)
        _merge_offsets(sealed.last_offsets, summary)
        if summary.epochs:
            sealed.newest_epoch = summary.epochs[-1]
    return sealed


@attrs.define(eq=False)
class _Tail:
    """The newest segment, decoded, its damaged last record cut off."""

    segment: int
    builder: SummaryBuilder
    damage: list[Corruption]
    """Damage left in place (not at the tail)."""
    size: int
    repairs: tuple[TailRepair, ...]
    newest_epoch: str | None


def _repair_tail(
    directory: Path, last: int, state: LogState | None, reasons: list[str], *, config: LogConfig
) -> _Tail:
    """Decode the newest segment ``last``, cut off a torn or corrupt last record, and add
    to ``reasons`` what it changes (a repair, damage left in place, records of another
    epoch than ``epoch.json`` names).

    Raises:
        LogUnsupportedError: The segment holds records of a newer schema.
    """
    builder = SummaryBuilder()
    damage: list[Corruption] = []
    path = segment_path(directory, last)
    with path.open("rb") as file:
        for item in iter_segment(file, last, max_record_bytes=config.max_record_bytes):
            if isinstance(item, Corruption):
                damage.append(item)
            else:
                builder.add(item[1])
        size = os.fstat(file.fileno()).st_size
    _check_unsupported(damage)
    repairs: tuple[TailRepair, ...] = ()
    if damage and damage[-1].tail:
        cut = damage.pop()
        with path.open("r+b") as file:
            file.truncate(cut.position)
            os.fsync(file.fileno())
        repair = TailRepair(
            segment=last,
            position=cut.position,
            dropped_bytes=size - cut.position,
            kind=cut.kind,
            detail=cut.detail,
        )
        repairs = (repair,)
        reasons.append(repair.describe())
        size = cut.position
    for corruption in damage:
        reasons.append(f"damaged record in the newest segment: {corruption.describe()}")
    # Only the newest segment's own records count: after an epoch change the sealed
    # segment before it legitimately belongs to the previous epoch.
    newest_epoch = builder.epochs[-1] if builder.epochs else None
    if newest_epoch is not None and state is not None and newest_epoch != state.epoch:
        reasons.append(
            f"the newest records belong to epoch {newest_epoch} but {EPOCH_FILE}"
            f" names {state.epoch}: the log was replaced"
        )
    return _Tail(
        segment=last,
        builder=builder,
        damage=damage,
        size=size,
        repairs=repairs,
        newest_epoch=newest_epoch,
    )


def _active_segment(
    directory: Path,
    numbers: list[int],
    state: LogState | None,
    sealed: _Sealed,
    tail: _Tail | None,
    *,
    config: LogConfig,
    epoch_changed: bool,
) -> tuple[int, int, SummaryBuilder]:
    """The segment the writer appends to, its size and its summary so far: the newest
    one, or a new one when there is none, when the epoch changed (one epoch per segment),
    when it is damaged (never append after damage) or full. A newest segment that stops
    being the active one is summarised and added to ``sealed``."""
    # After lost tail segments the next number follows the last one found (a gap would
    # look like a new loss to every later open); the epoch tells readers of the reset.
    highest = numbers[-1] if numbers else (state.last_segment if state is not None else 0)
    if tail is None:
        active, active_size, builder = highest + 1, 0, SummaryBuilder()
    else:
        active, active_size, builder = tail.segment, tail.size, tail.builder
        summary = builder.build(active, active_size, tuple(tail.damage))
        _merge_offsets(sealed.last_offsets, summary)
        # An empty one without damage can take the new epoch as it is.
        if tail.damage or (active_size and (epoch_changed or active_size >= config.segment_bytes)):
            write_summary(directory, summary)
            sealed.summaries.append(summary)
            active, active_size, builder = highest + 1, 0, SummaryBuilder()
    if tail is None or active != tail.segment:
        fd = os.open(segment_path(directory, active), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        fsync_directory(directory)
    return active, active_size, builder
