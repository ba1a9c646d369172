"""Malformed Engine.IO and Socket.IO packets of every kind, over WebSocket and polling.

Each case states its outcome: a close with a code and a Socket.IO disconnect reason, an
error packet (CONNECT_ERROR), or the packet is harmless and the connection keeps working.
After each test, ``live`` checks that a fresh client is served (see conftest).
"""

from __future__ import annotations

import json

import pytest
import trio

from roomcast.protocol import MSGPACK_PARSER

from ..conformance.wire import Endpoint, eio_target
from .conftest import Live, build_server, serve_live
from .wire import OP_TEXT, open_socketio

ECHO = '421["echo",1]'
ECHOED = "431[1]"

# (frame the client sends, close code, disconnect reason). Every one of these ends the
# connection: the server closes with the code after the frame.
CLOSING: list[tuple[str | bytes, int, str]] = [
    # Engine.IO
    ("", 1002, "parse error"),  # empty packet
    ("0", 1002, "parse error"),  # OPEN comes from the server only
    ('0{"sid":"x"}', 1002, "parse error"),
    ("1", 1000, "transport close"),  # the client's CLOSE
    ("2", 1000, "transport error"),  # v4: PING goes server to client only
    ("2probe", 1000, "transport error"),  # a probe on an open WebSocket session
    ("5", 1002, "parse error"),  # UPGRADE without a probe
    ("7", 1002, "parse error"),  # unknown packet types
    ("9", 1002, "parse error"),
    ("x", 1002, "parse error"),
    ("\u00e9", 1002, "parse error"),
    # Socket.IO
    ("4", 1002, "parse error"),  # empty Socket.IO packet
    ("47", 1002, "parse error"),  # unknown Socket.IO packet type
    ("4a", 1002, "parse error"),
    ('44{"message":"x"}', 1002, "parse error"),  # CONNECT_ERROR comes from servers only
    ('43["x"]', 1002, "parse error"),  # ACK without an ack id
    ("431", 1002, "parse error"),  # ACK without an array
    ("42", 1002, "parse error"),  # EVENT without payload
    ("42{}", 1002, "parse error"),
    ("42[]", 1002, "parse error"),
    ('42"echo"', 1002, "parse error"),
    ('42["echo"', 1002, "parse error"),  # truncated JSON
    ('42["echo"]]', 1002, "parse error"),  # trailing data
    ('42["echo",NaN]', 1002, "parse error"),  # not JSON
    ('42["echo",1e999]', 1002, "parse error"),
    ('42["connect"]', 1002, "parse error"),  # reserved event names
    ('42["disconnect"]', 1002, "parse error"),
    ('42/nope,["echo",1]', 1002, "parse error"),  # a namespace never joined
    ("40", 1002, "parse error"),  # CONNECT to a namespace already joined (Node closes too)
    ("40/" + "a" * 300 + ",", 1002, "parse error"),  # namespace too long
    ('45-["echo"]', 1002, "parse error"),  # attachment count missing
    ('45x-["echo"]', 1002, "parse error"),
    ('451["echo"]', 1002, "parse error"),  # no '-' after the count
    (b"\x00\x01\x02", 1002, "parse error"),  # binary with no announced attachment
    (b"", 1002, "parse error"),
]

NON_STRING_NAMES = ["42[1]", "42[null]", "42[true]", "42[{}]", "42[[]]", '42[["echo"]]', "42[1.5]"]

ACK_IDS = [
    ('42-1["echo"]', "negative"),
    ('42-99999999999999999999["echo"]', "huge negative"),
    ('429007199254740992["echo"]', "2**53"),
    ('4299999999999999999999999999999999["echo"]', "34 digits"),
    ("42" + "9" * 10_000 + '["echo"]', "10,000 digits"),
]


async def expect_close(live: Live, frame: str | bytes, code: int, reason: str) -> None:
    ws = await open_socketio(live.host, live.port)
    try:
        await ws.send(frame)
        with trio.fail_after(5):
            messages, closed = await ws.receive_until_closed()
    finally:
        await ws.aclose()
    assert messages == []
    assert closed.code == code, closed
    await live.drained()
    assert live.reasons == [reason]


@pytest.mark.parametrize(("frame", "code", "reason"), CLOSING)
async def test_a_malformed_packet_closes_the_connection(
    live: Live, frame: str | bytes, code: int, reason: str
) -> None:
    await expect_close(live, frame, code, reason)


@pytest.mark.parametrize("frame", NON_STRING_NAMES)
async def test_a_non_string_event_name_is_a_parse_error(live: Live, frame: str) -> None:
    await expect_close(live, frame, 1002, "parse error")


@pytest.mark.parametrize(("frame", "what"), ACK_IDS)
async def test_an_ack_id_out_of_range_is_a_parse_error(live: Live, frame: str, what: str) -> None:
    await expect_close(live, frame, 1002, "parse error")


async def test_the_largest_ack_id_is_answered(live: Live) -> None:
    ws = await open_socketio(live.host, live.port)
    await ws.send('429007199254740991["echo","max"]')
    assert await ws.receive_message() == '439007199254740991["max"]'
    await ws.aclose()


@pytest.mark.parametrize(
    ("frame", "answer"),
    [
        ("3", None),  # a PONG nobody asked for
        ("6", None),  # NOOP
        ("431[]", None),  # an ACK for no pending call
        ('42["no-such-event"]', None),  # no handler
        ("40/nope,", '44/nope,{"message":"Invalid namespace"}'),  # error packet
        ('4299["echo"]', "4399[]"),
    ],
)
async def test_a_harmless_packet_gets_its_answer_and_the_connection_goes_on(
    live: Live, frame: str, answer: str | None
) -> None:
    ws = await open_socketio(live.host, live.port)
    await ws.send(frame)
    await ws.send(ECHO)
    with trio.fail_after(5):
        if answer is not None:
            assert await ws.receive_message() == answer
        assert await ws.receive_message() == ECHOED
    await ws.aclose()


async def test_invalid_utf8_in_a_text_frame_is_close_1007(live: Live) -> None:
    ws = await open_socketio(live.host, live.port)
    await ws.send_frame(OP_TEXT, b'42["echo","\xff\xfe"]')
    with trio.fail_after(5):
        _messages, closed = await ws.receive_until_closed()
    await ws.aclose()
    assert closed.code == 1007
    await live.drained()
    assert live.reasons == ["transport error"]


async def test_invalid_utf8_split_across_fragments_is_close_1007(live: Live) -> None:
    ws = await open_socketio(live.host, live.port)
    await ws.send_frame(OP_TEXT, b'42["echo","\xe2\x82', fin=False)
    await ws.send_frame(0x0, b'("]', fin=True)  # \xe2\x82 then "(" is not UTF-8
    with trio.fail_after(5):
        _, closed = await ws.receive_until_closed()
    await ws.aclose()
    assert closed.code == 1007


async def test_a_binary_event_announcing_999999999_attachments_is_refused(live: Live) -> None:
    frame = '45999999999-["echo",{"_placeholder":true,"num":0}]'
    await expect_close(live, frame, 1002, "parse error")


@pytest.mark.parametrize(
    "placeholder",
    [
        '{"_placeholder":true,"num":7}',  # no such attachment
        '{"_placeholder":true,"num":-1}',
        '{"_placeholder":true,"num":"0"}',
        '{"_placeholder":true}',
    ],
)
async def test_a_bad_placeholder_is_a_parse_error_once_the_attachment_came(
    live: Live, placeholder: str
) -> None:
    ws = await open_socketio(live.host, live.port)
    await ws.send(f'451-["echo",{placeholder}]')
    await ws.send(b"\x01")
    with trio.fail_after(5):
        messages, closed = await ws.receive_until_closed()
    await ws.aclose()
    assert (messages, closed.code) == ([], 1002)
    await live.drained()
    assert live.reasons == ["parse error"]


async def test_attachments_that_never_come_close_the_connection(live: Live) -> None:
    ws = await open_socketio(live.host, live.port)
    start = trio.current_time()
    await ws.send('452-["echo",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    await ws.send(b"\x01")  # one of the two
    with trio.fail_after(5):
        messages, _closed = await ws.receive_until_closed()
    await ws.aclose()
    assert messages == []
    elapsed = trio.current_time() - start
    assert live.server.config.attachment_timeout <= elapsed < 3
    await live.drained()
    assert live.reasons == ["attachment timeout"]


async def test_an_event_with_200000_arguments_is_refused(live: Live) -> None:
    frame = '42["echo"' + ",0" * 200_000 + "]"
    assert len(frame) < live.server.config.limits.max_payload_bytes
    await expect_close(live, frame, 1002, "parse error")


async def test_an_array_nested_100000_deep_is_refused(live: Live) -> None:
    frame = '42["echo",' + "[" * 100_000 + "]" * 100_000 + "]"
    await expect_close(live, frame, 1002, "parse error")


async def test_an_array_nested_to_the_limit_is_echoed(live: Live) -> None:
    depth = live.server.config.limits.max_nesting_depth - 1  # the args array is one level
    nested = "[" * depth + "]" * depth
    ws = await open_socketio(live.host, live.port)
    await ws.send(f'421["echo",{nested}]')
    assert await ws.receive_message() == f"431[{nested}]"
    await ws.aclose()


async def test_msgpack_nested_100000_deep_and_200000_arguments_are_refused() -> None:
    import msgpack

    async with serve_live(build_server(parser=MSGPACK_PARSER)) as live:
        deep: object = []
        for _ in range(100_000):
            deep = [deep]
        bodies = [
            # msgpack's packer refuses > 512 levels itself: build the bytes by hand.
            msgpack.packb({"type": 2, "nsp": "/", "data": ["echo"]})[:-7]
            + b"\x92\xa4echo"
            + b"\x91" * 100_000
            + b"\x90",
            msgpack.packb({"type": 2, "nsp": "/", "data": ["echo", *([0] * 200_000)]}),
            msgpack.packb({"type": 2, "nsp": "/", "data": [1]}),  # non-string name
            msgpack.packb({"type": 2, "nsp": "/", "id": -1, "data": ["echo"]}),
            msgpack.packb({"type": 2, "nsp": "/", "id": 2**53, "data": ["echo"]}),
            msgpack.packb({"type": 9, "nsp": "/"}),
            b"\xc1",  # never-used msgpack byte
        ]
        for body in bodies:
            ws = await open_socketio(live.host, live.port, connect=False)
            await ws.send(msgpack.packb({"type": 0, "nsp": "/"}))
            reply = await ws.receive_message()
            assert isinstance(reply, bytes)
            await ws.send(body)
            with trio.fail_after(5):
                messages, closed = await ws.receive_until_closed()
            await ws.aclose()
            assert (messages, closed.code) == ([], 1002), body[:40]
        await live.drained()
        assert live.reasons == ["parse error"] * len(bodies)


async def test_malformed_polling_bodies_get_400_and_end_the_session(live: Live) -> None:
    endpoint = Endpoint(host=live.host, port=live.port)
    bodies: list[bytes] = [
        b"",
        b"\x1e",
        b"4\x1e\x1e4",
        b"b!!!not base64",
        b"9",
        b'42["echo",1]\x1e' * 2000,  # more packets than max_packets_per_payload
        b"\xff\xfe",  # not UTF-8
        b'42["echo","\xed\xa0\x80"]',  # a UTF-8-encoded surrogate
    ]
    for body in bodies:
        sid, _ = await endpoint.polling_handshake("/socket.io/")
        target = eio_target("/socket.io/", sid=sid)
        response = await endpoint.post(target, body)
        assert response.status == 400, (body[:30], response)
        again = await endpoint.get(target)
        assert again.status == 400  # the session is gone
        assert json.loads(again.body) == {"code": 1, "message": "Session ID unknown"}


async def test_a_foreign_origin_gets_403_on_polling_and_websocket(live: Live) -> None:
    from .wire import Rejected, open_raw_websocket

    endpoint = Endpoint(host=live.host, port=live.port)
    evil = [("Origin", "https://evil.example")]
    response = await endpoint.get(eio_target("/socket.io/"), headers=evil)
    assert response.status == 403
    with pytest.raises(Rejected) as refused:
        await open_raw_websocket(live.host, live.port, headers=evil)
    assert refused.value.status == 403
    assert not live.server.connections
    # The same origin (the page was served by this host) is fine.
    same = [("Origin", f"http://{live.host}:{live.port}")]
    ws = await open_socketio(live.host, live.port, headers=same)
    await ws.aclose()
