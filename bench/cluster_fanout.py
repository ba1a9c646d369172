"""Cross-node fan-out throughput: one node against a three-node Redis cluster, in one run.

Each case starts contract app processes (``bench/contract_app.py``; with ``REDIS_URL`` they
join a cluster, with ``SHARED_LOG=1`` through the shared log on Redis Streams; the file
event log is off, so that only fan-out is measured), then the bench's Node load generator
(``bench/node/loadgen.mjs``, the fan-out scenario of docs/bench-contract.md) with its clients spread
round-robin over the nodes: ``--members`` subscribers in one room, the publisher on node
0 with ``--window`` messages in flight. It reports deliveries per second and checks that
nothing was lost.

Run: ``.venv/bin/python bench/cluster_fanout.py [--members 1000] [--seconds 5]`` (needs
``npm ci`` in bench/node and a Redis on $REDIS_URL, default redis://127.0.0.1:6379/0).
Everything listens on 127.0.0.1; every process it starts is killed by PID at the end.
On this 2-core machine the nodes, Redis and the load generator share the two cores, so
three nodes cannot be faster than one here: the run shows what the cluster costs, not
what it gains on more machines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
APP: Final = ROOT / "bench" / "contract_app.py"
LOADGEN: Final = ROOT / "bench" / "node" / "loadgen.mjs"
START_TIMEOUT: Final = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_serving(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("a node exited before serving")
        if b"roomcast serving on" in line:
            return
    raise RuntimeError("a node did not start in time")


@contextlib.contextmanager
def _nodes(count: int, redis_url: str | None, prefix: str, shared_log: bool) -> Iterator[list[int]]:
    ports = [_free_port() for _ in range(count)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            env = {**os.environ, "PORT": str(port), "ROOMCAST_LOG": "off"}
            env.pop("REDIS_URL", None)
            if redis_url is not None:
                env |= {
                    "REDIS_URL": redis_url,
                    "REDIS_PREFIX": prefix,
                    "SHARED_LOG": "1" if shared_log else "0",
                }
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(APP)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
            )
        for proc in procs:
            _wait_serving(proc)
        if redis_url is not None and count > 1:
            time.sleep(2.0)  # membership converges within a heartbeat (1 s by default)
        yield ports
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


def _forget(redis_url: str, prefix: str) -> None:
    """Delete what the case's cluster left in Redis (its shared log)."""
    import coredis
    import trio

    async def forget() -> None:
        async with coredis.Redis.from_url(redis_url) as client:
            async for key in client.scan_iter(match=f"{prefix}#*"):
                await client.delete([key])

    trio.run(forget)


def run_case(
    name: str,
    nodes: int,
    redis_url: str | None,
    *,
    shared_log: bool,
    members: int,
    window: int,
    seconds: float,
) -> dict[str, object]:
    """One configuration: the load generator's fan-out result, summarised."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        with _nodes(nodes, redis_url, prefix, shared_log) as ports:
            config = {
                "mode": "pubsub",
                "scenario": "fanout",
                "port": ports[0],
                "ports": ports,
                "rooms": 1,
                "membersPerRoom": members,
                "window": window,
                "warmupS": 1,
                "durationS": seconds,
                "drainS": 10,
            }
            done = subprocess.run(
                ["node", str(LOADGEN), json.dumps(config)],
                capture_output=True,
                text=True,
                timeout=seconds + 90,
                check=False,
            )
    finally:
        if redis_url is not None:
            _forget(redis_url, prefix)
    result: dict[str, object] = {}
    for line in done.stdout.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == "result":
                result = event
    if not result or "failed" in result:
        return {"case": name, "nodes": nodes, "failed": result.get("failed", done.stderr[-500:])}
    latency = result.get("latency")
    return {
        "case": name,
        "nodes": nodes,
        "members": members,
        "deliveries_per_second": round(float(str(result["delivered_per_s"]))),
        "published_per_second": round(float(str(result["published_per_s"]))),
        "p50_ms": _ms(latency, "p50_us"),
        "p99_ms": _ms(latency, "p99_us"),
        "loss": result.get("loss"),
        "anomalies": result.get("anomalies"),
    }


def _ms(latency: object, key: str) -> float | None:
    value = latency.get(key) if isinstance(latency, dict) else None
    return round(value / 1000, 1) if isinstance(value, int | float) else None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--only", help="run only the cases whose name contains this")
    args = parser.parse_args(argv)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    cases = [
        ("1 node, in-memory adapter", 1, None, False),
        ("1 node, Redis adapter", 1, redis_url, False),
        ("3 nodes, Redis adapter", 3, redis_url, False),
        ("1 node, Redis adapter + shared log", 1, redis_url, True),
        ("3 nodes, Redis adapter + shared log", 3, redis_url, True),
    ]
    for name, nodes, url, shared in cases:
        if args.only is not None and args.only not in name:
            continue
        result = run_case(
            name,
            nodes,
            url,
            shared_log=shared,
            members=args.members,
            window=args.window,
            seconds=args.seconds,
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
