"""History for clients: a room's last events, then live delivery, with no gap and no
duplicate.

``join_with_history`` reads the room's last events and joins the socket to the room in one
step with respect to broadcasts:

- with the event log (one server), inside one turn of the server's broadcast sequence
  (as ``Server._recover_locally`` does for a recovered socket): every broadcast with a
  smaller number is in the log and was fanned out before the socket joined, every one
  with a larger number is fanned out after, to the socket too (those made before the
  join are given it as a recipient: ``Broadcaster.adopt``), so it reaches the socket
  live; the records of those larger ones that are already in the log are left out of
  the history;
- with a cluster's shared log, with this node's delivery of the log held: the history
  ends at the last entry this node delivered, and every later entry is delivered after
  the join.

Each event carries the offset recovery uses (``epoch-number``), the one the client gets
as the last argument of live events when recovery is on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from roomcast.engine.adapters.cluster import ClusterError
from roomcast.engine.log import LogError
from roomcast.protocol import JsonValue, LogRecord, RecordKind

if TYPE_CHECKING:
    from roomcast.engine.socket import Socket

__all__ = ["HistoryEvent", "join_with_history"]

_MAX_READS: int = 8
"""How many times the read doubles when other records hide the events asked for."""


def _args(value: tuple[JsonValue, ...] | list[JsonValue]) -> tuple[JsonValue, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class HistoryEvent:
    """One broadcast of a room's history.

    Attributes:
        offset: Its offset, as recovery uses it (``epoch-number``).
        name: The event name.
        args: Its arguments (without the offset).
    """

    offset: str
    name: str
    args: tuple[JsonValue, ...] = attrs.field(converter=_args)


def _events(
    records: list[LogRecord], names: frozenset[str] | None, upto: int, epoch: str
) -> list[HistoryEvent]:
    found = []
    for record in records:
        if record.kind is not RecordKind.MESSAGE or record.sender is not None:
            continue  # a join, a leave, or a client's own event
        if record.offset > upto or record.event is None:
            continue
        if names is not None and record.event not in names:
            continue
        offset = f"{record.epoch or epoch}-{record.offset}"
        args = tuple(record.args)
        if args and args[-1] == offset:  # recorded with the offset clients got
            args = args[:-1]
        found.append(HistoryEvent(offset=offset, name=record.event, args=args))
    return found


async def join_with_history(
    socket: Socket, room: str, *, last: int, events: frozenset[str] | None = None
) -> list[HistoryEvent]:
    """Join ``room`` and return its last ``last`` broadcasts (of the ``events`` named, or
    any), oldest first; every later broadcast to the room reaches the socket live.

    Broadcasts wait while the history is read (one read of the log's newest segments).

    Cancellation: the socket may have joined; the history is lost.

    Raises:
        LogError: There is no log (file or shared) to read, or it cannot be read; or the
            server is a cluster node without the shared log (its own log lacks the other
            nodes' broadcasts).
    """
    ns = socket.namespace
    shared = ns.adapter.shared_log
    if shared is not None:
        async with shared.delivery_held() as upto:
            epoch = shared.epoch or ""
            found = await _read(socket, room, last, events, upto, epoch)
            await socket.join(room)
        return found
    server = ns.server
    if server.log is None:
        raise LogError("the event log is off: there is no history")
    if not ns.adapter.history_is_local:
        # This node's log lacks what the other nodes broadcast.
        raise LogError("a cluster has history only with its shared log")
    sequencer = server.sequencer
    turn = sequencer.take()
    try:
        await sequencer.wait_turn(turn)
        found = await _read(socket, room, last, events, turn, server.log.epoch)
        # The broadcasts made since the turn were addressed without the socket: it gets
        # those to the room live, joining in the same step (``Broadcaster.adopt``).
        joined = frozenset({room})
        server.broadcaster.adopt(ns.name, socket, joined, socket.rooms | joined)
        await socket.join(room)
    finally:
        sequencer.finish(turn)
    return found


async def _read(
    socket: Socket,
    room: str,
    last: int,
    names: frozenset[str] | None,
    upto: int,
    epoch: str,
) -> list[HistoryEvent]:
    """The last ``last`` events of the room up to offset ``upto``, reading further back
    while other records (joins, leaves, other events) fill the read."""
    ns = socket.namespace
    budget = max(2 * last, 16)
    for _ in range(_MAX_READS):
        try:
            records = await ns.history(room, last=budget)
        except ClusterError as exc:
            raise LogError(str(exc)) from exc
        found = _events(records, names, upto, epoch)
        if len(found) >= last or len(records) < budget:
            return found[-last:] if last > 0 else []
        budget *= 4
    return found[-last:] if last > 0 else []
