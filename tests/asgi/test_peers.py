"""Real clients through the ASGI front: the workspace chat mounted in Starlette, FastAPI
and Quart-Trio (tests/asgi/peer_app.py), served by hypercorn's Trio worker in a child
process on 127.0.0.1.

Node ``socket.io-client`` with its default transports (polling first, then the upgrade to
WebSocket) and python-socketio's ``AsyncClient`` (polling only, and its defaults) run the
scenarios of tests/interop/test_polling_peers.py; the server is in another process, so
what a test checks is what the peers saw, and that hypercorn logged no error and stopped
cleanly on SIGTERM.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
import trio

from tests.asgi_server import HypercornProcess, run_hypercorn
from tests.conformance.wire import Endpoint
from tests.interop.test_polling_peers import open_peer

INTEROP: Final = Path(__file__).resolve().parent.parent / "interop"
PEER_TIMEOUT: Final = 20.0


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HypercornProcess]:
    """``tests.asgi.peer_app:<param>`` under hypercorn; on the way out, stopped by SIGTERM,
    which must end it cleanly (exit 0, no error logged)."""
    app = request.param
    assert isinstance(app, str)
    with run_hypercorn(f"tests.asgi.peer_app:{app}", cwd=tmp_path) as hypercorn:
        yield hypercorn
    output = hypercorn.output()
    assert hypercorn.process.returncode == 0, output
    assert "Traceback" not in output, output
    assert "ERROR" not in output, output


FRAMEWORKS: Final = pytest.mark.parametrize(
    "served", ["starlette_app", "fastapi_app", "quart_app"], indirect=True
)


@pytest.mark.node
@FRAMEWORKS
async def test_node_client_with_default_transports(
    js_peers: Path, served: HypercornProcess
) -> None:
    node = shutil.which("node")
    assert node is not None
    url = f"http://127.0.0.1:{served.port}"
    with trio.fail_after(PEER_TIMEOUT):
        hello = await Endpoint(host="127.0.0.1", port=served.port).get("/hello")
        assert hello.status == 200  # the host app's own route still answers
        async with open_peer([node, str(js_peers / "polling_client.mjs"), url, "default"]) as peer:
            checkpoint = await peer.expect("checkpoint")
            clients = peer.connected()
            assert {c["firstTransport"] for c in clients.values()} == {"polling"}
            sids = {str(c["sid"]) for c in clients.values()}
            assert len(sids) == 3
            # Every session was upgraded to WebSocket through the ASGI websocket scope.
            assert checkpoint["transports"] == dict.fromkeys(sids, "websocket")
            assert checkpoint["received"] == [31, 31, 0]
            await peer.go_on()
            await peer.expect("done")


@pytest.mark.peer
@pytest.mark.parametrize("served", ["starlette_app"], indirect=True)
@pytest.mark.parametrize(("mode", "final"), [("polling", "polling"), ("default", "websocket")])
async def test_python_socketio_client(served: HypercornProcess, mode: str, final: str) -> None:
    url = f"http://127.0.0.1:{served.port}"
    script = INTEROP / "polling_psio_client.py"
    with trio.fail_after(PEER_TIMEOUT):
        async with open_peer([sys.executable, str(script), url, mode]) as peer:
            checkpoint = await peer.expect("checkpoint")
            sids = {str(c["sid"]) for c in peer.connected().values()}
            assert len(sids) == 2
            assert checkpoint["transports"] == dict.fromkeys(sids, final)
            assert checkpoint["received"] == [1, 0]
            binary = next(line for line in peer.lines if line["event"] == "binary")
            assert binary == {"event": "binary", "size": 50_000, "tail": "AP8="}
            await peer.go_on()
            await peer.expect("done")
