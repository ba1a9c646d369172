"""Prometheus metrics at ``/metrics``: scraped with a real HTTP client while npm
``socket.io-client`` clients are connected, parsed with prometheus-client's own text
parser; a registry per server; the node label of a cluster node."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final

import prometheus_client
import pytest
import trio
import trio.testing
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

from roomcast.engine import Config, Server, Socket
from roomcast.engine.adapters.redis import RedisCluster, RedisSettings
from roomcast.engine.cli import apply_server_options, build_parser
from roomcast.engine.metrics import CONTENT_TYPE
from roomcast.protocol import JsonValue
from tests.interop.app import open_peer, serve_app

from .conftest import open_memory_server

DEADLINE: Final = 20.0
CLIENTS: Final = 3

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape(url: str) -> tuple[int, str, str]:
    """GET ``url`` with urllib (in a thread): the status, content type and body."""

    def get() -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.headers["Content-Type"], error.read().decode()

    return await trio.to_thread.run_sync(get)


def build_server() -> tuple[Server, trio.Event]:
    server = Server(config=Config(metrics=True))
    all_left = trio.Event()
    left: list[str] = []

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)
        await server.to(room).emit("joined", socket.sid)

    @server.on("echo")
    async def echo(socket: Socket, text: JsonValue) -> JsonValue:
        return text

    @server.on("disconnect")
    async def disconnected(socket: Socket, reason: str) -> None:
        left.append(socket.sid)
        if len(left) == CLIENTS:
            all_left.set()

    return server, all_left


@pytest.mark.node
async def test_scrape_while_npm_clients_are_connected(js_peers: Path) -> None:
    node = shutil.which("node")
    assert node is not None
    server, all_left = build_server()
    script = str(js_peers / "parity_peer.mjs")
    with trio.fail_after(DEADLINE):
        async with (
            serve_app(server) as running,
            open_peer([node, script, "metrics", running.url, str(CLIENTS)]) as peer,
        ):
            await peer.expect("ready")
            status, content_type, text = await scrape(running.url + "/metrics")
            await server.emit("bye")
            await peer.finish()
            await all_left.wait()
            _, _, after = await scrape(running.url + "/metrics")
    assert status == 200
    assert content_type == CONTENT_TYPE
    samples = parse(text)
    assert value(samples, "roomcast_connected_sockets", namespace="/") == CLIENTS
    assert value(samples, "roomcast_rooms", namespace="/") == 1
    assert value(samples, "roomcast_connections") == CLIENTS
    # Each client sent at least CONNECT, join and echo (100 bytes of text), and got at
    # least the handshake, the CONNECT answer, two acks and one "joined" per later joiner.
    assert value(samples, "roomcast_packets_received_total") >= 3 * CLIENTS
    assert value(samples, "roomcast_bytes_received_total") >= 100 * CLIENTS
    assert value(samples, "roomcast_packets_sent_total") >= 4 * CLIENTS
    assert value(samples, "roomcast_bytes_sent_total") >= 100 * CLIENTS
    # One broadcast per join, each timed once.
    assert value(samples, "roomcast_broadcast_seconds_count") == CLIENTS
    assert value(samples, "roomcast_broadcast_seconds_bucket", le="+Inf") == CLIENTS
    assert value(samples, "roomcast_broadcast_seconds_sum") > 0
    # The event log (on by default) wrote and synced the joins before they returned.
    assert value(samples, "roomcast_log_records_total") >= CLIENTS
    assert value(samples, "roomcast_log_append_seconds_count") >= 1
    assert value(samples, "roomcast_log_fsync_seconds_count") >= 1
    assert value(samples, "roomcast_slow_consumer_evictions_total") == 0
    assert value(samples, "roomcast_rate_limit_disconnects_total") == 0
    assert not any(name == "roomcast_redis_connected" for name, _ in samples)

    final = parse(after)
    assert value(final, "roomcast_connected_sockets", namespace="/") == 0
    assert value(final, "roomcast_rooms", namespace="/") == 0
    closed = [v for (name, _), v in final.items() if name == "roomcast_disconnects_total"]
    assert sum(closed) == CLIENTS
    assert value(final, "roomcast_broadcast_seconds_count") == CLIENTS + 1  # and "bye"
    assert value(final, "roomcast_packets_received_total") > value(
        samples, "roomcast_packets_received_total"
    )


async def test_rate_limit_and_slow_consumer_are_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A flooding client is closed for the rate limit, and a connection a room evicts (what
    it does when the outbox is full) as a slow consumer: each counter gets one."""
    server = Server(config=Config(metrics=True, max_events_per_second=10, max_events_burst=20))
    gone = trio.Event()

    @server.on("disconnect")
    async def disconnected(socket: Socket, reason: str) -> None:
        if not server.connections:
            gone.set()

    with trio.fail_after(30):
        async with open_memory_server(server) as srv, srv.client() as slow:
            await slow.connect()
            async with srv.client() as flooder:
                await flooder.connect()
                for i in range(100):
                    try:
                        await flooder.send(f'42["flood",{i}]')
                    except trio_websocket.ConnectionClosed:
                        break
                await flooder.closed()
            (conn,) = server.connections.values()
            conn.evict("slow consumer")
            await gone.wait()
    assert server.metrics is not None
    samples = parse(server.metrics.render().decode())
    assert value(samples, "roomcast_rate_limit_disconnects_total") == 1
    assert value(samples, "roomcast_slow_consumer_evictions_total") == 1
    assert value(samples, "roomcast_disconnects_total", reason="slow consumer") == 1
    assert value(samples, "roomcast_disconnects_total", reason="rate limit exceeded") == 1


async def test_each_server_has_its_own_registry() -> None:
    first, second = Server(config=Config(metrics=True)), Server(config=Config(metrics=True))
    assert first.metrics is not None
    assert second.metrics is not None
    first.stats.traffic.packets_in += 5
    assert value(parse(first.metrics.render().decode()), "roomcast_packets_received_total") == 5
    assert value(parse(second.metrics.render().decode()), "roomcast_packets_received_total") == 0
    default = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "roomcast_" not in default


async def test_metrics_are_off_by_default() -> None:
    server = Server()
    assert server.metrics is None
    with trio.fail_after(DEADLINE):
        async with serve_app(server) as running:
            status, _, _ = await scrape(running.url + "/metrics")
    assert status == 404


def test_metrics_flag_turns_them_on() -> None:
    server = Server()
    flags = build_parser().parse_args(["serve", "app:server", "--metrics"])
    apply_server_options(server, flags)
    assert server.config.metrics
    assert server.metrics is not None


async def test_a_cluster_node_labels_every_sample_with_its_id() -> None:
    """A node of a Redis cluster (not connected here: no Redis needed) adds ``node`` to
    every sample and reports the cluster's state."""
    cluster = RedisCluster(settings=RedisSettings(url="redis://127.0.0.1:1/0"))
    server = Server(config=Config(metrics=True), adapter_factory=cluster.adapter_factory)
    assert server.metrics is not None
    samples = parse(server.metrics.render().decode())
    assert all(dict(labels).get("node") == cluster.node_id for _, labels in samples)
    assert value(samples, "roomcast_redis_connected", node=cluster.node_id) == 0
    assert value(samples, "roomcast_redis_peers", node=cluster.node_id) == 0
    assert value(samples, "roomcast_connected_sockets", namespace="/", node=cluster.node_id) == 0
