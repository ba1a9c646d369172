"""``roomcast replay LOGDIR --room R --timeline FILE``: a room's timeline from the log alone,
drawn on a real log with a crash and a recovery in it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Final, cast

import pytest
import trio

from roomcast.engine.cli import main
from roomcast.engine.log import LogConfig, iter_records, open_event_log
from roomcast.engine.log.timeline import (
    MAX_MESSAGES,
    BoundaryKind,
    MarkKind,
    SpanKind,
    build_timeline,
)
from roomcast.protocol import LogRecord, RecordKind
from tests.adapters.conftest import free_port
from tests.adapters.processes import Line, open_line_process

from .log_helpers import T0, record
from .test_crash_recovery import chat_server

SVG: Final = "{http://www.w3.org/2000/svg}"


def classes(element: ET.Element) -> set[str]:
    return set(element.get("class", "").split())


def find(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if cls in classes(e)]


async def crash_and_recover(js_peers: Path, tmp_path: Path) -> tuple[Path, list[Line]]:
    """Three clients of the workspace chat in room w0, one publishing. One closes its
    transport and comes back recovered; then the server is killed with SIGKILL and started
    again on the same log, all three come back recovered, publish some more and leave, and
    the server stops on SIGTERM. Returns the log and the reconnections after the crash."""
    port, directory = free_port(), tmp_path / "log"
    url = f"http://127.0.0.1:{port}"
    argv = ["node", str(js_peers / "crash_clients.mjs"), url, "3", "1", "20"]
    async with open_line_process("crash clients", argv) as driver:
        async with chat_server(port, directory) as first:
            await driver.expect_event("ready")
            await driver.send({"cmd": "publish"})
            await trio.sleep(0.5)  # (real time: the processes run on their own clocks)
            await driver.send({"cmd": "drop", "n": 1})
            await driver.expect_event("dropped")
            early = await driver.expect_event("reconnected")
            assert early["recovered"] is True
            await trio.sleep(0.3)
            first.kill()
            await first.process.wait()
        async with chat_server(port, directory) as second:
            reconnections = [await driver.expect_event("reconnected") for _ in range(3)]
            await trio.sleep(0.5)
            await driver.send({"cmd": "stop"})
            await driver.expect_event("report")
            await driver.process.wait()  # its clients have closed
            second.terminate()
            await second.process.wait()
    return directory, reconnections


@pytest.mark.node
async def test_timeline_of_a_room_through_a_crash_and_recoveries(
    js_peers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(60):
        directory, reconnections = await crash_and_recover(js_peers, tmp_path)
    sids = {cast("str", line["sid"]) for line in reconnections}
    assert len(sids) == 3
    assert all(line["recovered"] is True for line in reconnections)
    records = list(iter_records(directory))
    messages = [r for r in records if r.room == "w0" and r.kind is RecordKind.MESSAGE]
    assert messages

    out = tmp_path / "w0.svg"
    assert main(["replay", str(directory), "--room", "w0", "--timeline", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "3 member(s)" in summary
    assert "1 crash(es), 4 recovery(ies)" in summary

    root = ET.parse(out).getroot()
    assert root.tag == f"{SVG}svg"
    assert root.get("data-room") == "w0"
    assert root.get("data-namespace") == "/"
    # One lane per member, named by its sid (the same sid after each recovery).
    lanes = {lane.get("data-sid"): lane for lane in find(root, "lane")}
    assert set(lanes) == sids
    # Every message of the room is on the messages row, with its offset.
    drawn = [int(e.get("data-offset", "-1")) for e in find(root, "message")]
    assert drawn == [r.offset for r in messages]
    # The crash: a crash line, the time the server was down, and two server starts; the
    # second run stopped cleanly.
    assert len(find(root, "crash")) == 1
    (gap,) = find(root, "gap")
    assert gap.get("data-crashed") == "true"
    assert len(find(root, "start")) == 2
    assert len(find(root, "stop")) == 1
    assert len(find(root, "epoch")) >= 1
    for sid, lane in lanes.items():
        spans = find(lane, "span")
        members = [s for s in spans if "member" in classes(s)]
        # In the room from its join until the crash, then again from its recovery.
        assert members[0].get("data-started-by") == "join"
        assert "crash" in [s.get("data-ended-by") for s in members], sid
        assert members[-1].get("data-started-by") == "recovered", sid
        assert find(lane, "recovered"), sid
        # The crash left its session kept until the recovery.
        away = [s for s in spans if "away" in classes(s)]
        assert "crash" in [s.get("data-started-by") for s in away], sid
        assert all(s.get("data-ended-by") == "recovered" for s in away)
        # It left at the end: a disconnect with its reason, ending its last stretch.
        assert find(lane, "disconnect"), sid
        assert (members[-1].get("data-ended-by") or "").startswith("disconnect: "), sid
        # It was sent the room's messages while in it.
        assert find(lane, "delivered"), sid
    # The client whose transport closed before the crash: a disconnect for that reason,
    # its session kept, a stretch away and its recovery, all in the first run.
    dropped = [
        lane
        for lane in lanes.values()
        if "transport close, session kept"
        in [m.get("data-reason") for m in find(lane, "disconnect")]
    ]
    assert len(dropped) == 1
    assert len(find(dropped[0], "recovered")) == 2
    kept = [s.get("data-started-by") for s in find(dropped[0], "away")]
    assert kept == ["disconnect: transport close", "crash"]

    html_out = tmp_path / "w0.html"
    assert main(["replay", str(directory), "--room", "w0", "--timeline", str(html_out)]) == 0
    page = html_out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert 'class="roomcast-timeline"' in page


def scripted(
    *items: tuple[float, str, str, RecordKind, str | None, tuple[object, ...]],
) -> list[LogRecord]:
    return [
        LogRecord(
            offset=index,
            time=T0 + time,
            namespace=ns,
            room=room,
            kind=kind,
            sender=sender,
            event="m" if kind is RecordKind.MESSAGE else None,
            args=args,  # type: ignore[arg-type]
            epoch=epoch,
        )
        for index, (time, ns, room, kind, sender, args) in enumerate(items, start=1)
        for epoch in ["e2" if time >= 50 else "e1"]
    ]


def test_a_new_epoch_ends_every_stretch_and_kept_sessions() -> None:
    """A session kept at a disconnect is not recovered across a new epoch; messages while
    away are marked missed, an excluded member's as excluded."""
    k = RecordKind
    records = scripted(
        (0, "", "", k.SERVER_START, None, ({"pid": 1},)),
        (1, "/", "r", k.JOIN, "a", ()),
        (2, "/", "r", k.JOIN, "b", ()),
        (3, "/", "r", k.MESSAGE, None, ("x",)),
        (4, "/", "", k.DISCONNECT, "a", ("ping timeout", {"pid": "p", "rooms": ["r"]})),
        (5, "/", "r", k.MESSAGE, None, ("y",)),
        (6, "/", "", k.DISCONNECT, "b", ("client namespace disconnect",)),
        (50, "", "", k.EPOCH, None, ({"previous": "e1", "reasons": ["segments lost"]},)),
        (51, "", "", k.SERVER_START, None, ({"pid": 2},)),
        (52, "/", "", k.CONNECT, "c", ({}, {"recovered": False})),
        (53, "/", "r", k.JOIN, "c", ()),
    )
    timeline = build_timeline(records, "/", "r")
    assert [lane.sid for lane in timeline.lanes] == ["a", "b", "c"]
    a, b, c = timeline.lanes
    assert [(m.kind, m.label) for m in a.marks] == [
        (MarkKind.DELIVERED, "m"),
        (MarkKind.DISCONNECT, "ping timeout, session kept"),
        (MarkKind.MISSED, "m"),
    ]
    assert [s.kind for s in a.spans] == [SpanKind.MEMBER]  # never recovered: no away span
    assert [(s.started_by, s.ended_by) for s in b.spans] == [
        ("join", "disconnect: client namespace disconnect")
    ]
    assert [(s.started_by, s.ended_by) for s in c.spans] == [("join", "end of the log")]
    kinds = [bd.kind for bd in timeline.boundaries]
    assert BoundaryKind.CRASH in kinds  # the first run never stopped
    assert BoundaryKind.EPOCH in kinds
    assert [e.epoch for e in timeline.epochs] == ["e1", "e2"]
    (gap,) = timeline.gaps
    assert gap.crashed
    assert (gap.start, gap.end) == (T0 + 6, T0 + 50)


def test_messages_past_the_bound_are_counted_not_drawn(tmp_path: Path) -> None:
    records = [
        record(i, room="r", kind=RecordKind.MESSAGE, sender=None, time=T0 + i)
        for i in range(1, MAX_MESSAGES + 11)
    ]
    timeline = build_timeline(records, "/", "r")
    assert len(timeline.messages) == MAX_MESSAGES
    assert timeline.messages_not_drawn == 10


def test_timeline_needs_a_room_and_a_picture_suffix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "log"

    async def write() -> None:
        config = LogConfig(directory=directory, fsync="never")
        async with open_event_log(config) as log:
            await log.append(record(1, room="r", kind=RecordKind.JOIN))

    trio.run(write)
    assert main(["replay", str(directory), "--timeline", str(tmp_path / "t.svg")]) == 2
    assert "give --room" in capsys.readouterr().err
    assert main(["replay", str(directory), "--room", "r", "--timeline", "t.png"]) == 2
    assert ".svg or .html" in capsys.readouterr().err
    assert (
        main(["replay", str(directory), "--room", "nope", "--timeline", str(tmp_path / "t.svg")])
        == 2
    )
    assert "no record of room 'nope'" in capsys.readouterr().err
    assert (
        main(["replay", str(directory), "--room", "r", "--timeline", str(tmp_path / "t.svg")]) == 0
    )
    root = ET.parse(tmp_path / "t.svg").getroot()
    assert [lane.get("data-sid") for lane in find(root, "lane")] == ["sid-a"]
