"""Socket.IO v5 namespace connections: which namespaces are joined, and pending acks.

Rule 1 (after h11's ``_state.py``): every namespace state transition lives in the two
tables below, ``_SERVER_TRANSITIONS`` and ``_CLIENT_TRANSITIONS``. The connection
classes only look moves up; a move missing from the table raises ``LocalProtocolError``
when our own code asked for it and ``RemoteProtocolError`` when the peer did.

A namespace that is not in a connection's books is ``DISCONNECTED``: reaching that state
forgets the namespace, its ack counter and its pending acks, so the books stay as small
as the set of joined namespaces.

The server side follows socket.io's ``Client.ondecoded`` (socket.io 4.8): a CONNECT for a
namespace it does not know starts a connection; any other packet for a namespace that is
not connected, a second CONNECT, and any CONNECT_ERROR close the whole connection. (Like
socket.io, this includes an EVENT that crosses our own DISCONNECT on the wire.)

The client side follows socket.io-client: a packet for a namespace it is not in is
dropped (it may have crossed our DISCONNECT on the wire), and the server's answer to a
CONNECT is either ``{"sid": ...}`` or a CONNECT_ERROR.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final, TypeAlias, assert_never

import attrs

from roomcast.protocol._errors import LocalProtocolError, RemoteProtocolError
from roomcast.protocol._json import JsonValue
from roomcast.protocol._limits import DEFAULT_LIMITS, Limits
from roomcast.protocol._sio import Ack, Connect, ConnectError, Disconnect, Event, SioPacket

__all__ = [
    "AckReceived",
    "ConnectAccepted",
    "ConnectRefused",
    "ConnectRequested",
    "DisconnectRequested",
    "EventReceived",
    "NamespaceState",
    "SioClientConnection",
    "SioEvent",
    "SioServerConnection",
]


class NamespaceState(enum.Enum):
    """Where one namespace of one connection stands (socket.io-protocol v5, "Connection")."""

    __hash__ = object.__hash__  # (as ``_Move``'s: a table key looked up once per packet)

    CONNECTING = "connecting"
    """CONNECT sent (client) or received (server); no answer yet."""
    CONNECTED = "connected"
    """The server answered CONNECT with ``{"sid": ...}``: events and acks may flow."""
    DISCONNECTED = "disconnected"
    """Not joined (never was, refused, or left): the connection keeps nothing about it."""


def _args(value: Iterable[JsonValue]) -> tuple[JsonValue, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class ConnectRequested:
    """Server role: the client asks to join ``namespace``; answer with accept or refuse.

    Attributes:
        namespace: The namespace asked for.
        auth: The client's auth payload: a JSON object, or ``None`` when it sent none.
    """

    namespace: str
    auth: JsonValue


@attrs.frozen(kw_only=True)
class EventReceived:
    """The peer emitted ``name`` with ``args``; answer with an ``Ack`` if ``ack_id`` is set."""

    namespace: str
    name: str
    args: tuple[JsonValue, ...] = attrs.field(converter=_args)
    ack_id: int | None


@attrs.frozen(kw_only=True)
class AckReceived:
    """The peer answered the event we sent with ``ack_id``."""

    namespace: str
    ack_id: int
    args: tuple[JsonValue, ...] = attrs.field(converter=_args)


@attrs.frozen(kw_only=True)
class DisconnectRequested:
    """The peer left ``namespace`` (client side: the server disconnected us from it).

    Acks still pending on ``namespace`` will never be answered; they are forgotten.
    """

    namespace: str


@attrs.frozen(kw_only=True)
class ConnectAccepted:
    """Client role: the server let us join ``namespace`` as ``sid``.

    Attributes:
        namespace: The namespace joined.
        sid: Our Socket.IO id in that namespace (not the Engine.IO ``eio_sid``).
        pid: The private session id for connection state recovery, when the server
            offers recovery (socket.io >= 4.6 sends ``{"sid": ..., "pid": ...}``).
    """

    namespace: str
    sid: str
    pid: str | None = None


@attrs.frozen(kw_only=True)
class ConnectRefused:
    """Client role: the server refused to let us join ``namespace``.

    Attributes:
        namespace: The namespace refused.
        data: The CONNECT_ERROR payload, usually ``{"message": ..., "data": ...}``.
    """

    namespace: str
    data: JsonValue


SioEvent: TypeAlias = (
    ConnectRequested
    | EventReceived
    | AckReceived
    | DisconnectRequested
    | ConnectAccepted
    | ConnectRefused
)


class _Move(enum.Enum):
    """What happens to a namespace; the rows of the transition tables."""

    # An identity hash, in C: the transition tables are looked up with these as keys
    # once per packet, and ``Enum.__hash__`` is Python code (members are singletons, so
    # identity is what equality means for them anyway).
    __hash__ = object.__hash__

    SEND_CONNECT = enum.auto()
    RECEIVE_CONNECT = enum.auto()
    RECEIVE_CONNECT_ERROR = enum.auto()
    ACCEPT = enum.auto()
    REFUSE = enum.auto()
    SEND_EVENT_WITH_ACK = enum.auto()
    RECEIVE_EVENT = enum.auto()
    RECEIVE_ACK = enum.auto()
    SEND_DISCONNECT = enum.auto()
    RECEIVE_DISCONNECT = enum.auto()


_IGNORE: Final = None
"""Table value for a packet that is dropped without any state change."""
_NOT_ALLOWED: Final = object()
"""What a table lookup gives for a move the table has no row for."""

_CONNECTING: Final = NamespaceState.CONNECTING
_CONNECTED: Final = NamespaceState.CONNECTED
_DISCONNECTED: Final = NamespaceState.DISCONNECTED

_Table: TypeAlias = dict[tuple[NamespaceState, _Move], NamespaceState | None]

_SERVER_TRANSITIONS: Final[_Table] = {
    (_DISCONNECTED, _Move.RECEIVE_CONNECT): _CONNECTING,
    (_CONNECTING, _Move.ACCEPT): _CONNECTED,
    (_CONNECTING, _Move.REFUSE): _DISCONNECTED,
    (_CONNECTED, _Move.RECEIVE_EVENT): _CONNECTED,
    (_CONNECTED, _Move.RECEIVE_ACK): _CONNECTED,
    (_CONNECTED, _Move.SEND_EVENT_WITH_ACK): _CONNECTED,
    (_CONNECTED, _Move.RECEIVE_DISCONNECT): _DISCONNECTED,
    (_CONNECTED, _Move.SEND_DISCONNECT): _DISCONNECTED,
}
"""Server role. Missing remote moves close the connection, as socket.io's ondecoded does."""

_CLIENT_TRANSITIONS: Final[_Table] = {
    (_DISCONNECTED, _Move.SEND_CONNECT): _CONNECTING,
    (_CONNECTING, _Move.RECEIVE_CONNECT): _CONNECTED,
    (_CONNECTING, _Move.RECEIVE_CONNECT_ERROR): _DISCONNECTED,
    # Node socket.io (>= 4.6) sends a recovered session's missed events before its
    # CONNECT answer; socket.io-client keeps them (its receiveBuffer) until connected.
    (_CONNECTING, _Move.RECEIVE_EVENT): _CONNECTING,
    (_CONNECTED, _Move.RECEIVE_EVENT): _CONNECTED,
    (_CONNECTED, _Move.RECEIVE_ACK): _CONNECTED,
    (_CONNECTED, _Move.SEND_EVENT_WITH_ACK): _CONNECTED,
    (_CONNECTED, _Move.RECEIVE_DISCONNECT): _DISCONNECTED,
    (_CONNECTED, _Move.SEND_DISCONNECT): _DISCONNECTED,
    # Late packets for a namespace we left (they crossed our DISCONNECT): dropped.
    (_DISCONNECTED, _Move.RECEIVE_CONNECT): _IGNORE,
    (_DISCONNECTED, _Move.RECEIVE_CONNECT_ERROR): _IGNORE,
    (_DISCONNECTED, _Move.RECEIVE_EVENT): _IGNORE,
    (_DISCONNECTED, _Move.RECEIVE_ACK): _IGNORE,
    (_DISCONNECTED, _Move.RECEIVE_DISCONNECT): _IGNORE,
}
"""Client role."""


@attrs.define(eq=False)
class _Namespaces:
    """The books of one connection: namespace states, ack counters, pending acks."""

    _table: _Table
    _max_ack_id: int
    _states: dict[str, NamespaceState] = attrs.Factory(dict)
    _next_ack_ids: dict[str, int] = attrs.Factory(dict)
    _pending_acks: dict[str, set[int]] = attrs.Factory(dict)

    def state(self, namespace: str) -> NamespaceState:
        return self._states.get(namespace, _DISCONNECTED)

    def move(self, namespace: str, move: _Move, *, remote: bool) -> bool:
        """Apply ``move``; return False when the table says to drop the packet."""
        state = self._states.get(namespace, _DISCONNECTED)
        new_state = self._table.get((state, move), _NOT_ALLOWED)
        if new_state is None:
            return False
        if not isinstance(new_state, NamespaceState):  # _NOT_ALLOWED: the table has no row
            who = "peer" if remote else "local code"
            message = f"{who}: {move.name} not allowed while {namespace!r} is {state.value}"
            if remote:
                raise RemoteProtocolError(message)
            raise LocalProtocolError(message)
        if new_state is _DISCONNECTED:
            self._states.pop(namespace, None)
            self._next_ack_ids.pop(namespace, None)
            self._pending_acks.pop(namespace, None)
        else:
            self._states[namespace] = new_state
        return True

    def new_ack_id(self, namespace: str) -> int:
        self.move(namespace, _Move.SEND_EVENT_WITH_ACK, remote=False)
        pending = self._pending_acks.setdefault(namespace, set())
        if len(pending) > self._max_ack_id:
            raise LocalProtocolError(f"every ack id of {namespace!r} is pending")
        ack_id = self._next_ack_ids.get(namespace, 0)
        # Ids wrap after max_ack_id (2**53-1: what a JavaScript peer can count to),
        # skipping any that is still waiting for its answer.
        while ack_id in pending:
            ack_id = 0 if ack_id >= self._max_ack_id else ack_id + 1
        self._next_ack_ids[namespace] = 0 if ack_id >= self._max_ack_id else ack_id + 1
        pending.add(ack_id)
        return ack_id

    def expect_ack(self, namespace: str, ack_id: int) -> None:
        self.move(namespace, _Move.SEND_EVENT_WITH_ACK, remote=False)
        if not 0 <= ack_id <= self._max_ack_id:
            raise LocalProtocolError(f"ack id {ack_id} out of range")
        self._pending_acks.setdefault(namespace, set()).add(ack_id)

    def cancel_ack(self, namespace: str, ack_id: int) -> None:
        pending = self._pending_acks.get(namespace)
        if pending is not None:
            pending.discard(ack_id)

    def take_ack(self, namespace: str, ack_id: int) -> bool:
        pending = self._pending_acks.get(namespace)
        if pending is None or ack_id not in pending:
            return False
        pending.remove(ack_id)
        return True

    def connected(self) -> tuple[str, ...]:
        return tuple(ns for ns, state in self._states.items() if state is _CONNECTED)


def _receive_event(books: _Namespaces, packet: Event) -> list[SioEvent]:
    """An EVENT, for both roles (called without a ``match``: a server's hot path)."""
    namespace = packet.namespace
    if not books.move(namespace, _Move.RECEIVE_EVENT, remote=True):
        return []
    return [
        EventReceived(namespace=namespace, name=packet.name, args=packet.args, ack_id=packet.ack_id)
    ]


def _receive_common(books: _Namespaces, packet: Event | Ack | Disconnect) -> list[SioEvent]:
    """EVENT, ACK and DISCONNECT mean the same thing to both roles."""
    match packet:
        case Event():
            return _receive_event(books, packet)
        case Ack(ack_id=ack_id, args=args, namespace=namespace):
            if not books.move(namespace, _Move.RECEIVE_ACK, remote=True):
                return []
            # An answer to an id we are not waiting for (timed out, cancelled, or never
            # sent) is dropped, as socket.io's onack does.
            if not books.take_ack(namespace, ack_id):
                return []
            return [AckReceived(namespace=namespace, ack_id=ack_id, args=args)]
        case Disconnect(namespace=namespace):
            if not books.move(namespace, _Move.RECEIVE_DISCONNECT, remote=True):
                return []
            return [DisconnectRequested(namespace=namespace)]
        case _:  # pragma: no cover - mypy proves the match exhaustive
            assert_never(packet)


@attrs.define(eq=False)
class SioServerConnection:
    """The server side of one Socket.IO connection: its namespaces and pending acks.

    Feed it every decoded packet with ``receive``; answer each ``ConnectRequested`` with
    ``accept`` or ``refuse``. It does no I/O: the methods that make a packet return the
    record for the caller to encode and send.
    """

    _limits: Limits = DEFAULT_LIMITS
    _books: _Namespaces = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._books = _Namespaces(_SERVER_TRANSITIONS, self._limits.max_ack_id)

    def receive(self, packet: SioPacket) -> list[SioEvent]:
        """Apply one packet from the client.

        Returns:
            What happened: no event (an ack nobody waits for) or one.

        Raises:
            RemoteProtocolError: The packet is not allowed now (CONNECT for a namespace
                already connecting or connected, CONNECT_ERROR, or anything else for a
                namespace that is not connected). The connection must be closed.
        """
        if type(packet) is Event:  # the hot path first, without the match
            return _receive_event(self._books, packet)
        match packet:
            case Connect(namespace=namespace, data=data):
                self._books.move(namespace, _Move.RECEIVE_CONNECT, remote=True)
                return [ConnectRequested(namespace=namespace, auth=data)]
            case ConnectError(namespace=namespace):
                raise RemoteProtocolError(f"a client sent CONNECT_ERROR for {namespace!r}")
            case Event() | Ack() | Disconnect():
                return _receive_common(self._books, packet)
            case _:  # pragma: no cover - mypy proves the match exhaustive
                assert_never(packet)

    def accept(self, namespace: str, sid: str, *, pid: str | None = None) -> Connect:
        """Let the client join ``namespace`` (CONNECTING -> CONNECTED).

        Args:
            namespace: A namespace from a ``ConnectRequested``.
            sid: The socket's Socket.IO id (not the Engine.IO ``eio_sid``).
            pid: The private session id, when connection state recovery is on.

        Returns:
            The reply to send: ``Connect(namespace, {"sid": sid})`` (plus ``"pid"``).

        Raises:
            LocalProtocolError: ``namespace`` is not waiting for an answer.
        """
        self._books.move(namespace, _Move.ACCEPT, remote=False)
        data: dict[str, JsonValue] = {"sid": sid}
        if pid is not None:
            data["pid"] = pid
        return Connect(namespace=namespace, data=data)

    def refuse(self, namespace: str, data: JsonValue) -> ConnectError:
        """Refuse to let the client join ``namespace`` (CONNECTING -> forgotten).

        Args:
            namespace: A namespace from a ``ConnectRequested``.
            data: The CONNECT_ERROR payload, ``{"message": ..., "data": ...}`` in v5.

        Raises:
            LocalProtocolError: ``namespace`` is not waiting for an answer.
        """
        self._books.move(namespace, _Move.REFUSE, remote=False)
        return ConnectError(namespace=namespace, data=data)

    def disconnect(self, namespace: str) -> Disconnect:
        """Disconnect the client from ``namespace``, server side; its pending acks go.

        Raises:
            LocalProtocolError: ``namespace`` is not connected.
        """
        self._books.move(namespace, _Move.SEND_DISCONNECT, remote=False)
        return Disconnect(namespace=namespace)

    def new_ack_id(self, namespace: str) -> int:
        """Allocate the ack id for an event we send on ``namespace``, and wait for it.

        Ids count from 0 per namespace, wrap after ``limits.max_ack_id`` and skip ids
        still pending.

        Raises:
            LocalProtocolError: ``namespace`` is not connected, or every id is pending.
        """
        return self._books.new_ack_id(namespace)

    def expect_ack(self, namespace: str, ack_id: int) -> None:
        """Wait for an answer to ``ack_id``, an id the caller allocated.

        Node's server allocates ack ids per namespace, not per connection, so that one id
        (and one encoding) serves every recipient of a broadcast with ack; the engine does
        the same and registers the id here for each recipient.

        Raises:
            LocalProtocolError: ``namespace`` is not connected, or the id is out of range.
        """
        self._books.expect_ack(namespace, ack_id)

    def cancel_ack(self, namespace: str, ack_id: int) -> None:
        """Stop waiting for ``ack_id`` (it timed out); a late answer is then dropped."""
        self._books.cancel_ack(namespace, ack_id)

    def state(self, namespace: str) -> NamespaceState:
        """Return where ``namespace`` stands on this connection."""
        return self._books.state(namespace)

    def connected_namespaces(self) -> tuple[str, ...]:
        """Return the connected namespaces, oldest first."""
        return self._books.connected()


@attrs.define(eq=False)
class SioClientConnection:
    """The client side of one Socket.IO connection: its namespaces and pending acks."""

    _limits: Limits = DEFAULT_LIMITS
    _books: _Namespaces = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._books = _Namespaces(_CLIENT_TRANSITIONS, self._limits.max_ack_id)

    def connect(self, namespace: str, auth: JsonValue = None) -> Connect:
        """Ask to join ``namespace`` (-> CONNECTING).

        Args:
            namespace: The namespace, starting with ``/``.
            auth: The auth payload: a JSON object, or ``None`` for none.

        Raises:
            LocalProtocolError: Already connecting or connected to ``namespace``, or
                ``auth`` is neither an object nor ``None``.
        """
        if auth is not None and not isinstance(auth, dict):
            raise LocalProtocolError("CONNECT auth must be an object or None")
        self._books.move(namespace, _Move.SEND_CONNECT, remote=False)
        return Connect(namespace=namespace, data=auth)

    def receive(self, packet: SioPacket) -> list[SioEvent]:
        """Apply one packet from the server.

        Returns:
            What happened: no event (a late packet for a namespace we left, or an ack
            nobody waits for) or one.

        Raises:
            RemoteProtocolError: The server broke the protocol: CONNECT without a
                string ``sid``, CONNECT or CONNECT_ERROR for a connected namespace,
                an event, ack or disconnect for a namespace still connecting.
        """
        match packet:
            case Connect(namespace=namespace, data=data):
                sid = data.get("sid") if isinstance(data, dict) else None
                pid = data.get("pid") if isinstance(data, dict) else None
                if not isinstance(sid, str):
                    # socket.io-client reports this as a v2 server; it is not v5.
                    raise RemoteProtocolError("CONNECT reply without a sid")
                if not self._books.move(namespace, _Move.RECEIVE_CONNECT, remote=True):
                    return []
                return [
                    ConnectAccepted(
                        namespace=namespace,
                        sid=sid,
                        pid=pid if isinstance(pid, str) else None,
                    )
                ]
            case ConnectError(namespace=namespace, data=data):
                if not self._books.move(namespace, _Move.RECEIVE_CONNECT_ERROR, remote=True):
                    return []
                return [ConnectRefused(namespace=namespace, data=data)]
            case Event() | Ack() | Disconnect():
                return _receive_common(self._books, packet)
            case _:  # pragma: no cover - mypy proves the match exhaustive
                assert_never(packet)

    def disconnect(self, namespace: str) -> Disconnect:
        """Leave ``namespace``; its pending acks go.

        Raises:
            LocalProtocolError: ``namespace`` is not connected. (While CONNECTING there
                is nothing to leave on the server yet; a DISCONNECT would make a
                socket.io server close the whole connection.)
        """
        self._books.move(namespace, _Move.SEND_DISCONNECT, remote=False)
        return Disconnect(namespace=namespace)

    def new_ack_id(self, namespace: str) -> int:
        """Allocate the ack id for an event we send on ``namespace``, and wait for it.

        Raises:
            LocalProtocolError: ``namespace`` is not connected, or every id is pending.
        """
        return self._books.new_ack_id(namespace)

    def cancel_ack(self, namespace: str, ack_id: int) -> None:
        """Stop waiting for ``ack_id``; a late answer is then dropped."""
        self._books.cancel_ack(namespace, ack_id)

    def state(self, namespace: str) -> NamespaceState:
        """Return where ``namespace`` stands on this connection."""
        return self._books.state(namespace)

    def connected_namespaces(self) -> tuple[str, ...]:
        """Return the connected namespaces, oldest first."""
        return self._books.connected()
