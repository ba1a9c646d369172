"""``roomcast.engine.client`` against a real Node ``socket.io`` 4.8 server.

The peer is ``tests/js/node_server.mjs`` (one process for the module, three servers in it:
JSON parser, msgpack parser, and a fast heartbeat). Everything runs on real sockets on
127.0.0.1, so these tests use real time; each one has a deadline. A small TCP proxy in
this module lets a test cut, freeze or refuse the connection under the client.
"""

from __future__ import annotations

import json
import select
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Final

import attrs
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from roomcast.engine.client import Client, ClientConfig, backoff_delay, open_client
from roomcast.engine.errors import (
    ConnectionFailedError,
    ConnectionLostError,
    ConnectRefusedError,
    EventOverrunError,
    HandlerError,
    NamespaceDisconnected,
)
from roomcast.protocol import JsonValue, LocalProtocolError

pytestmark = pytest.mark.node

DEADLINE: Final = 10.0
ADMIN_AUTH: Final[dict[str, JsonValue]] = {"token": "s3cret"}
FAST_RECONNECT: Final = ClientConfig(reconnection_delay=0.05, randomization_factor=0.0)


# --------------------------------------------------------------------------- the peer


@pytest.fixture(scope="module")
def node_ports(js_peers: Path) -> Iterator[dict[str, int]]:
    """Run node_server.mjs for this module; return its ports by server name."""
    proc = subprocess.Popen(
        ["node", str(js_peers / "node_server.mjs")],
        cwd=js_peers,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        if not ready:
            pytest.fail("node_server.mjs did not print its ports within 20 s")
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"node_server.mjs exited at once with {proc.wait()}")
        yield json.loads(line)
    finally:
        proc.stdin.close()  # the server exits when its stdin closes
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def connected(client: Client) -> bool:
    # A function, so that mypy does not narrow the property across awaits.
    return client.connected


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


async def disconnect_reason(client: Client, sid: str) -> JsonValue:
    """Ask the server why its socket ``sid`` disconnected (it waits for it)."""
    (reason,) = await client.call("disconnect-reason", sid)
    return reason


@attrs.define(eq=False)
class Lifecycle:
    """Records a namespace's connect/disconnect handler calls; waits for the n-th one."""

    events: list[tuple[str, ...]] = attrs.Factory(list)
    _changed: trio.Event = attrs.Factory(trio.Event)

    @classmethod
    def of(cls, client: Client, namespace: str = "/") -> Lifecycle:
        recorder = cls()

        @client.on("connect", namespace=namespace)
        async def on_connect() -> None:
            recorder._add(("connect",))

        @client.on("disconnect", namespace=namespace)
        async def on_disconnect(reason: str) -> None:
            recorder._add(("disconnect", reason))

        return recorder

    def _add(self, event: tuple[str, ...]) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_connects(self, count: int) -> None:
        while sum(event[0] == "connect" for event in self.events) < count:
            await self._changed.wait()


async def whoami(client: Client, namespace: str = "/") -> dict[str, JsonValue]:
    (info,) = await client.call("whoami", namespace=namespace)
    assert isinstance(info, dict)
    return info


# --------------------------------------------------------------------------- a TCP proxy


@attrs.define(eq=False)
class _Link:
    scope: trio.CancelScope
    frozen: bool = False


@attrs.define(eq=False)
class TcpProxy:
    """Forwards 127.0.0.1:``port`` to the server; can cut, freeze and refuse."""

    port: int
    target: int
    listener: trio.SocketListener
    links: list[_Link] = attrs.Factory(list)

    def cut(self) -> None:
        """Drop every current connection (the client sees its transport close)."""
        for link in self.links:
            link.scope.cancel()

    def freeze(self) -> None:
        """From now on, drop what the server sends on the current connections."""
        for link in self.links:
            link.frozen = True

    async def refuse(self) -> None:
        """Stop listening (new connections are refused) and cut the current ones."""
        await self.listener.aclose()
        self.cut()

    async def serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await self.listener.accept()
                except trio.ClosedResourceError:
                    break  # refused
                nursery.start_soon(self._link, stream)

    async def _link(self, downstream: trio.SocketStream) -> None:
        link = _Link(scope=trio.CancelScope())
        self.links.append(link)
        with link.scope:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
            async with downstream, upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, downstream, upstream, link, False)
                nursery.start_soon(self._pump, upstream, downstream, link, True)
        await trio.aclose_forcefully(downstream)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, link: _Link, to_client: bool
    ) -> None:
        try:
            while data := await source.receive_some(65_536):
                if not (to_client and link.frozen):
                    await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        link.scope.cancel()


@asynccontextmanager
async def open_proxy(target: int) -> AsyncIterator[TcpProxy]:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    proxy = TcpProxy(port=listener.socket.getsockname()[1], target=target, listener=listener)
    async with listener, trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        yield proxy
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- connect


async def test_connect_with_auth(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"]), auth={"user": "ada", "n": 1}) as client:
            assert connected(client)
            info = await whoami(client)
            assert info["auth"] == {"user": "ada", "n": 1}
            assert info["namespace"] == "/"
            assert info["sid"] == client.sid()
        assert not connected(client)
        assert client.sid() is None


async def test_headers_and_query_reach_the_server(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(
            url(node_ports["json"]) + "/?extra=yes",
            ClientConfig(headers={"X-Roomcast-Test": "hello"}),
        ) as client:
            info = await whoami(client)
            assert info["header"] == "hello"
            assert info["query"] == "yes"


async def test_refused_connect_raises_with_the_servers_data(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        with pytest.raises(ConnectRefusedError) as caught:
            async with open_client(
                url(node_ports["json"]), namespaces=("/admin",), auth={"token": "wrong"}
            ):
                pytest.fail("the block must not run")  # pragma: no cover
    assert caught.value.namespace == "/admin"
    assert caught.value.message == "not authorized"
    assert caught.value.data == {"reason": "bad token"}


async def test_unknown_namespace_is_refused(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"])) as client:
            with pytest.raises(ConnectRefusedError) as caught:
                await client.connect_namespace("/nowhere")
            assert caught.value.message == "Invalid namespace"
            # The refusal ended only that namespace.
            assert await client.call("echo", "still here") == ("still here",)
            with pytest.raises(ConnectRefusedError):
                await client.emit("echo", namespace="/nowhere")


async def test_two_namespaces_share_one_connection(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(
            url(node_ports["json"]), namespaces={"/": {"who": "root"}, "/admin": ADMIN_AUTH}
        ) as client:
            root, admin = await whoami(client), await whoami(client, "/admin")
            assert root["namespace"] == "/"
            assert admin["namespace"] == "/admin"
            assert root["auth"] == {"who": "root"}
            assert admin["auth"] == ADMIN_AUTH
            assert root["eio"] == admin["eio"]  # one Engine.IO session
            assert root["sid"] != admin["sid"]
            assert client.sid("/admin") == admin["sid"]


async def test_connect_namespace_later_with_auth(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"])) as client:
            with pytest.raises(ConnectRefusedError) as caught:
                await client.connect_namespace("/admin", auth={"token": "nope"})
            assert caught.value.data == {"reason": "bad token"}
            sid = await client.connect_namespace("/admin", auth=ADMIN_AUTH)
            info = await whoami(client, "/admin")
            assert info["sid"] == sid
            assert info["eio"] == (await whoami(client))["eio"]
            with pytest.raises(ValueError, match="already connected"):
                await client.connect_namespace("/admin", auth=ADMIN_AUTH)


async def test_connection_failure_raises() -> None:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now
    with trio.fail_after(DEADLINE), pytest.raises(ConnectionFailedError):
        async with open_client(url(port)):
            pytest.fail("the block must not run")  # pragma: no cover


async def test_an_http_refusal_carries_its_status() -> None:
    async def refuse(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(4096)
            await stream.send_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), refuse, 0)
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(ConnectionFailedError) as caught:
                async with open_client(url(port)):
                    pytest.fail("the block must not run")  # pragma: no cover
            nursery.cancel_scope.cancel()
    assert caught.value.status_code == 403


async def _fake_server(behaviour: str, stream: trio.SocketStream) -> None:
    """A server that fails the client in one way: it says nothing (``"silent-tcp"``),
    upgrades to WebSocket and says nothing (``"silent-ws"``), or sends garbage."""
    ws = WSConnection(ConnectionType.SERVER)
    async with stream:
        while data := await stream.receive_some(4096):
            if behaviour == "silent-tcp":
                continue
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    await stream.send_all(ws.send(AcceptConnection()))
                    if behaviour == "garbage":
                        await stream.send_all(ws.send(TextMessage(data="9 not engine.io")))


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("silent-tcp", "no connection within"),
        ("silent-ws", "not connected within"),
        ("garbage", "parse error"),
    ],
)
async def test_a_broken_server_fails_the_connect(behaviour: str, message: str) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, host="127.0.0.1"), partial(_fake_server, behaviour), 0
            )
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(ConnectionFailedError, match=message):
                async with open_client(url(port), ClientConfig(timeout=0.2)):
                    pytest.fail("the block must not run")  # pragma: no cover
            nursery.cancel_scope.cancel()


async def test_an_auth_provider_error_stops_the_client(node_ports: dict[str, int]) -> None:
    def auth(namespace: str) -> dict[str, JsonValue]:
        raise RuntimeError(f"no token for {namespace}")

    with trio.fail_after(DEADLINE), pytest.raises(HandlerError) as caught:
        async with open_client(url(node_ports["json"]), auth=auth):
            pytest.fail("the block must not run")  # pragma: no cover
    assert caught.value.event == "auth"
    assert isinstance(caught.value.__cause__, RuntimeError)


# --------------------------------------------------------------------------- events and acks


async def test_call_returns_the_servers_ack_arguments(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"])) as client:
            assert await client.call("echo", 1, "two", [3], {"four": None}) == (
                1,
                "two",
                [3],
                {"four": None},
            )
            assert await client.call("echo") == ()
            # Without an ack the server emits "echo" back.
            await client.emit("echo", "no ack")
            assert await client.receive() == ("echo", ("no ack",))


async def test_handlers_answer_the_servers_acks(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"])) as client:

            @client.on("one")
            async def one(x: JsonValue) -> JsonValue:
                return {"got": x}

            @client.on("many")
            async def many(x: JsonValue, y: JsonValue) -> tuple[JsonValue, ...]:
                return (y, x, "!")

            @client.on("nothing")
            async def nothing() -> None:
                return None

            assert await client.call("call-client", "one", 5) == ({"answer": [{"got": 5}]},)
            assert await client.call("call-client", "many", 1, 2) == ({"answer": [2, 1, "!"]},)
            assert await client.call("call-client", "nothing") == ({"answer": []},)


async def test_handlers_run_in_order_and_receive_gets_the_rest(
    node_ports: dict[str, int],
) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"])) as client:
            seen: list[JsonValue] = []

            @client.on("tick")
            async def tick(n: JsonValue) -> None:
                await trio.lowlevel.checkpoint()  # a handler that awaits keeps its place
                seen.append(n)

            for n in range(20):
                await client.emit("emit-back", "tick", n)
            await client.emit("emit-back", "untaken", "x")
            assert await client.receive() == ("untaken", ("x",))
            assert seen == list(range(20))


async def test_on_any_takes_unhandled_events(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"])) as client:
            got: list[tuple[str, tuple[JsonValue, ...]]] = []

            @client.on_any
            async def anything(name: str, *args: JsonValue) -> str:
                got.append((name, args))
                return f"any:{name}"

            assert await client.call("call-client", "whatever", 1) == (
                {"answer": ["any:whatever"]},
            )
            assert got == [("whatever", (1,))]


async def test_binary_both_ways(node_ports: dict[str, int]) -> None:
    payload = bytes(range(256))
    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"])) as client:
            nested: dict[str, JsonValue] = {"a": [b"x", {"b": payload}], "c": b""}
            assert await client.call("echo", payload, nested, "text") == (
                payload,
                nested,
                "text",
            )
            await client.emit("emit-back", "blob", b"\x00\xff", [b"1", b"2"])
            assert await client.receive() == ("blob", (b"\x00\xff", [b"1", b"2"]))

            @client.on("bin")
            async def bin_handler(data: JsonValue) -> JsonValue:
                assert isinstance(data, bytes)
                return data[::-1]

            # The server's answer to our binary ack comes back as a Node Buffer.
            assert await client.call("call-client", "bin", b"abc") == ({"answer": [b"cba"]},)


async def test_a_cancelled_call_ignores_its_late_answer(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"])) as client:
            answered = trio.Event()

            @client.on("slow")
            async def slow() -> str:
                await trio.sleep(0.05)
                answered.set()
                return "late"

            with trio.move_on_after(0.01) as scope:
                await client.call("call-client", "slow")
            assert scope.cancelled_caught
            await answered.wait()
            # The server's ack of the cancelled call arrives now and is dropped.
            assert await client.call("echo", "next") == ("next",)
            assert await client.call("call-client", "slow") == ({"answer": ["late"]},)


async def test_reserved_names_and_bad_arguments_are_refused(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"])) as client:
            with pytest.raises(ValueError, match="reserved"):
                await client.emit("disconnect")
            with pytest.raises(ValueError, match="reserved"):
                client.on("connect_error")
            with pytest.raises(TypeError, match="async def"):
                client.on("x")(lambda: None)  # type: ignore[type-var]  # on purpose
            with pytest.raises(ValueError, match="not connected"):
                await client.emit("echo", namespace="/admin")
            with pytest.raises(ValueError, match="namespace"):
                client.on("x", namespace="admin")
            with pytest.raises(LocalProtocolError):
                await client.emit("echo", {1, 2})  # type: ignore[arg-type]  # on purpose
            assert await client.call("echo", "ok") == ("ok",)


# --------------------------------------------------------------------------- disconnects


async def test_server_side_disconnect(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"])) as client:
            lifecycle = Lifecycle.of(client)
            await client.emit("emit-back", "before", 1)
            await client.emit("kick")
            # What came before the DISCONNECT is still there, then the end.
            assert await client.receive() == ("before", (1,))
            with pytest.raises(NamespaceDisconnected) as caught:
                await client.receive()
            assert caught.value.reason == "io server disconnect"
            assert lifecycle.events == [("connect",), ("disconnect", "io server disconnect")]
            assert not connected(client)  # its last namespace left: the connection closed
            assert client.sid() is None
            with pytest.raises(NamespaceDisconnected):
                await client.emit("echo")
            # Not reconnected on its own; connecting again is explicit.
            await client.connect_namespace("/")
            assert connected(client)
            assert await client.call("echo", 1) == (1,)
            await lifecycle.wait_connects(2)


async def test_client_side_disconnect_of_one_namespace(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(
            url(node_ports["json"]), namespaces={"/": None, "/admin": ADMIN_AUTH}
        ) as client:
            admin_sid = client.sid("/admin")
            assert admin_sid is not None
            await client.disconnect("/admin")
            with pytest.raises(NamespaceDisconnected) as caught:
                await client.receive("/admin")
            assert caught.value.reason == "io client disconnect"
            assert connected(client)
            assert await disconnect_reason(client, admin_sid) == "client namespace disconnect"


async def test_disconnect_everything_then_connect_again(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(
            url(node_ports["json"]), namespaces={"/": None, "/admin": ADMIN_AUTH}
        ) as client:
            eio = (await whoami(client))["eio"]
            await client.disconnect()
            assert not connected(client)
            for namespace in ("/", "/admin"):
                with pytest.raises(NamespaceDisconnected) as caught:
                    await client.receive(namespace)
                assert caught.value.reason == "io client disconnect"
            await client.disconnect()  # again: nothing to do
            await client.connect_namespace("/admin", auth=ADMIN_AUTH)
            assert connected(client)
            assert (await whoami(client, "/admin"))["eio"] != eio  # a new connection


async def test_exit_disconnects_cleanly(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"])) as observer:
            async with open_client(url(node_ports["json"])) as client:
                sid = client.sid()
                assert sid is not None
            # A DISCONNECT went out before the connection closed.
            assert await disconnect_reason(observer, sid) == "client namespace disconnect"
            # After the block, receive ends instead of waiting forever.
            with pytest.raises(NamespaceDisconnected):
                await client.receive()
            with pytest.raises(NamespaceDisconnected):
                await client.emit("echo")


async def test_reconnect_after_the_server_drops_the_transport(node_ports: dict[str, int]) -> None:
    auth_calls: list[str] = []

    async def auth(namespace: str) -> dict[str, JsonValue]:
        auth_calls.append(namespace)
        return {"attempt": len(auth_calls)}

    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"]), FAST_RECONNECT, auth=auth) as client:
            lifecycle = Lifecycle.of(client)
            first = await whoami(client)
            assert first["auth"] == {"attempt": 1}
            lost: list[ConnectionLostError] = []

            async def pending_call() -> None:
                with pytest.raises(ConnectionLostError) as caught:
                    await client.call("hold")  # the server never answers it
                lost.append(caught.value)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pending_call)
                await trio.testing.wait_all_tasks_blocked()
                await client.emit("drop")  # server: socket.conn.close()
            assert lost[0].reason == "transport close"

            await lifecycle.wait_connects(2)
            assert lifecycle.events == [
                ("connect",),
                ("disconnect", "transport close"),
                ("connect",),
            ]
            second = await whoami(client)
            assert second["sid"] != first["sid"]
            assert second["sid"] == client.sid()
            assert second["auth"] == {"attempt": 2}  # the provider runs again


async def test_reconnect_through_a_cut_connection(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with (
            open_proxy(node_ports["json"]) as proxy,
            open_client(
                url(proxy.port),
                FAST_RECONNECT,
                namespaces={"/": None, "/admin": ADMIN_AUTH},
            ) as client,
        ):
            lifecycle = Lifecycle.of(client, "/admin")
            first = await whoami(client, "/admin")
            proxy.cut()
            await lifecycle.wait_connects(2)
            assert lifecycle.events[1][0] == "disconnect"
            second = await whoami(client, "/admin")
            assert second["eio"] != first["eio"]
            assert second["auth"] == ADMIN_AUTH
            assert await client.call("echo", "root") == ("root",)


async def test_reconnect_gives_up_after_max_attempts(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with (
            open_proxy(node_ports["json"]) as proxy,
            open_client(
                url(proxy.port), attrs.evolve(FAST_RECONNECT, reconnection_attempts=2)
            ) as client,
        ):
            assert await client.call("echo", 1) == (1,)
            await proxy.refuse()
            with pytest.raises(NamespaceDisconnected) as caught:
                await client.receive()
            assert caught.value.reason == "reconnect failed"
            with pytest.raises(NamespaceDisconnected):
                await client.call("echo", 2)
            assert not connected(client)


async def test_no_reconnect_when_disabled(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(url(node_ports["json"]), ClientConfig(reconnection=False)) as client:
            await client.emit("drop")
            with pytest.raises(NamespaceDisconnected) as caught:
                await client.receive()
            assert caught.value.reason == "transport close"


# --------------------------------------------------------------------------- heartbeat


async def test_pings_are_answered(node_ports: dict[str, int]) -> None:
    # Real time against a real peer: pingInterval 200 ms + pingTimeout 200 ms, so a
    # client that did not answer would be dropped within 0.4 s.
    with trio.fail_after(DEADLINE):
        async with open_client(
            url(node_ports["fastping"]), ClientConfig(reconnection=False)
        ) as client:
            lifecycle = Lifecycle.of(client)
            sid = client.sid()
            await trio.sleep(1.0)
            assert lifecycle.events == [("connect",)]
            assert client.sid() == sid
            assert (await whoami(client))["sid"] == sid


async def test_silent_server_is_a_ping_timeout(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with (
            open_proxy(node_ports["fastping"]) as proxy,
            open_client(url(proxy.port), FAST_RECONNECT) as client,
        ):
            lifecycle = Lifecycle.of(client)
            proxy.freeze()  # the server's pings no longer arrive
            await lifecycle.wait_connects(2)
            assert lifecycle.events == [
                ("connect",),
                ("disconnect", "ping timeout"),
                ("connect",),
            ]
            assert await client.call("echo", "back") == ("back",)


# --------------------------------------------------------------------------- msgpack


async def test_msgpack_parser(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE):
        async with open_client(
            url(node_ports["msgpack"]),
            ClientConfig(parser="msgpack"),
            namespaces={"/": {"k": "v"}, "/admin": ADMIN_AUTH},
        ) as client:
            assert (await whoami(client))["auth"] == {"k": "v"}
            assert await client.call("echo", 1, b"\x01\x02", {"x": [b"y"]}) == (
                1,
                b"\x01\x02",
                {"x": [b"y"]},
            )

            @client.on("q", namespace="/admin")
            async def q(x: JsonValue) -> JsonValue:
                return [x, b"\xff"]

            assert await client.call("call-client", "q", 7, namespace="/admin") == (
                {"answer": [[7, b"\xff"]]},
            )
            await client.emit("emit-back", "pushed", b"\x00", namespace="/admin")
            assert await client.receive("/admin") == ("pushed", (b"\x00",))
            with pytest.raises(ConnectRefusedError) as caught:
                await client.connect_namespace("/nowhere")
            assert caught.value.message == "Invalid namespace"


# --------------------------------------------------------------------------- failures


async def test_a_handler_error_stops_the_client(node_ports: dict[str, int]) -> None:
    body_cancelled = trio.Event()

    async def run() -> None:
        async with open_client(url(node_ports["json"])) as client:

            @client.on("boom")
            async def boom() -> None:
                raise KeyError("broken handler")

            await client.emit("emit-back", "boom")
            try:
                # A nursery in the block: its Cancelled comes out in a group.
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trio.sleep_forever)
                    await trio.sleep_forever()
            finally:
                body_cancelled.set()

    with trio.fail_after(DEADLINE), pytest.raises(HandlerError) as caught:
        await run()
    assert body_cancelled.is_set()
    assert caught.value.event == "boom"
    assert isinstance(caught.value.__cause__, KeyError)


async def test_an_ack_that_is_not_json_stops_the_client(node_ports: dict[str, int]) -> None:
    async def run() -> None:
        async with open_client(url(node_ports["json"])) as client:

            @client.on("q")
            async def q() -> object:
                return {1, 2}  # not JSON

            await client.call("call-client", "q")

    with trio.fail_after(DEADLINE), pytest.raises(HandlerError) as caught:
        await run()
    assert caught.value.event == "q"
    assert isinstance(caught.value.__cause__, LocalProtocolError)


async def test_overrun_is_an_error(node_ports: dict[str, int]) -> None:
    async def run() -> None:
        async with open_client(
            url(node_ports["json"]), ClientConfig(max_buffered_events=3)
        ) as client:
            for n in range(10):  # never received
                await client.emit("emit-back", "flood", n)
            await trio.sleep_forever()

    with trio.fail_after(DEADLINE), pytest.raises(EventOverrunError) as caught:
        await run()
    assert caught.value.namespace == "/"
    assert caught.value.max_buffered_events == 3


async def test_the_bodys_own_error_comes_out_unwrapped(node_ports: dict[str, int]) -> None:
    with trio.fail_after(DEADLINE), pytest.raises(ZeroDivisionError):
        async with open_client(url(node_ports["json"])):
            _ = 1 / 0


# --------------------------------------------------------------------------- backoff


def test_backoff_doubles_up_to_the_maximum() -> None:
    def delays(randomization: float, rnd: float) -> list[float]:
        return [
            backoff_delay(
                n, base=0.5, maximum=5.0, randomization=randomization, random_source=lambda: rnd
            )
            for n in range(1, 8)
        ]

    assert delays(0.0, 0.9) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert delays(0.5, 0.0) == [0.25, 0.5, 1.0, 2.0, 2.5, 2.5, 2.5]
    assert delays(0.5, 0.5) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert delays(0.5, 0.99)[:2] == pytest.approx([0.745, 1.49])
    assert delays(0.5, 0.99)[-1] == 5.0  # the spread never goes past the maximum
    assert (
        backoff_delay(10_000, base=0.5, maximum=5.0, randomization=0.0, random_source=lambda: 0.0)
        == 5.0
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"randomization_factor": 2.0}, "randomization"),
        ({"reconnection_delay": 3.0, "reconnection_delay_max": 1.0}, "reconnection_delay"),
        ({"reconnection_attempts": -1}, "reconnection_attempts"),
        ({"transports": ("carrier-pigeon",)}, "transports"),
        ({"transports": "polling"}, "transports"),
        ({"timeout": 0}, "timeout"),
        ({"max_buffered_events": 0}, "max_buffered_events"),
        ({"send_buffer_size": 0}, "send_buffer_size"),
        ({"parser": "yaml"}, "parser"),
        ({"path": "socket.io"}, "path"),
    ],
)
def test_bad_config(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        ClientConfig(**kwargs)  # type: ignore[arg-type]  # on purpose


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"namespaces": ("nope",)}, "namespace"),
        ({"namespaces": {"/": None}, "auth": {"a": 1}}, "auth"),
    ],
)
async def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        async with open_client("http://127.0.0.1:9", **kwargs):  # type: ignore[arg-type]  # on purpose
            pytest.fail("the block must not run")  # pragma: no cover
