"""The chat app's fixtures. The harness fixtures (``roomcast_harness``, ``roomcast_client``,
``roomcast_serve``) come from roomcast's pytest plugin, which installing roomcast
registers: there is nothing to import here but the app."""

from __future__ import annotations

import pytest

from roomcast.engine import Config, Server
from roomcast.engine.log import LogConfig

from ..app import build_server


@pytest.fixture
def roomcast_app(roomcast_log_config: LogConfig) -> Server:
    # The heartbeat of a real deployment (under autojump_clock it costs no real time),
    # and an event log in this test's own tmp_path.
    return build_server(Config(ping_interval=25.0, ping_timeout=20.0, log=roomcast_log_config))
