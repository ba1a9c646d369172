"""python-socketio's implementation of the bench contract (docs/bench-contract.md).

The reference peer; it runs only in bench/.venv-psio (python-socketio, uvicorn with uvloop
and httptools, aiohttp), never in the main venv. Two front ends, chosen with
``PSIO_MODE``:

* ``aiohttp`` (default, the fastest here): ``async_mode="aiohttp"`` on aiohttp's own
  server, on a uvloop event loop.
* ``asgi``: ``socketio.ASGIApp`` on uvicorn with uvloop, httptools and the WebSocket
  implementation named by ``PSIO_WS`` (default ``websockets``), one worker, in this
  process.

One process, 127.0.0.1:$PORT, heartbeat from $PING_INTERVAL_MS / $PING_TIMEOUT_MS,
exits on SIGTERM (both servers handle it).
"""

from __future__ import annotations

import os
from typing import Any

import socketio  # type: ignore[import-not-found,unused-ignore]

__all__ = ["build_server", "main"]


def build_server(async_mode: str) -> Any:
    """The contract's three events on a ``socketio.AsyncServer``."""
    sio = socketio.AsyncServer(
        async_mode=async_mode,
        ping_interval=int(os.environ.get("PING_INTERVAL_MS", "25000")) / 1000,
        ping_timeout=int(os.environ.get("PING_TIMEOUT_MS", "20000")) / 1000,
        transports=["websocket"],
        cors_allowed_origins=None,
        logger=False,
        engineio_logger=False,
    )

    @sio.on("join")  # type: ignore[untyped-decorator,unused-ignore]
    async def join(sid: str, room: object) -> object:
        await sio.enter_room(sid, room)
        return room

    @sio.on("publish")  # type: ignore[untyped-decorator,unused-ignore]
    async def publish(sid: str, message: dict[str, object]) -> None:
        await sio.emit("message", message["payload"], room=message["room"])

    @sio.on("echo")  # type: ignore[untyped-decorator,unused-ignore]
    async def echo(sid: str, value: object) -> object:
        return value

    return sio


def main() -> None:
    """Serve the contract until SIGTERM."""
    port = int(os.environ.get("PORT", "5000"))
    mode = os.environ.get("PSIO_MODE", "aiohttp")
    print(f"python-socketio ({mode}) serving the bench contract on 127.0.0.1:{port}", flush=True)
    if mode == "aiohttp":
        import uvloop  # type: ignore[import-not-found,unused-ignore]
        from aiohttp import web  # type: ignore[import-not-found,unused-ignore]

        sio = build_server("aiohttp")
        app = web.Application()
        sio.attach(app)
        web.run_app(
            app,
            host="127.0.0.1",
            port=port,
            print=None,
            access_log=None,
            shutdown_timeout=2.0,
            loop=uvloop.new_event_loop(),
        )
    else:
        import uvicorn  # type: ignore[import-not-found,unused-ignore]

        sio = build_server("asgi")
        uvicorn.run(
            socketio.ASGIApp(sio),
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            ws=os.environ.get("PSIO_WS", "websockets"),
            ws_per_message_deflate=False,
            lifespan="off",
            access_log=False,
            log_level="warning",
            workers=1,
            timeout_graceful_shutdown=2,
        )


if __name__ == "__main__":
    main()
