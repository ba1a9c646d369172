"""A Trio Socket.IO v5 client (Engine.IO v4 over WebSocket or HTTP long-polling).

::

    async with open_client("http://127.0.0.1:3000", auth={"token": token}) as client:

        @client.on("question")
        async def answer(text: str) -> str:  # the return value answers the server's ack
            return text.upper()

        await client.emit("hello", "world", b"\\x00\\x01")
        with trio.fail_after(5):
            reply = await client.call("add", 1, 2)  # the server's ack arguments, a tuple
        name, args = await client.receive()  # the next event no handler took

Structure (every task has an owner, docs/architecture.md): ``open_client`` owns one nursery
holding

* the supervisor, which opens a connection, serves it until it ends, and opens the next
  one with exponential backoff while some namespace still wants to be connected;
* per connection, a reader, a writer and an upgrader. The reader feeds packets to the
  Engine.IO session and the Socket.IO decoder: it answers pings, resolves acks and
  records (dis)connects at once, and queues events for the dispatcher without ever
  waiting on it. The writer is the only code that writes to the transport; everyone else
  queues packets in its bounded outbox, except the few control packets (pong, close, the
  send buffer of a namespace that reconnected) that skip the bound. The upgrader probes a
  WebSocket for a session that started on polling (``transport.eio_client``);
* the dispatcher, which runs handlers one at a time in arrival order, answers the
  server's acks with their return values, and buffers the events no handler takes for
  ``Client.receive``.

Every buffer is bounded. Events arriving faster than handlers or ``receive`` take them
are an error (``EventOverrunError``), not a silent drop, as in tractor. A handler that
raises stops the client with ``HandlerError``. The end of a connection is not an error:
it shows as ``NamespaceDisconnected`` from ``receive``/``emit``/``call`` once the client
gives up, and as ``ConnectionLostError`` from a ``call`` whose ack will never come.

Transports are ``ClientConfig.transports``: a WebSocket from the first request (the
default, as ``io(url, {transports: ["websocket"]})``), or HTTP long-polling with the
upgrade to WebSocket (npm's default), or polling only. A namespace whose server offers
connection state recovery reconnects with ``{pid, offset}`` and may be ``recovered``.
"""

from __future__ import annotations

import enum
import inspect
import logging
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Final, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

import attrs
import trio

from roomcast.engine.client_config import MANAGER_EVENTS, ClientConfig, ManagerEvent
from roomcast.engine.errors import (
    ConnectionFailedError,
    ConnectionLostError,
    ConnectRefusedError,
    EngineError,
    EventOverrunError,
    HandlerError,
    NamespaceDisconnected,
    TransportClosed,
)
from roomcast.engine.handlers import require_async
from roomcast.engine.transport.eio_client import (
    EngineTransport,
    EngineUrl,
    TransportName,
    open_engine_transport,
)
from roomcast.engine.transport.ws_client import StreamFactory
from roomcast.protocol import (
    RESERVED_EVENTS,
    Ack,
    AckReceived,
    Closed,
    ConnectAccepted,
    ConnectRefused,
    Decoder,
    DisconnectReason,
    DisconnectRequested,
    EioClientSession,
    EioEvent,
    EioPacket,
    EioPacketType,
    Event,
    EventReceived,
    JsonValue,
    Limits,
    LocalProtocolError,
    MessageReceived,
    NamespaceState,
    RemoteProtocolError,
    SendPacket,
    SioClientConnection,
    SioEvent,
    SioPacket,
)

__all__ = [
    "Auth",
    "AuthProvider",
    "Client",
    "ClientConfig",
    "Handler",
    "Observer",
    "StreamFactory",
    "backoff_delay",
    "open_client",
]

logger = logging.getLogger(__name__)

JsonObject: TypeAlias = dict[str, JsonValue]
AuthProvider: TypeAlias = (
    Callable[[str], Awaitable[JsonObject | None]] | Callable[[str], JsonObject | None]
)
"""Called with the namespace before each CONNECT (so before every reconnect too)."""
Auth: TypeAlias = JsonObject | AuthProvider | None
"""A namespace's auth payload: a JSON object, ``None`` for none, or a provider of one."""
Observer: TypeAlias = Callable[[str, str, tuple[JsonValue, ...]], None]
"""``observer(namespace, event, args)``: sees every event as it is read (``Client.observe``)."""
Handler: TypeAlias = Callable[..., Awaitable[object]]
"""``async def handler(*args)``; what it returns answers the server's ack, if it asked.

``None`` answers with no arguments, a tuple with its items, anything else with itself.
"""
_H = TypeVar("_H", bound=Handler)

_LIFECYCLE_EVENTS: Final = frozenset({"connect", "disconnect"})
"""Reserved names a handler may be registered for: ``connect()`` and ``disconnect(reason)``."""
_DELIBERATE: Final = frozenset(
    {DisconnectReason.IO_CLIENT_DISCONNECT, DisconnectReason.IO_SERVER_DISCONNECT}
)
_MANAGER: Final = ""
"""The handler-table key of manager events (not a namespace: those start with "/")."""
_MAX_WRITE_BATCH: Final = 256
_MAX_BACKOFF_DOUBLINGS: Final = 60
_TLS_SCHEMES: Final = {"http": False, "ws": False, "https": True, "wss": True}


def backoff_delay(
    attempt: int,
    *,
    base: float,
    maximum: float,
    randomization: float,
    random_source: Callable[[], float],
) -> float:
    """Seconds to wait before reconnect attempt number ``attempt`` (1 for the first).

    Exponential (``base * 2**(attempt - 1)``) up to ``maximum``, then spread by up to
    ``± randomization`` of itself with ``random_source()`` (uniform in [0, 1)), and capped
    at ``maximum`` again: the same curve as socket.io-client's ``Backoff``, so that many
    clients dropped at once do not come back at once.
    """
    delay = min(base * 2.0 ** min(attempt - 1, _MAX_BACKOFF_DOUBLINGS), maximum)
    if randomization:
        delay *= 1.0 + randomization * (2.0 * random_source() - 1.0)
    return max(0.0, min(delay, maximum))


# --------------------------------------------------------------------------- records


class _NsState(enum.Enum):
    """Where a client namespace is. All transitions happen in ``Client`` methods named
    ``_ns_*``: PENDING -> CONNECTED -> PENDING (connection lost) ... -> ENDED."""

    PENDING = "pending"
    """Wants a connection: its CONNECT is not sent yet, or not answered yet."""
    CONNECTED = "connected"
    ENDED = "ended"
    """For good: refused, disconnected by either side, or the client gave up."""


_Received: TypeAlias = tuple[str, tuple[JsonValue, ...]]
_OutItem: TypeAlias = tuple[EioPacket, ...] | None
"""The Engine.IO packets of one Socket.IO packet (kept together: attachments follow
their packet), or ``None`` to wake the writer for control packets."""


@attrs.define(eq=False)
class _AckSlot:
    """Where the reader puts the answer a ``call`` waits for."""

    _done: trio.Event = attrs.Factory(trio.Event)
    _args: tuple[JsonValue, ...] = ()
    _error: EngineError | None = None

    def resolve(self, args: tuple[JsonValue, ...]) -> None:
        if not self._done.is_set():
            self._args = args
            self._done.set()

    def fail(self, error: EngineError) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()

    async def wait(self) -> tuple[JsonValue, ...]:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._args


@attrs.define(eq=False)
class _Connection:
    """One Engine.IO session over one transport, and the state of its reader and writer.

    Its outbox is a bounded Trio memory channel of frame lists (None wakes the writer for
    ``control`` frames), not the server's ``actors.outbox.Outbox``, on purpose: the
    client's producers are the app's own tasks (``emit``, ``call``), which should wait
    while the outbox is full (backpressure), whereas the server's producers (room actors,
    other connections) must never wait on one client and evict a slow consumer instead;
    the server's outbox also carries shared broadcast frames and direct writes, which a
    client does not have.
    """

    transport: EngineTransport
    session: EioClientSession
    sio: SioClientConnection
    decoder: Decoder
    outbox_send: trio.MemorySendChannel[_OutItem]
    outbox_recv: trio.MemoryReceiveChannel[_OutItem]
    opened: trio.Event = attrs.Factory(trio.Event)
    """Set when the handshake arrived (or the connection ended before it)."""
    closed: trio.Event = attrs.Factory(trio.Event)
    ready: bool = False
    """The first CONNECTs are sent and answered: from now on, a connection whose last
    namespace ends is closed."""
    close_reason: str | None = None
    closing_reason: str | None = None
    control: list[EioPacket] = attrs.Factory(list)
    final: list[EioPacket] = attrs.Factory(list)
    pending_acks: dict[tuple[str, int], _AckSlot] = attrs.Factory(dict)
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)

    @property
    def usable(self) -> bool:
        """Open, past the handshake, and not closing."""
        return self.opened.is_set() and self.close_reason is None and self.closing_reason is None

    def wake(self) -> None:
        """Make the writer send the control frames queued here and in the transport."""
        # WouldBlock: the writer is busy, and it sends control frames first anyway.
        with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.outbox_send.send_nowait(None)

    def take_control(self) -> list[EioPacket]:
        control = self.control
        self.control = []
        return control


@attrs.define(eq=False)
class _Namespace:
    name: str
    auth: Auth
    inbox_send: trio.MemorySendChannel[_Received]
    inbox_recv: trio.MemoryReceiveChannel[_Received]
    state: _NsState = _NsState.PENDING
    conn: _Connection | None = None
    """The connection its CONNECT went out on (None: not sent on any live connection)."""
    sid: str | None = None
    end_reason: str | None = None
    refused: ConnectRefusedError | None = None
    pid: str | None = None
    """The private session id the server gave for connection state recovery."""
    last_offset: str | None = None
    """The offset of the last event received while ``pid`` was known."""
    recovered: bool = False
    send_buffer: list[tuple[EioPacket, ...]] = attrs.Factory(list)
    """Emits made while reconnecting, sent once connected again."""
    receive_buffer: list[_Incoming] = attrs.Factory(list)
    """Events that came before the CONNECT answer, delivered once it came."""


@attrs.frozen(kw_only=True)
class _Incoming:
    conn: _Connection
    namespace: str
    name: str
    args: tuple[JsonValue, ...]
    ack_id: int | None


@attrs.frozen(kw_only=True)
class _Lifecycle:
    namespace: str
    name: str
    args: tuple[JsonValue, ...] = ()


@attrs.frozen(kw_only=True)
class _Ended:
    ns: _Namespace


_Dispatch: TypeAlias = _Incoming | _Lifecycle | _Ended


@attrs.frozen(kw_only=True)
class _Attempt:
    """How one connection attempt went."""

    opened: bool
    reason: str
    error: EngineError | None = None

    @property
    def lost(self) -> bool:
        """The attempt failed or the connection dropped: the next one waits a backoff."""
        return self.error is not None or self.reason not in _DELIBERATE


@attrs.frozen(kw_only=True)
class _Options:
    """A ClientConfig and what open_client's other arguments add to it."""

    url: EngineUrl
    config: ClientConfig
    random_source: Callable[[], float]
    ssl_context: ssl.SSLContext | None
    stream_factory: StreamFactory | None


# --------------------------------------------------------------------------- the client


@attrs.define(eq=False)
class Client:
    """A connected Socket.IO client; made by ``open_client``, usable inside its block.

    Methods that wait for the connection (``emit``, ``call``, ``connect_namespace``)
    wait while the client reconnects: wrap them in ``trio.fail_after`` to bound that.
    """

    _options: _Options
    _nursery: trio.Nursery
    _namespaces: dict[str, _Namespace] = attrs.Factory(dict)
    _handlers: dict[tuple[str, str], Handler] = attrs.Factory(dict)
    _any_handlers: dict[str, Handler] = attrs.Factory(dict)
    _connection: _Connection | None = None
    _attempt_scope: trio.CancelScope | None = None
    _changed: trio.Event = attrs.Factory(trio.Event)
    _closing: trio.Event = attrs.Factory(trio.Event)
    _done: trio.Event = attrs.Factory(trio.Event)
    _gate: trio.Event = attrs.Factory(trio.Event)
    _ready: trio.Event = attrs.Factory(trio.Event)
    _start_error: EngineError | None = None
    _failure: EngineError | None = None
    _answer_pings: bool = True
    _observer: Observer | None = None
    _dispatch_send: trio.MemorySendChannel[_Dispatch] = attrs.field(init=False)
    _dispatch_recv: trio.MemoryReceiveChannel[_Dispatch] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._dispatch_send, self._dispatch_recv = trio.open_memory_channel[_Dispatch](
            self._options.config.max_buffered_events
        )

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        """Whether an Engine.IO session is open (past its handshake) and not closing."""
        conn = self._connection
        return conn is not None and conn.usable

    @property
    def answer_pings(self) -> bool:
        """Whether the server's Engine.IO PINGs are answered (True, as they must be).

        Set it to False to inject a fault in tests: the client goes on reading and
        sending, but its heartbeat goes silent, so the server drops the connection with
        ``"ping timeout"`` after ``pingInterval + pingTimeout``. Set it back to True to
        answer again (the next PING is answered).
        """
        return self._answer_pings

    @answer_pings.setter
    def answer_pings(self, value: bool) -> None:
        self._answer_pings = value

    def observe(self, observer: Observer | None) -> None:
        """Call ``observer(namespace, event, args)`` for every event, as it is read.

        It runs on the reader's time, in arrival order, before any handler or
        ``receive`` sees the event, and before any ack that arrives after the event
        resolves its ``call``: so once a ``call`` returns, the observer has seen every
        event the server sent before answering. It must not block or raise. One
        observer at a time; ``None`` removes it. For test harnesses and metrics.
        """
        self._observer = observer

    def sid(self, namespace: str = "/") -> str | None:
        """The Socket.IO ``sid`` of ``namespace`` while it is connected, else ``None``.

        It changes on every reconnect (unless the server recovers the session).
        """
        ns = self._namespaces.get(namespace)
        if ns is None or ns.state is not _NsState.CONNECTED:
            return None
        return ns.sid

    def recovered(self, namespace: str = "/") -> bool:
        """Whether the last (re)connect of ``namespace`` recovered its session.

        True when the server (with connection state recovery on) answered the
        ``{pid, offset}`` this client sent with the same ``pid``: the ``sid`` and rooms
        are the ones from before, and the events missed meanwhile are delivered (to
        handlers or ``receive``) before anything newer, as socket.io-client's
        ``socket.recovered``. Such events carry their offset as their last argument.
        """
        ns = self._namespaces.get(namespace)
        return ns is not None and ns.state is _NsState.CONNECTED and ns.recovered

    @property
    def transport(self) -> TransportName | None:
        """The transport carrying the connection now (``None`` while there is none)."""
        conn = self._connection
        return conn.transport.name if conn is not None else None

    def on_manager(self, event: ManagerEvent) -> Callable[[_H], _H]:
        """Register a handler for a reconnection event, as a decorator (npm's
        ``socket.io.on(event, ...)``): ``reconnect_attempt(attempt)`` before each
        attempt, ``reconnect(attempt)`` when one succeeded, ``reconnect_error(message)``
        when one failed, ``reconnect_failed()`` when ``reconnection_attempts`` ran out,
        ``upgrade(transport)`` when a session that started on polling moved to the
        WebSocket. They run with the other handlers, in order.

        Raises:
            ValueError: ``event`` is not one of those.
            TypeError: The handler is not an ``async def`` function.
        """
        if event not in MANAGER_EVENTS:
            raise ValueError(f"{event!r} is not a reconnection event")

        def register(handler: _H) -> _H:
            require_async(handler, repr(event))
            self._handlers[_MANAGER, event] = handler
            return handler

        return register

    def on(self, event: str, *, namespace: str = "/") -> Callable[[_H], _H]:
        """Register ``async def handler(*args)`` for ``event``, as a decorator.

        One handler per event and namespace; registering again replaces it. Handlers
        run one at a time, in arrival order, never on the reader's time. ``"connect"``
        (no arguments) and ``"disconnect"`` (the reason) may be handled too; they run
        on every (re)connect and disconnect of the namespace. Handlers registered at the
        top of the ``async with`` block, before its first await, also get what arrived
        while connecting (the first ``"connect"`` included).

        Raises:
            ValueError: ``event`` is a reserved name other than connect/disconnect, or
                ``namespace`` is not a namespace name.
            TypeError: The handler is not an ``async def`` function.
        """
        if event in RESERVED_EVENTS and event not in _LIFECYCLE_EVENTS:
            raise ValueError(f"{event!r} is a reserved event name")
        _check_namespace(namespace, self._options.config.limits)

        def register(handler: _H) -> _H:
            require_async(handler, repr(event))
            self._handlers[namespace, event] = handler
            return handler

        return register

    def on_any(self, handler: _H, *, namespace: str = "/") -> _H:
        """Register ``async def handler(name, *args)`` for events no ``on`` handler takes.

        Events it takes do not reach ``receive``. Usable as a decorator.

        Raises:
            TypeError: The handler is not an ``async def`` function.
            ValueError: ``namespace`` is not a namespace name.
        """
        require_async(handler, "on_any")
        _check_namespace(namespace, self._options.config.limits)
        self._any_handlers[namespace] = handler
        return handler

    async def emit(self, event: str, *args: JsonValue, namespace: str = "/") -> None:
        """Send an event; ``bytes`` anywhere in ``args`` go as binary attachments.

        While the namespace is (re)connecting, the event is kept in its send buffer
        (npm's ``sendBuffer``, at most ``ClientConfig.send_buffer_size``) and sent, in
        order, once it is connected; with the buffer full, this waits for the
        connection. Waits while the outbox is full. An event queued just before the
        connection drops, or buffered when the client gives up, is lost, as with any
        client.

        Cancellation: nothing was queued.

        Raises:
            NamespaceDisconnected: The namespace is disconnected for good.
            ConnectRefusedError: The server refused the namespace.
            ValueError: ``event`` is reserved, or ``namespace`` was never connected.
            LocalProtocolError: ``args`` are not JSON values and bytes.
        """
        _check_event_name(event)
        frames = self._encode(Event(name=event, args=args, namespace=namespace))
        ns = self._lookup(namespace)
        if (
            ns.state is _NsState.PENDING
            and len(ns.send_buffer) < self._options.config.send_buffer_size
        ):
            ns.send_buffer.append(frames)
            return
        while True:
            conn = await self._wait_connected(namespace)
            try:
                await conn.outbox_send.send(frames)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                continue  # the connection ended first; nothing was sent
            return

    async def call(
        self, event: str, *args: JsonValue, namespace: str = "/"
    ) -> tuple[JsonValue, ...]:
        """Send an event with an ack id and return the arguments the server acks with.

        Cancellation: the event may have been sent; its ack is then ignored.

        Raises:
            ConnectionLostError: The connection or the namespace ended before the ack.
            NamespaceDisconnected, ConnectRefusedError, ValueError, LocalProtocolError:
                As for ``emit``.
        """
        _check_event_name(event)
        while True:
            conn = await self._wait_connected(namespace)
            ack_id = conn.sio.new_ack_id(namespace)
            frames = self._encode(Event(name=event, args=args, namespace=namespace, ack_id=ack_id))
            key = (namespace, ack_id)
            slot = conn.pending_acks[key] = _AckSlot()
            try:
                try:
                    await conn.outbox_send.send(frames)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    continue  # the connection ended first; nothing was sent
                return await slot.wait()
            finally:
                if conn.pending_acks.pop(key, None) is not None and conn.close_reason is None:
                    conn.sio.cancel_ack(namespace, ack_id)  # a late answer is dropped

    async def receive(self, namespace: str = "/") -> tuple[str, tuple[JsonValue, ...]]:
        """Return the next ``(name, args)`` received in ``namespace`` that no handler took.

        Up to ``max_buffered_events`` wait here; one more stops the client with
        ``EventOverrunError``. Events keep coming across reconnects.

        Cancellation: nothing is taken.

        Raises:
            NamespaceDisconnected: The namespace ended and everything before that was
                received.
            ValueError: ``namespace`` was never connected.
        """
        ns = self._lookup(namespace)
        try:
            return await ns.inbox_recv.receive()
        except trio.EndOfChannel:
            raise NamespaceDisconnected(
                namespace, ns.end_reason or DisconnectReason.IO_CLIENT_DISCONNECT
            ) from None

    async def connect_namespace(self, namespace: str, *, auth: Auth = None) -> str:
        """Connect another namespace on this client's connection; return its ``sid``.

        A namespace that ended (or never was) may be connected; one that is connected
        or connecting may not. It is reconnected with the client, with the same auth.

        Cancellation: the CONNECT may still complete later, as if this had returned.

        Raises:
            ConnectRefusedError: The server refused it (``data`` is what it sent).
            NamespaceDisconnected: The connection was lost and the client gave up.
            ValueError: Bad namespace name, or it is already connected or connecting.
        """
        _check_namespace(namespace, self._options.config.limits)
        current = self._namespaces.get(namespace)
        if current is not None and current.state is not _NsState.ENDED:
            raise ValueError(f"namespace {namespace!r} is already connected or connecting")
        if self._closing.is_set():
            raise NamespaceDisconnected(namespace, DisconnectReason.IO_CLIENT_DISCONNECT)
        ns = self._add_namespace(namespace, auth)
        conn = self._connection
        if conn is not None and conn.usable:
            await self._send_connect(conn, ns)
        self._notify()  # an idle supervisor opens a connection for it
        while ns.state is _NsState.PENDING:
            await self._changed.wait()
        if ns.state is _NsState.ENDED:
            raise ns.refused or NamespaceDisconnected(namespace, ns.end_reason or "")
        assert ns.sid is not None
        return ns.sid

    async def disconnect(self, namespace: str | None = None) -> None:
        """Leave ``namespace``, or every namespace (and close the connection) for ``None``.

        Events already buffered stay readable with ``receive``; then it raises
        ``NamespaceDisconnected`` with ``"io client disconnect"``. Disconnecting a
        namespace that is not connected does nothing.

        Cancellation: the namespace is disconnected on our side; the DISCONNECT packet
        may not have been sent.
        """
        conn = self._connection
        if namespace is None:
            if conn is not None:
                self._close_connection(conn, DisconnectReason.IO_CLIENT_DISCONNECT)
            for ns in list(self._namespaces.values()):
                self._ns_end(ns, DisconnectReason.IO_CLIENT_DISCONNECT)
            return
        target = self._namespaces.get(namespace)
        if target is None or target.state is _NsState.ENDED:
            return
        bound = target.conn
        was_connected = target.state is _NsState.CONNECTED
        self._ns_end(target, DisconnectReason.IO_CLIENT_DISCONNECT)
        # A namespace still connecting is left when the server's answer comes (_on_sio).
        if bound is not None and bound.usable and was_connected:
            # After whatever is queued, so that events emitted before still count.
            with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                await bound.outbox_send.send(self._encode(bound.sio.disconnect(namespace)))
            self._close_if_unused(bound, DisconnectReason.IO_CLIENT_DISCONNECT)

    # ------------------------------------------------------------------ internals: API

    def _lookup(self, namespace: str) -> _Namespace:
        ns = self._namespaces.get(namespace)
        if ns is None:
            raise ValueError(
                f"namespace {namespace!r} is not connected: pass it to open_client or "
                "call connect_namespace first"
            )
        return ns

    async def _wait_connected(self, namespace: str) -> _Connection:
        while True:
            ns = self._lookup(namespace)
            if ns.state is _NsState.ENDED:
                raise ns.refused or NamespaceDisconnected(namespace, ns.end_reason or "")
            conn = ns.conn
            if ns.state is _NsState.CONNECTED and conn is not None and conn.usable:
                return conn
            await self._changed.wait()

    def _encode(self, packet: SioPacket) -> tuple[EioPacket, ...]:
        message = EioPacketType.MESSAGE
        return tuple(
            EioPacket(type=message, data=payload)
            for payload in self._options.config.parser.encode(packet)
        )

    def _notify(self) -> None:
        """Wake everyone waiting for a change of namespace or connection state."""
        changed = self._changed
        self._changed = trio.Event()
        changed.set()

    def _add_namespace(self, name: str, auth: Auth) -> _Namespace:
        send, recv = trio.open_memory_channel[_Received](self._options.config.max_buffered_events)
        ns = _Namespace(name=name, auth=auth, inbox_send=send, inbox_recv=recv)
        self._namespaces[name] = ns
        return ns

    def _fail(self, error: EngineError) -> None:
        """Stop the client: ``open_client`` raises ``error`` (the first one wins)."""
        if self._failure is None:
            self._failure = error
        self._closing.set()
        self._nursery.cancel_scope.cancel()

    def _dispatch(self, item: _Dispatch) -> None:
        try:
            self._dispatch_send.send_nowait(item)
        except trio.WouldBlock:
            namespace = item.ns.name if isinstance(item, _Ended) else item.namespace
            self._fail(EventOverrunError(namespace, self._options.config.max_buffered_events))

    # ------------------------------------------------------------------ namespace states

    def _ns_connected(self, ns: _Namespace, conn: _Connection, sid: str, pid: str | None) -> None:
        ns.state = _NsState.CONNECTED
        ns.sid = sid
        # As socket.io-client: recovered when the server answers with the pid we sent.
        ns.recovered = pid is not None and pid == ns.pid
        ns.pid = pid
        # As socket.io-client: the events that came first, then "connect".
        for incoming in ns.receive_buffer:
            self._dispatch(incoming)
        ns.receive_buffer.clear()
        if ns.send_buffer:
            # Emits made while reconnecting go first, in order, ahead of anything new
            # (the writer sends control packets before the outbox).
            for frames in ns.send_buffer:
                conn.control.extend(frames)
            ns.send_buffer.clear()
            conn.wake()
        self._dispatch(_Lifecycle(namespace=ns.name, name="connect"))
        self._notify()

    def _ns_lost(self, ns: _Namespace, reason: str) -> None:
        """Its connection ended: back to PENDING, for the supervisor to decide."""
        was_connected = ns.state is _NsState.CONNECTED
        ns.state = _NsState.PENDING
        ns.conn = None
        ns.sid = None
        ns.receive_buffer.clear()  # that CONNECT will never be answered
        if was_connected:
            self._dispatch(_Lifecycle(namespace=ns.name, name="disconnect", args=(reason,)))

    def _ns_end(
        self, ns: _Namespace, reason: str, *, refused: ConnectRefusedError | None = None
    ) -> None:
        """End ``ns`` for good: fail its acks, run its disconnect handler, close its inbox."""
        if ns.state is _NsState.ENDED:
            return
        was_connected = ns.state is _NsState.CONNECTED
        conn = ns.conn
        ns.state = _NsState.ENDED
        ns.end_reason = reason
        ns.refused = refused
        ns.sid = None
        ns.receive_buffer.clear()
        ns.send_buffer.clear()  # lost with the namespace, as in socket.io-client
        if conn is not None:
            for key in [key for key in conn.pending_acks if key[0] == ns.name]:
                conn.pending_acks.pop(key).fail(ConnectionLostError(reason))
        if was_connected:
            self._dispatch(_Lifecycle(namespace=ns.name, name="disconnect", args=(reason,)))
        # Closed by the dispatcher, in order: events received before this stay readable.
        self._dispatch(_Ended(ns=ns))
        self._notify()

    def _end_pending(self, reason: str) -> None:
        for ns in list(self._namespaces.values()):
            if ns.state is _NsState.PENDING:
                self._ns_end(ns, reason)

    # ------------------------------------------------------------------ supervisor

    async def _supervise(self) -> None:
        """Open the first connection (``_ready`` is set once its namespaces are answered,
        or with ``_start_error``), then keep one open while a namespace wants it, with
        backoff after a failure."""
        try:
            attempt = await self._open_first()
            if attempt.error is not None:
                self._start_error = attempt.error
                return
            failures = 0
            while not self._closing.is_set():
                if not any(ns.state is _NsState.PENDING for ns in self._namespaces.values()):
                    await self._changed.wait()
                    continue
                if attempt.lost:
                    failures += 1
                    config = self._options.config
                    attempts = config.reconnection_attempts
                    if not config.reconnection or (attempts is not None and failures > attempts):
                        logger.debug("not reconnecting after %d attempts", failures - 1)
                        if config.reconnection:
                            self._dispatch(_Lifecycle(namespace=_MANAGER, name="reconnect_failed"))
                        self._end_pending(
                            DisconnectReason.RECONNECT_FAILED
                            if config.reconnection
                            else attempt.reason
                        )
                        failures = 0
                        attempt = _Attempt(
                            opened=False, reason=DisconnectReason.IO_CLIENT_DISCONNECT
                        )
                        continue
                    delay = backoff_delay(
                        failures,
                        base=config.reconnection_delay,
                        maximum=config.reconnection_delay_max,
                        randomization=config.randomization_factor,
                        random_source=self._options.random_source,
                    )
                    logger.debug("reconnect attempt %d in %.3f s", failures, delay)
                    with trio.move_on_after(delay):
                        await self._closing.wait()
                    if self._closing.is_set():
                        break
                    self._dispatch(
                        _Lifecycle(namespace=_MANAGER, name="reconnect_attempt", args=(failures,))
                    )
                attempt = await self._run_attempt(initial=False, reconnect_attempt=failures)
                if attempt.opened:
                    failures = 0
                elif attempt.error is not None:
                    self._dispatch(
                        _Lifecycle(
                            namespace=_MANAGER, name="reconnect_error", args=(str(attempt.error),)
                        )
                    )
        finally:
            self._end_pending(DisconnectReason.IO_CLIENT_DISCONNECT)
            self._ready.set()
            self._done.set()

    async def _open_first(self) -> _Attempt:
        """The first connection; with ``retry_first_connection``, retried with backoff
        while it cannot be opened (a refused namespace is not retried)."""
        config = self._options.config
        attempt = await self._run_attempt(initial=True)
        failures = 0
        while (
            config.retry_first_connection
            and config.reconnection
            and isinstance(attempt.error, ConnectionFailedError)
            and not self._closing.is_set()
        ):
            failures += 1
            if config.reconnection_attempts is not None and failures > config.reconnection_attempts:
                break
            delay = backoff_delay(
                failures,
                base=config.reconnection_delay,
                maximum=config.reconnection_delay_max,
                randomization=config.randomization_factor,
                random_source=self._options.random_source,
            )
            # No manager events here: no handler can be registered before the block,
            # and a long outage would overrun the dispatcher's bounded queue.
            logger.debug(
                "first connection failed (%s): attempt %d in %.3f s", attempt.error, failures, delay
            )
            with trio.move_on_after(delay):
                await self._closing.wait()
            if self._closing.is_set():
                break
            attempt = await self._run_attempt(initial=True)
        return attempt

    async def _run_attempt(self, *, initial: bool, reconnect_attempt: int = 0) -> _Attempt:
        with trio.CancelScope() as scope:
            self._attempt_scope = scope
            try:
                return await self._run_connection(
                    initial=initial, reconnect_attempt=reconnect_attempt
                )
            finally:
                self._attempt_scope = None
        # Cancelled by _aclose before the connection was usable.
        return _Attempt(opened=False, reason=DisconnectReason.IO_CLIENT_DISCONNECT)

    async def _run_connection(self, *, initial: bool, reconnect_attempt: int) -> _Attempt:
        """Open one connection and serve it until it ends.

        ``reconnect_attempt``: which attempt in a row after a loss this is (0: none), for
        the ``reconnect`` event.
        """
        options = self._options
        config = options.config
        deadline = trio.current_time() + config.timeout
        transport: EngineTransport | None = None
        with trio.move_on_at(deadline):
            try:
                transport = await open_engine_transport(
                    options.url,
                    transports=config.transports,
                    headers=config.headers,
                    limits=config.limits,
                    ssl_context=options.ssl_context,
                    stream_factory=options.stream_factory,
                )
            except ConnectionFailedError as exc:
                return _Attempt(opened=False, reason=DisconnectReason.TRANSPORT_ERROR, error=exc)
        if transport is None:
            timeout = ConnectionFailedError(f"no connection within {config.timeout} s")
            return _Attempt(opened=False, reason=DisconnectReason.TRANSPORT_ERROR, error=timeout)
        send, recv = trio.open_memory_channel[_OutItem](config.outbox_size)
        conn = _Connection(
            transport=transport,
            session=EioClientSession(now=trio.current_time()),
            sio=SioClientConnection(limits=config.limits),
            decoder=config.parser.decoder(config.limits),
            outbox_send=send,
            outbox_recv=recv,
        )
        self._connection = conn
        error: EngineError | None = None
        try:
            async with trio.open_nursery() as nursery:
                conn.scope = nursery.cancel_scope
                nursery.start_soon(self._read, conn)
                nursery.start_soon(self._write, conn)
                nursery.start_soon(self._upgrade, conn)
                error = await self._open(conn, initial=initial, deadline=deadline)
                if error is None:
                    self._ready.set()  # the first time, open_client enters its block
                    if reconnect_attempt:
                        self._dispatch(
                            _Lifecycle(
                                namespace=_MANAGER, name="reconnect", args=(reconnect_attempt,)
                            )
                        )
                    await conn.closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            if self._connection is conn:
                self._connection = None
            self._end(
                conn, DisconnectReason.TRANSPORT_CLOSE
            )  # a no-op unless cancelled from outside
            with trio.move_on_after(config.close_timeout, shield=True):
                await transport.aclose()
        return _Attempt(opened=error is None, reason=conn.close_reason or "", error=error)

    async def _upgrade(self, conn: _Connection) -> None:
        """Once the handshake is in, try the WebSocket upgrade of a polling session."""
        config = self._options.config
        if not config.upgrade or "websocket" not in config.transports:
            return
        await conn.opened.wait()
        handshake = conn.session.handshake
        if conn.close_reason is None and handshake is not None:
            # A probe slower than a connection attempt leaves the session on polling.
            with trio.move_on_after(config.timeout):
                await conn.transport.upgrade(handshake.sid, handshake.upgrades)
            if conn.transport.probed:
                await conn.transport.upgraded.wait()
                self._dispatch(_Lifecycle(namespace=_MANAGER, name="upgrade", args=("websocket",)))

    async def _open(
        self, conn: _Connection, *, initial: bool, deadline: float
    ) -> EngineError | None:
        """Wait for the handshake, send the pending CONNECTs and wait for their answers."""
        with trio.move_on_at(deadline):
            await conn.opened.wait()
            if conn.close_reason is None:
                for ns in list(self._namespaces.values()):
                    if ns.state is _NsState.PENDING and ns.conn is None:
                        try:
                            await self._send_connect(conn, ns)
                        except Exception as exc:  # noqa: BLE001 - the user's auth provider
                            error = HandlerError(ns.name, "auth")
                            error.__cause__ = exc
                            self._fail(error)
                            return error
            while conn.close_reason is None and any(
                ns.conn is conn and ns.state is _NsState.PENDING for ns in self._namespaces.values()
            ):
                await self._changed.wait()
        if conn.close_reason is not None:
            return ConnectionFailedError(f"connection closed while opening: {conn.close_reason}")
        if not conn.opened.is_set() or any(
            ns.conn is conn and ns.state is _NsState.PENDING for ns in self._namespaces.values()
        ):
            self._end(conn, DisconnectReason.CONNECT_TIMEOUT)
            return ConnectionFailedError(f"not connected within {self._options.config.timeout} s")
        if initial:
            for ns in self._namespaces.values():
                if ns.refused is not None:
                    return ns.refused
        conn.ready = True
        self._close_if_unused(conn, DisconnectReason.IO_CLIENT_DISCONNECT)
        return None

    async def _send_connect(self, conn: _Connection, ns: _Namespace) -> None:
        ns.conn = conn  # before any await: nobody else sends this CONNECT
        if conn.sio.state(ns.name) is NamespaceState.CONNECTING:
            return  # left while connecting and asked for again: that answer will do
        auth = await _resolve_auth(ns.auth, ns.name)
        if ns.pid is not None:
            # Connection state recovery, as socket.io-client sends it: {pid, offset}
            # under the user's own auth keys (which win on a clash).
            recovery: JsonObject = {"pid": ns.pid}
            if ns.last_offset is not None:
                recovery["offset"] = ns.last_offset
            auth = {**recovery, **(auth or {})}
        if ns.conn is not conn or ns.state is not _NsState.PENDING:
            return  # the connection ended, or the namespace was disconnected meanwhile
        # Closed: the connection ended, and the namespace is PENDING again.
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await conn.outbox_send.send(self._encode(conn.sio.connect(ns.name, auth)))

    def _close_if_unused(self, conn: _Connection, reason: str) -> None:
        """Close a ready connection that no namespace uses any more (as socket.io-client's
        Manager does when its last socket leaves)."""
        if conn.ready and not any(
            ns.conn is conn and ns.state is not _NsState.ENDED for ns in self._namespaces.values()
        ):
            self._close_connection(conn, reason)

    def _close_connection(self, conn: _Connection, reason: str) -> None:
        """Start a clean close: the writer sends what is queued, then a DISCONNECT for
        each namespace still connected and Engine.IO CLOSE, then closes the transport."""
        if conn.close_reason is not None or conn.closing_reason is not None:
            return
        conn.closing_reason = reason
        if not conn.opened.is_set():
            self._end(conn, reason)
            return
        for ns in list(self._namespaces.values()):
            if ns.conn is conn and ns.state is not _NsState.ENDED:
                if ns.state is _NsState.CONNECTED:
                    conn.final.extend(self._encode(conn.sio.disconnect(ns.name)))
                self._ns_end(ns, reason)
        for event in conn.session.close():
            if isinstance(event, SendPacket):
                conn.final.append(event.packet)
        conn.outbox_send.close()

    def _end(self, conn: _Connection, reason: str) -> None:
        """The connection is over: wake its waiters, fail its acks, and put its namespaces
        back to PENDING for the supervisor (or leave them ENDED). Idempotent."""
        if conn.close_reason is not None:
            return
        reason = conn.closing_reason or reason
        conn.close_reason = reason
        conn.opened.set()
        conn.closed.set()
        conn.outbox_send.close()
        conn.scope.cancel()
        acks = list(conn.pending_acks.values())
        conn.pending_acks.clear()
        for slot in acks:
            slot.fail(ConnectionLostError(reason))
        for ns in list(self._namespaces.values()):
            if ns.conn is conn and ns.state is not _NsState.ENDED:
                self._ns_lost(ns, reason)
        logger.debug("connection closed: %s", reason)
        self._notify()

    async def _aclose(self) -> None:
        """Close cleanly: DISCONNECT every namespace, Engine.IO CLOSE, the transport closed."""
        self._closing.set()
        conn = self._connection
        if conn is not None and conn.usable:
            self._close_connection(conn, DisconnectReason.IO_CLIENT_DISCONNECT)
        elif self._attempt_scope is not None:
            self._attempt_scope.cancel()
        self._notify()
        await self._done.wait()

    def _release(self) -> None:
        """After the tasks are gone: ``receive`` ends, whatever the dispatcher left."""
        self._dispatch_send.close()
        self._dispatch_recv.close()
        for ns in self._namespaces.values():
            ns.inbox_send.close()
            if ns.state is not _NsState.ENDED:  # pragma: no cover - the supervisor ends them
                ns.state = _NsState.ENDED
                ns.end_reason = DisconnectReason.IO_CLIENT_DISCONNECT

    # ------------------------------------------------------------------ reader

    async def _read(self, conn: _Connection) -> None:
        session = conn.session
        transport = conn.transport
        try:
            while conn.close_reason is None:
                packets: tuple[EioPacket, ...] | None = None
                # Engine.IO v4 heartbeat: the session's deadline is when the server's
                # next PING is overdue (pingInterval + pingTimeout).
                with trio.move_on_at(session.next_deadline()):
                    packets = await transport.receive()
                if transport.control:
                    conn.wake()
                now = trio.current_time()
                if packets is None:
                    self._on_eio(conn, session.tick(now))
                    continue
                for packet in packets:
                    self._on_eio(conn, session.receive(packet, now))
                if not conn.opened.is_set() and session.handshake is not None:
                    conn.opened.set()
        except TransportClosed as exc:
            if transport.control:
                conn.wake()
            self._end(conn, exc.reason)
        except RemoteProtocolError as exc:
            logger.debug("closing: the server broke the protocol: %s", exc)
            self._end(conn, DisconnectReason.PARSE_ERROR)

    def _on_eio(self, conn: _Connection, events: Iterable[EioEvent]) -> None:
        for event in events:
            if isinstance(event, SendPacket):
                if not self._answer_pings and event.packet.type is EioPacketType.PONG:
                    logger.debug("not answering a PING (answer_pings is off)")
                    continue
                # PONG: control traffic skips the outbox bound (as on the server: a full
                # app queue must not starve heartbeats).
                conn.control.append(event.packet)
                conn.wake()
            elif isinstance(event, MessageReceived):
                packet = conn.decoder.receive(event.data)
                if packet is not None:
                    self._on_sio(conn, conn.sio.receive(packet))
            elif isinstance(event, Closed):
                self._end(conn, event.reason)

    def _on_sio(self, conn: _Connection, events: Iterable[SioEvent]) -> None:
        for event in events:
            if isinstance(event, EventReceived):
                ns = self._namespaces.get(event.namespace)
                args = event.args
                if ns is not None and ns.pid is not None and args and isinstance(args[-1], str):
                    # A recovery-aware server appends the offset as the last argument;
                    # like socket.io-client, keep it (and leave it in the arguments).
                    ns.last_offset = args[-1]
                if self._observer is not None:
                    self._observer(event.namespace, event.name, event.args)
                incoming = _Incoming(
                    conn=conn,
                    namespace=event.namespace,
                    name=event.name,
                    args=event.args,
                    ack_id=event.ack_id,
                )
                if ns is not None and ns.conn is conn and ns.state is _NsState.PENDING:
                    # Missed events a recovering server sends before its CONNECT answer
                    # wait for it, as in socket.io-client's receiveBuffer.
                    if len(ns.receive_buffer) >= self._options.config.max_buffered_events:
                        self._fail(EventOverrunError(ns.name, len(ns.receive_buffer)))
                    ns.receive_buffer.append(incoming)
                else:
                    self._dispatch(incoming)
            elif isinstance(event, AckReceived):
                slot = conn.pending_acks.pop((event.namespace, event.ack_id), None)
                if slot is not None:
                    slot.resolve(event.args)
            elif isinstance(event, ConnectAccepted):
                ns = self._namespaces.get(event.namespace)
                if ns is not None and ns.conn is conn and ns.state is _NsState.PENDING:
                    self._ns_connected(ns, conn, event.sid, event.pid)
                elif conn.closing_reason is None:
                    # We gave up on it while it was connecting: leave it on the server too.
                    conn.control.extend(self._encode(conn.sio.disconnect(event.namespace)))
                    conn.wake()
            elif isinstance(event, ConnectRefused):
                ns = self._namespaces.get(event.namespace)
                if ns is not None and ns.conn is conn and ns.state is _NsState.PENDING:
                    error = _refused_error(event.namespace, event.data)
                    self._ns_end(ns, DisconnectReason.CONNECT_REFUSED, refused=error)
                    self._close_if_unused(conn, DisconnectReason.IO_CLIENT_DISCONNECT)
            elif isinstance(event, DisconnectRequested):
                ns = self._namespaces.get(event.namespace)
                if ns is not None and ns.conn is conn:
                    self._ns_end(ns, DisconnectReason.IO_SERVER_DISCONNECT)
                    self._close_if_unused(conn, DisconnectReason.IO_SERVER_DISCONNECT)

    # ------------------------------------------------------------------ writer

    async def _write(self, conn: _Connection) -> None:
        transport = conn.transport
        receive_nowait = conn.outbox_recv.receive_nowait
        try:
            async for item in conn.outbox_recv:
                batch = conn.take_control()
                if item is not None:
                    batch.extend(item)
                for _ in range(_MAX_WRITE_BATCH):
                    try:
                        more = receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    if more is not None:
                        batch.extend(more)
                await transport.send(batch)
            if conn.close_reason is not None:
                return
            # A clean close: everything queued went out; now the goodbyes.
            await transport.send([*conn.take_control(), *conn.final])
            await transport.aclose()
            self._end(conn, conn.closing_reason or DisconnectReason.IO_CLIENT_DISCONNECT)
        except TransportClosed as exc:
            self._end(conn, exc.reason)

    # ------------------------------------------------------------------ dispatcher

    async def _run_dispatcher(self) -> None:
        """Run handlers in arrival order; buffer what no handler takes."""
        # Opened when the caller's block starts, so that handlers it registers first
        # see the events that arrived while connecting.
        await self._gate.wait()
        async for item in self._dispatch_recv:
            if isinstance(item, _Incoming):
                await self._handle_event(item)
            elif isinstance(item, _Lifecycle):
                handler = self._handlers.get((item.namespace, item.name))
                if handler is not None:
                    await self._call_handler(handler, item.namespace, item.name, item.args)
            else:
                item.ns.inbox_send.close()

    async def _handle_event(self, item: _Incoming) -> None:
        namespace = item.namespace
        handler = self._handlers.get((namespace, item.name))
        if handler is not None:
            ok, result = await self._call_handler(handler, namespace, item.name, item.args)
        else:
            any_handler = self._any_handlers.get(namespace)
            if any_handler is None:
                self._buffer(item)
                return
            ok, result = await self._call_handler(
                any_handler, namespace, item.name, (item.name, *item.args)
            )
        if not ok or item.ack_id is None:
            return
        if result is None:
            args: tuple[object, ...] = ()
        elif isinstance(result, tuple):
            args = result
        else:
            args = (result,)
        try:
            # A handler may return anything; the encoder refuses what is not JSON.
            ack = Ack(
                ack_id=item.ack_id, args=cast("tuple[JsonValue, ...]", args), namespace=namespace
            )
            frames = self._encode(ack)
        except LocalProtocolError as exc:
            error = HandlerError(namespace, item.name)
            error.__cause__ = exc
            self._fail(error)
            return
        # Closed: that connection is gone, and the server forgot the ack with it.
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await item.conn.outbox_send.send(frames)

    def _buffer(self, item: _Incoming) -> None:
        ns = self._namespaces.get(item.namespace)
        if ns is None:
            return
        try:
            ns.inbox_send.send_nowait((item.name, item.args))
        except trio.WouldBlock:
            self._fail(EventOverrunError(item.namespace, self._options.config.max_buffered_events))
        except trio.ClosedResourceError:
            pass  # a namespace that ended: nobody can receive it
        else:
            if item.ack_id is not None:
                logger.debug("no handler answers the ack of %r", item.name)

    async def _call_handler(
        self, handler: Handler, namespace: str, event: str, args: tuple[JsonValue, ...]
    ) -> tuple[bool, object]:
        try:
            return True, await handler(*args)
        except Exception as exc:  # noqa: BLE001 - a handler's error stops the client (HandlerError)
            error = HandlerError(namespace, event)
            error.__cause__ = exc
            self._fail(error)
            return False, None


# --------------------------------------------------------------------------- helpers


def _holds_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is, or is a group holding, a ``trio.Cancelled``."""
    if isinstance(exc, trio.Cancelled):
        return True
    return isinstance(exc, BaseExceptionGroup) and any(
        _holds_cancelled(inner) for inner in exc.exceptions
    )


def _check_event_name(event: str) -> None:
    if event in RESERVED_EVENTS:
        raise ValueError(f"{event!r} is a reserved event name")


def _check_namespace(namespace: str, limits: Limits) -> None:
    if not namespace.startswith("/") or "," in namespace:
        raise ValueError(f"a namespace starts with '/' and has no ',': {namespace!r}")
    if len(namespace) > limits.max_namespace_length:
        raise ValueError(f"namespace longer than {limits.max_namespace_length}: {namespace!r}")


async def _resolve_auth(auth: Auth, namespace: str) -> JsonObject | None:
    value: object = auth
    if callable(auth):
        value = auth(namespace)
        if inspect.isawaitable(value):
            value = await value
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"auth for {namespace!r} must be a JSON object or None, not {value!r}")
    return value


def _refused_error(namespace: str, data: JsonValue) -> ConnectRefusedError:
    # Socket.IO v5 servers send {"message": ..., "data": ...}; v2-era ones a bare string.
    if isinstance(data, dict):
        message = data.get("message")
        return ConnectRefusedError(
            message if isinstance(message, str) else "connection refused",
            data.get("data"),
            namespace=namespace,
        )
    if isinstance(data, str):
        return ConnectRefusedError(data, namespace=namespace)
    return ConnectRefusedError("connection refused", namespace=namespace)


def _engine_url(url: str, path: str) -> EngineUrl:
    """Where the Engine.IO endpoint of the server at ``url`` is."""
    parts = urlsplit(url)
    tls = _TLS_SCHEMES.get(parts.scheme)
    if tls is None or not parts.hostname:
        raise ValueError(f"expected an http(s):// or ws(s):// URL with a host, got {url!r}")
    if parts.path not in ("", "/"):
        raise ValueError(
            f"the URL names the server, not a namespace ({parts.path!r}): pass namespaces="
        )
    return EngineUrl(
        tls=tls,
        host=parts.hostname,
        port=parts.port or (443 if tls else 80),
        path=path,
        query=parts.query,
    )


def _namespace_auth(namespaces: Iterable[str] | Mapping[str, Auth], auth: Auth) -> dict[str, Auth]:
    if isinstance(namespaces, str):
        raise TypeError("namespaces is a collection of names: use ('/',), not '/'")
    if isinstance(namespaces, Mapping):
        if auth is not None:
            raise ValueError("give auth either per namespace (a mapping) or as auth=, not both")
        return dict(namespaces)
    return dict.fromkeys(namespaces, auth)


# --------------------------------------------------------------------------- open_client


@asynccontextmanager
async def open_client(
    url: str,
    config: ClientConfig | None = None,
    *,
    namespaces: Iterable[str] | Mapping[str, Auth] = ("/",),
    auth: Auth = None,
    ssl_context: ssl.SSLContext | None = None,
    observer: Observer | None = None,
    random_source: Callable[[], float] = random.random,
    stream_factory: StreamFactory | None = None,
) -> AsyncIterator[Client]:
    """Connect to a Socket.IO server and its namespaces; disconnect cleanly on exit.

    Enters once the Engine.IO handshake is done and every namespace in ``namespaces`` is
    connected. On exit, sends DISCONNECT for every namespace, Engine.IO CLOSE and closes
    the transport (within ``config.close_timeout``), and stops every task.

    Args:
        url: The server, ``http(s)://host:port`` (or ``ws(s)://``); its query string is
            passed on. Namespaces are given by ``namespaces``, not in the URL.
        config: Transports, reconnection, timers and bounds (``ClientConfig()``).
        namespaces: Namespaces to connect at once, or a mapping of namespace to its
            auth (then ``auth`` must be ``None``).
        auth: The CONNECT payload of each namespace: a JSON object, ``None``, or a
            callable (sync or async) taking the namespace and returning one, called
            before every (re)connect.
        ssl_context: The TLS settings for ``https://``/``wss://`` (default: the
            system's trust store, ``ssl.create_default_context()``).
        observer: Sees every event from the first connection on (``Client.observe``).
        random_source: Uniform [0, 1) numbers for the backoff jitter (tests pass a
            fixed one).
        stream_factory: ``async (host, port) -> trio.abc.Stream`` opening each byte
            stream (every WebSocket and HTTP connection, on every reconnect) instead of
            TCP/TLS. Tests use it for in-memory transports (``roomcast.engine.testing``)
            and fault injection.

    Cancellation: on entry, nothing is left open; on exit, a clean close is tried
    within ``close_timeout`` (shielded), then the connection is dropped.

    Raises:
        ConnectionFailedError: The first connection could not be opened.
        ConnectRefusedError: The server refused one of ``namespaces``.
        EventOverrunError, HandlerError: The client stopped: events came in faster than
            they were taken, or a handler (or an auth provider) raised. The block is
            cancelled, and this is raised from it.
        ValueError, TypeError: Bad arguments.
    """
    config = config or ClientConfig()
    wanted = _namespace_auth(namespaces, auth)
    for name in wanted:
        _check_namespace(name, config.limits)
    options = _Options(
        url=_engine_url(url, config.path),
        config=config,
        random_source=random_source,
        ssl_context=ssl_context,
        stream_factory=stream_factory,
    )
    start_error: EngineError | None = None
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        client = Client(options=options, nursery=nursery, observer=observer)
        for name, namespace_auth in wanted.items():
            client._add_namespace(name, namespace_auth)
        nursery.start_soon(client._run_dispatcher)
        nursery.start_soon(client._supervise)
        await client._ready.wait()
        if client._start_error is not None:
            # Raised after the nursery, so that it is not wrapped in an ExceptionGroup.
            start_error = client._start_error
            nursery.cancel_scope.cancel()
        else:
            try:
                client._gate.set()
                yield client
            except BaseException as exc:  # noqa: ASYNC103 - Cancelled is re-raised just below
                if _holds_cancelled(exc):
                    raise  # Trio routes it to its scope (ours, when the client failed)
                body_error = exc  # re-raised below, outside the nursery: not wrapped
            finally:
                with trio.move_on_after(config.close_timeout, shield=True):
                    await client._aclose()
                nursery.cancel_scope.cancel()
    client._release()
    if start_error is not None:
        raise start_error
    if body_error is not None:
        raise body_error
    if client._failure is not None:
        raise client._failure
