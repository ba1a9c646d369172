"""A room's timeline, rebuilt from the event log alone (``roomcast replay --timeline``).

`build_timeline` reads records in log order and keeps, for one room of one namespace: a lane
per member (when it was in the room, and when its session was kept, disconnected, until a
recovery), the room's messages and who each was for, disconnects with their reasons,
recoveries (``CONNECT`` records with ``recovered`` true), server starts and stops, crashes,
epochs and the time the server was down. `roomcast.engine.log.timeline_svg` draws it.

What the log says is all it knows: a crash is placed at the last record before the next
start (the log bounds it from below, no more), and a session kept for recovery is shown as
kept only once a recovery took it back (the log does not record a session expiring).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final

import attrs

from roomcast.protocol import LogRecord, RecordKind

__all__ = [
    "MAX_LANES",
    "MAX_MESSAGES",
    "Boundary",
    "BoundaryKind",
    "Epoch",
    "Gap",
    "Lane",
    "Mark",
    "MarkKind",
    "Message",
    "Span",
    "SpanKind",
    "Timeline",
    "TimelineBuilder",
    "build_timeline",
]

MAX_LANES: Final = 200
"""Members drawn (in order of appearance); more are counted in `Timeline.lanes_not_drawn`."""
MAX_MESSAGES: Final = 2000
"""Messages drawn, with their marks on the lanes; more are counted in
`Timeline.messages_not_drawn` (narrow the window with ``--since``/``--until``)."""


class SpanKind(enum.Enum):
    """What a stretch of a lane means."""

    MEMBER = "member"
    """In the room: the room's messages are for it."""
    AWAY = "away"
    """Disconnected (or the server crashed) with its session kept, until a recovery took
    it back: the messages of that time were replayed to it then."""


@attrs.frozen(kw_only=True)
class Span:
    """One stretch of a lane, from ``start`` to ``end`` (seconds since the Unix epoch)."""

    kind: SpanKind
    start: float
    end: float
    started_by: str
    ended_by: str


class MarkKind(enum.Enum):
    """A point on a lane."""

    DELIVERED = "delivered"
    """A room message while it was a member."""
    EXCLUDED = "excluded"
    """A room message it was a member for, but excluded from (``except``, or its own
    ``socket.broadcast``)."""
    MISSED = "missed"
    """A room message while it was away with its session kept (replayed at its recovery)."""
    DISCONNECT = "disconnect"
    """It left the namespace; the label is the reason."""
    RECOVERED = "recovered"
    """It came back recovered (same sid, its rooms and missed messages)."""


@attrs.frozen(kw_only=True)
class Mark:
    """A point on a lane: ``kind`` at ``time``, with the record's offset and a label."""

    kind: MarkKind
    time: float
    offset: int
    label: str


@attrs.frozen(kw_only=True)
class Lane:
    """One member of the room (its sid), its spans and marks in time order."""

    sid: str
    spans: tuple[Span, ...]
    marks: tuple[Mark, ...]


@attrs.frozen(kw_only=True)
class Message:
    """A message to the room (or to the whole namespace, ``whole_namespace``)."""

    time: float
    offset: int
    event: str
    sender: str | None
    whole_namespace: bool
    members: int
    """Members of the room when it was recorded."""


class BoundaryKind(enum.Enum):
    """A moment that concerns every lane."""

    SERVER_START = "start"
    SERVER_STOP = "stop"
    CRASH = "crash"
    """The server stopped without a ``SERVER_STOP``: placed at its last record."""
    EPOCH = "epoch"
    """A new epoch: continuity with what came before is not guaranteed."""
    DAMAGE = "damage"
    """Damaged records were skipped here (after the last readable record)."""


@attrs.frozen(kw_only=True)
class Boundary:
    """A moment for every lane, with a label for humans."""

    kind: BoundaryKind
    time: float
    label: str


@attrs.frozen(kw_only=True)
class Gap:
    """A time the server was down (between a crash or stop and the next start)."""

    start: float
    end: float
    crashed: bool
    label: str


@attrs.frozen(kw_only=True)
class Epoch:
    """The records of one epoch run from ``start`` to ``end``."""

    epoch: str
    start: float
    end: float


@attrs.frozen(kw_only=True)
class Timeline:
    """A room over time (see the module docstring). Times are seconds since the Unix epoch."""

    namespace: str
    room: str
    start: float
    end: float
    lanes: tuple[Lane, ...]
    messages: tuple[Message, ...]
    boundaries: tuple[Boundary, ...]
    gaps: tuple[Gap, ...]
    epochs: tuple[Epoch, ...]
    records: int
    """Records of the room (and of its members' connects and disconnects) read."""
    messages_not_drawn: int
    lanes_not_drawn: int


@attrs.define(eq=False)
class _LaneState:
    sid: str
    drawn: bool
    spans: list[Span] = attrs.Factory(list)
    marks: list[Mark] = attrs.Factory(list)
    member_since: tuple[float, str] | None = None
    kept_since: tuple[float, str] | None = None
    """Disconnected with its session (holding this room) kept: since when, and why."""

    def open(self, time: float, why: str) -> None:
        if self.member_since is None:
            self.member_since = (time, why)

    def close(self, time: float, why: str) -> None:
        if self.member_since is not None:
            start, started_by = self.member_since
            self._span(SpanKind.MEMBER, start, time, started_by, why)
            self.member_since = None

    def recovered(self, time: float) -> None:
        if self.kept_since is not None:
            start, why = self.kept_since
            self._span(SpanKind.AWAY, start, time, why, "recovered")
            self.kept_since = None

    def mark(self, kind: MarkKind, time: float, offset: int, label: str) -> None:
        if self.drawn:
            self.marks.append(Mark(kind=kind, time=time, offset=offset, label=label))

    def _span(self, kind: SpanKind, start: float, end: float, started: str, ended: str) -> None:
        if self.drawn:
            self.spans.append(
                Span(kind=kind, start=start, end=end, started_by=started, ended_by=ended)
            )


def _info(record: LogRecord, index: int) -> dict[str, object]:
    value = record.args[index] if len(record.args) > index else None
    return dict(value) if isinstance(value, dict) else {}


def _rooms(info: dict[str, object]) -> list[object]:
    rooms = info.get("rooms")
    return rooms if isinstance(rooms, list) else []


@attrs.define(eq=False)
class TimelineBuilder:
    """Feed it every record of a window in log order (`add`), damage as it is met
    (`damage`), then `build`."""

    namespace: str
    room: str
    _lanes: dict[str, _LaneState] = attrs.Factory(dict)
    _messages: list[Message] = attrs.Factory(list)
    _boundaries: list[Boundary] = attrs.Factory(list)
    _gaps: list[Gap] = attrs.Factory(list)
    _epochs: list[Epoch] = attrs.Factory(list)
    _first: float | None = None
    _last: float | None = None
    _running: bool = False
    """A server start was read with no stop after it yet (a start now means a crash)."""
    _stopped_at: float | None = None
    _records: int = 0
    _messages_total: int = 0

    def _lane(self, sid: str) -> _LaneState:
        lane = self._lanes.get(sid)
        if lane is None:
            lane = _LaneState(sid=sid, drawn=len(self._lanes) < MAX_LANES)
            self._lanes[sid] = lane
        return lane

    def add(self, record: LogRecord) -> None:
        """Take the next record of the log."""
        time = record.time
        if self._first is None:
            self._first = time
        if not self._epochs or self._epochs[-1].epoch != record.epoch:
            if self._epochs and self._last is not None:
                self._epochs[-1] = attrs.evolve(self._epochs[-1], end=self._last)
            self._epochs.append(Epoch(epoch=record.epoch, start=time, end=time))
        if record.namespace == "":
            self._server(record)
        elif record.namespace == self.namespace:
            if record.room == self.room:
                self._room(record)
            elif record.room == "":
                self._namespace(record)
        self._last = time
        self._epochs[-1] = attrs.evolve(self._epochs[-1], end=time)

    def damage(self, description: str) -> None:
        """Damaged records were met after the last record added."""
        at = self._last if self._last is not None else 0.0
        self._boundaries.append(Boundary(kind=BoundaryKind.DAMAGE, time=at, label=description))

    def _end_run(self, time: float, why: str) -> None:
        for lane in self._lanes.values():
            lane.close(time, why)

    def _server(self, record: LogRecord) -> None:
        kind, time = record.kind, record.time
        if kind in (RecordKind.SERVER_START, RecordKind.EPOCH):
            if self._running and self._last is not None:
                # No SERVER_STOP: the previous run crashed after its last record. Every
                # member's session is kept from there (a restart saves them all).
                crashed = self._last
                for lane in self._lanes.values():
                    if lane.member_since is not None:
                        lane.close(crashed, "crash")
                        lane.kept_since = (crashed, "crash")
                self._boundaries.append(
                    Boundary(
                        kind=BoundaryKind.CRASH,
                        time=crashed,
                        label="the server stopped without a SERVER_STOP record (crash) after"
                        " its last record",
                    )
                )
                self._gaps.append(
                    Gap(start=crashed, end=time, crashed=True, label="server down (crash)")
                )
            elif self._stopped_at is not None:
                self._gaps.append(
                    Gap(start=self._stopped_at, end=time, crashed=False, label="server stopped")
                )
            self._running, self._stopped_at = kind is RecordKind.SERVER_START, None
        if kind is RecordKind.SERVER_START:
            info = _info(record, 0)
            label = f"server start (pid {info.get('pid', '?')}, fsync {info.get('fsync', '?')})"
            self._boundaries.append(
                Boundary(kind=BoundaryKind.SERVER_START, time=time, label=label)
            )
        elif kind is RecordKind.SERVER_STOP:
            self._end_run(time, "server stop")
            self._running, self._stopped_at = False, time
            self._boundaries.append(
                Boundary(kind=BoundaryKind.SERVER_STOP, time=time, label="server stop")
            )
        elif kind is RecordKind.EPOCH:
            self._end_run(time, "new epoch")
            for lane in self._lanes.values():
                lane.kept_since = None  # no recovery crosses an epoch
            info = _info(record, 0)
            reasons = info.get("reasons")
            why = "; ".join(map(str, reasons)) if isinstance(reasons, list) and reasons else "-"
            self._boundaries.append(
                Boundary(
                    kind=BoundaryKind.EPOCH,
                    time=time,
                    label=f"new epoch {record.epoch} (after {info.get('previous') or '-'}): {why}",
                )
            )

    def _room(self, record: LogRecord) -> None:
        self._records += 1
        sender = record.sender
        if record.kind is RecordKind.JOIN and sender is not None:
            lane = self._lane(sender)
            lane.kept_since = None
            lane.open(record.time, "join")
        elif record.kind is RecordKind.LEAVE and sender is not None:
            self._lane(sender).close(record.time, "leave")
        elif record.kind is RecordKind.MESSAGE:
            self._message(record, whole_namespace=False)

    def _namespace(self, record: LogRecord) -> None:
        sender, time = record.sender, record.time
        if record.kind is RecordKind.MESSAGE and sender is None:
            self._records += 1
            self._message(record, whole_namespace=True)
        elif record.kind is RecordKind.CONNECT and sender is not None:
            info = _info(record, 1)
            if info.get("recovered") is not True:
                return
            got_room = self.room in _rooms(info)
            if not got_room and sender not in self._lanes:
                return
            self._records += 1
            lane = self._lane(sender)
            lane.recovered(time)
            lane.mark(MarkKind.RECOVERED, time, record.offset, "recovered")
            if got_room:
                lane.open(time, "recovered")
        elif record.kind is RecordKind.DISCONNECT and sender is not None:
            known = self._lanes.get(sender)
            if known is None:
                return
            self._records += 1
            reason = record.args[0] if record.args and isinstance(record.args[0], str) else "?"
            kept = self.room in _rooms(_info(record, 1))
            known.close(time, f"disconnect: {reason}")
            if kept:
                known.kept_since = (time, f"disconnect: {reason}")
            label = f"{reason}, session kept" if kept else reason
            known.mark(MarkKind.DISCONNECT, time, record.offset, label)

    def _message(self, record: LogRecord, *, whole_namespace: bool) -> None:
        self._messages_total += 1
        if len(self._messages) >= MAX_MESSAGES:
            return
        members = [lane for lane in self._lanes.values() if lane.member_since is not None]
        event = record.event or "?"
        self._messages.append(
            Message(
                time=record.time,
                offset=record.offset,
                event=event,
                sender=record.sender,
                whole_namespace=whole_namespace,
                members=len(members),
            )
        )
        excluded = set(record.exclude)
        for lane in members:
            kind = MarkKind.EXCLUDED if lane.sid in excluded else MarkKind.DELIVERED
            lane.mark(kind, record.time, record.offset, event)
        for lane in self._lanes.values():
            if lane.kept_since is not None and lane.member_since is None:
                lane.mark(MarkKind.MISSED, record.time, record.offset, event)

    def build(self) -> Timeline:
        """The timeline of what was added (members still in the room end at the last
        record)."""
        start = self._first if self._first is not None else 0.0
        end = self._last if self._last is not None else start
        lanes = []
        for state in self._lanes.values():
            if not state.drawn:
                continue
            state.close(end, "end of the log")
            lanes.append(Lane(sid=state.sid, spans=tuple(state.spans), marks=tuple(state.marks)))
        return Timeline(
            namespace=self.namespace,
            room=self.room,
            start=start,
            end=end,
            lanes=tuple(lanes),
            messages=tuple(self._messages),
            boundaries=tuple(sorted(self._boundaries, key=lambda b: b.time)),
            gaps=tuple(self._gaps),
            epochs=tuple(self._epochs),
            records=self._records,
            messages_not_drawn=self._messages_total - len(self._messages),
            lanes_not_drawn=len(self._lanes) - len(lanes),
        )


def build_timeline(records: Iterable[LogRecord], namespace: str, room: str) -> Timeline:
    """The timeline of ``room`` in ``namespace`` from ``records`` (every record of a
    window of the log, in log order: the room's, its namespace's and the server's)."""
    builder = TimelineBuilder(namespace=namespace, room=room)
    for record in records:
        builder.add(record)
    return builder.build()
