"""The harness and its fixtures: servers in the test, clients in one line, waits, records."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import trio
import trio.testing

from roomcast.engine import ConnectionFailedError, ConnectRefusedError, Server, Socket
from roomcast.engine.pytest_plugin import ServeFactory
from roomcast.engine.testing import (
    MEMORY_URL,
    Harness,
    HarnessClient,
    HarnessTransport,
    WaitTimeoutError,
    open_harness,
)
from roomcast.protocol import JsonValue

from .conftest import room_app


@pytest.fixture(params=["memory", "tcp"])
def roomcast_transport(request: pytest.FixtureRequest) -> HarnessTransport:
    # Overrides the plugin's fixture: every test here that uses roomcast_harness runs
    # once on in-memory streams and once on a real socket.
    transport: HarnessTransport = request.param
    return transport


# --------------------------------------------------------------------------- the plugin


def test_the_plugin_comes_from_the_installed_entry_point(pytestconfig: pytest.Config) -> None:
    (entry,) = [ep for ep in entry_points(group="pytest11") if ep.name == "roomcast"]
    assert entry.value == "roomcast.engine.pytest_plugin"
    plugin = pytestconfig.pluginmanager.get_plugin("roomcast")
    assert plugin is not None
    assert plugin.__name__ == "roomcast.engine.pytest_plugin"
    # Registered under the entry point's name, not as a conftest module.
    assert pytestconfig.pluginmanager.get_name(plugin) == "roomcast"


FRESH_PROJECT_TEST = """
import pytest
from roomcast.engine import Server, Socket


@pytest.fixture
def roomcast_app() -> Server:
    server = Server()

    @server.on("echo")
    async def echo(socket: Socket, value: object) -> object:
        return value

    return server


async def test_echo(roomcast_client) -> None:
    assert await roomcast_client.call("echo", 42) == (42,)


async def test_virtual_time(roomcast_client, autojump_clock) -> None:
    await trio_sleep(3600)


async def trio_sleep(seconds: float) -> None:
    import trio
    await trio.sleep(seconds)
"""

NO_APP_TEST = """
async def test_forgot_the_app(roomcast_harness) -> None:
    pass
"""


def test_a_project_without_any_conftest_gets_the_fixtures(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "pytest.ini").write_text(
        "[pytest]\ntrio_mode = true\nfilterwarnings = error\n", encoding="utf-8"
    )
    (tmp_path / "test_app.py").write_text(FRESH_PROJECT_TEST, encoding="utf-8")
    (tmp_path / "test_no_app.py").write_text(textwrap.dedent(NO_APP_TEST), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "2 passed, 1 error" in output, output
    assert "define a `roomcast_app` fixture" in output, output


# --------------------------------------------------------------------------- clients


async def test_clients_in_one_line_emit_call_and_wait_for(roomcast_harness: Harness) -> None:
    with trio.fail_after(10):
        alice = await roomcast_harness.connect()
        bob = await roomcast_harness.connect()
        assert await alice.call("join", "lobby") == (["lobby"],)
        assert await bob.call("join", "lobby") == (["lobby"],)
        await alice.emit("say", "lobby", "hello")
        assert await bob.wait_for("said") == ("hello",)
        assert await alice.wait_for("said") == ("hello",)
        assert await bob.call("say", "lobby", {"n": 1}) == (2,)
        assert await alice.receive() == ("said", ({"n": 1},))
        assert [r.args for r in bob.events("said")] == [("hello",), ({"n": 1},)]
        assert bob.args("said") == [("hello",), ({"n": 1},)]
        assert alice.sid() in roomcast_harness.sockets()
        assert alice.server_socket().rooms == {alice.sid(), "lobby"}
        expected_url = MEMORY_URL if roomcast_harness.transport == "memory" else "http://127.0.0"
        assert roomcast_harness.url.startswith(expected_url)


async def test_binary_and_the_msgpack_parser_default_to_the_servers(
    roomcast_serve: ServeFactory,
) -> None:
    from roomcast.protocol import MSGPACK_PARSER

    server = Server(parser=MSGPACK_PARSER)

    @server.on("echo")
    async def echo(socket: Socket, *args: object) -> tuple[object, ...]:
        return args

    harness = await roomcast_serve(server)
    with trio.fail_after(10):
        client = await harness.connect()
        assert await client.call("echo", b"\x00\xff", {"a": [1.5, None]}) == (
            b"\x00\xff",
            {"a": [1.5, None]},
        )


async def test_an_event_that_arrived_before_the_wait_is_not_missed(
    roomcast_harness: Harness,
) -> None:
    with trio.fail_after(10):
        client = await roomcast_harness.connect()
        await client.call("join", "r")
        for i in range(3):
            await client.call("say", "r", i)  # each one is delivered before the ack
        assert [r.event for r in client.pending()] == ["said", "said", "said"]
        assert await client.wait_for("said") == (0,)
        assert await client.wait_for("said") == (1,)
        assert [r.args for r in client.pending()] == [(2,)]
        assert len(client.received) == 3  # taking does not forget


async def test_a_wait_past_its_deadline_says_what_did_arrive(
    autojump_clock: trio.testing.MockClock, roomcast_serve: ServeFactory
) -> None:
    harness = await roomcast_serve(room_app())
    with trio.fail_after(100):
        client = await harness.connect()
        await client.call("join", "r")
        await client.call("say", "r", "not this one")
        start = trio.current_time()
        with pytest.raises(WaitTimeoutError) as info:
            await client.wait_for("other", within=7.5)
        assert trio.current_time() - start == pytest.approx(7.5)
        assert "no 'other' in namespace '/' within 7.5 s" in str(info.value)
        assert "said['not this one']" in str(info.value)
        with pytest.raises(WaitTimeoutError, match="no ack for 'stall'"):
            await client.call("stall", within=3.0)  # an ack timeout, in virtual time
        with pytest.raises(WaitTimeoutError, match="did not disconnect"):
            await client.wait_disconnected(within=1.0)
        with pytest.raises(WaitTimeoutError, match="did not disconnect"):
            await harness.wait_disconnect("nobody", within=1.0)


async def test_settle_shows_that_nothing_else_arrived(roomcast_serve: ServeFactory) -> None:
    harness = await roomcast_serve(room_app())
    with trio.fail_after(10):
        inside = await harness.connect()
        outside = await harness.connect()
        await inside.call("join", "r")
        await outside.emit("say", "r", "for the room")
        await harness.settle()
        assert inside.args("said") == [("for the room",)]
        assert outside.received == []


async def test_auth_namespaces_and_refusals(roomcast_harness: Harness) -> None:
    with trio.fail_after(10):
        with pytest.raises(ConnectRefusedError) as info:
            await roomcast_harness.connect("/admin", auth={"token": "wrong"})
        assert info.value.data == {"hint": "token"}
        admin = await roomcast_harness.connect("/admin", auth={"token": "s3cret"})
        assert await admin.call("whoami", namespace="/admin") == ("admin",)
        both = await roomcast_harness.connect(namespaces={"/": None, "/admin": {"token": "s3cret"}})
        assert both.sid("/") is not None
        assert both.sid("/admin") is not None
        later = await roomcast_harness.connect()
        sid = await later.connect_namespace("/admin", auth={"token": "s3cret"})
        assert later.server_socket("/admin").sid == sid
        with pytest.raises(LookupError):
            later.server_socket("/nowhere")
        with pytest.raises(ValueError, match="either namespace"):
            await roomcast_harness.connect("/admin", namespaces=["/"])


async def test_handlers_answer_the_server_and_unhandled_calls_are_not_acked(
    autojump_clock: trio.testing.MockClock, roomcast_serve: ServeFactory
) -> None:
    server = room_app()
    harness = await roomcast_serve(server)
    with trio.fail_after(30):
        polite = await harness.connect()
        mute = await harness.connect()

        @polite.on("question")
        async def answer(question: str) -> str:
            return question.upper()

        assert await polite.call("ask", "why?") == (["WHY?"],)
        assert polite.args("question") == [("why?",)]  # recorded, as handled...
        assert polite.pending() == []  # ...so no wait takes it
        result = await server.of("/").broadcast_operator().call("question", "who?", within=5.0)
        assert result.answers == {polite.sid(): ("WHO?",)}
        assert result.missing == {mute.sid()}  # no handler: no ack, as any client
        assert await mute.wait_for("question") == ("who?",)

        seen: list[tuple[object, ...]] = []

        @mute.on_any
        async def anything(name: str, *args: object) -> None:
            seen.append((name, *args))

        await mute.call("join", "r")
        await polite.call("say", "r", "hi")
        await harness.settle()
        assert seen == [("said", "hi")]
        assert mute.events("said")[0].handled


async def test_lifecycle_and_server_disconnect_reasons(roomcast_harness: Harness) -> None:
    with trio.fail_after(10):
        client = await roomcast_harness.connect(reconnect=False)
        reasons: list[str] = []

        @client.on("disconnect")
        async def gone(reason: str) -> None:
            reasons.append(reason)

        sid = await client.wait_connected()
        assert sid == client.sid()
        await client.server_socket().disconnect()
        assert await client.wait_disconnected() == "io server disconnect"
        assert reasons == ["io server disconnect"]
        reason = await roomcast_harness.wait_disconnect(sid, namespace="/")
        assert reason == "server namespace disconnect"
        # Leaving one of two namespaces: the connection stays open.
        again = await roomcast_harness.connect(
            namespaces={"/": None, "/admin": {"token": "s3cret"}}
        )
        again_sid = again.sid("/admin")
        assert again_sid is not None
        await again.disconnect("/admin")
        assert await roomcast_harness.wait_disconnect(again_sid) == "client namespace disconnect"
        assert [(d.sid, d.reason) for d in roomcast_harness.disconnects] == [
            (sid, "server namespace disconnect"),
            (again_sid, "client namespace disconnect"),
        ]


async def test_the_one_line_client_fixture(roomcast_client: HarnessClient) -> None:
    with trio.fail_after(10):
        assert await roomcast_client.call("echo", "x", 1) == ("x", 1)
        assert roomcast_client.connected


async def test_closing_leaves_nothing_behind() -> None:
    server = room_app()
    handlers_before = list(server.of("/").disconnect_handlers)
    with trio.fail_after(10):
        async with open_harness(server) as harness:
            async with harness.client() as scoped:
                await scoped.call("join", "r")
                scoped_sid = scoped.sid()
            assert scoped_sid is not None
            assert await harness.wait_disconnect(scoped_sid) == "client namespace disconnect"
            one_line = await harness.connect()
            await one_line.call("join", "r")
            await harness.settle()  # the first room actor has retired
            assert server.supervisor.rooms_running == 1
            assert set(harness.sockets()) == {one_line.sid()}
        await trio.testing.wait_all_tasks_blocked()
    # The harness closed its clients before the server: they left as clients do.
    assert [d.reason for d in harness.disconnects] == ["client namespace disconnect"] * 2
    assert server.connections == {}
    assert server.of("/").sockets == {}
    assert server.supervisor.rooms_running == 0
    assert server.of("/").disconnect_handlers == handlers_before
    with pytest.raises(RuntimeError, match="closed"):
        await harness.connect()


async def test_a_real_socket_harness_serves_in_memory_clients_too() -> None:
    with trio.fail_after(10):
        async with open_harness(room_app(), transport="tcp") as harness:
            host_port = harness.url.removeprefix("http://")
            assert host_port.startswith("127.0.0.1:")
            memory = await harness.connect(transport="memory")
            tcp = await harness.connect()
            await memory.call("join", "r")
            await tcp.emit("say", "r", "across")
            assert await memory.wait_for("said") == ("across",)


async def test_sockets_with_autojump_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(ValueError, match="autojump_clock with a real socket"):
        async with open_harness(room_app(), transport="tcp"):
            pass  # pragma: no cover - refused on entry
    async with open_harness(room_app()) as harness:
        with pytest.raises(ValueError, match="needs a harness that listens"):
            await harness.connect(transport="tcp")


async def test_a_connect_timeout_runs_in_virtual_time(
    autojump_clock: trio.testing.MockClock, roomcast_serve: ServeFactory
) -> None:
    server = room_app()

    @server.of("/slow").use
    async def never_answers(socket: Socket, auth: object) -> None:
        await trio.sleep_forever()

    harness = await roomcast_serve(server)
    with trio.fail_after(100):
        start = trio.current_time()
        with pytest.raises(ConnectionFailedError, match=r"not connected within 20\.0 s"):
            await harness.connect("/slow")
        assert trio.current_time() - start == pytest.approx(20.0)
        with pytest.raises(ConnectionFailedError, match=r"within 3\.0 s"):
            await harness.connect("/slow", connect_timeout=3.0)


async def test_several_servers_from_the_factory(roomcast_serve: ServeFactory) -> None:
    first = await roomcast_serve(room_app())
    second = await roomcast_serve(room_app())
    with trio.fail_after(10):
        a = await first.connect()
        b = await second.connect()
        await a.call("join", "r")
        await b.call("join", "r")
        assert await b.call("say", "r", "only here") == (1,)
        await first.settle()
        assert a.received == []


async def test_events_sent_while_connecting_and_after_a_namespace_comes_back(
    roomcast_serve: ServeFactory,
) -> None:
    server = room_app()

    @server.on("connect")
    async def welcome(socket: Socket, auth: object) -> None:
        await socket.emit("welcome", socket.sid)  # before the client's block even starts

    @server.of("/admin").on("connect")
    async def hello_admin(socket: Socket, auth: object) -> None:
        await socket.emit("hello", "admin")

    harness = await roomcast_serve(server)
    with trio.fail_after(10):
        client = await harness.connect()
        assert await client.wait_for("welcome") == (client.sid(),)
        token: dict[str, JsonValue] = {"token": "s3cret"}
        for round_ in range(3):  # the namespace ends and comes back: still recorded
            await client.connect_namespace("/admin", auth=token)
            assert await client.wait_for("hello", namespace="/admin") == ("admin",)
            await client.disconnect("/admin")
            assert await client.wait_disconnected(round_ + 1, namespace="/admin") == (
                "io client disconnect"
            )
        assert len(client.args("hello", namespace="/admin")) == 3
        assert [(e.namespace, e.kind) for e in client.lifecycle][:2] == [
            ("/", "connect"),
            ("/admin", "connect"),
        ]
