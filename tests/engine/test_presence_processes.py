"""Presence and history of the workspace chat example in its own process (recovery on, the
event log), with npm ``socket.io-client`` clients (tests/js/cluster_driver.mjs):

- two tabs of one name are one presence; a client recovered after a short cut does not
  flap (no leave, no join); an explicit disconnect leaves at once;
- history followed by live messages while a publisher keeps publishing: nothing missed,
  nothing twice;
- presence rebuilt after a crash (SIGKILL): the members of the last run are present, the
  one that comes back (recovered) does not flap, the one that does not leaves after the
  debounce window.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Final

import pytest
import trio

from examples.workspace_chat import HISTORY_LENGTH, PRESENCE_DEBOUNCE
from tests.adapters.conftest import free_port
from tests.adapters.processes import Driver, Line, open_driver
from tests.engine.test_crash_recovery import chat_server

pytestmark = pytest.mark.node

TEST_TIMEOUT: Final = 40.0


def presence_events(driver: Driver, client: str) -> list[tuple[str, str]]:
    """The presence events ``client`` received so far (taken from the backlog)."""
    return [
        (str(name), str(args[0]["name"]))  # type: ignore[index]
        for name, args in driver.take_received(client)
        if name in ("presence_join", "presence_leave")
    ]


def text_of(line: Line) -> str | None:
    """The ``text`` of a ``receive_message`` line's payload."""
    args = line.get("args")
    if isinstance(args, list) and args and isinstance(args[0], dict):
        text = args[0].get("text")
        return text if isinstance(text, str) else None
    return None


def is_message(client: str, text: str | None, line: Line) -> bool:
    """Whether ``line`` is a ``receive_message`` of ``client`` (with ``text``, if given)."""
    return (
        line.get("id") == client
        and line.get("name") == "receive_message"
        and (text is None or text_of(line) == text)
    )


async def who(driver: Driver, client: str) -> object:
    (answer,) = await driver.call(client, "who_is_here", "w")
    assert isinstance(answer, dict)
    return answer["members"]


async def test_two_tabs_a_recovered_client_that_does_not_flap_and_one_that_leaves(
    js_peers: Path, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with trio.fail_after(TEST_TIMEOUT):
        async with chat_server(port, tmp_path / "log") as server, open_driver(js_peers) as driver:
            for name in ("ann", "bob"):
                await driver.connect(name, url, auth={"name": name})
                await driver.call(name, "join_workspace", "w")
            for name in ("ann", "bob"):  # (the last argument: the offset recovery uses)
                body, _offset = await driver.received("ann", "presence_join")
                assert body == {"workspaceId": "w", "name": name}
            # A second tab of ann: the same presence, two connections, no second join.
            await driver.connect("ann2", url, auth={"name": "ann"})
            await driver.call("ann2", "join_workspace", "w")
            assert await who(driver, "bob") == [
                {"name": "ann", "connections": 2},
                {"name": "bob", "connections": 1},
            ]
            await driver.proc.send({"cmd": "close", "id": "ann2"})  # (counted below)
            await driver.proc.expect_event("closed", id="ann2")
            await driver.drop("bob")
            _sid, recovered = await driver.reconnect("bob")
            assert recovered
            await trio.sleep(PRESENCE_DEBOUNCE + 1.0)  # past the window: still no leave
            assert await who(driver, "ann") == [
                {"name": "ann", "connections": 1},
                {"name": "bob", "connections": 1},
            ]
            assert presence_events(driver, "ann") == []
            await driver.proc.send({"cmd": "close", "id": "bob"})
            with trio.fail_after(PRESENCE_DEBOUNCE / 2):  # at once, not after the window
                body, _offset = await driver.received("ann", "presence_leave")
            assert body == {"workspaceId": "w", "name": "bob"}
            server.terminate()


async def test_history_then_live_messages_nothing_missed_nothing_twice(
    js_peers: Path, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    total, joiners = 400, 6
    with trio.fail_after(TEST_TIMEOUT):
        async with chat_server(port, tmp_path / "log") as server, open_driver(js_peers) as driver:
            await driver.connect("pub", url, auth={"name": "pub"})
            await driver.call("pub", "join_workspace", "w")
            for i in range(total):  # not waiting for the acks: joins race with these
                await driver.proc.send(
                    {
                        "cmd": "emit",
                        "id": "pub",
                        "tag": f"m{i}",
                        "name": "dispatch_message",
                        "args": [{"workspaceId": "w", "textMarker": f"m:{i}"}],
                    }
                )
                if i % (total // joiners) == total // joiners // 2:
                    await driver.proc.send({"cmd": "connect", "id": f"j{i}", "url": url})
                    await driver.proc.send(
                        {
                            "cmd": "emit",
                            "id": f"j{i}",
                            "tag": f"join{i}",
                            "name": "join_workspace",
                            "args": ["w"],
                        }
                    )
                    await trio.sleep(0.05)
            await driver.proc.expect(lambda line: line.get("tag") == f"m{total - 1}")
            await driver.call("pub", "dispatch_message", {"workspaceId": "w", "textMarker": "end"})
            joined = [
                f"j{i}" for i in range(total) if i % (total // joiners) == total // joiners // 2
            ]
            for client in joined:
                await driver.proc.expect(partial(is_message, client, "end"))
            lines = driver.proc.backlog
            seen_history = 0
            for client in joined:
                tag = f"join{client[1:]}"
                (ack,) = [line for line in lines if line.get("tag") == tag]
                history = [m["text"] for m in ack["args"][0]["history"]]  # type: ignore[index]
                live = [text_of(line) for line in lines if is_message(client, None, line)]
                assert len(history) <= HISTORY_LENGTH
                seen_history += len(history)
                # ("end" itself was taken from the backlog by the wait above.)
                texts = [*history, *live]
                twice = [t for t, n in Counter(texts).items() if n > 1]
                assert not twice, f"{client} got {twice} twice"
                numbers = sorted(int(t.partition(":")[2]) for t in texts)
                first = numbers[0] if numbers else total
                assert numbers == list(range(first, total)), f"{client} missed some"
                if history and len(history) < HISTORY_LENGTH:
                    assert first == 0, f"{client}: a short history starts at the start"
            assert seen_history > 0  # some joined after messages were sent
            server.terminate()


async def replay_presence(log_dir: Path, at: float) -> list[object]:
    """``roomcast replay LOGDIR --presence w --at @TIME --json``: its members."""
    argv = [sys.executable, "-m", "roomcast.engine.cli", "replay", str(log_dir)]
    result = await trio.run_process(
        [*argv, "--presence", "w", "--at", f"@{at}", "--json"], capture_stdout=True
    )
    found = json.loads(result.stdout)
    assert isinstance(found, dict)
    members = found["members"]
    assert isinstance(members, list)
    return members


async def test_presence_is_rebuilt_after_a_crash(js_peers: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_dir = tmp_path / "log"
    with trio.fail_after(TEST_TIMEOUT):
        async with open_driver(js_peers) as driver:
            async with chat_server(port, log_dir) as first:
                for name in ("ann", "bob"):
                    await driver.connect(name, url, auth={"name": name})
                    await driver.call(name, "join_workspace", "w")
                before_kill = time.time()
                first.kill()  # SIGKILL: no DISCONNECT records
                await first.process.wait()
            for name in ("ann", "bob"):
                await driver.proc.expect_event("disconnected", id=name)
            async with chat_server(port, log_dir) as second:
                await driver.connect("cyd", url, auth={"name": "cyd"})
                await driver.call("cyd", "join_workspace", "w")
                # The last run's members are there (cut off, within the window).
                assert await who(driver, "cyd") == [
                    {"name": "ann", "connections": 1},
                    {"name": "bob", "connections": 1},
                    {"name": "cyd", "connections": 1},
                ]
                _sid, recovered = await driver.reconnect("ann")
                assert recovered
                with trio.fail_after(PRESENCE_DEBOUNCE + 3.0):
                    body, _offset = await driver.received("cyd", "presence_leave")
                assert body == {"workspaceId": "w", "name": "bob"}  # not back: it leaves
                assert await who(driver, "cyd") == [
                    {"name": "ann", "connections": 1},
                    {"name": "cyd", "connections": 1},
                ]
                # cyd saw its own join, then bob leave; ann never flapped.
                events = presence_events(driver, "cyd")
                assert events == [("presence_join", "cyd")], events
                after_leave = time.time()
                second.terminate()
                await second.process.wait()
    # The log alone tells who was there (connections as logged: no debounce there).
    assert await replay_presence(log_dir, before_kill) == [
        {"key": "ann", "meta": {"name": "ann"}, "connections": 1},
        {"key": "bob", "meta": {"name": "bob"}, "connections": 1},
    ]
    assert await replay_presence(log_dir, after_leave) == [
        {"key": "ann", "meta": {"name": "ann"}, "connections": 1},
        {"key": "cyd", "meta": {"name": "cyd"}, "connections": 1},
    ]
    assert await replay_presence(log_dir, time.time()) == []  # after the clean stop
