"""The connection actor: one client, its reader, its writer and its handler runner.

The reader decodes frames and handles the Engine.IO session (pongs, closes) and Socket.IO
acks at once; app work (connects, events, namespace disconnects) goes in order to the
handler runner. The writer is the only code that writes to the transport: everything
else puts frames in the bounded outbox, and the writer writes all that is queued with
one ``send_all``. Heartbeat and connect deadlines are kept by the supervisor's
scheduler, not by a sleeping task per connection.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Final, Protocol

import attrs
import trio

from roomcast.engine.actors.outbox import Outbox, OutFrame
from roomcast.engine.errors import TransportClosed
from roomcast.protocol import RemoteProtocolError
from roomcast.protocol._eio import (
    Closed,
    EioEvent,
    EioServerSession,
    MessageReceived,
    SendPacket,
    decode_ws_frame,
    encode_ws_frame,
)
from roomcast.protocol._sio import JsonValue, SioPacket
from roomcast.protocol._sio_state import (
    AckReceived,
    ConnectRequested,
    DisconnectRequested,
    EventReceived,
    SioServerConnection,
)

if TYPE_CHECKING:
    from roomcast.engine.actors.supervisor import DeadlineScheduler
    from roomcast.engine.config import Config
    from roomcast.engine.transport.http import HttpRequest
    from roomcast.engine.transport.websocket import WebSocketTransport
    from roomcast.protocol._sio import Parser

__all__ = ["Connection", "SocketLayer"]

logger = logging.getLogger(__name__)

_WORK: Final = (ConnectRequested, EventReceived, DisconnectRequested)
Work = ConnectRequested | EventReceived | DisconnectRequested

# WebSocket close codes (RFC 6455 §7.4.1) by disconnect reason.
_CLOSE_CODES: Final = {"slow consumer": 1008, "parse error": 1002, "server shutting down": 1001}


class SocketLayer(Protocol):
    """The Socket.IO application layer a connection reports to (the server implements it)."""

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

    async def on_close(self, conn: Connection, reason: str) -> None:
        """The connection is over: every namespace socket must be cleaned up."""


@attrs.define(eq=False)
class Connection:
    """One Engine.IO connection and the Socket.IO namespaces on it.

    Only the actor's own tasks touch its protocol state. ``send_packet`` and
    ``send_frames`` may be called from any task: they only queue into the outbox.
    """

    config: Config
    session: EioServerSession
    transport: WebSocketTransport
    parser: Parser
    layer: SocketLayer
    scheduler: DeadlineScheduler
    request: HttpRequest | None = None
    outbox: Outbox = attrs.field(init=False)
    sio: SioServerConnection = attrs.field(factory=SioServerConnection, init=False)
    close_reason: str | None = attrs.field(default=None, init=False)
    timer_token: int = attrs.field(default=0, init=False)
    connect_deadline: float = attrs.field(default=math.inf, init=False)
    namespaces: dict[str, object] = attrs.field(factory=dict, init=False)
    _decoder: object = attrs.field(init=False)
    _scheduled: float = attrs.field(default=math.inf, init=False)
    _closed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _writer_done: trio.Event = attrs.field(factory=trio.Event, init=False)
    _read_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _handler_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)

    def __attrs_post_init__(self) -> None:
        self.outbox = Outbox(
            max_frames=self.config.outbox_size, volatile_backlog=self.config.volatile_backlog
        )
        self._decoder = self.parser.decoder(self.config.limits)

    @property
    def eio_sid(self) -> str:
        """The Engine.IO session id (not a Socket.IO socket id)."""
        return self.session.sid

    @property
    def closed(self) -> bool:
        """Whether the connection is closing or closed."""
        return self.close_reason is not None

    # -- sending (any task) -------------------------------------------------------------

    def send_packet(self, packet: SioPacket) -> bool:
        """Encode and queue one Socket.IO packet; False if it could not be queued."""
        return self.send_frames(
            tuple(
                "4" + payload if isinstance(payload, str) else payload
                for payload in self.parser.encode(packet)
            )
        )

    def send_frames(self, frames: tuple[OutFrame, ...], *, volatile: bool = False) -> bool:
        """Queue already-encoded Engine.IO frames; False if dropped.

        A full outbox drops a volatile send and closes the connection otherwise (the
        slow-consumer policy); a closing connection takes nothing.
        """
        outbox = self.outbox
        if volatile and not outbox.takes_volatile():
            return False
        try:
            for frame in frames:
                outbox.send_nowait(frame)
        except trio.WouldBlock:
            self.evict("slow consumer")
            return False
        except trio.ClosedResourceError:
            return False
        return True

    def close(self, reason: str) -> None:
        """Start closing the connection with a Socket.IO disconnect reason (first one wins)."""
        if self.close_reason is None:
            self.close_reason = reason
            self._closed.set()

    def evict(self, reason: str) -> None:
        """Close a connection that cannot keep up (never blocks the caller)."""
        if self.close_reason is None:
            logger.warning("closing connection %s: %s", self.eio_sid, reason)
        self.close(reason)

    # -- deadlines (called by the supervisor's scheduler) --------------------------------

    def _reschedule(self) -> None:
        deadline = self.session.next_deadline()
        if not self.namespaces:
            deadline = min(deadline, self.connect_deadline)
        if deadline != self._scheduled or self.timer_token == 0:
            self._scheduled = deadline
            self.scheduler.schedule(self, deadline)

    def on_deadline(self, now: float) -> None:
        """A heartbeat or connect deadline passed."""
        self._scheduled = math.inf
        if self.close_reason is not None:
            return
        self._apply(self.session.tick(now))
        if not self.namespaces and now >= self.connect_deadline:
            self.close("connect timeout")
        if self.close_reason is None:
            self._reschedule()

    def _apply(self, events: list[EioEvent]) -> None:
        for event in events:
            if isinstance(event, SendPacket):
                self.outbox.send_control(encode_ws_frame(event.packet))
            elif isinstance(event, Closed):
                self.close(event.reason)

    # -- the actor ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes; then clean up and close the transport.

        Cancellation: treated as a server shutdown; the cleanup (disconnect handlers, room
        leaves, the close frame) still runs, within ``close_grace``.
        """
        config = self.config
        self.outbox.send_control(encode_ws_frame(self.session.handshake()))
        self.connect_deadline = trio.current_time() + config.connect_timeout
        self._reschedule()
        work_send, work_receive = trio.open_memory_channel[Work](config.handler_queue_size)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._handler_loop, work_receive)
                nursery.start_soon(self._read_loop, work_send)
                await self._closed.wait()
                self._read_scope.cancel()
                self._handler_scope.cancel()
                self.outbox.close()
                with trio.move_on_after(config.close_grace):
                    await self._writer_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.close("server shutting down")
            self.scheduler.cancel(self)
            self.outbox.close()
            work_send.close()
            work_receive.close()
            reason = self.close_reason or "server shutting down"
            with trio.move_on_after(config.close_grace, shield=True):
                try:
                    await self.layer.on_close(self, reason)
                finally:
                    await self.transport.aclose(_CLOSE_CODES.get(reason, 1000), reason)

    async def _write_loop(self) -> None:
        outbox, transport, limit = self.outbox, self.transport, self.config.max_write_batch
        try:
            while True:
                batch = await outbox.receive_batch(limit)
                await transport.send(batch)
        except trio.EndOfChannel:
            pass
        except TransportClosed as exc:
            self.close(exc.reason)
        finally:
            self._writer_done.set()

    async def _read_loop(self, work: trio.MemorySendChannel[Work]) -> None:
        transport, session, limits = self.transport, self.session, self.config.limits
        with self._read_scope:
            try:
                while True:
                    data = await transport.receive_message()
                    if transport.control:
                        self.outbox.kick()
                    try:
                        packet = decode_ws_frame(data, limits)
                    except RemoteProtocolError as exc:
                        logger.debug("connection %s: %s", self.eio_sid, exc)
                        self.close("parse error")
                        return
                    for event in session.receive(packet, trio.current_time()):
                        if isinstance(event, MessageReceived):
                            if not await self._on_message(event.data, work):
                                return
                        elif isinstance(event, SendPacket):
                            self.outbox.send_control(encode_ws_frame(event.packet))
                        elif isinstance(event, Closed):
                            self.close(event.reason)
                            return
                    if session.next_deadline() != self._scheduled:
                        self._reschedule()
            except TransportClosed as exc:
                if transport.control:
                    self.outbox.kick()
                self.close(exc.reason)

    async def _on_message(self, data: str | bytes, work: trio.MemorySendChannel[Work]) -> bool:
        try:
            packet = self._decoder.receive(data)  # type: ignore[attr-defined]
            if packet is None:
                return True
            events = self.sio.receive(packet)
        except RemoteProtocolError as exc:
            logger.debug("connection %s: %s", self.eio_sid, exc)
            self.close("parse error")
            return False
        for event in events:
            if isinstance(event, AckReceived):
                self.layer.on_ack(self, event.namespace, event.ack_id, event.args)
            elif isinstance(event, _WORK):
                await work.send(event)
        return True

    async def _handler_loop(self, work: trio.MemoryReceiveChannel[Work]) -> None:
        layer = self.layer
        with self._handler_scope:
            async for event in work:
                # The per-connection boundary: an app handler's bug is logged and confined
                # to this connection; the connection keeps serving.
                try:
                    if isinstance(event, EventReceived):
                        await layer.on_event(
                            self, event.namespace, event.name, event.args, event.ack_id
                        )
                    elif isinstance(event, ConnectRequested):
                        await layer.on_connect(self, event.namespace, event.auth)
                        self._reschedule()
                    else:
                        await layer.on_namespace_disconnect(
                            self, event.namespace, "client namespace disconnect"
                        )
                except Exception:
                    logger.exception("handler failed on connection %s", self.eio_sid)
