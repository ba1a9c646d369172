"""``Handshake``: what a client sent when it connected to a namespace.

It sits below the app-facing objects so that adapters (which describe sockets across
nodes) and the socket itself can both name it.
"""

from __future__ import annotations

import attrs

from roomcast.protocol import JsonValue

__all__ = ["Handshake"]


@attrs.frozen(kw_only=True)
class Handshake:
    """What the client sent when it connected to the namespace.

    Attributes:
        auth: The CONNECT packet's auth payload (``{}`` when none was sent).
        headers: The HTTP request headers, names lower-cased.
        query: The query parameters of the Engine.IO request.
        address: The peer's address, when known.
        time: Trio time of the connection.
    """

    auth: JsonValue
    headers: dict[str, str]
    query: dict[str, str]
    address: str | None
    time: float
