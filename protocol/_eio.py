"""Engine.IO v4: packets, the WebSocket and polling codecs, the handshake, and session machines.

Spec: https://socket.io/docs/v4/engine-io-protocol/ (the ``engine.io-protocol`` repository,
revision 4). Everything here is sans-I/O: frames and bodies in, frozen records out, and back.
Time (``now``, float seconds) and ids (``sid``) are arguments.

Where the spec is silent, the behaviour of the reference server (Node ``engine.io`` 6.x,
``lib/socket.ts``) is followed, with these deliberate differences, all stricter:

* A packet the peer's role can never send on that transport closes the session with
  ``"parse error"`` where Node ignores it: OPEN from a client, UPGRADE on the active
  transport, a second ``2probe``; and on the client side PONG, UPGRADE or a second OPEN from
  the server. (An illegal transition never passes silently: it raises, as h11's state machine does.)
* A PING from a client on its active transport is closed with ``"transport error"``, exactly
  as Node does (``onError(new Error("invalid heartbeat direction"))``): in v4 only the server
  pings, and a client sends PING only as ``2probe`` on the probing WebSocket.
* Anything but ``2probe`` / UPGRADE on the probing WebSocket closes the *session* with
  ``"parse error"`` (Node closes only the probe and keeps polling).
* A ``b<base64>`` text frame on WebSocket is rejected: v4 sends binary as binary frames
  (engine.io-parser would still decode it), and base64 is decoded strictly.
* The pong deadline is strict: a PONG must arrive within ``ping_timeout`` of the PING (Node
  6.6 also accepts any other recent packet as a sign of life).
"""

from __future__ import annotations

import binascii
import enum
import json
import math
from collections.abc import Iterable, Mapping
from typing import Final, TypeAlias

import attrs

from roomcast.protocol._errors import LocalProtocolError, RemoteProtocolError
from roomcast.protocol._limits import DEFAULT_LIMITS, Limits
from roomcast.protocol._reasons import DisconnectReason

__all__ = [
    "Closed",
    "EioClientSession",
    "EioEvent",
    "EioPacket",
    "EioPacketType",
    "EioServerSession",
    "EioState",
    "SessionParams",
    "MessageReceived",
    "SendPacket",
    "UpgradeStarted",
    "Upgraded",
    "check_payload_frame",
    "decode_handshake",
    "decode_payload",
    "decode_ws_frame",
    "decode_ws_message",
    "encode_frames_payload",
    "encode_handshake",
    "encode_message",
    "encode_payload",
    "encode_ws_frame",
]


class EioPacketType(enum.IntEnum):
    """Engine.IO v4 packet type: the single digit that starts every text packet.

    See the Engine.IO protocol, revision 4, "Protocol > Packet types".
    """

    OPEN = 0
    """Sent by the server when a new transport is opened; carries the handshake JSON."""
    CLOSE = 1
    """Requests the close of the transport, but does not shut down the connection itself."""
    PING = 2
    """Heartbeat, sent by the server (v4); ``2probe`` from the client probes a WebSocket."""
    PONG = 3
    """Heartbeat answer, sent by the client; ``3probe`` from the server answers a probe."""
    MESSAGE = 4
    """Application data: text, or binary (a raw WebSocket frame or ``b`` + base64)."""
    UPGRADE = 5
    """Sent by the client on the probed WebSocket to complete the upgrade."""
    NOOP = 6
    """Sent by the server to end a pending polling request during an upgrade."""


@attrs.frozen(kw_only=True)
class EioPacket:
    """One Engine.IO packet.

    Attributes:
        type: The packet type.
        data: The payload. ``bytes`` only for a binary MESSAGE; text otherwise (PING and
            PONG may carry ``"probe"``, OPEN carries the handshake JSON).
    """

    type: EioPacketType
    data: str | bytes = ""


# Engine.IO v4, "Encoding > Packet": the type digit, indexed by type; and back.
_TYPE_CHAR: Final = tuple(str(int(t)) for t in EioPacketType)
_TYPE_BY_CHAR: Final[Mapping[str, EioPacketType]] = {str(int(t)): t for t in EioPacketType}
# Engine.IO v4, "HTTP long-polling > Payload": packets are joined by the record separator,
# and a binary packet is "b" followed by its base64 encoding.
_SEPARATOR: Final = "\x1e"
_BINARY_PREFIX: Final = "b"
_MESSAGE_CHAR: Final = _TYPE_CHAR[EioPacketType.MESSAGE]


def _utf8_length_over(text: str, limit: int) -> bool:
    """Tell whether ``text`` takes more than ``limit`` bytes in UTF-8, encoding only if needed."""
    length = len(text)
    if length > limit:
        return True
    # A character takes at most 4 bytes; ASCII takes 1 (str.isascii() is O(1) in CPython).
    if length * 4 <= limit or text.isascii():
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


def _decode_text_packet(text: str) -> EioPacket:
    """Decode ``<type digit><data>``, the text form shared by WebSocket and polling."""
    try:
        packet_type = _TYPE_BY_CHAR[text[0]]
    except IndexError:
        raise RemoteProtocolError("empty Engine.IO packet") from None
    except KeyError:
        raise RemoteProtocolError(f"unknown Engine.IO packet type {text[:1]!r}") from None
    return EioPacket(type=packet_type, data=text[1:])


def _check_encodable(packet: EioPacket) -> None:
    """Refuse to encode a non-MESSAGE packet with binary data (it has no wire form)."""
    if isinstance(packet.data, bytes) and packet.type is not EioPacketType.MESSAGE:
        raise LocalProtocolError(f"binary data on a {packet.type.name} packet")


def encode_ws_frame(packet: EioPacket) -> str | bytes:
    """Encode one packet as one WebSocket message.

    Returns:
        Text ``<type digit><data>`` (``"4hello"``), or for a binary MESSAGE its raw bytes
        with no prefix (Engine.IO v4, "WebSocket" transport).

    Raises:
        LocalProtocolError: ``packet`` carries bytes but is not a MESSAGE.
    """
    data = packet.data
    if isinstance(data, str):
        return _TYPE_CHAR[packet.type] + data
    _check_encodable(packet)
    return data


def decode_ws_message(
    frame: str | bytes | bytearray, limits: Limits = DEFAULT_LIMITS
) -> str | bytes | None:
    """The data of a WebSocket message that is an Engine.IO MESSAGE packet, or None when
    it is a packet of another type (``decode_ws_frame`` decodes those).

    The receive path's shortcut: a MESSAGE is most of what a client sends, and nothing in
    a session's state depends on one (``EioServerSession.receive`` only hands its data
    on, while the session is open), so its data needs no ``EioPacket`` on the way. The
    data is what ``decode_ws_frame(frame).data`` would be.

    Raises:
        RemoteProtocolError: Over ``limits.max_payload_bytes`` (as ``decode_ws_frame``).
    """
    if isinstance(frame, str):
        if frame[:1] != _MESSAGE_CHAR:
            return None
        _check_ws_text(frame, limits)
        return frame[1:]
    return _ws_binary(frame, limits)


def decode_ws_frame(frame: str | bytes | bytearray, limits: Limits = DEFAULT_LIMITS) -> EioPacket:
    """Decode one WebSocket message into a packet.

    A binary frame is a binary MESSAGE with exactly those bytes (possibly empty; a
    ``bytearray``, as wsproto may deliver, is copied into ``bytes``); a text frame is
    ``<type digit><data>``.

    Raises:
        RemoteProtocolError: Empty text frame, unknown type, or over
            ``limits.max_payload_bytes``.
    """
    if isinstance(frame, str):
        _check_ws_text(frame, limits)
        return _decode_text_packet(frame)
    return EioPacket(type=EioPacketType.MESSAGE, data=_ws_binary(frame, limits))


def _check_ws_text(frame: str, limits: Limits) -> None:
    """Refuse a text frame over ``limits.max_payload_bytes`` (UTF-8 bytes)."""
    # The cheap length test first: only a long frame needs its UTF-8 size measured.
    limit = limits.max_payload_bytes
    if len(frame) * 4 > limit and _utf8_length_over(frame, limit):
        raise RemoteProtocolError("Engine.IO frame over max_payload_bytes")


def _ws_binary(frame: bytes | bytearray, limits: Limits) -> bytes:
    """A binary frame's data as ``bytes``, refused over ``limits.max_payload_bytes``."""
    if len(frame) > limits.max_payload_bytes:
        raise RemoteProtocolError("Engine.IO frame over max_payload_bytes")
    return bytes(frame)


def encode_message(data: str | bytes) -> str | bytes:
    """Encode one MESSAGE packet as one WebSocket message: ``"4"`` + text, or binary
    data as it is.

    What ``encode_ws_frame`` makes of ``EioPacket(type=MESSAGE, data=data)``, without
    building the packet (the engine's send path). The result is also what
    ``encode_frames_payload`` takes for a polling body.
    """
    return _MESSAGE_CHAR + data if isinstance(data, str) else data


def check_payload_frame(frame: str | bytes) -> None:
    r"""Refuse a packet in its WebSocket form (``encode_ws_frame``, ``encode_message``)
    that no HTTP long-polling body can carry: text containing ``"\x1e"``.

    The record separator cannot be escaped in an Engine.IO v4 payload, so such a packet
    would reach the peer split in two (the tail read as packets of its own); Node's
    engine.io sends it so. It can go over WebSocket as it is, and binary data always can.

    Raises:
        LocalProtocolError: ``frame`` is text containing ``"\x1e"``.
    """
    if isinstance(frame, str) and _SEPARATOR in frame:
        raise LocalProtocolError("text packet containing \\x1e cannot go in a polling payload")


def _payload_part(frame: str | bytes) -> str:
    if isinstance(frame, bytes):
        return _BINARY_PREFIX + binascii.b2a_base64(frame, newline=False).decode("ascii")
    check_payload_frame(frame)
    return frame


def encode_frames_payload(frames: Iterable[str | bytes]) -> str:
    r"""Encode packets already in their WebSocket form (``encode_ws_frame``,
    ``encode_message``) as one HTTP long-polling body, as ``encode_payload`` does.

    Raises:
        LocalProtocolError: A text frame contains ``"\x1e"`` (``check_payload_frame``).
    """
    return _SEPARATOR.join([_payload_part(frame) for frame in frames])


def encode_payload(packets: Iterable[EioPacket]) -> str:
    r"""Encode packets as one HTTP long-polling body.

    Packets are joined by ``"\x1e"``; a binary MESSAGE is ``"b"`` + base64 (Engine.IO v4,
    "HTTP long-polling > Payload").

    Raises:
        LocalProtocolError: A packet carries bytes but is not a MESSAGE, or its text
            contains ``"\x1e"``.
    """
    return encode_frames_payload([encode_ws_frame(p) for p in packets])


def _decode_payload_part(part: str) -> EioPacket:
    if part[:1] == _BINARY_PREFIX:
        try:
            # strict_mode: no characters outside the alphabet, correct padding, nothing after it.
            data = binascii.a2b_base64(part[1:], strict_mode=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            raise RemoteProtocolError("bad base64 in Engine.IO binary packet") from None
        return EioPacket(type=EioPacketType.MESSAGE, data=data)
    return _decode_text_packet(part)


def decode_payload(
    body: str | bytes | bytearray, limits: Limits = DEFAULT_LIMITS
) -> tuple[EioPacket, ...]:
    """Decode one HTTP long-polling body into its packets.

    A ``bytes`` (or ``bytearray``) body is decoded as UTF-8 first.

    Raises:
        RemoteProtocolError: Invalid UTF-8, a body over ``limits.max_payload_bytes``, more
            than ``limits.max_packets_per_payload`` packets, or any packet that is empty, of
            unknown type or with bad base64.
    """
    limit = limits.max_payload_bytes
    if isinstance(body, str):
        if _utf8_length_over(body, limit):
            raise RemoteProtocolError("Engine.IO payload over max_payload_bytes")
    else:
        if len(body) > limit:
            raise RemoteProtocolError("Engine.IO payload over max_payload_bytes")
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("Engine.IO payload is not valid UTF-8") from None
    # Count before splitting, so an over-long payload never becomes a long list.
    if body.count(_SEPARATOR) >= limits.max_packets_per_payload:
        raise RemoteProtocolError("too many packets in one Engine.IO payload")
    return tuple([_decode_payload_part(part) for part in body.split(_SEPARATOR)])


def _upgrades(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class SessionParams:
    """The session parameters the OPEN packet carries (Engine.IO v4, "Protocol > Handshake").

    Attributes:
        sid: The session id (the Engine.IO ``eio_sid``, not a Socket.IO ``sid``).
        upgrades: Transports the client may upgrade to (``("websocket",)`` or ``()``).
        ping_interval: Seconds between a PONG and the next PING.
        ping_timeout: Seconds the client has to answer a PING.
        max_payload: Largest payload the server accepts, in bytes.
    """

    sid: str
    upgrades: tuple[str, ...] = attrs.field(converter=_upgrades)
    ping_interval: float
    ping_timeout: float
    max_payload: int


def encode_handshake(h: SessionParams) -> EioPacket:
    """Build the OPEN packet for a handshake.

    The JSON is compact and has exactly the keys ``sid``, ``upgrades``, ``pingInterval``,
    ``pingTimeout``, ``maxPayload`` in that order, with durations as integer milliseconds
    (``0.3`` s is ``300``), as Node ``engine.io`` sends it.
    """
    data = {
        "sid": h.sid,
        "upgrades": list(h.upgrades),
        "pingInterval": round(h.ping_interval * 1000),
        "pingTimeout": round(h.ping_timeout * 1000),
        "maxPayload": h.max_payload,
    }
    return EioPacket(
        type=EioPacketType.OPEN,
        data=_encode_open(data),
    )


# One encoder for every handshake: ``json.dumps`` with options builds a new one per call.
_encode_open: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


# Node clamps timer delays above 2**31 - 1 ms; a larger interval is not a real handshake.
_MAX_DURATION_MS: Final = 2**31 - 1
_MAX_PAYLOAD: Final = 2**53 - 1


def _positive_int(data: Mapping[str, object], key: str, maximum: int) -> int:
    value = data.get(key)
    # bool is an int subclass, and true is not a duration.
    if type(value) is not int or not 0 < value <= maximum:
        raise RemoteProtocolError(f"bad {key} in Engine.IO handshake: {value!r}")
    return value


def decode_handshake(packet: EioPacket) -> SessionParams:
    """Read the handshake from a server's OPEN packet (client side).

    Unknown keys are ignored. A missing ``maxPayload`` (servers older than Node engine.io
    6.2 omit it) reads as ``DEFAULT_LIMITS.max_payload_bytes``.

    Raises:
        RemoteProtocolError: Not an OPEN packet, not a JSON object, or a missing or
            ill-typed ``sid``, ``upgrades``, ``pingInterval`` or ``pingTimeout``.
    """
    if packet.type is not EioPacketType.OPEN or not isinstance(packet.data, str):
        raise RemoteProtocolError(f"expected an Engine.IO OPEN packet, got {packet.type.name}")
    try:
        data = json.loads(packet.data)
    except (ValueError, RecursionError):
        raise RemoteProtocolError("Engine.IO handshake is not JSON") from None
    if not isinstance(data, dict):
        raise RemoteProtocolError("Engine.IO handshake is not a JSON object")
    sid = data.get("sid")
    if not isinstance(sid, str) or not sid:
        raise RemoteProtocolError("bad sid in Engine.IO handshake")
    upgrades = data.get("upgrades")
    if not isinstance(upgrades, list) or not all(isinstance(u, str) for u in upgrades):
        raise RemoteProtocolError("bad upgrades in Engine.IO handshake")
    if "maxPayload" in data:
        max_payload = _positive_int(data, "maxPayload", _MAX_PAYLOAD)
    else:
        max_payload = DEFAULT_LIMITS.max_payload_bytes
    return SessionParams(
        sid=sid,
        upgrades=upgrades,
        ping_interval=_positive_int(data, "pingInterval", _MAX_DURATION_MS) / 1000,
        ping_timeout=_positive_int(data, "pingTimeout", _MAX_DURATION_MS) / 1000,
        max_payload=max_payload,
    )


# --------------------------------------------------------------------------- events


@attrs.frozen(kw_only=True)
class SendPacket:
    """The engine must send ``packet``.

    Attributes:
        packet: What to send.
        probe: Send it on the probing WebSocket, not on the active transport.
    """

    packet: EioPacket
    probe: bool = False


@attrs.frozen(kw_only=True)
class MessageReceived:
    """The peer sent a MESSAGE (text or binary)."""

    data: str | bytes


@attrs.frozen(kw_only=True)
class UpgradeStarted:
    """A probe succeeded: from now on, answer polling GETs with a NOOP (Engine.IO v4, upgrade)."""


@attrs.frozen(kw_only=True)
class Upgraded:
    """The client sent UPGRADE: the probing WebSocket is now the session's only transport."""


@attrs.frozen(kw_only=True)
class Closed:
    """The session is closed; nothing more will be sent or received.

    Attributes:
        reason: Socket.IO's words: ``"ping timeout"``, ``"transport close"`` (the peer
            sent CLOSE), ``"parse error"``, ``"transport error"``, ``"forced close"``.
    """

    reason: str


EioEvent: TypeAlias = SendPacket | MessageReceived | UpgradeStarted | Upgraded | Closed


# --------------------------------------------------------------------------- state


class EioState(enum.Enum):
    """State of an Engine.IO session (server or client)."""

    OPEN = "open"
    UPGRADING = "upgrading"
    """Server only: a ``2probe`` was answered, the client has not sent UPGRADE yet."""
    CLOSED = "closed"


class _Trigger(enum.Enum):
    PROBE = "probe"  # "2probe" on the probing WebSocket
    UPGRADE = "upgrade"  # UPGRADE on the probing WebSocket
    CLOSE = "close"  # any close: peer CLOSE, timeout, error, or ours


# Rule 1 (as in h11's _state.py): every state transition of both machines lives in this table.
# A missing (state, trigger) is illegal: LocalProtocolError if our code asked for it, a
# "parse error" close if the peer did.
_TRANSITIONS: Final[Mapping[tuple[EioState, _Trigger], EioState]] = {
    (EioState.OPEN, _Trigger.PROBE): EioState.UPGRADING,
    (EioState.OPEN, _Trigger.CLOSE): EioState.CLOSED,
    (EioState.UPGRADING, _Trigger.UPGRADE): EioState.OPEN,
    (EioState.UPGRADING, _Trigger.CLOSE): EioState.CLOSED,
}


def _transition(state: EioState, trigger: _Trigger) -> EioState:
    """Look up the state ``trigger`` leads to from ``state``, for a transition we ask for."""
    try:
        return _TRANSITIONS[state, trigger]
    except KeyError:
        raise LocalProtocolError(f"{trigger.name} is not allowed in state {state.name}") from None


_PING: Final = EioPacket(type=EioPacketType.PING)
_PONG: Final = EioPacket(type=EioPacketType.PONG)
_CLOSE: Final = EioPacket(type=EioPacketType.CLOSE)
_SEND_CLOSE: Final = SendPacket(packet=_CLOSE)
_PROBE: Final = "probe"
_PROBE_ANSWER: Final = SendPacket(
    packet=EioPacket(type=EioPacketType.PONG, data=_PROBE),
    probe=True,
)
_TRANSPORTS: Final = ("polling", "websocket")


@attrs.define(eq=False, init=False)  # the __init__ below takes `now`, which is no field
class EioServerSession:
    """The server side of one Engine.IO v4 session.

    Feed it packets from the transports (``receive``, ``receive_probe``), sleep until
    ``next_deadline()`` and then call ``tick``; act on the events each call returns.
    """

    _sid: str
    _transport: str
    _upgrades: tuple[str, ...]
    _ping_interval: float
    _ping_timeout: float
    _max_payload: int
    _state: EioState
    # Engine.IO v4 heartbeat: the next PING is due at _next_ping_at unless one is
    # outstanding, in which case its PONG is due by _pong_deadline.
    _next_ping_at: float
    _pong_deadline: float | None

    def __init__(
        self,
        *,
        sid: str,
        transport: str,
        ping_interval: float,
        ping_timeout: float,
        max_payload: int,
        now: float,
        upgrades: tuple[str, ...] = ("websocket",),
    ) -> None:
        """Start a session whose handshake is sent at ``now``.

        Args:
            sid: The Engine.IO session id (generated by the engine).
            transport: ``"polling"`` or ``"websocket"``: the transport of the handshake.
            ping_interval: Seconds from the handshake, or from a PONG, to the next PING.
            ping_timeout: Seconds the client has to answer a PING.
            max_payload: ``maxPayload`` announced in the handshake, in bytes.
            now: The time the handshake is sent.
            upgrades: Transports a polling session may upgrade to.

        Raises:
            LocalProtocolError: ``transport`` is not a known transport.
        """
        if transport not in _TRANSPORTS:
            raise LocalProtocolError(f"unknown Engine.IO transport {transport!r}")
        self._sid = sid
        self._transport = transport
        self._upgrades = tuple(upgrades)
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._max_payload = max_payload
        self._state = EioState.OPEN
        self._next_ping_at = now + ping_interval
        self._pong_deadline = None

    @property
    def state(self) -> EioState:
        """The current state."""
        return self._state

    @property
    def transport(self) -> str:
        """The active transport: ``"polling"`` or ``"websocket"``."""
        return self._transport

    @property
    def sid(self) -> str:
        """The Engine.IO session id."""
        return self._sid

    def handshake(self) -> EioPacket:
        """Return the OPEN packet; ``upgrades`` is empty for a WebSocket session."""
        return encode_handshake(
            SessionParams(
                sid=self._sid,
                upgrades=() if self._transport == "websocket" else self._upgrades,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_timeout,
                max_payload=self._max_payload,
            )
        )

    def _close(self, reason: str) -> list[EioEvent]:
        self._state = _transition(self._state, _Trigger.CLOSE)
        self._pong_deadline = None
        return [Closed(reason=reason)]

    def receive(self, packet: EioPacket, now: float) -> list[EioEvent]:
        """Handle a packet that arrived on the active transport at ``now``."""
        if self._state is EioState.CLOSED:
            return []
        packet_type = packet.type
        if packet_type is EioPacketType.MESSAGE:  # the hot path first
            return [MessageReceived(data=packet.data)]
        if packet_type is EioPacketType.PONG:
            # Node refreshes the interval timer on any PONG, asked for or not.
            self._pong_deadline = None
            self._next_ping_at = now + self._ping_interval
            return []
        if packet_type is EioPacketType.NOOP:
            return []
        if packet_type is EioPacketType.CLOSE:
            return self._close(DisconnectReason.TRANSPORT_CLOSE)
        if packet_type is EioPacketType.PING:
            # v4: only the server pings; Node closes with "invalid heartbeat direction".
            return self._close(DisconnectReason.TRANSPORT_ERROR)
        # OPEN is never sent by a client, UPGRADE only on the probing WebSocket.
        return self._close(DisconnectReason.PARSE_ERROR)

    def receive_probe(self, packet: EioPacket, now: float) -> list[EioEvent]:
        """Handle a packet that arrived on the probing WebSocket of a polling session.

        ``2probe`` is answered with ``3probe`` on the probe and starts the upgrade; UPGRADE
        then makes the WebSocket the active transport. Anything else closes the session
        with ``"parse error"`` (Engine.IO v4, "Upgrade").

        Raises:
            LocalProtocolError: The session cannot be upgraded (it is not polling, or
                ``"websocket"`` is not in its upgrades): the engine should have refused the
                WebSocket.
        """
        if self._state is EioState.CLOSED:
            return []
        if self._transport != "polling" or "websocket" not in self._upgrades:
            raise LocalProtocolError(
                f"session on {self._transport} with upgrades {self._upgrades} cannot be probed"
            )
        if packet.type is EioPacketType.PING and packet.data == _PROBE:
            trigger = _Trigger.PROBE
        elif packet.type is EioPacketType.UPGRADE:
            trigger = _Trigger.UPGRADE
        else:
            return self._close(DisconnectReason.PARSE_ERROR)
        new_state = _TRANSITIONS.get((self._state, trigger))
        if new_state is None:  # a second probe, or UPGRADE before the probe
            return self._close(DisconnectReason.PARSE_ERROR)
        self._state = new_state
        if trigger is _Trigger.PROBE:
            return [_PROBE_ANSWER, UpgradeStarted()]
        self._transport = "websocket"
        return [Upgraded()]

    def next_deadline(self) -> float:
        """When ``tick`` next has something to do; ``math.inf`` once closed."""
        if self._state is EioState.CLOSED:
            return math.inf
        if self._pong_deadline is not None:
            return self._pong_deadline
        return self._next_ping_at

    def tick(self, now: float) -> list[EioEvent]:
        """Run the heartbeat: send the PING that is due, or close on a missed PONG."""
        if self._state is EioState.CLOSED:
            return []
        if self._pong_deadline is not None:
            if now >= self._pong_deadline:
                return self._close(DisconnectReason.PING_TIMEOUT)
            return []
        if now >= self._next_ping_at:
            # Measured from when the PING was due, not from when this tick ran: a late
            # tick must not give the client more time (docs/conformance.md §2.4, no slack).
            self._pong_deadline = self._next_ping_at + self._ping_timeout
            return [SendPacket(packet=_PING)]
        return []

    def close(self, reason: str = DisconnectReason.FORCED_CLOSE) -> list[EioEvent]:
        """Close the session from our side: send CLOSE; ``[]`` if already closed."""
        if self._state is EioState.CLOSED:
            return []
        return [_SEND_CLOSE, *self._close(reason)]


@attrs.define(eq=False, init=False)
class EioClientSession:
    """The client side of one Engine.IO v4 session (no upgrades: one transport).

    The first packet must be the server's OPEN; ``handshake`` holds it from then on. The
    caller owns the timeout for that first packet: ``next_deadline()`` is ``math.inf``
    until the handshake arrives.
    """

    _state: EioState
    _handshake: SessionParams | None
    # Engine.IO v4 heartbeat, client side: close if no PING arrives within
    # pingInterval + pingTimeout of the previous one (or of the handshake).
    _ping_deadline: float

    def __init__(self, *, now: float) -> None:
        """Start a session whose transport opened at ``now``.

        The heartbeat clock starts at the handshake, so ``now`` is not used yet; the
        deadline for the handshake itself belongs to the caller.
        """
        self._state = EioState.OPEN
        self._handshake = None
        self._ping_deadline = math.inf

    @property
    def state(self) -> EioState:
        """The current state."""
        return self._state

    @property
    def handshake(self) -> SessionParams | None:
        """The server's handshake, once its OPEN packet has arrived."""
        return self._handshake

    def _close(self, reason: str) -> list[EioEvent]:
        self._state = _transition(self._state, _Trigger.CLOSE)
        self._ping_deadline = math.inf
        return [Closed(reason=reason)]

    def _expect_ping(self, now: float, handshake: SessionParams) -> None:
        self._ping_deadline = now + handshake.ping_interval + handshake.ping_timeout

    def receive(self, packet: EioPacket, now: float) -> list[EioEvent]:
        """Handle a packet from the server that arrived at ``now``."""
        if self._state is EioState.CLOSED:
            return []
        handshake = self._handshake
        packet_type = packet.type
        if handshake is None:
            if packet_type is not EioPacketType.OPEN:
                return self._close(DisconnectReason.PARSE_ERROR)
            try:
                handshake = decode_handshake(packet)
            except RemoteProtocolError:
                return self._close(DisconnectReason.PARSE_ERROR)
            self._handshake = handshake
            self._expect_ping(now, handshake)
            return []
        if packet_type is EioPacketType.MESSAGE:
            return [MessageReceived(data=packet.data)]
        if packet_type is EioPacketType.PING:
            self._expect_ping(now, handshake)
            return [SendPacket(packet=_PONG)]
        if packet_type is EioPacketType.NOOP:
            return []
        if packet_type is EioPacketType.CLOSE:
            return self._close(DisconnectReason.TRANSPORT_CLOSE)
        # A second OPEN, a PONG or an UPGRADE: a v4 server sends none of these here.
        return self._close(DisconnectReason.PARSE_ERROR)

    def next_deadline(self) -> float:
        """When ``tick`` next has something to do; ``math.inf`` before the handshake."""
        return self._ping_deadline

    def tick(self, now: float) -> list[EioEvent]:
        """Close with ``"ping timeout"`` if the server has stopped pinging."""
        if self._state is EioState.CLOSED or now < self._ping_deadline:
            return []
        return self._close(DisconnectReason.PING_TIMEOUT)

    def close(self, reason: str = DisconnectReason.FORCED_CLOSE) -> list[EioEvent]:
        """Close the session from our side: send CLOSE; ``[]`` if already closed."""
        if self._state is EioState.CLOSED:
            return []
        return [_SEND_CLOSE, *self._close(reason)]
