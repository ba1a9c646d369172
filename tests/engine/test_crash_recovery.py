"""A server killed with SIGKILL and started again on the same event log: every session that
was connected comes back recovered, with every event it missed, once and in order.

The server is the workspace chat example (``examples/workspace_chat.py``, recovery on, the
event log with its default ``interval`` fsync) in its own process; the clients are npm's
``socket.io-client`` with its default transports and reconnection
(``tests/js/crash_clients.mjs``). The test kills the server by its PID.
"""

from __future__ import annotations

import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, cast

import pytest
import trio

from tests.adapters.processes import ROOT, Line, LineProcess, open_line_process

pytestmark = pytest.mark.node

CHAT: Final = ROOT / "examples" / "workspace_chat.py"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def chat_server(port: int, log_dir: Path) -> AsyncIterator[LineProcess]:
    """The workspace chat in its own process, listening on ``port``."""
    argv = [sys.executable, str(CHAT), "--port", str(port), "--log-dir", str(log_dir)]
    async with open_line_process("chat server", argv) as server:
        await server.wait_stderr(b"roomcast listening")
        yield server


async def run_scenario(
    js_peers: Path, tmp_path: Path, *, clients: int, rooms: int, dropped_before_kill: int
) -> tuple[Line, list[Line]]:
    """Clients publish; the server is killed (after ``dropped_before_kill`` clients closed
    their transport, a few milliseconds before) and started again; publishing goes on for
    a while, then stops. Returns the clients' report and their reconnections."""
    port, log_dir = _free_port(), tmp_path / "log"
    url = f"http://127.0.0.1:{port}"
    argv = ["node", str(js_peers / "crash_clients.mjs"), url, str(clients), str(rooms), "20"]
    async with open_line_process("crash clients", argv) as driver:
        async with chat_server(port, log_dir) as first:
            await driver.expect_event("ready")
            await driver.send({"cmd": "publish"})
            await trio.sleep(1.0)  # (real time: the processes run on their own clocks)
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
    """All recovered; each member got every message of its workspace that any member got,
    and every acknowledged one, once and in publish order."""
    assert sorted(cast("int", line["id"]) for line in reconnections) == list(range(clients))
    not_recovered = [line for line in reconnections if line["recovered"] is not True]
    assert not not_recovered, f"{len(not_recovered)} of {clients} not recovered: {not_recovered}"
    members = cast("list[dict[str, object]]", report["clients"])
    acked = cast("dict[str, list[int]]", report["acked"])
    by_room: dict[str, set[str]] = {}
    for member in members:
        by_room.setdefault(cast("str", member["room"]), set()).update(
            cast("list[str]", member["received"])
        )
    for member in members:
        room, received = cast("str", member["room"]), cast("list[str]", member["received"])
        sids = cast("list[str]", member["sids"])
        assert member["errors"] == [], member
        assert len(set(sids)) == 1, f"client {member['id']} changed its sid: {sids}"
        duplicated = [text for text, n in Counter(received).items() if n > 1]
        assert not duplicated, f"client {member['id']} got {duplicated} twice"
        seqs = [int(text.rpartition(":")[2]) for text in received]
        assert all(text.startswith(f"{room}:") for text in received), member
        assert seqs == sorted(seqs), f"client {member['id']} got {room} out of order"
        missing = by_room[room] - set(received)
        assert not missing, f"client {member['id']} missed {sorted(missing)[:10]}"
        unacked = {f"{room}:{seq}" for seq in acked.get(room, [])} - set(received)
        assert not unacked, f"client {member['id']} missed acknowledged {sorted(unacked)[:10]}"
    # The scenario really crossed the crash: messages were acknowledged after it too.
    assert all(len(acked.get(f"w{r}", [])) > 60 for r in range(len(by_room))), acked


async def test_every_session_connected_at_a_crash_comes_back_recovered(
    js_peers: Path, tmp_path: Path
) -> None:
    with trio.fail_after(90):
        report, reconnections = await run_scenario(
            js_peers, tmp_path, clients=100, rooms=10, dropped_before_kill=0
        )
    check(report, reconnections, clients=100)


async def test_a_client_that_closed_just_before_the_kill_is_recovered(
    js_peers: Path, tmp_path: Path
) -> None:
    """Its disconnect may or may not have reached the log before the kill: either way its
    session comes back."""
    with trio.fail_after(60):
        report, reconnections = await run_scenario(
            js_peers, tmp_path, clients=20, rooms=2, dropped_before_kill=10
        )
    check(report, reconnections, clients=20)
