"""The conformance app (examples/conformance_app.py) on 127.0.0.1 and a free port, through
each front: the built-in one in this process, and the ASGI one (``asgi_app``) served by
hypercorn's Trio worker in a child process. Every test runs against both.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from examples.conformance_app import build_server
from roomcast.engine import Server
from tests.asgi_server import run_hypercorn

from .wire import Endpoint

ENGINE: str = "/engine.io/"
"""The bare Engine.IO echo endpoint."""
SOCKET: str = "/socket.io/"
"""The Socket.IO endpoint."""
BUDGET: float = 2.0
"""docs/conformance.md §3: each test case has 2 s."""


@pytest.fixture(scope="session")
def asgi_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """The conformance app's ASGI front under hypercorn, one process for the session (its
    sessions are independent of each other, like the clients of one deployed server)."""
    with run_hypercorn(
        "examples.conformance_app:asgi_app", cwd=tmp_path_factory.mktemp("asgi")
    ) as hypercorn:
        yield Endpoint(host="127.0.0.1", port=hypercorn.port, remote=True)


@pytest.fixture(params=["builtin", "asgi"])
def front(request: pytest.FixtureRequest) -> str:
    """Which front the test talks to."""
    assert isinstance(request.param, str)
    return request.param


@pytest.fixture
def conformance_server(front: str) -> Server | None:
    """The server in this process (built-in front), or None: the ASGI front's server is in
    the hypercorn process, and a test can only check it on the wire."""
    return build_server() if front == "builtin" else None


@pytest.fixture
async def app(
    front: str,
    conformance_server: Server | None,
    nursery: trio.Nursery,
    request: pytest.FixtureRequest,
) -> Endpoint:
    """The conformance app serving on a real socket; an in-process one is stopped when the
    test ends."""
    if conformance_server is None:
        endpoint = request.getfixturevalue("asgi_endpoint")
        assert isinstance(endpoint, Endpoint)
        return endpoint
    host, port = await nursery.start(conformance_server.serve, "127.0.0.1", 0)
    return Endpoint(host=host, port=port)
