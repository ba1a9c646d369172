"""A server killed with SIGKILL and started again on the same event log: every session that
was connected comes back recovered, with every event it missed, once and in order.

The server is the workspace chat example (``examples/workspace_chat.py``, recovery on, the
event log with its default ``interval`` fsync) in its own process; the clients are npm's
``socket.io-client`` with its default transports and reconnection
(``tests/js/crash_clients.mjs``). The test kills the server by its PID.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, cast

import pytest
import trio

from tests.adapters.conftest import free_port
from tests.adapters.processes import ROOT, Line, LineProcess, open_line_process

pytestmark = pytest.mark.node

CHAT: Final = ROOT / "examples" / "workspace_chat.py"


@asynccontextmanager
async def chat_server(port: int, log_dir: Path) -> AsyncIterator[LineProcess]:
    """The workspace chat in its own process, listening on ``port``."""
    argv = [sys.executable, str(CHAT), "--port", str(port), "--log-dir", str(log_dir)]
    async with open_line_process("chat server", argv) as server:
        await server.wait_stderr(b"roomcast listening")
        yield server


async def run_scenario(
    js_peers: Path,
    tmp_path: Path,
    *,
    clients: int,
    rooms: int,
    dropped_before_kill: int = 0,
    join_quiet: bool = False,
) -> tuple[Line, list[Line]]:
    """Clients publish; the server is killed and started again; publishing goes on for a
    while, then stops. Right before the kill, ``join_quiet`` makes every client join
    workspace "quiet" (one message goes there after the restart), and then
    ``dropped_before_kill`` clients close their transport, a few milliseconds before it.
    Returns the clients' report and their reconnections."""
    port, log_dir = free_port(), tmp_path / "log"
    url = f"http://127.0.0.1:{port}"
    argv = ["node", str(js_peers / "crash_clients.mjs"), url, str(clients), str(rooms), "20"]
    async with open_line_process("crash clients", argv) as driver:
        async with chat_server(port, log_dir) as first:
            await driver.expect_event("ready")
            await driver.send({"cmd": "publish"})
            await trio.sleep(1.0)  # (real time: the processes run on their own clocks)
            if join_quiet:
                await driver.send({"cmd": "join_quiet"})
                await driver.expect_event("joined_quiet")
            if dropped_before_kill:
                await driver.send({"cmd": "drop", "n": dropped_before_kill})
                await driver.expect_event("dropped")
            first.kill()
            await first.process.wait()
        async with chat_server(port, log_dir) as second:
            reconnections = [await driver.expect_event("reconnected") for _ in range(clients)]
            await trio.sleep(1.0)
            await driver.send({"cmd": "stop"})
            report = await driver.expect_event("report")
            second.terminate()
    return report, reconnections


def check(report: Line, reconnections: list[Line], *, clients: int) -> None:
    """All recovered; each member got every message of its workspaces that any member got,
    and every acknowledged one, once and in publish order."""
    assert sorted(cast("int", line["id"]) for line in reconnections) == list(range(clients))
    not_recovered = [line for line in reconnections if line["recovered"] is not True]
    assert not not_recovered, f"{len(not_recovered)} of {clients} not recovered: {not_recovered}"
    members = cast("list[dict[str, object]]", report["clients"])
    acked = cast("dict[str, list[int]]", report["acked"])

    def by_room(received: list[str]) -> dict[str, list[str]]:
        rooms: dict[str, list[str]] = {}
        for text in received:
            rooms.setdefault(text.rpartition(":")[0], []).append(text)
        return rooms

    everything: dict[str, set[str]] = {}
    for member in members:
        for room, texts in by_room(cast("list[str]", member["received"])).items():
            everything.setdefault(room, set()).update(texts)
    for member in members:
        received = cast("list[str]", member["received"])
        sids = cast("list[str]", member["sids"])
        assert member["errors"] == [], member
        assert len(set(sids)) == 1, f"client {member['id']} changed its sid: {sids}"
        duplicated = [text for text, n in Counter(received).items() if n > 1]
        assert not duplicated, f"client {member['id']} got {duplicated} twice"
        got = by_room(received)
        rooms = {cast("str", member["room"])} | ({"quiet"} if "quiet" in acked else set())
        assert set(got) <= rooms, f"client {member['id']} got messages of {set(got) - rooms}"
        for room in rooms:
            texts = got.get(room, [])
            seqs = [int(text.rpartition(":")[2]) for text in texts]
            assert seqs == sorted(seqs), f"client {member['id']} got {room} out of order"
            missing = everything.get(room, set()) - set(texts)
            assert not missing, f"client {member['id']} missed {sorted(missing)[:10]}"
            unacked = {f"{room}:{seq}" for seq in acked.get(room, [])} - set(texts)
            assert not unacked, f"client {member['id']} missed acknowledged {sorted(unacked)[:10]}"
    # The scenario really crossed the crash: messages were acknowledged after it too.
    workspaces = {cast("str", member["room"]) for member in members}
    assert all(len(acked.get(room, [])) > 60 for room in workspaces), acked


async def test_every_session_connected_at_a_crash_comes_back_recovered(
    js_peers: Path, tmp_path: Path
) -> None:
    with trio.fail_after(90):
        report, reconnections = await run_scenario(js_peers, tmp_path, clients=100, rooms=10)
    check(report, reconnections, clients=100)


async def test_a_client_that_closed_just_before_the_kill_is_recovered(
    js_peers: Path, tmp_path: Path
) -> None:
    """Its disconnect may or may not have reached the log before the kill: either way its
    session comes back. So do rooms joined a moment before the kill, where no message had
    been sent yet (a join is durable before it is acknowledged)."""
    with trio.fail_after(60):
        report, reconnections = await run_scenario(
            js_peers, tmp_path, clients=20, rooms=2, dropped_before_kill=10, join_quiet=True
        )
    assert cast("dict[str, list[int]]", report["acked"]).get("quiet") == [1]
    check(report, reconnections, clients=20)
