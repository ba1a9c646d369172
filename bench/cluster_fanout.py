"""Cross-node fan-out throughput: one node vs a three-node Redis cluster, in one run.

Starts node processes (this file with ``--node``: the bench contract's ``join`` and
``publish`` events, the event log off so that only fan-out is measured; with a
``RedisCluster`` for the cluster runs, with or without the shared log on Redis Streams), puts
``--subscribers`` raw WebSocket clients in one room, spread round-robin over the nodes,
and has one publisher on node 0 send ``--messages`` events to the room as fast as the
server takes them. Reports deliveries per second (subscribers x messages / time until the
last subscriber got the last message).

Run: ``.venv/bin/python bench/cluster_fanout.py [--subscribers 30] [--messages 2000]``
(needs a Redis on $REDIS_URL, default redis://127.0.0.1:6379/0). Everything listens on
127.0.0.1; every process it starts is killed by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import trio
import trio_websocket

SELF: Final = Path(__file__).resolve()
WS_PATH: Final = "/socket.io/?EIO=4&transport=websocket"
ROOM: Final = "bench"
TIMEOUT: Final = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _start_nodes(
    count: int, redis_url: str | None, workdir: Path, prefix: str, *, shared_log: bool = False
) -> tuple[list[int], list[trio.Process]]:
    ports, procs = [], []
    for index in range(count):
        cwd = workdir / f"node{index}"  # each node keeps its own event log
        await trio.Path(cwd).mkdir()
        port = _free_port()
        env = {**os.environ, "PORT": str(port), "REDIS_PREFIX": prefix}
        env.pop("REDIS_URL", None)
        if redis_url is not None:
            env["REDIS_URL"] = redis_url
        env["SHARED_LOG"] = "1" if shared_log else "0"
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(SELF), "--node"],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        ports.append(port)
        procs.append(proc)
    for proc in procs:
        await _wait_serving(proc)
    if redis_url is not None and count > 1:
        await trio.sleep(1.5)  # membership converges within a heartbeat (1 s by default)
    return ports, procs


async def _forget(redis_url: str, prefix: str) -> None:
    """Delete what the case's cluster left in Redis (its shared log)."""
    import coredis

    async with coredis.Redis.from_url(redis_url) as client:
        async for key in client.scan_iter(match=f"{prefix}#*"):
            await client.delete([key])


async def _wait_serving(proc: trio.Process) -> None:
    assert proc.stdout is not None
    seen = b""
    while b"roomcast serving on" not in seen:
        chunk = await proc.stdout.receive_some(4096)
        if not chunk:
            raise RuntimeError("a node exited before serving")
        seen += chunk


async def _open_client(
    port: int, nursery: trio.Nursery, *, join: bool = True
) -> trio_websocket.WebSocketConnection:
    ws = await trio_websocket.connect_websocket(nursery, "127.0.0.1", port, WS_PATH, use_ssl=False)
    opened = await ws.get_message()
    assert isinstance(opened, str), opened
    assert opened.startswith("0"), opened
    await ws.send_message("40")
    connected = await ws.get_message()
    assert isinstance(connected, str), connected
    assert connected.startswith("40"), connected
    if not join:  # the publisher: it must not get (and leave unread) its own messages
        return ws
    await ws.send_message(f'420["join","{ROOM}"]')
    while True:
        reply = await ws.get_message()
        if reply == "2":
            await ws.send_message("3")
            continue
        assert reply == f'430["{ROOM}"]', reply
        return ws


async def _count(
    ws: trio_websocket.WebSocketConnection,
    expected: int,
    done: trio.Event,
    got: list[int],
    index: int,
) -> None:
    """Count ``message`` events in ``got[index]`` until ``expected``, or until the server
    closes the connection (a subscriber this process could not read fast enough for is
    evicted as a slow consumer: the run reports it rather than waiting forever)."""
    try:
        while got[index] < expected:
            frame = await ws.get_message()
            if frame == "2":
                await ws.send_message("3")
            elif isinstance(frame, str) and frame.startswith('42["message"'):
                got[index] += 1
    except trio_websocket.ConnectionClosed:
        pass
    done.set()


async def run_case(
    name: str,
    nodes: int,
    redis_url: str | None,
    subscribers: int,
    messages: int,
    *,
    shared_log: bool = False,
) -> dict[str, object]:
    """One configuration: the deliveries per second it reached."""
    async with trio.open_nursery() as nursery:
        workdir = Path(await trio.to_thread.run_sync(tempfile.mkdtemp))
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        ports, procs = await _start_nodes(nodes, redis_url, workdir, prefix, shared_log=shared_log)
        try:
            clients = [await _open_client(ports[i % nodes], nursery) for i in range(subscribers)]
            publisher = await _open_client(ports[0], nursery, join=False)
            dones = [trio.Event() for _ in clients]
            got = [0] * subscribers
            async with trio.open_nursery() as counting:
                for index, (ws, done) in enumerate(zip(clients, dones, strict=True)):
                    counting.start_soon(_count, ws, messages, done, got, index)
                payload = json.dumps({"room": ROOM, "payload": "x" * 64})
                started = time.perf_counter()
                for _ in range(messages):
                    await publisher.send_message(f'42["publish",{payload}]')
                with trio.move_on_after(TIMEOUT) as waiting:
                    for done in dones:
                        await done.wait()
                stalled = waiting.cancelled_caught
                counting.cancel_scope.cancel()
                elapsed = time.perf_counter() - started
            for ws in [*clients, publisher]:
                await ws.aclose()
        finally:
            for proc in procs:
                proc.kill()
                with trio.move_on_after(5, shield=True):
                    await proc.wait()
                if proc.stdout is not None:
                    await trio.aclose_forcefully(proc.stdout)
            with trio.move_on_after(10, shield=True):
                await trio.to_thread.run_sync(shutil.rmtree, workdir)
                if redis_url is not None:
                    await _forget(redis_url, prefix)
        nursery.cancel_scope.cancel()
    deliveries = sum(got)
    return {
        "case": name,
        "nodes": nodes,
        "subscribers": subscribers,
        "messages": messages,
        "seconds": round(elapsed, 3),
        "deliveries_per_second": round(deliveries / elapsed),
        "messages_per_second": round(messages / elapsed),
        "incomplete_subscribers": sum(1 for count in got if count < messages),
        "stalled": stalled,
    }


async def serve_node() -> None:
    """One node: $PORT, and a cluster on $REDIS_URL (prefix $REDIS_PREFIX) when set."""
    from roomcast.engine import Config, Server, Socket
    from roomcast.engine.adapters.redis import RedisCluster, RedisSettings
    from roomcast.engine.cli import serve_until_signal
    from roomcast.engine.log import LogConfig
    from roomcast.protocol import JsonValue

    # The publisher sends as fast as it can: the per-connection rate limit (1,000/s by
    # default) would disconnect it; this measures fan-out, not that limit.
    config = Config(log=LogConfig(enabled=False), max_events_per_second=0)
    redis_url = os.environ.get("REDIS_URL")
    cluster = None
    if redis_url:
        settings = RedisSettings(
            url=redis_url,
            channel_prefix=os.environ["REDIS_PREFIX"],
            shared_log=os.environ.get("SHARED_LOG") == "1",
        )
        cluster = RedisCluster(settings=settings)
        server = Server(config=config, adapter_factory=cluster.adapter_factory)
    else:
        server = Server(config=config)

    @server.on("join")
    async def join(socket: Socket, room: JsonValue) -> tuple[JsonValue, ...]:
        assert isinstance(room, str)
        await socket.join(room)
        return (room,)

    @server.on("publish")
    async def publish(socket: Socket, message: JsonValue) -> None:
        assert isinstance(message, dict)
        room = message["room"]
        assert isinstance(room, str)
        await server.to(room).emit("message", message.get("payload"))

    port = int(os.environ["PORT"])
    async with trio.open_nursery() as nursery:
        if cluster is not None:
            await nursery.start(cluster.run)
        await serve_until_signal(server, "127.0.0.1", port)
        nursery.cancel_scope.cancel()


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=30)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--node", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.node:
        await serve_node()
        return
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    cases = [
        ("1 node, in-memory adapter", 1, None, False),
        ("1 node, Redis adapter", 1, redis_url, False),
        ("3 nodes, Redis adapter", 3, redis_url, False),
        ("1 node, Redis adapter + shared log", 1, redis_url, True),
        ("3 nodes, Redis adapter + shared log", 3, redis_url, True),
    ]
    for name, nodes, url, shared in cases:
        if args.only is not None and args.only not in name:
            continue
        result = await run_case(
            name, nodes, url, args.subscribers, args.messages, shared_log=shared
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    trio.run(main)
