"""The protocol package's exceptions: one root, split by who broke the rules."""

from __future__ import annotations

from roomcast.protocol._reasons import DisconnectReason

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Root of every error the sans-I/O protocol layer raises.

    Attributes:
        reason: A short, stable, machine-readable reason. For a Socket.IO
            connection it is the disconnect reason the engine reports
            (``"parse error"`` for anything a peer sent that we cannot accept).
    """

    def __init__(self, message: str, *, reason: str = DisconnectReason.PARSE_ERROR) -> None:
        super().__init__(message)
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """Our own code asked for something the protocol does not allow (a bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow, or over a limit.

    Every decoder in this package raises this, and only this, on bad input.
    """
