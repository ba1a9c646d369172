"""Server-side WebSocket transport over any Trio stream, on wsproto.

What the peer sends is read in two ways. Frames that are whole, unfragmented,
unextended, masked text or binary frames with a minimal length (what Socket.IO clients
send, nearly always) are parsed here, every frame of one read in one pass, unmasked with
one big-integer XOR or ``bytes.translate`` (both C loops in CPython) and checked as
UTF-8 by ``bytes.decode``. The first frame that is anything else (a control frame, a
fragment, an extension bit, a length over the limit, invalid UTF-8) and everything after
it, for the rest of the connection, goes to wsproto, which parses it as it parses every
frame (fragments, control frames, UTF-8, the close handshake, the codes of RFC 6455
§7.4.1). wsproto then starts at a frame boundary with no message in progress, exactly
where it would have been had it parsed the earlier frames itself, so the peer sees the
same behaviour either way. Data frames we send are built here: a server frame is never
masked (RFC 6455 §5.1), so one finished frame can be written to every member of a room.

permessage-deflate (RFC 7692) is opt-in (``accept_websocket(..., compression=True)``),
as in Node's socket.io. Its inbound side (``BoundedDeflate``) inflates with a bound: a
message is refused (close 1009) as soon as its *decompressed* size passes the limit, and
zlib is never asked for more than that, so a compression bomb costs at most the limit.
Outbound, each message of at least ``DEFLATE_THRESHOLD`` bytes is compressed on its own
(no context takeover on our side, which RFC 7692 §7.1.1.1 always allows); smaller ones go
uncompressed (RSV1 clear, RFC 7692 §6), so they keep sharing one encoded frame.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import re
import socket
import struct
import zlib
from collections.abc import Callable
from typing import Final

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError
from wsproto.utilities import generate_accept_token

from roomcast.engine.errors import TransportClosed
from roomcast.engine.stats import UNCOUNTED, Traffic
from roomcast.engine.transport.frames import OutFrame, SharedFrame
from roomcast.protocol import DisconnectReason

__all__ = [
    "DEFLATE_THRESHOLD",
    "BoundedDeflate",
    "WebSocketTransport",
    "accept_plain_websocket",
    "accept_websocket",
    "encode_frame",
]

_RECEIVE_BYTES: Final = 65_536
# Below this many bytes one big-integer XOR unmasks fastest; above it, four strided
# ``bytes.translate`` calls do (measured: 0.6 against 1.2 us at 120 bytes, 28 against
# 18 us at 16 KiB).
_XOR_INT_MAX: Final = 512
_XOR_TABLES: Final = tuple(bytes(a ^ b for a in range(256)) for b in range(256))
_utf8_decoder: Final = codecs.getincrementaldecoder("utf-8")
_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
_FIN: Final = 0x80
_RSV1: Final = 0x40
_HEADER_16: Final = struct.Struct("!BBH")
_HEADER_64: Final = struct.Struct("!BBQ")


DEFLATE_THRESHOLD: Final = 1024
"""Messages shorter than this go uncompressed even when deflate is on (Node ``ws``'s
``threshold``): compressing them costs more CPU than the bytes it saves."""
_BAD_HANDSHAKE: Final = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)
_SWITCHING_PROTOCOLS: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)
_MAX_PENDING_PONGS: Final = 16
_DEFLATE_LEVEL: Final = 6
_DEFLATE_TAIL: Final = b"\x00\x00\xff\xff"
_MAX_WINDOW_BITS: Final = 15
# RFC 7692 §7.1.2: a window-bits value is a decimal integer 8..15. Ours must be >= 9 for
# the server side: zlib silently widens a raw deflate window of 8 bits to 9.
_WINDOW_BITS: Final = re.compile(r"(?:[89]|1[0-5])")


def encode_frame(data: str | bytes, *, compressed: bool = False) -> bytes:
    """Return one unmasked, unfragmented WebSocket frame carrying ``data``.

    ``str`` goes as a text frame (UTF-8), ``bytes`` as a binary frame. ``compressed``
    sets RSV1 (RFC 7692 §6: the payload is a deflated message); the caller compressed it.
    """
    if isinstance(data, str):
        payload = data.encode()
        first = _FIN | _OP_TEXT
    else:
        payload = data
        first = _FIN | _OP_BINARY
    if compressed:
        first |= _RSV1
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65_536:
        return _HEADER_16.pack(first, 126, n) + payload
    return _HEADER_64.pack(first, 127, n) + payload


def unmask(key: bytes, payload: bytes) -> bytes:
    """Return ``payload`` XORed with the repeated 4-byte masking ``key`` (RFC 6455 §5.3)."""
    n = len(payload)
    if n <= _XOR_INT_MAX:
        mask = (key * ((n >> 2) + 1))[:n]
        return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
            n, "little"
        )
    data = bytearray(payload)
    for offset in range(4):
        data[offset::4] = data[offset::4].translate(_XOR_TABLES[key[offset]])
    return bytes(data)


def wire_bytes(frame: OutFrame) -> bytes:
    """The WebSocket bytes of an outbox frame (a shared frame is encoded only once)."""
    if isinstance(frame, SharedFrame):
        wire = frame.wire
        if wire is None:
            wire = frame.wire = encode_frame(frame.eio)
        return wire
    return encode_frame(frame)


def _offer_parameters(offer: str) -> dict[str, str | None] | None:
    """The parameters of one permessage-deflate offer, or None when it is malformed.

    RFC 7692 §5: a server declines an offer with an unknown parameter, a parameter given
    twice, or a value that is not allowed.
    """
    params: dict[str, str | None] = {}
    for part in offer.split(";")[1:]:
        name, equals, value = part.partition("=")
        name = name.strip().lower()
        if name in params:
            return None
        text = value.strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':  # a quoted-string (§7.1)
            text = text[1:-1]
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if equals:
                return None
            params[name] = None
        elif name == "server_max_window_bits":
            # Required value; 8 is declined (see _WINDOW_BITS).
            if _WINDOW_BITS.fullmatch(text) is None or text == "8":
                return None
            params[name] = text
        elif name == "client_max_window_bits":
            if equals and _WINDOW_BITS.fullmatch(text) is None:
                return None
            params[name] = text if equals else None
        else:
            return None
    return params


class BoundedDeflate(Extension):
    """permessage-deflate (RFC 7692) for the server, inflating with a size bound.

    wsproto's own ``PerMessageDeflate`` inflates whatever arrives with no size bound and
    merges several offers into one; this one takes the first acceptable offer as it is and
    never lets zlib produce more than ``max_message_bytes`` for one message.

    Inbound frames are inflated here (wsproto calls the ``frame_inbound_*`` hooks);
    outbound data frames are built by ``WebSocketTransport`` with ``compress``.
    """

    name = "permessage-deflate"

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.server_window_bits = _MAX_WINDOW_BITS
        self.client_no_context_takeover = False
        self._enabled = False
        self._decompressor: zlib._Decompress | None = None
        self._data_frame = False  # the frame being read is TEXT/BINARY/CONTINUATION
        self._inflating = False  # the message being read has RSV1 set
        self._message_bytes = 0  # inflated bytes of that message so far

    def enabled(self) -> bool:
        """Whether the handshake agreed on the extension."""
        return self._enabled

    def offer(self) -> str:  # pragma: no cover - a client-side hook; we only accept
        """The client offer (unused: this class only serves)."""
        return ""

    def accept(self, offer: str) -> str | None:
        """Accept the first valid offer (its response parameters); decline the rest."""
        if self._enabled:
            return None
        params = _offer_parameters(offer)
        if params is None:
            return None
        response = []
        if "server_no_context_takeover" in params:
            response.append("server_no_context_takeover")
        if "client_no_context_takeover" in params:
            # We inflate each message with a fresh window from then on.
            self.client_no_context_takeover = True
            response.append("client_no_context_takeover")
        bits = params.get("server_max_window_bits")
        if bits is not None:
            self.server_window_bits = int(bits)
            response.append(f"server_max_window_bits={bits}")
        # client_max_window_bits is left out of the response: the client keeps its
        # window (at most 15 bits), and we inflate with 15 bits, which reads any of them.
        self._enabled = True
        return "; ".join(response)

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        """Note whether a new message is compressed (RSV1 on its first frame, §6)."""
        if opcode.iscontrol():
            if rsv.rsv1:  # RFC 7692 §6.1: control frames are never compressed
                return CloseReason.PROTOCOL_ERROR
            self._data_frame = False
            return RsvBits(False, False, False)
        self._data_frame = True
        if opcode is Opcode.CONTINUATION:
            if rsv.rsv1:  # RSV1 only on the first frame of a message
                return CloseReason.PROTOCOL_ERROR
        else:
            self._inflating = rsv.rsv1
            self._message_bytes = 0
        return RsvBits(True, False, False)

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        if self._decompressor is None:
            self._decompressor = zlib.decompressobj(-_MAX_WINDOW_BITS)
        room = self.max_message_bytes - self._message_bytes
        try:
            # At most one byte past the limit: a bomb never gets to allocate its output.
            out = self._decompressor.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if len(out) > room:
            return CloseReason.MESSAGE_TOO_BIG
        if self._decompressor.unused_data:  # data after a final deflate block
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._message_bytes += len(out)
        return out

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        """Inflate a piece of a compressed message, within the size bound."""
        if not (self._data_frame and self._inflating):
            return data
        return self._inflate(data)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        """At the end of a compressed message, inflate its implied tail (§7.2.2)."""
        if not (self._data_frame and fin and self._inflating):
            return None
        self._inflating = False
        out = self._inflate(_DEFLATE_TAIL)
        decompressor = self._decompressor
        if self.client_no_context_takeover or (decompressor is not None and decompressor.eof):
            self._decompressor = None
        return out

    def compress(self, payload: bytes) -> bytes:
        """Deflate one whole message on its own (no context takeover), without the
        trailing ``00 00 ff ff`` (RFC 7692 §7.2.1)."""
        compressor = zlib.compressobj(_DEFLATE_LEVEL, zlib.DEFLATED, -self.server_window_bits)
        data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return data[:-4]


async def accept_websocket(
    stream: trio.abc.Stream,
    head: bytes,
    *,
    max_message_bytes: int,
    compression: bool = False,
) -> WebSocketTransport:
    """Complete the WebSocket handshake whose HTTP request head (and any bytes after it)
    were already read from ``stream`` into ``head``.

    With ``compression``, permessage-deflate is agreed if the client offers it.

    Cancellation: the stream is left in an undefined state; the caller closes it.

    Raises:
        TransportClosed: The request is not a valid WebSocket handshake, or the peer left.
    """
    ws = WSConnection(ConnectionType.SERVER)
    # The refusal is sent after the except blocks: an await inside one would drop the
    # error if cancelled there (flake8-async ASYNC120).
    refusal: tuple[bytes, TransportClosed] | None = None
    request: Request | None = None
    try:
        ws.receive_data(head)
        request = next((e for e in ws.events() if isinstance(e, Request)), None)
    except WsRemoteProtocolError as exc:
        reject = exc.event_hint or RejectConnection(status_code=400)
        refusal = (ws.send(reject), TransportClosed(f"bad WebSocket handshake: {exc}"))
        refusal[1].__cause__ = exc
    except UnicodeDecodeError as exc:
        # wsproto decodes the comma-separated headers (Connection, Upgrade, extensions,
        # subprotocols) as ASCII and lets a byte over 0x7F escape as UnicodeDecodeError.
        refusal = (_BAD_HANDSHAKE, TransportClosed("bad WebSocket handshake: header not ASCII"))
        refusal[1].__cause__ = exc
    if refusal is not None:
        await _send_quietly(stream, refusal[0])
        raise refusal[1]
    if request is None:  # pragma: no cover - the HTTP front only calls us with a whole head
        raise TransportClosed("incomplete WebSocket handshake")
    deflate = BoundedDeflate(max_message_bytes) if compression else None
    accept = AcceptConnection(extensions=[deflate] if deflate is not None else [])
    try:
        await stream.send_all(ws.send(accept))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise TransportClosed("peer left during the WebSocket handshake") from exc
    # From here on only the WebSocket connection is needed: the handshake's h11 state
    # (about 2 KiB a connection) is left behind. wsproto's server side does not hand the
    # bytes a client sent after its request head to the connection (its client side
    # does), so they are fed here, through wsproto (a client should not send them before
    # the answer, but what arrived is not dropped). So it reads with permessage-deflate.
    connection = ws.connection
    assert connection is not None, "an accepted handshake has a connection"
    deflate = deflate if deflate is not None and deflate.enabled() else None
    transport = WebSocketTransport(
        stream=stream, ws=connection, max_message_bytes=max_message_bytes, deflate=deflate
    )
    early = head.partition(b"\r\n\r\n")[2]
    transport.fast = deflate is None and not early
    if early:
        transport.feed(early)
    return transport


async def accept_plain_websocket(
    stream: trio.abc.Stream, key: bytes, *, max_message_bytes: int, answer_later: bool = False
) -> WebSocketTransport:
    """Answer a WebSocket handshake that the HTTP front already found plain (see
    ``transport.http.plain_websocket_key``: no extension to agree, nothing to refuse, no
    byte after the head), without parsing its head a second time as ``accept_websocket``
    does; the answer and the connection are the ones wsproto would make.

    ``answer_later``: the 101 answer is not written now but goes out with the first
    frames written (one system call for both), for a server that writes at once, as a
    new Engine.IO session does with its OPEN packet. Never for a peer that waits for the
    answer before it sends anything the server must answer (an upgrade's probe).

    Cancellation: the stream is left in an undefined state; the caller closes it.

    Raises:
        TransportClosed: The peer left.
    """
    response = b"".join((_SWITCHING_PROTOCOLS, generate_accept_token(key), b"\r\n\r\n"))
    transport = WebSocketTransport(
        stream=stream,
        ws=WsConnection(ConnectionType.SERVER),
        max_message_bytes=max_message_bytes,
    )
    transport.fast = True
    if answer_later:
        transport._answer = response
        await trio.lowlevel.checkpoint()
        return transport
    try:
        await stream.send_all(response)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise TransportClosed("peer left during the WebSocket handshake") from exc
    return transport


async def _send_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


@attrs.define(eq=False)
class _SplitFrame:
    """A plain data frame (see ``WebSocketTransport._parse``) whose payload is still
    arriving: its bytes as sent, and for text, the UTF-8 check so far.

    wsproto checks a text frame's UTF-8 as its payload arrives and closes (1007) as soon
    as it is invalid, before the frame ends (RFC 6455 §8.1 lets an endpoint fail fast;
    Autobahn 6.4 tests it): ``feed`` does the same check on each piece, so the transport
    hands such a frame to wsproto at the same read.
    """

    header: bytes  # with the masking key, its last 4 bytes
    text: bool
    length: int
    chunks: list[bytes]  # the payload so far, masked
    received: int = 0
    _utf8: codecs.IncrementalDecoder | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if self.text:
            self._utf8 = _utf8_decoder()

    @property
    def missing(self) -> int:
        """Payload bytes still to come."""
        return self.length - self.received

    def feed(self, chunk: bytes) -> bool:
        """Add a piece of the payload; False if the text is already invalid UTF-8."""
        if not chunk:
            return True
        self.chunks.append(chunk)
        phase = self.received % 4
        self.received += len(chunk)
        if self._utf8 is None:
            return True
        key = self.header[-4:]
        try:
            self._utf8.decode(unmask(key[phase:] + key[:phase], chunk))
        except UnicodeDecodeError:
            return False
        return True

    def message(self) -> str | bytes | None:
        """The whole message (None: invalid UTF-8 at its end)."""
        payload = unmask(self.header[-4:], b"".join(self.chunks))
        if not self.text:
            return payload
        try:
            return payload.decode()
        except UnicodeDecodeError:
            return None

    def raw(self) -> bytes:
        """The frame as received so far."""
        return self.header + b"".join(self.chunks)


@attrs.define(eq=False)
class WebSocketTransport:
    """An accepted WebSocket: one reader (``receive_message``) and one writer (``send``).

    The reader answers WebSocket pings and the peer's close by queueing frames in
    ``control`` for the writer, so that only the writer ever writes to the stream; it
    calls ``on_control`` (when set) as soon as it queued one, so the writer can send it
    without waiting for the next whole message. Each ping gets its PONG, but once
    ``_MAX_PENDING_PONGS`` wait unwritten, further pings replace the latest one (RFC 6455
    §5.5.3 allows answering only the latest), so a ping flood cannot grow ``control``.

    ``deflate`` is the agreed permessage-deflate extension, or None. ``fast`` says
    whether frames are still parsed here (see the module docstring) rather than by
    wsproto; once False it stays False.
    """

    stream: trio.abc.Stream
    ws: WsConnection
    max_message_bytes: int
    deflate: BoundedDeflate | None = None
    on_control: Callable[[], None] | None = attrs.field(default=None, init=False)
    traffic: Traffic = attrs.field(default=UNCOUNTED, init=False)  # (its connection's)
    control: list[bytes] = attrs.field(factory=list, init=False)
    close_code: int | None = attrs.field(default=None, init=False)
    close_reason: str = attrs.field(default="", init=False)
    # A message arriving in several frames is gathered here (bytes or text), so its
    # memory is its size, however many frames (even empty ones) it came in.
    _partial: bytearray | io.StringIO | None = attrs.field(default=None, init=False)
    _size: int = attrs.field(default=0, init=False)
    _pending: list[str | bytes] = attrs.field(factory=list, init=False)  # (smaller than a deque)
    fast: bool = attrs.field(default=False, init=False)
    _head: bytes = attrs.field(default=b"", init=False)  # an incomplete frame header
    _split: _SplitFrame | None = attrs.field(default=None, init=False)
    _peer_closed: TransportClosed | None = attrs.field(default=None, init=False)
    _pongs: int = attrs.field(default=0, init=False)
    _pong_at: int = attrs.field(default=0, init=False)
    _write_interrupted: bool = attrs.field(default=False, init=False)
    _unsent: bytes = attrs.field(default=b"", init=False)  # (write_nowait's rest)
    # The handshake's 101 answer when it goes out with the first frames (``answer_later``).
    _answer: bytes = attrs.field(default=b"", init=False)
    _close_written: bool = attrs.field(default=False, init=False)
    # The socket's descriptor for the non-blocking paths (a plain TCP socket only; -1
    # otherwise, and from aclose on, so a reused descriptor number is never written to).
    _fd: int = attrs.field(default=-1, init=False)

    def __attrs_post_init__(self) -> None:
        stream = self.stream
        if isinstance(stream, trio.SocketStream):
            self._fd = stream.socket.fileno()

    async def receive_message(self) -> str | bytes:
        """Return the next whole message from the peer.

        Cancellation: safe; a message partly read stays buffered for the next call.

        Raises:
            TransportClosed: The peer closed, broke the protocol, or went away; its
                ``code`` says which (1000/1001 from the peer, 1002, 1007, 1009, or 1006).
        """
        while not self._pending:
            await self._receive()
        return self._pending.pop(0)

    async def receive_messages(self) -> list[str | bytes]:
        """Return every whole message that one read brought (at least one), in order.

        Cancellation: safe; a message partly read stays buffered for the next call.

        Raises:
            TransportClosed: As ``receive_message``; messages that arrived before a
                close frame are returned first, and the next call raises.
        """
        while not self._pending:
            await self._receive()
        return self._take_pending()

    def _take_pending(self) -> list[str | bytes]:
        pending = self._pending
        self._pending = []
        return pending

    async def _receive(self) -> None:
        if self._peer_closed is not None:
            raise self._peer_closed
        try:
            received = await self.stream.receive_some(_RECEIVE_BYTES)
            data = received if isinstance(received, bytes) else bytes(received)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed(
                DisconnectReason.TRANSPORT_ERROR, code=CloseReason.ABNORMAL_CLOSURE
            ) from exc
        self.feed(data)

    def receive_nowait(self) -> list[str | bytes]:
        """Read once from the socket without blocking (for a reactor that saw it ready);
        return the whole messages that read completed (maybe none).

        Raises:
            TransportClosed: As ``receive_message``: the peer closed (after the messages
                that came before its close frame were returned), broke the protocol, or
                went away.
        """
        if self._peer_closed is not None:
            raise self._peer_closed
        assert self._fd >= 0, "reads without blocking on an open plain socket only"
        try:
            data = os.read(self._fd, _RECEIVE_BYTES)
        except BlockingIOError:
            return []
        except OSError as exc:
            raise TransportClosed(
                DisconnectReason.TRANSPORT_ERROR, code=CloseReason.ABNORMAL_CLOSURE
            ) from exc
        self.feed(data)
        return self._take_pending()

    def feed(self, data: bytes) -> None:
        """Parse bytes read from the peer (empty: the end of its stream): whole messages
        go to ``_pending``, pongs and close answers to ``control`` (``on_control`` is
        called when one is queued).

        Raises:
            TransportClosed: The peer broke the protocol (the close frame to send is
                queued in ``control``), or its stream ended.
        """
        if not data:
            raise TransportClosed(
                DisconnectReason.TRANSPORT_CLOSE, code=CloseReason.ABNORMAL_CLOSURE
            )
        self.traffic.bytes_in += len(data)
        if self.fast:
            if self.ws.state is ConnectionState.OPEN:
                data = self._parse(data)
                if not data:
                    return
            else:  # closing: wsproto reads the rest (the peer's close frame)
                split = self._split
                data = self._fall_back((self._head if split is None else split.raw()) + data)
        queued = len(self.control)
        try:
            self.ws.receive_data(data)
            self._take_events()
        except WsRemoteProtocolError as exc:  # pragma: no cover - wsproto reports
            # frame errors as a CloseConnection event (see _take_events)
            self._queue_close(CloseReason.PROTOCOL_ERROR, "protocol error")
            raise TransportClosed(
                DisconnectReason.TRANSPORT_ERROR, code=CloseReason.PROTOCOL_ERROR
            ) from exc
        finally:
            if len(self.control) != queued and self.on_control is not None:
                self.on_control()

    def _parse(self, data: bytes) -> bytes:
        """Take the plain data frames at the start of ``data`` into ``_pending``.

        Returns the bytes from the first frame that is not one (empty when there is
        none): they go to wsproto, and so does everything after them. The start of a
        plain frame whose end has not arrived is kept (``_head`` while its header is
        incomplete, ``_split`` after that), so a frame arriving in many reads costs
        time in proportion to its size.
        """
        pending, limit = self._pending, self.max_message_bytes
        i = 0
        split = self._split
        if split is not None:
            i = min(split.missing, len(data))
            if not split.feed(data[:i]):  # invalid UTF-8 already: wsproto fails fast
                return self._fall_back(split.raw() + data[i:])
            if split.missing:
                return b""
            self._split = None
            message = split.message()
            if message is None:
                return self._fall_back(split.raw() + data[i:])
            pending.append(message)
        elif self._head:
            data = self._head + data
            self._head = b""
        n = len(data)
        while i < n:
            if n - i < 2:
                self._head = data[i:]
                return b""
            first, second = data[i], data[i + 1]
            # FIN, no RSV bits, TEXT or BINARY; MASK set, as RFC 6455 §5.1 requires of
            # a client. Anything else is wsproto's to judge.
            if (first != 0x81 and first != 0x82) or second < 0x80:
                break
            length = second & 0x7F
            if length < 126:
                start = i + 6
            elif length == 126:
                if n - i < 4:
                    self._head = data[i:]
                    return b""
                length = (data[i + 2] << 8) | data[i + 3]
                if length < 126:  # not the minimal length (§5.2): wsproto refuses it
                    break
                start = i + 8
            else:  # 64-bit lengths: over any sane limit, left to wsproto
                break
            if length > limit:  # wsproto and _take_data close with 1009
                break
            if start > n:
                self._head = data[i:]
                return b""
            end = start + length
            if end > n:
                split = _SplitFrame(
                    header=data[i:start], text=first == 0x81, length=length, chunks=[]
                )
                if not split.feed(data[start:]):
                    break
                self._split = split
                return b""
            payload = unmask(data[start - 4 : start], data[start:end])
            if first == 0x81:
                try:
                    pending.append(payload.decode())
                except UnicodeDecodeError:  # wsproto closes with 1007
                    break
            else:
                pending.append(payload)
            i = end
        else:
            return b""
        return self._fall_back(data[i:] if i else data)

    def _fall_back(self, data: bytes) -> bytes:
        """From here on wsproto reads everything, starting with ``data``."""
        self.fast = False
        self._head = b""
        self._split = None
        return data

    def _take_events(self) -> None:
        for event in self.ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                self._take_data(event)
            elif isinstance(event, Ping):
                pong = self.ws.send(event.response())
                if self._pongs < _MAX_PENDING_PONGS:
                    self._pong_at = len(self.control)
                    self._pongs += 1
                    self.control.append(pong)
                else:  # RFC 6455 §5.5.3: answering only the latest ping is enough
                    self.control[self._pong_at] = pong
            elif isinstance(event, CloseConnection):
                if self.ws.state is ConnectionState.OPEN:
                    # wsproto reports a frame it refuses (bad framing, invalid UTF-8, a
                    # message over the deflate bound) as a CloseConnection with the code
                    # to answer (RFC 6455 §7.4.1: 1002, 1007, 1009), the connection still
                    # open: we send that close.
                    code = int(event.code)
                    if code == CloseReason.MESSAGE_TOO_BIG:
                        self._queue_close(code, DisconnectReason.MESSAGE_TOO_BIG)
                        raise TransportClosed(DisconnectReason.MESSAGE_TOO_BIG, code=code)
                    self._queue_close(code, "")
                    raise TransportClosed(DisconnectReason.TRANSPORT_ERROR, code=code)
                self.close_code, self.close_reason = event.code, event.reason or ""
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.control.append(self.ws.send(event.response()))
                # Messages that came in the same read as the close frame are delivered
                # first (a client's DISCONNECT is often sent right before its close).
                self._peer_closed = TransportClosed(
                    DisconnectReason.TRANSPORT_CLOSE, code=event.code
                )
                return

    def _take_data(self, event: TextMessage | BytesMessage) -> None:
        data = event.data
        self._size += len(data)
        if self._size > self.max_message_bytes:
            self._queue_close(CloseReason.MESSAGE_TOO_BIG, DisconnectReason.MESSAGE_TOO_BIG)
            raise TransportClosed(
                DisconnectReason.MESSAGE_TOO_BIG, code=CloseReason.MESSAGE_TOO_BIG
            )
        partial = self._partial
        if partial is None:
            if event.message_finished:  # the usual case: one frame, no copy
                self._pending.append(data if isinstance(data, str | bytes) else bytes(data))
                self._size = 0
                return
            partial = self._partial = (
                io.StringIO() if isinstance(event, TextMessage) else bytearray()
            )
        if isinstance(partial, bytearray):
            if not isinstance(data, str):
                partial += data
        elif isinstance(data, str):
            partial.write(data)
        if event.message_finished:
            self._pending.append(
                bytes(partial) if isinstance(partial, bytearray) else partial.getvalue()
            )
            self._partial = None
            self._size = 0

    def close_nowait(self, code: int, reason: str) -> None:
        """End the connection now, without blocking: the close frame goes if the socket
        takes it; if it does not, the socket is shut down both ways, so the peer sees
        the end at once all the same. ``aclose`` still releases the descriptor (a plain
        socket only: see ``nonblocking``).

        For a peer that went silent: Engine.IO drops its transport at the ping timeout,
        while the server's cleanup of the connection, which needs no socket, follows.
        """
        if self._fd < 0:
            return
        self._queue_close(code, reason)
        written = False
        if not self._write_interrupted:
            with contextlib.suppress(TransportClosed):
                written = self.write_nowait([])
        self._write_interrupted = True  # (nothing more may be written)
        if not written:
            stream = self.stream
            assert isinstance(stream, trio.SocketStream)
            with contextlib.suppress(OSError):
                stream.socket.shutdown(socket.SHUT_RDWR)

    def _queue_close(self, code: int, reason: str) -> None:
        if self.ws.state is ConnectionState.OPEN:
            self.control.append(self.ws.send(CloseConnection(code=code, reason=reason)))

    def _take_answer(self) -> bytes:
        """The handshake's answer if it has not gone yet (it goes before anything else)."""
        answer, self._answer = self._answer, b""
        return answer

    def _take_control(self) -> list[bytes]:
        control = self.control
        self.control = []
        self._pongs = 0
        return control

    def _wire(self, frame: OutFrame) -> bytes:
        deflate = self.deflate
        if deflate is None:
            return wire_bytes(frame)
        data = frame.eio if isinstance(frame, SharedFrame) else frame
        if len(data) < DEFLATE_THRESHOLD:
            return wire_bytes(frame)
        payload = data.encode() if isinstance(data, str) else data
        compressed = deflate.compress(payload)
        if isinstance(data, str):
            # A text frame's payload after inflating is the UTF-8 text (RFC 7692 §6.1);
            # encode_frame would re-encode a str, so build the text frame from bytes.
            return _text_frame(compressed)
        return encode_frame(compressed, compressed=True)

    def send_now(self, frames: tuple[OutFrame, ...]) -> bytes | None:
        """Write ``frames`` to the socket now, without blocking, if nothing else is
        waiting to be written; only while the writer is idle (``Outbox.direct``).

        Returns None when it could not try (the caller queues the frames for the
        writer), else the bytes that did not go (empty when all went), which the writer
        must send before anything else.
        """
        fd = self._fd
        if (
            fd < 0
            or self.control
            or self._answer
            or self._write_interrupted
            or self.ws.state is not ConnectionState.OPEN  # closing: the writer orders it
        ):
            return None
        # (Once framed, the bytes must go: with permessage-deflate, framing them again
        # would compress them twice.)
        data = self._wire(frames[0]) if len(frames) == 1 else b"".join(map(self._wire, frames))
        try:
            sent = os.write(fd, data)
        except OSError:  # full (EAGAIN), or broken: the writer sends them, or finds out
            return data
        traffic = self.traffic
        traffic.packets_out += len(frames)
        traffic.bytes_out += sent
        if sent < len(data):
            self._write_interrupted = True  # the writer's next send completes the frame
            return data[sent:]
        return b""

    def _assemble(self, frames: list[OutFrame]) -> bytes:
        """The bytes of queued control frames and ``frames``, in the order they may go:
        pongs first; once a close frame is queued (ours, or the answer to the peer's),
        the data frames before it, and after it is written none at all (RFC 6455 §5.5.1:
        nothing follows a close frame)."""
        wire = [] if self._close_written else list(map(self._wire, frames))
        if self.control:
            if self.ws.state is ConnectionState.OPEN:  # pongs: they may go first
                parts = [*self._take_control(), *wire]
            else:  # the control frames end with a close
                parts = [*wire, *self._take_control()]
                self._close_written = True
        else:
            parts = wire
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def nonblocking(self) -> WebSocketTransport | None:
        """This transport, if the reactor can serve it: a plain TCP socket."""
        return self if self._fd >= 0 else None

    def fileno(self) -> int:
        """The socket's file descriptor (a plain socket only: see ``nonblocking``)."""
        assert self._fd >= 0, "a plain socket, open: see nonblocking"
        return self._fd

    @property
    def peer_closed(self) -> TransportClosed | None:
        """What the next read raises once the peer's close frame arrived, else None."""
        return self._peer_closed

    @property
    def write_blocked(self) -> bool:
        """Whether ``write_nowait`` left bytes unsent (the kernel pushed back)."""
        return bool(self._unsent)

    def write_nowait(self, frames: list[OutFrame]) -> bool:
        """Write without blocking: first what an earlier call left unsent, then queued
        control frames and ``frames`` (ordered as ``send`` orders them).

        Returns True when everything went. Otherwise the rest is kept, and the caller
        waits until the socket is writable and calls again, with no new frames until a
        call returns True.

        Raises:
            TransportClosed: The peer is gone.
        """
        assert self._fd >= 0, "writes without blocking on an open plain socket only"
        data = self._unsent or self._take_answer()
        if frames or self.control:
            data += self._assemble(frames)
        if not data:
            return True
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise TransportClosed(
                DisconnectReason.TRANSPORT_ERROR, code=CloseReason.ABNORMAL_CLOSURE
            ) from exc
        traffic = self.traffic
        traffic.packets_out += len(frames)
        traffic.bytes_out += sent
        # A frame partly written: nothing else may be written before its rest (send_now
        # waits too), and after a close no close frame can follow it.
        self._unsent = data[sent:] if sent < len(data) else b""
        self._write_interrupted = bool(self._unsent)
        return not self._unsent

    async def send(self, frames: list[OutFrame]) -> None:
        """Write queued control frames and then ``frames`` with one ``send_all``.

        Once a close frame is queued (ours, or the answer to the peer's), the data frames
        go before it, and after it is written none goes at all (RFC 6455 §5.5.1: nothing
        follows a close frame).

        Cancellation: part of the data may have been written; the stream must be closed.

        Raises:
            TransportClosed: The peer is gone.
        """
        data = self._take_answer() + self._assemble(frames)
        # Until send_all returns, a cancel leaves a frame half-written: nothing more may
        # be written to this stream after that (not even the close frame).
        self._write_interrupted = True
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed(
                DisconnectReason.TRANSPORT_ERROR, code=CloseReason.ABNORMAL_CLOSURE
            ) from exc
        self._write_interrupted = False
        traffic = self.traffic
        traffic.packets_out += len(frames)
        traffic.bytes_out += len(data)

    async def aclose(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame (if still open) and close the stream.

        Cancellation: the stream is closed forcefully.
        """
        self._fd = -1  # (the non-blocking paths are over; the number may be reused)
        self._queue_close(code, reason)
        try:
            if self.control and not self._write_interrupted:
                data = self._take_answer() + b"".join(self._take_control())
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)


def _text_frame(compressed: bytes) -> bytes:
    frame = bytearray(encode_frame(compressed, compressed=True))
    frame[0] = _FIN | _RSV1 | _OP_TEXT  # encode_frame marked the bytes as binary
    return bytes(frame)
