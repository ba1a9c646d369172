"""Progress of long log work: the readers' ``on_progress`` and the ``roomcast`` commands'
status line on a terminal's stderr (a pty here), which never touches stdout."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Final

import pytest
import trio

from roomcast.engine.log import (
    LogConfig,
    ReadProgress,
    iter_records,
    log_stats,
    open_event_log,
    verify_log,
)
from roomcast.engine.progress import TerminalProgress, format_bytes, terminal_progress
from roomcast.protocol import RecordKind

from .log_helpers import T0, record

MIB: Final = 1 << 20
PAYLOAD: Final = "x" * 1000


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log of about 6 MiB in 1.5 MiB segments, two rooms."""
    directory = tmp_path_factory.mktemp("progress") / "log"

    async def write() -> None:
        config = LogConfig(
            directory=directory,
            fsync="never",
            segment_bytes=3 * MIB // 2,
            segment_age=None,
            retention_age=None,
            retention_bytes=None,
        )
        async with open_event_log(config, clock=lambda: T0) as log:
            for offset in range(1, 6001):
                room = "lobby" if offset % 2 else "games"
                log.append_nowait(record(offset, room=room, args=(PAYLOAD, offset)))
                if offset % 500 == 0:
                    await log.flush()

    trio.run(write)
    return directory


def segment_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("*.seg"))


def check_reports(reports: list[ReadProgress], directory: Path) -> None:
    total = segment_bytes(directory)
    segments = len(list(directory.glob("*.seg")))
    assert segments >= 4
    assert reports[0] == ReadProgress(
        bytes_done=0, bytes_total=total, segments_done=0, segments_total=segments
    )
    assert reports[-1] == ReadProgress(
        bytes_done=total, bytes_total=total, segments_done=segments, segments_total=segments
    )
    done = [r.bytes_done for r in reports]
    assert done == sorted(done)
    finished = [r.segments_done for r in reports]
    assert finished == sorted(finished)


def test_iter_records_reports_every_mib_and_every_segment(big_log: Path) -> None:
    reports: list[ReadProgress] = []
    records = list(iter_records(big_log, on_progress=reports.append))
    assert sum(r.kind is RecordKind.MESSAGE for r in records) == 6000
    check_reports(reports, big_log)
    # Within a segment, at least one report per MiB read (and not one per record).
    assert segment_bytes(big_log) // MIB <= len(reports) < 100


def test_a_filtered_read_counts_skipped_segments_as_done(big_log: Path) -> None:
    reports: list[ReadProgress] = []
    records = list(
        iter_records(big_log, room="games", since_offset=5000, on_progress=reports.append)
    )
    assert [r.offset for r in records] == list(range(5000, 6001, 2))
    check_reports(reports, big_log)


def test_verify_and_stats_report_progress(big_log: Path) -> None:
    reports: list[ReadProgress] = []
    assert verify_log(big_log, on_progress=reports.append).ok
    check_reports(reports, big_log)
    reports.clear()
    stats = log_stats(big_log, on_progress=reports.append)
    assert stats.kinds["message"] == 6000
    check_reports(reports, big_log)


class FakeTerminal:
    def __init__(self) -> None:
        self.written = ""

    def write(self, text: str) -> int:
        self.written += text
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise OSError("not a real terminal")


def test_the_status_line_says_done_total_segment_rate_and_time_left() -> None:
    now = [100.0]
    terminal = FakeTerminal()
    progress = TerminalProgress(label="verify", stream=terminal, clock=lambda: now[0])  # type: ignore[arg-type]
    progress(ReadProgress(bytes_done=0, bytes_total=4 * MIB, segments_done=0, segments_total=4))
    assert terminal.written == "\rverify: 0 B of 4.0 MiB (0%), segment 1 of 4"
    now[0] += 0.1  # too soon to redraw
    progress(
        ReadProgress(bytes_done=MIB // 2, bytes_total=4 * MIB, segments_done=0, segments_total=4)
    )
    assert terminal.written.count("\r") == 1
    now[0] += 0.9
    progress(ReadProgress(bytes_done=MIB, bytes_total=4 * MIB, segments_done=1, segments_total=4))
    line = "verify: 1.0 MiB of 4.0 MiB (25%), segment 2 of 4, 1.0 MiB/s, 3 s left"
    assert terminal.written.endswith("\r" + line)
    now[0] += 0.01  # the end is always drawn
    progress(
        ReadProgress(bytes_done=4 * MIB, bytes_total=4 * MIB, segments_done=4, segments_total=4)
    )
    assert "4.0 MiB of 4.0 MiB (100%), segment 4 of 4" in terminal.written
    shown = len(terminal.written[terminal.written.rindex("\r") + 1 :].rstrip(" "))
    progress.close()  # erased: the terminal is left as it was
    assert terminal.written.endswith("\r" + " " * shown + "\r")


def test_no_status_line_unless_a_terminal() -> None:
    assert terminal_progress("x", FakeTerminal()) is not None  # type: ignore[arg-type]
    with open(os.devnull, "w") as devnull:
        assert terminal_progress("x", devnull) is None


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1024, 5 * MIB // 2, 3 << 30, 5 << 40)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "2.5 MiB",
        "3.0 GiB",
        "5120.0 GiB",
    ]


def run_command(*argv: str, stderr_tty: bool, out: Path) -> tuple[int, bytes, bytes]:
    """Run ``roomcast ARGV`` with stdout to a file and stderr to a pty (or a pipe)."""
    command = [sys.executable, "-m", "roomcast.engine.cli", "--log-level", "WARNING", *argv]
    with out.open("wb") as stdout:
        if not stderr_tty:
            done = subprocess.run(
                command, stdout=stdout, stderr=subprocess.PIPE, check=False, timeout=120
            )
            return done.returncode, out.read_bytes(), done.stderr
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
        try:
            process = subprocess.Popen(command, stdout=stdout, stderr=slave)
            os.close(slave)
            terminal = b""
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed its end
                    break
                if not chunk:
                    break
                terminal += chunk
            code = process.wait(timeout=120)
        finally:
            os.close(master)
    return code, out.read_bytes(), terminal


@pytest.mark.parametrize(
    "argv",
    [
        ("log", "verify"),
        ("log", "stats"),
        ("replay",),
        ("replay", "--room", "games", "--json"),
    ],
    ids=["verify", "stats", "replay", "replay-room-json"],
)
def test_progress_goes_to_a_terminal_stderr_only(
    big_log: Path, tmp_path: Path, argv: tuple[str, ...]
) -> None:
    args = (
        (*argv[:2], str(big_log), *argv[2:])
        if argv[0] == "log"
        else (argv[0], str(big_log), *argv[1:])
    )
    code, out, err = run_command(*args, stderr_tty=False, out=tmp_path / "plain.out")
    assert code == 0
    assert out  # the command's own output
    assert err == b""  # not a terminal: nothing extra
    tty_code, tty_out, terminal = run_command(*args, stderr_tty=True, out=tmp_path / "tty.out")
    assert tty_code == 0
    assert tty_out == out  # stdout byte for byte the same
    text = terminal.decode()
    total = format_bytes(segment_bytes(big_log))
    label = "roomcast " + " ".join(argv[:2] if argv[0] == "log" else argv[:1])
    assert f"\r{label}: 0 B of {total} (0%), segment 1 of " in text
    last = text.rstrip(" \r").rsplit("\r", 1)[-1]
    assert last.startswith(f"{label}: {total} of {total} (100%), segment ")
    assert "/s" in last  # the rate
    assert text.endswith("\r")  # erased at the end
    assert "\n" not in text
