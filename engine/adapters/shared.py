"""What the namespace and the server need of a cluster's shared log, without Redis.

The shared log itself (``roomcast.engine.adapters.redis_log``) needs the Redis client;
this module does not, so that a server without a cluster never imports it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from roomcast.protocol import LogRecord, encode_record

__all__ = ["AppendOutcome", "encode_records"]


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
