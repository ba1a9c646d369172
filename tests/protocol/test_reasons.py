"""The disconnect reasons are Socket.IO's strings, and stay plain strings everywhere."""

from __future__ import annotations

import json

import msgpack

from roomcast.protocol import DisconnectReason

# What handlers, metrics labels and DISCONNECT records have always carried: never change.
WIRE = {
    "TRANSPORT_CLOSE": "transport close",
    "TRANSPORT_ERROR": "transport error",
    "PING_TIMEOUT": "ping timeout",
    "PARSE_ERROR": "parse error",
    "FORCED_CLOSE": "forced close",
    "SERVER_NAMESPACE_DISCONNECT": "server namespace disconnect",
    "CLIENT_NAMESPACE_DISCONNECT": "client namespace disconnect",
    "SERVER_SHUTTING_DOWN": "server shutting down",
    "IO_SERVER_DISCONNECT": "io server disconnect",
    "IO_CLIENT_DISCONNECT": "io client disconnect",
    "SLOW_CONSUMER": "slow consumer",
    "RATE_LIMIT_EXCEEDED": "rate limit exceeded",
    "MESSAGE_TOO_BIG": "message too big",
    "CONNECT_TIMEOUT": "connect timeout",
    "ATTACHMENT_TIMEOUT": "attachment timeout",
    "RECONNECT_FAILED": "reconnect failed",
    "CONNECT_REFUSED": "connect refused",
}


def test_every_reason_keeps_its_string() -> None:
    assert {reason.name: reason.value for reason in DisconnectReason} == WIRE


def test_a_reason_is_its_string_wherever_it_goes() -> None:
    reason = DisconnectReason.PING_TIMEOUT
    assert reason == "ping timeout"
    assert {"ping timeout": 1}[reason] == 1
    assert f"{reason}" == str(reason) == "ping timeout"
    assert json.dumps([reason]) == '["ping timeout"]'
    assert msgpack.unpackb(msgpack.packb(reason)) == "ping timeout"
