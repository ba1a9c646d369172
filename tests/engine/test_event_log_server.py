"""The event log wired into the server: what is recorded, history, recovery after a restart."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from roomcast.engine import Config, Server, Socket, open_client
from roomcast.engine.log import LogConfig, iter_records, verify_log
from roomcast.engine.recovery import RecoveryConfig
from roomcast.protocol import JsonValue, RecordKind

from .test_recovery_node import node_client


def app(
    directory: Path, *, recovery: bool = False, fsync: str = "always"
) -> tuple[Server, trio.Event]:
    server = Server(
        config=Config(log=LogConfig(directory=directory, fsync=fsync)),
        recovery=RecoveryConfig() if recovery else None,
    )
    gone = trio.Event()

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)

    @server.on("leave")
    async def leave(socket: Socket, room: str) -> None:
        await socket.leave(room)

    @server.on("say")
    async def say(socket: Socket, room: str, text: JsonValue) -> int:
        return await server.to(room).emit("said", text)

    @server.on("disconnect")
    async def disconnected(socket: Socket, reason: str) -> None:
        gone.set()

    return server, gone


@asynccontextmanager
async def serving(server: Server, port: int = 0) -> AsyncIterator[tuple[str, int]]:
    scope = trio.CancelScope()

    async def run(  # noqa: ASYNC128 - serve() calls started()
        *, task_status: trio.TaskStatus[tuple[str, int]]
    ) -> None:
        with scope:
            await server.serve("127.0.0.1", port, task_status=task_status)

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run)
        try:
            yield bound
        finally:
            scope.cancel()


async def test_room_events_are_recorded_in_order_with_their_offsets(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    server, _ = app(directory)
    with trio.fail_after(20):
        async with serving(server) as (host, port), open_client(f"http://{host}:{port}") as client:
            await client.call("join", "r")
            assert await client.call("say", "r", "hello") == (1,)
            assert await client.receive() == ("said", ("hello",))
            history = await server.of("/").history("r")
            assert [(r.kind, r.args) for r in history] == [
                (RecordKind.JOIN, ()),
                (RecordKind.MESSAGE, ("hello",)),
            ]
            await client.call("leave", "r")
            sid = client.sid()
    records = [r for r in iter_records(directory) if r.namespace == "/"]
    kinds = [(r.kind, r.room, r.sender, r.event) for r in records]
    assert kinds == [
        (RecordKind.CONNECT, "", sid, None),
        (RecordKind.MESSAGE, "", sid, "join"),  # what the client sent (for replay)
        (RecordKind.JOIN, "r", sid, None),
        (RecordKind.MESSAGE, "", sid, "say"),
        (RecordKind.MESSAGE, "r", None, "said"),  # the room event
        (RecordKind.MESSAGE, "", sid, "leave"),
        (RecordKind.LEAVE, "r", sid, None),
        (RecordKind.DISCONNECT, "", sid, None),
    ]
    offsets = [r.offset for r in records]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == len(offsets)
    assert records[-1].args == ("client namespace disconnect",)
    assert verify_log(directory).ok


async def test_server_side_joins_and_leaves_are_recorded_too(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    server, _ = app(directory)
    with trio.fail_after(20):
        async with serving(server) as (host, port), open_client(f"http://{host}:{port}") as client:
            sid = client.sid()
            assert sid is not None
            await server.of("/").sockets_join("a", "b")
            await server.in_("a").sockets_leave("b")
            await server.in_("nobody-here").sockets_join("c")  # matches no socket
            assert server.of("/").sockets[sid].rooms == {sid, "a"}
            history = await server.of("/").history("b")
    assert [(r.kind, r.sender) for r in history] == [
        (RecordKind.JOIN, sid),
        (RecordKind.LEAVE, sid),
    ]
    records = [r for r in iter_records(directory) if r.kind in (RecordKind.JOIN, RecordKind.LEAVE)]
    assert [(r.kind, r.room) for r in records] == [
        (RecordKind.JOIN, "a"),
        (RecordKind.JOIN, "b"),
        (RecordKind.LEAVE, "b"),
    ]


async def test_offsets_continue_after_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    last, seen = 0, 0
    for _ in range(2):
        server, _ = app(directory)
        with trio.fail_after(20):
            async with (
                serving(server) as (host, port),
                open_client(f"http://{host}:{port}") as client,
            ):
                await client.call("join", "r")
                await client.call("say", "r", "x")
        offsets = [r.offset for r in iter_records(directory, namespace="/", room="r")]
        new = offsets[seen:]
        assert new
        assert min(new) > last  # this run numbered on from the last one
        seen, last = len(offsets), offsets[-1]
    assert verify_log(directory).ok


async def free_port() -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = int(listeners[0].socket.getsockname()[1])
    for listener in listeners:
        await listener.aclose()
    return port


@pytest.mark.node
@pytest.mark.parametrize("wipe", [False, True], ids=["same-log", "log-lost"])
async def test_recovery_survives_a_server_restart(
    js_peers: Path, tmp_path: Path, wipe: bool
) -> None:
    """socket.io-client with connectionStateRecovery: the server is stopped while the
    client is away and another one starts on the same port and log; the client gets
    its id, rooms and the event it missed. If the log is lost meanwhile (a new epoch),
    it is told it was not recovered."""
    directory = tmp_path / "log"
    port = await free_port()
    first, first_gone = app(directory, recovery=True)
    first_scope = trio.CancelScope()
    first_stopped = trio.Event()

    async def run_first(  # noqa: ASYNC128 - serve() calls started()
        *, task_status: trio.TaskStatus[tuple[str, int]]
    ) -> None:
        try:
            with first_scope:
                await first.serve("127.0.0.1", port, task_status=task_status)
        finally:
            first_stopped.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_first)
            async with node_client(js_peers, f"http://127.0.0.1:{port}") as client:
                hello = await client.next()
                assert hello["event"] == "connect"
                await client.command("join r")
                assert await client.next() == {"event": "joined", "room": "r"}
                await first.to("r").emit("m", 1)
                assert (await client.next())["args"][0] == 1
                await client.command("drop")
                assert (await client.next())["event"] == "disconnect"
                await first_gone.wait()
                await first.to("r").emit("m", 2)  # missed by the client; durable in the log
                first_scope.cancel()
                await first_stopped.wait()
                if wipe:
                    shutil.rmtree(directory)
                second, _ = app(directory, recovery=True)
                async with serving(second, port):
                    await client.command("reconnect")
                    again = await client.next()
                    assert again["event"] == "connect"
                    if wipe:
                        assert again["recovered"] is False
                        assert again["sid"] != hello["sid"]
                    else:
                        assert again == {
                            "event": "connect",
                            "sid": hello["sid"],
                            "recovered": True,
                        }
                        assert (await client.next())["args"][0] == 2
                        await second.to("r").emit("m", 3)  # it is in its room again
                        assert (await client.next())["args"][0] == 3
