"""Fault injection: silent heartbeats, torn frames, slow readers, drops, refusals, room crashes.

Every test runs on the in-memory transports under ``autojump_clock`` (a test argument:
pytest-trio takes the clock from the arguments): heartbeats, backoff and deadlines take
virtual time only.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage

from roomcast.engine import Config
from roomcast.engine.actors.supervisor import RoomCrashLoopError
from roomcast.engine.pytest_plugin import ServeFactory
from roomcast.engine.testing import Harness, HarnessClient, _cut_point, _frame_length, open_harness

from .conftest import room_app


async def rejoin_on_connect(client: HarnessClient, room: str) -> None:
    """What an app's client does: join its room on every (re)connect."""

    @client.on("connect")
    async def join() -> None:
        await client.emit("join", room)

    await client.call("join", room)


async def test_a_silenced_heartbeat_is_a_ping_timeout_then_the_client_comes_back(
    autojump_clock: trio.testing.MockClock,
    roomcast_harness: Harness,
) -> None:
    with trio.fail_after(200):
        client = await roomcast_harness.connect()
        first_sid = client.sid()
        assert first_sid is not None
        start = trio.current_time()
        client.faults.silence_pings()
        assert await roomcast_harness.wait_disconnect(first_sid, within=100) == "ping timeout"
        # Engine.IO v4: PING at pingInterval, closed pingTimeout later unanswered.
        assert trio.current_time() - start == pytest.approx(25.0 + 20.0)
        assert await client.wait_disconnected() == "transport close"
        client.faults.resume_pings()
        second_sid = await client.wait_connected(2)  # after the 0.5 s backoff
        assert second_sid != first_sid
        assert trio.current_time() - start == pytest.approx(45.5)
        # Answering again: three more intervals go by without a disconnect.
        await trio.sleep(3 * 25.0)
        assert [d.reason for d in roomcast_harness.disconnects] == ["ping timeout"]
        assert client.sid() == second_sid


@pytest.mark.parametrize("direction", ["send", "receive"])
async def test_a_transport_cut_mid_frame_and_the_recovery(
    autojump_clock: trio.testing.MockClock, roomcast_harness: Harness, direction: str
) -> None:
    with trio.fail_after(60):
        talker = await roomcast_harness.connect()
        victim = await roomcast_harness.connect()
        await talker.call("join", "r")
        await rejoin_on_connect(victim, "r")
        victim_sid = victim.sid()
        assert victim_sid is not None
        if direction == "send":
            victim.faults.cut_mid_frame(direction="send")
            await victim.emit("say", "r", "torn")  # half of this frame goes out
        else:
            victim.faults.cut_mid_frame(direction="receive")
            await talker.emit("say", "r", "torn")  # half of this one comes in
        await victim.faults.wait_cut()
        assert victim.faults.cuts == 1
        reason = await roomcast_harness.wait_disconnect(victim_sid)
        assert reason in ("transport close", "transport error")
        assert await victim.wait_disconnected() in ("transport close", "transport error")
        await victim.wait_connected(2)
        # Its connect handler re-joined the room: new messages reach it again.
        await talker.call("echo")  # anything the victim sent before is handled by now
        await talker.emit("say", "r", "after")
        assert await victim.wait_for("said") == ("after",)
        assert "torn" not in [args[0] for args in victim.args("said")]
        assert await talker.wait_for("said") in (("torn",), ("after",))


async def test_a_slow_reader_on_lockstep_streams_is_dropped_as_a_slow_consumer(
    autojump_clock: trio.testing.MockClock,
    roomcast_serve: ServeFactory,
) -> None:
    server = room_app(Config(outbox_size=32))
    harness = await roomcast_serve(server)
    with trio.fail_after(60):
        fast = await harness.connect()
        slow = await harness.connect(transport="lockstep", reconnect=False)
        await fast.call("join", "r")
        await slow.call("join", "r")
        slow_sid = slow.sid()
        assert slow_sid is not None
        slow.faults.stall_reads()
        for i in range(200):
            await server.to("r").emit("tick", i)
        assert await harness.wait_disconnect(slow_sid) == "slow consumer"
        for i in range(200):
            assert await fast.wait_for("tick") == (i,)  # the room kept going
        slow.faults.resume_reads()
        assert await slow.wait_disconnected() in ("transport close", "transport error")
        assert len(slow.args("tick")) < 200


async def test_memory_streams_are_unbounded_so_a_stalled_reader_is_not_noticed(
    autojump_clock: trio.testing.MockClock,
    roomcast_harness: Harness,
) -> None:
    with trio.fail_after(60):
        client = await roomcast_harness.connect()
        await client.call("join", "r")
        client.faults.stall_reads()
        for i in range(100):
            await roomcast_harness.server.to("r").emit("tick", i)
        await roomcast_harness.settle()
        assert client.args("tick") == []
        client.faults.resume_reads()
        for i in range(100):
            assert await client.wait_for("tick") == (i,)
        assert roomcast_harness.disconnects == []


async def test_a_dropped_connection_while_the_server_refuses_backs_off_and_returns(
    autojump_clock: trio.testing.MockClock,
    roomcast_harness: Harness,
) -> None:
    with trio.fail_after(100):
        client = await roomcast_harness.connect(reconnect_delay=1.0, reconnect_delay_max=8.0)
        roomcast_harness.refuse_connections()
        start = trio.current_time()
        await client.faults.drop()
        assert await client.wait_disconnected() == "transport error"
        await trio.sleep(10.0)  # attempts at 1, 1+2, 3+4: all refused
        assert len(client.lifecycle) == 2
        roomcast_harness.accept_connections()
        await client.wait_connected(2)
        # The next attempt after 7 s waits 8 s (capped): no jitter in the harness.
        assert trio.current_time() - start == pytest.approx(1.0 + 2.0 + 4.0 + 8.0)


async def test_a_crashed_room_is_restarted_with_its_members(
    autojump_clock: trio.testing.MockClock,
    roomcast_harness: Harness,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(10), caplog.at_level(logging.ERROR):
        a = await roomcast_harness.connect()
        b = await roomcast_harness.connect()
        await a.call("join", "r")
        await b.call("join", "r")
        await roomcast_harness.crash_room("r")
        assert await a.call("say", "r", "still here") == (2,)
        assert await b.wait_for("said") == ("still here",)
        with pytest.raises(LookupError, match="no room 'nope'"):
            await roomcast_harness.crash_room("nope")
        with pytest.raises(LookupError, match="no namespace"):
            await roomcast_harness.crash_room("r", namespace="/nowhere")
    assert any("crashed" in record.getMessage() for record in caplog.records)


async def test_too_many_room_crashes_escalate_out_of_the_harness(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = room_app()
    with (
        trio.fail_after(10),
        caplog.at_level(logging.CRITICAL),
        pytest.RaisesGroup(RoomCrashLoopError, flatten_subgroups=True),
    ):
        async with open_harness(server) as harness:
            client = await harness.connect()
            await client.call("join", "r")
            for _ in range(server.config.room_max_restarts + 1):
                await harness.crash_room("r")
            await trio.sleep_forever()


async def test_raw_streams_for_wire_level_tests(
    autojump_clock: trio.testing.MockClock, roomcast_harness: Harness
) -> None:
    with trio.fail_after(10):
        stream = await roomcast_harness.open_stream()
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(
            ws.send(Request(host="x", target="/socket.io/?EIO=4&transport=websocket"))
        )
        messages: list[str | bytes] = []
        while not messages:
            ws.receive_data(bytes(await stream.receive_some()))
            messages += [e.data for e in ws.events() if isinstance(e, TextMessage)]
        assert str(messages[0]).startswith('0{"sid":')
        assert ws.state is ConnectionState.OPEN
        await stream.aclose()


@pytest.mark.parametrize("size", [0, 10, 125, 126, 300, 65_535, 65_536, 70_000])
@pytest.mark.parametrize("masked", [True, False])
def test_the_cut_always_falls_inside_the_first_frame(size: int, masked: bool) -> None:
    frame = _frame(size, masked)
    batch = frame + _frame(5, masked)
    assert _frame_length(batch) == len(frame)
    assert 0 < _cut_point(batch) < len(frame)
    assert _frame_length(frame[:1]) is None
    if size >= 126:
        assert _frame_length(frame[:3]) is None  # the extended length is not all there


def _frame(size: int, masked: bool) -> bytes:
    """A binary WebSocket frame (RFC 6455 §5.2), masked as a client's or not."""
    header = bytearray([0x82])
    mask_bit = 0x80 if masked else 0
    if size < 126:
        header.append(mask_bit | size)
    elif size < 65_536:
        header.append(mask_bit | 126)
        header += size.to_bytes(2, "big")
    else:
        header.append(mask_bit | 127)
        header += size.to_bytes(8, "big")
    if masked:
        header += b"\x00\x00\x00\x00"  # an all-zero key leaves the payload as is
    return bytes(header) + bytes(size)


def test_the_hand_made_frames_are_what_wsproto_reads() -> None:
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert isinstance(next(server.events()), Request)
    server.send(AcceptConnection())
    for size in (300, 70_000):
        server.receive_data(_frame(size, masked=True))
        (message,) = list(server.events())
        assert isinstance(message, BytesMessage)
        assert message.data == bytes(size)
