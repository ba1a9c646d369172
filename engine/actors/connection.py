"""The connection actor: one client's Engine.IO session and the Socket.IO namespaces on it.

The reader side decodes what the client sends and handles the Engine.IO session (pongs,
closes) and Socket.IO acks at once; app work (connects, events, namespace disconnects)
goes in order to the handler runner. Exactly one writer sends: over WebSocket the writer
task, which writes all that is queued with one ``send_all``; over HTTP long-polling the
one GET request allowed at a time. Everything else puts frames in the bounded outbox.
Heartbeat and connect deadlines are kept by the supervisor's scheduler, not by a
sleeping task per connection.

Transports: a session starts on WebSocket or on polling. A polling session can upgrade
(Engine.IO v4 "Upgrade"): a WebSocket with its sid sends ``2probe``, gets ``3probe``,
held GETs are answered with NOOP, and on ``5`` the WebSocket becomes the only transport.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Final, Protocol

import attrs
import trio
from wsproto.frame_protocol import CloseReason

from roomcast.engine.actors.inbox import Inbox
from roomcast.engine.actors.outbox import Offer, Outbox
from roomcast.engine.errors import TransportClosed
from roomcast.engine.stats import UNCOUNTED, Traffic
from roomcast.engine.transport.frames import OutFrame, SharedFrame
from roomcast.protocol import (
    AckReceived,
    Closed,
    ConnectRequested,
    DisconnectReason,
    DisconnectRequested,
    EioPacket,
    EioPacketType,
    EioServerSession,
    EioState,
    EventReceived,
    JsonValue,
    LocalProtocolError,
    MessageReceived,
    RemoteProtocolError,
    SendPacket,
    SioPacket,
    SioServerConnection,
    Upgraded,
    UpgradeStarted,
    check_payload_frame,
    decode_payload,
    decode_ws_frame,
    decode_ws_message,
    encode_frames_payload,
    encode_message,
    encode_payload,
    encode_ws_frame,
)

if TYPE_CHECKING:
    from roomcast.engine.actors.supervisor import DeadlineScheduler
    from roomcast.engine.config import Config
    from roomcast.engine.transport.base import MessageTransport, NonBlockingTransport
    from roomcast.engine.transport.http import HttpRequest
    from roomcast.engine.transport.reactor import Reactor
    from roomcast.protocol import Decoder, Parser

__all__ = ["Connection", "ConnectionLayer", "EngineLayer", "RawMessage", "SocketLayer"]

logger = logging.getLogger(__name__)


@attrs.frozen
class RawMessage:
    """An Engine.IO message for an endpoint without the Socket.IO layer."""

    data: str | bytes


_WORK: Final = (ConnectRequested, EventReceived, DisconnectRequested)
Work = ConnectRequested | EventReceived | DisconnectRequested | RawMessage

# WebSocket close codes (RFC 6455 §7.4.1) by disconnect reason.
_CLOSE_CODES: Final[dict[str, CloseReason]] = {
    DisconnectReason.SLOW_CONSUMER: CloseReason.POLICY_VIOLATION,
    DisconnectReason.PARSE_ERROR: CloseReason.PROTOCOL_ERROR,
    DisconnectReason.SERVER_SHUTTING_DOWN: CloseReason.GOING_AWAY,
}


def _close_code(reason: str) -> int:
    """The WebSocket close code for a disconnect reason (1000 unless it names one)."""
    return _CLOSE_CODES.get(reason, CloseReason.NORMAL_CLOSURE)


# A held GET's answers: one NOOP or one CLOSE, as a polling body.
NOOP: Final = encode_payload([EioPacket(type=EioPacketType.NOOP)])
CLOSE: Final = encode_payload([EioPacket(type=EioPacketType.CLOSE)])


class NamespaceMember(Protocol):
    """What a connection knows of a socket it carries (for its log lines)."""

    @property
    def sid(self) -> str:
        """The socket's Socket.IO id (not the connection's Engine.IO id)."""


class ConnectionLayer(Protocol):
    """What every connection reports to: an ``EngineLayer`` or a ``SocketLayer``."""

    async def on_close(self, conn: Connection, reason: str) -> None:
        """The connection is over: clean up everything that refers to it."""


class EngineLayer(ConnectionLayer, Protocol):
    """The app of a bare Engine.IO endpoint (no Socket.IO layer): it gets the messages."""

    async def on_message(self, conn: Connection, data: str | bytes) -> None:
        """An Engine.IO message arrived."""


class SocketLayer(ConnectionLayer, Protocol):
    """The Socket.IO application layer (the server implements it)."""

    async def on_connect(self, conn: Connection, namespace: str, auth: JsonValue) -> None:
        """A namespace CONNECT arrived: run middleware and accept or refuse it."""

    async def on_event(
        self,
        conn: Connection,
        namespace: str,
        name: str,
        args: tuple[JsonValue, ...],
        ack_id: int | None,
    ) -> None:
        """An event arrived on a connected namespace: run its handler."""

    def on_ack(
        self, conn: Connection, namespace: str, ack_id: int, args: tuple[JsonValue, ...]
    ) -> None:
        """The client answered an ack (called by the reader, at once; must not block)."""

    async def on_namespace_disconnect(self, conn: Connection, namespace: str, reason: str) -> None:
        """The client left one namespace."""

    def on_closing(self, conn: Connection, reason: str) -> None:
        """The connection started closing: fail whatever waits on the client (at once)."""


@attrs.define(eq=False)
class Connection:
    """One Engine.IO connection and the Socket.IO namespaces on it.

    Only the actor's own tasks touch its protocol state. ``send_packet`` and
    ``send_frames`` may be called from any task: they only queue into the outbox.
    A Socket.IO connection has a ``parser`` and reports to ``sio_layer``; a bare
    Engine.IO one (``mount_engine``) has neither and reports to ``engine_layer``.
    """

    config: Config
    session: EioServerSession
    scheduler: DeadlineScheduler
    sio_layer: SocketLayer | None = None
    engine_layer: EngineLayer | None = None
    parser: Parser | None = None
    transport: MessageTransport | None = None
    request: HttpRequest | None = None
    endpoint: str = "/socket.io/"
    traffic: Traffic = UNCOUNTED
    reactor: Reactor | None = None
    outbox: Outbox = attrs.field(init=False)
    sio: SioServerConnection = attrs.field(init=False)
    close_reason: str | None = attrs.field(default=None, init=False)
    timer_token: int = attrs.field(default=0, init=False)
    connect_deadline: float = attrs.field(default=math.inf, init=False)
    namespaces: dict[str, NamespaceMember] = attrs.field(factory=dict, init=False)
    finished: trio.Event = attrs.field(factory=trio.Event, init=False)
    _decoder: Decoder | None = attrs.field(default=None, init=False)
    _scheduled: float = attrs.field(default=math.inf, init=False)
    _closed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _writer_done: trio.Event = attrs.field(factory=trio.Event, init=False)
    _handlers_done: trio.Event = attrs.field(factory=trio.Event, init=False)
    _read_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _handler_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _inbox: Inbox[Work] = attrs.field(init=False)
    _poll_active: bool = attrs.field(default=False, init=False)
    _post_active: bool = attrs.field(default=False, init=False)
    _upgrading: bool = attrs.field(default=False, init=False)
    _poll_close_body: str = attrs.field(default=CLOSE, init=False)
    _work_room: trio.Event | None = attrs.field(default=None, init=False)
    # Set while the reactor serves the connection (see _serve_by_reactor).
    _nonblocking: NonBlockingTransport | None = attrs.field(default=None, init=False)
    _reading: bool = attrs.field(default=True, init=False)
    _flush_asked: bool = attrs.field(default=False, init=False)
    _write_failed: bool = attrs.field(default=False, init=False)
    _tokens: float = attrs.field(default=0.0, init=False)
    _tokens_at: float = attrs.field(default=0.0, init=False)
    attachments_deadline: float = attrs.field(default=math.inf, init=False)

    def __attrs_post_init__(self) -> None:
        self.outbox = Outbox(
            max_frames=self.config.outbox_size, volatile_backlog=self.config.volatile_backlog
        )
        self.sio = SioServerConnection(self.config.limits)
        if self.parser is not None:
            self._decoder = self.parser.decoder(self.config.limits)
        self._inbox = Inbox(max_items=self.config.handler_queue_size, on_room=self._on_work_room)
        self._tokens = float(self.config.max_events_burst)

    @property
    def layer(self) -> ConnectionLayer:
        """Who the connection reports its end to (its Socket.IO or Engine.IO layer)."""
        layer = self.sio_layer or self.engine_layer
        assert layer is not None, "a connection has a layer"
        return layer

    @property
    def eio_sid(self) -> str:
        """The Engine.IO session id (not a Socket.IO socket id)."""
        return self.session.sid

    @property
    def closed(self) -> bool:
        """Whether the connection is closing or closed."""
        return self.close_reason is not None

    @property
    def transport_name(self) -> str:
        """``"polling"`` or ``"websocket"`` (after an upgrade, ``"websocket"``)."""
        return self.session.transport

    # -- sending (any task) -------------------------------------------------------------

    def send_packet(self, packet: SioPacket) -> bool:
        """Encode and queue one Socket.IO packet; False if it could not be queued.

        Raises:
            LocalProtocolError: The session is on long-polling and the encoded packet is
                text containing ``"\\x1e"``, which no polling payload can carry
                (``check_payload_frame``; the JSON parser escapes it in arguments, so
                only a namespace name could); nothing is queued.
        """
        assert self.parser is not None, "not a Socket.IO endpoint"
        frames = tuple(map(encode_message, self.parser.encode(packet)))
        if self.session.transport == "polling":
            for frame in frames:
                check_payload_frame(frame)
        return self.send_frames(frames)

    def send_message(self, data: str | bytes) -> bool:
        """Queue one Engine.IO message (endpoints without the Socket.IO layer); False if
        it could not be queued.

        Raises:
            LocalProtocolError: The session is on long-polling (not upgraded) and
                ``data`` is text containing ``"\\x1e"``, which no polling payload can
                carry (``check_payload_frame``); nothing is queued. Over WebSocket it goes
                as it is.
        """
        frame = encode_message(data)
        if self.session.transport == "polling":
            check_payload_frame(frame)
        return self.send_frames((frame,))

    def send_frames(self, frames: tuple[OutFrame, ...], *, volatile: bool = False) -> bool:
        """Queue already-encoded Engine.IO frames; False if dropped.

        A full outbox drops a volatile send and closes the connection otherwise (the
        slow-consumer policy); a closing connection takes nothing.
        """
        offered = self.outbox.offer(frames, volatile=volatile)
        if offered is Offer.FULL:
            self.evict(DisconnectReason.SLOW_CONSUMER)
        return offered is Offer.QUEUED

    def close(self, reason: str) -> None:
        """Start closing the connection with a Socket.IO disconnect reason (first one wins)."""
        if self.close_reason is None:
            self.close_reason = reason
            self._closed.set()
            if self._nonblocking is not None:
                self._begin_close()
            self.outbox.kick()  # a held polling GET answers now

    def evict(self, reason: str) -> None:
        """Close a connection that cannot keep up (never blocks the caller)."""
        if self.close_reason is None:
            logger.warning("closing connection %s: %s", self.eio_sid, reason)
        self.close(reason)

    # -- deadlines (called by the supervisor's scheduler) --------------------------------

    def _reschedule(self) -> None:
        deadline = min(self.session.next_deadline(), self.attachments_deadline)
        if not self.namespaces and self.parser is not None:
            deadline = min(deadline, self.connect_deadline)
        if deadline != self._scheduled or self.timer_token == 0:
            self._scheduled = deadline
            self.scheduler.schedule(self, deadline)

    def on_deadline(self, now: float) -> None:
        """A heartbeat or connect deadline passed."""
        self._scheduled = math.inf
        if self.close_reason is not None:
            return
        for event in self.session.tick(now):
            if isinstance(event, SendPacket):
                self.outbox.send_control(encode_ws_frame(event.packet))
            elif isinstance(event, Closed):
                if event.reason == DisconnectReason.PING_TIMEOUT and self._nonblocking is not None:
                    # The peer sees the end now; the close itself (the bookkeeping) once
                    # every peer due now has seen it (they come in bursts).
                    self.scheduler.call_after_pass(self._close_dropped)
                    self._drop_silent_peer()
                    return
                self.close(event.reason)
        if self.parser is not None and not self.namespaces and now >= self.connect_deadline:
            self.close(DisconnectReason.CONNECT_TIMEOUT)
        if now >= self.attachments_deadline:
            self.close(DisconnectReason.ATTACHMENT_TIMEOUT)
        if self.close_reason is None:
            self._reschedule()

    def _close_dropped(self) -> None:
        self.close(DisconnectReason.PING_TIMEOUT)

    # -- the actor ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the connection until it closes; then clean up and close the transport.

        Over WebSocket the reader and writer run inside; over polling, requests call
        ``poll`` and ``receive_payload`` from their own tasks.

        Cancellation: treated as a server shutdown; the cleanup (disconnect handlers, room
        leaves, the close frame) still runs, within ``close_grace``.
        """
        config = self.config
        transport = self.transport
        nonblocking = None
        if transport is not None:
            transport.on_control = self.outbox.kick  # pongs go out at once
            transport.traffic = self.traffic
            if self.reactor is not None and self.reactor.running:
                nonblocking = transport.nonblocking()
            self.outbox.send_control(encode_ws_frame(self.session.handshake()))
        self.connect_deadline = trio.current_time() + config.connect_timeout
        self._reschedule()
        try:
            if nonblocking is not None:
                task_status.started()
                await self._serve_by_reactor(nonblocking)
                return
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._handler_loop)
                if self.transport is not None:
                    nursery.start_soon(self._write_loop, self.transport)
                    nursery.start_soon(self._read_loop, self.transport)
                else:
                    self._writer_done.set()
                task_status.started()
                await self._closed.wait()
                # Stop reading; let the handler runner finish what was already received
                # (a DISCONNECT right before the close must still run its cleanup and
                # the app's disconnect handlers), within close_grace. Pending acks fail
                # first, so a handler waiting on this client cannot stall the close.
                self._read_scope.cancel()
                self._inbox.close()
                if self.sio_layer is not None:
                    self.sio_layer.on_closing(self, self.close_reason or "")
                with trio.move_on_after(config.close_grace):
                    await self._handlers_done.wait()
                self._handler_scope.cancel()
                self.outbox.close()
                with trio.move_on_after(config.close_grace):
                    await self._writer_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.close(DisconnectReason.SERVER_SHUTTING_DOWN)
            if self._nonblocking is not None:
                self._leave_reactor(self._nonblocking)
            self.scheduler.cancel(self)
            self.outbox.close()
            self._inbox.close()
            reason = self.close_reason or DisconnectReason.SERVER_SHUTTING_DOWN
            with trio.move_on_after(config.cleanup_timeout, shield=True) as cleanup:
                try:
                    await self.layer.on_close(self, reason)
                except Exception:
                    logger.exception("cleanup of connection %s failed", self.eio_sid)
            if cleanup.cancelled_caught:
                logger.warning(
                    "cleanup of connection %s cut off after %s s (disconnect handlers or "
                    "room leaves did not finish)",
                    self.eio_sid,
                    config.cleanup_timeout,
                )
            with trio.move_on_after(config.close_grace, shield=True):
                if self.transport is not None:
                    await self.transport.aclose(_close_code(reason), reason)
            # (Past close_grace the stream is closed by whoever owns it.)
            self.finished.set()

    async def _write_loop(self, transport: MessageTransport) -> None:
        outbox, limit = self.outbox, self.config.max_write_batch
        outbox.direct = transport.send_now
        try:
            while True:
                batch = await outbox.receive_batch(limit)
                await transport.send(batch)
        except trio.EndOfChannel:
            pass
        except TransportClosed as exc:
            self.close(exc.reason)
        finally:
            outbox.direct = None
            self._writer_done.set()

    async def _read_loop(self, transport: MessageTransport) -> None:
        with self._read_scope:
            try:
                while True:
                    # Every message of one read in one pass: the handler runner is woken
                    # once for all of them, and what they produce can go in one write.
                    messages = await transport.receive_messages()
                    if transport.control:
                        self.outbox.kick()
                    if not self._take_messages(messages, trio.current_time()):
                        return
                    await self._wait_for_work_room()
            except TransportClosed as exc:
                if transport.control:
                    self.outbox.kick()
                self.close(exc.reason)

    def _take_messages(self, messages: list[str | bytes], now: float) -> bool:
        """Handle the messages of one read, in order, received at ``now`` (Trio's clock:
        they arrived together); False once closing."""
        limits = self.config.limits
        for data in messages:
            try:
                message = decode_ws_message(data, limits)
                packet = decode_ws_frame(data, limits) if message is None else None
            except RemoteProtocolError as exc:
                logger.debug("connection %s: %s", self.eio_sid, exc)
                self.close(DisconnectReason.PARSE_ERROR)
                return False
            if message is None:
                assert packet is not None
                if not self._receive_packet(packet, now):
                    return False
                continue
            # A MESSAGE, most of what a client sends: the session only hands its data on
            # (it is open: the connection reads only until it closes).
            self.traffic.packets_in += 1
            if not self._on_message(message, now) or self.close_reason is not None:
                return False
        return True

    def _receive_packet(self, packet: EioPacket, now: float) -> bool:
        """Handle one Engine.IO packet from the active transport, received at ``now``
        (Trio's clock); False once closing."""
        self.traffic.packets_in += 1
        session = self.session
        for event in session.receive(packet, now):
            if isinstance(event, MessageReceived):
                if not self._on_message(event.data, now):
                    return False
            elif isinstance(event, SendPacket):
                self.outbox.send_control(encode_ws_frame(event.packet))
            elif isinstance(event, Closed):
                if event.reason == DisconnectReason.TRANSPORT_CLOSE:
                    self._poll_close_body = NOOP  # Engine.IO: a held GET ends with NOOP
                self.close(event.reason)
                return False
        if session.next_deadline() != self._scheduled:
            self._reschedule()
        return self.close_reason is None

    def _over_rate(self, now: float) -> bool:
        """Take one token from the connection's bucket at ``now``; True when it is empty."""
        rate = self.config.max_events_per_second
        if rate <= 0:
            return False
        tokens = min(
            float(self.config.max_events_burst), self._tokens + (now - self._tokens_at) * rate
        )
        self._tokens_at = now
        if tokens < 1.0:
            self._tokens = tokens
            return True
        self._tokens = tokens - 1.0
        return False

    def _on_message(self, data: str | bytes, now: float) -> bool:
        if self._over_rate(now):
            logger.warning(
                "connection %s: over %s messages/s", self.eio_sid, self.config.max_events_per_second
            )
            self.close(DisconnectReason.RATE_LIMIT_EXCEEDED)
            return False
        decoder, layer = self._decoder, self.sio_layer
        if decoder is None or layer is None:
            return self._hand_over(RawMessage(data))
        try:
            packet = decoder.receive(data)
            if packet is None:
                if self.attachments_deadline == math.inf:
                    self.attachments_deadline = now + self.config.attachment_timeout
                    self._reschedule()
                return True
            if self.attachments_deadline != math.inf:
                self.attachments_deadline = math.inf
                self._reschedule()
            events = self.sio.receive(packet)
        except RemoteProtocolError as exc:
            logger.debug("connection %s: %s", self.eio_sid, exc)
            self.close(DisconnectReason.PARSE_ERROR)
            return False
        for event in events:
            if isinstance(event, AckReceived):
                layer.on_ack(self, event.namespace, event.ack_id, event.args)
            elif isinstance(event, _WORK) and not self._hand_over(event):
                return False  # the connection is closing
        return True

    def _hand_over(self, work: Work) -> bool:
        """Queue app work for the handler runner; False once the connection is closing.

        The inbox takes all the work of one read, in order; once it is full the
        connection reads no more until the runner has taken it back under its bound
        (``_on_work_room``): the backpressure on a client that sends faster than its
        handlers run.
        """
        try:
            if not self._inbox.put(work):
                self._stop_reading()
        except trio.ClosedResourceError:
            return False
        return True

    async def _wait_for_work_room(self) -> None:
        """Wait until the handler runner took the inbox back under its bound (a reader
        task's backpressure); at once when it is not full.

        Cancellation: nothing is lost.
        """
        if len(self._inbox) >= self.config.handler_queue_size:
            room = self._work_room = trio.Event()
            await room.wait()

    def _on_work_room(self) -> None:
        room = self._work_room
        if room is not None:
            self._work_room = None
            room.set()
        if self._nonblocking is not None and self.close_reason is None:
            self._reading = True
            self._want(self._nonblocking)

    # -- served by the reactor ------------------------------------------------------------

    async def _serve_by_reactor(self, transport: NonBlockingTransport) -> None:
        """Serve a WebSocket the reactor reads and writes for: this task only runs the
        handlers, in order; then, at the close, it lets the last frames go out.

        The reactor calls ``on_readable`` (a read, decoded and handled as the reader
        task would) and ``on_writable``; frames are written without blocking as they
        are queued (``Outbox.flush``), and what the kernel does not take waits for the
        socket to be writable.
        """
        reactor = self.reactor
        assert reactor is not None
        outbox = self.outbox
        self._nonblocking = transport
        outbox.direct = transport.send_now
        outbox.flush = self._flush
        reactor.register(transport.fileno(), self)
        if self.close_reason is not None:
            self._begin_close()
        self._flush()  # the handshake
        await self._handler_loop()
        outbox.close()  # (writes what is left)
        with trio.move_on_after(self.config.close_grace):
            await self._writer_done.wait()

    def _leave_reactor(self, transport: NonBlockingTransport) -> None:
        assert self.reactor is not None
        self.reactor.unregister(transport.fileno())
        self._nonblocking = None
        self.outbox.direct = None
        self.outbox.flush = None

    def _begin_close(self) -> None:
        """Closing starts (a connection the reactor serves): stop reading, fail what
        waits on the client at once, and let the handler runner finish the work already
        received within ``close_grace`` (as ``run`` does for the reader and writer
        tasks)."""
        self._stop_reading()
        self._inbox.close()
        if self.sio_layer is not None:
            self.sio_layer.on_closing(self, self.close_reason or "")
        self._handler_scope.deadline = trio.current_time() + self.config.close_grace

    def _drop_silent_peer(self) -> None:
        """At the ping timeout the transport is closed at once (as Engine.IO does), not
        after the cleanup: the peer has been silent for ``ping_interval + ping_timeout``,
        so nothing more is read from it or written to it, and the cleanup that follows
        (disconnect records and handlers, room leaves) needs no socket."""
        transport = self._nonblocking
        assert transport is not None
        assert self.reactor is not None
        reason = DisconnectReason.PING_TIMEOUT
        transport.close_nowait(_close_code(reason), reason)
        self._reading = False
        self.reactor.unregister(transport.fileno())
        self._write_failed = True
        self._writer_done.set()

    def _stop_reading(self) -> None:
        transport = self._nonblocking
        if transport is not None and self._reading:
            self._reading = False
            self._want(transport)

    def _want(self, transport: NonBlockingTransport) -> None:
        assert self.reactor is not None
        self.reactor.want(transport.fileno(), read=self._reading, write=transport.write_blocked)

    def on_readable(self, now: float) -> None:
        """The reactor saw the socket ready at ``now``: read once and handle what came."""
        transport = self._nonblocking
        if transport is None or not self._reading:
            return
        try:
            messages = transport.receive_nowait()
        except TransportClosed as exc:
            self.close(exc.reason)
            return
        if messages and not self._take_messages(messages, now):
            return
        closed = transport.peer_closed
        if closed is not None:
            self.close(closed.reason)

    def on_writable(self) -> None:
        """The socket takes bytes again: write what waits."""
        transport = self._nonblocking
        if transport is not None:
            self._write(transport)

    def flush_held(self) -> None:
        """Write what the outbox held while the handler runner worked (the reactor's
        flusher calls it once the runner yielded)."""
        self._flush_asked = False
        transport = self._nonblocking
        if transport is not None and not transport.write_blocked:
            self._write(transport)

    def on_reactor_error(self) -> None:
        """Serving this connection raised (logged by the reactor): close it."""
        self.close(DisconnectReason.TRANSPORT_ERROR)

    def _flush(self) -> None:
        """The outbox's writer: write at once, unless held or the flusher is to write
        this connection already (then soon, by the flusher) or the kernel pushed back
        (then when the socket is writable)."""
        transport = self._nonblocking
        if transport is None:
            return
        if self.outbox.held or self._flush_asked:
            if not self._flush_asked:
                self._flush_asked = True
                assert self.reactor is not None
                self.reactor.flush_soon(self)
            return
        if not transport.write_blocked:
            self._write(transport)

    def _write(self, transport: NonBlockingTransport) -> None:
        if self._write_failed:
            return
        outbox, limit = self.outbox, self.config.max_write_batch
        try:
            while True:
                frames = [] if transport.write_blocked else outbox.take(limit)
                if not transport.write_nowait(frames):
                    self._want(transport)  # wait until writable
                    return
                if not len(outbox):
                    break
        except TransportClosed as exc:
            self._write_failed = True
            self.close(exc.reason)
            self._writer_done.set()
            return
        self._want(transport)
        if outbox.closed:
            self._writer_done.set()

    async def _handler_loop(self) -> None:
        inbox, outbox = self._inbox, self.outbox
        with self._handler_scope:
            while True:
                try:
                    event = await inbox.get()
                except trio.EndOfChannel:
                    break
                # The work of one read arrives together. What the handlers send this
                # client meanwhile (acks above all) is queued rather than written one
                # frame at a time, and written all at once when this task lets the writer
                # run (at the end of the batch, or when a handler waits). The writer task
                # of a connection that has one runs then. For a connection the reactor
                # serves, the outbox is held however little work waits, and its frames
                # are written by the reactor's flusher after this pass of the scheduler,
                # back to back with every other connection's. Made in one run, the same
                # writes took a fifth of the time they took spread over the pass (most
                # likely as the peer, woken by the first, is still awake for the rest):
                # echo went from 31,500 to 39,800 round trips/s (docs/benchmarks.md,
                # "What limits roomcast").
                outbox.hold(len(inbox) > 0 or self._nonblocking is not None)
                await self._handle(event)
                while True:
                    try:
                        event = inbox.get_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    await self._handle(event)
                outbox.hold(False)
        self._handlers_done.set()

    async def _handle(self, event: Work) -> None:
        if isinstance(event, ConnectRequested) and self.close_reason is not None:
            return  # too late to join a namespace
        # The per-connection boundary: an app handler's bug is logged and confined to this
        # connection; the connection keeps serving.
        try:
            if isinstance(event, RawMessage):
                assert self.engine_layer is not None, "raw messages come on bare endpoints"
                await self.engine_layer.on_message(self, event.data)
                return
            layer = self.sio_layer
            assert layer is not None, "Socket.IO work comes on Socket.IO endpoints"
            if isinstance(event, EventReceived):
                await layer.on_event(self, event.namespace, event.name, event.args, event.ack_id)
            elif isinstance(event, ConnectRequested):
                await layer.on_connect(self, event.namespace, event.auth)
                self._reschedule()
            else:
                await layer.on_namespace_disconnect(
                    self, event.namespace, DisconnectReason.CLIENT_NAMESPACE_DISCONNECT
                )
        except Exception:
            if isinstance(event, EventReceived):
                member = self.namespaces.get(event.namespace)
                logger.exception(
                    "handler of event %r failed (namespace %s, socket %s, connection %s)",
                    event.name,
                    event.namespace,
                    None if member is None else member.sid,
                    self.eio_sid,
                )
            else:
                logger.exception("handler failed on connection %s", self.eio_sid)

    # -- HTTP long-polling (called from request tasks) ------------------------------------

    async def poll(self) -> tuple[int, str]:
        """Answer a polling GET: wait until something is queued, then take it all.

        Returns the HTTP status and body. While an upgrade is under way the answer is
        NOOP; once the connection closes, whatever was queued and then CLOSE (or NOOP
        when the client itself closed). A second GET while one is held closes the
        session (docs/conformance.md §2.2): the held one answers CLOSE, the new one 400.

        Cancellation: nothing is taken from the outbox.
        """
        if self._poll_active:
            self._poll_close_body = CLOSE
            self.close(DisconnectReason.TRANSPORT_ERROR)
            await trio.lowlevel.checkpoint()
            return 400, '{"code":3,"message":"Bad request"}'
        self._poll_active = True
        try:
            outbox, limit = self.outbox, self.config.max_write_batch
            while True:
                if self.session.state is EioState.UPGRADING or self._upgrading_done():
                    await trio.lowlevel.checkpoint()
                    return 200, NOOP
                frames = outbox.take(limit)
                if frames or self.close_reason is not None:
                    return 200, self._payload(frames)
                await outbox.wait()
        finally:
            self._poll_active = False

    def _payload(self, frames: list[OutFrame]) -> str:
        """The polling body for ``frames``, with CLOSE (or NOOP) once closing.

        A frame no payload can carry (text with ``"\\x1e"`` that no send refused: a
        broadcast from a parser that writes it raw) closes the connection, and the body
        is then only CLOSE.
        """
        parts = [frame.eio if isinstance(frame, SharedFrame) else frame for frame in frames]
        if self.close_reason is not None:
            parts.append(self._poll_close_body)
        try:
            body = encode_frames_payload(parts)
        except LocalProtocolError as exc:
            logger.error("connection %s: %s; closing it", self.eio_sid, exc)
            self._poll_close_body = CLOSE
            self.close(DisconnectReason.TRANSPORT_ERROR)
            parts, body = [CLOSE], CLOSE
        self.traffic.packets_out += len(parts)
        return body

    def _upgrading_done(self) -> bool:
        return self.session.transport == "websocket"

    async def receive_payload(self, body: bytes) -> bool:
        """Handle a polling POST body; False means answer 400 (the session is closed).

        Cancellation: part of the payload may have been handled.
        """
        if self._post_active:
            self.close(DisconnectReason.TRANSPORT_ERROR)
            await trio.lowlevel.checkpoint()
            return False
        self._post_active = True
        try:
            try:
                packets = decode_payload(body, self.config.limits)
            except RemoteProtocolError as exc:
                logger.debug("connection %s: %s", self.eio_sid, exc)
                self.close(DisconnectReason.PARSE_ERROR)
                await trio.lowlevel.checkpoint()
                return False
            now = trio.current_time()  # (the packets of one POST arrived together)
            for packet in packets:
                if not self._receive_packet(packet, now):
                    await trio.lowlevel.checkpoint()
                    return self.close_reason in (DisconnectReason.TRANSPORT_CLOSE, None)
            await self._wait_for_work_room()
            await trio.lowlevel.checkpoint()
            return True
        finally:
            self._post_active = False

    def client_gone(self) -> None:
        """The client went away while a GET was held (polling's "transport close")."""
        self.close(DisconnectReason.TRANSPORT_CLOSE)

    # -- upgrade to WebSocket (called from the WebSocket request task) --------------------

    async def upgrade(self, transport: MessageTransport) -> None:
        """Run the probe on ``transport`` and make it the session's only transport; then
        wait until the connection is finished (the caller then closes the stream).

        A WebSocket that cannot upgrade this session (already upgraded, closing, or an
        upgrade under way) is closed at once: the session keeps working.

        Cancellation: the connection closes as in a server shutdown.
        """
        if (
            self.closed
            or self._upgrading
            or self.transport is not None
            or self.session.transport != "polling"
            or self._nursery is None
        ):
            await transport.aclose(CloseReason.NORMAL_CLOSURE, "")
            return
        self._upgrading = True
        limits = self.config.limits
        upgraded = False
        try:
            with trio.move_on_after(self.config.upgrade_timeout):
                while not upgraded:
                    packet = decode_ws_frame(await transport.receive_message(), limits)
                    for event in self.session.receive_probe(packet, trio.current_time()):
                        if isinstance(event, SendPacket):
                            await transport.send([encode_ws_frame(event.packet)])
                        elif isinstance(event, UpgradeStarted):
                            self.outbox.kick()  # the held GET answers NOOP
                        elif isinstance(event, Upgraded):
                            upgraded = True
                        elif isinstance(event, Closed):
                            self.close(event.reason)
                            break
                    if self.close_reason is not None:
                        break
        except (TransportClosed, RemoteProtocolError) as exc:
            logger.debug("upgrade of %s failed: %s", self.eio_sid, exc)
        if not upgraded or self.close_reason is not None:
            self._upgrading = False
            if self.session.state is EioState.UPGRADING and self.close_reason is None:
                self.close(DisconnectReason.TRANSPORT_ERROR)  # the probe began but never finished
            await transport.aclose(CloseReason.NORMAL_CLOSURE, "")
            return
        self.transport = transport
        transport.on_control = self.outbox.kick
        transport.traffic = self.traffic
        self._writer_done = trio.Event()
        nursery = self._nursery
        nursery.start_soon(self._write_loop, transport)
        nursery.start_soon(self._read_loop, transport)
        self.outbox.kick()  # write what queued up during the upgrade
        self._reschedule()
        await self.finished.wait()
