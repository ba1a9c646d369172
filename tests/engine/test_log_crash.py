"""Crash safety with real processes: kill -9 in the middle of acknowledged appends.

A child process appends to six rooms concurrently (group commit) through the writer and
prints each offset once its ``append`` returned. The test kills it with SIGKILL at a
random point, restarts the log, and checks that ``roomcast log verify`` passes, that
every room holds exactly offsets ``1..n`` (an intact prefix: no hole, no duplicate) and
that every acknowledged offset is in it. Real subprocesses and real time, so the test
is bounded by a count of rounds, not by a clock.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from roomcast.engine.log import LogConfig, RepairReport, open_event_log, verify_log

from .log_helpers import offsets

CHILD = textwrap.dedent(
    """
    import random
    import sys
    import time

    import trio

    from roomcast.engine.log import LogConfig, open_event_log
    from roomcast.protocol import LogRecord, RecordKind


    async def main(directory: str, policy: str, seed: int) -> None:
        rng = random.Random(seed)
        config = LogConfig(directory=directory, fsync=policy, segment_bytes=256 * 1024)
        async with open_event_log(config) as log:
            print("ready", flush=True)

            async def room_writer(room: str) -> None:
                offset = log.last_offset("/", room) or 0
                while True:
                    offset += 1
                    blob = bytes([offset % 256]) * rng.choice((1, 100, 1000, 9000))
                    await log.append(
                        LogRecord(
                            offset=offset,
                            time=time.time(),
                            namespace="/",
                            room=room,
                            kind=RecordKind.MESSAGE,
                            sender="sid",
                            event="burst",
                            args=(offset, blob),
                            epoch=log.epoch,
                        )
                    )
                    sys.stdout.write(f"ack {room} {offset}\\n")
                    sys.stdout.flush()

            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(room_writer, f"room-{i}")


    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)

ROOMS = [f"room-{i}" for i in range(6)]


def restart(directory: Path) -> RepairReport:
    """Open the log as a restarted server would (repairing it), then close it."""

    async def run() -> RepairReport:
        async with open_event_log(LogConfig(directory=directory)) as log:
            return log.repair_report

    return trio.run(run)


def crash_once(child: Path, directory: Path, policy: str, seed: int, acked: dict[str, int]) -> None:
    """Run the child until it acknowledged a random number of appends, then kill -9 it;
    record every acknowledgement that reached us (also those read after the kill)."""
    target = random.Random(seed).randint(1, 300)
    process = subprocess.Popen(
        [sys.executable, str(child), str(directory), policy, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "ready\n"
        seen = 0
        for line in process.stdout:
            _, room, offset = line.split()
            acked[room] = max(acked.get(room, 0), int(offset))
            seen += 1
            if seen >= target:
                break
        os.kill(process.pid, signal.SIGKILL)
        rest, errors = process.communicate(timeout=30)
    finally:
        if process.returncode is None:  # pragma: no cover - only if an assert failed
            process.kill()
            process.communicate()
    assert process.returncode == -signal.SIGKILL, errors
    assert seen >= target, errors
    for line in rest.splitlines():  # written by the child before it died
        _, room, offset = line.split()
        acked[room] = max(acked.get(room, 0), int(offset))


def check_intact_prefix(directory: Path, acked: dict[str, int]) -> None:
    report = verify_log(directory)
    assert report.ok, [p.describe() for p in report.problems]
    for room in ROOMS:
        found = offsets(directory, room)
        assert found == list(range(1, len(found) + 1)), room  # no hole, no duplicate
        assert len(found) >= acked.get(room, 0), (room, len(found), acked.get(room))


@pytest.mark.parametrize(("policy", "rounds"), [("always", 10), ("interval", 2)])
def test_kill_9_during_acknowledged_appends_loses_nothing_acknowledged(
    tmp_path: Path, policy: str, rounds: int
) -> None:
    directory = tmp_path / "log"
    child = tmp_path / "appender.py"
    child.write_text(CHILD)
    acked: dict[str, int] = {}
    repairs = 0
    for round_ in range(rounds):
        crash_once(child, directory, policy, seed=round_, acked=acked)
        report = restart(directory)
        assert report.corruptions == ()  # a crash tears at most the tail
        assert report.clean_shutdown is False
        repairs += len(report.repairs)
        check_intact_prefix(directory, acked)
    assert sum(acked.values()) > rounds  # the rounds did append
    # The real command, on the final state.
    script = Path(sys.executable).parent / "roomcast"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "roomcast.engine.cli"]
    result = subprocess.run(
        [*command, "log", "verify", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
