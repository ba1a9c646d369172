"""docs/conformance.md §2.3: the WebSocket transport on the echo endpoint."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from roomcast.engine import Server

from .conftest import BUDGET, ENGINE, SOCKET
from .wire import Endpoint, eio_target, expect_ws_closed, open_ws, ws_handshake

AT_ONCE: float = 0.2
"""A close "at once" comes well before the 300 + 200 ms heartbeat could close anything."""


async def test_text_frames_are_echoed_as_text(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        async with open_ws(app, eio_target(ENGINE, transport="websocket")) as ws:
            await ws_handshake(ws)
            for text in ("4hello", "4", "4é ☃ 𝄞", "4" + "x" * 70_000):
                await ws.send_message(text)
                assert await ws.get_message() == text


async def test_binary_frames_are_echoed_as_raw_bytes(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        async with open_ws(app, eio_target(ENGINE, transport="websocket")) as ws:
            await ws_handshake(ws)
            await ws.send_message(b"\x01\x02\x03\x04")
            # Raw bytes: no "b", no base64, no type prefix on WebSocket.
            assert await ws.get_message() == b"\x01\x02\x03\x04"
            await ws.send_message(b"")
            assert await ws.get_message() == b""


async def test_messages_keep_their_order(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        async with open_ws(app, eio_target(ENGINE, transport="websocket")) as ws:
            await ws_handshake(ws)
            frames: list[str | bytes] = [f"4m{i}" if i % 3 else bytes([i]) for i in range(50)]
            for frame in frames:
                await ws.send_message(frame)
            assert [await ws.get_message() for _ in frames] == frames


@pytest.mark.parametrize("path", [ENGINE, SOCKET])
@pytest.mark.parametrize("frame", ["abc", "", "9", "x4hello"])
async def test_a_malformed_text_frame_closes_at_once(app: Endpoint, path: str, frame: str) -> None:
    with trio.fail_after(BUDGET):
        async with open_ws(app, eio_target(path, transport="websocket")) as ws:
            await ws_handshake(ws)
            await ws.send_message(frame)
            with trio.fail_after(AT_ONCE):
                await expect_ws_closed(ws)


@pytest.mark.parametrize("path", [ENGINE, SOCKET])
async def test_close_packet_closes_at_once(app: Endpoint, path: str) -> None:
    with trio.fail_after(BUDGET):
        async with open_ws(app, eio_target(path, transport="websocket")) as ws:
            await ws_handshake(ws)
            await ws.send_message("1")
            with trio.fail_after(AT_ONCE):
                await expect_ws_closed(ws)


async def test_a_closed_session_is_gone(app: Endpoint, conformance_server: Server | None) -> None:
    with trio.fail_after(BUDGET):
        async with open_ws(app, eio_target(ENGINE, transport="websocket")) as ws:
            sid = (await ws_handshake(ws))["sid"]
            assert isinstance(sid, str)
            if conformance_server is not None:  # (the ASGI front's is in another process)
                assert sid in conformance_server.connections
            await ws.send_message("1")
            await expect_ws_closed(ws)
        await app.settle()
        if conformance_server is not None:
            assert sid not in conformance_server.connections
        assert (await app.get(eio_target(ENGINE, sid=sid))).status == 400
