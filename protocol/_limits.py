"""Decoder limits: every bound on what a peer may make us decode, with safe defaults."""

from __future__ import annotations

from typing import Final

import attrs

__all__ = ["DEFAULT_LIMITS", "MAX_SAFE_ACK_ID", "Limits"]

MAX_SAFE_ACK_ID: Final = 2**53 - 1
"""Largest ack id: JavaScript clients count ack ids in a double (Number.MAX_SAFE_INTEGER)."""


@attrs.frozen(kw_only=True)
class Limits:
    """Bounds applied by every decoder; exceeding one raises ``RemoteProtocolError``.

    Attributes:
        max_payload_bytes: Largest Engine.IO payload (a polling body, one WebSocket
            message) and largest single binary attachment. Sent to clients as
            ``maxPayload`` in the handshake.
        max_packets_per_payload: Most Engine.IO packets in one polling body.
        max_attachments: Most binary attachments one Socket.IO packet may announce.
        max_ack_id: Largest ack id accepted (0 .. 2**53-1 by default).
        max_nesting_depth: Deepest nesting of arrays/objects in a JSON or msgpack payload.
        max_event_args: Most arguments in one event or ack.
        max_namespace_length: Longest namespace name, in characters.
    """

    max_payload_bytes: int = 1_000_000
    max_packets_per_payload: int = 1_000
    max_attachments: int = 10
    max_ack_id: int = MAX_SAFE_ACK_ID
    max_nesting_depth: int = 32
    max_event_args: int = 1_000
    max_namespace_length: int = 256

    @property
    def max_ack_id_digits(self) -> int:
        """How many decimal digits an ack id may have on the wire."""
        return len(str(self.max_ack_id))


DEFAULT_LIMITS: Final = Limits()
