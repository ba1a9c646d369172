"""What the namespace and the server need of a cluster's shared log, without Redis.

The shared log itself (``roomcast.engine.adapters.redis_log``) needs the Redis client;
this module does not, so that a server without a cluster never imports it.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs

from roomcast.engine.recovery import MissedEvent, SavedSession
from roomcast.protocol import LogRecord, encode_record

__all__ = ["AppendOutcome", "ClusterLog", "PreparedRecovery", "encode_records"]


class AppendOutcome(enum.Enum):
    """What became of a broadcast handed to the shared log."""

    DELIVERED = "delivered"
    """In the log, and delivered to this node's sockets."""
    APPENDED = "appended"
    """In the log; this node's sockets get it once its reader catches up (after an outage)."""
    NOT_SENT = "not sent"
    """Never reached Redis: the caller delivers it to this node's sockets only."""
    UNKNOWN = "unknown"
    """Sent, but the connection was lost before the answer: if it reached the log, every
    node (this one included) delivers it when its reader catches up; if not, it is lost."""


def encode_records(records: Iterable[LogRecord], *, max_record_bytes: int) -> bytes:
    """The ``r`` field of an entry holding ``records`` (offsets and epochs are dropped).

    Raises:
        LocalProtocolError: A record cannot be encoded (too large, or a value msgpack
            cannot hold).
    """
    return b"".join(
        encode_record(attrs.evolve(r, offset=0, epoch=""), max_record_bytes=max_record_bytes)
        for r in records
    )


class PreparedRecovery(Protocol):
    """A session taken over for recovery from the shared log, the events it missed read."""

    @property
    def session(self) -> SavedSession:
        """The recovered session (sid, rooms, data)."""
        ...

    async def finish(
        self,
        *,
        rooms: frozenset[str],
        send: Callable[[MissedEvent, str], None],
        join: Callable[[], Awaitable[None]],
    ) -> None:
        """Send the recovered socket the events it missed, then join its rooms, with this
        node's delivery held, so it gets every later event live, and none twice.

        ``rooms`` are the socket's rooms (its own id included), to filter events by;
        ``send`` gets each missed event with its recovery offset.

        Cancellation: some events may be sent; the rooms may not be joined.
        """


class ClusterLog(Protocol):
    """What the namespace, the server and ``history`` need of a cluster's shared ordered
    log (``Adapter.shared_log``); ``redis_log.SharedLog`` is the one roomcast has."""

    @property
    def epoch(self) -> str | None:
        """The log's current epoch, or None before the first connection to it."""
        ...

    async def broadcast(self, data: bytes) -> tuple[AppendOutcome, int]:
        """Append one broadcast entry and wait until this node delivered it; the outcome
        and how many of this node's sockets it reached."""
        ...

    async def append(self, data: bytes) -> bool:
        """Append a connection record and wait until the log has it; False when it did
        not get there, or may not have."""
        ...

    def append_nowait(self, data: bytes) -> bool:
        """Queue a connection record without waiting; False when it could not be queued."""
        ...

    async def open_session(self, session: SavedSession, window: float) -> bool:
        """Keep a new socket's session live in the log's store on this node."""
        ...

    async def update_session(self, session: SavedSession) -> None:
        """Queue the new state (rooms, data) of a session this node holds."""

    async def close_session(self, pid: str) -> None:
        """Forget a session this node holds (its socket left for good)."""

    async def save_session(self, session: SavedSession, ttl: float) -> bool:
        """Turn a live session into a disconnected one kept for ``ttl`` seconds; False when
        it could not be saved."""
        ...

    async def prepare_recovery(
        self,
        namespace: str,
        pid: str,
        recovery_offset: str,
        *,
        now: float,
        max_age: float,
        max_events: int,
    ) -> PreparedRecovery | None:
        """Take over session ``pid`` to recover it from ``recovery_offset`` (what the
        client sent); None when it cannot be recovered."""
        ...

    def delivery_held(self) -> AbstractAsyncContextManager[int]:
        """Hold this node's delivery of the log; gives the last log sequence number
        delivered."""
        ...

    async def history(
        self, namespace: str, room: str, *, last: int | None, after: int | None
    ) -> list[LogRecord]:
        """The room's records in the log: the last ``last``, or every one after ``after``."""
        ...
