"""roomcast's client against a real Node ``socket.io`` 4.8 server: long-polling, the
upgrade, connection state recovery, backoff across a server restart, and TLS.

The peer is ``tests/js/node_server.mjs``, here started with an HTTPS server too (its
certificate from a ``trustme`` test CA). Real sockets on 127.0.0.1, so real time; each
test has a deadline.
"""

from __future__ import annotations

import json
import select
import ssl
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import attrs
import pytest
import trio
import trustme

from roomcast.engine.client import Client, ClientConfig, open_client
from roomcast.engine.errors import ConnectionFailedError
from roomcast.engine.transport.eio_client import TransportName
from roomcast.protocol import JsonValue

pytestmark = pytest.mark.node

DEADLINE: Final = 15.0
POLLING: Final[tuple[TransportName, ...]] = ("polling",)
UPGRADING: Final[tuple[TransportName, ...]] = ("polling", "websocket")
WEBSOCKET: Final[tuple[TransportName, ...]] = ("websocket",)


@attrs.define(eq=False)
class NodeServer:
    """One node_server.mjs process (started and stopped by PID)."""

    proc: subprocess.Popen[bytes]
    ports: dict[str, int]

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the server exits when its stdin closes
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_node(js_peers: Path, *args: str) -> NodeServer:
    proc = subprocess.Popen(
        ["node", str(js_peers / "node_server.mjs"), *args],
        cwd=js_peers,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    server = NodeServer(proc=proc, ports={})
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else b""
    if not line:
        server.stop()
        pytest.fail("node_server.mjs did not print its ports within 20 s")
    server.ports = json.loads(line)
    return server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def node(
    js_peers: Path, ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, int]]:
    """node_server.mjs with its HTTPS server; its ports by server name."""
    directory = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    server = start_node(js_peers, f"--tls-cert={cert_file}", f"--tls-key={key_file}")
    try:
        yield server.ports
    finally:
        server.stop()


def url(port: int, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{port}"


def on_upgrade(client: Client) -> trio.Event:
    upgraded = trio.Event()

    @client.on_manager("upgrade")
    async def upgrade(transport: str) -> None:
        upgraded.set()

    return upgraded


@attrs.define(eq=False)
class Recorder:
    """Everything handlers saw, in order; waits for a count of one kind."""

    events: list[tuple[str, tuple[JsonValue, ...]]] = attrs.Factory(list)
    _changed: trio.Event = attrs.Factory(trio.Event)

    def add(self, name: str, args: tuple[JsonValue, ...]) -> None:
        self.events.append((name, args))
        self._changed.set()
        self._changed = trio.Event()

    def of(self, name: str) -> list[tuple[JsonValue, ...]]:
        return [args for event, args in self.events if event == name]

    async def wait(self, name: str, count: int = 1) -> None:
        while len(self.of(name)) < count:
            await self._changed.wait()

    def watch(self, client: Client, *names: str) -> None:
        for name in names:
            self._watch(client, name)

    def _watch(self, client: Client, name: str) -> None:
        async def handler(*args: JsonValue) -> None:
            self.add(name, args)

        if name.startswith("reconnect"):
            client.on_manager(name)(handler)  # type: ignore[arg-type]  # a manager event
        else:
            client.on(name)(handler)


# --------------------------------------------------------------------------- transports


@pytest.mark.parametrize("transports", [POLLING, UPGRADING], ids=["polling", "upgrade"])
async def test_polling_and_the_upgrade(
    node: dict[str, int], transports: Sequence[TransportName]
) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url(node["json"]), ClientConfig(transports=transports)) as client:
            upgraded = on_upgrade(client)
            payload: tuple[JsonValue, ...] = ("text", {"n": [1, 2]}, b"\x00\x1e\xff")
            assert await client.call("echo", *payload) == payload
            await client.emit("emit-back", "back", "over", b"\x01")
            assert await client.receive() == ("back", ("over", b"\x01"))
            if transports == UPGRADING:
                await upgraded.wait()
                assert client.transport == "websocket"
                assert await client.call("transport") == ("websocket",)
                assert await client.call("echo", b"\x02") == (b"\x02",)
            else:
                assert client.transport == "polling"
                assert await client.call("transport") == ("polling",)


async def test_polling_with_the_msgpack_parser(node: dict[str, int]) -> None:
    config = ClientConfig(transports=POLLING, parser="msgpack")
    with trio.fail_after(DEADLINE):
        async with open_client(url(node["msgpack"]), config) as client:
            assert await client.call("echo", 1, b"\x01\x02") == (1, b"\x01\x02")


@pytest.mark.parametrize("transports", [WEBSOCKET, UPGRADING], ids=["websocket", "upgrade"])
async def test_recovery_after_a_dropped_transport(
    node: dict[str, int], transports: Sequence[TransportName]
) -> None:
    # The client comes back after 1 s: meanwhile another client broadcasts to its room.
    config = ClientConfig(transports=transports, reconnection_delay=1.0, randomization_factor=0.0)
    with trio.fail_after(DEADLINE):
        async with (
            open_client(url(node["recovery"])) as other,
            open_client(url(node["recovery"]), config) as client,
        ):
            seen = Recorder()
            seen.watch(client, "m", "connect", "disconnect")
            upgraded = on_upgrade(client)
            await client.call("join", "r")
            if transports == UPGRADING:
                await upgraded.wait()
            await other.call("to-room", "r", "one")
            await seen.wait("m")
            sid = client.sid()
            assert not client.recovered()
            assert await client.call("recovered") == (False,)

            await client.emit("drop")  # the server closes the Engine.IO connection
            await seen.wait("disconnect")
            await other.call("to-room", "r", "two")
            await other.call("to-room", "r", "three")
            await seen.wait("connect", 2)
            assert client.recovered()
            assert client.sid() == sid
            assert await client.call("recovered") == (True,)
            await seen.wait("m", 3)
            texts = [args[0] for args in seen.of("m")]
            assert texts == ["one", "two", "three"]
            offsets = [args[-1] for args in seen.of("m")]
            assert len(set(offsets)) == 3  # each with its own offset (kept as npm does)
            await other.call("to-room", "r", "four")  # still in its room
            await seen.wait("m", 4)


async def test_backoff_across_a_server_restart(js_peers: Path) -> None:
    first = await trio.to_thread.run_sync(start_node, js_peers)
    port = first.ports["json"]
    config = ClientConfig(
        reconnection_delay=0.2, reconnection_delay_max=0.4, randomization_factor=0.0
    )
    second: NodeServer | None = None
    try:
        with trio.fail_after(DEADLINE):
            async with open_client(url(port), config) as client:
                seen = Recorder()
                seen.watch(
                    client,
                    "connect",
                    "disconnect",
                    "reconnect_attempt",
                    "reconnect_error",
                    "reconnect",
                )
                sid = client.sid()
                await trio.to_thread.run_sync(first.stop)
                await seen.wait("reconnect_error", 2)  # refused while it is down
                await client.emit("echo", "sent while away")  # kept in the send buffer
                second = await trio.to_thread.run_sync(start_node, js_peers, f"--json-port={port}")
                await seen.wait("reconnect")
                (attempt,) = seen.of("reconnect")[0]
                assert isinstance(attempt, int)
                assert len(seen.of("reconnect_error")) == attempt - 1 >= 2
                numbers = [args[0] for args in seen.of("reconnect_attempt")]
                assert numbers == list(range(1, attempt + 1))
                assert client.sid() != sid
                assert await client.receive() == ("echo", ("sent while away",))
                assert await client.call("echo", "back") == ("back",)
    finally:
        with trio.move_on_after(15, shield=True):
            for server in (first, second):
                if server is not None and server.proc.returncode is None:
                    await trio.to_thread.run_sync(server.stop)


# --------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("transports", [WEBSOCKET, UPGRADING], ids=["wss", "https-upgrade"])
async def test_tls_with_a_test_ca(
    node: dict[str, int], ca: trustme.CA, transports: Sequence[TransportName]
) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    config = ClientConfig(transports=transports)
    with trio.fail_after(DEADLINE):
        async with open_client(url(node["tls"], "https"), config, ssl_context=context) as client:
            upgraded = on_upgrade(client)
            assert await client.call("echo", "secret", b"\x00") == ("secret", b"\x00")
            if transports == UPGRADING:
                await upgraded.wait()
            assert await client.call("transport") == ("websocket",)


@pytest.mark.parametrize("transports", [WEBSOCKET, POLLING], ids=["wss", "https"])
async def test_tls_refuses_an_untrusted_certificate(
    node: dict[str, int], transports: Sequence[TransportName]
) -> None:
    # The system's trust store does not know the test CA.
    config = ClientConfig(transports=transports)
    with trio.fail_after(DEADLINE), pytest.raises(ConnectionFailedError, match="CERTIFICATE"):
        async with open_client(url(node["tls"], "https"), config):
            pytest.fail("the block must not run")  # pragma: no cover
