"""Test a roomcast app the way HTTP apps are tested: a real server, real clients, no sleeps.

::

    async with open_harness(build_server()) as harness:  # in-memory streams by default
        alice = await harness.connect(auth={"user": "alice"})
        assert await alice.call("join", "lobby") == ({"ok": True},)
        await alice.emit("say", "lobby", "hi")
        assert await alice.wait_for("message") == ({"user": "alice", "text": "hi"},)

The pytest plugin (``roomcast.engine.pytest_plugin``, installed with the package) wraps
this in fixtures; ``docs/testing.md`` shows both from zero.

Structure (every task has an owner, docs/architecture.md): ``open_harness`` owns one
nursery holding the app's server (its supervisor, plus ``Server.serve`` on 127.0.0.1 port 0
for ``transport="tcp"``), one task per in-memory connection serving the server's end of the
stream (``Server.serve_stream``),
and one task per ``HarnessClient`` holding its ``open_client`` block and the tasks that
record what it receives. Leaving the block closes the clients, then the server.

Nothing here sleeps or polls: waits end on a recorded event, with a deadline (``within``,
seconds) that raises ``WaitTimeoutError`` listing what did arrive. Under Trio's
``autojump_clock`` every timer (heartbeats, ack waits, connect timeouts, reconnect
backoff) runs in virtual time on the in-memory transports, so a 45-second ping timeout
takes milliseconds.

Fault injection (``HarnessClient.faults``, ``Harness.crash_room``): a client that stops
answering pings, a transport cut half way through a WebSocket frame (either direction),
a slow reader whose reads stall (use ``transport="lockstep"`` so the server feels it at
once), a dropped connection, a server that refuses new connections, and a room actor that
crashes.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, Literal, TypeAlias, TypeVar

import attrs
import trio
import trio.testing

from roomcast.engine.adapters.memory import MemoryAdapter
from roomcast.engine.client import Auth, Client, Handler, open_client
from roomcast.engine.client_config import ClientConfig
from roomcast.engine.errors import NamespaceDisconnected
from roomcast.engine.log import iter_records
from roomcast.engine.transport.eio_client import TransportName

if TYPE_CHECKING:
    from roomcast.engine.namespace import Namespace
    from roomcast.engine.server import Server
    from roomcast.engine.socket import Socket
    from roomcast.protocol import JsonValue, LogRecord, Parser, RecordKind

__all__ = [
    "DEFAULT_WITHIN",
    "MEMORY_URL",
    "ClientFaults",
    "FaultyStream",
    "Harness",
    "HarnessClient",
    "HarnessTransport",
    "Lifecycle",
    "Received",
    "ServerDisconnect",
    "Transport",
    "WaitTimeoutError",
    "log_records",
    "open_harness",
]

Transport: TypeAlias = Literal["memory", "lockstep", "tcp"]
"""How a client reaches the server.

* ``"memory"``: ``trio.testing.memory_stream_pair`` (unbounded buffers; the default).
* ``"lockstep"``: ``trio.testing.lockstep_stream_pair``: a write waits until the peer
  reads it, so a reader that stalls blocks the server's writer at once (slow consumers).
* ``"tcp"``: a real socket to 127.0.0.1 (only when the harness listens: ``"tcp"``).
"""
HarnessTransport: TypeAlias = Literal["memory", "tcp"]
"""Where the harness's server listens: nowhere (in-memory streams only) or on a real
socket on 127.0.0.1, port 0. A TCP harness serves in-memory clients too."""

DEFAULT_WITHIN: Final = 10.0
"""Default deadline of every wait, in (possibly virtual) seconds."""
MEMORY_URL: Final = "http://roomcast.test"
"""The URL in-memory clients use; the name never reaches DNS."""
_CLOSE_TIMEOUT: Final = 5.0
_MAX_RECEIVED: Final = 100_000
_FAULT: Final = "fault injection"

_H = TypeVar("_H", bound=Handler)


class WaitTimeoutError(AssertionError):
    """A harness wait passed its deadline; the message says what arrived instead.

    An ``AssertionError``, so pytest reports it as the test's failed expectation.
    """


# --------------------------------------------------------------------------- records


@attrs.frozen(kw_only=True)
class Received:
    """One event a harness client received.

    Attributes:
        namespace: Its namespace.
        event: The event name.
        args: Its arguments (bytes for binary attachments).
        time: ``trio.current_time()`` when it was recorded (virtual under a MockClock).
        handled: A handler registered with ``HarnessClient.on``/``on_any`` took it (so
            ``wait_for`` and ``receive`` never return it).
    """

    namespace: str
    event: str
    args: tuple[JsonValue, ...]
    time: float
    handled: bool = False


@attrs.frozen(kw_only=True)
class Lifecycle:
    """A namespace of a harness client connected or disconnected (client side).

    Attributes:
        namespace: The namespace.
        kind: ``"connect"`` or ``"disconnect"``.
        reason: The disconnect reason (``"transport close"``, ``"io server disconnect"``,
            ...); ``None`` for a connect.
        sid: The new socket id, for a connect.
        time: ``trio.current_time()`` when it happened.
    """

    namespace: str
    kind: Literal["connect", "disconnect"]
    reason: str | None
    sid: str | None
    time: float


@attrs.frozen(kw_only=True)
class ServerDisconnect:
    """A socket left a namespace, as the server saw it.

    Attributes:
        namespace: The namespace.
        sid: The socket id.
        reason: The server's disconnect reason (``"ping timeout"``, ``"slow consumer"``,
            ``"transport close"``, ``"client namespace disconnect"``, ...).
        time: ``trio.current_time()`` when the server's disconnect handlers ran.
        rooms: The rooms it was in when it left them (its own id included).
    """

    namespace: str
    sid: str
    reason: str
    time: float
    rooms: frozenset[str]


# --------------------------------------------------------------------------- event log


def log_records(
    directory: str | os.PathLike[str],
    *,
    namespace: str | None = None,
    room: str | None = None,
    kind: RecordKind | None = None,
    event: str | None = None,
) -> list[LogRecord]:
    """The records of the event log in ``directory``, oldest first, filtered.

    For assertions on what the log recorded (``kind`` is a ``RecordKind``: ``JOIN``,
    ``MESSAGE``, ``DISCONNECT``, ...). Flush the writer first (``await log.flush()``):
    what it has not written yet is not there. Reads the files directly, on purpose: a
    worker thread would let ``autojump_clock`` jump ahead while it reads, and a test's
    log is small.

    Raises:
        LogCorruptError: The log is damaged (tests must see that, not skip it).
    """
    return [
        record
        for record in iter_records(directory, namespace=namespace, room=room)
        if (kind is None or record.kind == kind) and (event is None or record.event == event)
    ]


# --------------------------------------------------------------------------- faults


def _frame_length(data: bytes) -> int | None:
    """The length of the WebSocket frame at the start of ``data`` (RFC 6455 §5.2), or
    None when its header is not all there."""
    if len(data) < 2:
        return None
    length = data[1] & 0x7F
    position = 2
    if length == 126:
        position = 4
    elif length == 127:
        position = 10
    if len(data) < position:
        return None
    if position > 2:
        length = int.from_bytes(data[2:position], "big")
    if data[1] & 0x80:
        position += 4  # the masking key (every client frame has one, §5.3)
    return position + length


def _cut_point(data: bytes) -> int:
    """Where to cut ``data`` so that its first WebSocket frame is left incomplete."""
    frame = _frame_length(data) or len(data)
    return max(1, min(frame, len(data)) // 2)


@attrs.define(eq=False)
class FaultyStream(trio.abc.Stream):
    """A client's byte stream with the faults its ``ClientFaults`` arms.

    Transparent until a fault is armed; every connection of one client (one per
    reconnect) wraps its stream in one of these, sharing that client's ``ClientFaults``.
    """

    _inner: trio.abc.Stream
    _faults: ClientFaults = attrs.field(repr=False)
    _broken: bool = False
    _held: bytes | bytearray | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``; with a send cut armed, send half its first frame and break.

        Raises:
            trio.BrokenResourceError: The cut happened (or the stream was dropped).
        """
        faults = self._faults
        if self._broken:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError(_FAULT)
        if not faults._cut_send:
            await self._inner.send_all(data)
            return
        faults._cut_send = False
        chunk = bytes(data)
        self._broken = True
        try:
            await self._inner.send_all(chunk[: _cut_point(chunk)])
        finally:
            faults._cut_done()  # first: closing is a checkpoint, and may be cancelled
            await trio.aclose_forcefully(self._inner)
        raise trio.BrokenResourceError(f"{_FAULT}: the transport broke mid-frame")

    async def wait_send_all_might_not_block(self) -> None:
        """As the wrapped stream's."""
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Receive from the wrapped stream; nothing while reads are stalled; with a
        receive cut armed, return half the next frame, and break.

        Cancellation: safe; bytes read from the wrapped stream are kept for the next call.

        Raises:
            trio.BrokenResourceError: After a cut, or once the stream was dropped.
        """
        faults = self._faults
        if self._held is None:
            await faults._reads_open.wait()
            if self._broken:
                raise trio.BrokenResourceError(_FAULT)
            data = await self._inner.receive_some(max_bytes)
            if faults._cut_receive and data and not self._broken:
                faults._cut_receive = False
                chunk = bytes(data)
                self._broken = True
                faults._cut_done()
                await trio.aclose_forcefully(self._inner)
                return chunk[: _cut_point(chunk)]
            self._held = data
        # A stall that began while the read above waited holds back what it got.
        await faults._reads_open.wait()
        data = self._held
        if max_bytes is not None and len(data) > max_bytes:
            data, self._held = data[:max_bytes], data[max_bytes:]
        else:
            self._held = None
        return data

    async def aclose(self) -> None:
        """Close the wrapped stream."""
        self._faults._streams.discard(self)
        await self._inner.aclose()

    async def drop(self) -> None:
        """Abort the stream at once, as a network failure does (no close frame)."""
        self._broken = True
        self._faults._streams.discard(self)
        await trio.aclose_forcefully(self._inner)


@attrs.define(eq=False)
class ClientFaults:
    """Faults to inject into one harness client; they apply to its current connection
    and, where said, to its next ones.

    Attributes:
        cuts: How many cut faults have happened so far.
    """

    _client: Client | None = attrs.field(default=None, repr=False)
    _reads_open: trio.Event = attrs.Factory(trio.Event)
    _cut_send: bool = False
    _cut_receive: bool = False
    _cut_event: trio.Event = attrs.Factory(trio.Event)
    _streams: set[FaultyStream] = attrs.Factory(set)
    cuts: int = 0

    def __attrs_post_init__(self) -> None:
        self._reads_open.set()

    def wrap(self, stream: trio.abc.Stream) -> FaultyStream:
        """Wrap a new connection's stream (the harness does this for every client)."""
        faulty = FaultyStream(inner=stream, faults=self)
        self._streams.add(faulty)
        return faulty

    def silence_pings(self) -> None:
        """Stop answering the server's Engine.IO PINGs (everything else still flows):
        the server drops the connection with ``"ping timeout"`` after
        ``ping_interval + ping_timeout``. Lasts until ``resume_pings``, across
        reconnects."""
        assert self._client is not None, "the client is not running"
        self._client.answer_pings = False

    def resume_pings(self) -> None:
        """Answer PINGs again (from the next one)."""
        assert self._client is not None, "the client is not running"
        self._client.answer_pings = True

    def cut_mid_frame(self, *, direction: Literal["send", "receive"] = "send") -> None:
        """Break the transport half way through the next WebSocket frame.

        ``"send"``: the client's next write (an emit, a call, an ack or a PONG) goes out
        half written, then the connection drops: the server sees a torn frame and the
        end of the stream. ``"receive"``: the client gets half of the next frame the
        server sends, then the connection drops. Either way the client then reconnects
        (if ``reconnect`` is on). Happens once per call; ``wait_cut`` waits for it.
        """
        if direction == "send":
            self._cut_send = True
        else:
            self._cut_receive = True

    async def wait_cut(self, count: int = 1, *, within: float = DEFAULT_WITHIN) -> None:
        """Wait until ``count`` cuts have happened in total.

        Raises:
            WaitTimeoutError: Not within ``within`` seconds.
        """
        with trio.move_on_after(within):
            while self.cuts < count:
                await self._cut_event.wait()
            return
        raise WaitTimeoutError(f"{self.cuts} of {count} cuts happened within {within} s")

    def _cut_done(self) -> None:
        self.cuts += 1
        event, self._cut_event = self._cut_event, trio.Event()
        event.set()

    def stall_reads(self) -> None:
        """Stop reading from the server: from now on nothing more reaches the client.

        On ``"lockstep"`` streams the server's writer blocks at once, its outbox fills
        and the slow-consumer policy applies; on ``"memory"`` streams (unbounded) the
        server never notices; on TCP, after the kernel buffers fill. Lasts until
        ``resume_reads``, across reconnects.
        """
        if self._reads_open.is_set():
            self._reads_open = trio.Event()

    def resume_reads(self) -> None:
        """Read again."""
        self._reads_open.set()

    async def drop(self) -> None:
        """Drop the current connection at once, with no close frame (a network failure).

        Cancellation: the stream is closed either way.
        """
        for stream in list(self._streams):
            await stream.drop()


# --------------------------------------------------------------------------- clients


@attrs.define(eq=False)
class HarnessClient:
    """A ``Client`` connected through a harness, recording what it receives.

    Every event that reaches it is recorded in ``received``. Events no handler takes
    are also queued for ``wait_for`` and ``receive``, which take the earliest matching
    one not taken yet, so an event that arrived before the wait is never missed.
    Handlers registered with ``on`` work as on ``Client.on`` (their return value answers
    the server's ack; events with no handler are not acked, as with any client).

    Attributes:
        client: The underlying ``roomcast.engine.Client``.
        harness: The harness it belongs to.
        faults: Fault injection for this client.
        received: Every event received, in order (handled ones included).
        lifecycle: Every connect and disconnect of its namespaces, in order.
    """

    client: Client = attrs.field(repr=False)
    harness: Harness = attrs.field(repr=False)
    faults: ClientFaults = attrs.field(repr=False)
    received: list[Received] = attrs.Factory(list)
    lifecycle: list[Lifecycle] = attrs.Factory(list)
    _pending: list[Received] = attrs.Factory(list)
    _changed: trio.Event = attrs.Factory(trio.Event)
    _lifecycle_handlers: dict[tuple[str, str], Handler] = attrs.Factory(dict)
    _watched: set[str] = attrs.Factory(set)
    _handled: set[tuple[str, str]] = attrs.Factory(set)
    _any_handled: set[str] = attrs.Factory(set)
    _overflow: bool = False
    _generation: dict[str, int] = attrs.Factory(dict)
    _generation_pumped: set[str] = attrs.Factory(set)
    _pumps: trio.Nursery | None = None
    _closing: trio.Event = attrs.Factory(trio.Event)
    _done: trio.Event = attrs.Factory(trio.Event)

    # ------------------------------------------------------------------ the Client's API

    @property
    def connected(self) -> bool:
        """Whether its Engine.IO session is open."""
        return self.client.connected

    def sid(self, namespace: str = "/") -> str | None:
        """The socket id of ``namespace`` while it is connected, else ``None``."""
        return self.client.sid(namespace)

    def on(self, event: str, *, namespace: str = "/") -> Callable[[_H], _H]:
        """Register ``async def handler(*args)`` for ``event``, as ``Client.on`` does.

        What it takes is recorded in ``received`` (as handled). ``"connect"`` and
        ``"disconnect"`` handlers run after the harness recorded the change.
        """

        def register(handler: _H) -> _H:
            if event in ("connect", "disconnect"):
                self._lifecycle_handlers[namespace, event] = handler
                self._watch(namespace)
                return handler
            self.client.on(event, namespace=namespace)(handler)
            self._handled.add((namespace, event))
            return handler

        return register

    def on_any(self, handler: _H, *, namespace: str = "/") -> _H:
        """Register ``async def handler(name, *args)`` for events no ``on`` handler takes,
        as ``Client.on_any`` does; what it takes is recorded as handled."""
        self.client.on_any(handler, namespace=namespace)
        self._any_handled.add(namespace)
        return handler

    async def emit(self, event: str, *args: JsonValue, namespace: str = "/") -> None:
        """``Client.emit``: send an event.

        Cancellation: nothing was queued.
        """
        await self.client.emit(event, *args, namespace=namespace)

    async def call(
        self, event: str, *args: JsonValue, namespace: str = "/", within: float = DEFAULT_WITHIN
    ) -> tuple[JsonValue, ...]:
        """``Client.call`` with a deadline: send an event, return the server's ack args.

        Cancellation: the event may have been sent; its ack is then ignored.

        Raises:
            WaitTimeoutError: No ack within ``within`` seconds.
        """
        with trio.move_on_after(within):
            return await self.client.call(event, *args, namespace=namespace)
        raise WaitTimeoutError(f"no ack for {event!r} in {namespace!r} within {within} s")

    async def connect_namespace(self, namespace: str, *, auth: Auth = None) -> str:
        """``Client.connect_namespace``: connect another namespace; return its sid.

        Cancellation: the CONNECT may still complete later.
        """
        self._watch(namespace)
        sid = await self.client.connect_namespace(namespace, auth=auth)
        self._generation[namespace] = self._generation.get(namespace, 0) + 1
        self._changed_now()
        if self._pumps is not None and namespace not in self._generation_pumped:
            self._generation_pumped.add(namespace)
            self._pumps.start_soon(self._pump, namespace)
        self.harness._watch_server_namespace(namespace)
        return sid

    async def disconnect(self, namespace: str | None = None) -> None:
        """``Client.disconnect``: leave ``namespace``, or everything for ``None``.

        Cancellation: as ``Client.disconnect``.
        """
        await self.client.disconnect(namespace)

    async def aclose(self) -> None:
        """Close the client cleanly (DISCONNECT, close frames) and stop its tasks.

        Cancellation: the client is still closed when the harness ends.
        """
        self._closing.set()
        await self._done.wait()

    # ------------------------------------------------------------------ what arrived

    def events(self, event: str | None = None, *, namespace: str = "/") -> list[Received]:
        """Everything received in ``namespace`` so far (only ``event``, if given), taken
        by a wait or not, in arrival order. Never waits."""
        return [
            item
            for item in self.received
            if item.namespace == namespace and (event is None or item.event == event)
        ]

    def args(self, event: str, *, namespace: str = "/") -> list[tuple[JsonValue, ...]]:
        """The arguments of every ``event`` received in ``namespace`` so far."""
        return [item.args for item in self.events(event, namespace=namespace)]

    async def wait_for(
        self, event: str, *, namespace: str = "/", within: float = DEFAULT_WITHIN
    ) -> tuple[JsonValue, ...]:
        """Take the earliest ``event`` not taken yet (waiting for it); return its args.

        Cancellation: nothing is taken.

        Raises:
            WaitTimeoutError: None arrived within ``within`` seconds.
        """
        item = await self._take(namespace, event, within)
        return item.args

    async def receive(
        self, *, namespace: str = "/", within: float = DEFAULT_WITHIN
    ) -> tuple[str, tuple[JsonValue, ...]]:
        """Take the earliest event of ``namespace`` not taken yet, whatever its name.

        Cancellation: nothing is taken.

        Raises:
            WaitTimeoutError: None arrived within ``within`` seconds.
        """
        item = await self._take(namespace, None, within)
        return item.event, item.args

    def pending(self, *, namespace: str = "/") -> list[Received]:
        """The events of ``namespace`` no wait has taken yet."""
        return [item for item in self._pending if item.namespace == namespace]

    async def wait_connected(
        self, count: int = 1, *, namespace: str = "/", within: float = DEFAULT_WITHIN
    ) -> str:
        """Wait until ``namespace`` has connected ``count`` times in all (the first
        connect counts; each reconnect adds one); return the sid of that connect.

        Cancellation: nothing changes.

        Raises:
            WaitTimeoutError: Not within ``within`` seconds.
        """
        item = await self._wait_lifecycle("connect", count, namespace, within)
        assert item.sid is not None
        return item.sid

    async def wait_disconnected(
        self, count: int = 1, *, namespace: str = "/", within: float = DEFAULT_WITHIN
    ) -> str:
        """Wait until ``namespace`` has disconnected ``count`` times in all; return the
        reason of that disconnect (the client's words: ``"transport close"``, ...).

        Cancellation: nothing changes.

        Raises:
            WaitTimeoutError: Not within ``within`` seconds.
        """
        item = await self._wait_lifecycle("disconnect", count, namespace, within)
        assert item.reason is not None
        return item.reason

    def server_socket(self, namespace: str = "/") -> Socket:
        """The server's ``Socket`` for this client in ``namespace`` (now connected).

        Raises:
            LookupError: The namespace is not connected, or the server has no socket.
        """
        sid = self.sid(namespace)
        ns = self.harness.server.namespaces.get(namespace)
        if sid is None or ns is None or sid not in ns.sockets:
            raise LookupError(f"no server socket for this client in {namespace!r}")
        return ns.sockets[sid]

    # ------------------------------------------------------------------ internals

    def _watch(self, namespace: str) -> None:
        """Record ``namespace``'s connects and disconnects (before its first await)."""
        if namespace in self._watched:
            return
        self._watched.add(namespace)

        async def connected() -> None:
            sid = self.client.sid(namespace)
            self._add_lifecycle(namespace, "connect", None, sid)
            user = self._lifecycle_handlers.get((namespace, "connect"))
            if user is not None:
                await user()

        async def disconnected(reason: str) -> None:
            self._add_lifecycle(namespace, "disconnect", reason, None)
            user = self._lifecycle_handlers.get((namespace, "disconnect"))
            if user is not None:
                await user(reason)

        self.client.on("connect", namespace=namespace)(connected)
        self.client.on("disconnect", namespace=namespace)(disconnected)

    def _add_lifecycle(
        self,
        namespace: str,
        kind: Literal["connect", "disconnect"],
        reason: str | None,
        sid: str | None,
    ) -> None:
        self.lifecycle.append(
            Lifecycle(
                namespace=namespace,
                kind=kind,
                reason=reason,
                sid=sid,
                time=trio.current_time(),
            )
        )
        if kind == "connect":
            self.harness._watch_server_namespace(namespace)
        self._changed_now()

    async def _pump(self, namespace: str) -> None:
        """Drain ``Client.receive`` (``_observe`` already recorded it all), so that the
        client's bounded buffer never overruns.

        One per namespace name, for the client's life: when the namespace ends, it waits
        for ``connect_namespace`` to bring it back (a new generation) and goes on.
        """
        seen = self._generation.get(namespace, 0)
        while True:
            try:
                await self.client.receive(namespace)
            except NamespaceDisconnected:
                while self._generation.get(namespace, 0) == seen:
                    await self._changed.wait()
                seen = self._generation.get(namespace, 0)

    def _observe(self, namespace: str, event: str, args: tuple[JsonValue, ...]) -> None:
        """``Client.observe`` callback: record every event as it is read, so that once a
        ``call`` returns, what the server sent before its ack is recorded."""
        if len(self.received) >= _MAX_RECEIVED:
            self._overflow = True  # reported by the next wait; never raised on the reader
            return
        handled = (namespace, event) in self._handled or namespace in self._any_handled
        item = Received(
            namespace=namespace,
            event=event,
            args=args,
            time=trio.current_time(),
            handled=handled,
        )
        self.received.append(item)
        if not handled:
            self._pending.append(item)
        self._changed_now()

    def _changed_now(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()

    async def _take(self, namespace: str, event: str | None, within: float) -> Received:
        if self._overflow:
            raise WaitTimeoutError(f"more than {_MAX_RECEIVED} events recorded: the test floods")
        with trio.move_on_after(within):
            while True:
                for index, item in enumerate(self._pending):
                    if item.namespace == namespace and (event is None or item.event == event):
                        del self._pending[index]
                        return item
                if self._done.is_set():
                    break
                await self._changed.wait()
        what = "any event" if event is None else repr(event)
        raise WaitTimeoutError(
            f"no {what} in namespace {namespace!r} within {within} s"
            + (" (the client is closed)" if self._done.is_set() else "")
            + f"; received there: {_summary(self.events(namespace=namespace))}"
        )

    async def _wait_lifecycle(
        self, kind: Literal["connect", "disconnect"], count: int, namespace: str, within: float
    ) -> Lifecycle:
        with trio.move_on_after(within):
            while True:
                seen = [e for e in self.lifecycle if e.namespace == namespace and e.kind == kind]
                if len(seen) >= count:
                    return seen[count - 1]
                if self._done.is_set():
                    break
                await self._changed.wait()
        history = [(e.kind, e.reason) if e.reason else e.kind for e in self.lifecycle]
        raise WaitTimeoutError(
            f"namespace {namespace!r} did not {kind} {count} time(s) within {within} s; "
            f"lifecycle so far: {history}"
        )


def _summary(items: list[Received], limit: int = 20) -> str:
    shown = [f"{item.event}{list(item.args)!r}" for item in items[-limit:]]
    more = f"... ({len(items) - limit} earlier) " if len(items) > limit else ""
    return more + ("[" + ", ".join(shown) + "]" if shown else "nothing")


def _no_jitter() -> float:
    # backoff_delay spreads by (2 * r - 1): r = 0.5 makes every delay exact, so that
    # reconnect timings are the same in every run.
    return 0.5


# --------------------------------------------------------------------------- the harness


@attrs.define(eq=False)
class Harness:
    """An app's server running inside a test, and a factory of connected clients.

    Made by ``open_harness`` (or the pytest fixtures); usable inside its block.

    Attributes:
        server: The app's ``Server``.
        transport: Where it listens: ``"memory"`` (nowhere) or ``"tcp"``.
        url: ``http://127.0.0.1:<port>`` for ``"tcp"``, else ``MEMORY_URL``.
        nursery: The harness's nursery (the server's tasks run in it).
        disconnects: Every socket disconnect the server reported, in order (namespaces
            that existed when the harness started, or that a harness client connected).
    """

    server: Server = attrs.field(repr=False)
    transport: HarnessTransport
    url: str
    nursery: trio.Nursery = attrs.field(repr=False)
    disconnects: list[ServerDisconnect] = attrs.Factory(list)
    _address: tuple[str, int] | None = None
    _clients: list[HarnessClient] = attrs.field(factory=list, repr=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, repr=False)
    _watched: list[Namespace] = attrs.field(factory=list, repr=False)
    _closed: bool = False
    _refusing: bool = False

    # ------------------------------------------------------------------ clients

    async def connect(
        self,
        namespace: str = "/",
        *,
        auth: Auth = None,
        namespaces: Iterable[str] | Mapping[str, Auth] | None = None,
        transport: Transport | None = None,
        parser: Literal["json", "msgpack"] | Parser | None = None,
        reconnect: bool = True,
        reconnect_delay: float = 0.5,
        reconnect_delay_max: float = 5.0,
        max_attempts: int | None = None,
        connect_timeout: float = 20.0,
        headers: Mapping[str, str] | None = None,
        max_buffered_events: int = 256,
        transports: Sequence[TransportName] = ("websocket",),
    ) -> HarnessClient:
        """Connect a client; it stays connected until ``aclose`` or the harness ends.

        Args:
            namespace: The namespace to connect (ignored when ``namespaces`` is given).
            auth: Its CONNECT auth (as ``open_client``'s ``auth``).
            namespaces: Several namespaces at once, or a mapping namespace -> auth.
            transport: ``"memory"``, ``"lockstep"`` or ``"tcp"``; by default the
                harness's own (``"memory"`` or ``"tcp"``).
            parser: Defaults to the server's parser.
            reconnect, reconnect_delay, reconnect_delay_max, max_attempts,
            connect_timeout, headers, max_buffered_events: As ``ClientConfig``'s
                ``reconnection``, ``reconnection_delay``, ``reconnection_delay_max``,
                ``reconnection_attempts``, ``timeout``, ``headers`` and
                ``max_buffered_events``. Reconnect delays have no random jitter here,
                so timings repeat exactly.
            transports: As ``ClientConfig.transports``: ``("polling", "websocket")``
                starts on long-polling and upgrades.

        Cancellation: no client is left running.

        Raises:
            ConnectRefusedError: The server refused a namespace.
            ConnectionFailedError: The connection could not be opened.
            ValueError: Bad arguments (``"tcp"`` on a memory harness, say).
        """
        if self._closed:
            raise RuntimeError("the harness is closed")
        kind = transport or self.transport
        if kind == "tcp":
            if self._address is None:
                raise ValueError("transport='tcp' needs a harness that listens: 'tcp'")
            _refuse_autojump_with_sockets()
        if namespaces is not None and namespace != "/":
            raise ValueError("give either namespace= or namespaces=, not both")
        wanted: Iterable[str] | Mapping[str, Auth] = (
            namespaces if namespaces is not None else (namespace,)
        )
        if isinstance(wanted, str):
            raise TypeError("namespaces is a collection of names: use ('/',), not '/'")
        names = list(wanted)
        client: HarnessClient = await self.nursery.start(
            self._run_client,
            names,
            wanted if isinstance(wanted, Mapping) else None,
            auth,
            kind,
            ClientConfig(
                transports=tuple(transports),
                headers=dict(headers or {}),
                parser=parser if parser is not None else self.server.parser,
                reconnection=reconnect,
                reconnection_attempts=max_attempts,
                reconnection_delay=reconnect_delay,
                reconnection_delay_max=reconnect_delay_max,
                timeout=connect_timeout,
                max_buffered_events=max_buffered_events,
            ),
        )
        return client

    @asynccontextmanager
    async def client(
        self,
        namespace: str = "/",
        *,
        auth: Auth = None,
        transport: Transport | None = None,
        reconnect: bool = True,
    ) -> AsyncIterator[HarnessClient]:
        """``connect`` as a block: the client is closed cleanly when it ends.

        Cancellation: the client is closed (within a deadline).
        """
        client = await self.connect(namespace, auth=auth, transport=transport, reconnect=reconnect)
        try:
            yield client
        finally:
            with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                await client.aclose()

    async def _run_client(
        self,
        names: list[str],
        auth_map: Mapping[str, Auth] | None,
        auth: Auth,
        transport: Transport,
        config: ClientConfig,
        *,
        task_status: trio.TaskStatus[HarnessClient],
    ) -> None:
        faults = ClientFaults()

        async def open_stream(host: str, port: int) -> trio.abc.Stream:
            return faults.wrap(await self._open_client_stream(transport))

        url = self.url if transport == "tcp" else MEMORY_URL
        harness_client: HarnessClient | None = None
        early: list[tuple[str, str, tuple[JsonValue, ...]]] = []

        def observe(namespace: str, event: str, args: tuple[JsonValue, ...]) -> None:
            # Events read while connecting, before the HarnessClient exists, wait here.
            if harness_client is None:
                early.append((namespace, event, args))
            else:
                harness_client._observe(namespace, event, args)

        try:
            async with open_client(
                url,
                config,
                namespaces=auth_map if auth_map is not None else names,
                auth=None if auth_map is not None else auth,
                random_source=_no_jitter,
                stream_factory=open_stream,
                observer=observe,
            ) as client:
                faults._client = client
                harness_client = HarnessClient(client=client, harness=self, faults=faults)
                for item in early:
                    harness_client._observe(*item)
                # Before the first await: the handlers see the first connects.
                for name in names:
                    harness_client._watch(name)
                async with trio.open_nursery() as pumps:
                    harness_client._pumps = pumps
                    for name in names:
                        harness_client._generation_pumped.add(name)
                        pumps.start_soon(harness_client._pump, name)
                        self._watch_server_namespace(name)
                    self._clients.append(harness_client)
                    task_status.started(harness_client)
                    await harness_client._closing.wait()
                    pumps.cancel_scope.cancel()
        finally:
            if harness_client is not None:
                if harness_client in self._clients:
                    self._clients.remove(harness_client)
                harness_client._done.set()
                harness_client._changed_now()

    async def open_stream(
        self, transport: Literal["memory", "lockstep"] = "memory"
    ) -> trio.abc.Stream:
        """A raw in-memory stream to the server (for wire-level tests): the server
        serves the other end, as it would an accepted TCP connection.

        Cancellation: the server may have started serving the other end.
        """
        await trio.lowlevel.checkpoint()
        return await self._open_client_stream(transport)

    async def _open_client_stream(self, transport: Transport) -> trio.abc.Stream:
        if self._closed or self._refusing:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "the harness refuses connections")
        if transport == "tcp":
            assert self._address is not None
            return await trio.open_tcp_stream(*self._address)
        client_end: trio.abc.Stream
        server_end: trio.abc.Stream
        if transport == "lockstep":
            client_end, server_end = trio.testing.lockstep_stream_pair()
        else:
            client_end, server_end = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.server.serve_stream, server_end)
        await trio.lowlevel.checkpoint()
        return client_end

    # ------------------------------------------------------------------ server side

    def refuse_connections(self) -> None:
        """Refuse new connections from harness clients (a server that is down): their
        connection attempts fail, so they back off and retry. Current connections stay;
        cut them with ``client.faults.drop()``."""
        self._refusing = True

    def accept_connections(self) -> None:
        """Accept connections again (after ``refuse_connections``)."""
        self._refusing = False

    async def wait_disconnect(
        self, sid: str, *, namespace: str | None = None, within: float = DEFAULT_WITHIN
    ) -> str:
        """Wait until the server reports that socket ``sid`` disconnected; its reason.

        Cancellation: nothing changes.

        Raises:
            WaitTimeoutError: Not within ``within`` seconds.
        """
        with trio.move_on_after(within):
            while True:
                for item in self.disconnects:
                    if item.sid == sid and (namespace is None or item.namespace == namespace):
                        return item.reason
                await self._changed.wait()
        raise WaitTimeoutError(
            f"the server did not disconnect {sid!r} within {within} s; "
            f"disconnects so far: {[(d.sid, d.reason) for d in self.disconnects]}"
        )

    def sockets(self, namespace: str = "/") -> dict[str, Socket]:
        """The server's connected sockets of ``namespace`` by sid (empty if none)."""
        ns = self.server.namespaces.get(namespace)
        return dict(ns.sockets) if ns is not None else {}

    async def crash_room(self, room: str, *, namespace: str = "/") -> None:
        """Make the actor of ``room`` crash; the server's supervisor restarts it.

        Returns once the crash happened. Crash it more than ``room_max_restarts`` times
        within ``room_restart_window`` and the failure escalates (the server stops, and
        the harness block raises ``RoomCrashLoopError`` in an exception group).

        Cancellation: the crash may or may not have happened.

        Raises:
            LookupError: ``room`` has no actor (no member) in ``namespace``.
            TypeError: The namespace's adapter is not the in-memory one.
        """
        ns = self.server.namespaces.get(namespace)
        if ns is None:
            raise LookupError(f"no namespace {namespace!r}")
        adapter = ns.adapter
        if not isinstance(adapter, MemoryAdapter):
            raise TypeError(f"crash_room needs the in-memory adapter, not {adapter!r}")
        if not await adapter.crash_room(room):
            raise LookupError(f"no room {room!r} in namespace {namespace!r}")

    async def log_records(
        self,
        *,
        namespace: str | None = None,
        room: str | None = None,
        kind: RecordKind | None = None,
        event: str | None = None,
    ) -> list[LogRecord]:
        """What the server's event log recorded so far, oldest first, filtered (as the
        module function ``log_records``); the log is flushed first.

        Cancellation: nothing changes (the flush may be abandoned).

        Raises:
            RuntimeError: The server has no event log open: ``config.log`` is disabled,
                or the harness is in-memory (the server opens its log in ``serve``, which
                only a ``"tcp"`` harness runs).
        """
        log = self.server.log
        if log is None:
            raise RuntimeError(
                "the server has no event log open (config.log disabled, or an in-memory "
                "harness: the server opens its log in serve(), which only 'tcp' runs)"
            )
        await log.flush()
        return log_records(log.directory, namespace=namespace, room=room, kind=kind, event=event)

    async def settle(self) -> None:
        """Wait until every task is blocked: everything sent so far was handled.

        Exact on in-memory transports (then "nothing else arrived" can be asserted
        without a sleep); on TCP it cannot see bytes in flight in the kernel.

        Cancellation: nothing changes.
        """
        await trio.testing.wait_all_tasks_blocked()

    def _watch_server_namespace(self, name: str) -> None:
        ns = self.server.namespaces.get(name)
        if ns is None or ns in self._watched:
            return
        self._watched.append(ns)
        if self._on_disconnect not in ns.disconnect_handlers:
            ns.on("disconnect")(self._on_disconnect)

    async def _on_disconnect(self, socket: Socket, reason: str) -> None:
        self.disconnects.append(
            ServerDisconnect(
                namespace=socket.namespace.name,
                sid=socket.sid,
                reason=reason,
                time=trio.current_time(),
                rooms=socket.rooms,
            )
        )
        event, self._changed = self._changed, trio.Event()
        event.set()

    def _unwatch(self) -> None:
        for ns in self._watched:
            if self._on_disconnect in ns.disconnect_handlers:
                ns.disconnect_handlers.remove(self._on_disconnect)
        self._watched.clear()


def _refuse_autojump_with_sockets() -> None:
    clock = trio.lowlevel.current_clock()
    if isinstance(clock, trio.testing.MockClock) and clock.autojump_threshold != math.inf:
        # The clock would jump to the next timeout whenever every task waits, including
        # while the kernel is still delivering bytes: timeouts would fire at random.
        raise ValueError(
            "autojump_clock with a real socket makes timeouts fire while the kernel is "
            "still delivering data: use transport='memory' (or 'lockstep') with it"
        )


@asynccontextmanager
async def open_harness(
    server: Server, *, transport: HarnessTransport = "memory"
) -> AsyncIterator[Harness]:
    """Run ``server`` for a test; yield a ``Harness`` to connect clients to it.

    ``"memory"``: no socket; clients connect over in-memory streams (works with
    ``autojump_clock``: every timer runs in virtual time). ``"tcp"``: ``Server.serve`` on
    127.0.0.1, port 0 (real time only); in-memory clients can connect too.

    On exit, the clients are closed cleanly, then the server is shut down as on
    cancellation ("server shutting down" for whatever is still connected).

    Cancellation: everything is stopped; clean closes are tried within a deadline.

    Raises:
        ValueError: ``"tcp"`` under an autojumping ``MockClock``.
    """
    if transport == "tcp":
        _refuse_autojump_with_sockets()
    elif transport != "memory":
        raise ValueError(f"transport must be 'memory' or 'tcp', not {transport!r}")
    async with trio.open_nursery() as nursery:
        if transport == "tcp":
            host, port = await nursery.start(server.serve, "127.0.0.1", 0)
            harness = Harness(
                server=server,
                transport=transport,
                url=f"http://{host}:{port}",
                nursery=nursery,
                address=(host, port),
            )
        else:
            await nursery.start(server.supervisor.run)
            for service in server.services:
                await nursery.start(service)
            harness = Harness(server=server, transport=transport, url=MEMORY_URL, nursery=nursery)
        for ns in list(server.namespaces.values()):
            harness._watch_server_namespace(ns.name)
        try:
            yield harness
        finally:
            harness._closed = True
            with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                for client in list(harness._clients):
                    await client.aclose()
            nursery.cancel_scope.cancel()
            harness._unwatch()
