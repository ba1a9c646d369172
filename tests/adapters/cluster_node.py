"""A roomcast cluster node for the multi-process tests: ``python -m tests.adapters.cluster_node``.

Configured by the environment: ``REDIS_URL``, ``CLUSTER_PREFIX``, ``HEARTBEAT_INTERVAL``,
``NODE_TIMEOUT`` (seconds), ``SHARED_LOG`` (``1``: the shared log on Redis Streams, with
connection state recovery), ``APP`` (``chat``: the workspace chat example's server, with
presence and history, instead of this module's test events). Listens on 127.0.0.1 and a
free port. Prints JSON lines:
``{"event": "listening", "port", "node"}`` once serving, then one line per cluster event
(``connected``, ``disconnected``, ``peer_joined``, ``peer_lost``, ``traffic_missed``,
``log_gap``). Its
Socket.IO events (all answer through the ack) drive the cluster from a client.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import trio

from examples.workspace_chat import build_server as build_chat_server
from roomcast.engine import Config, Server, Socket
from roomcast.engine.adapters.cluster import ClusterError
from roomcast.engine.adapters.redis import (
    ClusterEvent,
    Connected,
    Disconnected,
    LogGap,
    PeerJoined,
    PeerLost,
    RedisCluster,
    RedisSettings,
    TrafficMissed,
)
from roomcast.engine.recovery import RecoveryConfig
from roomcast.protocol import JsonValue


def say(event: str, **fields: JsonValue) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def report(event: ClusterEvent) -> None:
    match event:
        case Connected(outage=outage):
            say(
                "connected",
                outage=None
                if outage is None
                else {"duration": outage.duration, "not_sent": dict(outage.not_sent)},
            )
        case Disconnected(reason=reason):
            say("disconnected", reason=reason)
        case PeerJoined(node=node):
            say("peer_joined", node=node)
        case PeerLost(node=node, reason=reason):
            say("peer_lost", node=node, reason=reason)
        case TrafficMissed(node=node, channel=channel, count=count):
            say("traffic_missed", node=node, channel=channel, count=count)
        case LogGap(reason=reason, missed=missed):
            say("log_gap", reason=reason, missed=missed)


def _room(value: JsonValue) -> str:
    assert isinstance(value, str), value
    return value


def build(cluster: RedisCluster) -> Server:
    recovery = RecoveryConfig() if cluster.settings.shared_log else None
    server = Server(config=Config(), adapter_factory=cluster.adapter_factory, recovery=recovery)

    @server.on("connect")
    async def connected(socket: Socket, auth: JsonValue) -> None:
        socket.data["node"] = cluster.node_id

    @server.on("join")
    async def join(socket: Socket, *rooms: JsonValue) -> object:
        await socket.join(*[_room(room) for room in rooms])
        return sorted(socket.rooms)

    @server.on("publish")
    async def publish(socket: Socket, room: JsonValue, event: JsonValue, *args: JsonValue) -> int:
        return await server.to(_room(room)).emit(_room(event), *args)

    @server.on("publish_local")
    async def publish_local(socket: Socket, room: JsonValue, event: JsonValue) -> int:
        return await server.of("/").local.to(_room(room)).emit(_room(event))

    @server.on("fetch")
    async def fetch(socket: Socket, room: JsonValue) -> object:
        try:
            found = await server.in_(_room(room)).fetch_sockets()
        except ClusterError as exc:
            return {"error": type(exc).__name__}
        return [{"sid": s.sid, "rooms": sorted(s.rooms), "data": dict(s.data)} for s in found]

    @server.on("remote_join")
    async def remote_join(socket: Socket, room: JsonValue, new: JsonValue) -> JsonValue:
        await server.in_(_room(room)).sockets_join(_room(new))
        return True

    @server.on("remote_leave")
    async def remote_leave(socket: Socket, room: JsonValue, old: JsonValue) -> JsonValue:
        await server.in_(_room(room)).sockets_leave(_room(old))
        return True

    @server.on("kick")
    async def kick(socket: Socket, room: JsonValue) -> JsonValue:
        await server.in_(_room(room)).disconnect_sockets()
        return True

    @server.on("poll")
    async def poll(socket: Socket, room: JsonValue, within: JsonValue) -> object:
        assert isinstance(within, float | int)
        result = await server.to(_room(room)).call("poll", within=float(within))
        return {
            "answers": {sid: list(args) for sid, args in result.answers.items()},
            "missing": sorted(result.missing),
        }

    @server.on("server_call")
    async def server_call(socket: Socket, value: JsonValue) -> JsonValue:
        result = await server.of("/").server_side_call("who", value, within=2.0)
        return {"answers": {n: list(a) for n, a in result.answers.items()}}

    @server.of("/").on_server_side("who")
    async def who(value: JsonValue) -> JsonValue:
        return {"node": cluster.node_id, "got": value}

    @server.on("status")
    async def status(socket: Socket) -> object:
        s = cluster.status()
        return {
            "node": s.node_id,
            "connected": s.connected,
            "peers": sorted(s.peers),
            "not_sent": dict(s.not_sent),
            "missed": dict(s.missed),
        }

    return server


async def main() -> None:
    settings = RedisSettings(
        url=os.environ["REDIS_URL"],
        channel_prefix=os.environ["CLUSTER_PREFIX"],
        heartbeat_interval=float(os.environ.get("HEARTBEAT_INTERVAL", "0.2")),
        node_timeout=float(os.environ.get("NODE_TIMEOUT", "1.0")),
        reconnect_interval=0.05,
        max_reconnect_interval=0.3,
        request_timeout=3.0,
        shared_log=os.environ.get("SHARED_LOG") == "1",
    )
    cluster = RedisCluster(settings=settings, on_event=report)
    if os.environ.get("APP") == "chat":
        server = build_chat_server(
            recovery=RecoveryConfig() if settings.shared_log else None,
            adapter_factory=cluster.adapter_factory,
        )
    else:
        server = build(cluster)
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        _host, port = await nursery.start(server.serve, "127.0.0.1", 0)
        say("listening", port=port, node=cluster.node_id)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    trio.run(main)
