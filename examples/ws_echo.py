"""A raw WebSocket echo server on roomcast's own WebSocket transport (for Autobahn|Testsuite).

Every message a client sends comes back unchanged (text as text, binary as binary). It
runs the engine's own path: the HTTP front (``HttpConnection``) reads the upgrade request,
``accept_websocket`` completes the handshake (permessage-deflate with ``--compression``),
and a connection has one reader (``WebSocketTransport.receive_message``) and one writer
draining a bounded ``Outbox`` with ``WebSocketTransport.send``, exactly as a connection
actor does. There is no Engine.IO or Socket.IO on top.

Run: ``python examples/ws_echo.py --host 127.0.0.1 --port 9001 [--compression]``
"""

from __future__ import annotations

import argparse
import logging
import signal
from functools import partial
from typing import Final

import trio
from wsproto.frame_protocol import CloseReason

from roomcast.engine.actors.outbox import Offer, Outbox
from roomcast.engine.errors import TransportClosed
from roomcast.engine.transport.http import HttpConnection
from roomcast.engine.transport.websocket import (
    WebSocketTransport,
    accept_websocket,
)

__all__ = ["serve_ws_echo"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES: Final = 32 * 1024 * 1024
"""Autobahn's case 9 sends messages of up to 16 MiB."""
_HEAD_BYTES: Final = 16_384
_HEAD_TIMEOUT: Final = 10.0
_CLOSE_GRACE: Final = 2.0
_OUTBOX_FRAMES: Final = 4096
_WRITE_BATCH: Final = 512


async def serve_ws_echo(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    compression: bool = False,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the echo until cancelled; ``started`` gets the bound ``(host, port)``.

    Cancellation: open connections are closed forcefully.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()

    async def handle(stream: trio.SocketStream) -> None:
        await _serve_client(stream, max_message_bytes=max_message_bytes, compression=compression)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started((sockname[0], sockname[1]))


async def _serve_client(
    stream: trio.abc.Stream, *, max_message_bytes: int, compression: bool
) -> None:
    try:
        http = HttpConnection(stream=stream, max_head_bytes=_HEAD_BYTES)
        try:
            with trio.fail_after(_HEAD_TIMEOUT):
                request = await http.next_request()
                if request is None:
                    return
                if not request.is_websocket:
                    await http.respond(400, b"WebSocket only\n", close=True)
                    return
                transport = await accept_websocket(
                    stream,
                    http.upgrade_bytes(request),
                    max_message_bytes=max_message_bytes,
                    compression=compression,
                )
        except (TransportClosed, trio.TooSlowError):
            return
        await _echo(transport)
    finally:
        await trio.aclose_forcefully(stream)


async def _echo(transport: WebSocketTransport) -> None:
    """One reader and one writer, as in the engine's connection actor."""
    outbox = Outbox(max_frames=_OUTBOX_FRAMES)
    transport.on_control = outbox.kick
    writer_done = trio.Event()
    code: int = CloseReason.NORMAL_CLOSURE

    async def write_loop(nursery: trio.Nursery) -> None:
        outbox.direct = transport.send_now  # written at once while the writer is idle
        try:
            while True:
                await transport.send(await outbox.receive_batch(_WRITE_BATCH))
        except trio.EndOfChannel:
            pass
        except TransportClosed:
            nursery.cancel_scope.cancel()  # the peer is gone: stop reading too
        finally:
            outbox.direct = None
            writer_done.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_loop, nursery)
            code = await _read_loop(transport, outbox)
            outbox.kick()
            outbox.close()  # the writer drains what is queued (and the close reply)
            with trio.move_on_after(_CLOSE_GRACE):
                await writer_done.wait()
            nursery.cancel_scope.cancel()
    finally:
        outbox.close()
        with trio.move_on_after(_CLOSE_GRACE, shield=True):
            await transport.aclose(code)


async def _read_loop(transport: WebSocketTransport, outbox: Outbox) -> int:
    """Queue every message for the writer until the peer closes; the close code to send
    (1008 when the peer does not read what it gets back)."""
    try:
        while True:
            message = await transport.receive_message()
            if outbox.offer((message,)) is Offer.FULL:  # the peer does not read
                return CloseReason.POLICY_VIOLATION
    except TransportClosed as exc:
        logger.debug("echo connection closed: %s", exc.reason)
    return CloseReason.NORMAL_CLOSURE


async def _main(host: str, port: int, max_message_bytes: int, compression: bool) -> None:
    async with trio.open_nursery() as nursery:
        serve = partial(
            serve_ws_echo, host, port, max_message_bytes=max_message_bytes, compression=compression
        )
        bound = await nursery.start(serve)
        print(f"ws_echo serving on ws://{bound[0]}:{bound[1]}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def main() -> None:
    """Parse the options and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    parser.add_argument(
        "--compression", action="store_true", help="agree on permessage-deflate when offered"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    trio.run(_main, args.host, args.port, args.max_message_bytes, args.compression)


if __name__ == "__main__":
    main()
