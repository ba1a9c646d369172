"""Connection state recovery, compatible with Socket.IO's ``connectionStateRecovery``.

With recovery on, every broadcast event without an ack and not volatile gets an offset,
appended as its last argument (as Node's session-aware adapter does: the client keeps
the last one it saw). A socket that disconnects for a recoverable reason is saved under
its private id (``pid``); a client that reconnects within ``max_disconnection_duration``
with ``{pid, offset}`` in its CONNECT auth gets its id, rooms and data back, and every
event it missed, in order. When that cannot be done (unknown or expired session, an
offset we no longer hold, another epoch) the client is told it was not recovered: it
gets a new id, and nothing is invented or skipped silently.

The store here is in memory and bounded; the event log, when on, is its durable copy,
so recovery also survives a restart (see ``docs/event-log.md``).
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs

from roomcast.protocol._log import LogRecord, RecordKind
from roomcast.protocol._sio import JsonValue

__all__ = [
    "RECOVERABLE_REASONS",
    "broadcast_records",
    "MissedEvent",
    "RecoveryConfig",
    "RecoveryStore",
    "SavedSession",
]

RECOVERABLE_REASONS: Final = frozenset(
    {"transport error", "transport close", "forced close", "ping timeout", "server shutting down"}
)
"""Disconnect reasons after which a socket's state is kept (Node's list)."""


@attrs.frozen(kw_only=True)
class RecoveryConfig:
    """Connection state recovery settings.

    Attributes:
        max_disconnection_duration: Seconds a disconnected socket's state is kept.
        skip_middlewares: Whether a recovered socket skips the namespace middleware.
        max_events: Most broadcast events kept for replay (oldest dropped first; a client
            whose offset fell out is not recovered).
    """

    max_disconnection_duration: float = 120.0
    skip_middlewares: bool = True
    max_events: int = 100_000


@attrs.frozen(kw_only=True)
class SavedSession:
    """A disconnected socket's state, kept for its recovery."""

    pid: str
    sid: str
    namespace: str
    rooms: frozenset[str]
    data: dict[str, Any]
    disconnected_at: float


@attrs.frozen(kw_only=True)
class MissedEvent:
    """A broadcast event as stored for replay.

    Attributes:
        seq: Its position in the server's event sequence.
        namespace: Its namespace.
        rooms: The rooms it went to (empty: the whole namespace).
        exclude: Rooms (socket ids are rooms too) whose members it was not for.
        name: The event name.
        args: Its arguments, the offset last.
    """

    seq: int
    namespace: str
    rooms: frozenset[str]
    exclude: frozenset[str]
    name: str
    args: tuple[JsonValue, ...]

    @classmethod
    def of_broadcast(cls, records: Sequence[LogRecord]) -> MissedEvent | None:
        """The event the records of one broadcast hold (``broadcast_records`` made them:
        one per room, room ``""`` meaning the whole namespace), or None when they are not
        a broadcast (a connection event, or a client's event: it has a sender)."""
        if not records:
            return None
        first = records[0]
        if first.kind is not RecordKind.MESSAGE or first.sender is not None or not first.event:
            return None
        rooms = frozenset(r.room for r in records)
        return cls(
            seq=first.offset,
            namespace=first.namespace,
            rooms=frozenset() if "" in rooms else rooms,
            exclude=frozenset(first.exclude),
            name=first.event,
            args=tuple(first.args),
        )

    def is_for(self, namespace: str, rooms: frozenset[str]) -> bool:
        """Whether a socket in ``rooms`` of ``namespace`` was sent this event."""
        if namespace != self.namespace:
            return False
        included = not self.rooms or not self.rooms.isdisjoint(rooms)
        return included and self.exclude.isdisjoint(rooms)


def broadcast_records(
    namespace: str,
    rooms: frozenset[str],
    exclude: frozenset[str],
    name: str,
    args: tuple[JsonValue, ...],
    *,
    offset: int,
    epoch: str,
    time: float,
) -> list[LogRecord]:
    """The log records of one broadcast: one per target room (``""`` for the whole
    namespace), all with the same offset; ``RecoveryStore.load`` reads them back as one
    event."""
    return [
        LogRecord(
            offset=offset,
            time=time,
            namespace=namespace,
            room=room,
            kind=RecordKind.MESSAGE,
            event=name,
            args=args,
            epoch=epoch,
            exclude=tuple(sorted(exclude)),
        )
        for room in (sorted(rooms) or [""])
    ]


@attrs.define(eq=False)
class RecoveryStore:
    """Offsets, recent events and disconnected sessions of one server (one epoch)."""

    config: RecoveryConfig = attrs.field(factory=RecoveryConfig)
    epoch: str = attrs.field(factory=lambda: secrets.token_hex(4))
    seq: int = 0
    complete_after: int = 0
    """Every broadcast event numbered above this is held (older ones may be gone)."""
    _events: deque[MissedEvent] = attrs.field(factory=deque)
    _sessions: dict[str, SavedSession] = attrs.field(factory=dict)

    def offset(self, seq: int) -> str:
        """The offset string clients see for event ``seq``."""
        return f"{self.epoch}-{seq}"

    def parse_offset(self, offset: str) -> int | None:
        """The sequence number of an offset of this epoch, or None."""
        epoch, _, seq = offset.rpartition("-")
        if epoch != self.epoch or not seq.isdigit():
            return None
        return int(seq)

    def with_offset(self, seq: int, args: tuple[JsonValue, ...]) -> tuple[JsonValue, ...]:
        """``args`` with the offset of event ``seq`` appended (what clients receive)."""
        return (*args, self.offset(seq))

    def record(
        self,
        seq: int,
        namespace: str,
        rooms: frozenset[str],
        exclude: frozenset[str],
        name: str,
        args: tuple[JsonValue, ...],
    ) -> None:
        """Keep broadcast event ``seq`` (its ``args`` already end with its offset).

        Events must be recorded in increasing ``seq`` order (the delivery order).
        """
        self.seq = max(self.seq, seq)
        events = self._events
        events.append(
            MissedEvent(
                seq=seq, namespace=namespace, rooms=rooms, exclude=exclude, name=name, args=args
            )
        )
        if len(events) > self.config.max_events:
            self.complete_after = events.popleft().seq

    def load(self, records: Iterable[LogRecord], now: float) -> None:
        """Refill the store from event-log records of its epoch (after a restart).

        Broadcast ``MESSAGE`` records (no sender) become events again, one per offset
        with the union of their rooms; ``DISCONNECT`` records that carry a session
        (``args[1]`` with ``pid``) become saved sessions, unless a later ``CONNECT`` took
        that ``pid`` back. Events before the first record read are unknown: an offset
        older than that is a gap.
        """
        broadcasts: dict[int, list[LogRecord]] = {}
        sessions: dict[str, SavedSession] = {}
        first: int | None = None
        for record in records:
            if record.namespace == "":
                continue  # the writer's own records
            first = record.offset if first is None else min(first, record.offset)
            self.seq = max(self.seq, record.offset)
            info = record.args[1] if len(record.args) > 1 else None
            if record.kind is RecordKind.MESSAGE and record.sender is None and record.event:
                broadcasts.setdefault(record.offset, []).append(record)
            elif isinstance(info, dict) and isinstance(info.get("pid"), str):
                pid = info["pid"]
                assert isinstance(pid, str)
                if record.kind is RecordKind.CONNECT:
                    sessions.pop(pid, None)
                elif record.kind is RecordKind.DISCONNECT and record.sender is not None:
                    rooms_value = info.get("rooms")
                    data_value = info.get("data")
                    sessions[pid] = SavedSession(
                        pid=pid,
                        sid=record.sender,
                        namespace=record.namespace,
                        rooms=frozenset(r for r in rooms_value or () if isinstance(r, str))
                        if isinstance(rooms_value, list)
                        else frozenset(),
                        data=dict(data_value) if isinstance(data_value, dict) else {},
                        disconnected_at=record.time,
                    )
        found = (MissedEvent.of_broadcast(broadcasts[seq]) for seq in sorted(broadcasts))
        ordered = [event for event in found if event is not None]
        self._events = deque(ordered[-self.config.max_events :])
        dropped = (
            ordered[: -self.config.max_events] if len(ordered) > self.config.max_events else []
        )
        self.complete_after = max(
            (first - 1) if first is not None else self.seq, dropped[-1].seq if dropped else 0
        )
        self._sessions = sessions
        self.prune(now)

    def new_pid(self) -> str:
        """A fresh private session id."""
        return secrets.token_urlsafe(15)

    def save(self, session: SavedSession) -> None:
        """Keep a disconnected socket's state."""
        self._sessions[session.pid] = session

    def prune(self, now: float) -> None:
        """Forget sessions past ``max_disconnection_duration``."""
        limit = now - self.config.max_disconnection_duration
        for pid in [p for p, s in self._sessions.items() if s.disconnected_at < limit]:
            del self._sessions[pid]

    def restore(
        self, namespace: str, pid: str, offset: str, now: float
    ) -> tuple[SavedSession, list[MissedEvent]] | None:
        """Take the session ``pid`` back with the events it missed after ``offset``.

        Returns None (the client is told it was not recovered) when the session is
        unknown, for another namespace or expired, or when the offset is of another
        epoch or older than the oldest event kept (a gap we cannot fill).
        """
        self.prune(now)
        session = self._sessions.get(pid)
        if session is None or session.namespace != namespace:
            return None
        seq = self.parse_offset(offset)
        events = self._events
        if seq is None or seq > self.seq:
            return None
        if seq < self.complete_after:
            return None  # events after the client's offset may have been dropped: a gap
        del self._sessions[pid]
        rooms = session.rooms | {session.sid}
        missed = [e for e in events if e.seq > seq and e.is_for(namespace, rooms)]
        return session, missed
