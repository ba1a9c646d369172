"""docs/conformance.md §1 and §2.1: the handshake, over polling and over WebSocket, and the
requests refused with 400 before any session exists."""

from __future__ import annotations

import json

import pytest
import trio

from .conftest import BUDGET, ENGINE, SOCKET
from .wire import Endpoint, eio_target, open_ws, ws_handshake

PATHS = pytest.mark.parametrize("path", [ENGINE, SOCKET])
HANDSHAKE_KEYS = {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}


def check_handshake(data: dict[str, object], upgrades: list[str]) -> None:
    assert set(data) == HANDSHAKE_KEYS  # exactly these keys: no extras
    assert isinstance(data["sid"], str)
    assert data["sid"]
    assert data["upgrades"] == upgrades
    # Sub-second values exact, and integers (300, not 0.3 or 300.0).
    for key, value in (("pingInterval", 300), ("pingTimeout", 200), ("maxPayload", 1_000_000)):
        assert type(data[key]) is int, (key, data[key])
        assert data[key] == value


@PATHS
async def test_polling_handshake(app: Endpoint, path: str) -> None:
    with trio.fail_after(BUDGET):
        response = await app.get(eio_target(path))
        assert response.status == 200
        assert response.text.startswith("0")
        check_handshake(json.loads(response.text[1:]), ["websocket"])
        # The raw text too: no float formatting slipped through.
        assert '"pingInterval":300' in response.text
        assert '"pingTimeout":200' in response.text


@PATHS
async def test_websocket_handshake(app: Endpoint, path: str) -> None:
    with trio.fail_after(BUDGET):
        async with open_ws(app, eio_target(path, transport="websocket")) as ws:
            check_handshake(await ws_handshake(ws), [])


async def test_each_handshake_gets_its_own_sid(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        sids = {(await app.polling_handshake(ENGINE))[0] for _ in range(5)}
        assert len(sids) == 5


async def test_other_query_parameters_are_ignored(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        response = await app.get(eio_target(ENGINE, extra="t=N1a2b3c&foo=bar"))
        assert response.status == 200
        check_handshake(json.loads(response.text[1:]), ["websocket"])


@PATHS
@pytest.mark.parametrize(
    ("eio", "transport"),
    [
        pytest.param(None, "polling", id="EIO-missing"),
        pytest.param("abc", "polling", id="EIO-abc"),
        pytest.param("3", "polling", id="EIO-3"),
        pytest.param("4", None, id="transport-missing"),  # never defaults to polling
        pytest.param("4", "abc", id="transport-abc"),
    ],
)
async def test_bad_eio_or_transport_is_400(
    app: Endpoint, path: str, eio: str | None, transport: str | None
) -> None:
    with trio.fail_after(BUDGET):
        response = await app.get(eio_target(path, eio=eio, transport=transport))
        assert response.status == 400


@PATHS
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_handshake_with_another_method_is_400_not_405(
    app: Endpoint, path: str, method: str
) -> None:
    with trio.fail_after(BUDGET):
        response = await app.request(method, eio_target(path), body="4hello")
        assert response.status == 400


@PATHS
@pytest.mark.parametrize(
    ("eio", "transport"),
    [
        pytest.param("abc", "websocket", id="EIO-abc"),
        pytest.param(None, "websocket", id="EIO-missing"),
        pytest.param("4", "abc", id="transport-abc"),
    ],
)
async def test_bad_websocket_handshake_ends_the_connection(
    app: Endpoint, path: str, eio: str | None, transport: str
) -> None:
    with trio.fail_after(BUDGET):
        response = await app.websocket_status(eio_target(path, eio=eio, transport=transport))
        assert response.status == 400


@PATHS
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_unknown_sid_is_400(app: Endpoint, path: str, method: str) -> None:
    with trio.fail_after(BUDGET):
        response = await app.request(method, eio_target(path, sid="no-such-sid"), body="4x")
        assert response.status == 400


@PATHS
async def test_unknown_sid_over_websocket_is_400(app: Endpoint, path: str) -> None:
    with trio.fail_after(BUDGET):
        target = eio_target(path, transport="websocket", sid="no-such-sid")
        assert (await app.websocket_status(target)).status == 400


async def test_a_sid_belongs_to_its_endpoint(app: Endpoint) -> None:
    # A session opened on /engine.io/ is unknown on /socket.io/ and the other way round.
    with trio.fail_after(BUDGET):
        engine_sid, _ = await app.polling_handshake(ENGINE)
        socket_sid, _ = await app.polling_handshake(SOCKET)
        assert (await app.post(eio_target(SOCKET, sid=engine_sid), "4x")).status == 400
        assert (await app.post(eio_target(ENGINE, sid=socket_sid), "40")).status == 400


async def test_any_origin_is_allowed_with_cors_headers(app: Endpoint) -> None:
    # §1: "CORS: any origin allowed". A browser's preflight and its request both pass.
    origin = "http://suite.example:8080"
    with trio.fail_after(BUDGET):
        preflight = await app.request(
            "OPTIONS",
            eio_target(ENGINE),
            headers=[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
        )
        assert preflight.status in (200, 204)
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "content-type" in preflight.headers["access-control-allow-headers"].lower()
        response = await app.get(eio_target(ENGINE), headers=[("Origin", origin)])
        assert response.status == 200
        assert response.headers["access-control-allow-origin"] == origin
        async with open_ws(
            app, eio_target(SOCKET, transport="websocket"), headers=[("Origin", origin)]
        ) as ws:
            await ws_handshake(ws)
