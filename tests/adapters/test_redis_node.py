"""Redis-specific behaviour of cluster nodes in this process: server-side events, cluster
isolation, bad messages, auth and TLS, timeouts, and a node without Redis."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import coredis
import pytest
import trio

from roomcast.engine import Server, Socket
from roomcast.engine.adapters.base import BroadcastOptions
from roomcast.engine.adapters.cluster import (
    ClusterTimeoutError,
    ClusterUnavailableError,
    Envelope,
    Heartbeat,
    encode_envelope,
)
from roomcast.engine.adapters.redis import RedisCluster, RedisSettings
from roomcast.protocol import JsonValue
from tests.adapters.conftest import (
    FAILED_CONNECT_LEAK,
    PrivateRedis,
    fast_settings,
    free_port,
    open_deployment,
    unique_prefix,
)
from tests.adapters.test_conformance import build, deployment_with_clients, drain
from tests.engine.conftest import RawClient, open_memory_server

TEST_TIMEOUT: Final = 15.0


async def test_server_side_emit_and_call_reach_the_other_nodes(redis_url: str) -> None:
    seen: list[tuple[int, tuple[JsonValue, ...]]] = []
    with trio.fail_after(TEST_TIMEOUT):
        async with open_deployment("redis-3", build, redis_url) as deployment:
            for index, node in enumerate(deployment.nodes):

                @node.server.of("/").on_server_side("hello")
                async def hello(*args: JsonValue, index: int = index) -> JsonValue:
                    seen.append((index, args))
                    return {"from": index} if index == 1 else None

            ns = deployment.nodes[0].server.of("/")
            result = await ns.server_side_call("hello", 1, "two", within=2.0)
            assert sorted(seen) == [(1, (1, "two")), (2, (1, "two"))]  # not node 0 itself
            ids = [node.cluster.node_id for node in deployment.nodes if node.cluster]
            assert result.answers == {ids[1]: ({"from": 1},), ids[2]: ()}
            assert result.missing == frozenset()
            seen.clear()
            await ns.server_side_emit("hello", "x")
            # An emit has no answer to wait for: a call after it (same order) shows it ran.
            nobody = await ns.server_side_call("nothing", within=2.0)
            assert nobody.answers == {}
            assert nobody.missing == {ids[1], ids[2]}  # no handler there
            assert sorted(seen) == [(1, ("x",)), (2, ("x",))]
            assert ns.adapter.node_count == 3


async def test_clusters_with_different_prefixes_do_not_hear_each_other(redis_url: str) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            deployment_with_clients("redis-1", redis_url, 1) as (one, clients_one, _),
            deployment_with_clients("redis-1", redis_url, 1) as (two, clients_two, _),
        ):
            await one.nodes[0].server.emit("for-one", 1)
            await two.nodes[0].server.emit("for-two", 2)
            assert await drain(one, clients_one) == [[["for-one", 1]]]
            assert await drain(two, clients_two) == [[["for-two", 2]]]
            cluster = one.nodes[0].cluster
            assert cluster is not None
            assert cluster.peers == frozenset()


async def test_foreign_and_malformed_messages_are_dropped(redis_url: str) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with deployment_with_clients("redis-1", redis_url, 1) as (deployment, clients, _):
            cluster = deployment.nodes[0].cluster
            assert cluster is not None
            channel = cluster.namespace_channel("/")
            foreign = encode_envelope(
                "another-cluster", Envelope(node="x", seq=1, namespace="/", body=Heartbeat())
            )
            async with coredis.Redis.from_url(redis_url) as raw:
                for junk in (b"\x00garbage", foreign, b"\xc1"):
                    await raw.publish(channel, junk)
            await cluster.wait_until(lambda status: status.dropped == 3)
            await deployment.nodes[0].server.emit("still", "works")
            assert await drain(deployment, clients) == [[["still", "works"]]]


async def test_a_silent_peer_times_requests_out_and_is_then_forgotten(redis_url: str) -> None:
    prefix = unique_prefix()
    cluster = RedisCluster(settings=fast_settings(redis_url, prefix, request_timeout=0.3))
    server = build(config=Server().config, adapter_factory=cluster.adapter_factory)
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(cluster.run)
            await nursery.start(server.supervisor.run)
            # A "node" that sends one heartbeat and never answers anything.
            heartbeat = encode_envelope(
                prefix, Envelope(node="silent", seq=0, namespace="", body=Heartbeat())
            )
            async with coredis.Redis.from_url(redis_url) as raw:
                await raw.publish(cluster.cluster_channel, heartbeat)
            await cluster.wait_until(lambda status: "silent" in status.peers)
            with pytest.raises(ClusterTimeoutError) as caught:
                await server.of("/").fetch_sockets()
            assert caught.value.missing == {"silent"}
            await cluster.wait_until(lambda status: not status.peers)  # node_timeout
            assert await server.of("/").fetch_sockets() == []
            nursery.cancel_scope.cancel()


@FAILED_CONNECT_LEAK
async def test_a_node_without_redis_serves_its_own_clients(
    private_redis: PrivateRedis, collect_garbage: None
) -> None:
    # Nothing listens on the private port yet: the first attempt fails, the node serves.
    cluster = RedisCluster(settings=fast_settings(private_redis.url, unique_prefix()))
    with trio.fail_after(TEST_TIMEOUT):
        async with deployment_with_clients_on(cluster) as (server, client, sid):
            assert not cluster.connected
            status = cluster.status()
            assert status.outage_since is not None
            assert status.outages == 1
            assert await server.emit("local", 1) == 1
            assert await client.recv() == '42["local",1]'
            with pytest.raises(ClusterUnavailableError):
                await server.of("/").fetch_sockets()
            with pytest.raises(ClusterUnavailableError):
                await server.of("/").server_side_emit("x")
            with pytest.raises(ClusterUnavailableError):
                await server.of("/").sockets_join("joined-anyway")
            assert "joined-anyway" in server.of("/").sockets[sid].rooms  # the local part
            result = await server.of("/").broadcast_operator().call("q", within=0.2)
            assert result.missing == {sid}
            assert status.not_sent == {}
            assert cluster.status().not_sent == {"broadcast": 1, "request": 4}

            private_redis.start()
            status = await cluster.wait_until(lambda status: status.connected)
            assert status.last_outage is not None
            assert status.last_outage.not_sent == {"broadcast": 1, "request": 4}
            assert status.outage_since is None


@asynccontextmanager
async def deployment_with_clients_on(
    cluster: RedisCluster,
) -> AsyncIterator[tuple[Server, RawClient, str]]:
    """One server on ``cluster`` (which this runs) with one raw client."""
    server = build(config=Server().config, adapter_factory=cluster.adapter_factory)
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        async with open_memory_server(server) as memory, memory.client() as client:
            sid = await client.connect()
            yield server, client, sid
        nursery.cancel_scope.cancel()


@FAILED_CONNECT_LEAK
async def test_redis_auth(private_redis: PrivateRedis, collect_garbage: None) -> None:
    private_redis.extra = ("--requirepass", "s3cret")
    private_redis.start()
    good = RedisSettings(url=private_redis.url, channel_prefix=unique_prefix(), password="s3cret")
    bad = RedisSettings(url=private_redis.url, channel_prefix=unique_prefix(), password="wrong")
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            allowed = RedisCluster(settings=good)
            refused = RedisCluster(settings=bad)
            Server(adapter_factory=allowed.adapter_factory)
            Server(adapter_factory=refused.adapter_factory)
            await nursery.start(allowed.run)
            await nursery.start(refused.run)
            assert allowed.connected
            assert not refused.connected
            nursery.cancel_scope.cancel()


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make test certificates")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=roomcast test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.cnf")  # fmt: skip
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


@FAILED_CONNECT_LEAK
async def test_redis_over_tls(
    private_redis: PrivateRedis, tmp_path: Path, collect_garbage: None
) -> None:
    ca, cert, key = _certificates(tmp_path)
    tls_port = free_port()
    private_redis.extra = (
        "--port", "0", "--tls-port", str(tls_port), "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
    )  # fmt: skip
    private_redis.port = tls_port
    private_redis.start()
    prefix = unique_prefix()
    url = f"redis://127.0.0.1:{tls_port}/0"
    settings = fast_settings(url, prefix)
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nodes = []
            for _ in range(2):
                cluster = RedisCluster(
                    settings=RedisSettings(
                        url=url,
                        channel_prefix=prefix,
                        ssl=True,
                        ssl_ca_certs=str(ca),
                        heartbeat_interval=settings.heartbeat_interval,
                        node_timeout=settings.node_timeout,
                    )
                )
                Server(adapter_factory=cluster.adapter_factory)
                await nursery.start(cluster.run)
                assert cluster.connected
                nodes.append(cluster)
            await nodes[0].wait_until(lambda status: status.peers == {nodes[1].node_id})
            plain = RedisCluster(settings=fast_settings(url, unique_prefix()))
            Server(adapter_factory=plain.adapter_factory)
            await nursery.start(plain.run)
            assert not plain.connected  # no TLS: refused
            nursery.cancel_scope.cancel()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="node_timeout"):
        RedisSettings(heartbeat_interval=2.0, node_timeout=1.0)
    with pytest.raises(ValueError, match="channel_prefix"):
        RedisSettings(channel_prefix="a#b")
    assert "s3cret" not in repr(RedisSettings(password="s3cret"))
    assert RedisSettings().tls_context() is None


async def test_volatile_and_except_sids_cross_nodes(redis_url: str) -> None:
    async with deployment_with_clients("redis-3", redis_url, 3) as (deployment, clients, sids):
        server = deployment.nodes[0].server
        await server.of("/").volatile.emit("v", 1)
        op = server.of("/").broadcast_operator(except_sids=frozenset({sids[1]}))
        await op.emit("not-1", 2)
        got = await drain(deployment, clients)
    assert got == [[["v", 1], ["not-1", 2]], [["v", 1]], [["v", 1], ["not-1", 2]]]
    assert BroadcastOptions().local is False
    _ = Socket
