"""roomcast against npm's ``socket.io-client`` 4.8, with the JSON and the msgpack parser.

Each test starts the app of ``tests/interop/app.py`` in-process on a free port, runs one
scenario of ``tests/js/client_scenarios.mjs`` in a Node subprocess (WebSocket transport
only), and checks both what the client printed and what the server's handlers saw.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Final

import pytest
import trio

from tests.interop.app import (
    POLL_WITHIN,
    REFUSAL_DATA,
    SCENARIO_TIMEOUT,
    TOKEN,
    Line,
    Observed,
    PeerCommand,
    build_app,
    check_binary,
    check_broadcast_acks,
    check_killed_client,
    check_last_moments,
    check_room_isolation,
    from_json,
    js_date_seconds,
    open_peer,
    run_heartbeat,
    run_scenario,
    run_server_shutdown,
    serve_app,
    text,
    the,
    typed,
)

pytestmark = pytest.mark.node

DISCONNECT_CYCLES: Final = 10
"""Connections client_disconnect opens and closes in turn (client_scenarios.mjs)."""


@pytest.fixture(params=["json", "msgpack"])
def node_peer(request: pytest.FixtureRequest, js_peers: Path) -> PeerCommand:
    node = shutil.which("node")
    assert node is not None
    parser_name = request.param
    assert isinstance(parser_name, str)
    return PeerCommand(argv=(node, str(js_peers / "client_scenarios.mjs")), parser_name=parser_name)


async def test_connect_with_auth(node_peer: PeerCommand) -> None:
    lines, seen = await run_scenario(node_peer, "connect_auth")
    sid = text(the(lines, "connect")["id"])
    auth = {"token": TOKEN, "user": "ada", "n": 7, "tags": ["a", "b"], "nested": {"ok": True}}
    # The server's connect handler got the auth payload, under the sid the client has...
    assert seen.connects == [("/", sid, auth)]
    assert typed(seen.auth_of(sid)) == typed(auth)
    # ... and its emit from the connect handler reached the client.
    assert typed(from_json(the(lines, "auth_echo")["args"])) == typed([auth])


async def test_middleware_refuses_with_data(node_peer: PeerCommand) -> None:
    lines, seen = await run_scenario(node_peer, "refused")
    error = the(lines, "connect_error")
    # Node's client turns CONNECT_ERROR {"message", "data"} into err.message / err.data.
    assert error["message"] == "not authorized"
    assert typed(error["data"]) == typed(REFUSAL_DATA)
    assert error["connected"] is False
    assert error["active"] is False  # a refused socket does not retry
    assert seen.refusals == [{"token": "wrong"}]
    # The same middleware lets the right token in.
    good = the(lines, "connect")
    sid = text(good["id"])
    whoami = good["whoami"]
    assert isinstance(whoami, dict)
    assert whoami["sid"] == sid
    assert whoami["namespace"] == "/private"
    assert seen.connects == [("/private", sid, {"token": TOKEN})]


async def test_two_namespaces_share_one_engine_io_connection(node_peer: PeerCommand) -> None:
    server, seen = build_app(node_peer.parser)
    with trio.fail_after(SCENARIO_TIMEOUT):
        async with (
            serve_app(server) as running,
            open_peer(node_peer(running.url, "two_namespaces")) as proc,
        ):
            lines = await proc.finish()
            whoami = the(lines, "whoami")
            assert isinstance(whoami["root"], dict)
            assert isinstance(whoami["admin"], dict)
            root_id, admin_id = text(whoami["root"]["id"]), text(whoami["admin"]["id"])
            # /admin left while / stayed: a clean namespace disconnect for /admin.
            assert await seen.wait_disconnect(admin_id) == "client namespace disconnect"
            await seen.wait_disconnect(root_id)
    assert the(lines, "manager")["shared"] is True
    root, admin = whoami["root"]["reply"], whoami["admin"]["reply"]
    assert isinstance(root, dict)
    assert isinstance(admin, dict)
    assert root["sid"] == root_id
    assert admin["sid"] == admin_id
    assert root_id != admin_id
    assert root["namespace"] == "/"
    assert admin["namespace"] == "/admin"
    assert root["auth"] == {"who": "root"}
    assert admin["auth"] == {"who": "admin"}
    # One Engine.IO session carries both namespaces, and the server has one connection.
    assert root["eio"] == admin["eio"]
    assert root["connections"] == admin["connections"] == 1
    assert seen.connection_counts == [1, 1, 1]
    assert the(lines, "admin_only")["reply"] == {
        "admin": True,
        "value": "x",
        "namespace": "/admin",
    }
    after = the(lines, "after_admin_left")["root"]
    assert isinstance(after, dict)
    assert after["eio"] == root["eio"]
    assert sorted(ns for ns, _, _ in seen.connects) == ["/", "/admin"]


async def test_room_isolation_in_the_seed_example(node_peer: PeerCommand) -> None:
    started = time.time()
    lines, _ = await run_scenario(node_peer, "room_isolation")
    check_room_isolation(lines, started)
    # Node's own Date.parse reads each timestamp to the millisecond it names.
    received = the(lines, "received")
    by_client = received["received"]
    assert isinstance(by_client, dict)
    stamps = [
        message["timestamp"]
        for found in by_client.values()
        if isinstance(found, list)
        for message in found
        if isinstance(message, dict)
    ]
    assert len(stamps) == 3
    expected = [round(js_date_seconds(stamp) * 1000) for stamp in stamps]
    assert received["parsed"] == expected


async def test_acks_both_ways(node_peer: PeerCommand) -> None:
    lines, seen = await run_scenario(node_peer, "acks")
    # Client -> server: the handler's return value is the ack (a tuple: several args).
    assert typed(the(lines, "echo")["reply"]) == typed([1, "two", {"three": [3]}, None, True])
    assert typed(the(lines, "add")["reply"]) == typed(5)
    assert the(lines, "noop")["reply"] == []  # None: an ack with no arguments
    assert typed(the(lines, "timeout_add")["reply"]) == typed(42)
    # Server -> client: socket.call got the client's ack callback arguments.
    assert typed(seen.call_answers) == typed([({"answer": 42}, "extra")])
    assert the(lines, "ask_me")["reply"] == [{"answer": 42}, "extra"]


async def test_binary_both_ways(node_peer: PeerCommand) -> None:
    lines, seen = await run_scenario(node_peer, "binary")
    check_binary(lines, seen, bytes_flag="isBuffer")


async def test_broadcast_acks(node_peer: PeerCommand) -> None:
    lines, seen = await run_scenario(node_peer, "broadcast_acks")
    check_broadcast_acks(lines, seen)
    assert POLL_WITHIN < SCENARIO_TIMEOUT


async def _disconnect_cycles(peer: PeerCommand) -> tuple[list[Line], Observed, list[str]]:
    """Run client_disconnect (connections that each emit and then disconnect, one after
    the other); wait until the server handled every disconnect and its cleanup."""
    server, seen = build_app(peer.parser)
    with trio.fail_after(SCENARIO_TIMEOUT):
        async with (
            serve_app(server) as running,
            open_peer(peer(running.url, "client_disconnect")) as proc,
        ):
            lines = await proc.finish()
            sids = [text(line["id"]) for line in lines if line["event"] == "connect"]
            for sid in sids:
                await seen.wait_disconnect(sid)
                await seen.wait_cleanup(sid)
    assert len(sids) == DISCONNECT_CYCLES
    return lines, seen, sids


async def test_client_disconnect_reason(node_peer: PeerCommand) -> None:
    lines, seen, sids = await _disconnect_cycles(node_peer)
    client_reasons = [line["reason"] for line in lines if line["event"] == "disconnect"]
    assert client_reasons == ["io client disconnect"] * DISCONNECT_CYCLES
    # socket.disconnect() sends DISCONNECT and at once closes the Engine.IO connection (it
    # was the last namespace): the server must report the DISCONNECT, as Node's does...
    wrong = {
        cycle: reason
        for cycle, sid in enumerate(sids)
        if (reason := seen.disconnect_reason(sid)) != "client namespace disconnect"
    }
    assert wrong == {}, "cycle -> the server's disconnect reason"
    # ... after running the handler of the event emitted just before it.
    handled = [args for event, args in seen.events if event == "upload"]
    lost = [c for c in range(DISCONNECT_CYCLES) if ({"last": "words", "cycle": c},) not in handled]
    assert lost == [], "cycles whose last event never reached its handler"
    assert len(seen.events) == DISCONNECT_CYCLES - len(lost)


async def test_disconnect_handler_is_not_cancelled_by_the_close(node_peer: PeerCommand) -> None:
    """The main namespace's disconnect handler awaits (as app cleanup does): the
    transport close that follows the client's DISCONNECT must not cancel it."""
    _, seen, sids = await _disconnect_cycles(node_peer)
    assert sorted(sid for sid, _ in seen.cleanups) == sorted(sids)
    cancelled = [sids.index(sid) for sid, outcome in seen.cleanups if outcome != "done"]
    assert cancelled == [], "cycles whose disconnect handler was cancelled"


async def test_server_disconnect_reason(node_peer: PeerCommand) -> None:
    server, seen = build_app(node_peer.parser)
    with trio.fail_after(SCENARIO_TIMEOUT):
        async with (
            serve_app(server) as running,
            open_peer(node_peer(running.url, "server_disconnect")) as proc,
        ):
            lines = await proc.finish()
            sid = text(the(lines, "connect")["id"])
            server_reason = await seen.wait_disconnect(sid)
    disconnect = the(lines, "disconnect")
    assert disconnect["reason"] == "io server disconnect"
    assert disconnect["active"] is False  # the client does not reconnect after a kick
    assert server_reason == "server namespace disconnect"


async def test_server_shutdown_reason(node_peer: PeerCommand) -> None:
    lines = await run_server_shutdown(node_peer)
    assert the(lines, "disconnect")["reason"] == "transport close"


async def test_heartbeat(node_peer: PeerCommand) -> None:
    alive, _ = await run_heartbeat(node_peer)
    pings = alive["pings"]
    assert isinstance(pings, int)
    assert pings >= 5  # ~10 in the second the client idled


async def test_killed_client_reason(node_peer: PeerCommand) -> None:
    await check_killed_client(node_peer)


async def test_the_room_hears_who_left_and_disconnect_sees_the_rooms(
    node_peer: PeerCommand,
) -> None:
    await check_last_moments(node_peer, "client namespace disconnect")
