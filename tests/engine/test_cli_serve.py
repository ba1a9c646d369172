"""``roomcast serve MODULE:ATTR``: a real subprocess that logs where it listens and shuts
down gracefully on SIGTERM and SIGINT (its clients get a close)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import pytest
import trio
import trio_websocket

from examples.workspace_chat import build_server
from roomcast.engine import Socket

from ..conformance.wire import Endpoint, eio_target, open_ws, ws_handshake

ROOT: Final = Path(__file__).resolve().parents[2]
SERVING: Final = re.compile(rb"roomcast serving on http://([\d.]+):(\d+)")
STARTUP: Final = 15.0
"""Seconds for the subprocess to import everything and bind (generous for a slow CI)."""


def roomcast_command() -> list[str]:
    """The installed ``roomcast`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "roomcast"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "roomcast.engine.cli"]


@attrs.define(eq=False)
class Served:
    """A ``roomcast serve`` process and what it printed."""

    process: trio.Process
    endpoint: Endpoint
    stdout: bytearray
    stderr: bytearray
    done: trio.Event

    async def wait(self) -> int:
        code = await self.process.wait()
        await self.done.wait()
        return code


async def _drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while chunk := await stream.receive_some(65_536):
        into += chunk


@asynccontextmanager
async def roomcast_serve(*args: str) -> AsyncIterator[Served]:
    """Run ``roomcast serve ARGS --host 127.0.0.1 --port 0`` from the repository root; on
    the way out, kill it (by its pid) if it still runs."""
    process = await trio.lowlevel.open_process(
        [*roomcast_command(), "serve", *args, "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    stdout, stderr = bytearray(), bytearray()
    done = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            stderr_done = trio.Event()

            async def drain_stderr() -> None:
                assert process.stderr is not None
                await _drain(process.stderr, stderr)
                stderr_done.set()

            nursery.start_soon(drain_stderr)
            with trio.fail_after(STARTUP):
                while (match := SERVING.search(stdout)) is None:
                    chunk = await process.stdout.receive_some(65_536)
                    if not chunk:
                        await stderr_done.wait()
                        raise AssertionError(f"roomcast serve exited early: {bytes(stderr)!r}")
                    stdout += chunk

            async def drain_stdout() -> None:
                assert process.stdout is not None
                await _drain(process.stdout, stdout)
                await stderr_done.wait()
                done.set()

            nursery.start_soon(drain_stdout)
            endpoint = Endpoint(host=match.group(1).decode(), port=int(match.group(2)))
            yield Served(
                process=process, endpoint=endpoint, stdout=stdout, stderr=stderr, done=done
            )
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5, shield=True):
            await process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                await trio.aclose_forcefully(pipe)


async def open_chat_socket(
    app: Endpoint, ws: trio_websocket.WebSocketConnection, workspace: str | None
) -> None:
    """CONNECT to "/" on ``ws`` and, if given, join ``workspace`` (a room)."""
    await ws_handshake(ws)
    await ws.send_message("40")
    assert str(await ws.get_message()).startswith("40")
    if workspace is not None:
        await ws.send_message(f'421["join_workspace","{workspace}"]')
        assert await ws.get_message() == f'431[{{"ok":true,"workspaceId":"{workspace}"}}]'


async def expect_going_away(ws: trio_websocket.WebSocketConnection) -> None:
    """The server's whole close frame arrives: 1001 "server shutting down"."""
    with pytest.raises(trio_websocket.ConnectionClosed) as info:
        await ws.get_message()
    assert info.value.reason is not None
    assert (info.value.reason.code, info.value.reason.reason) == (1001, "server shutting down")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_serve_logs_where_it_listens_and_shuts_down_gracefully(
    signum: signal.Signals,
) -> None:
    with trio.fail_after(30):
        async with roomcast_serve("examples.workspace_chat:build_server") as served:
            app = served.endpoint
            assert (await app.get("/healthz")).status == 200
            async with open_ws(app, eio_target("/socket.io/", transport="websocket")) as ws:
                await open_chat_socket(app, ws, None)
                served.process.send_signal(signum)
                with trio.fail_after(1):
                    await expect_going_away(ws)
            assert await served.wait() == 0
    err = served.stderr.decode()
    assert f"listening on http://127.0.0.1:{app.port}" in err
    assert f"received {signum.name}, shutting down" in err
    assert "Traceback" not in err
    assert "ERROR" not in err


async def test_shutdown_closes_a_socket_in_a_room_at_once() -> None:
    with trio.fail_after(30):
        async with roomcast_serve("examples.workspace_chat:build_server") as served:
            app = served.endpoint
            async with open_ws(app, eio_target("/socket.io/", transport="websocket")) as ws:
                await open_chat_socket(app, ws, "w1")
                served.process.send_signal(signal.SIGTERM)
                with trio.fail_after(1):  # not after close_grace, and not a dropped TCP
                    await expect_going_away(ws)
            assert await served.wait() == 0


async def test_shutdown_answers_a_held_polling_get_with_close() -> None:
    with trio.fail_after(30):
        async with roomcast_serve("examples.workspace_chat:build_server") as served:
            app = served.endpoint
            sid, _ = await app.polling_handshake("/socket.io/")
            assert (await app.post(eio_target("/socket.io/", sid=sid), "40")).body == b"ok"
            assert (await app.get(eio_target("/socket.io/", sid=sid))).text.startswith("40")
            async with app.open_http() as held:
                await held.send_request("GET", eio_target("/socket.io/", sid=sid))
                await trio.sleep(0.1)  # the GET is held in the other process
                served.process.send_signal(signal.SIGTERM)
                with trio.fail_after(1):
                    got = await held.read_response()  # a whole response, carrying CLOSE
                assert (got.status, got.text) == (200, "1")
            assert await served.wait() == 0


async def test_in_process_shutdown_with_rooms_runs_the_disconnect_handlers() -> None:
    server = build_server()
    reasons: list[str] = []

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        reasons.append(reason)
        await trio.lowlevel.checkpoint()

    scope = trio.CancelScope()
    bound: list[tuple[str, int]] = []
    ready = trio.Event()

    async def run() -> None:
        with scope:
            async with trio.open_nursery() as inner:
                bound.append(await inner.start(server.serve, "127.0.0.1", 0))
                ready.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await ready.wait()
            app = Endpoint(host=bound[0][0], port=bound[0][1])
            async with open_ws(app, eio_target("/socket.io/", transport="websocket")) as ws:
                await open_chat_socket(app, ws, "w1")
                scope.cancel()
                with trio.fail_after(1):
                    await expect_going_away(ws)
    assert reasons == ["server shutting down"]
    assert server.connections == {}


async def test_serve_runs_another_apps_factory() -> None:
    with trio.fail_after(30):
        async with roomcast_serve("examples.conformance_app:build_server") as served:
            handshake = await served.endpoint.get(eio_target("/engine.io/"))
            assert json.loads(handshake.text[1:])["pingInterval"] == 300
            served.process.send_signal(signal.SIGTERM)
            assert await served.wait() == 0


async def test_serve_refuses_what_is_not_a_server() -> None:
    cases = {
        "examples.workspace_chat:nothing_here": "is not a roomcast Server",
        "no_such_module_here:app": "No module named",
        "examples.workspace_chat": "expected MODULE:ATTR",
    }
    results: dict[str, subprocess.CompletedProcess[bytes]] = {}

    async def run(spec: str) -> None:
        results[spec] = await trio.run_process(
            [*roomcast_command(), "serve", spec, "--port", "0"],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for spec in cases:
                nursery.start_soon(run, spec)
    for spec, message in cases.items():
        assert results[spec].returncode != 0, spec
        assert message in results[spec].stderr.decode(), (spec, results[spec].stderr)
