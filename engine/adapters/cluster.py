"""The inter-node protocol of a roomcast cluster: messages, their msgpack codec, errors.

Nothing here does I/O or knows Redis; ``roomcast.engine.adapters.redis`` carries these
messages over Redis pub/sub. Every message is one msgpack array::

    ["roomcast", VERSION, CLUSTER, KIND, NODE, SEQ, NAMESPACE, BODY]

``CLUSTER`` is the cluster's name (the configured channel prefix): a message of another
cluster, or of another protocol version, is dropped even if it arrives on our channels.
``SEQ`` numbers a node's data messages per channel (1, 2, 3, ...), so that a receiver
can tell how many it missed; control messages (heartbeats) carry 0.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final, TypeAlias, assert_never

import attrs
import msgpack

from roomcast.engine.adapters.base import BroadcastOptions, SocketInfo
from roomcast.engine.errors import EngineError
from roomcast.engine.handshake import Handshake
from roomcast.protocol import DisconnectReason, JsonValue, RemoteProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "AckAnswerPart",
    "AckBroadcast",
    "AckFinished",
    "AckRecipients",
    "AddSockets",
    "Applied",
    "Body",
    "BroadcastBody",
    "Bye",
    "ClusterError",
    "ClusterTimeoutError",
    "ClusterUnavailableError",
    "DelSockets",
    "DisconnectSockets",
    "Envelope",
    "Failed",
    "FetchSockets",
    "Heartbeat",
    "Hello",
    "HoldsSession",
    "MessageKind",
    "Operation",
    "Part",
    "PartKind",
    "RequestBody",
    "RequestKind",
    "ResponseBody",
    "ServerAnswer",
    "ServerSideEmit",
    "SocketsFound",
    "decode_envelope",
    "encode_envelope",
    "sender_of",
]

MAGIC: Final = "roomcast"
PROTOCOL_VERSION: Final = 2
"""Bumped on any incompatible change of the message layout; other versions are dropped.
2: HOLDS_SESSION (a node of version 1 would never answer it, and so be taken for dead)."""

_MAX_DEPTH: Final = 32


# --------------------------------------------------------------------------- errors


class ClusterError(EngineError):
    """A cluster-wide operation could not reach every node.

    The part of the operation that concerns this node's own sockets was done.
    """


class ClusterUnavailableError(ClusterError):
    """This node has no connection to the cluster's broker (Redis) right now."""


class ClusterTimeoutError(ClusterError):
    """Some nodes did not answer a cluster-wide request in time.

    Attributes:
        missing: The ids of the nodes that did not answer.
    """

    def __init__(self, message: str, *, missing: frozenset[str]) -> None:
        super().__init__(message)
        self.missing = missing


# --------------------------------------------------------------------------- codes


class MessageKind(enum.IntEnum):
    """The kinds of inter-node message (the ``KIND`` field)."""

    HEARTBEAT = 1
    """``[]``: I am alive. Sent every heartbeat interval on the cluster channel."""
    HELLO = 2
    """``[]``: I just (re)joined; everyone please send a heartbeat now."""
    BYE = 3
    """``[]``: I am leaving (a clean shutdown): forget me now."""
    BROADCAST = 4
    """``[OPTS, FRAMES]``: deliver these Engine.IO frames to the matching local sockets."""
    REQUEST = 5
    """``[REQUEST_ID, OP, ARGS]``: do an operation on local sockets and answer."""
    RESPONSE = 6
    """``[REQUEST_ID, PART, DATA]``: (part of) a node's answer to a request."""


class RequestKind(enum.IntEnum):
    """Cluster-wide operations (the ``OP`` of a request)."""

    FETCH_SOCKETS = 1
    ADD_SOCKETS = 2
    DEL_SOCKETS = 3
    DISCONNECT_SOCKETS = 4
    SERVER_SIDE_EMIT = 5
    ACK_BROADCAST = 6
    HOLDS_SESSION = 7


class PartKind(enum.IntEnum):
    """The parts of a response (the ``PART`` field)."""

    SOCKETS_FOUND = 1
    APPLIED = 2
    SERVER_ANSWER = 3
    ACK_RECIPIENTS = 4
    ACK_ANSWER = 5
    ACK_FINISHED = 6
    FAILED = 7


# --------------------------------------------------------------------------- records


def _args(value: Iterable[JsonValue]) -> tuple[JsonValue, ...]:
    return tuple(value)


def _frames(value: Iterable[str | bytes]) -> tuple[str | bytes, ...]:
    return tuple(value)


def _sids(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


def _infos(value: Iterable[SocketInfo]) -> tuple[SocketInfo, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class Heartbeat:
    """A node is alive."""


@attrs.frozen(kw_only=True)
class Hello:
    """A node (re)joined and asks for heartbeats."""


@attrs.frozen(kw_only=True)
class Bye:
    """A node leaves the cluster."""


@attrs.frozen(kw_only=True)
class BroadcastBody:
    """Encoded Engine.IO frames for the matching sockets of the message's namespace."""

    opts: BroadcastOptions
    frames: tuple[str | bytes, ...] = attrs.field(converter=_frames)


@attrs.frozen(kw_only=True)
class FetchSockets:
    """List the matching sockets."""

    opts: BroadcastOptions


@attrs.frozen(kw_only=True)
class AddSockets:
    """Make the matching sockets join ``rooms``."""

    opts: BroadcastOptions
    rooms: frozenset[str] = attrs.field(converter=_sids)


@attrs.frozen(kw_only=True)
class DelSockets:
    """Make the matching sockets leave ``rooms``."""

    opts: BroadcastOptions
    rooms: frozenset[str] = attrs.field(converter=_sids)


@attrs.frozen(kw_only=True)
class DisconnectSockets:
    """Disconnect the matching sockets (``close``: their connections too)."""

    opts: BroadcastOptions
    close: bool


@attrs.frozen(kw_only=True)
class ServerSideEmit:
    """Run the server-side handler of ``event``; answer with its result if ``want_answer``."""

    event: str
    args: tuple[JsonValue, ...] = attrs.field(converter=_args)
    want_answer: bool


@attrs.frozen(kw_only=True)
class AckBroadcast:
    """Send ``event`` with an ack to the matching sockets; relay their answers."""

    opts: BroadcastOptions
    event: str
    args: tuple[JsonValue, ...] = attrs.field(converter=_args)
    within: float


@attrs.frozen(kw_only=True)
class HoldsSession:
    """Node ``node`` only: say whether you hold the socket of session ``pid`` (Applied
    with count 1) or not (0). A client wants to recover it elsewhere."""

    node: str
    pid: str


Operation: TypeAlias = (
    FetchSockets
    | AddSockets
    | DelSockets
    | DisconnectSockets
    | ServerSideEmit
    | AckBroadcast
    | HoldsSession
)


@attrs.frozen(kw_only=True)
class RequestBody:
    """A request for an operation on every node's local sockets."""

    request_id: int
    op: Operation


@attrs.frozen(kw_only=True)
class SocketsFound:
    """A node's answer to FETCH_SOCKETS."""

    sockets: tuple[SocketInfo, ...] = attrs.field(converter=_infos)


@attrs.frozen(kw_only=True)
class Applied:
    """A node did the operation on ``count`` sockets."""

    count: int


@attrs.frozen(kw_only=True)
class ServerAnswer:
    """A node's server-side handler answered (``args``) or had nothing to say (None)."""

    args: tuple[JsonValue, ...] | None


@attrs.frozen(kw_only=True)
class AckRecipients:
    """The sockets a node sent an ACK_BROADCAST event to."""

    sids: frozenset[str] = attrs.field(converter=_sids)


@attrs.frozen(kw_only=True)
class AckAnswerPart:
    """One client's answer to an ACK_BROADCAST event."""

    sid: str
    args: tuple[JsonValue, ...] = attrs.field(converter=_args)


@attrs.frozen(kw_only=True)
class AckFinished:
    """A node has relayed every answer it will relay for an ACK_BROADCAST."""


@attrs.frozen(kw_only=True)
class Failed:
    """A node could not do the operation."""

    reason: str


Part: TypeAlias = (
    SocketsFound | Applied | ServerAnswer | AckRecipients | AckAnswerPart | AckFinished | Failed
)
FINAL_PARTS: Final = (SocketsFound, Applied, ServerAnswer, AckFinished, Failed)
"""Parts after which a node has nothing more to say about a request."""


@attrs.frozen(kw_only=True)
class ResponseBody:
    """(Part of) one node's answer to one request."""

    request_id: int
    part: Part


Body: TypeAlias = Heartbeat | Hello | Bye | BroadcastBody | RequestBody | ResponseBody


@attrs.frozen(kw_only=True)
class Envelope:
    """One inter-node message.

    Attributes:
        node: The id of the node that sent it.
        seq: Its number among the sender's data messages on its channel (0: control).
        namespace: The namespace it is about ("" for control messages).
        body: What it says.
    """

    node: str
    seq: int
    namespace: str
    body: Body


# --------------------------------------------------------------------------- encoding


def _opts(opts: BroadcastOptions) -> list[object]:
    return [sorted(opts.rooms), sorted(opts.except_rooms), sorted(opts.except_sids), opts.volatile]


def _info(info: SocketInfo) -> list[object]:
    h = info.handshake
    return [
        info.sid,
        sorted(info.rooms),
        info.data,
        [h.auth, h.headers, h.query, h.address, h.time],
    ]


def _op(op: Operation) -> tuple[RequestKind, list[object]]:
    match op:
        case FetchSockets():
            return RequestKind.FETCH_SOCKETS, [_opts(op.opts)]
        case AddSockets():
            return RequestKind.ADD_SOCKETS, [_opts(op.opts), sorted(op.rooms)]
        case DelSockets():
            return RequestKind.DEL_SOCKETS, [_opts(op.opts), sorted(op.rooms)]
        case DisconnectSockets():
            return RequestKind.DISCONNECT_SOCKETS, [_opts(op.opts), op.close]
        case ServerSideEmit():
            return RequestKind.SERVER_SIDE_EMIT, [op.event, list(op.args), op.want_answer]
        case AckBroadcast():
            return RequestKind.ACK_BROADCAST, [_opts(op.opts), op.event, list(op.args), op.within]
        case HoldsSession():
            return RequestKind.HOLDS_SESSION, [op.node, op.pid]
        case _:  # pragma: no cover - exhaustive
            assert_never(op)


def _part(part: Part) -> tuple[PartKind, object]:
    match part:
        case SocketsFound():
            return PartKind.SOCKETS_FOUND, [_info(info) for info in part.sockets]
        case Applied():
            return PartKind.APPLIED, part.count
        case ServerAnswer():
            return PartKind.SERVER_ANSWER, None if part.args is None else list(part.args)
        case AckRecipients():
            return PartKind.ACK_RECIPIENTS, sorted(part.sids)
        case AckAnswerPart():
            return PartKind.ACK_ANSWER, [part.sid, list(part.args)]
        case AckFinished():
            return PartKind.ACK_FINISHED, None
        case Failed():
            return PartKind.FAILED, part.reason
        case _:  # pragma: no cover - exhaustive
            assert_never(part)


def _body(body: Body) -> tuple[MessageKind, list[object]]:
    match body:
        case Heartbeat():
            return MessageKind.HEARTBEAT, []
        case Hello():
            return MessageKind.HELLO, []
        case Bye():
            return MessageKind.BYE, []
        case BroadcastBody():
            return MessageKind.BROADCAST, [_opts(body.opts), list(body.frames)]
        case RequestBody():
            op, args = _op(body.op)
            return MessageKind.REQUEST, [body.request_id, int(op), args]
        case ResponseBody():
            part, data = _part(body.part)
            return MessageKind.RESPONSE, [body.request_id, int(part), data]
        case _:  # pragma: no cover - exhaustive
            assert_never(body)


def _unencodable(value: object) -> str:
    # socket.data may hold values msgpack cannot carry; they travel as their repr().
    return repr(value)


def encode_envelope(cluster: str, envelope: Envelope) -> bytes:
    """Encode ``envelope`` for cluster ``cluster`` as one msgpack array."""
    kind, body = _body(envelope.body)
    packed: bytes = msgpack.packb(
        [
            MAGIC,
            PROTOCOL_VERSION,
            cluster,
            int(kind),
            envelope.node,
            envelope.seq,
            envelope.namespace,
            body,
        ],
        default=_unencodable,
    )
    return packed


# --------------------------------------------------------------------------- decoding


def _fail(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"bad cluster message: {what}", reason=DisconnectReason.PARSE_ERROR)


def _list(value: object, what: str, length: int | None = None) -> list[object]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise _fail(what)
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _fail(what)
    return value


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(what)
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(what)
    return value


def _strs(value: object, what: str) -> list[str]:
    return [_str(item, what) for item in _list(value, what)]


def _json(value: object, what: str, depth: int = 0) -> JsonValue:
    if depth > _MAX_DEPTH:
        raise _fail(f"{what} nested too deep")
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, list):
        return [_json(item, what, depth + 1) for item in value]
    if isinstance(value, dict):
        return {_str(k, what): _json(v, what, depth + 1) for k, v in value.items()}
    raise _fail(f"{what} is not a JSON value")


def _json_args(value: object, what: str) -> tuple[JsonValue, ...]:
    return tuple(_json(item, what) for item in _list(value, what))


def _str_map(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _fail(what)
    return {_str(k, what): _str(v, what) for k, v in value.items()}


def _decode_opts(value: object) -> BroadcastOptions:
    rooms, except_rooms, except_sids, volatile = _list(value, "opts", 4)
    return BroadcastOptions(
        rooms=frozenset(_strs(rooms, "rooms")),
        except_rooms=frozenset(_strs(except_rooms, "except rooms")),
        except_sids=frozenset(_strs(except_sids, "except sids")),
        volatile=_bool(volatile, "volatile"),
    )


def _decode_info(value: object, namespace: str, node: str) -> SocketInfo:
    sid, rooms, data, handshake = _list(value, "socket", 4)
    auth, headers, query, address, time = _list(handshake, "handshake", 5)
    if address is not None:
        address = _str(address, "address")
    if not isinstance(time, float | int) or isinstance(time, bool):
        raise _fail("handshake time")
    data = _json(data, "socket data")
    if not isinstance(data, dict):
        raise _fail("socket data")
    return SocketInfo(
        sid=_str(sid, "sid"),
        namespace=namespace,
        rooms=frozenset(_strs(rooms, "rooms")),
        data=data,
        handshake=Handshake(
            auth=_json(auth, "auth"),
            headers=_str_map(headers, "headers"),
            query=_str_map(query, "query"),
            address=address,
            time=float(time),
        ),
        node=node,
    )


def _decode_op(code: int, args: object) -> Operation:
    try:
        kind = RequestKind(code)
    except ValueError:
        raise _fail(f"unknown request {code}") from None
    match kind:
        case RequestKind.FETCH_SOCKETS:
            (opts,) = _list(args, "fetch", 1)
            return FetchSockets(opts=_decode_opts(opts))
        case RequestKind.ADD_SOCKETS:
            opts, rooms = _list(args, "add", 2)
            return AddSockets(opts=_decode_opts(opts), rooms=_strs(rooms, "rooms"))
        case RequestKind.DEL_SOCKETS:
            opts, rooms = _list(args, "del", 2)
            return DelSockets(opts=_decode_opts(opts), rooms=_strs(rooms, "rooms"))
        case RequestKind.DISCONNECT_SOCKETS:
            opts, close = _list(args, "disconnect", 2)
            return DisconnectSockets(opts=_decode_opts(opts), close=_bool(close, "close"))
        case RequestKind.SERVER_SIDE_EMIT:
            event, event_args, want = _list(args, "server-side emit", 3)
            return ServerSideEmit(
                event=_str(event, "event"),
                args=_json_args(event_args, "args"),
                want_answer=_bool(want, "want answer"),
            )
        case RequestKind.ACK_BROADCAST:
            opts, event, event_args, within = _list(args, "ack broadcast", 4)
            if not isinstance(within, float | int) or isinstance(within, bool) or within < 0:
                raise _fail("within")
            return AckBroadcast(
                opts=_decode_opts(opts),
                event=_str(event, "event"),
                args=_json_args(event_args, "args"),
                within=float(within),
            )
        case RequestKind.HOLDS_SESSION:
            node, pid = _list(args, "holds session", 2)
            return HoldsSession(node=_str(node, "node"), pid=_str(pid, "pid"))
        case _:  # pragma: no cover - exhaustive
            assert_never(kind)


def _decode_part(code: int, data: object, namespace: str, node: str) -> Part:
    try:
        kind = PartKind(code)
    except ValueError:
        raise _fail(f"unknown response part {code}") from None
    match kind:
        case PartKind.SOCKETS_FOUND:
            return SocketsFound(
                sockets=[_decode_info(item, namespace, node) for item in _list(data, "sockets")]
            )
        case PartKind.APPLIED:
            return Applied(count=_int(data, "count"))
        case PartKind.SERVER_ANSWER:
            return ServerAnswer(args=None if data is None else _json_args(data, "answer"))
        case PartKind.ACK_RECIPIENTS:
            return AckRecipients(sids=_strs(data, "recipients"))
        case PartKind.ACK_ANSWER:
            sid, args = _list(data, "ack answer", 2)
            return AckAnswerPart(sid=_str(sid, "sid"), args=_json_args(args, "answer"))
        case PartKind.ACK_FINISHED:
            return AckFinished()
        case PartKind.FAILED:
            return Failed(reason=_str(data, "reason"))
        case _:  # pragma: no cover - exhaustive
            assert_never(kind)


def _decode_body(code: int, body: object, namespace: str, node: str) -> Body:
    try:
        kind = MessageKind(code)
    except ValueError:
        raise _fail(f"unknown kind {code}") from None
    match kind:
        case MessageKind.HEARTBEAT:
            _list(body, "heartbeat", 0)
            return Heartbeat()
        case MessageKind.HELLO:
            _list(body, "hello", 0)
            return Hello()
        case MessageKind.BYE:
            _list(body, "bye", 0)
            return Bye()
        case MessageKind.BROADCAST:
            opts, frames = _list(body, "broadcast", 2)
            checked: list[str | bytes] = []
            for frame in _list(frames, "frames"):
                if not isinstance(frame, str | bytes):
                    raise _fail("frame")
                checked.append(frame)
            return BroadcastBody(opts=_decode_opts(opts), frames=checked)
        case MessageKind.REQUEST:
            request_id, op, args = _list(body, "request", 3)
            return RequestBody(
                request_id=_int(request_id, "request id"), op=_decode_op(_int(op, "op"), args)
            )
        case MessageKind.RESPONSE:
            request_id, part, data = _list(body, "response", 3)
            return ResponseBody(
                request_id=_int(request_id, "request id"),
                part=_decode_part(_int(part, "part"), data, namespace, node),
            )
        case _:  # pragma: no cover - exhaustive
            assert_never(kind)


def sender_of(data: bytes) -> str | None:
    """The sender's node id, read from the header alone (the body is not decoded), or
    None if the header is not readable. A node uses it to skip its own messages cheaply;
    ``decode_envelope`` still checks everything."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(data) or 1)
    unpacker.feed(data)
    try:
        if unpacker.read_array_header() != 8:
            return None
        fields = [unpacker.unpack() for _ in range(5)]
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.OutOfData):
        return None
    node = fields[4]
    return node if isinstance(node, str) and fields[0] == MAGIC else None


def decode_envelope(cluster: str, data: bytes, *, max_bytes: int) -> Envelope:
    """Decode one message of cluster ``cluster``.

    Raises:
        RemoteProtocolError: ``data`` is longer than ``max_bytes``, is not a message of
            this protocol version, belongs to another cluster, or is malformed.
    """
    if len(data) > max_bytes:
        raise _fail(f"{len(data)} bytes, more than {max_bytes}")
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise _fail(f"not msgpack ({exc})") from None
    fields = _list(value, "envelope")
    if len(fields) != 8 or fields[0] != MAGIC:
        raise _fail("not a roomcast cluster message")
    _, version, name, kind, node, seq, namespace, body = fields
    if version != PROTOCOL_VERSION:
        raise _fail(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    if name != cluster:
        raise _fail(f"message of cluster {name!r}")
    node = _str(node, "node")
    namespace = _str(namespace, "namespace")
    return Envelope(
        node=node,
        seq=_int(seq, "seq"),
        namespace=namespace,
        body=_decode_body(_int(kind, "kind"), body, namespace, node),
    )
