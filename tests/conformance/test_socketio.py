"""docs/conformance.md §4: the Socket.IO v5 layer on ``/socket.io/`` (all over WebSocket, as the
suite does), compared as exact strings."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio_websocket

from .conftest import BUDGET, SOCKET
from .wire import Endpoint, eio_target, expect_ws_closed, open_ws, ws_handshake

SID = re.compile(r'\{"sid":"[A-Za-z0-9_-]+"\}')
AT_ONCE: float = 0.2


@asynccontextmanager
async def open_sio(app: Endpoint) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A WebSocket on /socket.io/ past the Engine.IO handshake."""
    async with open_ws(app, eio_target(SOCKET, transport="websocket")) as ws:
        await ws_handshake(ws)
        yield ws


async def connect(ws: trio_websocket.WebSocketConnection, packet: str, prefix: str) -> str:
    """Send a CONNECT; check the accept (only a sid) and return its JSON."""
    await ws.send_message(packet)
    reply = await ws.get_message()
    assert isinstance(reply, str)
    assert reply.startswith(prefix), reply
    body = reply[len(prefix) :]
    assert SID.fullmatch(body), reply  # only the sid key: no pid
    return body


@pytest.mark.parametrize(
    ("packet", "accept_prefix", "auth_event"),
    [
        ("40", "40", '42["auth",{}]'),
        ('40{"token":"123"}', "40", '42["auth",{"token":"123"}]'),
        ("40/custom,", "40/custom,", '42/custom,["auth",{}]'),
        ("40/custom", "40/custom,", '42/custom,["auth",{}]'),
        ('40/custom,{"token":"abc"}', "40/custom,", '42/custom,["auth",{"token":"abc"}]'),
    ],
)
async def test_connect_is_accepted_and_the_auth_event_follows_at_once(
    app: Endpoint, packet: str, accept_prefix: str, auth_event: str
) -> None:
    with trio.fail_after(BUDGET):
        async with open_sio(app) as ws:
            start = trio.current_time()
            await connect(ws, packet, accept_prefix)
            assert await ws.get_message() == auth_event  # the very next frame
            assert trio.current_time() - start < 0.2  # before the first ping


async def test_the_auth_object_keeps_its_key_order_and_types(app: Endpoint) -> None:
    auth = '{"z":1,"a":[true,null,1.5,"x"],"m":{"b":2,"a":1}}'
    with trio.fail_after(BUDGET):
        async with open_sio(app) as ws:
            await connect(ws, "40" + auth, "40")
            assert await ws.get_message() == f'42["auth",{auth}]'


@pytest.mark.parametrize("namespace", ["/random", "/admin", "/custom/sub"])
async def test_an_unknown_namespace_is_refused(app: Endpoint, namespace: str) -> None:
    with trio.fail_after(BUDGET):
        async with open_sio(app) as ws:
            await ws.send_message(f"40{namespace},")
            assert await ws.get_message() == f'44{namespace},{{"message":"Invalid namespace"}}'
            # The Engine.IO connection may stay open; here it does, and "/" still connects.
            await connect(ws, "40", "40")
            assert await ws.get_message() == '42["auth",{}]'


@pytest.mark.parametrize("first", ["4abc", "4", "49", "42[]", '42["message"]', "41", "43[]"])
async def test_an_invalid_first_packet_closes_the_connection(app: Endpoint, first: str) -> None:
    # Anything but CONNECT first (an unknown type, or a packet for a namespace the client
    # has not joined) closes the Engine.IO connection, as Node's Client.ondecoded does.
    with trio.fail_after(BUDGET):
        async with open_sio(app) as ws:
            await ws.send_message(first)
            with trio.fail_after(AT_ONCE):
                await expect_ws_closed(ws)


async def test_no_connect_within_one_second_closes_the_connection(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        async with open_sio(app) as ws:
            start = trio.current_time()
            while True:  # answer the pings so only the connect timeout can close it
                try:
                    frame = await ws.get_message()
                except trio_websocket.ConnectionClosed:
                    break
                assert frame == "2", frame
                await ws.send_message("3")
            elapsed = trio.current_time() - start
            assert 0.95 <= elapsed <= 1.2, elapsed


async def test_message_is_echoed_as_message_back(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        async with open_sio(app) as ws:
            await connect(ws, "40", "40")
            assert await ws.get_message() == '42["auth",{}]'
            await ws.send_message('42["message",1,"2",{"3":[true]}]')
            assert await ws.get_message() == '42["message-back",1,"2",{"3":[true]}]'
            # Compact JSON, key order as received, integers stay integers.
            await ws.send_message('42["message",{"b":1,"a":2.5,"c":-0},[],"é",null]')
            assert await ws.get_message() == '42["message-back",{"b":1,"a":2.5,"c":0},[],"é",null]'
            await ws.send_message('42["message"]')
            assert await ws.get_message() == '42["message-back"]'


async def test_message_with_ack_is_acknowledged_with_its_arguments(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        async with open_sio(app) as ws:
            await connect(ws, "40", "40")
            assert await ws.get_message() == '42["auth",{}]'
            await ws.send_message('42456["message-with-ack",1,"2",{"3":[false]}]')
            assert await ws.get_message() == '43456[1,"2",{"3":[false]}]'
            await ws.send_message('420["message-with-ack"]')
            assert await ws.get_message() == "430[]"


async def test_binary_event_is_echoed_with_its_attachments_in_order(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        async with open_sio(app) as ws:
            await connect(ws, "40", "40")
            assert await ws.get_message() == '42["auth",{}]'
            await ws.send_message(
                '452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
            )
            await ws.send_message(b"\x01\x02\x03")
            await ws.send_message(b"\x04\x05\x06")
            assert await ws.get_message() == (
                '452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
            )
            assert await ws.get_message() == b"\x01\x02\x03"
            assert await ws.get_message() == b"\x04\x05\x06"


async def test_binary_event_with_ack_gets_a_binary_ack(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        async with open_sio(app) as ws:
            await connect(ws, "40", "40")
            assert await ws.get_message() == '42["auth",{}]'
            await ws.send_message(
                '452-789["message-with-ack",{"_placeholder":true,"num":0},'
                '{"_placeholder":true,"num":1}]'
            )
            await ws.send_message(b"\x01\x02\x03")
            await ws.send_message(b"\x04\x05\x06")
            assert await ws.get_message() == (
                '462-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
            )
            assert await ws.get_message() == b"\x01\x02\x03"
            assert await ws.get_message() == b"\x04\x05\x06"


async def test_custom_namespace_only_emits_auth(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        async with open_sio(app) as ws:
            await connect(ws, "40/custom,", "40/custom,")
            assert await ws.get_message() == '42/custom,["auth",{}]'
            # /custom has no message handler: nothing comes back but the regular ping.
            await ws.send_message('42/custom,["message",1]')
            await ws.send_message('42/custom,1["message-with-ack",1]')
            assert await ws.get_message() == "2"


async def test_disconnect_from_main_sends_nothing_and_keeps_the_connection(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        async with open_sio(app) as ws:
            await connect(ws, "40", "40")
            assert await ws.get_message() == '42["auth",{}]'
            await ws.send_message("41")
            # Nothing is sent for it: the next frame is the regular ping.
            assert await ws.get_message() == "2"
            await ws.send_message("3")
            # The connection is still up: "/" can be joined again.
            await connect(ws, "40", "40")
            assert await ws.get_message() == '42["auth",{}]'
            await ws.send_message('42["message","again"]')
            assert await ws.get_message() == '42["message-back","again"]'


async def test_disconnect_from_custom_keeps_main_working(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        async with open_sio(app) as ws:
            await connect(ws, "40", "40")
            assert await ws.get_message() == '42["auth",{}]'
            await connect(ws, "40/custom,", "40/custom,")
            assert await ws.get_message() == '42/custom,["auth",{}]'
            await ws.send_message("41/custom,")
            await ws.send_message('42["message","message to main namespace"]')
            assert await ws.get_message() == '42["message-back","message to main namespace"]'


@pytest.mark.parametrize("bad", ["4abc", "42{}", '42abc["message"]', '42"x"', "4{"])
async def test_malformed_packets_after_connecting_close_at_once(app: Endpoint, bad: str) -> None:
    with trio.fail_after(BUDGET):
        async with open_sio(app) as ws:
            await connect(ws, "40", "40")
            assert await ws.get_message() == '42["auth",{}]'
            await ws.send_message(bad)
            with trio.fail_after(AT_ONCE):
                await expect_ws_closed(ws)


async def test_sids_differ_per_connection_and_namespace(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        async with open_sio(app) as one, open_sio(app) as two:
            sids = {
                await connect(one, "40", "40"),
                await connect(two, "40", "40"),
            }
            assert await one.get_message() == '42["auth",{}]'
            sids.add(await connect(one, "40/custom,", "40/custom,"))
            assert len(sids) == 3
            assert all(json.loads(s).keys() == {"sid"} for s in sids)
