"""The seed example (``examples/workspace_chat.py``) as the seed's own clients see it: the
``timestamp`` of a message is ``JSON.stringify(new Date())``, and the seed's three console
lines are INFO records."""

from __future__ import annotations

import logging
import time

import pytest
import trio

from examples.workspace_chat import build_server, js_date_now
from roomcast.engine.testing import open_harness
from tests.interop.app import JS_DATE_JSON, js_date_seconds


def test_js_date_now_is_what_json_stringify_of_a_date_writes() -> None:
    before = time.time()
    value = js_date_now()
    after = time.time()
    assert JS_DATE_JSON.fullmatch(value), value
    # Milliseconds are truncated, as a JS Date holds them.
    assert int(before * 1000) / 1000 <= js_date_seconds(value) <= after


def test_js_date_seconds_refuses_what_date_parse_may_not_read() -> None:
    for value in (1764911499588, "2026-12-05T05:11:39Z", "2026-12-05T05:11:39.588+00:00"):
        with pytest.raises(AssertionError):
            js_date_seconds(value)


async def test_a_message_carries_a_js_date_and_the_seed_lines_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="examples.workspace_chat")
    with trio.fail_after(10):
        async with open_harness(build_server()) as harness:
            ann = await harness.connect()
            sid = ann.sid()
            assert await ann.call("join_workspace", "ws-1") == (
                {"ok": True, "workspaceId": "ws-1", "history": []},
            )
            reply = await ann.call("dispatch_message", {"workspaceId": "ws-1", "textMarker": "hi"})
            assert reply == ({"ok": True, "delivered": 1},)
            (message,) = await ann.wait_for("receive_message")
            assert isinstance(message, dict)
            assert message["sender"] == sid
            js_date_seconds(message["timestamp"])
            await ann.disconnect()
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "examples.workspace_chat" and r.levelno == logging.INFO
    ]
    # (The disconnect's reason depends on whether the DISCONNECT packet or the closing
    # harness reached the server first.)
    assert lines[:2] == [f"client connected: {sid}", f"socket {sid} joined workspace ws-1"]
    assert len(lines) == 3
    assert lines[2].startswith(f"client disconnected: {sid} (")
