"""Bare Trio contract servers: the bench's "Trio ceiling" rows.

The bench contract (docs/bench-contract.md) with no Socket.IO library: a WebSocket frame
parser that handles only what the load generator sends (masked, unfragmented text frames),
the stdlib ``json`` module, pre-encoded broadcast frames, non-blocking writes. Each one
shows what Trio itself allows for one way of waiting on many sockets, so every bench run
shows how close roomcast comes to it. It is not a reference implementation: no polling,
no fragments, no heartbeat (the throughput and idle scenarios end before the first
ping is due), no checks beyond what the contract's checks need.

Two designs (the argument picks one):

``task``
    One Trio task per connection, waiting on its own socket (``wait_readable``), then
    reading it and doing the work in that task.
``reactor``
    One reactor task waits on an epoll fd (``trio.lowlevel.wait_readable`` on it) and
    reads every ready socket; each connection is still an actor task with its own inbox,
    woken once per read that produced whole frames.

In both, everything one batch of work produces for a connection (acks, deliveries) goes
out in one non-blocking ``send``; only what the socket does not take waits for a drain
task that waits until it is writable.

Run: ``PORT=5000 .venv/bin/python bench/trio_contract.py task|reactor``
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
from typing import Final

import trio

__all__ = ["main"]

_RECV: Final = 65_536
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_HEADER_16: Final = struct.Struct("!BBH")
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_decode_json = json.JSONDecoder().decode


def frame(text: str) -> bytes:
    """One unmasked, final text frame."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65_536:
        return _HEADER_16.pack(0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def unmask(key: bytes, payload: bytes) -> bytes:
    """RFC 6455 §5.3 unmasking as one big-integer XOR (C speed in CPython)."""
    n = len(payload)
    if not n:
        return payload
    mask = int.from_bytes((key * ((n >> 2) + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")


def parse_frames(buf: bytes, out: list[str | None]) -> int:
    """Append the text of every whole frame in ``buf`` to ``out`` (None for a close);
    return how many bytes were used."""
    i, n = 0, len(buf)
    while n - i >= 6:
        b0, b1 = buf[i], buf[i + 1]
        length = b1 & 0x7F
        head = 2
        if length == 126:
            length = (buf[i + 2] << 8) | buf[i + 3]
            head = 4
        elif length == 127:
            if n - i < 14:
                break
            length = int.from_bytes(buf[i + 2 : i + 10], "big")
            head = 10
        start = i + head + 4
        if n - start < length:
            break
        data = unmask(buf[i + head : start], buf[start : start + length])
        i = start + length
        opcode = b0 & 0x0F
        if opcode == 0x1:
            out.append(data.decode())
        elif opcode == 0x8:
            out.append(None)
    return i


class Conn:
    """One client: its socket, its read buffer, its output, its rooms."""

    __slots__ = (
        "closed",
        "draining",
        "fd",
        "inbox",
        "out",
        "pending",
        "pending_write",
        "rooms",
        "sock",
        "task",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.pending = b""
        self.out: list[bytes] = []
        self.rooms: list[str] = []
        self.inbox: list[str | None] = []
        self.task: trio.lowlevel.Task | None = None  # set while the actor waits (reactor)
        self.pending_write = b""  # what a drain task still has to write
        self.draining = False
        self.closed = False


class App:
    """The contract's state: rooms, the connections with output to write, the handshake."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.rooms: dict[str, list[Conn]] = {}
        self.dirty: list[Conn] = []
        self.next_id = 0
        interval = int(os.environ.get("PING_INTERVAL_MS", "25000"))
        timeout = int(os.environ.get("PING_TIMEOUT_MS", "20000"))
        self.open_tail = (
            f'","upgrades":[],"pingInterval":{interval},"pingTimeout":{timeout},'
            '"maxPayload":1000000}'
        )

    def queue(self, conn: Conn, data: bytes) -> None:
        if not conn.out:
            self.dirty.append(conn)
        conn.out.append(data)

    def flush(self) -> None:
        """Write every connection's queued output, one ``send`` each."""
        dirty = self.dirty
        self.dirty = []
        for conn in dirty:
            out = conn.out
            conn.out = []
            if conn.closed:
                continue
            data = out[0] if len(out) == 1 else b"".join(out)
            if conn.draining:
                conn.pending_write += data
                continue
            try:
                sent = conn.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                continue  # the reader finds out
            if sent < len(data):
                conn.draining = True
                conn.pending_write = data[sent:]
                self.nursery.start_soon(self.drain, conn)

    async def drain(self, conn: Conn) -> None:
        """Write what the socket did not take, waiting until it is writable."""
        while conn.draining and not conn.closed:
            await trio.lowlevel.wait_writable(conn.sock)
            try:
                sent = conn.sock.send(conn.pending_write)
            except BlockingIOError:
                continue
            except OSError:
                return
            conn.pending_write = conn.pending_write[sent:]
            if not conn.pending_write:
                conn.draining = False

    async def handshake(self, conn: Conn) -> bool:
        """Read the upgrade request and answer it; then the Engine.IO open packet."""
        head = b""
        while b"\r\n\r\n" not in head:
            await trio.lowlevel.wait_readable(conn.sock)
            try:
                data = conn.sock.recv(_RECV)
            except BlockingIOError:
                continue
            except OSError:
                return False
            if not data:
                return False
            head += data
        end = head.index(b"\r\n\r\n")
        key = b""
        for line in head[:end].split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.next_id += 1
        response = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.queue(conn, response + frame(f'0{{"sid":"t{self.next_id}{self.open_tail}'))
        self.flush()
        conn.pending = head[end + 4 :]
        return True

    def handle(self, conn: Conn, texts: list[str | None]) -> bool:
        """The contract's work for the messages of one read; False at a close frame."""
        for text in texts:
            if text is None or text == "1":
                return False
            if text.startswith("42"):
                bracket = text.index("[")
                ack_id = text[2:bracket]
                name, arg = _decode_json(text[bracket:])
                if name == "echo":
                    if ack_id:
                        self.queue(conn, frame(f"43{ack_id}{_encode_json([arg])}"))
                elif name == "publish":
                    members = self.rooms.get(arg["room"], ())
                    if members:
                        delivery = frame('42["message",' + _encode_json(arg["payload"]) + "]")
                        for member in members:
                            self.queue(member, delivery)
                    if ack_id:
                        self.queue(conn, frame(f"43{ack_id}[]"))
                elif name == "join":
                    self.rooms.setdefault(arg, []).append(conn)
                    conn.rooms.append(arg)
                    if ack_id:
                        self.queue(conn, frame(f"43{ack_id}{_encode_json([arg])}"))
            elif text == "40":
                self.next_id += 1
                self.queue(conn, frame(f'40{{"sid":"s{self.next_id}"}}'))
        self.flush()
        return True

    def close(self, conn: Conn) -> None:
        conn.closed = True
        for name in conn.rooms:
            members = self.rooms.get(name)
            if members is not None:
                members.remove(conn)
                if not members:
                    del self.rooms[name]
        conn.sock.close()


def _read(conn: Conn) -> tuple[list[str | None], bool]:
    """Read the socket until it has no more; return the whole frames and whether it ended."""
    chunks = [conn.pending] if conn.pending else []
    ended = False
    while True:
        try:
            data = conn.sock.recv(_RECV)
        except BlockingIOError:
            break
        except OSError:
            ended = True
            break
        if not data:
            ended = True
            break
        chunks.append(data)
        if len(data) < _RECV:
            break  # drained (level-triggered: a later arrival wakes us again)
    buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    texts: list[str | None] = []
    used = parse_frames(buf, texts) if buf else 0
    conn.pending = buf[used:]
    return texts, ended


# -- one task per connection -------------------------------------------------------------


async def serve_task(app: App, conn: Conn) -> None:
    """The connection's one task: wait on its socket, read, work, write."""
    try:
        if not await app.handshake(conn):
            return
        texts: list[str | None] = []
        conn.pending = conn.pending[parse_frames(conn.pending, texts) :]
        if texts and not app.handle(conn, texts):
            return
        while True:
            await trio.lowlevel.wait_readable(conn.sock)
            texts, ended = _read(conn)
            if (texts and not app.handle(conn, texts)) or ended:
                return
    finally:
        app.close(conn)


# -- one reactor task, connections as actor tasks -----------------------------------------


class Reactor:
    """One task waiting on an epoll fd; it reads ready sockets and wakes their actors."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.conns: dict[int, Conn] = {}

    async def run(self) -> None:
        epoll, conns = self.epoll, self.conns
        while True:
            await trio.lowlevel.wait_readable(epoll.fileno())
            for fd, _ in epoll.poll(0):
                conn = conns.get(fd)
                if conn is None:
                    continue
                texts, ended = _read(conn)
                if ended:
                    texts.append(None)
                    self.forget(conn)
                if texts:
                    conn.inbox += texts
                    task = conn.task
                    if task is not None:
                        conn.task = None
                        trio.lowlevel.reschedule(task)

    def forget(self, conn: Conn) -> None:
        if self.conns.pop(conn.fd, None) is not None:
            self.epoll.unregister(conn.fd)


async def serve_actor(app: App, reactor: Reactor, conn: Conn) -> None:
    """The connection's actor: handshake on its own, then work on what the reactor reads."""
    try:
        if not await app.handshake(conn):
            return
        texts: list[str | None] = []
        conn.pending = conn.pending[parse_frames(conn.pending, texts) :]
        conn.inbox = texts
        reactor.conns[conn.fd] = conn
        reactor.epoll.register(conn.fd, select.EPOLLIN)
        while True:
            if not conn.inbox:
                conn.task = trio.lowlevel.current_task()

                def abort(_: object, conn: Conn = conn) -> trio.lowlevel.Abort:
                    conn.task = None
                    return trio.lowlevel.Abort.SUCCEEDED

                await trio.lowlevel.wait_task_rescheduled(abort)
            texts, conn.inbox = conn.inbox, []
            if not app.handle(conn, texts):
                return
    finally:
        reactor.forget(conn)
        app.close(conn)


async def serve(mode: str, port: int) -> None:
    """Accept connections until SIGTERM."""
    listener = trio.socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            app = App(nursery)
            reactor = Reactor()
            if mode == "reactor":
                nursery.start_soon(reactor.run)
            nursery.start_soon(_accept, app, reactor, mode, listener)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


async def _accept(app: App, reactor: Reactor, mode: str, listener: trio.socket.SocketType) -> None:
    while True:
        raw, _ = await listener.accept()
        sock = socket.socket(fileno=raw.detach())
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(sock)
        if mode == "reactor":
            app.nursery.start_soon(serve_actor, app, reactor, conn)
        else:
            app.nursery.start_soon(serve_task, app, conn)


def main() -> None:
    """``trio_contract.py task|reactor``, port from $PORT."""
    mode = sys.argv[1] if len(sys.argv) > 1 else "task"
    if mode not in ("task", "reactor"):
        raise SystemExit("usage: trio_contract.py task|reactor")
    port = int(os.environ.get("PORT", "5000"))
    print(f"bare Trio contract server ({mode}) on 127.0.0.1:{port}", flush=True)
    trio.run(serve, mode, port)


if __name__ == "__main__":
    main()
