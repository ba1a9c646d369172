"""The Trio engine: transports, actors, supervisor, event log, adapters, client and CLI."""

from __future__ import annotations

from roomcast.engine.client import Client, open_client
from roomcast.engine.client_config import ClientConfig
from roomcast.engine.config import Config
from roomcast.engine.errors import (
    AckError,
    ConnectionFailedError,
    ConnectionLostError,
    ConnectRefusedError,
    EngineError,
    EventOverrunError,
    HandlerError,
    NamespaceDisconnected,
    TransportClosed,
)
from roomcast.engine.handshake import Handshake
from roomcast.engine.namespace import BroadcastAckResult, BroadcastOperator, Namespace
from roomcast.engine.recovery import RecoveryConfig
from roomcast.engine.server import Server
from roomcast.engine.socket import Socket

__all__ = [
    "AckError",
    "BroadcastAckResult",
    "BroadcastOperator",
    "Client",
    "ClientConfig",
    "Config",
    "ConnectionFailedError",
    "ConnectRefusedError",
    "ConnectionLostError",
    "EngineError",
    "EventOverrunError",
    "HandlerError",
    "Handshake",
    "Namespace",
    "NamespaceDisconnected",
    "RecoveryConfig",
    "Server",
    "Socket",
    "TransportClosed",
    "open_client",
]
