"""roomcast against python-socketio's ``AsyncClient`` (asyncio, in its own process), with
its default (JSON) and its msgpack serializer.

Each test starts the app of ``tests/interop/app.py`` in-process on a free port, runs one
scenario of ``tests/interop/psio_client.py`` with this interpreter in a subprocess
(WebSocket transport only), and checks both what the client printed and what the
server's handlers saw.

python-socketio names reasons its own way: "client disconnect", "server disconnect" and
"transport error" (python-engineio has no "transport close"). Its ``disconnect()`` also
closes the WebSocket before its writer task sends the queued DISCONNECT and Engine.IO
CLOSE packets: on the wire there is only a close frame, so the server's reason is
"transport close", as a Node ``socket.io`` server would say too.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Final

import pytest
import trio

from tests.interop.app import (
    REFUSAL_DATA,
    SCENARIO_TIMEOUT,
    TOKEN,
    PeerCommand,
    build_app,
    check_binary,
    check_broadcast_acks,
    check_killed_client,
    check_last_moments,
    check_room_isolation,
    from_json,
    open_peer,
    run_heartbeat,
    run_scenario,
    run_server_shutdown,
    serve_app,
    text,
    the,
    typed,
)

pytestmark = pytest.mark.peer

SCRIPT: Final = Path(__file__).with_name("psio_client.py")


@pytest.fixture(params=["json", "msgpack"])
def psio_peer(request: pytest.FixtureRequest) -> PeerCommand:
    parser_name = request.param
    assert isinstance(parser_name, str)
    return PeerCommand(argv=(sys.executable, str(SCRIPT)), parser_name=parser_name)


async def test_connect_with_auth(psio_peer: PeerCommand) -> None:
    lines, seen = await run_scenario(psio_peer, "connect_auth", disconnects=1)
    sid = text(the(lines, "connect")["id"])
    auth = {"token": TOKEN, "user": "ada", "n": 7, "tags": ["a", "b"], "nested": {"ok": True}}
    assert seen.connects == [("/", sid, auth)]
    assert typed(seen.auth_of(sid)) == typed(auth)
    assert typed(from_json(the(lines, "auth_echo")["args"])) == typed([auth])
    assert seen.disconnects == [("/", sid, "transport close")]


async def test_middleware_refuses_with_data(psio_peer: PeerCommand) -> None:
    lines, seen = await run_scenario(psio_peer, "refused")
    error = the(lines, "connect_error")
    # connect() raises ConnectionError; the connect_error handler got the packet's data.
    assert error["message"] == "One or more namespaces failed to connect: /private"
    assert typed(error["handler_args"]) == typed(
        [[{"message": "not authorized", "data": REFUSAL_DATA}]]
    )
    assert error["connected"] is False
    assert seen.refusals == [{"token": "wrong"}]
    good = the(lines, "connect")
    sid = text(good["id"])
    whoami = good["whoami"]
    assert isinstance(whoami, dict)
    assert whoami["sid"] == sid
    assert whoami["namespace"] == "/private"
    assert seen.connects == [("/private", sid, {"token": TOKEN})]


async def test_two_namespaces_share_one_engine_io_connection(psio_peer: PeerCommand) -> None:
    lines, seen = await run_scenario(psio_peer, "two_namespaces", disconnects=2)
    whoami = the(lines, "whoami")
    assert isinstance(whoami["root"], dict)
    assert isinstance(whoami["admin"], dict)
    root_id, admin_id = text(whoami["root"]["id"]), text(whoami["admin"]["id"])
    root, admin = whoami["root"]["reply"], whoami["admin"]["reply"]
    assert isinstance(root, dict)
    assert isinstance(admin, dict)
    assert (root["sid"], admin["sid"]) == (root_id, admin_id)
    assert root_id != admin_id
    assert (root["namespace"], admin["namespace"]) == ("/", "/admin")
    assert root["auth"] == admin["auth"] == {"who": "both"}
    assert root["eio"] == admin["eio"]
    assert root["connections"] == admin["connections"] == 1
    assert seen.connection_counts == [1, 1]
    assert the(lines, "admin_only")["reply"] == {
        "admin": True,
        "value": "x",
        "namespace": "/admin",
    }
    # One close frame ends both namespaces.
    assert sorted(seen.disconnects) == sorted(
        [("/", root_id, "transport close"), ("/admin", admin_id, "transport close")]
    )


async def test_room_isolation_in_the_seed_example(psio_peer: PeerCommand) -> None:
    started = time.time()
    lines, _ = await run_scenario(psio_peer, "room_isolation")
    check_room_isolation(lines, started)


async def test_acks_both_ways(psio_peer: PeerCommand) -> None:
    lines, seen = await run_scenario(psio_peer, "acks")
    assert typed(the(lines, "echo")["reply"]) == typed([1, "two", {"three": [3]}, None, True])
    assert typed(the(lines, "add")["reply"]) == typed(5)
    assert the(lines, "noop")["reply"] == []
    # A handler returning a tuple answers the server's call with several arguments.
    assert typed(seen.call_answers) == typed([({"answer": 42}, "extra")])
    assert the(lines, "ask_me")["reply"] == [{"answer": 42}, "extra"]


async def test_binary_both_ways(psio_peer: PeerCommand) -> None:
    lines, seen = await run_scenario(psio_peer, "binary")
    check_binary(lines, seen, bytes_flag="isBytes")


async def test_broadcast_acks(psio_peer: PeerCommand) -> None:
    lines, seen = await run_scenario(psio_peer, "broadcast_acks")
    check_broadcast_acks(lines, seen)


async def test_client_disconnect_reason(psio_peer: PeerCommand) -> None:
    server, seen = build_app(psio_peer.parser)
    with trio.fail_after(SCENARIO_TIMEOUT):
        async with (
            serve_app(server) as running,
            open_peer(psio_peer(running.url, "client_disconnect")) as proc,
        ):
            lines = await proc.finish()
            sid = text(the(lines, "connect")["id"])
            server_reason = await seen.wait_disconnect(sid)
            cleanup = await seen.wait_cleanup(sid)
    assert the(lines, "disconnect")["reason"] == "client disconnect"
    assert server_reason == "transport close"  # only a close frame was sent (see above)
    assert cleanup == "done"


async def test_server_disconnect_reason(psio_peer: PeerCommand) -> None:
    server, seen = build_app(psio_peer.parser)
    with trio.fail_after(SCENARIO_TIMEOUT):
        async with (
            serve_app(server) as running,
            open_peer(psio_peer(running.url, "server_disconnect")) as proc,
        ):
            lines = await proc.finish()
            sid = text(the(lines, "connect")["id"])
            server_reason = await seen.wait_disconnect(sid)
    disconnect = the(lines, "disconnect")
    assert disconnect["reason"] == "server disconnect"
    assert disconnect["connected"] is False
    assert server_reason == "server namespace disconnect"


async def test_server_shutdown_reason(psio_peer: PeerCommand) -> None:
    lines = await run_server_shutdown(psio_peer)
    # python-engineio's reason for a connection the server closed.
    assert the(lines, "disconnect")["reason"] == "transport error"


async def test_heartbeat(psio_peer: PeerCommand) -> None:
    await run_heartbeat(psio_peer)


async def test_killed_client_reason(psio_peer: PeerCommand) -> None:
    await check_killed_client(psio_peer)


async def test_the_room_hears_who_left_and_disconnect_sees_the_rooms(
    psio_peer: PeerCommand,
) -> None:
    # Its disconnect() sends only a close frame: "transport close" (see above).
    await check_last_moments(psio_peer, "transport close")
