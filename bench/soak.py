"""Soak: thousands of clients connect, join, publish and drop at random, with faults.

Runs a roomcast server in a child process (on 127.0.0.1) and drives it from this one.
Clients come and go for ``--duration`` seconds, ``--clients`` at a time; each joins a few
of ``--rooms`` rooms, publishes (with acks), reads what its rooms get, and leaves in one
of several ways, a share of them hostile (the faults below). The app appends every join,
leave and message to an event log. At the end every client is gone, and the server's
own figures are compared with those taken before the first client:

- tasks (the whole Trio task tree) and open file descriptors must be back where they
  were, and the connection count at zero;
- resident memory may not grow by more than ``--rss-bound-mb`` (the allocators keep
  some of the peak's memory: the first 10-minute run grew 86 MiB with +4,400 live
  objects), and live Python objects by no more than ``--objects-bound``;
- the event log, read back after the server stopped, verifies (``verify_log``) and holds
  every message the server acknowledged.

Faults: an abrupt TCP reset, a WebSocket framing violation, a malformed Engine.IO or
Socket.IO packet, a message over the payload limit, announced attachments that never
come, a client that stops reading (slow consumer), a client that stops answering pings,
a half-open HTTP handshake (slowloris), and a connection that says nothing at all.

Usage (docs/hardening.md)::

    python bench/soak.py --duration 600 --clients 2000
    python bench/soak.py --duration 30 --clients 200        # a quick look

It prints a JSON report and exits non-zero if a check failed. Everything runs on
127.0.0.1; the request loops are bounded by the duration.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Final

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roomcast.engine import Config, Server, Socket  # noqa: E402
from roomcast.engine.log.config import LogConfig  # noqa: E402
from roomcast.engine.log.reader import iter_records, verify_log  # noqa: E402
from roomcast.protocol import JsonValue  # noqa: E402

SOAK_CONFIG: Final = Config(
    log=LogConfig(enabled=False),  # the server process sets its own directory
    ping_interval=5.0,
    ping_timeout=5.0,
    connect_timeout=5.0,
    attachment_timeout=2.0,
    request_header_timeout=3.0,
    websocket_handshake_timeout=3.0,
    outbox_size=256,
    max_events_per_second=200.0,
    max_events_burst=400,
    close_grace=1.0,
)
FAULTS: Final = (
    "reset",
    "framing",
    "bad_packet",
    "too_big",
    "no_attachment",
    "stop_reading",
    "no_pong",
    "half_open",
    "silent",
)
_SETTLE: Final = float(os.environ.get("SOAK_SETTLE", "30"))


# --------------------------------------------------------------------------- server side


def process_figures() -> dict[str, int]:
    """This process's memory, descriptors and Trio tasks."""
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * resource.getpagesize()

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    return {
        "rss_bytes": rss,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": count(root) if root is not None else 0,
        "objects": len(gc.get_objects()),
    }


def build_soak_server(log_dir: str) -> tuple[Server, Counter[str]]:
    """The soak app: rooms and publishing with acks; the server's own event log records
    every connect, join, leave, message and disconnect."""
    config = attrs.evolve(
        SOAK_CONFIG, log=LogConfig(directory=log_dir, fsync="interval", segment_bytes=8 << 20)
    )
    server = Server(config=config)
    counts: Counter[str] = Counter()

    @server.on("join")
    async def join(socket: Socket, room: JsonValue) -> bool:
        name = str(room)
        await socket.join(name)
        return True

    @server.on("leave")
    async def leave(socket: Socket, room: JsonValue) -> bool:
        name = str(room)
        await socket.leave(name)
        return True

    @server.on("publish")
    async def publish(socket: Socket, room: JsonValue, text: JsonValue) -> int:
        name = str(room)
        counts["published"] += 1
        delivered = await server.to(name).emit("msg", text)
        counts["delivered"] += delivered
        return delivered

    @server.on("stats")
    async def stats(socket: Socket) -> JsonValue:
        gc.collect()
        figures: dict[str, JsonValue] = dict(process_figures())
        figures["connections"] = len(server.connections)
        figures["rooms_running"] = server.supervisor.rooms_running
        figures.update(counts)
        await trio.lowlevel.checkpoint()
        return figures

    @server.on("disconnect")
    async def gone(socket: Socket, reason: str) -> None:
        counts[f"disconnect: {reason}"] += 1
        await trio.lowlevel.checkpoint()

    return server, counts


async def run_server(port: int, log_dir: str) -> None:
    """The child process: serve until SIGTERM (a clean shutdown closes the log)."""
    server, _ = build_soak_server(log_dir)
    async with trio.open_nursery() as nursery:
        host, bound = await nursery.start(server.serve, "127.0.0.1", port)
        print(f"READY {host} {bound}", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- client side


@attrs.define
class Totals:
    """What the clients did."""

    sessions: int = 0
    connect_failures: int = 0
    published: int = 0
    acked: int = 0
    received: int = 0
    faults: Counter[str] = attrs.field(factory=Counter)
    endings: Counter[str] = attrs.field(factory=Counter)


def _mask(payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    if n == 0:
        return key
    repeated = (key * (n // 4 + 1))[:n]
    return key + (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        n, "big"
    )


def raw_frame(opcode: int, payload: bytes, *, rsv: int = 0, fin: bool = True) -> bytes:
    """A masked client frame built by hand (for the framing faults)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65_536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    return head + _mask(payload)


@attrs.define(eq=False)
class Client:
    """A Socket.IO client on a raw WebSocket (wsproto), enough for the soak."""

    stream: trio.SocketStream
    ws: WSConnection
    answer_pings: bool = True
    reading: bool = True
    acks: dict[int, trio.Event] = attrs.field(factory=dict)
    answers: dict[int, str] = attrs.field(factory=dict)
    next_id: int = 1
    received: int = 0
    closed: trio.Event = attrs.field(factory=trio.Event)
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    close_info: str = "EOF"
    connected: trio.Event = attrs.field(factory=trio.Event)

    async def send(self, text: str) -> None:
        await self.send_raw(self.ws.send(TextMessage(data=text)))

    async def send_raw(self, data: bytes) -> None:
        async with self.lock:
            await self.stream.send_all(data)

    async def pump(self) -> None:
        """Read until the connection ends (answering Engine.IO pings)."""
        try:
            while True:
                if not self.reading:
                    await trio.sleep_forever()
                data = await self.stream.receive_some(65_536)
                if not data:
                    return
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, TextMessage):
                        await self._on_text(event.data)
                    elif isinstance(event, BytesMessage):
                        self.received += 1
                    elif isinstance(event, Ping):
                        await self.send_raw(self.ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self.close_info = f"{event.code} {event.reason}"
                        if self.ws.state is ConnectionState.REMOTE_CLOSING:
                            await self.send_raw(self.ws.send(event.response()))
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
            return
        finally:
            self.closed.set()
            for waiter in self.acks.values():
                waiter.set()

    async def _on_text(self, text: str) -> None:
        if text == "2":
            if self.answer_pings:
                await self.send("3")
        elif text.startswith("43"):
            bracket = text.index("[")
            ack_id = int(text[2:bracket])
            waiter = self.acks.pop(ack_id, None)
            if waiter is not None:
                self.answers[ack_id] = text[bracket:]
                waiter.set()
        elif text.startswith("42"):
            self.received += 1
        elif text.startswith("40"):
            self.connected.set()

    async def connect(self) -> bool:
        """CONNECT to ``/``; True once accepted (emits before that are an error)."""
        await self.send("40")
        with trio.move_on_after(10):
            await self.connected.wait()
        return self.connected.is_set()

    async def call(self, event: str, *args: JsonValue) -> bool:
        """Emit with an ack; True when answered."""
        ack_id = self.next_id
        self.next_id += 1
        waiter = self.acks[ack_id] = trio.Event()
        body = json.dumps([event, *args], separators=(",", ":"))
        await self.send(f"42{ack_id}{body}")
        with trio.move_on_after(10):
            await waiter.wait()
        return self.answers.pop(ack_id, None) is not None


async def open_client(host: str, port: int) -> Client:
    stream = await trio.open_tcp_stream(host, port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(
        ws.send(Request(host=f"{host}:{port}", target="/socket.io/?EIO=4&transport=websocket"))
    )
    handshake = ""
    while not handshake:
        data = await stream.receive_some(65_536)
        if not data:
            raise ConnectionError("closed during the handshake")
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, RejectConnection):
                raise ConnectionError(f"refused: {event.status_code}")
            if isinstance(event, TextMessage):
                handshake = event.data
            elif not isinstance(event, AcceptConnection):
                raise ConnectionError(f"unexpected {event!r}")
    client = Client(stream=stream, ws=ws)
    return client


def _reset(stream: trio.SocketStream) -> None:
    """Close with a TCP RST (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def one_session(
    host: str,
    port: int,
    rooms: int,
    fault_rate: float,
    publish_interval: float,
    deadline: float,
    totals: Totals,
) -> None:
    """One client's life: connect, join, publish, read, leave (or misbehave)."""
    rng = random.Random()
    fault = rng.choice(FAULTS) if rng.random() < fault_rate else None
    if fault in ("half_open", "silent"):
        totals.faults[fault] += 1
        stream = await trio.open_tcp_stream(host, port)
        if fault == "half_open":
            await stream.send_all(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHo")
        with trio.move_on_after(SOAK_CONFIG.request_header_timeout + 5):
            with contextlib.suppress(trio.BrokenResourceError):
                while await stream.receive_some(4096):
                    pass
        await trio.aclose_forcefully(stream)
        return
    try:
        client = await open_client(host, port)
    except (OSError, ConnectionError, trio.BrokenResourceError):
        totals.connect_failures += 1
        return
    totals.sessions += 1
    ending = "clean"
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.pump)
            if not await client.connect():
                raise trio.BrokenResourceError("not connected")
            mine = rng.sample(range(rooms), rng.randint(1, 3))
            for room in mine:
                await client.call("join", f"room-{room}")
            life = min(rng.expovariate(1 / 20), deadline - trio.current_time())
            end = trio.current_time() + max(life, 0.5)
            if fault == "no_pong":
                client.answer_pings = False
            if fault == "stop_reading":
                client.reading = False
            while trio.current_time() < end and not client.closed.is_set():
                await trio.sleep(rng.uniform(0.5, 2 * publish_interval - 0.5))
                if client.closed.is_set():
                    break
                room = rng.choice(mine)
                totals.published += 1
                text = f"m{rng.getrandbits(32):x}"
                if await client.call("publish", f"room-{room}", text):
                    totals.acked += 1
            if fault == "reset":
                ending = "reset"
                _reset(client.stream)
            elif fault in ("framing", "bad_packet", "too_big", "no_attachment"):
                ending = fault
                payload = {
                    "framing": raw_frame(0x1, b"42", rsv=2),
                    "bad_packet": raw_frame(0x1, b'42["publish",'),
                    "too_big": raw_frame(0x2, b"\x00" * 1_000_001),
                    "no_attachment": raw_frame(0x1, b'451-["publish",{"_placeholder":true}]'),
                }[fault]
                with contextlib.suppress(trio.BrokenResourceError):
                    await client.send_raw(payload)
                with trio.move_on_after(15):
                    await client.closed.wait()
            elif fault in ("stop_reading", "no_pong"):
                ending = fault
                with trio.move_on_after(20):
                    await client.closed.wait()
            elif rng.random() < 0.5:
                if rng.random() < 0.5:
                    await client.call("leave", f"room-{mine[0]}")
                await client.send("41")
                await client.send_raw(client.ws.send(CloseConnection(code=1000)))
                with trio.move_on_after(5):
                    await client.closed.wait()
            else:
                ending = "drop"
            if fault is not None:
                totals.faults[fault] += 1
            nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError, LocalProtocolError):
        ending = "broken"
    finally:
        totals.received += client.received
        totals.endings[ending] += 1
        if client.stream.socket.fileno() != -1:
            await trio.aclose_forcefully(client.stream)


async def server_stats(host: str, port: int) -> dict[str, int]:
    client = await open_client(host, port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.pump)
        if not await client.connect():
            raise RuntimeError(f"stats client not connected ({client.close_info})")
        waiter = client.acks[999] = trio.Event()
        await client.send('42999["stats"]')
        with trio.fail_after(30):
            await waiter.wait()
        if 999 not in client.answers:
            raise RuntimeError(f"no stats answer (closed: {client.close_info})")
        result: dict[str, int] = json.loads(client.answers[999])[0]
        await client.send("41")
        await client.send_raw(client.ws.send(CloseConnection(code=1000)))
        with trio.move_on_after(5):
            await client.closed.wait()
        nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(client.stream)
    return result


async def drive(args: argparse.Namespace, host: str, port: int) -> dict[str, object]:
    totals = Totals()
    before = await server_stats(host, port)
    start = trio.current_time()
    deadline = start + args.duration
    limiter = trio.CapacityLimiter(args.clients)

    async def slot() -> None:
        async with limiter:
            await one_session(
                host,
                port,
                args.rooms,
                args.fault_rate,
                args.publish_interval,
                deadline,
                totals,
            )

    async with trio.open_nursery() as nursery:
        while trio.current_time() < deadline:
            await limiter.acquire()
            limiter.release()
            nursery.start_soon(slot)
            await trio.sleep(1 / args.arrivals)
    elapsed = trio.current_time() - start
    # Let the server finish every close, heartbeat and deadline before measuring.
    await trio.sleep(_SETTLE)
    after = await server_stats(host, port)
    return {
        "duration_s": round(elapsed, 1),
        "client_sessions": totals.sessions,
        "connect_failures": totals.connect_failures,
        "published": totals.published,
        "acked": totals.acked,
        "received_by_clients": totals.received,
        "faults_injected": dict(totals.faults),
        "faults_total": sum(totals.faults.values()),
        "client_endings": dict(totals.endings),
        "before": before,
        "after": after,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=2000, help="clients at a time")
    parser.add_argument("--arrivals", type=float, default=100.0, help="new clients per second")
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument(
        "--publish-interval", type=float, default=5.0, help="mean seconds between publishes"
    )
    parser.add_argument("--rss-bound-mb", type=float, default=128.0)
    parser.add_argument("--objects-bound", type=int, default=20_000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--log-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(run_server, args.port, args.log_dir)
        return 0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="roomcast-soak-") as log_dir:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--log-dir", log_dir],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            ready = child.stdout.readline().split()
            if not ready or ready[0] != "READY":
                raise SystemExit("the soak server did not start")
            host, port = ready[1], int(ready[2])
            report = trio.run(drive, args, host, port)
        finally:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        report["server_exit_code"] = child.returncode
        verify = verify_log(log_dir)
        kinds = Counter(r.kind.name for r in iter_records(log_dir))
        report["log"] = {
            "ok": verify.ok,
            "records": verify.records,
            "segments": verify.segments,
            "problems": [p.message for p in verify.problems],
            "kinds": dict(kinds),
        }
    before, after = report["before"], report["after"]
    assert isinstance(before, dict)
    assert isinstance(after, dict)
    rss_growth = (after["rss_bytes"] - before["rss_bytes"]) / 2**20
    checks = {
        "server_exit_clean": report["server_exit_code"] == 0,
        "no_connections_left": after["connections"] == before["connections"],
        "no_tasks_leaked": after["tasks"] <= before["tasks"],
        "no_fds_leaked": after["fds"] <= before["fds"],
        f"rss_growth_under_{args.rss_bound_mb:g}_mb": rss_growth < args.rss_bound_mb,
        f"objects_growth_under_{args.objects_bound}": after["objects"] - before["objects"]
        < args.objects_bound,
        "log_verifies": verify.ok,
        "log_has_every_published_message": kinds["MESSAGE"] >= after["published"],
        "log_has_a_disconnect_for_every_connect": kinds["CONNECT"] == kinds["DISCONNECT"],
    }
    report["rss_growth_mb"] = round(rss_growth, 1)
    report["checks"] = checks
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
