"""The chat app, tested with roomcast's pytest plugin: no sleeps, no flakes.

Run them on their own: ``python -m pytest examples/chat_app/tests``.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from roomcast.engine import ConnectRefusedError
from roomcast.engine.testing import Harness, HarnessClient

# Trio tests even where trio_mode is not set (the plugin's fixtures need Trio).
pytestmark = pytest.mark.trio


async def connect(harness: Harness, user: str) -> HarnessClient:
    return await harness.connect(auth={"user": user})


async def test_join_is_acked_and_announced_to_the_room(roomcast_harness: Harness) -> None:
    alice = await connect(roomcast_harness, "alice")
    bob = await connect(roomcast_harness, "bob")
    assert await alice.call("join", "lobby") == ({"ok": True, "room": "lobby"},)
    assert await bob.call("join", "lobby") == ({"ok": True, "room": "lobby"},)
    assert await alice.wait_for("joined") == ({"room": "lobby", "user": "bob"},)
    assert bob.args("joined") == []  # not told about itself


async def test_messages_reach_the_room_and_only_the_room(roomcast_harness: Harness) -> None:
    alice = await connect(roomcast_harness, "alice")
    bob = await connect(roomcast_harness, "bob")
    carol = await connect(roomcast_harness, "carol")
    for client in (alice, bob):
        await client.call("join", "lobby")
    await carol.call("join", "elsewhere")
    assert await alice.call("say", "lobby", "hi all") == ({"ok": True, "delivered": 2},)
    expected = ({"room": "lobby", "user": "alice", "text": "hi all"},)
    assert await bob.wait_for("message") == expected
    assert await alice.wait_for("message") == expected
    await roomcast_harness.settle()  # everything sent has been handled...
    assert carol.args("message") == []  # ...and carol got nothing


@pytest.fixture
async def roomcast_client(roomcast_harness: Harness) -> HarnessClient:
    # Overrides the plugin's one-line client: this app wants a user name.
    return await connect(roomcast_harness, "dave")


async def test_acks_report_errors(roomcast_client: HarnessClient) -> None:
    assert await roomcast_client.call("say", "lobby", "hello?") == (
        {"ok": False, "error": "join the room first"},
    )
    assert await roomcast_client.call("join", "") == (
        {"ok": False, "error": "room must be a non-empty string"},
    )
    await roomcast_client.call("join", "lobby")
    assert await roomcast_client.call("say", "lobby", 42) == (
        {"ok": False, "error": "text must be a string"},
    )
    assert await roomcast_client.call("leave", "lobby") == ({"ok": True},)
    assert await roomcast_client.call("leave", "lobby") == (
        {"ok": False, "error": "not in that room"},
    )


async def test_a_client_without_a_name_is_refused(roomcast_harness: Harness) -> None:
    with pytest.raises(ConnectRefusedError) as info:
        await roomcast_harness.connect()
    assert info.value.message == "who are you?"
    assert info.value.data == {"expected": {"user": "a name"}}


async def test_a_silent_client_is_dropped_after_the_ping_timeout(
    autojump_clock: trio.testing.MockClock, roomcast_harness: Harness
) -> None:
    alice = await connect(roomcast_harness, "alice")
    bob = await connect(roomcast_harness, "bob")
    await alice.call("join", "lobby")
    await bob.call("join", "lobby")
    sid = bob.sid()
    assert sid is not None
    start = trio.current_time()
    bob.faults.silence_pings()
    assert await roomcast_harness.wait_disconnect(sid, within=60) == "ping timeout"
    assert trio.current_time() - start == pytest.approx(45.0)  # 25 s interval + 20 s timeout
    # The room goes on without bob's old socket.
    assert await alice.call("say", "lobby", "still here?") == ({"ok": True, "delivered": 1},)


async def test_a_client_recovers_after_its_transport_breaks(
    autojump_clock: trio.testing.MockClock, roomcast_harness: Harness
) -> None:
    alice = await connect(roomcast_harness, "alice")
    bob = await connect(roomcast_harness, "bob")
    await alice.call("join", "lobby")

    # What bob's app does: (re)join its room each time it connects.
    @bob.on("connect")
    async def rejoin() -> None:
        await bob.emit("join", "lobby")

    await bob.call("join", "lobby")
    bob.faults.cut_mid_frame()  # bob's next frame goes out half written, then the line dies
    await bob.emit("say", "lobby", "this one is lost")
    assert await bob.wait_disconnected() in ("transport close", "transport error")
    await bob.wait_connected(2)  # the client reconnected by itself, after its backoff
    assert await alice.wait_for("joined") == ({"room": "lobby", "user": "bob"},)
    assert await alice.wait_for("joined") == ({"room": "lobby", "user": "bob"},)  # rejoined
    assert await alice.call("say", "lobby", "welcome back") == ({"ok": True, "delivered": 2},)
    assert await bob.wait_for("message") == (
        {"room": "lobby", "user": "alice", "text": "welcome back"},
    )
    assert all(args[0] != "this one is lost" for args in alice.args("message"))
