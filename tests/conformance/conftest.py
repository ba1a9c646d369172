"""The conformance app (examples/conformance_app.py) in-process, on 127.0.0.1 and a free port."""

from __future__ import annotations

import pytest
import trio

from examples.conformance_app import build_server
from roomcast.engine import Server

from .wire import Endpoint

ENGINE: str = "/engine.io/"
"""The bare Engine.IO echo endpoint."""
SOCKET: str = "/socket.io/"
"""The Socket.IO endpoint."""
BUDGET: float = 2.0
"""docs/conformance.md §3: each test case has 2 s."""


@pytest.fixture
def conformance_server() -> Server:
    return build_server()


@pytest.fixture
async def app(conformance_server: Server, nursery: trio.Nursery) -> Endpoint:
    """The conformance app serving on a real socket; stopped when the test ends."""
    host, port = await nursery.start(conformance_server.serve, "127.0.0.1", 0)
    return Endpoint(host=host, port=port)
