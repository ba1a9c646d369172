"""The ASGI front driven message by message, as an ASGI server would: the lifespan (the
services and the server, in order), a request before it, a held polling GET ended by
``http.disconnect``, WebSocket refusals with and without the ``websocket.http.response``
extension, and a WebSocket message over the payload limit (close 1009).

The wire behaviour under a real ASGI server is tests/conformance (through hypercorn).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing

from roomcast.engine import Config, Server
from roomcast.engine.asgi import AsgiApp, Service
from roomcast.engine.log import LogConfig
from roomcast.protocol import Limits

Message = Mapping[str, object]
MAX_PAYLOAD = 1000


@attrs.define(eq=False)
class Call:
    """One ASGI application call in progress: what the test sends it, what it sent."""

    to_app: trio.MemorySendChannel[Message]
    from_app: trio.MemoryReceiveChannel[dict[str, object]]
    done: trio.Event

    async def send(self, message: Message) -> None:
        await self.to_app.send(message)

    async def next(self) -> dict[str, object]:
        return await self.from_app.receive()

    async def response(self) -> tuple[int, bytes]:
        """An HTTP response (``prefix``.start then .body): its status and body."""
        start, body = await self.next(), await self.next()
        assert str(start["type"]).endswith("response.start"), start
        assert str(body["type"]).endswith("response.body"), body
        status, data = start["status"], body["body"]
        assert isinstance(status, int)
        assert isinstance(data, bytes)
        return status, data


@asynccontextmanager
async def call(app: AsgiApp, scope: dict[str, object]) -> AsyncIterator[Call]:
    """Run ``app(scope, ...)`` in a task for the block (cancelled at its end if still on)."""
    to_app, app_receive = trio.open_memory_channel[Message](16)
    app_send, from_app = trio.open_memory_channel[dict[str, object]](16)
    done = trio.Event()

    async def run() -> None:
        try:
            await app(scope, app_receive.receive, app_send.send)
        finally:
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        yield Call(to_app=to_app, from_app=from_app, done=done)
        nursery.cancel_scope.cancel()


def http_scope(query: str, method: str = "GET") -> dict[str, object]:
    return {
        "type": "http",
        "method": method,
        "path": "/socket.io/",
        "raw_path": b"/socket.io/",
        "query_string": query.encode(),
        "headers": [(b"host", b"example.test")],
        "client": ("127.0.0.1", 40000),
    }


def ws_scope(query: str, *, extension: bool = True) -> dict[str, object]:
    return {
        **http_scope(query),
        "type": "websocket",
        "headers": [
            (b"host", b"example.test"),
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
        ],
        "extensions": {"websocket.http.response": {}} if extension else {},
    }


def new_app(*services: Service) -> AsgiApp:
    config = Config(limits=Limits(max_payload_bytes=MAX_PAYLOAD), log=LogConfig(enabled=False))
    return AsgiApp(Server(config=config), services=services)


@asynccontextmanager
async def lifespan(app: AsgiApp) -> AsyncIterator[Call]:
    """The app's lifespan scope, started for the block and shut down at its end."""
    async with call(app, {"type": "lifespan"}) as lifespan_call:
        await lifespan_call.send({"type": "lifespan.startup"})
        assert await lifespan_call.next() == {"type": "lifespan.startup.complete"}
        yield lifespan_call
        await lifespan_call.send({"type": "lifespan.shutdown"})
        assert await lifespan_call.next() == {"type": "lifespan.shutdown.complete"}
        await lifespan_call.done.wait()


async def handshake(app: AsgiApp) -> str:
    """Open a polling session; its sid."""
    async with call(app, http_scope("EIO=4&transport=polling")) as request:
        await request.send({"type": "http.request", "body": b"", "more_body": False})
        status, body = await request.response()
    assert status == 200, body
    sid = json.loads(body[1:])["sid"]
    assert isinstance(sid, str)
    return sid


async def test_lifespan_runs_the_services_around_the_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    story: list[str] = []

    async def service(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        story.append("service started")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            story.append("service stopped")

    app = new_app(service)
    with trio.fail_after(10):
        async with lifespan(app):
            story.append("serving")
            await handshake(app)
        assert story == ["service started", "serving", "service stopped"]
        # Stopped: requests are refused again.
        async with call(app, http_scope("EIO=4&transport=polling")) as request:
            assert (await request.response())[0] == 503


async def test_a_request_before_the_lifespan_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = new_app()
    with trio.fail_after(10):
        async with call(app, http_scope("EIO=4&transport=polling")) as request:
            status, body = await request.response()
            await request.done.wait()
    assert (status, body) == (503, b'{"code":3,"message":"Server not started"}')


async def test_a_second_lifespan_fails_its_startup(autojump_clock: trio.testing.MockClock) -> None:
    app = new_app()
    with trio.fail_after(10):
        async with lifespan(app), call(app, {"type": "lifespan"}) as second:
            await second.send({"type": "lifespan.startup"})
            failed = await second.next()
    assert failed["type"] == "lifespan.startup.failed"
    assert "running already" in str(failed["message"])


async def test_a_held_get_ends_when_the_client_disconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = new_app()
    with trio.fail_after(10):
        async with lifespan(app):
            sid = await handshake(app)
            query = f"EIO=4&transport=polling&sid={sid}"
            async with call(app, http_scope(query)) as held:
                await held.send({"type": "http.request", "body": b"", "more_body": False})
                await trio.testing.wait_all_tasks_blocked()
                assert not held.done.is_set()  # held: nothing to send yet
                await held.send({"type": "http.disconnect"})
                await held.done.wait()
            # The session is gone (Engine.IO: the client closed its transport).
            async with call(app, http_scope(query)) as after:
                await after.send({"type": "http.request", "body": b"", "more_body": False})
                assert (await after.response())[0] == 400


@pytest.mark.parametrize("extension", [True, False])
async def test_a_refused_websocket(autojump_clock: trio.testing.MockClock, extension: bool) -> None:
    app = new_app()
    with trio.fail_after(10):
        async with lifespan(app):
            scope = ws_scope("EIO=4&transport=websocket&sid=unknown", extension=extension)
            async with call(app, scope) as refused:
                await refused.send({"type": "websocket.connect"})
                if extension:  # the built-in front's answer, through the extension
                    assert await refused.response() == (
                        400,
                        b'{"code":1,"message":"Session ID unknown"}',
                    )
                else:  # the ASGI server answers 403
                    assert (await refused.next())["type"] == "websocket.close"
                await refused.done.wait()


async def test_a_websocket_message_over_the_limit_closes_1009(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = new_app()
    with trio.fail_after(10):
        async with lifespan(app), call(app, ws_scope("EIO=4&transport=websocket")) as ws:
            await ws.send({"type": "websocket.connect"})
            assert await ws.next() == {"type": "websocket.accept"}
            opened = await ws.next()
            assert opened["type"] == "websocket.send"
            assert str(opened["text"]).startswith("0{"), opened
            await ws.send({"type": "websocket.receive", "text": "4" + "x" * MAX_PAYLOAD})
            closed = await ws.next()
            assert closed == {"type": "websocket.close", "code": 1009, "reason": "message too big"}
            await ws.send({"type": "websocket.disconnect", "code": 1009})
            await ws.done.wait()
