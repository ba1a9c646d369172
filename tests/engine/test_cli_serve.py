"""``roomcast serve MODULE:ATTR``: a real subprocess that logs where it listens and shuts
down gracefully on SIGTERM and SIGINT (its clients get a close)."""

from __future__ import annotations

import argparse
import importlib.metadata
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
from roomcast.engine import Config, RecoveryConfig, Socket
from roomcast.engine.adapters.redis import RedisAdapter, RedisCluster
from roomcast.engine.cli import CommandError, apply_server_options, build_parser, load_server

from ..conformance.wire import Endpoint, eio_target, open_ws, ws_handshake

ROOT: Final = Path(__file__).resolve().parents[2]
SERVING: Final = re.compile(rb"roomcast serving on https?://([\d.]+):(\d+)")
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
    async with open_served([*roomcast_command(), "serve", *args]) as served:
        yield served


@asynccontextmanager
async def open_served(command: list[str]) -> AsyncIterator[Served]:
    """Run ``COMMAND --host 127.0.0.1 --port 0`` (a server that prints where it serves)
    from the repository root; on the way out, kill it (by its pid) if it still runs."""
    process = await trio.lowlevel.open_process(
        [*command, "--host", "127.0.0.1", "--port", "0"],
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
                        raise AssertionError(f"{command} exited early: {bytes(stderr)!r}")
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
        ack = await next_not_presence(ws)
        assert ack == f'431[{{"ok":true,"workspaceId":"{workspace}","history":[]}}]'


def is_presence(message: str | bytes) -> bool:
    """Whether ``message`` is one of the chat's presence events (sent to a workspace's
    members, its new member too, at any moment around its join's ack)."""
    return isinstance(message, str) and message.startswith('42["presence_')


async def next_not_presence(ws: trio_websocket.WebSocketConnection) -> str | bytes:
    """The next message on ``ws`` that is not a presence event."""
    while is_presence(message := await ws.get_message()):
        pass
    return message


async def expect_going_away(ws: trio_websocket.WebSocketConnection) -> None:
    """The server's whole close frame arrives: 1001 "server shutting down"."""
    with pytest.raises(trio_websocket.ConnectionClosed) as info:
        await next_not_presence(ws)
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


# --------------------------------------------------------------------------- first use


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """The error of a run that failed as a user's mistake: exit status 2 and one line on
    stderr, no traceback. Returns that line."""
    err = result.stderr.decode()
    assert result.returncode == 2, (result.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


async def run_all(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess[bytes]]:
    """Run the commands (from the repository root), two at a time (the CI machine has few
    cores); their results by name."""
    results: dict[str, subprocess.CompletedProcess[bytes]] = {}
    limiter = trio.CapacityLimiter(2)

    async def run(name: str, argv: list[str]) -> None:
        async with limiter:
            results[name] = await trio.run_process(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for name, argv in commands.items():
                nursery.start_soon(run, name, argv)
    return results


async def test_a_users_mistakes_are_one_line_with_exit_status_2(tmp_path: Path) -> None:
    roomcast = roomcast_command()
    not_a_log = tmp_path / "photos"
    not_a_log.mkdir()
    (not_a_log / "cat.jpg").write_bytes(b"\xff\xd8")
    cases = {
        "no attribute 'nothing_here' in module 'examples.workspace_chat'": [
            "serve",
            "examples.workspace_chat:nothing_here",
        ],
        "no module named 'no_such_module_here'": ["serve", "no_such_module_here:app"],
        "no module named 'examples.no_such_app'": ["serve", "examples.no_such_app:app"],
        "expected MODULE:ATTR": ["serve", "examples.workspace_chat"],
        "is not a roomcast Server (got str)": ["serve", "examples.workspace_chat:__doc__"],
        "argument --log-level: expected one of DEBUG": ["--log-level", "LOUD", "log", "stats", "x"],
        f"roomcast replay: error: {not_a_log} is not an event log": ["replay", str(not_a_log)],
        f"roomcast log stats: error: {not_a_log} is not an event log": [
            "log",
            "stats",
            str(not_a_log),
        ],
        "--no-log contradicts": [
            "serve",
            "examples.workspace_chat:build_server",
            "--no-log",
            "--fsync",
            "never",
        ],
        "--recovery-window needs recovery on": [
            "serve",
            "examples.workspace_chat:build_server",
            "--no-recovery",
            "--recovery-window",
            "5",
        ],
        "argument --ping-interval: expected a number of seconds > 0": [
            "serve",
            "examples.workspace_chat:build_server",
            "--ping-interval",
            "0",
        ],
    }
    results = await run_all({expected: [*roomcast, *argv] for expected, argv in cases.items()})
    for expected, result in results.items():
        assert expected in one_line_error(result), expected
    # `log verify` still reports the directory as damaged, as before.
    verify = await run_all({"verify": [*roomcast, "log", "verify", str(not_a_log)]})
    assert verify["verify"].returncode == 1
    assert b"DAMAGED" in verify["verify"].stdout


async def test_a_port_in_use_is_one_line() -> None:
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        results = await run_all(
            {
                "serve": [
                    *roomcast_command(),
                    "serve",
                    "examples.workspace_chat:build_server",
                    "--no-log",
                    "--port",
                    str(port),
                ]
            }
        )
    assert f"cannot listen on 127.0.0.1:{port}: " in one_line_error(results["serve"])


async def test_version_comes_from_the_package_metadata() -> None:
    results = await run_all({"version": [*roomcast_command(), "--version"]})
    assert results["version"].returncode == 0
    version = importlib.metadata.version("roomcast")
    assert results["version"].stdout.decode() == f"roomcast {version}\n"


async def test_a_second_server_on_an_open_log_directory_says_who_holds_it(
    tmp_path: Path,
) -> None:
    log_dir = str(tmp_path / "log")
    app = "examples.workspace_chat:build_server"
    with trio.fail_after(60):
        async with roomcast_serve(app, "--log-dir", log_dir) as served:
            pid = served.process.pid
            results = await run_all(
                {
                    "roomcast serve": [
                        *roomcast_command(),
                        "serve",
                        app,
                        "--port",
                        "0",
                        "--log-dir",
                        log_dir,
                    ],
                    "the example": [
                        sys.executable,
                        "examples/workspace_chat.py",
                        "--port",
                        "0",
                        "--log-dir",
                        log_dir,
                    ],
                }
            )
            served.process.send_signal(signal.SIGTERM)
            assert await served.wait() == 0
    expected = f"the event log directory {log_dir} is already open by process {pid}"
    line = one_line_error(results["roomcast serve"])
    assert line.startswith("roomcast serve: error: ")
    assert expected in line
    # The example logs a warning first when the chat page's bundle is not installed.
    example = results["the example"].stderr.decode()
    assert results["the example"].returncode == 2
    assert "Traceback" not in example
    assert example.splitlines()[-1] == line.replace("roomcast serve:", "workspace_chat.py:")


async def test_the_demo_logs_the_seed_lines_at_info_by_default(tmp_path: Path) -> None:
    demo = [sys.executable, "examples/workspace_chat.py", "--log-dir", str(tmp_path / "log")]
    with trio.fail_after(60):
        async with open_served(demo) as served:
            app = served.endpoint
            async with open_ws(app, eio_target("/socket.io/", transport="websocket")) as ws:
                await ws_handshake(ws)
                await ws.send_message("40")
                accepted = str(await ws.get_message())
                sid = json.loads(accepted[2:])["sid"]
                await ws.send_message('421["join_workspace","w1"]')
                # (The presence task's presence_join for this socket may come first.)
                answer = str(await ws.get_message())
                if answer.startswith('42["presence_join"'):
                    answer = str(await ws.get_message())
                assert answer.startswith("431")
            served.process.send_signal(signal.SIGTERM)
            assert await served.wait() == 0
    err = served.stderr.decode()
    assert f"INFO client connected: {sid}\n" in err
    assert f"INFO socket {sid} joined workspace w1\n" in err
    assert f"INFO client disconnected: {sid} (" in err


async def test_the_demo_with_admin_serves_the_admin_ui_on_loopback_only() -> None:
    demo = [sys.executable, "examples/workspace_chat.py", "--no-log", "--admin"]
    with trio.fail_after(60):
        refused = await trio.run_process(
            [*demo, "--host", "0.0.0.0", "--port", "0"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert refused.returncode == 2
        assert "--admin has no login" in refused.stderr.decode().splitlines()[-1]
        async with open_served(demo) as served:
            app = served.endpoint
            page = await app.get("/admin/")
            assert page.status == 200
            assert b'<div id="app">' in page.body
            async with open_ws(app, eio_target("/socket.io/", transport="websocket")) as ws:
                await ws_handshake(ws)
                await ws.send_message("40/admin,")  # no auth: --admin has no login
                assert str(await ws.get_message()).startswith("40/admin,")
                for _ in range(5):  # its own socket_connected may come first
                    message = str(await ws.get_message())
                    if message.startswith('42/admin,["config"'):
                        break
                config = json.loads(message.removeprefix("42/admin,"))
            served.process.send_signal(signal.SIGTERM)
            assert await served.wait() == 0
    assert "ALL_EVENTS" in config[1]["supportedFeatures"]  # development mode
    assert "the admin UI at /admin has no authentication" in served.stderr.decode()


async def test_serve_flags_override_the_apps_settings(tmp_path: Path) -> None:
    log_dir = tmp_path / "chat-log"
    with trio.fail_after(60):
        async with roomcast_serve(
            "examples.workspace_chat:build_server",
            "--log-dir",
            str(log_dir),
            "--fsync",
            "always",
            "--recovery-window",
            "30",
            "--allow-origin",
            "https://app.example",
            "--ping-interval",
            "7",
            "--ping-timeout",
            "3.5",
            "--max-payload",
            "12345",
        ) as served:
            app = served.endpoint
            sid, handshake = await app.polling_handshake("/socket.io/")
            assert (handshake["pingInterval"], handshake["pingTimeout"]) == (7000, 3500)
            assert handshake["maxPayload"] == 12345
            # Recovery is on (build_server alone has it off): the CONNECT answer has a pid.
            assert (await app.post(eio_target("/socket.io/", sid=sid), "40")).body == b"ok"
            connected = (await app.get(eio_target("/socket.io/", sid=sid))).text
            assert connected.startswith("40")
            assert "pid" in json.loads(connected[2:])
            allowed = await app.get(eio_target("/socket.io/"), [("Origin", "https://app.example")])
            assert allowed.status == 200
            refused = await app.get(eio_target("/socket.io/"), [("Origin", "https://x.example")])
            assert refused.status == 403
            assert (log_dir / "epoch.json").exists()
            served.process.send_signal(signal.SIGTERM)
            assert await served.wait() == 0
    err = served.stderr.decode()
    assert "refused Origin 'https://x.example': is not in cors_allowed_origins" in err


def serve_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "examples.workspace_chat:build_server", *flags])


def test_serve_without_flags_keeps_the_apps_settings() -> None:
    server = build_server(Config(ping_interval=9.0), recovery=RecoveryConfig(max_events=7))
    config, recovery = server.config, server.recovery
    assert apply_server_options(server, serve_args()) is None
    assert server.config == config
    assert server.recovery == recovery
    assert server.recovery_store is not None
    assert server.cors_allowed_origins == ()


def test_serve_flags_turn_the_log_and_recovery_off_and_any_origin_on() -> None:
    server = build_server(recovery=RecoveryConfig())
    flags = serve_args(
        "--no-log", "--no-recovery", "--allow-origin", "https://a", "--allow-origin", "*"
    )
    apply_server_options(server, flags)
    assert not server.config.log.enabled
    assert server.recovery is None
    assert server.recovery_store is None
    assert server.cors_allowed_origins == "*"


def test_serve_redis_flag_makes_the_server_a_cluster_node() -> None:
    server = build_server()
    cluster = apply_server_options(
        server, serve_args("--redis", "redis://127.0.0.1:1/0", "--cluster", "chat")
    )
    assert isinstance(cluster, RedisCluster)
    assert cluster.settings.channel_prefix == "chat"
    assert cluster.settings.shared_log
    assert isinstance(server.of("/").adapter, RedisAdapter)
    assert not server.config.log.enabled  # the cluster's log is in Redis


def test_an_app_whose_own_import_fails_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_chat_app.py").write_text("import no_such_dependency_here\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CommandError) as info:
        load_server("broken_chat_app:app")
    assert str(info.value) == (
        "module 'broken_chat_app' cannot be imported: No module named 'no_such_dependency_here'"
    )
