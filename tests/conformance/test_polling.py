"""docs/conformance.md §2.2: HTTP long-polling (payload encoding, POST ``ok``, held GETs, and
the ways a polling session ends)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from .conftest import BUDGET, ENGINE, SOCKET
from .wire import Endpoint, eio_target

HELD: float = 0.05
"""Seconds a GET is given to reach the server and be held there (well below the 300 ms
ping, so it cannot have been answered yet)."""


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("4hello", id="one"),
        pytest.param("4test1\x1e4test2\x1e4test3", id="three"),
        pytest.param("4hello\x1ebAQIDBA==", id="text-and-binary"),
        pytest.param("4\x1e4é ☃ 𝄞", id="empty-and-unicode"),
    ],
)
async def test_post_is_ok_and_the_next_get_has_the_echo(app: Endpoint, payload: str) -> None:
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(ENGINE)
        posted = await app.post(eio_target(ENGINE, sid=sid), payload)
        assert posted.status == 200
        assert posted.body == b"ok"  # exactly "ok", lower case
        got = await app.get(eio_target(ENGINE, sid=sid))
        assert got.status == 200
        assert got.text == payload  # all of it, in one payload, in order


async def test_requests_on_one_keep_alive_connection(app: Endpoint) -> None:
    # A browser reuses its connection: handshake, POST and GET one after another, and
    # the server keeps it open after each (none of its answers says Connection: close).
    with trio.fail_after(BUDGET):
        async with app.open_http() as http:
            handshake = await http.request("GET", eio_target(ENGINE))
            assert handshake.status == 200
            sid = handshake.text.split('"sid":"')[1].split('"')[0]
            for i in range(3):
                posted = await http.request("POST", eio_target(ENGINE, sid=sid), f"4m{i}")
                assert (posted.status, posted.body) == (200, b"ok")
                got = await http.request("GET", eio_target(ENGINE, sid=sid))
                assert (got.status, got.text) == (200, f"4m{i}")
            assert http.reusable


async def test_a_held_get_returns_as_soon_as_something_is_queued(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(ENGINE)
        async with app.open_http() as held:
            await held.send_request("GET", eio_target(ENGINE, sid=sid))
            await app.settle()
            start = trio.current_time()
            assert (await app.post(eio_target(ENGINE, sid=sid), "4wake")).body == b"ok"
            got = await held.read_response()
            assert (got.status, got.text) == (200, "4wake")
            assert trio.current_time() - start < 0.15  # not held until the 300 ms ping


@pytest.mark.parametrize("path", [ENGINE, SOCKET])
async def test_the_first_get_of_an_idle_session_is_the_ping(app: Endpoint, path: str) -> None:
    with trio.fail_after(BUDGET):
        start = trio.current_time()
        sid, _ = await app.polling_handshake(path)
        got = await app.get(eio_target(path, sid=sid))
        elapsed = trio.current_time() - start
        assert (got.status, got.text) == (200, "2")  # the ping alone: no NOOP mixed in
        assert 0.25 <= elapsed <= 0.45, elapsed


@pytest.mark.parametrize("path", [ENGINE, SOCKET])
@pytest.mark.parametrize("payload", ["abc", "4hello\x1e", "b!!!", "9x", ""])
async def test_a_malformed_post_is_400_and_closes_the_session(
    app: Endpoint, path: str, payload: str
) -> None:
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(path)
        posted = await app.post(eio_target(path, sid=sid), payload)
        assert posted.status == 400
        assert (await app.get(eio_target(path, sid=sid))).status == 400
        assert (await app.post(eio_target(path, sid=sid), "4x")).status == 400


async def test_two_gets_at_once_close_the_session(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(ENGINE)
        async with app.open_http() as first, app.open_http() as second:
            await first.send_request("GET", eio_target(ENGINE, sid=sid))
            await app.settle()
            await second.send_request("GET", eio_target(ENGINE, sid=sid))
            duplicate = await second.read_response()
            held = await first.read_response()
        assert duplicate.status in (400, 500)
        assert (held.status, held.text) == (200, "1")  # CLOSE
        assert (await app.get(eio_target(ENGINE, sid=sid))).status == 400
        assert (await app.post(eio_target(ENGINE, sid=sid), "4x")).status == 400


async def test_a_held_get_whose_client_leaves_closes_the_session(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(ENGINE)
        async with app.open_http() as held:
            await held.send_request("GET", eio_target(ENGINE, sid=sid))
            await app.settle()
        # The TCP connection is closed with the GET still held.
        await app.settle()
        assert (await app.get(eio_target(ENGINE, sid=sid))).status == 400


async def test_close_by_post_answers_the_held_get_with_noop(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(ENGINE)
        async with app.open_http() as held:
            await held.send_request("GET", eio_target(ENGINE, sid=sid))
            await app.settle()
            posted = await app.post(eio_target(ENGINE, sid=sid), "1")
            got = await held.read_response()
        assert (posted.status, posted.body) == (200, b"ok")
        assert (got.status, got.text) == (200, "6")  # NOOP, not an error status
        assert (await app.get(eio_target(ENGINE, sid=sid))).status == 400


async def test_close_by_post_without_a_held_get_ends_the_session(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(ENGINE)
        posted = await app.post(eio_target(ENGINE, sid=sid), "4bye\x1e1")
        assert (posted.status, posted.body) == (200, b"ok")
        assert (await app.get(eio_target(ENGINE, sid=sid))).status == 400


async def test_a_pong_by_post_is_ok(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        sid, _ = await app.polling_handshake(ENGINE)
        assert (await app.get(eio_target(ENGINE, sid=sid))).text == "2"
        posted = await app.post(eio_target(ENGINE, sid=sid), "3")
        assert (posted.status, posted.body) == (200, b"ok")


async def test_sessions_are_independent(app: Endpoint) -> None:
    with trio.fail_after(BUDGET):
        one, _ = await app.polling_handshake(ENGINE)
        two, _ = await app.polling_handshake(ENGINE)
        assert (await app.post(eio_target(ENGINE, sid=one), "4for-one")).body == b"ok"
        assert (await app.post(eio_target(ENGINE, sid=two), "4for-two")).body == b"ok"
        assert (await app.post(eio_target(ENGINE, sid=one), "abc")).status == 400
        assert (await app.get(eio_target(ENGINE, sid=two))).text == "4for-two"
        assert (await app.get(eio_target(ENGINE, sid=one))).status == 400
