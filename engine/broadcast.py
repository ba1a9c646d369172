"""How the server records and delivers what it broadcasts: one strategy, picked once.

The server picks its ``Broadcaster`` when it is built, reconfigured, and when it opens or
closes its event log (``Server`` calls ``pick_broadcaster``), so a broadcast tests no
setting on its way:

- ``Unrecorded``: no event log and no recovery: a broadcast goes straight to the rooms,
  and recording a room or connection event does nothing;
- ``Recorded``: this node's event log, the recovery store, or both: a broadcast takes a
  number from the sequencer, its records are queued for the writer as one append, and it
  is released once they are durable (under ``always`` and ``interval``; written under
  ``never``) and every smaller number is done (see ``Recorded.broadcast``);
- ``SharedRecorded``: a cluster's shared log in Redis: broadcasts and records go there and
  every node delivers what it reads from it, in its order.

The strategy owns what the recording needs: the sequencer, the event log, the recovery
store and the shared log. Records that cannot be encoded (data msgpack cannot hold) are
logged as a warning and skipped (``record_event`` returns False).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import attrs
import trio

from roomcast.engine.actors.outbox import Outbox
from roomcast.engine.actors.room import fan_out
from roomcast.engine.adapters.base import BroadcastOptions, LocalSocket
from roomcast.engine.adapters.shared import AppendOutcome, ClusterLog, encode_records
from roomcast.engine.log import EventLog, FsyncPolicy, LogConfig, LogError
from roomcast.engine.recovery import MissedEvent, RecoveryStore, broadcast_records
from roomcast.engine.sequencer import Sequencer
from roomcast.engine.transport.frames import OutFrame
from roomcast.protocol import Event, LocalProtocolError, LogRecord, LogValue, RecordKind, SioPacket

if TYPE_CHECKING:
    from roomcast.engine.namespace import Namespace

__all__ = ["Broadcaster", "Recorded", "SharedRecorded", "Unrecorded", "pick_broadcaster"]

logger = logging.getLogger(__name__)

OnMember = Callable[[str], None] | None

# Joins and leaves: durable before they return (``record_event``). A set, not two
# ``RecordKind.X`` lookups, which cost an enum attribute access each on every record.
_MEMBERSHIP_KINDS = frozenset({RecordKind.JOIN, RecordKind.LEAVE})


def _loggable(packet: SioPacket, opts: BroadcastOptions) -> bool:
    """Whether a broadcast is recorded: an event without an ack (acks cannot be replayed),
    not volatile (volatile events are not kept, as in Node)."""
    return isinstance(packet, Event) and packet.ack_id is None and not opts.volatile


@attrs.define(eq=False)
class Broadcaster:
    """What the server does with a broadcast and with its room and connection events.

    Attributes:
        sequencer: The server's one sequence of offsets.
        wall_now: Wall-clock seconds (``Server.wall_now``), for the records' times.
        log_config: The event log's settings (``max_record_bytes``,
            ``record_client_events``).
        log: This node's open event log, or None.
        store: The recovery store (recovery on), or None.
    """

    sequencer: Sequencer
    wall_now: Callable[[], float]
    log_config: LogConfig
    log: EventLog | None = None
    store: RecoveryStore | None = None
    handed_off: int = attrs.field(default=0, init=False)
    """How many broadcasts returned before they went out (``Recorded``): 0 here."""
    observe: Callable[[float], None] | None = attrs.field(default=None, init=False, kw_only=True)
    """Told how long each broadcast took to reach its recipients' outboxes on this node
    (set by the server while its metrics are on: ``roomcast_broadcast_seconds``)."""
    records_client_events: bool = attrs.field(default=False, init=False)
    """Whether a client's events are recorded (a log is on, and
    ``record_client_events``): fixed when the strategy is picked."""

    async def _deliver_now(
        self, ns: Namespace, packet: SioPacket, opts: BroadcastOptions, on_member: OnMember
    ) -> int:
        """Deliver through the adapter now (timed for ``observe``)."""
        observe = self.observe
        if observe is None:
            return await ns.adapter.broadcast(ns.encode(packet), opts, on_member=on_member)
        start = time.perf_counter()
        count = await ns.adapter.broadcast(ns.encode(packet), opts, on_member=on_member)
        observe(time.perf_counter() - start)
        return count

    async def broadcast(
        self, ns: Namespace, packet: SioPacket, opts: BroadcastOptions, on_member: OnMember
    ) -> int:
        """Send ``packet`` to the sockets of ``ns`` that ``opts`` selects, recording it as
        the strategy does; return how many sockets of this node it is for (reached, or
        addressed where the strategy releases it later).

        Cancellation: some recipients may have it queued and others not.
        """
        return await self._deliver_now(ns, packet, opts, on_member)

    def adopt(
        self, namespace: str, socket: LocalSocket, joined: frozenset[str], rooms: frozenset[str]
    ) -> None:
        """``socket`` joins ``joined`` (its rooms then: ``rooms``, its own id included) in
        this step, as of a turn of the sequence its caller holds: make it a recipient of
        the broadcasts made since that turn's number that are for it and not released
        yet (they were addressed without it). A recovering socket, and a join with
        history, get every event once: those before the turn from the store or the log,
        these live."""

    async def record_event(
        self,
        kind: RecordKind,
        namespace: str,
        *,
        room: str = "",
        sender: str | None = None,
        event: str | None = None,
        args: tuple[LogValue, ...] = (),
    ) -> bool:
        """Log a room or connection event (join, leave, connect, disconnect, a client's
        event): joins and leaves wait until they are durable (under ``always`` and
        ``interval``), the others are queued without waiting. A record that cannot be
        encoded (socket data msgpack cannot hold) is logged as a warning and skipped:
        then it returns False.

        Cancellation: the record may or may not be queued.
        """
        await trio.lowlevel.checkpoint()
        return True

    def record_nowait(
        self,
        kind: RecordKind,
        namespace: str,
        room: str = "",
        sender: str | None = None,
        event: str | None = None,
        args: tuple[LogValue, ...] = (),
    ) -> bool:
        """``record_event`` for a record nobody waits for, without waiting: the hot path
        of a client's event. Returns False when the record cannot be encoded (logged as
        a warning, as ``record_event`` does).

        Raises:
            trio.WouldBlock: It would have to wait (a join or leave, which is durable
                before it returns, or a full inbox): nothing was recorded, and
                ``record_event`` records it.
        """
        return True

    async def record_session(
        self,
        kind: RecordKind,
        namespace: str,
        sid: str,
        first: LogValue,
        info: dict[str, LogValue],
    ) -> None:
        """Record a socket's CONNECT or DISCONNECT with its session ``info`` (pid, rooms,
        ``data``): what recovery after a crash reads. When msgpack cannot hold the
        ``data``, the record is written with ``data`` null rather than lost.

        Cancellation: the record may or may not be queued.
        """
        if not await self.record_event(kind, namespace, sender=sid, args=(first, info)):
            info["data"] = None
            await self.record_event(kind, namespace, sender=sid, args=(first, info))


@attrs.define(eq=False)
class Unrecorded(Broadcaster):
    """No event log, no recovery: broadcasts go straight to the rooms (the base class's
    ``broadcast``), and nothing is recorded."""


@attrs.define(eq=False, slots=True)
class _Pending:
    """A recorded broadcast between taking its number and going out."""

    seq: int
    namespace: str
    rooms: frozenset[str]
    exclude: frozenset[str]
    """Its target (``BroadcastOptions``: rooms, the except rooms and sids together)."""
    frames: tuple[OutFrame, ...]
    recipients: list[LocalSocket]
    """Who it was addressed to when it was made (``Adapter.recipients_now``)."""
    on_member: OnMember
    kept: MissedEvent | None
    """What the recovery store keeps of it (recovery on)."""
    made: float
    """When it was made (``time.perf_counter``), for ``observe``; 0 when not timed."""
    durable: bool = False
    error: LogError | None = None
    withdrawn: bool = False
    """Its records were not accepted (its emitter was cancelled, or the log refused
    them): it is skipped in its turn."""


@attrs.define(eq=False)
class Recorded(Broadcaster):
    """This node's event log and/or the recovery store (at least one of them).

    A recorded broadcast is addressed when it is made: it takes the next number, its
    recipients are read off the adapter's membership, and its records (one per target
    room, encoded together) are queued for the log writer as one append. Then its
    emitter goes on: it is not waiting for the log. The writer acknowledges a whole
    batch in one step after its sync, in the order of the appends, and then releases
    every broadcast whose turn has come, in offset order, in one pass without a task
    switch (``_release``): each is kept for recovery and offered to its recipients'
    outboxes, and its number finished, which makes the next one's turn. Each recipient
    gets everything the pass has for it in one write. So a client never holds an offset
    the log does not have, clients get events in log order, and one sync's worth of
    broadcasts costs one pass, not a task switch each.

    A number that is not a broadcast's (a recovering socket's or a history read's turn)
    holds the release until it is finished; the release then goes on from that
    ``finish``. A broadcast whose records the log could not write is not delivered: the
    failure is logged, and the log refuses every later broadcast (``LogWriteError``)
    from its emitter. An adapter that cannot address a broadcast at once (a cluster
    without the shared log) gets each one from its emitter, which then waits for its
    records and its turn.
    """

    max_pending_deliveries: int = attrs.field(default=1_000_000, kw_only=True)
    """How many deliveries (recipients, summed over broadcasts) may wait for their
    release before an ``emit`` waits for room: what a slow disk lets pile up in memory
    (about 8 bytes each, besides the outboxes' own bound)."""
    _pending: dict[int, _Pending] = attrs.field(factory=dict, init=False)
    _pending_deliveries: int = attrs.field(default=0, init=False)
    _room_for_more: trio.lowlevel.ParkingLot = attrs.field(
        factory=trio.lowlevel.ParkingLot, init=False
    )
    _releasing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        if self.log is not None:
            self.log.on_batch_done = self._release
        self.records_client_events = self.log is not None and self.log_config.record_client_events

    async def broadcast(
        self, ns: Namespace, packet: SioPacket, opts: BroadcastOptions, on_member: OnMember
    ) -> int:
        """As ``Broadcaster.broadcast``, but a recorded one returns once it is handed
        to the log, with the number of sockets it is addressed to; it goes out to them
        in offset order once its records are durable (under ``always`` and
        ``interval``; written under ``never``).

        Waits while ``max_pending_deliveries`` wait for their release, or while the
        log's inbox is full.

        Cancellation: if cancelled before the hand-off (waiting for room), it is neither
        delivered nor kept.

        Raises:
            LogWriteError: The log failed earlier (it refuses every broadcast since).
            LogClosedError: The log is closed.
            LocalProtocolError: Its arguments cannot be logged.
        """
        if not isinstance(packet, Event) or not _loggable(packet, opts):
            return await self._deliver_now(ns, packet, opts, on_member)
        while self._pending_deliveries >= self.max_pending_deliveries:
            await self._room_for_more.park()  # (backpressure: releases make room)
        recipients = ns.adapter.recipients_now(opts)
        sequencer, store, log = self.sequencer, self.store, self.log
        seq = sequencer.take()
        try:
            args = (
                store.with_recovery_offset(seq, packet.args) if store is not None else packet.args
            )
            exclude = opts.except_rooms | opts.except_sids
            now = self.wall_now()
            frames = ns.encode(Event(name=packet.name, args=args, namespace=packet.namespace))
            kept = None
            if store is not None:
                kept = MissedEvent(
                    seq=seq,
                    namespace=ns.name,
                    rooms=opts.rooms,
                    exclude=exclude,
                    name=packet.name,
                    args=args,
                    time=now,
                    size=sum(len(frame.eio) for frame in frames),
                )
            records = None
            if log is not None:
                records = broadcast_records(
                    ns.name, opts.rooms, exclude, packet.name, args, offset=seq,
                    epoch=log.epoch, time=now,
                )  # fmt: skip
        except BaseException:
            sequencer.finish(seq)
            raise
        if recipients is None:  # the adapter delivers with waits: this task does
            return await self._deliver_in_turn(seq, ns, frames, opts, on_member, kept, records)
        pending = _Pending(
            seq=seq,
            namespace=ns.name,
            rooms=opts.rooms,
            exclude=exclude,
            frames=frames,
            recipients=recipients,
            on_member=on_member,
            kept=kept,
            made=time.perf_counter() if self.observe is not None else 0.0,
            durable=log is None,
        )
        # Addressed and pending before anything waits: a recovery or a join with
        # history in the meantime finds it (``adopt``).
        for socket in recipients:
            socket.outbox.address(seq)
        self.handed_off += 1
        self._pending_deliveries += len(recipients)
        self._pending[seq] = pending
        sequencer.when_turn(seq, self._release)
        if log is not None:
            assert records is not None
            try:
                await log.submit(records, partial(self._logged, pending))
            except BaseException:
                # Not accepted: withdrawn, in its turn (what waits behind it goes on).
                pending.withdrawn = pending.durable = True
                self._release()
                raise
        return len(recipients)

    async def _deliver_in_turn(
        self,
        seq: int,
        ns: Namespace,
        frames: tuple[OutFrame, ...],
        opts: BroadcastOptions,
        on_member: OnMember,
        kept: MissedEvent | None,
        records: list[LogRecord] | None,
    ) -> int:
        """Deliver a broadcast through an adapter that waits (``adapter.broadcast``)
        once its ``records`` are durable and its turn has come; ``seq`` is finished
        when this returns or raises.

        Cancellation: if cancelled before its turn, it is neither delivered nor kept.
        """
        sequencer, log, store, observe = self.sequencer, self.log, self.store, self.observe
        start = time.perf_counter() if observe is not None else 0.0
        try:
            if log is not None and records is not None:
                await log.append_all(records)
            await sequencer.wait_turn(seq)
            if kept is not None and store is not None:
                store.keep(kept)
            count = await ns.adapter.broadcast(frames, opts, on_member=on_member)
            if observe is not None:
                observe(time.perf_counter() - start)
            return count
        finally:
            sequencer.finish(seq)

    def adopt(
        self, namespace: str, socket: LocalSocket, joined: frozenset[str], rooms: frozenset[str]
    ) -> None:
        for seq, pending in self._pending.items():
            if (
                pending.namespace == namespace
                and (not pending.rooms or not pending.rooms.isdisjoint(joined))
                and pending.exclude.isdisjoint(rooms)
                and socket not in pending.recipients
            ):
                pending.recipients.append(socket)
                self._pending_deliveries += 1
                socket.outbox.address(seq)

    def _logged(self, pending: _Pending, error: LogError | None) -> None:
        """The writer is done with a broadcast's records (in batch order; the writer
        calls ``_release`` after the batch)."""
        pending.durable = True
        pending.error = error

    def _release(self) -> None:
        """Release, in offset order, every broadcast that is durable and whose turn it
        is, each recipient's frames written once at the end. Called by the writer (a
        batch is acknowledged), by the sequencer (a broadcast's turn came, at once or
        from the ``finish`` of a number that is not a broadcast's) and for a withdrawn
        one; never re-entered (a call from within a release is taken care of by the
        loop)."""
        if self._releasing:
            return
        self._releasing = True
        sequencer, pending_of, store, observe = (
            self.sequencer, self._pending, self.store, self.observe
        )  # fmt: skip
        now = time.perf_counter() if observe is not None else 0.0
        gathered: list[Outbox] = []
        failed: LogError | None = None
        lost = 0
        try:
            while True:
                head = sequencer.done + 1
                pending = pending_of.get(head)
                if pending is None or not pending.durable:
                    return
                del pending_of[head]
                sequencer.forget(head)
                self._pending_deliveries -= len(pending.recipients)
                if pending.error is not None or pending.withdrawn:
                    if pending.error is not None:
                        failed = pending.error
                        lost += 1
                    for socket in pending.recipients:
                        socket.outbox.skip(head)
                else:
                    if pending.kept is not None and store is not None:
                        store.keep(pending.kept)
                    # (The outgoing hooks log what a listener raises: nothing escapes.)
                    fan_out(
                        pending.recipients,
                        pending.frames,
                        on_member=pending.on_member,
                        gather=gathered,
                        release=head,
                    )
                    if observe is not None and pending.made:
                        observe(now - pending.made)
                sequencer.finish(head)
        finally:
            self._releasing = False
            for outbox in gathered:
                outbox.write_gathered()
            if self._room_for_more and self._pending_deliveries < self.max_pending_deliveries:
                self._room_for_more.unpark_all()
            if failed is not None:
                logger.error("%d recorded broadcast(s) not delivered: %s", lost, failed)

    async def record_event(
        self,
        kind: RecordKind,
        namespace: str,
        *,
        room: str = "",
        sender: str | None = None,
        event: str | None = None,
        args: tuple[LogValue, ...] = (),
    ) -> bool:
        log = self.log
        if log is None:
            await trio.lowlevel.checkpoint()
            return True
        try:
            return self.record_nowait(kind, namespace, room, sender, event, args)
        except trio.WouldBlock:
            pass  # a join or leave, or the log's inbox is full: wait
        try:
            await log.append(
                LogRecord(
                    offset=self.sequencer.take_done(),
                    time=self.wall_now(),
                    namespace=namespace,
                    room=room,
                    kind=kind,
                    sender=sender,
                    event=event,
                    args=args,
                    epoch=log.epoch,
                )
            )
        except LocalProtocolError as exc:
            logger.warning("not logged (%s %s): %s", kind.name, namespace, exc)
            return False
        return True

    def record_nowait(
        self,
        kind: RecordKind,
        namespace: str,
        room: str = "",
        sender: str | None = None,
        event: str | None = None,
        args: tuple[LogValue, ...] = (),
    ) -> bool:
        log = self.log
        if log is None:
            return True
        # A join or leave is durable before it returns, as in the shared log: a client
        # recovered after a crash must get back the rooms it was told it is in, even
        # when no event of the room reached it before the crash.
        if kind in _MEMBERSHIP_KINDS and log.config.fsync is not FsyncPolicy.NEVER:
            raise trio.WouldBlock
        try:
            # A number in the server's sequence, done at once: nothing waits on its turn.
            log.append_fields_nowait(
                self.sequencer.take_done(), self.wall_now(), namespace, room, kind, sender,
                event, args,
            )  # fmt: skip
        except LocalProtocolError as exc:
            logger.warning("not logged (%s %s): %s", kind.name, namespace, exc)
            return False
        return True


@attrs.define(eq=False, kw_only=True)
class SharedRecorded(Broadcaster):
    """A cluster's shared log in Redis (``adapters/redis_log.py``): it numbers the
    records, and every node (this one too) delivers the broadcasts it reads from it."""

    shared: ClusterLog

    def __attrs_post_init__(self) -> None:
        self.records_client_events = self.log_config.record_client_events

    async def broadcast(
        self, ns: Namespace, packet: SioPacket, opts: BroadcastOptions, on_member: OnMember
    ) -> int:
        """As ``Broadcaster.broadcast``; a recorded one (not ``local`` either) is
        appended to the shared log, and delivered by every node as it reads the log, in
        the log's order. Without Redis it goes to this node's sockets only, with no
        offset (so a client's later recovery neither repeats it nor counts on it).

        Cancellation: it may be in the log (and then every node delivers it).
        """
        if not isinstance(packet, Event) or not _loggable(packet, opts) or opts.local:
            return await self._deliver_now(ns, packet, opts, on_member)
        records = broadcast_records(
            ns.name,
            opts.rooms,
            opts.except_rooms | opts.except_sids,
            packet.name,
            packet.args,
            offset=0,
            epoch="",
            time=self.wall_now(),
        )
        data = encode_records(records, max_record_bytes=self.log_config.max_record_bytes)
        start = time.perf_counter()
        outcome, count = await self.shared.broadcast(data)
        if outcome is AppendOutcome.NOT_SENT:
            local = attrs.evolve(opts, local=True)
            return await self._deliver_now(ns, packet, local, on_member)
        if self.observe is not None:  # (in Redis: every node delivers it as it reads it)
            self.observe(time.perf_counter() - start)
        return count

    async def record_event(
        self,
        kind: RecordKind,
        namespace: str,
        *,
        room: str = "",
        sender: str | None = None,
        event: str | None = None,
        args: tuple[LogValue, ...] = (),
    ) -> bool:
        if kind not in _MEMBERSHIP_KINDS:
            recorded = self.record_nowait(kind, namespace, room, sender, event, args)
            await trio.lowlevel.checkpoint()
            return recorded
        data = self._encode(kind, namespace, room, sender, event, args)
        if data is None:
            await trio.lowlevel.checkpoint()
            return False
        # In Redis before the join is done: what the member is sent next, from any
        # node, comes after it in the log.
        await self.shared.append(data)
        return True

    def record_nowait(
        self,
        kind: RecordKind,
        namespace: str,
        room: str = "",
        sender: str | None = None,
        event: str | None = None,
        args: tuple[LogValue, ...] = (),
    ) -> bool:
        if kind in _MEMBERSHIP_KINDS:
            raise trio.WouldBlock  # (in Redis before the join is done: record_event)
        data = self._encode(kind, namespace, room, sender, event, args)
        if data is None:
            return False
        self.shared.append_nowait(data)  # (what cannot be queued is counted there)
        return True

    def _encode(
        self,
        kind: RecordKind,
        namespace: str,
        room: str,
        sender: str | None,
        event: str | None,
        args: tuple[LogValue, ...],
    ) -> bytes | None:
        """A record for the shared log (which numbers it), or None when it cannot be
        encoded (logged)."""
        try:
            record = LogRecord(
                offset=0,  # numbered by the shared log
                time=self.wall_now(),
                namespace=namespace,
                room=room,
                kind=kind,
                sender=sender,
                event=event,
                args=args,
                epoch="",
            )
            return encode_records([record], max_record_bytes=self.log_config.max_record_bytes)
        except LocalProtocolError as exc:
            logger.warning("not logged (%s %s): %s", kind.name, namespace, exc)
            return None


def pick_broadcaster(
    *,
    sequencer: Sequencer,
    wall_now: Callable[[], float],
    log_config: LogConfig,
    log: EventLog | None,
    store: RecoveryStore | None,
    shared: ClusterLog | None,
) -> Broadcaster:
    """The strategy for these settings: the cluster's shared log when there is one, else
    this node's log and/or recovery store when either is on, else none."""
    if shared is not None:
        return SharedRecorded(
            sequencer=sequencer,
            wall_now=wall_now,
            log_config=log_config,
            log=log,
            store=store,
            shared=shared,
        )
    kind = Recorded if log is not None or store is not None else Unrecorded
    return kind(sequencer=sequencer, wall_now=wall_now, log_config=log_config, log=log, store=store)
