"""Floods and stalls: a client that writes and never reads, slowloris, frame floods.

Each ends in a defined outcome (a close with a reason, or an HTTP status) while other
clients keep being served, and memory stays bounded (checked by ``serve_live``).
"""

from __future__ import annotations

import attrs
import trio

from roomcast.engine import Config

from .conftest import Live, build_server, hostile_config, serve_live
from .wire import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    Closed,
    build_frame,
    open_socketio,
)

HALF_OPEN = 300


async def flood_without_reading(live: Live, count: int) -> int:
    """Send ``count`` acked echo events as fast as TCP takes them, never reading; the
    number sent before the server cut the connection."""
    ws = await open_socketio(live.host, live.port)
    sent = 0
    chunk: list[bytes] = []
    try:
        with trio.fail_after(20):
            for i in range(count):
                chunk.append(build_frame(OP_TEXT, f'42{i}["echo",{i}]'.encode()))
                if len(chunk) == 500:
                    await ws.send_raw(b"".join(chunk))
                    sent += len(chunk)
                    chunk.clear()
            await ws.send_raw(b"".join(chunk))
            sent += len(chunk)
            # All sent: now the server must end it (we still never read).
            await live.drained()
    except trio.BrokenResourceError:
        pass
    finally:
        await ws.aclose()
    return sent


async def test_a_flood_of_100000_events_hits_the_rate_limit(live: Live) -> None:
    sent = await flood_without_reading(live, 100_000)
    await live.drained()
    assert live.reasons == ["rate limit exceeded"]
    assert sent < 100_000


async def test_a_flood_without_reading_is_evicted_as_a_slow_consumer() -> None:
    config = hostile_config(max_events_per_second=0, outbox_size=256)
    async with serve_live(build_server(config)) as live:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood_without_reading, live, 100_000)
            # Meanwhile another client is served.
            await trio.sleep(0.2)
            await live.check_healthy()
        await live.drained()
        assert live.reasons[-1] == "slow consumer"


async def test_300_half_open_handshakes_get_408_and_others_are_served(live: Live) -> None:
    partial = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgr"
    streams = []
    for _ in range(HALF_OPEN):
        stream = await trio.open_tcp_stream(live.host, live.port)
        await stream.send_all(partial)
        streams.append(stream)
    # While they hang, the server serves others.
    await live.check_healthy()
    answers: list[bytes] = []

    async def read_answer(stream: trio.SocketStream) -> None:
        data = b""
        while chunk := await stream.receive_some(4096):
            data += chunk
        answers.append(data)
        await stream.aclose()

    with trio.fail_after(live.server.config.request_header_timeout + 5):
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(read_answer, stream)
    assert len(answers) == HALF_OPEN
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers)


async def test_connections_that_send_nothing_are_closed_quietly(live: Live) -> None:
    streams = [await trio.open_tcp_stream(live.host, live.port) for _ in range(50)]
    with trio.fail_after(live.server.config.request_header_timeout + 5):
        for stream in streams:
            assert await stream.receive_some(4096) == b""
            await stream.aclose()


async def test_a_polling_post_whose_body_never_comes_is_cut_off(live: Live) -> None:
    from ..conformance.wire import Endpoint, eio_target

    endpoint = Endpoint(host=live.host, port=live.port)
    sid, _ = await endpoint.polling_handshake("/socket.io/")
    stream = await trio.open_tcp_stream(live.host, live.port)
    head = (
        f"POST {eio_target('/socket.io/', sid=sid)} HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 1000\r\n\r\n42"
    )
    await stream.send_all(head.encode())
    # The body never comes: it must come within request_body_timeout.
    try:
        with trio.fail_after(live.server.config.request_body_timeout + 2):
            answer = b""
            while chunk := await stream.receive_some(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 "), answer
    finally:
        await stream.aclose()
        for conn in live.server.connections.values():
            conn.close("transport close")  # so that serve_live's checks can go on


async def test_a_websocket_that_never_finishes_a_frame_is_closed() -> None:
    config = hostile_config(connect_timeout=0.5)
    async with serve_live(build_server(config)) as live:
        ws = await open_socketio(live.host, live.port, connect=False)
        await ws.send_raw(build_frame(OP_TEXT, b'40{"token":"abc"}')[:5])
        with trio.fail_after(5):
            messages, closed = await ws.receive_until_closed()
        await ws.aclose()
        assert messages == []
        assert closed == Closed(1000, "connect timeout")


async def test_a_ping_flood_without_reading_stays_bounded(live: Live) -> None:
    flooder = await open_socketio(live.host, live.port)
    frames = b"".join(build_frame(OP_PING, b"x" * 125) for _ in range(2_000))
    with trio.move_on_after(2):
        for _ in range(100):  # up to 200,000 pings, 26 MB; TCP stops us when full
            await flooder.send_raw(frames)
    await live.check_healthy()
    connection = next(iter(live.server.connections.values()))
    assert connection.transport is not None
    assert len(connection.transport.control) <= 16
    await flooder.aclose()


async def test_a_message_in_100000_empty_fragments_then_its_text(live: Live) -> None:
    ws = await open_socketio(live.host, live.port)
    empty = build_frame(OP_CONTINUATION, b"", fin=False)
    await ws.send_raw(build_frame(OP_TEXT, b"", fin=False))
    for _ in range(20):
        await ws.send_raw(empty * 5_000)
    await ws.send_raw(build_frame(OP_CONTINUATION, b'421["echo","fragments"]'))
    with trio.fail_after(10):
        assert await ws.receive_message() == '431["fragments"]'
    await ws.aclose()


async def test_a_message_in_one_byte_fragments_over_the_limit_is_1009() -> None:
    config = hostile_config(limits=attrs.evolve(Config().limits, max_payload_bytes=20_000))
    async with serve_live(build_server(config)) as live:
        ws = await open_socketio(live.host, live.port)
        await ws.send_raw(build_frame(OP_BINARY, b"x", fin=False))
        one = build_frame(OP_CONTINUATION, b"x", fin=False)
        try:
            for _ in range(30):
                await ws.send_raw(one * 1000)
        except trio.BrokenResourceError:
            pass
        with trio.fail_after(5):
            _, closed = await ws.receive_until_closed()
        await ws.aclose()
        assert closed.code == 1009
        await live.drained()
        assert live.reasons == ["message too big"]


async def test_a_frame_announcing_2_62_bytes_is_cut_at_the_payload_limit(live: Live) -> None:
    ws = await open_socketio(live.host, live.port)
    head = build_frame(OP_TEXT, b"", length=2**62)
    await ws.send_raw(head[:-4] + b"\x00\x00\x00\x00")  # zero mask key: payload as is
    chunk = b"4" * 65_536
    try:
        for _ in range(40):  # 2.6 MB, over the 1 MB limit
            await ws.send_raw(chunk)
    except trio.BrokenResourceError:
        pass
    with trio.fail_after(5):
        _, closed = await ws.receive_until_closed()
    await ws.aclose()
    assert closed.code == 1009


async def test_websocket_framing_violations_are_close_1002(live: Live) -> None:
    violations = [
        build_frame(OP_TEXT, b"40", mask=False),  # clients must mask (RFC 6455 §5.1)
        build_frame(OP_TEXT, b"40", rsv=4),  # RSV1 without an extension
        build_frame(OP_TEXT, b"40", rsv=1),
        build_frame(0x3, b"40"),  # reserved opcodes
        build_frame(0xB, b""),
        build_frame(OP_PING, b"", fin=False),  # fragmented control frame
        build_frame(OP_PING, b"x" * 126),  # control payload over 125
        build_frame(OP_CONTINUATION, b"40"),  # continuation of nothing
        build_frame(OP_TEXT, b"4", fin=False) + build_frame(OP_TEXT, b"0"),  # no CONTINUATION
        build_frame(OP_TEXT, b"", length=2**63),  # MSB of a 64-bit length set
        build_frame(0x8, b"\x03\xe8\xff"),  # close reason not UTF-8
        build_frame(0x8, b"\x00\x05"),  # close code 5 is not allowed
    ]
    for frame in violations:
        ws = await open_socketio(live.host, live.port)
        await ws.send_raw(frame)
        with trio.fail_after(5):
            _, closed = await ws.receive_until_closed()
        await ws.aclose()
        assert closed.code in (1002, 1007), (frame[:8], closed)


def test_the_hostile_config_keeps_the_default_limits() -> None:
    # The hostile tests attack the shipped limits, only the timers are shorter.
    default, hostile = Config(), hostile_config()
    assert hostile.limits == default.limits
    assert hostile.max_events_per_second == default.max_events_per_second
    assert hostile.outbox_size == default.outbox_size
