"""Fuzz targets: every decoder the server runs on peer input, and its HTTP and WebSocket
fronts. Each target takes bytes and may fail only in the documented way; anything else
is a bug (a decoder may raise only RemoteProtocolError on bad input). Shared by tests/fuzz
(short hypothesis runs in CI) and bench/fuzz_long.py (long hypothesis and atheris runs).
"""

from __future__ import annotations

import contextlib
from typing import Final

import trio
import trio.testing

from roomcast.engine import Config, Server, Socket
from roomcast.engine.errors import TransportClosed
from roomcast.engine.log import LogConfig
from roomcast.engine.transport.websocket import accept_websocket
from roomcast.protocol import (
    DEFAULT_LIMITS,
    JSON_PARSER,
    MSGPACK_PARSER,
    EioPacketType,
    JsonValue,
    Limits,
    Parser,
    RecordReader,
    RemoteProtocolError,
    SioServerConnection,
    decode_handshake,
    decode_payload,
    decode_record,
    decode_ws_frame,
    scan,
)
from roomcast.protocol._json import loads

__all__ = [
    "FRAME_SEPARATOR",
    "SMALL_LIMITS",
    "TARGETS",
    "eio_frame",
    "eio_handshake",
    "eio_payload",
    "http_front",
    "json_text",
    "log_records",
    "sio_json_stream",
    "sio_msgpack_stream",
    "split_frames",
    "websocket_stream",
]

SMALL_LIMITS: Final = Limits(
    max_payload_bytes=4096,
    max_packets_per_payload=16,
    max_attachments=4,
    max_nesting_depth=8,
    max_event_args=16,
    max_namespace_length=32,
)
"""Small limits, so that fuzzing reaches every bound with short inputs."""

FRAME_SEPARATOR: Final = b"\x00\xff"
"""Splits a fuzz input into WebSocket messages (a part starting with ``b`` is binary)."""

_HTTP_DEADLINE: Final = 5.0


def split_frames(data: bytes) -> list[str | bytes]:
    """Cut an input into a sequence of Engine.IO frames: text (``t...``, decoded with
    replacement, as wsproto only hands us valid text) or binary (``b...``)."""
    frames: list[str | bytes] = []
    for part in data.split(FRAME_SEPARATOR):
        if part[:1] == b"b":
            frames.append(part[1:])
        else:
            frames.append(part[1:].decode("utf-8", "replace"))
    return frames


def eio_frame(data: bytes) -> None:
    """``decode_ws_frame`` on text and on bytes."""
    for frame in (data, data.decode("utf-8", "replace")):
        for limits in (DEFAULT_LIMITS, SMALL_LIMITS):
            with contextlib.suppress(RemoteProtocolError):
                decode_ws_frame(frame, limits)


def eio_payload(data: bytes) -> None:
    """``decode_payload`` (a polling body) on bytes and text."""
    for body in (data, data.decode("utf-8", "replace")):
        for limits in (DEFAULT_LIMITS, SMALL_LIMITS):
            with contextlib.suppress(RemoteProtocolError):
                decode_payload(body, limits)


def eio_handshake(data: bytes) -> None:
    """``decode_handshake`` (the client reading a server's OPEN packet)."""
    try:
        decode_handshake(decode_ws_frame(b"0" + data if data[:1] != b"0" else data))
        decode_handshake(decode_ws_frame("0" + data.decode("utf-8", "replace")))
    except RemoteProtocolError:
        pass


def _sio_stream(parser: Parser, data: bytes) -> None:
    """The server's whole decode path for one connection: Engine.IO frame, Socket.IO
    decoder (with attachments), then the namespace state machine."""
    for limits in (DEFAULT_LIMITS, SMALL_LIMITS):
        decoder = parser.decoder(limits)
        state = SioServerConnection(limits)
        for frame in split_frames(data):
            try:
                packet = decode_ws_frame(frame, limits)
                if packet.type is not EioPacketType.MESSAGE:
                    continue
                sio = decoder.receive(packet.data)
                if sio is not None:
                    state.receive(sio)
            except RemoteProtocolError:
                break  # the connection would close here


def sio_json_stream(data: bytes) -> None:
    """Socket.IO with the default JSON parser (see ``_sio_stream``)."""
    _sio_stream(JSON_PARSER, data)


def sio_msgpack_stream(data: bytes) -> None:
    """Socket.IO with the msgpack parser (see ``_sio_stream``)."""
    _sio_stream(MSGPACK_PARSER, data)


def json_text(data: bytes) -> None:
    """The strict JSON reader (the JSON parser's core)."""
    text = data.decode("utf-8", "replace")
    for start in (0, min(2, len(text))):
        with contextlib.suppress(RemoteProtocolError):
            loads(text, start, max_depth=8)


def log_records(data: bytes) -> None:
    """The event-log record decoders: one record, a stream, and the recovery scan."""
    for max_bytes in (64, 4096):
        with contextlib.suppress(RemoteProtocolError):
            decode_record(data, max_record_bytes=max_bytes)
        reader = RecordReader(max_record_bytes=max_bytes)
        try:
            reader.feed(data)
            while reader.next_record() is not None:
                pass
            reader.finish()
        except RemoteProtocolError:
            pass
        scan(data, max_record_bytes=max_bytes)


async def websocket_stream(data: bytes, *, compression: bool = False) -> None:
    """Bytes after a WebSocket handshake, into the server's ``WebSocketTransport``: it
    returns messages within the size bound or raises ``TransportClosed``, nothing else."""
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
    client, server = trio.testing.memory_stream_pair()
    limit = 2048
    with trio.fail_after(_HTTP_DEADLINE):
        transport = await accept_websocket(
            server, upgrade, max_message_bytes=limit, compression=compression
        )
        await client.receive_some()
        await client.send_all(data)
        await client.send_eof()
        try:
            while True:
                message = await transport.receive_message()
                assert len(message) <= limit
        except TransportClosed:
            pass
        assert len(transport.control) <= 18  # 16 pongs, a close reply, a close


def build_fuzz_server() -> Server:
    """A small app for the HTTP-front target."""
    server = Server(
        config=Config(
            request_header_timeout=1.0,
            websocket_handshake_timeout=1.0,
            log=LogConfig(enabled=False),
        ),
        static_dirs={},
    )

    @server.on("echo")
    async def echo(socket: Socket, *args: JsonValue) -> tuple[JsonValue, ...]:
        await trio.lowlevel.checkpoint()
        return args

    return server


async def http_front(data: bytes, server: Server | None = None) -> None:
    """Bytes from a client into ``Server.serve_stream``: it must end by itself (answer,
    close) without raising, and the server must keep serving."""
    own = server is None
    server = server or build_fuzz_server()
    async with trio.open_nursery() as nursery:
        if own:
            await nursery.start(server.supervisor.run)
        client, stream = trio.testing.memory_stream_pair()
        with trio.fail_after(_HTTP_DEADLINE):
            async with trio.open_nursery() as serving:
                serving.start_soon(server.serve_stream, stream)
                for part in data.split(FRAME_SEPARATOR):
                    try:
                        await client.send_all(part)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    await trio.testing.wait_all_tasks_blocked()
                # Close our side; the server must finish (sessions end with the stream).
                await trio.aclose_forcefully(client)
                for conn in list(server.connections.values()):
                    conn.close("transport close")
        if own:
            nursery.cancel_scope.cancel()


TARGETS: Final = {
    "eio_frame": eio_frame,
    "eio_payload": eio_payload,
    "eio_handshake": eio_handshake,
    "sio_json": sio_json_stream,
    "sio_msgpack": sio_msgpack_stream,
    "json": json_text,
    "log": log_records,
}
"""The synchronous targets by name (the async ones run under ``trio.run``)."""
