"""The server app the interop tests run, and the harness around the peer processes.

``build_app`` builds the seed example's server (``examples.workspace_chat``) and adds the
handlers the scenarios need; everything those handlers see is written down in an
``Observed`` record, so a test asserts on the server's side as well as on what the peer
printed. ``serve_app`` runs it on ``127.0.0.1`` (a free port) and ``open_peer`` starts a
peer client script (``tests/js/client_scenarios.mjs`` or ``psio_client.py``) as a
subprocess whose stdout is JSON lines ``{"event": NAME, ...}``, binary values written as
``{"$bin": BASE64}``.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Final, TypeAlias, cast

import attrs
import trio

from examples.workspace_chat import build_server
from roomcast.engine import (
    BroadcastAckResult,
    Config,
    ConnectionLostError,
    ConnectRefusedError,
    Server,
    Socket,
)
from roomcast.protocol import JSON_PARSER, MSGPACK_PARSER, JsonValue, Parser
from tests.processes import PipedProcess, open_piped

__all__ = [
    "CLEANUP_SECONDS",
    "PARSERS",
    "POLL_WITHIN",
    "REFUSAL_DATA",
    "SERVER_BLOB",
    "TOKEN",
    "Json",
    "Line",
    "Observed",
    "Peer",
    "PeerCommand",
    "RunningServer",
    "build_app",
    "from_json",
    "open_peer",
    "patterned",
    "serve_app",
    "the",
    "typed",
]

Json: TypeAlias = bool | int | float | str | list["Json"] | dict[str, "Json"] | None
"""A value as read from a peer's JSON lines."""
Line: TypeAlias = dict[str, Json]

PARSERS: Final[Mapping[str, Parser]] = {"json": JSON_PARSER, "msgpack": MSGPACK_PARSER}
TOKEN: Final = "s3cret"
"""The token ``/private`` accepts."""
REFUSAL_DATA: Final[JsonValue] = {"reason": "bad token", "retryAfter": 3, "hints": [1, None]}
POLL_WITHIN: Final = 1.0
"""Seconds ``start_poll`` waits for the broadcast's answers."""
SERVER_BLOB: Final = bytes(range(256)) * 300
"""What the server sends in ``ask_binary``: 76,800 bytes, over the 64 KiB frame-length step."""
CALL_TIMEOUT: Final = 3.0
"""Seconds a handler waits for a client's answer to ``socket.call``."""
CLEANUP_SECONDS: Final = 0.05
"""How long the main namespace's disconnect handler "works" (see ``build_app``)."""


def patterned(length: int) -> bytes:
    """The bytes ``i % 251`` for ``i`` below ``length`` (the peers build the same)."""
    return bytes(i % 251 for i in range(length))


# --------------------------------------------------------------------------- the app


@attrs.define(eq=False)
class Observed:
    """What the server's handlers saw; tests wait on it with ``wait_for``.

    Attributes:
        connects: ``(namespace, sid, auth)`` per accepted socket, in order.
        disconnects: ``(namespace, sid, reason)`` per disconnect handler call.
        refusals: The auth payload of each CONNECT ``/private`` refused.
        events: ``(event, args)`` as the handlers of echo and upload received them.
        call_answers: The client's answers to the server's ``socket.call``s.
        polls: The result of each ``start_poll`` broadcast call.
        connection_counts: ``len(server.connections)`` each time ``whoami`` ran.
        cleanups: ``(sid, "done" | "cancelled")`` per run of the main namespace's
            awaiting disconnect handler.
        last_moments: ``(handler, sid, reason, socket.rooms)`` per run of the main
            namespace's ``disconnecting`` and ``disconnect`` handlers, in order.
    """

    connects: list[tuple[str, str, JsonValue]] = attrs.field(factory=list)
    disconnects: list[tuple[str, str, str]] = attrs.field(factory=list)
    refusals: list[JsonValue] = attrs.field(factory=list)
    events: list[tuple[str, tuple[JsonValue, ...]]] = attrs.field(factory=list)
    call_answers: list[tuple[JsonValue, ...]] = attrs.field(factory=list)
    polls: list[BroadcastAckResult] = attrs.field(factory=list)
    connection_counts: list[int] = attrs.field(factory=list)
    cleanups: list[tuple[str, str]] = attrs.field(factory=list)
    last_moments: list[tuple[str, str, str, frozenset[str]]] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def changed(self) -> None:
        """Wake everyone waiting in ``wait_for``; call after each change."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds (checked after every change)."""
        while not predicate():
            await self._changed.wait()

    def disconnect_reason(self, sid: str) -> str | None:
        """The reason the disconnect handler got for socket ``sid``, if it ran."""
        reasons = [reason for _, who, reason in self.disconnects if who == sid]
        assert len(reasons) <= 1, f"{sid} disconnected {len(reasons)} times: {reasons}"
        return reasons[0] if reasons else None

    async def wait_disconnect(self, sid: str) -> str:
        """Wait until socket ``sid`` disconnected; its reason."""
        await self.wait_for(lambda: self.disconnect_reason(sid) is not None)
        reason = self.disconnect_reason(sid)
        assert reason is not None
        return reason

    async def wait_cleanup(self, sid: str) -> str:
        """Wait until the awaiting disconnect handler of ``sid`` ended; how it ended."""
        await self.wait_for(lambda: any(who == sid for who, _ in self.cleanups))
        (outcome,) = [outcome for who, outcome in self.cleanups if who == sid]
        return outcome

    def auth_of(self, sid: str) -> JsonValue:
        """The auth payload socket ``sid`` connected with."""
        (auth,) = [auth for _, who, auth in self.connects if who == sid]
        return auth


def build_app(parser: Parser, config: Config | None = None) -> tuple[Server, Observed]:
    """The seed example's server with ``parser`` and the scenarios' handlers.

    Namespaces: ``/`` (the example's join_workspace and dispatch_message, plus the
    handlers below), ``/admin`` (whoami, admin_only) and ``/private`` (whoami; its
    middleware refuses any auth whose token is not ``TOKEN``, with ``REFUSAL_DATA``).
    Every namespace records connects, disconnects and ``whoami`` calls; ``/`` also has a
    second disconnect handler that awaits ``CLEANUP_SECONDS`` and records whether it got
    to its end (``Observed.cleanups``), and a ``disconnecting`` handler that tells each of
    the socket's rooms that it left (``"left"``, ``{"sid", "room", "reason"}``).
    """
    server = build_server(config)
    # build_server takes no parser: set it before serving (connections and broadcasts
    # read it when they encode, so nothing was built with the old one yet).
    server.parser = parser
    seen = Observed()
    main = server.of("/")
    admin = server.of("/admin")
    private = server.of("/private")

    for ns in (main, admin, private):

        @ns.on("connect")
        async def on_connect(socket: Socket, auth: JsonValue) -> None:
            seen.connects.append((socket.namespace.name, socket.sid, auth))
            seen.changed()
            await socket.emit("auth_echo", auth)

        @ns.on("disconnect")
        async def on_disconnect(socket: Socket, reason: str) -> None:
            seen.disconnects.append((socket.namespace.name, socket.sid, reason))
            seen.changed()
            await trio.lowlevel.checkpoint()

        @ns.on("whoami")
        async def whoami(socket: Socket) -> JsonValue:
            seen.connection_counts.append(len(server.connections))
            seen.changed()
            await trio.lowlevel.checkpoint()
            return {
                "sid": socket.sid,
                "eio": socket.connection.eio_sid,
                "namespace": socket.namespace.name,
                "auth": socket.handshake.auth,
                "connections": len(server.connections),
            }

    @main.on("disconnect")
    async def clean_up(socket: Socket, reason: str) -> None:
        # Stands for the async work a real app does when someone leaves (a database
        # write, a notification to the others): it has to run to its end.
        try:
            await trio.sleep(CLEANUP_SECONDS)
        except trio.Cancelled:
            seen.cleanups.append((socket.sid, "cancelled"))
            seen.changed()
            raise
        seen.cleanups.append((socket.sid, "done"))
        seen.changed()

    @main.on("disconnecting")
    async def tell_the_rooms(socket: Socket, reason: str) -> None:
        # The socket is still in its rooms here; socket.to leaves it out of the broadcast.
        seen.last_moments.append(("disconnecting", socket.sid, reason, socket.rooms))
        seen.changed()
        for room in sorted(socket.rooms - {socket.sid}):
            info: JsonValue = {"sid": socket.sid, "room": room, "reason": reason}
            await socket.to(room).emit("left", info)

    @main.on("disconnect")
    async def rooms_at_disconnect(socket: Socket, reason: str) -> None:
        # Left by now, but socket.rooms still says where it was.
        seen.last_moments.append(("disconnect", socket.sid, reason, socket.rooms))
        seen.changed()
        await trio.lowlevel.checkpoint()

    @admin.on("admin_only")
    async def admin_only(socket: Socket, value: JsonValue) -> JsonValue:
        await trio.lowlevel.checkpoint()
        return {"admin": True, "value": value, "namespace": socket.namespace.name}

    @private.use
    async def check_token(socket: Socket, auth: JsonValue) -> None:
        await trio.lowlevel.checkpoint()
        if not isinstance(auth, dict) or auth.get("token") != TOKEN:
            seen.refusals.append(auth)
            seen.changed()
            raise ConnectRefusedError("not authorized", REFUSAL_DATA)

    @main.on("echo")
    async def echo(socket: Socket, *args: JsonValue) -> tuple[JsonValue, ...]:
        seen.events.append(("echo", args))
        seen.changed()
        await trio.lowlevel.checkpoint()
        return args

    @main.on("upload")
    async def upload(socket: Socket, *args: JsonValue) -> JsonValue:
        seen.events.append(("upload", args))
        seen.changed()
        await trio.lowlevel.checkpoint()
        return "stored"

    @main.on("add")
    async def add(socket: Socket, a: JsonValue, b: JsonValue) -> JsonValue:
        await trio.lowlevel.checkpoint()
        if isinstance(a, int) and isinstance(b, int):
            return a + b
        return None

    @main.on("noop")
    async def noop(socket: Socket) -> None:
        await trio.lowlevel.checkpoint()

    @main.on("barrier")
    async def barrier(socket: Socket) -> JsonValue:
        await trio.lowlevel.checkpoint()
        return "ok"

    async def call_client(socket: Socket, event: str, *args: JsonValue) -> JsonValue:
        try:
            with trio.fail_after(CALL_TIMEOUT):
                answer = await socket.call(event, *args)
        except (trio.TooSlowError, ConnectionLostError) as exc:
            return {"error": repr(exc)}
        seen.call_answers.append(answer)
        seen.changed()
        return list(answer)

    @main.on("ask_me")
    async def ask_me(socket: Socket, payload: JsonValue) -> JsonValue:
        return await call_client(socket, "question", payload)

    @main.on("ask_binary")
    async def ask_binary(socket: Socket) -> JsonValue:
        return await call_client(socket, "transform", {"data": SERVER_BLOB, "name": "server"})

    @main.on("push_binary")
    async def push_binary(socket: Socket) -> JsonValue:
        await socket.emit(
            "binary_push",
            {"blob": SERVER_BLOB[:1000], "parts": [b"a", {"deep": b"\x00\xff"}, "text"]},
            b"top",
        )
        return "pushed"

    @main.on("join_room")
    async def join_room(socket: Socket, room: JsonValue) -> JsonValue:
        assert isinstance(room, str)
        await socket.join(room)
        return list[JsonValue](sorted(socket.rooms))

    @main.on("start_poll")
    async def start_poll(socket: Socket, room: JsonValue, question: JsonValue) -> JsonValue:
        assert isinstance(room, str)
        result = await server.to(room).call("poll", question, within=POLL_WITHIN)
        seen.polls.append(result)
        seen.changed()
        answers: dict[str, JsonValue] = {sid: list(args) for sid, args in result.answers.items()}
        return {"answers": answers, "missing": list[JsonValue](sorted(result.missing))}

    @main.on("kick_me")
    async def kick_me(socket: Socket) -> None:
        await socket.disconnect()

    return server, seen


# --------------------------------------------------------------------------- serving


@attrs.define(eq=False)
class RunningServer:
    """A server ``serve_app`` runs; ``stop`` shuts it down while the test goes on."""

    server: Server
    url: str
    _scope: trio.CancelScope
    _stopped: trio.Event

    async def stop(self) -> None:
        """Cancel ``serve`` (a clean shutdown) and wait until it has returned."""
        self._scope.cancel()
        await self._stopped.wait()


@asynccontextmanager
async def serve_app(server: Server) -> AsyncIterator[RunningServer]:
    """Run ``server.serve`` on 127.0.0.1 and a free port for the block; stop it after."""
    scope = trio.CancelScope()
    started = trio.Event()
    stopped = trio.Event()
    address: list[tuple[str, int]] = []

    # serve runs in a nursery of its own task, under its own cancel scope, so that
    # ``stop`` can shut the server down while the test body (in this task) goes on.
    async def run() -> None:
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    address.append(await nursery.start(server.serve, "127.0.0.1", 0))
                    started.set()
        finally:
            started.set()
            stopped.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await started.wait()
        assert address, "the server did not start"
        host, port = address[0]
        running = RunningServer(
            server=server, url=f"http://{host}:{port}", scope=scope, stopped=stopped
        )
        try:
            yield running
        finally:
            scope.cancel()


# --------------------------------------------------------------------------- peers


@attrs.frozen(kw_only=True)
class PeerCommand:
    """How to start one kind of peer: ``argv URL PARSER SCENARIO``."""

    argv: tuple[str, ...]
    parser_name: str

    @property
    def parser(self) -> Parser:
        """The server-side parser matching the peer's."""
        return PARSERS[self.parser_name]

    def __call__(self, url: str, scenario: str) -> list[str]:
        return [*self.argv, url, self.parser_name, scenario]


@attrs.define(eq=False, kw_only=True)
class Peer(PipedProcess):
    """A running peer script: read its JSON lines, wait for it, or kill it."""

    lines: list[Line] = attrs.field(factory=list)
    _buffer: bytearray = attrs.field(factory=bytearray)
    _eof: bool = False

    async def next_line(self) -> Line | None:
        """The next JSON line the peer printed, or None at the end of its output."""
        stdout = self.process.stdout
        assert stdout is not None
        while b"\n" not in self._buffer:
            if self._eof:
                return None
            chunk = await stdout.receive_some(65_536)
            if not chunk:
                self._eof = True
                if self._buffer:
                    self._buffer += b"\n"
                continue
            self._buffer += chunk
        raw, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        try:
            line = json.loads(raw)
        except ValueError as exc:
            raise AssertionError(
                f"peer printed a non-JSON line {raw!r}{self._diagnostics()}"
            ) from exc
        assert isinstance(line, dict), raw
        line = cast("Line", line)
        if line.get("event") == "error":
            raise AssertionError(f"peer failed: {line}{self._diagnostics()}")
        self.lines.append(line)
        return line

    async def expect(self, event: str) -> Line:
        """Read lines up to the first with ``event``; return it."""
        while True:
            line = await self.next_line()
            if line is None:
                raise AssertionError(f"peer ended before {event!r}{self._diagnostics()}")
            if line.get("event") == event:
                return line

    async def finish(self) -> list[Line]:
        """Read the peer's output to its end, check it exited 0 after "done"; every line."""
        while await self.next_line() is not None:
            pass
        code = await self.process.wait()
        await self.stderr_done.wait()
        assert code == 0, f"peer exited with {code}{self._diagnostics()}"
        assert self.lines, f"peer printed nothing{self._diagnostics()}"
        assert self.lines[-1].get("event") == "done", self._diagnostics()
        return self.lines

    def _diagnostics(self) -> str:
        return f"\n  lines: {self.lines}\n  stderr: {self.stderr.decode(errors='replace')[-4000:]}"


@asynccontextmanager
async def open_peer(command: Sequence[str]) -> AsyncIterator[Peer]:
    """Start a peer script; on the way out kill it if it still runs and reap it."""
    async with open_piped(
        lambda process: Peer(process=process), command, stdin=subprocess.DEVNULL
    ) as peer:
        yield peer


# --------------------------------------------------------------------------- reading lines


def from_json(value: Json) -> JsonValue:
    """A value from a peer's line with ``{"$bin": BASE64}`` turned back into bytes."""
    if isinstance(value, list):
        return [from_json(item) for item in value]
    if isinstance(value, dict):
        if value.keys() == {"$bin"}:
            return base64.b64decode(cast("str", value["$bin"]), validate=True)
        return {key: from_json(item) for key, item in value.items()}
    return value


def typed(value: object) -> object:
    """``value`` with each scalar tagged with its type, so that ``True != 1 != 1.0`` and
    ``b"a" != "a"`` in a comparison; tuples and lists compare alike (args are tuples)."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


def the(lines: Sequence[Line], event: str) -> Line:
    """The one line with ``event`` (there must be exactly one)."""
    found = [line for line in lines if line.get("event") == event]
    assert len(found) == 1, f"{len(found)} {event!r} lines in {lines}"
    return found[0]


def text(value: object) -> str:
    """``value``, which must be a string (an id from a peer's line)."""
    assert isinstance(value, str), value
    return value


# --------------------------------------------------------------------------- shared checks
# What every peer must show for the scenarios whose outcome does not depend on the client
# library; each peer's test module adds what is its own.


JS_DATE_JSON: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
"""What ``JSON.stringify(new Date())`` writes (``Date.prototype.toISOString``): the form of
the ECMAScript Date Time String Format that every ``Date.parse`` reads."""


def js_date_seconds(value: object) -> float:
    """``value`` as the seed's ``timestamp: new Date()`` puts it on the wire, in Unix
    seconds: it must match JS_DATE_JSON exactly and survive a round trip."""
    assert isinstance(value, str), value
    assert JS_DATE_JSON.fullmatch(value), value
    moment = datetime.datetime.fromisoformat(value)
    assert moment.utcoffset() == datetime.timedelta(0), value
    again = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert again == value
    return moment.timestamp()


def check_room_isolation(lines: Sequence[Line], started: float) -> None:
    """The seed example's rooms: exactly one message each, ws-1's to alice and bob, ws-2's
    to carol, bob's refused one to nobody, with sane timestamps."""
    # (Nothing was said in the workspaces before: their histories are empty.)
    assert the(lines, "joins")["joins"] == {
        "alice": {"ok": True, "workspaceId": "ws-1", "history": []},
        "bob": {"ok": True, "workspaceId": "ws-1", "history": []},
        "carol": {"ok": True, "workspaceId": "ws-2", "history": []},
    }
    assert the(lines, "dispatches")["dispatches"] == {
        "alice": {"ok": True, "delivered": 2},
        "carol": {"ok": True, "delivered": 1},
        "bob": {"ok": False, "error": "join the workspace first"},
    }
    received = the(lines, "received")
    ids, by_client = received["ids"], received["received"]
    assert isinstance(ids, dict)
    assert isinstance(by_client, dict)
    assert len(set(ids.values())) == 3

    def messages(name: str) -> list[tuple[object, object]]:
        found = by_client[name]
        assert isinstance(found, list)
        result: list[tuple[object, object]] = []
        for message in found:
            assert isinstance(message, dict)
            assert message.keys() == {"sender", "text", "timestamp"}
            moment = js_date_seconds(message["timestamp"])
            assert started - 1 <= moment <= time.time() + 1
            result.append((message["sender"], message["text"]))
        return result

    assert messages("alice") == [(ids["alice"], "from-alice")]
    assert messages("bob") == [(ids["alice"], "from-alice")]
    assert messages("carol") == [(ids["carol"], "from-carol")]


def check_binary(lines: Sequence[Line], seen: Observed, *, bytes_flag: str) -> None:
    """Bytes both ways: the server's handlers got bytes where the client sent its binary
    type, the echo came back binary, a server event with bytes nested in objects arrived
    as the client's binary type (``bytes_flag`` of the push line says so), and a server
    call with bytes was answered with bytes."""
    small = bytes([0, 1, 2, 253, 254, 255])
    payload = {
        "name": "blob",
        "data": small,
        "nested": {"list": [b"hi", 5, {"deep": patterned(100_000)}]},
    }
    assert typed(seen.events) == typed(
        [("echo", (payload, b"*")), ("upload", ({"file": small, "size": 6},))]
    )
    assert typed(from_json(the(lines, "echo")["reply"])) == typed([payload, b"*"])
    assert the(lines, "upload")["reply"] == "stored"
    assert the(lines, "push_binary")["reply"] == "pushed"
    push = the(lines, "binary_push")
    assert push[bytes_flag] is True
    assert typed(from_json(push["args"])) == typed(
        [{"blob": SERVER_BLOB[:1000], "parts": [b"a", {"deep": b"\x00\xff"}, "text"]}, b"top"]
    )
    answer = {"reversed": SERVER_BLOB[::-1], "length": len(SERVER_BLOB)}
    assert typed(seen.call_answers) == typed([(answer,)])
    assert typed(from_json(the(lines, "ask_binary")["reply"])) == typed([answer])


def check_broadcast_acks(lines: Sequence[Line], seen: Observed) -> None:
    """A broadcast with ack: ana and ben answer, cy was sent the event (its handler ran)
    but answered only after the window, so it is missing; its late answer is ignored and
    its connection still works."""
    poll = the(lines, "poll")
    ids = poll["ids"]
    assert isinstance(ids, dict)
    ana, ben, cy = (text(ids[name]) for name in ("ana", "ben", "cy"))
    assert poll["cyPolled"] is True
    assert seen.polls == [
        BroadcastAckResult(
            answers={
                ana: ({"voter": "ana", "question": "lunch?"},),
                ben: ({"voter": "ben", "question": "lunch?"}, 2),
            },
            missing=frozenset({cy}),
        )
    ]
    assert poll["reply"] == {
        "answers": {
            ana: [{"voter": "ana", "question": "lunch?"}],
            ben: [{"voter": "ben", "question": "lunch?"}, 2],
        },
        "missing": [cy],
    }
    assert the(lines, "after_late")["reply"] == "ok"


# --------------------------------------------------------------------------- shared runs

SCENARIO_TIMEOUT: Final = 10.0
"""A hard bound per scenario; they take well under a second (start_poll: 1 s)."""


async def run_scenario(
    peer: PeerCommand, scenario: str, *, disconnects: int = 0
) -> tuple[list[Line], Observed]:
    """Run a scenario to its end against a fresh app, then wait (before the server stops)
    until ``disconnects`` sockets disconnected; the peer's lines and the record."""
    server, seen = build_app(peer.parser)
    with trio.fail_after(SCENARIO_TIMEOUT):
        async with serve_app(server) as running, open_peer(peer(running.url, scenario)) as proc:
            lines = await proc.finish()
            await seen.wait_for(lambda: len(seen.disconnects) >= disconnects)
    return lines, seen


async def run_server_shutdown(peer: PeerCommand) -> list[Line]:
    """Stop the server under a connected peer (the socket's reason is checked here); the
    peer's lines, for the reason its client library reports."""
    server, seen = build_app(peer.parser)
    with trio.fail_after(SCENARIO_TIMEOUT):
        async with (
            serve_app(server) as running,
            open_peer(peer(running.url, "server_shutdown")) as proc,
        ):
            sid = text((await proc.expect("connect"))["id"])
            await seen.wait_for(lambda: any(who == sid for _, who, _ in seen.connects))
            await running.stop()
            assert seen.disconnect_reason(sid) == "server shutting down"
            return await proc.finish()


async def run_heartbeat(peer: PeerCommand) -> tuple[Line, str]:
    """With a 100 ms ping interval the client answers every ping and stays connected (its
    reply and state are checked here); the peer's ``alive`` line and the server's
    disconnect reason."""
    server, seen = build_app(peer.parser, Config(ping_interval=0.1, ping_timeout=0.5))
    with trio.fail_after(SCENARIO_TIMEOUT):
        async with (
            serve_app(server) as running,
            open_peer(peer(running.url, "heartbeat")) as proc,
        ):
            lines = await proc.finish()
            alive = the(lines, "alive")
            reason = await seen.wait_disconnect(text(alive["id"]))
    assert alive["connected"] is True
    assert alive["reply"] == "ok"
    assert reason != "ping timeout"
    return alive, reason


async def check_killed_client(peer: PeerCommand) -> None:
    """A client process killed outright is disconnected with a transport reason, and its
    connection is gone."""
    server, seen = build_app(peer.parser)
    with trio.fail_after(SCENARIO_TIMEOUT):
        async with (
            serve_app(server) as running,
            open_peer(peer(running.url, "killed")) as proc,
        ):
            sid = text((await proc.expect("connect"))["id"])
            await seen.wait_for(lambda: any(who == sid for _, who, _ in seen.connects))
            proc.kill()
            assert await seen.wait_disconnect(sid) in {"transport close", "transport error"}
            assert len(server.connections) == 0


async def check_last_moments(peer: PeerCommand, leaver_reason: str) -> None:
    """Members of "lobby" leave while another stays: one disconnects (its server reason
    is ``leaver_reason``, the client library's way), one is a process killed outright.
    Each time the staying client gets the "left" event the ``disconnecting`` handler sent
    while the leaving socket was still in the room, and the ``disconnect`` handler, run
    after the rooms were left, still read the rooms from ``socket.rooms``."""
    server, seen = build_app(peer.parser)
    with trio.fail_after(SCENARIO_TIMEOUT):
        async with (
            serve_app(server) as running,
            open_peer(peer(running.url, "last_moments")) as stayer,
        ):
            joined = await stayer.expect("joined")
            leaver = text(joined["leaver"])
            first = await stayer.expect("left")
            async with open_peer(peer(running.url, "killed_in_room")) as victim_proc:
                victim = text((await victim_proc.expect("connect"))["id"])
                assert victim_proc.lines[-1]["rooms"] == sorted([victim, "lobby"])
                victim_proc.kill()
                victim_reason = await seen.wait_disconnect(victim)
            lines = await stayer.finish()
            staying = text(joined["stayer"])
            await seen.wait_disconnect(staying)
    assert victim_reason in {"transport close", "transport error"}
    assert first["args"] == [{"sid": leaver, "room": "lobby", "reason": leaver_reason}]
    second = [line for line in lines if line["event"] == "left"][1]
    assert second["args"] == [{"sid": victim, "room": "lobby", "reason": victim_reason}]
    for sid, reason in ((leaver, leaver_reason), (victim, victim_reason)):
        rooms = frozenset({sid, "lobby"})
        assert [m for m in seen.last_moments if m[1] == sid] == [
            ("disconnecting", sid, reason, rooms),
            ("disconnect", sid, reason, rooms),
        ]
    # The staying client got exactly those two (its own last "left" went to nobody).
    assert [line["event"] for line in lines] == ["joined", "left", "left", "done"]
