"""roomcast's implementation of the bench contract (docs/bench-contract.md).

One process, one Trio run: listens on 127.0.0.1:$PORT, heartbeat from
$PING_INTERVAL_MS / $PING_TIMEOUT_MS, exits on SIGTERM (``serve_until_signal``).

Run: ``PORT=5000 .venv/bin/python bench/contract_app.py``

With ``--asgi``, the same server goes through the ASGI front (``roomcast.engine.asgi``)
served by hypercorn's Trio worker in this process (the ``asgi`` extra): what the ASGI
front costs against the built-in one (docs/asgi.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import cast

import trio

from roomcast.engine import Config, Server, Socket
from roomcast.engine.cli import serve_until_signal
from roomcast.engine.log import LogConfig
from roomcast.engine.presence import Presence
from roomcast.engine.runtime import tune_gc
from roomcast.engine.server import AdapterFactory
from roomcast.protocol import JsonValue

__all__ = ["build_server", "main"]


def build_server(
    config: Config | None = None, *, adapter_factory: AdapterFactory | None = None
) -> Server:
    """The contract's three events: ``join``, ``publish`` and ``echo``.

    ``adapter_factory`` is the scale-out hook (see ``_serve_clustered``).
    """
    if adapter_factory is None:
        server = Server(config=config or Config())
    else:
        server = Server(config=config or Config(), adapter_factory=adapter_factory)

    @server.on("join")
    async def join(socket: Socket, room: JsonValue) -> tuple[JsonValue, ...]:
        if not isinstance(room, str):
            return ()
        await socket.join(room)
        return (room,)

    @server.on("publish")
    async def publish(socket: Socket, message: JsonValue) -> None:
        if not isinstance(message, dict):
            return
        room = message.get("room")
        if isinstance(room, str):
            await server.to(room).emit("message", message.get("payload"))

    @server.on("echo")
    async def echo(socket: Socket, value: JsonValue) -> tuple[JsonValue, ...]:
        return (value,)  # a tuple, so that even ``null`` is echoed as one argument

    if os.environ.get("PRESENCE") == "1":
        _track_presence(server)
    return server


def _track_presence(server: Server) -> None:
    """$PRESENCE=1: presence on (docs/presence.md), every socket its own key, to measure
    its cost. No presence events are emitted: the contract's load generator takes any
    event but ``message`` for an anomaly, so this measures the bookkeeping (hooks on
    join and disconnect, the presence task) and not the extra fan-out."""
    Presence(namespace=server.of("/"))

    @server.use
    async def keyed(socket: Socket, auth: JsonValue) -> None:
        Presence.track(socket, socket.sid)


def _env_seconds(name: str, default_ms: int) -> float:
    return int(os.environ.get(name, str(default_ms))) / 1000


def _log_config() -> tuple[LogConfig, str | None]:
    """The event log from $ROOMCAST_LOG: ``off``, or an fsync policy (``always``,
    ``interval``: the default, ``never``), in $ROOMCAST_LOG_DIR, or else in a fresh
    temporary directory (returned too: the process deletes it when it exits, so runs
    neither share a log nor leave one behind)."""
    policy = os.environ.get("ROOMCAST_LOG", "interval")
    if policy == "off":
        return LogConfig(enabled=False), None
    directory = os.environ.get("ROOMCAST_LOG_DIR")
    scratch = None
    if not directory:
        directory = scratch = tempfile.mkdtemp(prefix="roomcast-bench-")
    return LogConfig(directory=directory, fsync=policy), scratch


def main() -> None:
    """Serve the contract until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    log, scratch = _log_config()
    try:
        _serve(log)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _serve(log: LogConfig) -> None:
    config = Config(
        ping_interval=_env_seconds("PING_INTERVAL_MS", 25_000),
        ping_timeout=_env_seconds("PING_TIMEOUT_MS", 20_000),
        log=log,
        # $ROOMCAST_METRICS=1: Prometheus metrics on (their cost, docs/benchmarks.md).
        metrics=os.environ.get("ROOMCAST_METRICS") == "1",
    )
    port = int(os.environ.get("PORT", "5000"))
    tune_gc()
    print(f"roomcast serving the bench contract on 127.0.0.1:{port}", flush=True)
    if sys.argv[1:] == ["--asgi"]:
        trio.run(_serve_asgi, build_server(config), port)
        return
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:  # scale-out hook (issue 9)
        trio.run(_serve_clustered, config, redis_url, port)
        return
    trio.run(serve_until_signal, build_server(config), "127.0.0.1", port)


async def _serve_asgi(server: Server, port: int) -> None:
    """Serve ``server`` as an ASGI app under hypercorn's Trio worker until SIGTERM/SIGINT."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve
    from hypercorn.typing import ASGIFramework

    from roomcast.engine.asgi import AsgiApp

    async def signalled() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return

    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.graceful_timeout = 1.0  # WebSockets do not end by themselves: close them soon
    # (hypercorn types ASGI messages as TypedDicts, the app takes plain mappings.)
    app = cast("ASGIFramework", AsgiApp(server))
    await serve(app, config, shutdown_trigger=signalled, mode="asgi")


# -- scale-out (issue 9): with REDIS_URL set, the process joins a Redis cluster ------------


async def _serve_clustered(config: Config, redis_url: str, port: int) -> None:
    """Serve as one node of the cluster on ``redis_url`` (channel prefix from
    $REDIS_PREFIX, default "roomcast"; the shared log on Redis Streams when $SHARED_LOG
    is 1); needs the ``redis`` extra (coredis)."""
    from roomcast.engine.adapters.redis import RedisCluster, RedisSettings

    prefix = os.environ.get("REDIS_PREFIX", "roomcast")
    settings = RedisSettings(
        url=redis_url, channel_prefix=prefix, shared_log=os.environ.get("SHARED_LOG") == "1"
    )
    cluster = RedisCluster(settings=settings)
    server = build_server(config, adapter_factory=cluster.adapter_factory)
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        await serve_until_signal(server, "127.0.0.1", port)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    main()
