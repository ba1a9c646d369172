"""The ping-timeout scenario takes virtual time, not real time.

A client that stops answering PINGs is dropped by the server after ``ping_interval +
ping_timeout`` (25 + 20 = 45 s here). Under ``autojump_clock`` on the in-memory transport
that is 45 s of Trio time and (far) under a second of wall-clock time; the assertion on
the wall clock is generous (5 s) so that a loaded CI machine cannot make it flaky, yet it
would fail at once if any of those 45 s were real.
"""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

from roomcast.engine import Config, Server
from roomcast.engine.pytest_plugin import ServeFactory

VIRTUAL_SECONDS = 25.0 + 20.0
WALL_CLOCK_BUDGET = 5.0


async def test_a_ping_timeout_takes_virtual_not_real_time(
    autojump_clock: trio.testing.MockClock, roomcast_serve: ServeFactory
) -> None:
    wall_start = time.perf_counter()
    harness = await roomcast_serve(Server(config=Config(ping_interval=25.0, ping_timeout=20.0)))
    client = await harness.connect(reconnect=False)
    sid = client.sid()
    assert sid is not None
    virtual_start = trio.current_time()
    client.faults.silence_pings()
    with trio.fail_after(VIRTUAL_SECONDS * 2):
        reason = await harness.wait_disconnect(sid, within=VIRTUAL_SECONDS * 2)
    virtual_elapsed = trio.current_time() - virtual_start
    wall_elapsed = time.perf_counter() - wall_start
    assert reason == "ping timeout"
    assert virtual_elapsed == pytest.approx(VIRTUAL_SECONDS)
    assert wall_elapsed < WALL_CLOCK_BUDGET, f"{wall_elapsed:.2f} s of real time passed"
    assert await client.wait_disconnected() == "transport close"
