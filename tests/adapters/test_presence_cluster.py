"""Presence across nodes: three workspace chat nodes (``APP=chat``) as processes on one
Redis, npm ``socket.io-client`` clients on them (tests/js/cluster_driver.mjs).

A member on another node is present (``presence_join``, ``who_is_here``), two tabs of one
name on two nodes are one presence, and a node killed with SIGKILL has its members leave
within ``node_timeout`` plus a heartbeat interval (plus scheduling slack)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest
import trio

from tests.adapters.processes import Driver
from tests.adapters.test_cluster_processes import NODE_TIMEOUT, open_cluster

pytestmark = pytest.mark.node

HEARTBEAT_INTERVAL: Final = 0.2  # (open_cluster's)


async def presence(driver: Driver, client: str) -> tuple[str, str]:
    """The next presence event ``client`` received: (event, name)."""
    line = await driver.proc.expect(
        lambda line: (
            line.get("event") == "recv"
            and line.get("id") == client
            and line.get("name") in ("presence_join", "presence_leave")
        )
    )
    args = line["args"]
    assert isinstance(args, list)
    body = args[0]
    assert isinstance(body, dict)
    assert body["workspaceId"] == "w"
    return str(line["name"]), str(body["name"])


@pytest.mark.parametrize("shared_log", [False, True])
async def test_members_on_other_nodes_are_present_and_a_killed_nodes_members_leave(
    redis_url: str, js_peers: Path, tmp_path: Path, shared_log: bool
) -> None:
    with trio.fail_after(40):
        async with open_cluster(
            redis_url, 3, js_peers, tmp_path, shared_log=shared_log, app="chat"
        ) as (nodes, driver):
            await driver.connect("ann", nodes[0].url, auth={"name": "ann"})
            (joined,) = await driver.call("ann", "join_workspace", "w")
            assert isinstance(joined, dict)
            assert joined["ok"] is True
            assert await presence(driver, "ann") == ("presence_join", "ann")
            # bob: one tab on node 1, one on node 2; cyd on node 2 only.
            await driver.connect("bob1", nodes[1].url, auth={"name": "bob"})
            await driver.call("bob1", "join_workspace", "w")
            assert await presence(driver, "ann") == ("presence_join", "bob")
            await driver.connect("bob2", nodes[2].url, auth={"name": "bob"})
            await driver.call("bob2", "join_workspace", "w")
            await driver.connect("cyd", nodes[2].url, auth={"name": "cyd"})
            await driver.call("cyd", "join_workspace", "w")
            assert await presence(driver, "ann") == ("presence_join", "cyd")  # not bob again
            (here,) = await driver.call("ann", "who_is_here", "w")
            assert here == {
                "ok": True,
                "members": [
                    {"name": "ann", "connections": 1},
                    {"name": "bob", "connections": 2},
                    {"name": "cyd", "connections": 1},
                ],
            }
            # History: with the shared log, what was said on any node; without it, none
            # (a node's own log lacks the other nodes' broadcasts).
            for text in ("one", "two"):
                await driver.call(
                    "ann", "dispatch_message", {"workspaceId": "w", "textMarker": text}
                )
            await driver.connect("dee", nodes[1].url, auth={"name": "dee"})
            (joined,) = await driver.call("dee", "join_workspace", "w")
            assert await presence(driver, "ann") == ("presence_join", "dee")
            assert isinstance(joined, dict)
            history = joined["history"]
            assert isinstance(history, list)
            assert [m["text"] for m in history] == (["one", "two"] if shared_log else [])
            await driver.call(
                "ann", "dispatch_message", {"workspaceId": "w", "textMarker": "three"}
            )
            (live, *_offset) = await driver.received("dee", "receive_message")
            assert isinstance(live, dict)
            assert live["text"] == "three"
            await driver.proc.send({"cmd": "close", "id": "dee"})
            await driver.proc.expect_event("closed", id="dee")
            assert await presence(driver, "ann") == ("presence_leave", "dee")  # at once
            nodes[2].proc.kill()  # SIGKILL: no goodbye; bob keeps his tab on node 1
            killed = trio.current_time()
            bound = NODE_TIMEOUT + HEARTBEAT_INTERVAL
            with trio.fail_after(bound + 3.0):  # (slack: the machine is shared)
                assert await presence(driver, "ann") == ("presence_leave", "cyd")
            took = trio.current_time() - killed
            print(f"a killed node's member left after {took:.2f} s (bound {bound:.1f} s)")
            (here,) = await driver.call("ann", "who_is_here", "w")
            assert here == {
                "ok": True,
                "members": [{"name": "ann", "connections": 1}, {"name": "bob", "connections": 1}],
            }
            received = [name for name, _ in driver.take_received("ann")]
            assert "presence_leave" not in received  # bob never left
