"""The frames a connection's writer sends: one connection's own, or one shared by many."""

from __future__ import annotations

from typing import TypeAlias

import attrs

__all__ = ["OutFrame", "SharedFrame"]


@attrs.define(eq=False, slots=True)
class SharedFrame:
    """One Engine.IO frame sent to many connections, encoded once for all of them.

    The first WebSocket writer that sends it caches the finished WebSocket frame in
    ``wire``; every other recipient writes those same bytes (server frames are unmasked,
    RFC 6455 §5.1, so the bytes are identical for every peer).
    """

    eio: str | bytes
    wire: bytes | None = None

    @classmethod
    def wire_only(cls, wire: bytes) -> SharedFrame:
        """Bytes already in wire form: the rest of a frame a direct write left unsent."""
        return cls(eio=b"", wire=wire)


OutFrame: TypeAlias = str | bytes | SharedFrame
"""What a connection's outbox holds: an Engine.IO frame's text or bytes, or a shared one."""
