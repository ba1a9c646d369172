"""Connection state recovery, compatible with Socket.IO's ``connectionStateRecovery``.

With recovery on, every broadcast event without an ack and not volatile gets a sequence
number (``seq``: the ``offset`` of its log records) and, appended as its last argument, a
*recovery offset*: the string ``"<epoch>-<seq>"`` (as Node's session-aware adapter does:
the client keeps the last one it saw). A socket that disconnects for a recoverable reason
is saved under its private id (``pid``); a client that reconnects within
``max_disconnection_duration`` with ``{pid, offset}`` (its recovery offset) in its CONNECT
auth gets its id, rooms and data back, and every event it missed, in order. When that
cannot be done (unknown or expired session, a recovery offset we no longer hold, another
epoch) the client is told it was not recovered: it gets a new id, and nothing is invented
or skipped silently.

The store here is in memory and bounded; the event log, when on, is its durable copy,
so recovery also survives a restart (see ``docs/event-log.md``).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs
import msgpack

from roomcast.protocol import DisconnectReason, JsonValue, LogRecord, RecordKind

__all__ = [
    "RECOVERABLE_REASONS",
    "broadcast_records",
    "MissedEvent",
    "RecoveryConfig",
    "RecoveryStore",
    "SavedSession",
    "approximate_size",
]

logger = logging.getLogger(__name__)

RECOVERABLE_REASONS: Final = frozenset(
    {
        DisconnectReason.TRANSPORT_ERROR,
        DisconnectReason.TRANSPORT_CLOSE,
        DisconnectReason.FORCED_CLOSE,
        DisconnectReason.PING_TIMEOUT,
        DisconnectReason.SERVER_SHUTTING_DOWN,
    }
)
"""Disconnect reasons after which a socket's state is kept (Node's list)."""


def _positive(instance: object, attribute: object, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{getattr(attribute, 'name', '?')} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class RecoveryConfig:
    """Connection state recovery settings.

    Attributes:
        max_disconnection_duration: Seconds a disconnected socket's state is kept.
        skip_middlewares: Whether a recovered socket skips the namespace middleware.
        max_events: Most broadcast events kept for replay (oldest dropped first; a client
            whose offset fell out is not recovered).
        max_event_bytes: Most bytes of kept broadcast events (their encoded size; oldest
            dropped first, with the same outcome as ``max_events``).
        max_sessions: Most disconnected sessions kept (the oldest is forgotten first: its
            client connects as a new socket).
        max_session_bytes: Most bytes of kept sessions (their rooms and data, as msgpack;
            the oldest is forgotten first).
        prune_interval: Seconds between two sweeps that forget expired sessions and
            events no session can still ask for.
    """

    max_disconnection_duration: float = attrs.field(default=120.0, validator=_positive)
    skip_middlewares: bool = True
    max_events: int = attrs.field(default=100_000, validator=_positive)
    max_event_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_positive)
    max_sessions: int = attrs.field(default=100_000, validator=_positive)
    max_session_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_positive)
    prune_interval: float = attrs.field(default=5.0, validator=_positive)


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
        args: Its arguments, the recovery offset last.
        time: When it was emitted (wall-clock seconds).
        size: About how many bytes keeping it costs (its encoded size).
    """

    seq: int
    namespace: str
    rooms: frozenset[str]
    exclude: frozenset[str]
    name: str
    args: tuple[JsonValue, ...]
    time: float = 0.0
    size: int = 0

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
            time=first.time,
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
    namespace), all with the same sequence number (``offset``); ``RecoveryStore.load``
    reads them back as one event."""
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


def approximate_size(value: object) -> int:
    """About how many bytes keeping ``value`` costs: its msgpack size (its ``repr``'s
    length when msgpack cannot hold it)."""
    try:
        return len(msgpack.packb(value))
    except (TypeError, ValueError, OverflowError):
        return len(repr(value))


def _session_size(session: SavedSession) -> int:
    return (
        64
        + len(session.pid)
        + len(session.sid)
        + approximate_size([sorted(session.rooms), session.data])
    )


@attrs.define(eq=False)
class _Live:
    """A socket connected at the end of the records ``RecoveryStore.load`` read."""

    pid: str
    rooms: set[str]
    data: dict[str, Any]


@attrs.define(eq=False)
class RecoveryStore:
    """Offsets, recent events and disconnected sessions of one server (one epoch).

    Every part is bounded (``RecoveryConfig``): events by count and bytes, sessions by
    count and bytes, both by time (``prune``, which the server runs on a timer).
    """

    config: RecoveryConfig = attrs.field(factory=RecoveryConfig)
    epoch: str = attrs.field(factory=lambda: secrets.token_hex(4))
    delivery_bound: float = 0.0
    """The longest an event can wait between being queued for a socket and that socket's
    disconnect being noticed (the heartbeat's ping interval plus ping timeout: a client
    that does not read its frames does not read the ping before them either)."""
    seq: int = 0
    complete_after: int = 0
    """Every broadcast event numbered above this is held, or was dropped only because no
    session could still ask for it (older ones may be gone: an older recovery offset is a
    gap)."""
    keep_since: float | None = None
    """While sessions of a crashed run are kept: the time of that run's last record (events
    from ``delivery_bound`` before it on are kept for them), until ``keep_until``."""
    keep_until: float = 0.0
    _events: deque[MissedEvent] = attrs.field(factory=deque)
    _event_bytes: int = 0
    _sessions: dict[str, SavedSession] = attrs.field(factory=dict)
    """Oldest disconnect first (the order they were saved in)."""
    _session_sizes: dict[str, int] = attrs.field(factory=dict)
    _session_bytes: int = 0

    def recovery_offset(self, seq: int) -> str:
        """The recovery offset clients see for event ``seq``."""
        return f"{self.epoch}-{seq}"

    def parse_recovery_offset(self, recovery_offset: str) -> int | None:
        """The sequence number a recovery offset of this epoch names, or None."""
        epoch, _, seq = recovery_offset.rpartition("-")
        if epoch != self.epoch or not seq.isdigit():
            return None
        return int(seq)

    def with_recovery_offset(self, seq: int, args: tuple[JsonValue, ...]) -> tuple[JsonValue, ...]:
        """``args`` with the recovery offset of event ``seq`` appended (what clients
        receive)."""
        return (*args, self.recovery_offset(seq))

    @property
    def events_kept(self) -> int:
        """How many broadcast events are kept."""
        return len(self._events)

    def sessions(self) -> list[SavedSession]:
        """The disconnected sessions kept now, oldest disconnect first."""
        return list(self._sessions.values())

    @property
    def sessions_kept(self) -> int:
        """How many disconnected sessions are kept."""
        return len(self._sessions)

    def keep(self, event: MissedEvent) -> None:
        """Keep broadcast ``event`` (as ``record`` does)."""
        self.seq = max(self.seq, event.seq)
        self._keep(event)

    def _keep(self, event: MissedEvent) -> None:
        events = self._events
        events.append(event)
        self._event_bytes += event.size
        config = self.config
        while len(events) > 1 and (
            len(events) > config.max_events or self._event_bytes > config.max_event_bytes
        ):
            dropped = events.popleft()
            self._event_bytes -= dropped.size
            self.complete_after = dropped.seq

    def load(self, records: Iterable[LogRecord], *, now: float, crashed: bool) -> None:
        """Refill the store from event-log records of its epoch (after a restart), in one
        pass, holding only what it may keep.

        Broadcast ``MESSAGE`` records (no sender) become events again, one per sequence
        number (the records' ``offset``) with the union of their rooms (only those ``prune``
        would keep). ``DISCONNECT`` records that carry a session (``args[1]`` with ``pid``)
        become saved sessions, unless a later ``CONNECT`` took that ``pid`` back. With
        ``crashed`` (the previous run did not close the log), every socket still connected
        at the end of the records (its ``CONNECT`` carries its ``pid`` and ``data``, its
        rooms are its ``JOIN`` and ``LEAVE`` records) is saved too, as disconnected ``now``:
        the log cannot tell the moment of a crash, and no client could reconnect while the
        server was down. Events before the first record read are unknown: a recovery offset
        older than that is a gap.
        """
        window = self.config.max_disconnection_duration
        by_seq: dict[int, list[LogRecord]] = {}  # in order of first appearance
        sessions: dict[str, SavedSession] = {}
        live: dict[tuple[str, str], _Live] = {}  # (namespace, sid) -> state
        first: int | None = None
        last_time = -math.inf
        self.complete_after = 0
        self.keep_since = None
        for count, record in enumerate(records):
            if count % 4096 == 4095:
                # Events older than any horizon ``prune`` can end up with go now, so that
                # a long log is read in bounded memory.
                self._drop_loaded(by_seq, min(now - window, last_time))
            if record.namespace == "":
                continue  # the writer's own records
            if first is None:
                first = record.offset
            self.seq = max(self.seq, record.offset)
            last_time = max(last_time, record.time)
            kind = record.kind
            if kind is RecordKind.MESSAGE:
                if record.sender is None and record.event:
                    by_seq.setdefault(record.offset, []).append(record)
                continue
            sender = record.sender
            if sender is None:
                continue
            key = (record.namespace, sender)
            if kind is RecordKind.JOIN or kind is RecordKind.LEAVE:
                state = live.get(key)
                if state is not None:
                    if kind is RecordKind.JOIN:
                        state.rooms.add(record.room)
                    else:
                        state.rooms.discard(record.room)
                continue
            info = record.args[1] if len(record.args) > 1 else None
            pid = info.get("pid") if isinstance(info, dict) else None
            if kind is RecordKind.CONNECT:
                live.pop(key, None)
                if isinstance(info, dict) and isinstance(pid, str):
                    sessions.pop(pid, None)
                    live[key] = _Live(
                        pid=pid, rooms=_strings(info.get("rooms")), data=_mapping(info.get("data"))
                    )
            elif kind is RecordKind.DISCONNECT:
                live.pop(key, None)
                if isinstance(info, dict) and isinstance(pid, str):
                    sessions.pop(pid, None)  # re-inserted: the order is the disconnect order
                    sessions[pid] = SavedSession(
                        pid=pid,
                        sid=sender,
                        namespace=record.namespace,
                        rooms=frozenset(_strings(info.get("rooms"))),
                        data=_mapping(info.get("data")),
                        disconnected_at=record.time,
                    )
        if crashed:
            for (namespace, sid), state in live.items():
                sessions.pop(state.pid, None)
                sessions[state.pid] = SavedSession(
                    pid=state.pid,
                    sid=sid,
                    namespace=namespace,
                    rooms=frozenset(state.rooms),
                    data=state.data,
                    disconnected_at=now,
                )
            if live:
                self.keep_since = last_time
                self.keep_until = now + window
        self._drop_loaded(
            by_seq, now - window if self.keep_since is None else min(now - window, last_time)
        )
        self._events.clear()
        self._event_bytes = 0
        self.complete_after = max(
            self.complete_after, (first - 1) if first is not None else self.seq
        )
        for seq in sorted(by_seq):
            event = MissedEvent.of_broadcast(by_seq[seq])
            if event is not None:
                self._keep(attrs.evolve(event, size=approximate_size(event.args)))
        self._sessions.clear()
        self._session_sizes.clear()
        self._session_bytes = 0
        for session in sessions.values():
            self.save(session)
        self.prune(now)

    def _drop_loaded(self, by_seq: dict[int, list[LogRecord]], since: float) -> None:
        """Drop loaded broadcasts emitted before ``since - delivery_bound`` (no session can
        ask for them, as in ``prune``), and the oldest past twice ``max_events`` (a gap)."""
        horizon = since - self.delivery_bound
        while by_seq:
            seq, parts = next(iter(by_seq.items()))
            too_many = len(by_seq) > 2 * self.config.max_events
            if not too_many and parts[0].time >= horizon:
                break
            del by_seq[seq]
            if too_many:
                self.complete_after = max(self.complete_after, seq)

    def new_pid(self) -> str:
        """A fresh private session id."""
        return secrets.token_urlsafe(15)

    def save(self, session: SavedSession) -> None:
        """Keep a disconnected socket's state.

        Past ``max_sessions`` or ``max_session_bytes`` the oldest sessions are forgotten
        (their clients connect as new sockets), with a warning.
        """
        self._forget(session.pid)
        size = _session_size(session)
        self._sessions[session.pid] = session
        self._session_sizes[session.pid] = size
        self._session_bytes += size
        config = self.config
        forgotten = 0
        while self._sessions and (
            len(self._sessions) > config.max_sessions
            or self._session_bytes > config.max_session_bytes
        ):
            self._forget(next(iter(self._sessions)))
            forgotten += 1
        if forgotten:
            logger.warning(
                "recovery: forgot %d disconnected session(s) to stay within %d sessions and "
                "%d bytes; their clients will not be recovered",
                forgotten,
                config.max_sessions,
                config.max_session_bytes,
            )

    def _forget(self, pid: str) -> SavedSession | None:
        session = self._sessions.pop(pid, None)
        if session is not None:
            self._session_bytes -= self._session_sizes.pop(pid)
        return session

    def prune(self, now: float) -> None:
        """Forget sessions past ``max_disconnection_duration``, and events that no session
        can still ask for: emitted more than the window plus ``delivery_bound`` ago (any
        session still kept disconnected after them, so it either received them or they
        were not for it). Dropping those is not a gap."""
        window = self.config.max_disconnection_duration
        limit = now - window
        sessions = self._sessions
        while sessions:
            oldest = next(iter(sessions.values()))
            if oldest.disconnected_at >= limit:
                break
            self._forget(oldest.pid)
        horizon = limit - self.delivery_bound
        if self.keep_since is not None:
            if now > self.keep_until:
                self.keep_since = None
            else:
                horizon = min(horizon, self.keep_since - self.delivery_bound)
        events = self._events
        while events and events[0].time < horizon:
            self._event_bytes -= events.popleft().size

    def restore(
        self, namespace: str, pid: str, recovery_offset: str, now: float
    ) -> tuple[SavedSession, int] | None:
        """Take the session ``pid`` back, with the sequence number the client's
        ``recovery_offset`` names (``missed`` then gives what followed).

        Returns None (the client is told it was not recovered) when the session is
        unknown, for another namespace or expired, or when the recovery offset is of another
        epoch or older than the oldest event kept (a gap we cannot fill).
        """
        self.prune(now)
        session = self._sessions.get(pid)
        if session is None or session.namespace != namespace:
            return None
        if now - session.disconnected_at > self.config.max_disconnection_duration:
            return None
        seq = self.parse_recovery_offset(recovery_offset)
        if seq is None or seq > self.seq:
            return None
        if seq < self.complete_after:
            return None  # events after the client's one may have been dropped: a gap
        self._forget(pid)
        return session, seq

    def missed(self, namespace: str, after: int, rooms: frozenset[str]) -> list[MissedEvent]:
        """The kept events after sequence number ``after`` for a socket in ``rooms`` (its
        own id included), oldest first."""
        if after < self.complete_after:
            logger.warning(
                "recovery: events after %s were dropped (the store's bounds) while a client "
                "recovered; it may miss some",
                self.recovery_offset(after),
            )
        return [e for e in self._events if e.seq > after and e.is_for(namespace, rooms)]


def _strings(value: object) -> set[str]:
    return {v for v in value if isinstance(v, str)} if isinstance(value, list) else set()


def _mapping(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}
