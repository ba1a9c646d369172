"""roomcast's pytest plugin: fixtures that run your app's server inside the test.

Installed with roomcast and registered through the ``pytest11`` entry point, so any
project that installs roomcast (and pytest-trio) has these fixtures with no import and
no ``conftest.py`` line. Disable it with ``-p no:roomcast``.

Fixtures (all need a Trio test: ``trio_mode = true``, or ``@pytest.mark.trio``):

``roomcast_app``
    Your ``Server``. Override it in your ``conftest.py``::

        @pytest.fixture
        def roomcast_app() -> Server:
            return build_server(Config(ping_interval=25, ping_timeout=20))

``roomcast_transport``
    ``"memory"`` (the default) or ``"tcp"``. Override it (or parametrize it) to run
    tests on a real socket on 127.0.0.1, port 0, or on both.

``roomcast_harness``
    A ``roomcast.engine.testing.Harness`` running ``roomcast_app`` on
    ``roomcast_transport``; closed (clients first, then the server) after the test.

``roomcast_client``
    One client connected to ``"/"`` of ``roomcast_harness``, without auth.

``roomcast_log_config``
    A ``LogConfig`` in the test's ``tmp_path`` (fsync ``never``): pass it to your app's
    ``Config(log=...)`` so that a served app does not write ``./roomcast-log``, and two
    test runs never share (and lock) one log.

``roomcast_serve``
    A factory for more servers: ``harness = await roomcast_serve(server, transport=...)``
    runs ``server`` until the test ends.

Every fixture works with Trio's ``autojump_clock`` on the in-memory transports, so
heartbeats, ack timeouts and connect timeouts run in virtual time.

pytest imports this module at startup, before ``--cov`` starts measuring; so it imports
the harness only when a fixture runs, never at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

import pytest
import trio

if TYPE_CHECKING:
    from pathlib import Path

    from roomcast.engine.log import LogConfig
    from roomcast.engine.server import Server
    from roomcast.engine.testing import Harness, HarnessClient, HarnessTransport

__all__ = [
    "ServeFactory",
    "roomcast_app",
    "roomcast_client",
    "roomcast_harness",
    "roomcast_log_config",
    "roomcast_serve",
    "roomcast_transport",
]


class ServeFactory(Protocol):
    """The type of the ``roomcast_serve`` fixture."""

    async def __call__(self, server: Server, *, transport: HarnessTransport = "memory") -> Harness:
        """Run ``server`` in the test's nursery until the test ends; return its harness."""
        ...


@pytest.fixture
def roomcast_transport() -> HarnessTransport:
    """Where ``roomcast_harness`` serves: ``"memory"`` (override for ``"tcp"``)."""
    return "memory"


@pytest.fixture
def roomcast_app() -> Server:
    """Your app's ``Server``: override this fixture in your ``conftest.py``."""
    pytest.fail(
        "roomcast: define a `roomcast_app` fixture that returns your app's Server, e.g.\n"
        "    @pytest.fixture\n"
        "    def roomcast_app() -> Server:\n"
        "        return build_server()",
        pytrace=False,
    )


@pytest.fixture
def roomcast_log_config(tmp_path: Path) -> LogConfig:
    """An event log of the test's own, in ``tmp_path``, not synced (tests need no
    durability): ``Config(log=roomcast_log_config)``."""
    from roomcast.engine.log import FsyncPolicy, LogConfig

    return LogConfig(directory=tmp_path / "roomcast-log", fsync=FsyncPolicy.NEVER)


@pytest.fixture
async def roomcast_harness(
    roomcast_app: Server, roomcast_transport: HarnessTransport
) -> AsyncIterator[Harness]:
    """``roomcast_app`` running on ``roomcast_transport`` for the test."""
    from roomcast.engine.testing import open_harness

    async with open_harness(roomcast_app, transport=roomcast_transport) as harness:
        yield harness


@pytest.fixture
async def roomcast_client(roomcast_harness: Harness) -> HarnessClient:
    """A client connected to ``"/"`` of ``roomcast_harness``."""
    return await roomcast_harness.connect()


@pytest.fixture
async def roomcast_serve() -> AsyncIterator[ServeFactory]:
    """Start more servers for the test: ``harness = await roomcast_serve(server)``.

    Each runs until the test ends; then, in order, its clients are closed cleanly and
    its server is shut down (not cancelled all at once, which would leave the server
    waiting ``close_grace`` for goodbyes that never come).
    """
    from roomcast.engine.testing import open_harness

    stops: list[trio.Event] = []

    async def run(
        server: Server,
        transport: HarnessTransport,
        stop: trio.Event,
        *,
        task_status: trio.TaskStatus[Harness],
    ) -> None:
        async with open_harness(server, transport=transport) as harness:
            task_status.started(harness)
            await stop.wait()

    async with trio.open_nursery() as nursery:

        async def serve(server: Server, *, transport: HarnessTransport = "memory") -> Harness:
            stop = trio.Event()
            stops.append(stop)
            harness: Harness = await nursery.start(run, server, transport, stop)
            return harness

        yield serve
        for stop in stops:
            stop.set()
