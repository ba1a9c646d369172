"""Re-drive recorded records against an app's handlers, for debugging.

`replay` takes records (from the event log's `iter_records`, usually one room's, or a
cluster's shared log) and a fresh `Server`
with the app's handlers registered, and plays the records in order through the real
engine: namespaces, the adapter, room actors and broadcasts. Each recorded socket is
stood in for by a socket whose connection captures what the app sends it, so the sids
of the recording are kept and every step reports what the app sent to whom.

What each record kind does:

========================  ===============================================================
``CONNECT``               create the socket (``args[0]``, if a map, is its auth) and run
                          the namespace's connect handlers (middleware does not run: the
                          recording says the connection was accepted)
``JOIN`` / ``LEAVE``      the socket joins / leaves the room (a socket not yet seen is
                          created first, without connect handlers)
``MESSAGE`` with sender   the sender emits ``event(*args)``: the handler (or catch-all)
                          runs; its return value is the step's ``result``
``DISCONNECT``            the socket leaves the namespace (``args[0]``, if a string, is the
                          reason): disconnecting handlers run in its rooms, then it
                          leaves them, then disconnect handlers run
``SERVER_START/STOP``,    every replayed socket is disconnected ("server shutting down"):
``EPOCH``                 nobody stays connected across a restart
anything else             skipped, with a note
========================  ===============================================================

Replay is deterministic as far as the handlers are: records are applied one at a time
and each step runs to completion (including the room actors' fan-out) before the next.
A handler that calls a socket with an ack gets ``ConnectionLostError`` at once: there is
no client to answer.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Final

import attrs
import trio

from roomcast.engine.actors.outbox import Outbox
from roomcast.engine.errors import ConnectionLostError
from roomcast.engine.handshake import Handshake
from roomcast.engine.socket import Socket
from roomcast.engine.transport.frames import OutFrame, SharedFrame
from roomcast.protocol import (
    Ack,
    Connect,
    DisconnectReason,
    Event,
    JsonValue,
    LogRecord,
    Parser,
    RecordKind,
    RemoteProtocolError,
    SioPacket,
    SioServerConnection,
    encode_message,
)

if TYPE_CHECKING:
    from roomcast.engine.actors.connection import NamespaceMember
    from roomcast.engine.namespace import Namespace
    from roomcast.engine.server import Server
    from roomcast.engine.transport.http import HttpRequest
    from roomcast.protocol import Decoder

__all__ = ["Delivery", "ReplayAction", "ReplayStep", "replay"]

logger = logging.getLogger(__name__)

_REPLAY_ACK_ID: Final = 0
_OUTBOX_FRAMES: Final = 1 << 20


class ReplayAction(enum.StrEnum):
    """What a replay step did with its record."""

    CONNECT = "connect"
    JOIN = "join"
    LEAVE = "leave"
    EVENT = "event"
    DISCONNECT = "disconnect"
    RESET = "reset"
    SKIP = "skip"


@attrs.frozen(kw_only=True)
class Delivery:
    """A packet the app sent to a replayed socket during a step.

    Attributes:
        sid: The socket it was sent to.
        packet: The Socket.IO packet, decoded back from the frames the engine queued.
    """

    sid: str
    packet: SioPacket


@attrs.frozen(kw_only=True)
class ReplayStep:
    """One record replayed.

    Attributes:
        record: The record.
        action: What replay did with it.
        handled: For ``EVENT``: whether a handler (or catch-all) ran.
        result: For a handled ``EVENT``: the arguments the handler's return value would
            have acknowledged with.
        error: The exception a handler raised, as ``repr``, or None.
        note: Why a record was skipped, or other remarks.
        deliveries: What the app sent to replayed sockets during the step, in order per
            socket (sockets in order of first appearance).
    """

    record: LogRecord
    action: ReplayAction
    handled: bool = False
    result: tuple[JsonValue, ...] | None = None
    error: str | None = None
    note: str | None = None
    deliveries: tuple[Delivery, ...] = ()


@attrs.define(eq=False)
class _ReplayConnection:
    """Stands in for a `Connection` (a ``SocketConnection``): what the engine sends to the
    socket is queued in its outbox and decoded back after each step."""

    sid: str
    parser: Parser
    socket: Socket | None = None
    outbox: Outbox = attrs.field(factory=lambda: Outbox(max_frames=_OUTBOX_FRAMES))
    sio: SioServerConnection = attrs.field(factory=SioServerConnection)
    namespaces: dict[str, NamespaceMember] = attrs.field(factory=dict)
    request: HttpRequest | None = None
    close_reason: str | None = None
    held: list[SioPacket] = attrs.field(factory=list)
    decoder: Decoder = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.decoder = self.parser.decoder()

    @property
    def eio_sid(self) -> str:
        return self.sid

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    @property
    def transport_name(self) -> str:
        return "replay"

    def send_packet(self, packet: SioPacket) -> bool:
        if isinstance(packet, Event) and packet.ack_id is not None and self.socket is not None:
            # ``socket.call``: nobody will answer; fail the wait now instead of hanging.
            waiter = self.socket.acks.pop(packet.ack_id, None)
            if waiter is not None:
                waiter.fail(self.sid, ConnectionLostError("replay has no client to answer"))
        frames = tuple(map(encode_message, self.parser.encode(packet)))
        return self.send_frames(frames)

    def send_frames(self, frames: tuple[OutFrame, ...], *, volatile: bool = False) -> bool:
        try:
            for frame in frames:
                self.outbox.send_nowait(frame)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        return True

    def close(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason

    def evict(self, reason: str) -> None:
        self.close(reason)

    async def drain(self) -> list[SioPacket]:
        """Decode everything queued so far (after what was held back)."""
        packets, self.held = self.held, []
        while len(self.outbox):
            for frame in await self.outbox.receive_batch(_OUTBOX_FRAMES):
                data = frame.eio if isinstance(frame, SharedFrame) else frame
                if isinstance(data, str):
                    data = data[1:]  # the Engine.IO MESSAGE type
                try:
                    packet = self.decoder.receive(data)
                except RemoteProtocolError:  # pragma: no cover - the engine encoded it
                    logger.exception("replay: could not decode a frame sent to %s", self.sid)
                    continue
                if packet is not None:
                    packets.append(packet)
        return packets


@attrs.define(eq=False)
class _Replayer:
    server: Server
    apply_membership: bool
    connections: dict[tuple[str, str], _ReplayConnection] = attrs.field(factory=dict)

    def _namespace(self, name: str, auth: JsonValue) -> Namespace | None:
        # Resolving may create a dynamic namespace, exactly as a client's CONNECT would.
        return self.server.resolve_namespace(name, auth)

    def _socket(self, namespace: str, sid: str, auth: JsonValue) -> Socket | None:
        conn = self.connections.get((namespace, sid))
        if conn is not None and conn.socket is not None and conn.socket.connected:
            return conn.socket
        ns = self._namespace(namespace, auth)
        if ns is None:
            return None
        conn = _ReplayConnection(sid=sid, parser=self.server.parser)
        conn.sio.receive(Connect(namespace=namespace, data=auth))
        conn.sio.accept(namespace, sid)
        socket = Socket(
            sid=sid,
            namespace=ns,
            connection=conn,
            handshake=Handshake(
                auth=auth if auth is not None else {},
                headers={},
                query={},
                address=None,
                time=trio.current_time(),
            ),
        )
        conn.socket = socket
        conn.namespaces[namespace] = socket
        ns.sockets[sid] = socket
        ns.adapter.add_socket(socket)
        self.connections[(namespace, sid)] = conn
        return socket

    def _existing(self, namespace: str, sid: str) -> Socket | None:
        conn = self.connections.get((namespace, sid))
        if conn is None or conn.socket is None or not conn.socket.connected:
            return None
        return conn.socket

    async def _deliveries(self) -> tuple[Delivery, ...]:
        out: list[Delivery] = []
        for (_, sid), conn in self.connections.items():
            out.extend(Delivery(sid=sid, packet=packet) for packet in await conn.drain())
        return tuple(out)

    async def step(self, record: LogRecord) -> ReplayStep:
        kind, ns, sid = record.kind, record.namespace, record.sender
        step = ReplayStep(record=record, action=ReplayAction.SKIP)
        if kind in (RecordKind.SERVER_START, RecordKind.SERVER_STOP, RecordKind.EPOCH):
            for conn in list(self.connections.values()):
                if conn.socket is not None:
                    await conn.socket.namespace.remove_socket(
                        conn.socket, DisconnectReason.SERVER_SHUTTING_DOWN
                    )
            step = attrs.evolve(step, action=ReplayAction.RESET)
        elif sid is None:
            step = attrs.evolve(step, note="no sender: nothing to re-drive")
        elif kind is RecordKind.CONNECT:
            auth: JsonValue = record.args[0] if record.args else None
            if not isinstance(auth, dict):
                auth = None
            existed = self._existing(ns, sid) is not None
            socket = self._socket(ns, sid, auth)
            if socket is None:
                step = attrs.evolve(step, note=f"the app has no namespace {ns!r}")
            elif existed:
                step = attrs.evolve(step, note="the socket is already connected")
            else:
                step = attrs.evolve(step, action=ReplayAction.CONNECT)
                for handler in socket.namespace.connect_handlers:
                    step = await self._run(step, handler(socket, socket.handshake.auth))
        elif kind in (RecordKind.JOIN, RecordKind.LEAVE):
            if not self.apply_membership:
                step = attrs.evolve(step, note="recorded membership is not applied")
            elif (socket := self._socket(ns, sid, None)) is None:
                step = attrs.evolve(step, note=f"the app has no namespace {ns!r}")
            elif kind is RecordKind.JOIN:
                await socket.join(record.room)
                step = attrs.evolve(step, action=ReplayAction.JOIN)
            else:
                await socket.leave(record.room)
                step = attrs.evolve(step, action=ReplayAction.LEAVE)
        elif kind is RecordKind.MESSAGE:
            step = await self._event(step, record, sid)
        elif kind is RecordKind.DISCONNECT:
            socket = self._existing(ns, sid)
            if socket is None:
                step = attrs.evolve(step, note="the socket is not connected")
            else:
                reason = record.args[0] if record.args else None
                await socket.namespace.remove_socket(
                    socket, reason if isinstance(reason, str) else DisconnectReason.TRANSPORT_CLOSE
                )
                step = attrs.evolve(step, action=ReplayAction.DISCONNECT)
        return attrs.evolve(step, deliveries=await self._deliveries())

    async def _run(self, step: ReplayStep, call: Awaitable[object]) -> ReplayStep:
        try:
            await call
        except Exception as exc:  # the per-step boundary, like a connection's
            logger.exception("replay: a handler failed on %s", step.record)
            return attrs.evolve(step, error=repr(exc))
        return step

    async def _event(self, step: ReplayStep, record: LogRecord, sid: str) -> ReplayStep:
        if record.event is None:
            return attrs.evolve(step, note="no event name")
        socket = self._socket(record.namespace, sid, None)
        if socket is None:
            return attrs.evolve(step, note=f"the app has no namespace {record.namespace!r}")
        conn = self.connections[(record.namespace, sid)]
        step = attrs.evolve(step, action=ReplayAction.EVENT)
        try:
            await self.server.on_event(
                conn,
                record.namespace,
                record.event,
                tuple(record.args),
                _REPLAY_ACK_ID,
            )
        except Exception as exc:  # the per-step boundary, like a connection's
            logger.exception("replay: the handler of %r failed", record.event)
            return attrs.evolve(step, handled=True, error=repr(exc))
        # The engine answers the ack id we gave only when a handler ran; everything else
        # the sender was sent is kept for the step's deliveries.
        result: tuple[JsonValue, ...] | None = None
        for packet in await conn.drain():
            if isinstance(packet, Ack) and packet.ack_id == _REPLAY_ACK_ID and result is None:
                result = packet.args
            else:
                conn.held.append(packet)
        if result is None:
            return attrs.evolve(step, note=f"no handler for {record.event!r}")
        return attrs.evolve(step, handled=True, result=result)


async def replay(
    records: Iterable[LogRecord],
    server: Server,
    *,
    apply_membership: bool = True,
    on_step: Callable[[ReplayStep], None] | None = None,
) -> list[ReplayStep]:
    """Re-drive ``records`` against ``server``'s handlers, one at a time, in order.

    ``server`` should be a fresh Server of the app that is not serving: replay runs
    its supervisor (and so its room actors) itself, and leaves its sockets and rooms
    behind. Handlers run as they would for a client, with the recorded sids.

    Args:
        records: The records, oldest first.
        server: The app's Server, with its handlers registered.
        apply_membership: Apply recorded ``JOIN``/``LEAVE`` records (turn off to let
            only the app's own handlers move sockets between rooms).
        on_step: Called with each step as soon as it is done.

    Returns:
        A step per record.

    Cancellation: the replay stops; the steps done so far are lost.

    Raises:
        RuntimeError: ``server`` is running.
    """
    if server.supervisor.running:
        raise RuntimeError("replay needs a Server that is not running")
    replayer = _Replayer(server=server, apply_membership=apply_membership)
    steps: list[ReplayStep] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(server.supervisor.run)
        for record in records:
            step = await replayer.step(record)
            steps.append(step)
            if on_step is not None:
                on_step(step)
        nursery.cancel_scope.cancel()
    return steps
