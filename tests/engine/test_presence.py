"""Presence in one process (the chat example's server, in-memory harness, virtual time):
join and leave events, two tabs of one name, a cut-off tab that comes back in time
(no flapping) or does not (it leaves after the debounce window), an explicit disconnect
(leaves at once), and the members listed by ``who_is_here``; and presence from log records
alone (``roomcast replay --presence``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from examples.workspace_chat import PRESENCE_DEBOUNCE, build_server
from roomcast.engine.cli import main
from roomcast.engine.presence import PRESENCE_FIELD, Member, Presence, identity, presence_at
from roomcast.engine.testing import HarnessClient, open_harness
from roomcast.protocol import JsonValue, LogRecord, LogValue, RecordKind

from .log_helpers import record


def presence_events(client: HarnessClient) -> list[tuple[str, str]]:
    found = []
    for received in client.received:
        if received.event in ("presence_join", "presence_leave"):
            (body,) = received.args
            assert isinstance(body, dict)
            assert isinstance(body["workspaceId"], str)
            assert isinstance(body["name"], str)
            found.append((received.event, f"{body['workspaceId']}/{body['name']}"))
    return found


async def who(client: HarnessClient, room: str) -> object:
    (answer,) = await client.call("who_is_here", room)
    return answer


async def test_join_leave_and_two_tabs_of_one_name(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with open_harness(build_server()) as harness:
            ann = await harness.connect(auth={"name": "ann"})
            await ann.call("join_workspace", "w")
            await harness.settle()
            assert presence_events(ann) == [("presence_join", "w/ann")]
            bob1 = await harness.connect(auth={"name": "bob"})
            bob2 = await harness.connect(auth={"name": "bob"})
            await bob1.call("join_workspace", "w")
            await bob2.call("join_workspace", "w")
            await harness.settle()
            # Two tabs are one presence: one join.
            assert presence_events(ann) == [("presence_join", "w/ann"), ("presence_join", "w/bob")]
            assert await who(ann, "w") == {
                "ok": True,
                "members": [{"name": "ann", "connections": 1}, {"name": "bob", "connections": 2}],
            }
            await bob1.disconnect()  # explicit: its connection leaves at once
            await harness.settle()
            assert await who(ann, "w") == {
                "ok": True,
                "members": [{"name": "ann", "connections": 1}, {"name": "bob", "connections": 1}],
            }
            assert presence_events(ann)[-1] == ("presence_join", "w/bob")
            await bob2.disconnect()  # the last tab: bob leaves, at once
            await harness.settle()
            assert presence_events(ann)[-1] == ("presence_leave", "w/bob")
            assert await who(ann, "w") == {
                "ok": True,
                "members": [{"name": "ann", "connections": 1}],
            }


async def test_a_tab_cut_off_and_back_within_the_window_does_not_flap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # (Without recovery: the tab comes back as a new socket of the same name. A recovered
    # one, same sid, is tested with the npm client in test_presence_processes.py.)
    server = build_server()
    with trio.fail_after(60):
        async with open_harness(server) as harness:
            ann = await harness.connect(auth={"name": "ann"})
            await ann.call("join_workspace", "w")
            bob = await harness.connect(auth={"name": "bob"}, reconnect_delay=1.0)
            await bob.call("join_workspace", "w")
            await harness.settle()
            first_sid = bob.sid()
            assert first_sid is not None
            await bob.faults.drop()  # a network failure: bob's client reconnects
            assert await harness.wait_disconnect(first_sid) == "transport close"
            second_sid = await bob.wait_connected(2)
            assert second_sid != first_sid
            await bob.call("join_workspace", "w")
            await trio.sleep(PRESENCE_DEBOUNCE * 2)
            await harness.settle()
            assert presence_events(ann) == [("presence_join", "w/ann"), ("presence_join", "w/bob")]
            assert await who(ann, "w") == {
                "ok": True,
                "members": [{"name": "ann", "connections": 1}, {"name": "bob", "connections": 1}],
            }


async def test_a_tab_that_does_not_come_back_leaves_after_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_harness(build_server()) as harness:
            ann = await harness.connect(auth={"name": "ann"})
            await ann.call("join_workspace", "w")
            bob = await harness.connect(auth={"name": "bob"}, reconnect=False)
            await bob.call("join_workspace", "w")
            await harness.settle()
            start = trio.current_time()
            await bob.faults.drop()
            await ann.wait_for("presence_leave", within=PRESENCE_DEBOUNCE * 3)
            waited = trio.current_time() - start
            assert PRESENCE_DEBOUNCE <= waited < PRESENCE_DEBOUNCE + 1
            assert presence_events(ann)[-1] == ("presence_leave", "w/bob")


async def test_callbacks_see_members_and_bad_data_is_not_tracked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from roomcast.engine import Server, Socket

    server = Server()
    seen: list[tuple[str, str, str]] = []

    async def joined(room: str, member: Member) -> None:
        seen.append(("join", room, member.key))

    async def left(room: str, member: Member) -> None:
        seen.append(("leave", room, member.key))

    presence = Presence(namespace=server.of("/"), on_join=joined, on_leave=left, debounce=0)

    @server.use
    async def keyed(socket: Socket, auth: object) -> None:
        if isinstance(auth, dict) and isinstance(auth.get("user"), str):
            Presence.track(socket, auth["user"], {"user": auth["user"]})

    @server.on("enter")
    async def enter(socket: Socket, room: str) -> None:
        await socket.join(room)

    @server.on("exit")
    async def exit_(socket: Socket, room: str) -> None:
        await socket.leave(room)

    with trio.fail_after(30):
        async with open_harness(server) as harness:
            a = await harness.connect(auth={"user": "u1"})
            anonymous = await harness.connect()
            await a.call("enter", "r")
            await anonymous.call("enter", "r")
            await harness.settle()
            assert presence.members("r") == [Member(key="u1", meta={"user": "u1"}, connections=1)]
            await a.call("exit", "r")
            await harness.settle()
            assert seen == [("join", "r", "u1"), ("leave", "r", "u1")]
            assert presence.members("r") == []
    assert identity({PRESENCE_FIELD: ["k", {}]}) == ("k", {})
    assert identity({PRESENCE_FIELD: "k"}) is None


def test_presence_at_reads_keys_from_connects_and_follows_joins_leaves_and_restarts() -> None:
    def connect(
        offset: int, sid: str, key: str | None, rooms: list[str] | None = None
    ) -> LogRecord:
        data: dict[str, LogValue] = {} if key is None else {PRESENCE_FIELD: [key, {"n": key}]}
        info: dict[str, LogValue] = {"pid": None, "recovered": rooms is not None, "data": data}
        if rooms is not None:
            info["rooms"] = list(rooms)
        return record(offset, room="", kind=RecordKind.CONNECT, sender=sid, args=({}, info))

    def kind(offset: int, what: RecordKind, sid: str, room: str = "w") -> LogRecord:
        return record(offset, room=room, kind=what, sender=sid, args=())

    log = [
        connect(1, "a1", "ann"),
        connect(2, "a2", "ann"),
        connect(3, "x", None),
        kind(4, RecordKind.JOIN, "a1"),
        kind(5, RecordKind.JOIN, "a2"),
        kind(6, RecordKind.JOIN, "x"),
        kind(7, RecordKind.JOIN, "a1", room="elsewhere"),
        kind(8, RecordKind.LEAVE, "a2"),
        kind(9, RecordKind.DISCONNECT, "x", room=""),
        connect(10, "x", None, rooms=["w"]),  # recovered with its rooms
        record(11, namespace="", room="", kind=RecordKind.SERVER_START, sender=None, args=()),
    ]

    def at(offset: int) -> list[tuple[str, int]]:
        upto = [r for r in log if r.offset <= offset]
        return [(m.key, m.connections) for m in presence_at(upto, namespace="/", room="w")]

    assert at(5) == [("ann", 2)]
    assert at(6) == [("ann", 2), ("x", 1)]  # no key: its sid
    assert at(8) == [("ann", 1), ("x", 1)]
    assert at(9) == [("ann", 1)]
    assert at(10) == [("ann", 1), ("x", 1)]
    assert at(11) == []  # nobody stays across a restart
    members = presence_at(log[:5], namespace="/", room="w")
    assert members == [Member(key="ann", meta={"n": "ann"}, connections=2)]
    assert presence_at(log[:5], namespace="/other", room="w") == []


def test_replay_presence_needs_at_and_at_needs_presence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(tmp_path), "--presence", "w"]) == 2
    assert "--presence needs --at" in capsys.readouterr().err
    assert main(["replay", str(tmp_path), "--at", "5"]) == 2
    assert "--at goes with --presence" in capsys.readouterr().err


async def test_counts_from_other_nodes_are_merged_and_replaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # (What a node does with the counts another node sends; the processes over Redis are
    # in tests/adapters/test_presence_cluster.py.)
    from roomcast.engine import Server

    server = Server()
    seen: list[tuple[str, str, int]] = []

    async def joined(room: str, member: Member) -> None:
        seen.append(("join", member.key, member.connections))

    async def left(room: str, member: Member) -> None:
        seen.append(("leave", member.key, member.connections))

    presence = Presence(namespace=server.of("/"), on_join=joined, on_leave=left)
    bob: dict[str, JsonValue] = {"name": "bob"}
    with trio.fail_after(30):
        async with open_harness(server) as harness:
            await presence._on_sync("n2", "changed", [["w", "bob", bob, 2], ["x", "cyd", {}, 1]])
            await presence._on_sync("n3", "changed", [["w", "bob", bob, 1], "junk", [1, 2]])
            await harness.settle()
            assert presence.members("w") == [Member(key="bob", meta=bob, connections=3)]
            # One join for bob, whose tabs are on two other nodes (counted 2 or 3 then,
            # depending on when the presence task looked).
            assert [event for event, key, _ in seen if key == "bob"] == ["join"]
            assert ("join", "cyd", 1) in seen
            await presence._on_sync("n2", "all", [])  # n2 has nothing now
            await presence._on_sync("n3", "changed", [["w", "bob", bob, 0]])
            await harness.settle()
            assert presence.members("w") == []
            assert presence.members("x") == []
            assert [event for event, key, _ in seen if key == "bob"] == ["join", "leave"]
            assert ("leave", "cyd", 0) in seen
