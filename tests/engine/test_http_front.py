"""The HTTP front: Origin checks and CORS, the allow_request hook, request-head limits and
deadline (slowloris), bodies, static files and /healthz, and what a polling payload
cannot carry.

Clients are in-memory streams served by ``Server.serve_stream``, so the deadlines run on
the autojump clock; one test uses a real socket for the remote address.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
import trio_websocket

from roomcast.engine import Config, Server, Socket
from roomcast.engine.actors.connection import Connection
from roomcast.engine.front import ORIGIN_LOG_INTERVAL
from roomcast.engine.transport.http import HttpRequest
from roomcast.protocol import (
    DEFAULT_LIMITS,
    JSON_PARSER,
    Decoder,
    EioPacket,
    EioPacketType,
    JsonValue,
    Limits,
    LocalProtocolError,
    SioPacket,
    decode_payload,
)

from ..conformance.wire import WS_UPGRADE_HEADERS, Endpoint, HttpClient, Response, eio_target
from .conftest import MemoryServer, open_memory_server

HOST = "127.0.0.1:5000"
"""The Host header the in-memory clients send; the page's own origin is ``http://`` + it."""
SAME_ORIGIN = f"http://{HOST}"
POLLING = eio_target("/socket.io/")
WEBSOCKET = eio_target("/socket.io/", transport="websocket")


@attrs.define(eq=False)
class Front:
    """A server whose HTTP clients connect over in-memory streams."""

    server: Server
    memory: MemoryServer

    def connect(self) -> HttpClient:
        """A new client connection (served by its own ``serve_stream`` task)."""
        client_stream, server_stream = trio.testing.memory_stream_pair()
        self.memory.nursery.start_soon(self.server.serve_stream, server_stream)
        return HttpClient(stream=client_stream, host=HOST)

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | str = b"",
        headers: Sequence[tuple[str, str]] = (),
    ) -> Response:
        """One request on a connection of its own."""
        client = self.connect()
        async with client.stream:
            return await client.request(method, target, body, headers)

    async def get(self, target: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
        return await self.request("GET", target, headers=headers)


@asynccontextmanager
async def open_front(server: Server) -> AsyncIterator[Front]:
    async with open_memory_server(server) as memory:
        yield Front(server=server, memory=memory)


async def read_until_closed(stream: trio.abc.Stream) -> bytes:
    """Everything the server still sends, up to its end of the stream."""
    data = bytearray()
    while chunk := await stream.receive_some(65_536):
        data += chunk
    return bytes(data)


def origin(value: str) -> list[tuple[str, str]]:
    return [("Origin", value)]


# --------------------------------------------------------------------------- Origin / CORS


async def test_default_allows_same_origin_and_clients_without_origin_only() -> None:
    with trio.fail_after(10):
        async with open_front(Server()) as front:
            refused = await front.get(POLLING, origin("http://evil.example"))
            assert refused.status == 403
            assert "access-control-allow-origin" not in refused.headers
            # A cross-site page cannot open a WebSocket either: 403, never 101.
            ws = await front.get(WEBSOCKET, [*WS_UPGRADE_HEADERS, *origin("http://evil.example")])
            assert ws.status == 403
            # Same scheme, host and port as the Host header: the page came from us.
            same = await front.get(POLLING, origin(SAME_ORIGIN))
            assert same.status == 200
            assert same.headers["access-control-allow-origin"] == SAME_ORIGIN
            # Another port of the same host is another origin.
            assert (await front.get(POLLING, origin("http://127.0.0.1:5001"))).status == 403
            # Not a browser (no Origin): nothing to protect.
            assert (await front.get(POLLING)).status == 200
            assert len(front.server.connections) == 2  # the two handshakes that passed


async def test_refused_origin_creates_no_session_and_others_keep_working() -> None:
    server = Server(cors_allowed_origins=["https://app.example"])
    with trio.fail_after(10):
        async with open_front(server) as front, front.memory.client() as healthy:
            await healthy.connect()
            for _ in range(3):
                assert (await front.get(POLLING, origin("https://evil.example"))).status == 403
            assert len(server.connections) == 1  # only the healthy WebSocket
            await healthy.send('421["nothing"]')
            await healthy.send("41")
            await healthy.send("40")
            assert str(await healthy.recv()).startswith("40")


async def test_a_refused_origin_is_logged_with_its_rule_at_most_once_per_interval(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def trusted(value: str) -> bool:
        return value.endswith(".trusted.example")

    def refusals() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if r.name == "roomcast.engine.front"]
        return [line for line in lines if line.startswith("refused Origin")]

    listed = Server(cors_allowed_origins=["https://app.example"])
    with trio.fail_after(60):
        async with open_front(listed) as front:
            for _ in range(3):
                assert (await front.get(POLLING, origin("https://evil.example"))).status == 403
            assert refusals() == [
                "refused Origin 'https://evil.example': is not in cors_allowed_origins and it"
                f" is not this server's (Host {HOST})"
            ]
            await trio.sleep(ORIGIN_LOG_INTERVAL)
            assert (await front.get(POLLING, origin("https://other.example"))).status == 403
            assert refusals()[1:] == [
                "refused Origin 'https://other.example': is not in cors_allowed_origins and it"
                f" is not this server's (Host {HOST}) (2 more refused since the last such line)"
            ]
    caplog.clear()
    with trio.fail_after(60):
        async with open_front(Server()) as front:
            assert (await front.get(POLLING, origin("https://evil.example"))).status == 403
        async with open_front(Server(cors_allowed_origins=trusted)) as front:
            assert (await front.get(POLLING, origin("https://x.example"))).status == 403
    assert refusals() == [
        "refused Origin 'https://evil.example': cors_allowed_origins is empty and it is not"
        f" this server's (Host {HOST})",
        "refused Origin 'https://x.example': the cors_allowed_origins predicate refused it",
    ]


async def test_an_allow_list_of_exact_origins() -> None:
    server = Server(cors_allowed_origins=["https://app.example", "http://localhost:3000"])
    with trio.fail_after(10):
        async with open_front(server) as front:
            for allowed in ("https://app.example", "http://localhost:3000", SAME_ORIGIN):
                response = await front.get(POLLING, origin(allowed))
                assert response.status == 200, allowed
                assert response.headers["access-control-allow-origin"] == allowed
                assert response.headers["access-control-allow-credentials"] == "true"
                assert "Origin" in response.headers["vary"]
            for refused in (
                "https://app.example.evil.example",
                "http://app.example",  # another scheme
                "https://APP.example:443x",
                "null",
            ):
                assert (await front.get(POLLING, origin(refused))).status == 403, refused
            upgrade = await front.get(
                WEBSOCKET, [*WS_UPGRADE_HEADERS, *origin("https://app.example")]
            )
            assert upgrade.status == 101


async def test_an_origin_predicate() -> None:
    seen: list[str] = []

    def trusted(value: str) -> bool:
        seen.append(value)
        return value.endswith(".trusted.example")

    with trio.fail_after(10):
        async with open_front(Server(cors_allowed_origins=trusted)) as front:
            assert (await front.get(POLLING, origin("https://a.trusted.example"))).status == 200
            assert (await front.get(POLLING, origin("https://trusted.example.com"))).status == 403
            ws = await front.get(WEBSOCKET, [*WS_UPGRADE_HEADERS, *origin("https://x.example")])
            assert ws.status == 403
    assert seen == ["https://a.trusted.example", "https://trusted.example.com", "https://x.example"]


async def test_star_is_an_explicit_opt_in_to_any_origin() -> None:
    with trio.fail_after(10):
        async with open_front(Server(cors_allowed_origins="*")) as front:
            for value in ("https://anything.example", "null", "http://10.1.2.3:8080"):
                response = await front.get(POLLING, origin(value))
                assert response.status == 200
                assert response.headers["access-control-allow-origin"] == value


async def test_preflight_is_answered_for_allowed_origins_only() -> None:
    server = Server(cors_allowed_origins=["https://app.example"])
    preflight_headers = [
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "content-type, x-token"),
    ]
    with trio.fail_after(10):
        async with open_front(server) as front:
            ok = await front.request(
                "OPTIONS", POLLING, headers=[*origin("https://app.example"), *preflight_headers]
            )
            assert ok.status in (200, 204)
            assert ok.body == b""
            assert ok.headers["access-control-allow-origin"] == "https://app.example"
            assert ok.headers["access-control-allow-credentials"] == "true"
            methods = {m.strip() for m in ok.headers["access-control-allow-methods"].split(",")}
            assert {"GET", "POST"} <= methods
            allowed = ok.headers["access-control-allow-headers"].lower()
            assert "content-type" in allowed
            assert "x-token" in allowed
            refused = await front.request(
                "OPTIONS", POLLING, headers=[*origin("https://evil.example"), *preflight_headers]
            )
            assert refused.status == 403
            assert "access-control-allow-origin" not in refused.headers
            assert server.connections == {}  # a preflight never opens a session


async def test_the_post_of_an_allowed_cross_origin_page_gets_cors_headers() -> None:
    server = Server(cors_allowed_origins=["https://app.example"])
    with trio.fail_after(10):
        async with open_front(server) as front:
            handshake = await front.get(POLLING, origin("https://app.example"))
            sid = json.loads(handshake.text[1:])["sid"]
            posted = await front.request(
                "POST", eio_target("/socket.io/", sid=sid), "40", origin("https://app.example")
            )
            assert (posted.status, posted.body) == (200, b"ok")
            assert posted.headers["access-control-allow-origin"] == "https://app.example"
            # The same session from a foreign page is refused, and stays usable.
            stolen = await front.request(
                "POST", eio_target("/socket.io/", sid=sid), "3", origin("https://evil.example")
            )
            assert stolen.status == 403
            got = await front.get(eio_target("/socket.io/", sid=sid), origin("https://app.example"))
            assert got.status == 200
            assert got.text.startswith('40{"sid":')


# --------------------------------------------------------------------------- allow_request


async def test_allow_request_sees_the_request_before_any_session() -> None:
    seen: list[HttpRequest] = []

    async def allow(request: HttpRequest) -> bool:
        seen.append(request)
        await trio.lowlevel.checkpoint()
        return request.headers.get("x-api-key") == "k1"

    server = Server(allow_request=allow)
    with trio.fail_after(10):
        async with open_front(server) as front:
            refused = await front.get(eio_target("/socket.io/", extra="room=blue"))
            assert refused.status == 403
            ws_refused = await front.get(WEBSOCKET, list(WS_UPGRADE_HEADERS))
            assert ws_refused.status == 403
            assert server.connections == {}
            accepted = await front.get(
                eio_target("/socket.io/", extra="room=blue"), [("X-Api-Key", "k1")]
            )
            assert accepted.status == 200
            assert len(server.connections) == 1
    first = seen[0]
    assert first.method == "GET"
    assert first.path == "/socket.io/"
    assert first.query == {"EIO": "4", "transport": "polling", "room": "blue"}
    assert first.headers["host"] == HOST
    assert seen[-1].headers["x-api-key"] == "k1"


async def test_allow_request_sees_the_remote_address_on_a_real_socket() -> None:
    remotes: list[str | None] = []

    async def allow(request: HttpRequest) -> bool:
        remotes.append(request.remote)
        await trio.lowlevel.checkpoint()
        return False

    server = Server(allow_request=allow)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve, "127.0.0.1", 0)
            endpoint = Endpoint(host=host, port=port)
            async with endpoint.open_http() as http:
                response = await http.request("GET", POLLING)
                local = http.stream.socket.getsockname()  # type: ignore[attr-defined]
            assert response.status == 403
            nursery.cancel_scope.cancel()
    assert remotes == [f"{local[0]}:{local[1]}"]


async def test_the_socket_sees_the_handshake_request() -> None:
    server = Server()
    handshakes: list[tuple[JsonValue, dict[str, str]]] = []

    @server.on("connect")
    async def connect(socket: Socket, auth: JsonValue) -> None:
        handshakes.append((socket.handshake.auth, dict(socket.handshake.query)))
        await trio.lowlevel.checkpoint()

    with trio.fail_after(10):
        async with open_front(server) as front:
            handshake = await front.get(eio_target("/socket.io/", extra="team=red"))
            sid = json.loads(handshake.text[1:])["sid"]
            posted = await front.request(
                "POST", eio_target("/socket.io/", sid=sid), '40{"token":"t"}'
            )
            assert posted.body == b"ok"
            got = await front.get(eio_target("/socket.io/", sid=sid))
            assert got.text.startswith('40{"sid":')
    assert handshakes == [({"token": "t"}, {"EIO": "4", "transport": "polling", "team": "red"})]


# --------------------------------------------------------------------------- head limits


@pytest.mark.parametrize("trickle", [False, True], ids=["at-once", "in-pieces"])
async def test_a_request_line_over_the_limit_is_431(
    autojump_clock: trio.testing.MockClock, trickle: bool
) -> None:
    server = Server(config=Config(max_request_header_bytes=4096))
    line = b"GET /socket.io/?EIO=4&transport=polling&pad=" + b"a" * 10_000 + b" HTTP/1.1\r\n"
    with trio.fail_after(30):
        async with open_front(server) as front, front.memory.client() as healthy:
            client = front.connect()
            if trickle:
                for i in range(0, len(line), 1000):  # never a whole head: h11's bound
                    await client.stream.send_all(line[i : i + 1000])
                    await trio.sleep(0.1)
            else:
                await client.stream.send_all(line + b"Host: x\r\n\r\n")
            answer = await read_until_closed(client.stream)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
            assert server.connections.keys() == {healthy.handshake["sid"]}
            # Other clients keep working.
            assert (await front.get("/healthz")).status == 200
            await healthy.connect()


async def test_headers_over_the_limit_are_431(autojump_clock: trio.testing.MockClock) -> None:
    server = Server(config=Config(max_request_header_bytes=4096))
    headers = [(f"X-Pad-{i}", "b" * 100) for i in range(60)]  # ~6.6 KB in small headers
    with trio.fail_after(30):
        async with open_front(server) as front:
            response = await front.get(POLLING, headers)
            assert response.status == 431
            # Just under the limit is fine.
            assert (await front.get(POLLING, headers[:30])).status == 200


async def test_a_client_sending_its_head_one_byte_per_second_is_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = Config(request_header_timeout=10.0)
    server = Server(config=config)

    @server.on("echo")
    async def echo(socket: Socket, value: JsonValue) -> JsonValue:
        await trio.lowlevel.checkpoint()
        return value

    head = f"GET {POLLING} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: slowloris\r\n\r\n".encode()
    assert len(head) > 30  # it would take longer than the deadline
    sent = 0
    cut_off_at: float | None = None
    answer = b""

    async def slowloris(client: HttpClient) -> None:
        nonlocal sent, cut_off_at, answer
        start = trio.current_time()
        try:
            for byte in head:
                await client.stream.send_all(bytes([byte]))
                sent += 1
                await trio.sleep(1.0)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        answer = await read_until_closed(client.stream)
        cut_off_at = trio.current_time() - start

    with trio.fail_after(120):
        async with open_front(server) as front, front.memory.client() as healthy:
            await healthy.connect()
            slow = front.connect()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slowloris, slow)
                # While the slow head trickles in, everyone else is served at once.
                for i in range(5):
                    await trio.sleep(1.5)
                    assert (await front.get("/healthz")).status == 200
                    await healthy.send(f'42{i}["echo",{i}]')
                    assert await healthy.recv() == f"43{i}[{i}]"
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert cut_off_at is not None
            assert 10.0 <= cut_off_at <= 12.0, cut_off_at
            assert sent <= 12
            assert not any(
                c.request is not None and "slowloris" in str(c.request.headers)
                for c in server.connections.values()
            )


async def test_an_idle_keep_alive_connection_is_closed_quietly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A connection that never starts a request is closed at the deadline without an
    # answer (there is no request to answer).
    server = Server(config=Config(request_header_timeout=5.0))
    with trio.fail_after(30):
        async with open_front(server) as front:
            client = front.connect()
            start = trio.current_time()
            assert await read_until_closed(client.stream) == b""
            assert trio.current_time() - start == pytest.approx(5.0)


async def test_garbage_instead_of_http_is_400(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with open_front(Server()) as front:
            client = front.connect()
            await client.stream.send_all(b"\x16\x03\x01\x02\x00 not http\r\n\r\n")
            answer = await read_until_closed(client.stream)
            assert answer.startswith(b"HTTP/1.1 400 "), answer


async def test_a_polling_body_over_max_payload_is_413(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = Server(config=Config(limits=Limits(max_payload_bytes=1000)))
    with trio.fail_after(10):
        async with open_front(server) as front:
            handshake = await front.get(POLLING)
            sid = json.loads(handshake.text[1:])["sid"]
            response = await front.request(
                "POST", eio_target("/socket.io/", sid=sid), "4" + "x" * 5000
            )
            assert response.status == 413


# --------------------------------------------------------------------------- static files


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text("<!doctype html><title>t</title>")
    (tmp_path / "app.js").write_text("console.log(1);")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.json").write_text('{"a":1}')
    (tmp_path.parent / "secret.txt").write_text("do not serve")
    return tmp_path


async def test_static_files_healthz_and_not_found(site: Path) -> None:
    server = Server(static_dirs={"/": str(site)})
    with trio.fail_after(10):
        async with open_front(server) as front:
            index = await front.get("/")
            assert index.status == 200
            assert index.headers["content-type"].startswith("text/html")
            assert index.text == "<!doctype html><title>t</title>"
            script = await front.get("/app.js")
            assert script.headers["content-type"].split(";")[0] in (
                "text/javascript",
                "application/javascript",
            )
            assert (await front.get("/sub/data.json")).text == '{"a":1}'
            assert (await front.get("/missing.js")).status == 404
            for escape in ("/../secret.txt", "/sub/../../secret.txt", "/%2e%2e/secret.txt"):
                response = await front.get(escape)
                assert response.status == 404, escape
                assert b"do not serve" not in response.body
            health = await front.get("/healthz")
            assert (health.status, health.body) == (200, b"ok")
            # The Engine.IO path is never a static file.
            assert (await front.get("/socket.io/")).status == 400


async def test_static_prefixes_map_to_their_directories(site: Path, tmp_path: Path) -> None:
    vendor = tmp_path / "vendor-dist"
    vendor.mkdir()
    (vendor / "lib.min.js").write_text("var lib;")
    server = Server(static_dirs={"/vendor/": str(vendor), "/": str(site)})
    with trio.fail_after(10):
        async with open_front(server) as front:
            assert (await front.get("/vendor/lib.min.js")).text == "var lib;"
            assert (await front.get("/app.js")).text == "console.log(1);"
            assert (await front.get("/vendor/app.js")).status == 404


async def test_head_gets_the_headers_of_get_without_a_body(site: Path) -> None:
    # RFC 9110 §9.3.2: the same header fields as GET, and no content.
    server = Server(static_dirs={"/": str(site)})
    with trio.fail_after(10):
        async with open_front(server) as front:
            got = await front.get("/app.js")
            client = front.connect()
            await client.stream.send_all(
                f"HEAD /app.js HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
            )
            raw = await read_until_closed(client.stream)
            head, _, content = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), raw
            assert content == b""
            headers = dict(line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:])
            assert headers["content-type"] == got.headers["content-type"].lower()
            assert headers["content-length"] == str(len(got.body))


# --------------------------------------------------------------------------- polling sessions


async def test_disconnect_and_close_in_one_polling_payload_run_the_disconnect_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # python-socketio's AsyncClient.disconnect() over polling POSTs "41\x1e1": leave the
    # namespace, then close. The socket is in a room, so leaving takes a room-actor
    # round trip; the disconnect handler must still run, exactly once.
    server = Server()
    reasons: list[str] = []

    @server.on("join")
    async def join(socket: Socket, room: JsonValue) -> JsonValue:
        assert isinstance(room, str)
        await socket.join(room)
        return "joined"

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        reasons.append(reason)
        await trio.lowlevel.checkpoint()

    with trio.fail_after(10):
        async with open_front(server) as front:
            handshake = await front.get(POLLING)
            target = eio_target("/socket.io/", sid=json.loads(handshake.text[1:])["sid"])
            assert (await front.request("POST", target, "40")).body == b"ok"
            assert (await front.get(target)).text.startswith('40{"sid":')
            assert (await front.request("POST", target, '421["join","r1"]')).body == b"ok"
            assert (await front.get(target)).text == '431["joined"]'
            assert (await front.request("POST", target, "41\x1e1")).body == b"ok"
            await trio.sleep(1)
            assert server.connections == {}
            assert server.of("/").adapter.rooms() == frozenset()
    assert reasons == ["client namespace disconnect"]


# --------------------------------------------------------------------------- the record separator
# A polling payload joins packets with "\x1e" and cannot escape it: a text message holding
# it would reach the client split in two, its tail read as packets of their own ("1" is a
# CLOSE). Such a send is refused on a polling session; over WebSocket it goes as it is.


@attrs.define(eq=False)
class SeparatorEngine:
    """A bare Engine.IO app that answers any message with text holding the record
    separator (which would be a CLOSE after the split), then ``after``."""

    refused: list[LocalProtocolError] = attrs.field(factory=list)

    async def on_message(self, conn: Connection, data: str | bytes) -> None:
        try:
            conn.send_message("a\x1e1")
        except LocalProtocolError as exc:
            self.refused.append(exc)
        conn.send_message("after")
        await trio.lowlevel.checkpoint()

    async def on_close(self, conn: Connection, reason: str) -> None:
        await trio.lowlevel.checkpoint()


def message(data: str) -> EioPacket:
    return EioPacket(type=EioPacketType.MESSAGE, data=data)


async def test_a_bare_engine_message_with_the_separator_is_refused_over_polling() -> None:
    server = Server()
    app = SeparatorEngine()
    server.mount_engine("/engine.io/", app)
    with trio.fail_after(10):
        async with open_front(server) as front:
            handshake = await front.get(eio_target("/engine.io/"))
            target = eio_target("/engine.io/", sid=json.loads(handshake.text[1:])["sid"])
            assert (await front.request("POST", target, "4go")).body == b"ok"
            assert decode_payload((await front.get(target)).body) == (message("after"),)
            assert [str(exc) for exc in app.refused] == [
                "text packet containing \\x1e cannot go in a polling payload"
            ]
            assert len(server.connections) == 1  # the session goes on

            # Over WebSocket the same message goes as it is, in one frame.
            stream = await front.memory.harness.open_stream()
            async with trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,  # type: ignore[arg-type]
                    "localhost",
                    eio_target("/engine.io/", transport="websocket"),
                )
                assert str(await ws.get_message()).startswith("0")
                await ws.send_message("4go")
                assert await ws.get_message() == "4a\x1e1"
                assert await ws.get_message() == "4after"
                await ws.aclose()
            assert len(app.refused) == 1


@attrs.frozen
class RawControlParser:
    """The JSON format with ``"\x1e"`` left raw in strings, as a hand-written text format
    might write it: the record separator reaches the Engine.IO layer."""

    name: str = "raw-separator-json"

    def encode(self, packet: SioPacket) -> tuple[str | bytes, ...]:
        return tuple(
            p.replace("\\u001e", "\x1e") if isinstance(p, str) else p
            for p in JSON_PARSER.encode(packet)
        )

    def decoder(self, limits: Limits = DEFAULT_LIMITS) -> Decoder:
        return JSON_PARSER.decoder(limits)


async def polling_socket(front: Front) -> str:
    """A polling session connected to ``/``: its request target."""
    handshake = await front.get(POLLING)
    target = eio_target("/socket.io/", sid=json.loads(handshake.text[1:])["sid"])
    assert (await front.request("POST", target, "40")).body == b"ok"
    assert (await front.get(target)).text.startswith('40{"sid":')
    return target


async def test_socketio_json_escapes_the_separator_so_it_polls_intact() -> None:
    server = Server()

    @server.on("echo")
    async def echo(socket: Socket, text: JsonValue) -> JsonValue:
        await socket.emit("echoed", text)
        return text

    with trio.fail_after(10):
        async with open_front(server) as front:
            target = await polling_socket(front)
            sent = '420["echo","a\\u001e1"]'
            assert (await front.request("POST", target, sent)).body == b"ok"
            assert decode_payload((await front.get(target)).body) == (
                message('2["echoed","a\\u001e1"]'),
                message('30["a\\u001e1"]'),
            )


async def test_a_socketio_packet_with_a_raw_separator_is_refused_over_polling() -> None:
    server = Server(parser=RawControlParser())
    refused: list[str] = []

    @server.on("echo")
    async def echo(socket: Socket, text: JsonValue) -> JsonValue:
        try:
            await socket.emit("echoed", text)
        except LocalProtocolError as exc:
            refused.append(str(exc))
        return "refused"

    with trio.fail_after(10):
        async with open_front(server) as front, front.memory.client() as ws:
            target = await polling_socket(front)
            sent = '420["echo","a\\u001e1"]'
            assert (await front.request("POST", target, sent)).body == b"ok"
            assert decode_payload((await front.get(target)).body) == (message('30["refused"]'),)
            assert refused == ["text packet containing \\x1e cannot go in a polling payload"]

            # A broadcast is encoded once for all: a WebSocket member gets it as it is,
            # and the polling session, which cannot be sent it, is closed.
            await ws.connect()
            await server.emit("news", "a\x1e1")
            assert await ws.recv() == '42["news","a\x1e1"]'
            assert (await front.get(target)).text == "1"
            await trio.testing.wait_all_tasks_blocked()
            assert len(server.connections) == 1  # the WebSocket only
