"""Session churn: does the server's memory stay flat while clients come and go for good?

Runs the workspace chat (``examples/workspace_chat.py``'s ``build_server``, event log on,
connection state recovery on with the given window) in its own process, then rounds of
sessions that connect to ``/`` over WebSocket and drop their transport (a recoverable
"transport close": the server keeps each session for the window). After every round it
prints the server's RSS. With pruning on the supervisor's timer, RSS stops growing once
the window has passed; without it, every session ever dropped stays.

    .venv/bin/python bench/churn.py --sessions 100000 --round 4000 --window 10

Bounded in count (``--sessions``) and time (``--max-seconds``); 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import trio
from trio_websocket import open_websocket_url

ROOT = Path(__file__).resolve().parents[1]

SERVER = """
import sys, trio
from roomcast.engine import Config
from roomcast.engine.cli import serve_until_signal
from roomcast.engine.log import LogConfig
from roomcast.engine.recovery import RecoveryConfig
from examples.workspace_chat import build_server
log_dir, port, window = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
recovery = RecoveryConfig(max_disconnection_duration=window) if window > 0 else None
server = build_server(Config(log=LogConfig(directory=log_dir)), recovery=recovery)
trio.run(serve_until_signal, server, "127.0.0.1", port)
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def one_session(url: str) -> None:
    async with open_websocket_url(url) as ws:
        opened = await ws.get_message()
        assert str(opened).startswith("0{"), opened
        await ws.send_message("40")
        while True:  # the CONNECT answer (a ping may come first)
            answer = await ws.get_message()
            if str(answer).startswith("40{"):
                break
    # Leaving the block closes the WebSocket: "transport close", a recoverable reason.


async def churn(url: str, count: int, concurrency: int) -> None:
    limit = trio.CapacityLimiter(concurrency)

    async def session() -> None:
        async with limit:
            await one_session(url)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            await limit.acquire()  # bounded: at most ``concurrency`` sessions at once
            limit.release()
            nursery.start_soon(session)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--round", type=int, default=4_000)
    parser.add_argument("--window", type=float, default=10.0, help="recovery window (0: off)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as log_dir:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, log_dir, str(port), str(args.window)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
        )
        try:
            listening = threading.Event()

            def drain(stream: IO[bytes]) -> None:
                # Read all it prints (so the server never blocks on a full pipe).
                for line in stream:
                    if b"roomcast serving on" in line:
                        listening.set()

            assert server.stdout is not None
            threading.Thread(target=drain, args=(server.stdout,), daemon=True).start()
            if not listening.wait(timeout=60):
                raise SystemExit("the server did not start")
            url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
            print(f"window {args.window:g} s; start RSS {rss_mib(server.pid):.1f} MiB", flush=True)
            print("round  sessions  seconds  RSS MiB", flush=True)
            started, done, rounds = time.monotonic(), 0, 0
            while done < args.sessions and time.monotonic() - started < args.max_seconds:
                count = min(args.round, args.sessions - done)
                trio.run(churn, url, count, args.concurrency)
                done += count
                rounds += 1
                elapsed = time.monotonic() - started
                print(
                    f"{rounds:5d}  {done:8d}  {elapsed:7.1f}  {rss_mib(server.pid):7.1f}",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
