"""The Trio engine: transports, actors, supervisor, event log, adapters, client and CLI."""

from __future__ import annotations

from roomcast.engine.config import Config
from roomcast.engine.errors import (
    AckError,
    ConnectionLostError,
    ConnectRefusedError,
    EngineError,
    SlowConsumerError,
    TransportClosed,
)
from roomcast.engine.namespace import BroadcastAckResult, BroadcastOperator, Namespace
from roomcast.engine.server import Server
from roomcast.engine.socket import Handshake, Socket

__all__ = [
    "AckError",
    "BroadcastAckResult",
    "BroadcastOperator",
    "Config",
    "ConnectRefusedError",
    "ConnectionLostError",
    "EngineError",
    "Handshake",
    "Namespace",
    "Server",
    "Socket",
    "SlowConsumerError",
    "TransportClosed",
]
