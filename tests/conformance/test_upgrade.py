"""docs/conformance.md §2.5: upgrading a polling session to WebSocket (probe, NOOP, UPGRADE)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from roomcast.engine import Server

from .conftest import BUDGET, ENGINE, SOCKET
from .wire import Endpoint, eio_target, expect_ws_closed, open_ws


@pytest.mark.parametrize("path", [ENGINE, SOCKET])
async def test_probe_then_upgrade(
    app: Endpoint, conformance_server: Server | None, path: str
) -> None:
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(path)
        # 1. A WebSocket with the polling session's sid is accepted (no open packet on it).
        async with open_ws(app, eio_target(path, transport="websocket", sid=sid)) as ws:
            # 2. 2probe -> 3probe on the WebSocket.
            await ws.send_message("2probe")
            assert await ws.get_message() == "3probe"
            # 3. From then on a polling GET is answered with exactly NOOP.
            got = await app.get(eio_target(path, sid=sid))
            assert (got.status, got.text) == (200, "6")
            # 4. UPGRADE: the WebSocket is the only transport now.
            await ws.send_message("5")
            if path == ENGINE:
                await ws.send_message("4hello")
                assert await ws.get_message() == "4hello"  # nothing before it
            else:
                await ws.send_message("40")
                reply = await ws.get_message()
                assert isinstance(reply, str)
                assert reply.startswith('40{"sid":"'), reply
            await app.settle()
            if conformance_server is not None:  # (the ASGI front's is in another process)
                assert conformance_server.connections[sid].transport_name == "websocket"
            # 5. Polling for the session is over.
            assert (await app.get(eio_target(path, sid=sid))).status == 400
            assert (await app.post(eio_target(path, sid=sid), "4x")).status == 400


async def test_a_held_get_is_answered_with_noop_by_the_probe(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(ENGINE)
        async with (
            app.open_http() as held,
            open_ws(app, eio_target(ENGINE, transport="websocket", sid=sid)) as ws,
        ):
            await held.send_request("GET", eio_target(ENGINE, sid=sid))
            await app.settle()
            await ws.send_message("2probe")
            assert await ws.get_message() == "3probe"
            got = await held.read_response()
            assert (got.status, got.text) == (200, "6")
            await ws.send_message("5")
            await ws.send_message("4after")
            assert await ws.get_message() == "4after"


async def test_messages_queued_during_the_upgrade_go_over_the_websocket(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(ENGINE)
        async with open_ws(app, eio_target(ENGINE, transport="websocket", sid=sid)) as ws:
            await ws.send_message("2probe")
            assert await ws.get_message() == "3probe"
            # Still polling until UPGRADE: a POST is taken, its echo waits for the upgrade.
            assert (await app.post(eio_target(ENGINE, sid=sid), "4queued")).body == b"ok"
            await ws.send_message("5")
            assert await ws.get_message() == "4queued"


async def test_another_websocket_after_the_upgrade_is_accepted_then_closed(
    app: Endpoint,
) -> None:
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(ENGINE)
        target = eio_target(ENGINE, transport="websocket", sid=sid)
        async with open_ws(app, target) as ws:
            await ws.send_message("2probe")
            assert await ws.get_message() == "3probe"
            await ws.send_message("5")
            # 6. A second WebSocket completes its handshake (101), then is closed at once;
            # an HTTP error status here would fail the suite's check.
            async with open_ws(app, target) as second:
                with trio.fail_after(0.2):
                    await expect_ws_closed(second)
            assert (await app.websocket_status(target)).status == 101
            # The upgraded session keeps working.
            await ws.send_message("4still")
            assert await ws.get_message() == "4still"


async def test_a_second_probe_while_one_is_under_way_is_closed(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(ENGINE)
        target = eio_target(ENGINE, transport="websocket", sid=sid)
        async with open_ws(app, target) as ws:
            await ws.send_message("2probe")
            assert await ws.get_message() == "3probe"
            async with open_ws(app, target) as second:
                with trio.fail_after(0.2):
                    await expect_ws_closed(second)
            await ws.send_message("5")
            await ws.send_message("4ok")
            assert await ws.get_message() == "4ok"


async def test_a_websocket_upgrade_of_a_websocket_session_is_closed(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        async with open_ws(app, eio_target(ENGINE, transport="websocket")) as ws:
            first = await ws.get_message()
            assert isinstance(first, str)
            sid = first.split('"sid":"')[1].split('"')[0]
            async with open_ws(app, eio_target(ENGINE, transport="websocket", sid=sid)) as other:
                with trio.fail_after(0.2):
                    await expect_ws_closed(other)
            await ws.send_message("4fine")
            assert await ws.get_message() == "4fine"


@pytest.mark.parametrize("frame", ["4hello", "2", "5", "3probe", "abc"])
async def test_anything_but_the_probe_first_fails_the_upgrade(app: Endpoint, frame: str) -> None:
    # Engine.IO v4 "Upgrade": the probing WebSocket must start with 2probe.
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(ENGINE)
        async with open_ws(app, eio_target(ENGINE, transport="websocket", sid=sid)) as ws:
            await ws.send_message(frame)
            with trio.fail_after(0.2):
                await expect_ws_closed(ws)
