"""Fixtures for the adapter tests: a Redis server, and deployments of one or more nodes.

A *deployment* is a set of roomcast nodes that act as one server: the in-memory adapter
(one node), or ``RedisCluster`` nodes sharing a Redis (in this process, each with its own
``Server``). Clients connect to node ``i % len(nodes)`` over in-memory streams, so the
same test runs unchanged on every deployment.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import pytest
import trio

from roomcast.engine import Config, Server
from roomcast.engine.adapters.redis import RedisCluster, RedisSettings
from tests.engine.conftest import MemoryServer, RawClient, open_memory_server

DEFAULT_REDIS: Final = ("127.0.0.1", 6379)

# coredis 6 leaves the anyio memory streams of a connection that failed to connect
# unclosed (it creates them in BaseConnection.__init__ and closes them only once
# connected); their ResourceWarning at garbage collection is not ours. Tests that make
# connections fail take this mark and the ``collect_garbage`` fixture.
FAILED_CONNECT_LEAK: Final = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)
REDIS_START_TIMEOUT: Final = 10.0


def redis_answers(host: str, port: int) -> bool:
    """Whether a Redis server answers PING at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@attrs.define(eq=False)
class PrivateRedis:
    """A redis-server of the test's own, in a temporary directory (killed by PID)."""

    port: int
    directory: Path
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is required for the scale-out tests (see .ci/run)")
        self.process = subprocess.Popen(
            [
                server,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (by its PID) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis every scale-out test can use: the one on 127.0.0.1:6379 (which .ci/run
    starts), or else a private one. Tests isolate themselves with a channel prefix."""
    if redis_answers(*DEFAULT_REDIS):
        yield "redis://127.0.0.1:6379/0"
        return
    with tempfile.TemporaryDirectory(prefix="roomcast-redis-") as directory:
        private = PrivateRedis(port=free_port(), directory=Path(directory))
        private.start()
        try:
            yield private.url
        finally:
            private.kill()


async def _forget_keys(url: str, pattern: str) -> None:
    import coredis

    async with coredis.Redis.from_url(url) as client:
        async for key in client.scan_iter(match=pattern):
            await client.delete([key])


@pytest.fixture
def collect_garbage() -> Iterator[None]:
    """Collect the leaked streams while the test's warning filter still applies."""
    yield
    gc.collect()


@pytest.fixture(scope="session", autouse=True)
def _forget_test_keys(redis_url: str) -> Iterator[None]:
    """At the end, delete what this run's clusters left in Redis (their shared logs)."""
    yield
    trio.run(_forget_keys, redis_url, f"rc-test-{os.getpid()}-*")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server only this test uses (so it may kill it); started by the test."""
    private = PrivateRedis(port=free_port(), directory=tmp_path)
    try:
        yield private
    finally:
        private.kill()


def unique_prefix() -> str:
    """A channel prefix no other test (or run) uses."""
    return f"rc-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fast_settings(
    url: str, prefix: str, *, request_timeout: float = 3.0, shared_log: bool = False
) -> RedisSettings:
    """Settings with short timers, for tests."""
    return RedisSettings(
        shared_log=shared_log,
        url=url,
        channel_prefix=prefix,
        heartbeat_interval=0.2,
        node_timeout=1.0,
        request_timeout=request_timeout,
        reconnect_interval=0.05,
        max_reconnect_interval=0.5,
    )


@attrs.define(eq=False)
class Node:
    """One node of a deployment: its server, its cluster membership (None: in-memory)."""

    server: Server
    memory: MemoryServer
    cluster: RedisCluster | None


@attrs.define(eq=False)
class Deployment:
    """Nodes acting as one server; ``client(i)`` connects to node ``i % len(nodes)``."""

    kind: str
    nodes: list[Node]

    def node_of(self, index: int) -> Node:
        return self.nodes[index % len(self.nodes)]

    @asynccontextmanager
    async def client(self, index: int) -> AsyncIterator[RawClient]:
        async with self.node_of(index).memory.client() as client:
            yield client

    def socket(self, sid: str, namespace: str = "/") -> object:
        for node in self.nodes:
            found = node.server.of(namespace).sockets.get(sid)
            if found is not None:
                return found
        raise KeyError(sid)


DEPLOYMENTS: Final = ("memory", "redis-1", "redis-3", "redis-3-log")
"""``-log``: with the cluster's shared log on Redis Streams."""


@asynccontextmanager
async def open_deployment(
    kind: str, build: Callable[..., Server], redis_url: str, *, config: Config | None = None
) -> AsyncIterator[Deployment]:
    """Run the nodes of ``kind`` (one of ``DEPLOYMENTS``) built with ``build``."""
    config = config or Config()
    count = 3 if kind.startswith("redis-3") else 1
    prefix = unique_prefix()
    async with trio.open_nursery() as nursery:
        nodes: list[Node] = []
        for _ in range(count):
            cluster = None
            if kind == "memory":
                server = build(config=config)
            else:
                settings = fast_settings(redis_url, prefix, shared_log=kind.endswith("-log"))
                cluster = RedisCluster(settings=settings)
                server = build(config=config, adapter_factory=cluster.adapter_factory)
                await nursery.start(cluster.run)
                assert cluster.connected
            memory = await nursery.start(_serve_memory, server)
            nodes.append(Node(server=server, memory=memory, cluster=cluster))
        for node in nodes:
            if node.cluster is not None:
                await node.cluster.wait_until(lambda status: len(status.peers) == count - 1)
        try:
            yield Deployment(kind=kind, nodes=nodes)
        finally:
            nursery.cancel_scope.cancel()


async def _serve_memory(
    server: Server, *, task_status: trio.TaskStatus[MemoryServer] = trio.TASK_STATUS_IGNORED
) -> None:
    async with open_memory_server(server) as memory:
        task_status.started(memory)
        await trio.sleep_forever()
