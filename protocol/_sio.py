"""Socket.IO v5 packets and their two wire formats: socket.io-parser and msgpack.

A packet is one of five frozen records (``Connect``, ``Disconnect``, ``Event``, ``Ack``,
``ConnectError``). Binary-ness is not a record of its own: an ``Event``/``Ack`` whose
arguments hold ``bytes`` anywhere goes out as BINARY_EVENT/BINARY_ACK, and comes back
as a plain ``Event``/``Ack`` with the ``bytes`` in place.

Two parsers turn records into Engine.IO MESSAGE payloads and back:

- ``JSON_PARSER`` speaks socket.io-parser 4.2 (the default of every Socket.IO client):
  ``<type>[<attachments>-][<nsp>,][<ack id>][<json>]`` text, then one binary frame per
  attachment. The payloads never carry Engine.IO's own ``4`` (MESSAGE) prefix.
- ``MSGPACK_PARSER`` speaks socket.io-msgpack-parser 3.0: one binary frame per packet, a
  msgpack map with keys ``type``, ``data``, ``nsp`` and ``id`` (in the order a Node
  socket.io server writes them) and ``bytes`` inline as msgpack bin. It reads what
  notepack.io, that parser's msgpack library, writes: a browser's typed arrays (ext type
  0) as ``bytes``, ``undefined`` as a missing key or a null, a ``Date`` as the ISO string
  ``JSON.stringify`` would make of it.

Both encoders write exactly the bytes the JavaScript encoders write for the same packet
(numbers formatted as JavaScript formats them; see ``_json``). Both decoders apply the
payload rules of socket.io-parser's ``isPayloadValid`` (and socket.io-msgpack-parser's
``checkPacket``) plus the bounds in ``Limits``, and raise only ``RemoteProtocolError``.
Both encoders refuse (with ``LocalProtocolError``) any record their decoder would refuse,
so a record always round trips: ``decode(encode(p)) == p``.
"""

from __future__ import annotations

import datetime
import enum
import math
import re
from collections.abc import Iterable
from typing import Final, Protocol, TypeAlias, assert_never

import attrs
import msgpack

from roomcast.protocol._errors import LocalProtocolError, RemoteProtocolError
from roomcast.protocol._json import JsonValue, dumps, loads
from roomcast.protocol._limits import DEFAULT_LIMITS, MAX_SAFE_ACK_ID, Limits

__all__ = [
    "JSON_PARSER",
    "MSGPACK_PARSER",
    "RESERVED_EVENTS",
    "Ack",
    "Connect",
    "ConnectError",
    "Decoder",
    "Disconnect",
    "Event",
    "JsonValue",
    "Parser",
    "SioPacket",
    "SioPacketType",
    "encode_json",
]


class SioPacketType(enum.IntEnum):
    """Socket.IO v5 packet types (socket.io-protocol v5, "Packet format")."""

    CONNECT = 0
    """Connect to a namespace; the client sends its auth, the server replies ``{sid}``."""
    DISCONNECT = 1
    """Leave a namespace."""
    EVENT = 2
    """An event: ``[name, *args]``, optionally with an ack id."""
    ACK = 3
    """The answer to an event that carried an ack id: ``[*args]``."""
    CONNECT_ERROR = 4
    """The server refused a CONNECT: ``{"message": ..., "data": ...}``."""
    BINARY_EVENT = 5
    """An EVENT whose arguments hold binary attachments."""
    BINARY_ACK = 6
    """An ACK whose arguments hold binary attachments."""


RESERVED_EVENTS: Final = frozenset(
    {
        # socket.io-parser 4.2 RESERVED_EVENTS: names with a meaning of their own.
        "connect",  # client side
        "connect_error",  # client side
        "disconnect",  # both sides
        "disconnecting",  # server side
        "newListener",  # Node.js EventEmitter
        "removeListener",  # Node.js EventEmitter
    }
)
"""Event names no peer may send: socket.io-parser refuses them, and so do we."""

_ACK_ID: Final = re.compile(r"[0-9]+")
"""An ack id on the wire: ASCII digits only (``str.isdigit`` would take other scripts')."""


def _args(value: Iterable[JsonValue]) -> tuple[JsonValue, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class Connect:
    """CONNECT: the client's request (``data`` = auth) or the server's reply (``{"sid": ...}``).

    Attributes:
        namespace: The namespace, always starting with ``/``.
        data: ``None`` (no payload) or a JSON object.
    """

    namespace: str = "/"
    data: JsonValue = None


@attrs.frozen(kw_only=True)
class Disconnect:
    """DISCONNECT: either side leaves ``namespace``."""

    namespace: str = "/"


@attrs.frozen(kw_only=True)
class Event:
    """EVENT (or BINARY_EVENT when ``args`` holds ``bytes`` anywhere).

    Attributes:
        name: The event name; never one of ``RESERVED_EVENTS``.
        args: The arguments after the name.
        namespace: The namespace, always starting with ``/``.
        ack_id: Set when the sender waits for an ``Ack`` with this id.
    """

    name: str
    args: tuple[JsonValue, ...] = attrs.field(default=(), converter=_args)
    namespace: str = "/"
    ack_id: int | None = None


@attrs.frozen(kw_only=True)
class Ack:
    """ACK (or BINARY_ACK when ``args`` holds ``bytes`` anywhere): the answer to ``ack_id``."""

    ack_id: int
    args: tuple[JsonValue, ...] = attrs.field(default=(), converter=_args)
    namespace: str = "/"


@attrs.frozen(kw_only=True)
class ConnectError:
    """CONNECT_ERROR: the server refused a CONNECT.

    Attributes:
        namespace: The namespace that was refused.
        data: ``{"message": ..., "data": ...}`` from a v4 server (a bare string from
            older ones), or ``None`` for no payload.
    """

    namespace: str = "/"
    data: JsonValue = None


SioPacket: TypeAlias = Connect | Disconnect | Event | Ack | ConnectError


class Decoder(Protocol):
    """Turns one connection's incoming Engine.IO MESSAGE payloads into packets."""

    def receive(self, data: str | bytes) -> SioPacket | None:
        """Decode one payload.

        Returns:
            The packet, or ``None`` while binary attachments are still expected.

        Raises:
            RemoteProtocolError: The payload breaks the protocol or a limit.
        """
        ...


class Parser(Protocol):
    """A Socket.IO wire format (socket.io's ``parser`` option)."""

    @property
    def name(self) -> str:
        """Short name of the format, for configuration and logs."""
        ...

    def encode(self, packet: SioPacket) -> tuple[str | bytes, ...]:
        """Encode ``packet`` as the Engine.IO MESSAGE payloads to send, in order.

        Raises:
            LocalProtocolError: ``packet`` cannot be sent as is (see ``encode_json``).
        """
        ...

    def decoder(self, limits: Limits = DEFAULT_LIMITS) -> Decoder:
        """Return a fresh decoder for one connection."""
        ...


# --------------------------------------------------------------------------- checks


def _check_namespace_out(namespace: str) -> None:
    # Only called for namespaces other than "/". A comma would end the namespace early
    # in socket.io-parser's format, so the packet would not decode as sent.
    if namespace[:1] != "/" or "," in namespace:
        raise LocalProtocolError(f"invalid namespace {namespace!r}")


def _check_ack_id_out(ack_id: int) -> None:
    if not 0 <= ack_id <= MAX_SAFE_ACK_ID:
        raise LocalProtocolError(f"ack id {ack_id} out of range")


def _check_event_name_out(name: str) -> None:
    if name in RESERVED_EVENTS:
        raise LocalProtocolError(f"{name!r} is a reserved event name")


def _check_connect_data_out(data: JsonValue) -> None:
    if data is not None and not isinstance(data, dict):
        raise LocalProtocolError("CONNECT data must be an object or None")


def _check_connect_error_data_out(data: JsonValue) -> None:
    if data is not None and not isinstance(data, str | dict):
        raise LocalProtocolError("CONNECT_ERROR data must be a string, an object or None")


def _check_namespace_in(namespace: str, limits: Limits) -> None:
    if len(namespace) > limits.max_namespace_length:
        raise RemoteProtocolError("namespace too long")


def _event_from(data: JsonValue, namespace: str, ack_id: int | None, limits: Limits) -> Event:
    # socket.io-parser isPayloadValid(EVENT): a non-empty array whose first item is a
    # name that is not reserved. (It also lets a number through as the name; no client
    # sends one, and we refuse it: an event name is a string.)
    if not isinstance(data, list) or not data:
        raise RemoteProtocolError("EVENT payload must be a non-empty array")
    name = data[0]
    if not isinstance(name, str):
        raise RemoteProtocolError("event name must be a string")
    if name in RESERVED_EVENTS:
        raise RemoteProtocolError(f"{name!r} is a reserved event name")
    if len(data) > limits.max_event_args + 1:
        raise RemoteProtocolError("too many event arguments")
    return Event(name=name, args=data[1:], namespace=namespace, ack_id=ack_id)


def _ack_from(data: JsonValue, namespace: str, ack_id: int | None, limits: Limits) -> Ack:
    # socket.io-parser isPayloadValid(ACK): an array. An ACK without an id answers nothing.
    if not isinstance(data, list):
        raise RemoteProtocolError("ACK payload must be an array")
    if ack_id is None:
        raise RemoteProtocolError("ACK without an ack id")
    if len(data) > limits.max_event_args:
        raise RemoteProtocolError("too many ack arguments")
    return Ack(ack_id=ack_id, args=data, namespace=namespace)


def _packet_from(
    packet_type: int,
    data: JsonValue,
    has_data: bool,
    namespace: str,
    ack_id: int | None,
    limits: Limits,
) -> SioPacket:
    """Build the record for a decoded packet, applying socket.io-parser's payload rules."""
    if packet_type == SioPacketType.EVENT or packet_type == SioPacketType.BINARY_EVENT:
        return _event_from(data, namespace, ack_id, limits)
    if packet_type == SioPacketType.ACK or packet_type == SioPacketType.BINARY_ACK:
        return _ack_from(data, namespace, ack_id, limits)
    # CONNECT, DISCONNECT and CONNECT_ERROR have no ack id in Socket.IO v5.
    if ack_id is not None:
        raise RemoteProtocolError("unexpected ack id")
    if packet_type == SioPacketType.CONNECT:
        if has_data and not isinstance(data, dict):
            raise RemoteProtocolError("CONNECT payload must be an object")
        return Connect(namespace=namespace, data=data)
    if packet_type == SioPacketType.DISCONNECT:
        if has_data:
            raise RemoteProtocolError("DISCONNECT takes no payload")
        return Disconnect(namespace=namespace)
    # CONNECT_ERROR
    if has_data and not isinstance(data, str | dict):
        raise RemoteProtocolError("CONNECT_ERROR payload must be a string or an object")
    return ConnectError(namespace=namespace, data=data)


# ------------------------------------------------------------------- JSON: encoding


def _deconstruct(value: JsonValue, buffers: list[bytes]) -> JsonValue:
    """Copy ``value`` with each ``bytes`` replaced by a placeholder, depth-first.

    socket.io-parser's deconstructPacket numbers attachments in the order a depth-first,
    left-to-right walk meets them.
    """
    if isinstance(value, bytes):
        buffers.append(value)
        return {"_placeholder": True, "num": len(buffers) - 1}
    if isinstance(value, list | tuple):
        return [_deconstruct(item, buffers) for item in value]
    if isinstance(value, dict):
        return {key: _deconstruct(item, buffers) for key, item in value.items()}
    return value


def _encode_body(data: list[JsonValue]) -> tuple[str, tuple[bytes, ...]]:
    """JSON-encode an EVENT/ACK array, taking binary attachments out if there are any."""
    try:
        # The hot path: no bytes anywhere, one pass in C. The encoder raises TypeError
        # on the first bytes object, and only then do we walk the arguments.
        return dumps(data), ()
    except TypeError:
        pass
    except (ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"arguments are not JSON: {exc}") from exc
    buffers: list[bytes] = []
    try:
        body = dumps(_deconstruct(data, buffers))
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"arguments are not JSON: {exc}") from exc
    return body, tuple(buffers)


def _dumps_out(data: JsonValue) -> str:
    try:
        return dumps(data)
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"payload is not JSON: {exc}") from exc


def encode_json(packet: SioPacket) -> tuple[str, tuple[bytes, ...]]:
    """Encode ``packet`` in socket.io-parser's format.

    Returns:
        The text payload and the binary attachments that follow it (an empty tuple
        when there are none). Neither carries Engine.IO's MESSAGE prefix.

    Raises:
        LocalProtocolError: The record would not decode as sent: a namespace without a
            leading ``/`` or with a comma, a reserved event name, an ack id outside
            0..2**53-1, CONNECT data that is not an object, CONNECT_ERROR data that is not
            a string or object, or arguments that are not JSON values.
    """
    match packet:
        case Event(name=name, args=args, namespace=namespace, ack_id=ack_id):
            _check_event_name_out(name)
            body, attachments = _encode_body([name, *args])
            head = f"5{len(attachments)}-" if attachments else "2"
        case Ack(ack_id=ack_id, args=args, namespace=namespace):
            body, attachments = _encode_body(list(args))
            head = f"6{len(attachments)}-" if attachments else "3"
        case Connect(namespace=namespace, data=data):
            _check_connect_data_out(data)
            head, body, attachments, ack_id = (
                "0",
                "" if data is None else _dumps_out(data),
                (),
                None,
            )
        case Disconnect(namespace=namespace):
            head, body, attachments, ack_id = "1", "", (), None
        case ConnectError(namespace=namespace, data=data):
            _check_connect_error_data_out(data)
            head, body, attachments, ack_id = (
                "4",
                "" if data is None else _dumps_out(data),
                (),
                None,
            )
        case _:  # pragma: no cover - mypy proves the match exhaustive
            assert_never(packet)
    if namespace != "/":
        _check_namespace_out(namespace)
        head = f"{head}{namespace},"
    if ack_id is not None:
        _check_ack_id_out(ack_id)
        head = f"{head}{ack_id}"
    return head + body, attachments


# ------------------------------------------------------------------- JSON: decoding


@attrs.define(eq=False)
class _PendingBinary:
    """A BINARY_EVENT/BINARY_ACK whose attachments are still arriving."""

    packet_type: int
    data: JsonValue
    namespace: str
    ack_id: int | None
    expected: int
    buffers: list[bytes] = attrs.Factory(list)


def _reconstruct(value: JsonValue, buffers: list[bytes], used: list[bool]) -> JsonValue:
    """Put the attachments in place of their placeholders (socket.io-parser reconstructPacket).

    Mutates the freshly decoded containers in place; depth is already bounded.
    """
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, list | dict):
                value[index] = _reconstruct(item, buffers, used)
    elif isinstance(value, dict):
        if value.get("_placeholder") is True:
            num = value.get("num")
            if type(num) is not int or not 0 <= num < len(buffers) or used[num]:
                raise RemoteProtocolError("invalid attachment placeholder")
            used[num] = True
            return buffers[num]
        for key, item in value.items():
            if isinstance(item, list | dict):
                value[key] = _reconstruct(item, buffers, used)
    return value


def _complete(pending: _PendingBinary, limits: Limits) -> SioPacket:
    used = [False] * pending.expected
    data = _reconstruct(pending.data, pending.buffers, used)
    if not all(used):
        raise RemoteProtocolError("attachment count does not match the placeholders")
    return _packet_from(pending.packet_type, data, True, pending.namespace, pending.ack_id, limits)


@attrs.define(eq=False)
class _JsonDecoder:
    """socket.io-parser's Decoder: one text payload, then its binary attachments."""

    _limits: Limits
    _pending: _PendingBinary | None = None
    _ack_id_digits: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._ack_id_digits = self._limits.max_ack_id_digits

    def receive(self, data: str | bytes) -> SioPacket | None:
        """Decode one payload; see ``Decoder.receive``."""
        if isinstance(data, str):
            if self._pending is not None:
                raise RemoteProtocolError("text payload while binary attachments are awaited")
            return self._decode_text(data)
        if isinstance(data, bytes):
            return self._take_attachment(data)
        raise RemoteProtocolError("payload is neither text nor bytes")

    def _take_attachment(self, data: bytes) -> SioPacket | None:
        pending = self._pending
        if pending is None:
            raise RemoteProtocolError("binary payload while no attachment is awaited")
        if len(data) > self._limits.max_payload_bytes:
            self._pending = None
            raise RemoteProtocolError("binary attachment too large")
        pending.buffers.append(data)
        if len(pending.buffers) < pending.expected:
            return None
        self._pending = None
        return _complete(pending, self._limits)

    def _decode_text(self, text: str) -> SioPacket | None:
        limits = self._limits
        end = len(text)
        if end == 0:
            raise RemoteProtocolError("empty Socket.IO packet")
        if end > limits.max_payload_bytes:
            raise RemoteProtocolError("Socket.IO packet too large")
        packet_type = ord(text[0]) - 48
        if not 0 <= packet_type <= 6:
            raise RemoteProtocolError("unknown Socket.IO packet type")
        i = 1
        attachments = -1
        if packet_type >= SioPacketType.BINARY_EVENT:
            # "<n>-": at most as many digits as max_attachments has.
            dash = text.find("-", 1, 2 + len(str(limits.max_attachments)))
            count = text[1:dash]
            if dash < 0 or not count or not count.isascii() or not count.isdigit():
                raise RemoteProtocolError("illegal attachment count")
            attachments = int(count)
            if attachments > limits.max_attachments:
                raise RemoteProtocolError("too many binary attachments")
            i = dash + 1
        namespace = "/"
        if i < end and text[i] == "/":
            # The namespace runs to the next comma, or to the end of the packet
            # ("40/custom" is as valid as "40/custom,").
            stop = i + limits.max_namespace_length
            comma = text.find(",", i, stop + 1)
            if comma < 0:
                if end > stop:
                    raise RemoteProtocolError("namespace too long")
                namespace, i = text[i:], end
            else:
                namespace, i = text[i:comma], comma + 1
        ack_id: int | None = None
        # (Matched no further than one digit past the limit: a long run of digits is
        # refused without reading it all.)
        digits = _ACK_ID.match(text, i, i + self._ack_id_digits + 1)
        if digits is not None:
            i = digits.end()
            if i - digits.start() > self._ack_id_digits:
                raise RemoteProtocolError("ack id too long")
            ack_id = int(digits.group())
            if ack_id > limits.max_ack_id:
                raise RemoteProtocolError("ack id too large")
        has_data = i < end
        data = loads(text, i, max_depth=limits.max_nesting_depth) if has_data else None
        if attachments < 0:
            return _packet_from(packet_type, data, has_data, namespace, ack_id, limits)
        # Validate before waiting: a bad BINARY_EVENT fails on its text, not later.
        _packet_from(packet_type, data, has_data, namespace, ack_id, limits)
        pending = _PendingBinary(
            packet_type=packet_type,
            data=data,
            namespace=namespace,
            ack_id=ack_id,
            expected=attachments,
        )
        if attachments == 0:
            return _complete(pending, limits)
        self._pending = pending
        return None


@attrs.frozen
class _JsonParser:
    """socket.io-parser 4.2, the default parser of every Socket.IO client."""

    name: str = "json"

    def encode(self, packet: SioPacket) -> tuple[str | bytes, ...]:
        """Encode ``packet``: the text payload, then one binary payload per attachment."""
        text, attachments = encode_json(packet)
        return (text, *attachments)

    def decoder(self, limits: Limits = DEFAULT_LIMITS) -> Decoder:
        """Return a fresh decoder for one connection."""
        return _JsonDecoder(limits)


# ------------------------------------------------------------------------ msgpack


class _NeedsExactDecode(Exception):  # a control-flow signal that never leaves this module
    """A fast-path ext hook saw an extension only the byte-exact walk can read."""


def _fast_ext_hook(code: int, data: bytes) -> JsonValue:
    # notepack.io (socket.io-msgpack-parser's msgpack library) writes an ArrayBuffer or
    # typed array (what a browser sends as binary) as ext 8/16/32 type 0, JavaScript
    # `undefined` as fixext 1 type 0 and a Date as fixext 8 type 0. Python's msgpack
    # hands all of them to ext_hook as code 0, so a 1- or 8-byte payload is ambiguous;
    # only those frames take the slow, byte-exact walk (_unpack_exact).
    if code != 0:
        raise ValueError(f"unsupported msgpack extension type {code}")
    if len(data) == 1 or len(data) == 8:
        raise _NeedsExactDecode
    return bytes(data)


def _exact_ext_hook(code: int, data: bytes) -> JsonValue:
    # Reached only for ext 8/16/32 and fixext 2/4/16: _read_exact handles fixext 1 and 8.
    if code != 0:
        raise ValueError(f"unsupported msgpack extension type {code}")
    return bytes(data)


_UNDEFINED: Final = object()
"""JavaScript `undefined`: dropped from maps, null in arrays (as JSON.stringify does)."""

_ARRAY_HEADS: Final = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])
_MAP_HEADS: Final = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_FIXEXT_1: Final = 0xD4
_FIXEXT_8: Final = 0xD7
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MIN_DATE_MS: Final = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
_MAX_DATE_MS: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def _iso_date(millis: int) -> str:
    """A notepack Date as the string ``JSON.stringify`` makes of it (``toISOString``)."""
    if not _MIN_DATE_MS <= millis <= _MAX_DATE_MS:
        raise RemoteProtocolError("msgpack date out of range")
    moment = _EPOCH + datetime.timedelta(milliseconds=millis)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{millis % 1000:03d}Z"
    )


def _read_exact(unpacker: msgpack.Unpacker, frame: bytes, levels: int) -> object:
    """Read one value, looking at its first byte to tell the notepack extensions apart."""
    offset = unpacker.tell()
    head = frame[offset] if offset < len(frame) else -1
    if head in _ARRAY_HEADS or head in _MAP_HEADS:
        if levels == 0:
            raise RemoteProtocolError("msgpack payload nested too deeply")
        if head in _ARRAY_HEADS:
            items = []
            for _ in range(unpacker.read_array_header()):
                item = _read_exact(unpacker, frame, levels - 1)
                items.append(None if item is _UNDEFINED else item)
            return items
        out: dict[str, object] = {}
        for _ in range(unpacker.read_map_header()):
            key = _read_exact(unpacker, frame, levels - 1)
            item = _read_exact(unpacker, frame, levels - 1)
            if not isinstance(key, str):
                raise RemoteProtocolError("msgpack map key must be a string")
            if item is not _UNDEFINED:
                out[key] = item
        return out
    ext_type = frame[offset + 1 : offset + 2]
    if head == _FIXEXT_1 and ext_type == b"\x00":
        unpacker.skip()
        return _UNDEFINED
    if head == _FIXEXT_8 and ext_type == b"\x00":
        unpacker.skip()
        return _iso_date(int.from_bytes(frame[offset + 2 : offset + 10], "big", signed=True))
    return unpacker.unpack()


def _unpack_exact(frame: bytes, limits: Limits) -> object:
    """Decode ``frame`` one value at a time, reading notepack's type-0 extensions exactly."""
    # Every max_*_len bound derives from max_buffer_size: no length can exceed the frame.
    unpacker = msgpack.Unpacker(ext_hook=_exact_ext_hook, max_buffer_size=len(frame))
    unpacker.feed(frame)
    # One level for the packet map, then the payload's own levels.
    value = _read_exact(unpacker, frame, limits.max_nesting_depth + 1)
    if unpacker.tell() != len(frame):
        raise ValueError("extra data after the msgpack packet")
    return value


def _check_msgpack_scalar(value: object) -> None:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RemoteProtocolError("non-finite float")
    elif value is not None and not isinstance(value, str | int | bytes):
        # msgpack.Timestamp (ext -1) and anything else that is not a JsonValue.
        raise RemoteProtocolError("unsupported msgpack value")


def _check_msgpack_data(value: object, limits: Limits) -> None:
    """Check that ``value`` is a ``JsonValue`` (string keys, finite floats), not too deep.

    Unlike JSON, msgpack can carry NaN, bytes map keys and timestamps; a peer must not be
    able to hand those to code that relays them to JSON clients.
    """
    if not isinstance(value, list | dict):
        _check_msgpack_scalar(value)
        return
    max_depth = limits.max_nesting_depth
    stack: list[tuple[list[object] | dict[object, object], int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > max_depth:
            raise RemoteProtocolError("msgpack payload nested too deeply")
        children: Iterable[object]
        if isinstance(container, dict):
            for key in container:
                if not isinstance(key, str):
                    raise RemoteProtocolError("msgpack map key must be a string")
            children = container.values()
        else:
            children = container
        for child in children:
            if isinstance(child, list | dict):
                stack.append((child, depth + 1))
            else:
                _check_msgpack_scalar(child)


def _has_non_finite(value: JsonValue) -> bool:
    stack: list[JsonValue] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return False


def _int_field(value: object) -> int | None:
    # bool is an int subclass; msgpack true/false is not a number.
    return value if type(value) is int else None


@attrs.define(eq=False)
class _MsgpackDecoder:
    """socket.io-msgpack-parser's Decoder: one msgpack map per binary payload."""

    _limits: Limits

    def receive(self, data: str | bytes) -> SioPacket | None:
        """Decode one payload; see ``Decoder.receive``. Never returns ``None``."""
        if not isinstance(data, bytes):
            raise RemoteProtocolError("the msgpack parser takes binary payloads only")
        limits = self._limits
        if len(data) > limits.max_payload_bytes:
            raise RemoteProtocolError("Socket.IO packet too large")
        bound = limits.max_payload_bytes
        try:
            try:
                decoded = msgpack.unpackb(
                    data,
                    ext_hook=_fast_ext_hook,
                    max_str_len=bound,
                    max_bin_len=bound,
                    max_array_len=bound,
                    max_map_len=bound,
                    max_ext_len=bound,
                )
            except _NeedsExactDecode:
                decoded = _unpack_exact(data, limits)
        except (ValueError, TypeError, RecursionError, msgpack.UnpackException):
            # ValueError covers ExtraData, FormatError, StackError, truncated input,
            # invalid UTF-8 in str, non-string map keys and the ext hooks' refusals.
            raise RemoteProtocolError("invalid msgpack payload") from None
        if not isinstance(decoded, dict):
            raise RemoteProtocolError("msgpack packet must be a map")
        # socket.io-msgpack-parser checkPacket: integer type CONNECT..CONNECT_ERROR (the
        # BINARY_* types do not exist in this format), string nsp, integer id.
        packet_type = _int_field(decoded.get("type"))
        if packet_type is None or not 0 <= packet_type <= SioPacketType.CONNECT_ERROR:
            raise RemoteProtocolError("invalid packet type")
        namespace = decoded.get("nsp")
        if not isinstance(namespace, str) or namespace[:1] != "/":
            raise RemoteProtocolError("invalid namespace")
        _check_namespace_in(namespace, limits)
        raw_id = decoded.get("id")
        ack_id = _int_field(raw_id)
        if raw_id is not None and (ack_id is None or not 0 <= ack_id <= limits.max_ack_id):
            raise RemoteProtocolError("invalid ack id")
        # A missing key, nil (python-socketio) and `undefined` all mean "no payload".
        payload = decoded.get("data")
        _check_msgpack_data(payload, limits)
        if payload is None and packet_type == SioPacketType.CONNECT_ERROR:
            raise RemoteProtocolError("CONNECT_ERROR payload must be a string or an object")
        return _packet_from(packet_type, payload, payload is not None, namespace, ack_id, limits)


def _msgpack_map(packet: SioPacket) -> dict[str, JsonValue]:
    """The packet as a map, keys in the order a Node socket.io 4.8 server builds them.

    msgpack maps are ordered on the wire, so this order is what makes our frames
    byte-identical to a Node server's: ``{type, data, id?, nsp}`` for an event,
    ``{id, type, data, nsp}`` for an ack (``socket.emit`` and the ack callback), and
    ``{type, data?, nsp}`` for the rest.
    """
    match packet:
        case Event(name=name, args=args, namespace=namespace, ack_id=ack_id):
            _check_event_name_out(name)
            # BINARY_* types do not exist in this format: bytes are inline msgpack bin,
            # and socket.io-msgpack-parser refuses any type above CONNECT_ERROR.
            out: dict[str, JsonValue] = {"type": SioPacketType.EVENT.value, "data": [name, *args]}
            if ack_id is not None:
                _check_ack_id_out(ack_id)
                out["id"] = ack_id
        case Ack(ack_id=ack_id, args=args, namespace=namespace):
            _check_ack_id_out(ack_id)
            out = {"id": ack_id, "type": SioPacketType.ACK.value, "data": list(args)}
        case Connect(namespace=namespace, data=data):
            _check_connect_data_out(data)
            out = {"type": SioPacketType.CONNECT.value}
            if data is not None:
                out["data"] = data
        case Disconnect(namespace=namespace):
            out = {"type": SioPacketType.DISCONNECT.value}
        case ConnectError(namespace=namespace, data=data):
            _check_connect_error_data_out(data)
            if data is None:
                # socket.io-msgpack-parser's checkPacket refuses a CONNECT_ERROR
                # without a string or object payload (socket.io-parser lets it by).
                raise LocalProtocolError("CONNECT_ERROR needs data with the msgpack parser")
            out = {"type": SioPacketType.CONNECT_ERROR.value, "data": data}
        case _:  # pragma: no cover - mypy proves the match exhaustive
            assert_never(packet)
    if namespace != "/":
        _check_namespace_out(namespace)
    out["nsp"] = namespace
    return out


@attrs.frozen
class _MsgpackParser:
    """socket.io-msgpack-parser 3.0: one msgpack frame per packet, bytes inline."""

    name: str = "msgpack"

    def encode(self, packet: SioPacket) -> tuple[str | bytes, ...]:
        """Encode ``packet`` as one binary payload.

        Raises:
            LocalProtocolError: As ``encode_json``, and also for a CONNECT_ERROR without
                data (socket.io-msgpack-parser refuses it) and for integers outside
                msgpack's int64/uint64 range.
        """
        out = _msgpack_map(packet)
        try:
            frame: bytes = msgpack.packb(out)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise LocalProtocolError(f"payload is not msgpack-encodable: {exc}") from exc
        # msgpack carries NaN and infinities, JSON does not, and our decoders refuse
        # them. Every non-finite float64 is packed as cb 7f f. or cb ff f.; two scans in
        # C find any candidate, and only then do we walk the payload to be sure.
        if (b"\xcb\x7f" in frame or b"\xcb\xff" in frame) and _has_non_finite(out.get("data")):
            raise LocalProtocolError("payload holds a NaN or an infinite float")
        return (frame,)

    def decoder(self, limits: Limits = DEFAULT_LIMITS) -> Decoder:
        """Return a fresh decoder for one connection."""
        return _MsgpackDecoder(limits)


JSON_PARSER: Final[Parser] = _JsonParser()
"""socket.io-parser 4.2's wire format: the default."""

MSGPACK_PARSER: Final[Parser] = _MsgpackParser()
"""socket.io-msgpack-parser 3.0's wire format."""
