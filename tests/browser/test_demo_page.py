"""The workspace chat page in a real browser: Debian's Chromium, headless, driven by
playwright-core (tests/js/polling_browser_chat.mjs), against examples/workspace_chat.py's
server running in this process, and against examples/asgi_app.py (the same chat mounted
in Starlette) under hypercorn's Trio worker.

Two pages in workspace "alpha" see each other's messages, a third page in "beta" sees
none of them (then switches to "alpha" and gets its history, then what comes after); each
page shows who is online in its workspace (presence, by name), and the server
confirms that every browser session began on HTTP long-polling and was upgraded to
WebSocket (socket.io-client's default transports).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest
import trio

from examples.workspace_chat import build_server
from roomcast.engine import Config, Server
from roomcast.engine.log import LogConfig
from tests.asgi_server import HypercornProcess, run_hypercorn
from tests.processes import PipedProcess, open_piped

from ..conformance.wire import Endpoint

BROWSER_TIMEOUT: Final = 60.0


async def read_line(stdout: trio.abc.ReceiveStream, buffer: bytearray) -> dict[str, object]:
    """The next JSON line from the script (fails at the end of its output)."""
    while b"\n" not in buffer:
        chunk = await stdout.receive_some(65_536)
        if not chunk:
            raise AssertionError(f"the browser script ended early; output so far: {buffer!r}")
        buffer += chunk
    raw, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    line = json.loads(raw)
    assert isinstance(line, dict), raw
    return line


def check_server_side(server: Server, pages: dict[str, dict[str, str]], origin: str) -> None:
    """Each page's socket is on a session that started polling and is WebSocket now."""
    sockets = server.of("/").sockets
    assert len(server.connections) == 3, list(server.connections)
    for name, page in pages.items():
        socket = sockets[page["sid"]]
        conn = socket.connection
        assert conn.request is not None
        assert conn.request.query.get("transport") == "polling", (name, conn.request.query)
        assert conn.transport_name == "websocket", (name, conn.transport_name)
        assert page["transport"] == page["shown"] == "websocket", (name, page)
        # The page's own origin (a same-origin GET may carry none): the default let it in.
        assert conn.request.headers.get("origin", origin) == origin, name
    # cat switched from beta to alpha on a new connection: nobody is left in beta.
    in_alpha = {sid for sid, s in sockets.items() if "alpha" in s.rooms}
    assert in_alpha == {page["sid"] for page in pages.values()}
    assert not any("beta" in s.rooms for s in sockets.values())


async def drive_pages(
    node: str,
    script: Path,
    url: str,
    tmp_path: Path,
    env: dict[str, str],
    at_checkpoint: Callable[[dict[str, dict[str, str]]], None],
) -> None:
    """Run the browser script against ``url``; at its checkpoint, ``at_checkpoint`` gets
    the pages it reports; then let it finish (exit 0, a screenshot of each page)."""
    async with open_piped(
        lambda process: PipedProcess(process=process),
        [node, str(script), url, str(tmp_path)],
        env=env,
    ) as peer:
        process = peer.process
        assert process.stdin is not None
        assert process.stdout is not None
        buffer = bytearray()
        while (line := await read_line(process.stdout, buffer))["event"] != "checkpoint":
            assert line["event"] != "error", line["message"]
        pages = line["pages"]
        assert isinstance(pages, dict)
        at_checkpoint(pages)
        await process.stdin.send_all(b"go\n")
        while (line := await read_line(process.stdout, buffer))["event"] != "done":
            assert line["event"] != "error", line["message"]
        assert await process.wait() == 0, peer.stderr.decode(errors="replace")
    for name in ("ann", "bob", "cat"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


async def check_page_and_bundle(endpoint: Endpoint, web_bundle: Path) -> None:
    """The chat page and the socket.io-client bundle it loads are served."""
    page = await endpoint.get("/")
    assert page.status == 200
    assert b'src="/vendor/socket.io.min.js"' in page.body
    bundle = await endpoint.get("/vendor/socket.io.min.js")
    assert bundle.status == 200
    assert bundle.body == await trio.Path(web_bundle).read_bytes()


@pytest.mark.node
async def test_two_pages_in_a_workspace_chat_and_a_third_sees_nothing(
    js_peers: Path, chromium: str, web_bundle: Path, tmp_path: Path
) -> None:
    node = shutil.which("node")
    assert node is not None
    # (A fresh event log: the history cat gets is this test's.)
    server = build_server(Config(log=LogConfig(directory=str(tmp_path / "log"))))
    script = js_peers / "polling_browser_chat.mjs"
    env = {**os.environ, "CHROMIUM": chromium}
    with trio.fail_after(BROWSER_TIMEOUT):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve, "127.0.0.1", 0)
            await check_page_and_bundle(Endpoint(host=host, port=port), web_bundle)
            url = f"http://{host}:{port}"
            await drive_pages(
                node,
                script,
                url,
                tmp_path,
                env,
                lambda pages: check_server_side(server, pages, url),
            )
            nursery.cancel_scope.cancel()


@pytest.fixture
def asgi_example(tmp_path: Path) -> Iterator[HypercornProcess]:
    """examples/asgi_app.py as its docstring runs it, under hypercorn's Trio worker."""
    with run_hypercorn("examples.asgi_app:app", cwd=tmp_path) as hypercorn:
        yield hypercorn
    assert hypercorn.process.returncode == 0, hypercorn.output()
    assert "Traceback" not in hypercorn.output(), hypercorn.output()


def check_pages_on_websocket(pages: dict[str, dict[str, str]]) -> None:
    """Each page's client says it is on WebSocket now (it began on polling: the
    default transports), and shows it."""
    for name, page in pages.items():
        assert page["transport"] == page["shown"] == "websocket", (name, page)


@pytest.mark.node
async def test_the_demo_page_through_the_asgi_example(
    js_peers: Path,
    chromium: str,
    web_bundle: Path,
    tmp_path: Path,
    asgi_example: HypercornProcess,
) -> None:
    node = shutil.which("node")
    assert node is not None
    endpoint = Endpoint(host="127.0.0.1", port=asgi_example.port)
    env = {**os.environ, "CHROMIUM": chromium}
    shots = tmp_path / "shots"
    await trio.Path(shots).mkdir()
    with trio.fail_after(BROWSER_TIMEOUT):
        hello = await endpoint.get("/hello")
        assert (hello.status, hello.text) == (200, "hello from Starlette\n")
        await check_page_and_bundle(endpoint, web_bundle)
        await drive_pages(
            node,
            js_peers / "polling_browser_chat.mjs",
            f"http://127.0.0.1:{endpoint.port}",
            shots,
            env,
            check_pages_on_websocket,
        )
