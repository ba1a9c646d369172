"""Run roomcast's benchmark: every scenario against roomcast, Node socket.io and python-socketio.

Usage (from the repository root; ``bash bench/run.sh`` sets up and calls this)::

    .venv/bin/python bench/run.py [--quick] [--servers roomcast,node,psio,roomcast-asgi]
                                  [--scenarios fanout,rooms,echo,idle,idle-max,heartbeat]
                                  [--runs N] [--no-setup]

Every server implements docs/bench-contract.md and runs alone on core 0 (``taskset``);
the load generator (bench/node/loadgen.mjs, raw WebSocket frames over node:net) runs on
core 1. Each scenario run gets a fresh server process. The result is a table on stdout
and JSON (plus the same table as Markdown and its charts, SVG) in bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Final, TypeAlias

__all__ = ["main"]

JsonDict: TypeAlias = dict[str, object]

BENCH: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH.parent
NODE_DIR: Final = BENCH / "node"
PSIO_VENV: Final = BENCH / ".venv-psio"
PSIO_REQUIREMENTS: Final = BENCH / "requirements-psio.txt"
CHARTS_VENV: Final = BENCH / ".venv-charts"
CHARTS_REQUIREMENTS: Final = BENCH / "requirements-charts.txt"
RESULTS: Final = BENCH / "results"
LOADGEN: Final = NODE_DIR / "loadgen.mjs"

SERVER_CORE: Final = "0"
LOADGEN_CORE: Final = "1"
FD_LIMIT: Final = 20_000
SHUTDOWN_GRACE_S: Final = 60
# A run whose server core was more than this busy with other processes (fraction of the
# core, over the measured window) is repeated; the least disturbed attempt is kept.
DISTURBED: Final = 0.10
MAX_RETRIES_TOTAL: Final = 12  # so that a busy machine cannot stretch a run without bound

SERVERS: Final = ("roomcast", "node", "psio", "trio-task", "trio-reactor", "null", "roomcast-asgi")
SERVER_LABELS: Final = {
    "roomcast": "roomcast",
    "roomcast-asgi": "roomcast, ASGI front (hypercorn trio)",
    "node": "Node socket.io",
    "psio": "python-socketio",
    "trio-task": "bare Trio, task per connection (ceiling)",
    "trio-reactor": "bare Trio, epoll reactor + actor tasks (ceiling)",
    "null": "null server (loadgen ceiling)",
}
# The null server (bench/node/null_server.mjs) is no peer: it only shows how far the load
# generator itself goes. It runs the throughput scenarios once each.
NULL_SCENARIOS: Final = ("fanout", "rooms", "echo")
# The bare Trio servers (bench/trio_contract.py) show what Trio itself allows for two ways
# of waiting on many sockets. They run like the peers (every run, so the table has their
# medians) but have no heartbeat, so they skip that scenario.
CEILING_SCENARIOS: Final = ("fanout", "rooms", "echo", "idle", "idle-max")
SCENARIOS: Final = ("fanout", "rooms", "echo", "idle", "idle-max", "heartbeat")


def log(message: str) -> None:
    """Progress to stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- setup -----------------------------------------------------------------------------------


def _stamp_ok(stamp: Path, digest: str) -> bool:
    return stamp.exists() and stamp.read_text().strip() == digest


def setup() -> None:
    """Install the Node peers (npm ci), python-socketio's venv and the charts' venv, when
    not up to date."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("the benchmark needs Node.js 20+ and npm")
    if shutil.which("taskset") is None:
        raise SystemExit("the benchmark needs taskset (util-linux)")
    lock = NODE_DIR / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    stamp = NODE_DIR / "node_modules" / ".bench-stamp"
    if not _stamp_ok(stamp, digest):
        log("npm ci in bench/node")
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True
        )
        stamp.write_text(digest)
    _venv(PSIO_VENV, PSIO_REQUIREMENTS, "python-socketio, aiohttp, uvicorn, uvloop")
    _venv(CHARTS_VENV, CHARTS_REQUIREMENTS, "matplotlib, for the charts")


def _venv(venv: Path, requirements: Path, what: str) -> None:
    """A venv of the bench's own from pinned requirements, remade when they change."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = venv / ".bench-stamp"
    if not _stamp_ok(stamp, digest):
        log(f"creating {venv.relative_to(ROOT)} ({what})")
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-r", str(requirements)], check=True)
        stamp.write_text(digest)


# -- servers ---------------------------------------------------------------------------------


def server_command(name: str) -> list[str]:
    """The command that runs ``name``'s contract server (the process is the server)."""
    if name == "roomcast":
        return [sys.executable, str(BENCH / "contract_app.py")]
    if name == "roomcast-asgi":  # needs the asgi extra (hypercorn)
        return [sys.executable, str(BENCH / "contract_app.py"), "--asgi"]
    if name == "node":
        return ["node", str(NODE_DIR / "server.mjs")]
    if name == "psio":
        return [str(PSIO_VENV / "bin" / "python"), str(BENCH / "psio_app.py")]
    if name == "null":
        return ["node", str(NODE_DIR / "null_server.mjs")]
    if name in ("trio-task", "trio-reactor"):
        return [sys.executable, str(BENCH / "trio_contract.py"), name.removeprefix("trio-")]
    raise ValueError(name)


def free_port() -> int:
    """A port nobody listens on right now (each server run gets a new one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def proc_rss_kib(pid: int) -> int | None:
    """VmRSS of a process, KiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def proc_fds(pid: int) -> int | None:
    """Open file descriptors of a process."""
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return None


class ServerProcess:
    """One contract server, pinned to the server core, started and stopped by PID."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        full_env = {**os.environ, **env, "PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *server_command(name)],
            env=full_env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid  # taskset execs the server: this PID is the server
        self.exit_on_sigterm: bool | None = None
        self.shutdown_s: float | None = None
        self._wait_listening()

    def _wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.log_path}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                time.sleep(0.3)  # let it finish starting up before the load arrives
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on {self.port}; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 60 s (the contract says exit on SIGTERM).

        ``shutdown_s`` records how long the exit took (a graceful shutdown may close
        thousands of connections first).
        """
        if self.proc.poll() is None:
            started = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=SHUTDOWN_GRACE_S)
                self.exit_on_sigterm = True
            except subprocess.TimeoutExpired:
                self.exit_on_sigterm = False
                log(
                    f"{self.name} (pid {self.pid}) still running {SHUTDOWN_GRACE_S} s after "
                    "SIGTERM: SIGKILL"
                )
                self.proc.kill()
                self.proc.wait()
            self.shutdown_s = round(time.monotonic() - started, 2)
        self._log.close()


@contextlib.contextmanager
def running_server(name: str, env: dict[str, str], log_path: Path) -> Iterator[ServerProcess]:
    """A server for the duration of one scenario run."""
    server = ServerProcess(name, env, log_path)
    try:
        yield server
    finally:
        server.stop()


# -- the load generator ----------------------------------------------------------------------


class Loadgen:
    """One load generator process on the load generator core; JSON lines on stdout."""

    def __init__(self, config: JsonDict, log_path: Path) -> None:
        self._log: IO[bytes] = log_path.open("wb")
        self.log_path = log_path
        self.proc = subprocess.Popen(
            ["taskset", "-c", LOADGEN_CORE, "node", str(LOADGEN), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    def next_event(self, deadline: float) -> JsonDict | None:
        """The next JSON line (None at end of output or past the deadline)."""
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                return None
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    return event
        return None

    def result(self, timeout: float) -> JsonDict:
        """Wait for the ``result`` line; kill the process (by PID) if it overruns."""
        deadline = time.monotonic() + timeout
        result: JsonDict | None = None
        while result is None:
            event = self._next_or_kill(deadline)
            if event is None:
                break
            if event.get("event") == "result":
                result = event
        self.finish()
        if result is None:
            return {"failed": f"load generator gave no result; see {self.log_path}"}
        return result

    def _next_or_kill(self, deadline: float) -> JsonDict | None:
        # readline blocks; a timer kills an overrunning load generator so it returns.
        with _watchdog(self.proc, deadline):
            return self.next_event(deadline)

    def tell(self, line: str) -> None:
        """Write a line to the load generator's stdin."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def finish(self) -> None:
        """Wait for the process to exit (kill it by PID after 15 s)."""
        with contextlib.suppress(BrokenPipeError, OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def _watchdog(proc: subprocess.Popen[str], deadline: float) -> Iterator[None]:
    import threading

    def expire() -> None:
        if proc.poll() is None:
            log(f"load generator (pid {proc.pid}) overran its time limit: killed")
            proc.kill()

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


# -- scenarios -------------------------------------------------------------------------------


class Plan:
    """Sizes and durations of every scenario (``quick`` shortens them)."""

    def __init__(self, quick: bool, idle_max: int) -> None:
        self.quick = quick
        self.warmup_s = 1.0 if quick else 2.0
        self.duration_s = 3.0 if quick else 10.0
        self.drain_s = 15.0
        self.idle = 10_000
        self.idle_max = idle_max
        self.idle_procs = 2
        # idle-max is a capacity check (the most connections the fd limit allows); at the
        # slowest server's connect rate one run takes minutes, so it runs once.
        self.idle_max_runs = 1
        self.heartbeat_hold_ms = 8_500

    def describe(self) -> JsonDict:
        """The plan, for the JSON report."""
        return {
            "quick": self.quick,
            "warmup_s": self.warmup_s,
            "duration_s": self.duration_s,
            "drain_s": self.drain_s,
            "fanout": {"rooms": 1, "members_per_room": 1000, "window": FANOUT_WINDOW},
            "rooms": {"rooms": 1000, "members_per_room": 10, "window": ROOMS_WINDOW},
            "echo": {"clients": 100, "window": ECHO_WINDOW},
            "idle": {"clients": self.idle, "loadgen_processes": 1},
            "idle-max": {
                "clients": self.idle_max,
                "loadgen_processes": self.idle_procs,
                "runs": self.idle_max_runs,
            },
            "heartbeat": {
                "healthy": 100,
                "silent": 100,
                "ping_interval_ms": 2000,
                "ping_timeout_ms": 1000,
                "hold_ms": self.heartbeat_hold_ms,
            },
        }


FANOUT_WINDOW: Final = 16  # messages in flight in the one room
ROOMS_WINDOW: Final = 2  # messages in flight per room (1,000 rooms: 2,000 in all)
ECHO_WINDOW: Final = 4  # calls in flight per client (100 clients: 400 in all)


def _timed_run(plan: Plan) -> float:
    return plan.warmup_s + plan.duration_s + plan.drain_s + 240.0


# The load of each throughput scenario: its part of the load generator's config.
THROUGHPUT_LOADS: Final[dict[str, JsonDict]] = {
    "fanout": {"mode": "pubsub", "rooms": 1, "membersPerRoom": 1000, "window": FANOUT_WINDOW},
    "rooms": {"mode": "pubsub", "rooms": 1000, "membersPerRoom": 10, "window": ROOMS_WINDOW},
    "echo": {"mode": "echo", "clients": 100, "window": ECHO_WINDOW},
}


def throughput_loadgen(server: ServerProcess, plan: Plan, scenario: str) -> Loadgen:
    """A load generator started on ``server`` for ``scenario`` (``fanout``: one room,
    ``rooms``: many, both publishers with a bounded window and checked delivery; ``echo``:
    100 clients, each with a bounded number of calls in flight)."""
    config: JsonDict = {
        **THROUGHPUT_LOADS[scenario],
        "scenario": scenario,
        "port": server.port,
        "serverPid": server.pid,
        "warmupS": plan.warmup_s,
        "durationS": plan.duration_s,
        "drainS": plan.drain_s,
    }
    return Loadgen(config, server.log_path.with_suffix(".loadgen.log"))


def run_idle(server: ServerProcess, plan: Plan, clients: int, procs: int) -> JsonDict:
    """Idle connections: memory per connection from the server's RSS before and after."""
    # Warm up (imports, JIT, first allocations) with 100 connections, then take the baseline.
    warm = Loadgen(
        {"mode": "idle", "scenario": "warmup", "port": server.port, "clients": 100, "holdS": 0},
        server.log_path.with_suffix(".warmup.log"),
    ).result(60)
    if warm.get("failed") or warm.get("connect_failures"):
        return {"failed": f"warm-up failed: {warm.get('failed') or warm}"}
    time.sleep(1.0)
    base_rss = proc_rss_kib(server.pid)
    base_fds = proc_fds(server.pid)
    per_proc = [clients // procs + (1 if k < clients % procs else 0) for k in range(procs)]
    gens = [
        Loadgen(
            {
                "mode": "idle",
                "scenario": "idle",
                "port": server.port,
                "clients": n,
                "holdS": 600,
                "connectConcurrency": 100,
                "connectTimeoutS": 420,
            },
            server.log_path.with_suffix(f".loadgen{k}.log"),
        )
        for k, n in enumerate(per_proc)
    ]
    deadline = time.monotonic() + 480
    ready: list[JsonDict] = []
    for gen in gens:
        with _watchdog(gen.proc, deadline):
            while True:
                event = gen.next_event(deadline)
                if event is None or event.get("event") in ("ready", "result"):
                    break
        ready.append(event if event is not None else {"failed": "no ready line"})
    time.sleep(3.0)  # settle
    rss = proc_rss_kib(server.pid)
    fds = proc_fds(server.pid)
    for gen in gens:
        gen.tell("stop")
    finals = [gen.result(60) for gen in gens]
    connected = sum(_int(r.get("connected")) for r in ready)
    alive = sum(_int(f.get("alive_at_end")) for f in finals)
    per_conn = None
    if rss is not None and base_rss is not None and connected:
        per_conn = (rss - base_rss) / connected
    seconds = max((_float(r.get("connect_seconds")) for r in ready), default=0.0)
    return {
        "clients": clients,
        "loadgen_processes": procs,
        "connected": connected,
        "alive_at_end": alive,
        "loss": clients - alive,
        "delivered_per_s": clients / seconds if seconds else None,
        "connect_seconds": seconds,
        "server_rss_base_kib": base_rss,
        "server_rss_kib": rss,
        "server_fds_base": base_fds,
        "server_fds": fds,
        "kib_per_connection": per_conn,
        "latency": _merge_latency([_dict(r.get("connect")) for r in ready]),
        "cpu": {
            "loadgen_cpu": max(
                (_float(_dict(r.get("cpu")).get("loadgen_cpu")) for r in ready), default=0.0
            ),
        },
        "anomalies": sum(_int(f.get("anomalies")) for f in finals),
        "bad_acks": 0,
        "disconnects": sum(_int(f.get("disconnects")) for f in finals),
        "connect_failures": sum(_int(f.get("connect_failures")) for f in finals),
        "protocol_errors": sum(_int(f.get("protocol_errors")) for f in finals),
        "failed": "; ".join(str(f["failed"]) for f in [*ready, *finals] if f.get("failed")) or None,
    }


def run_heartbeat(server: ServerProcess, plan: Plan) -> JsonDict:
    """Heartbeat accuracy with PING_INTERVAL_MS=2000 / PING_TIMEOUT_MS=1000."""
    config: JsonDict = {
        "mode": "heartbeat",
        "scenario": "heartbeat",
        "port": server.port,
        "serverPid": server.pid,
        "healthy": 100,
        "silent": 100,
        "pingIntervalMs": 2000,
        "pingTimeoutMs": 1000,
        "holdMs": plan.heartbeat_hold_ms,
    }
    return Loadgen(config, server.log_path.with_suffix(".loadgen.log")).result(120)


def _merge_latency(parts: Sequence[JsonDict]) -> JsonDict:
    """The worst of several processes' connect-latency summaries (conservative)."""
    out: JsonDict = {}
    for key in ("p50_us", "p99_us", "max_us"):
        values = [_float(p.get(key)) for p in parts if p.get(key) is not None]
        out[key] = max(values) if values else None
    out["count"] = sum(_int(p.get("count")) for p in parts)
    return out


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _dict(value: object) -> JsonDict:
    return value if isinstance(value, dict) else {}


def failure_reason(result: JsonDict) -> str | None:
    """Why a run does not count (loss, reordering, bad acks, drops), or None."""
    reasons = []
    if result.get("failed"):
        reasons.append(str(result["failed"]))
    for key in (
        "loss",
        "anomalies",
        "bad_acks",
        "disconnects",
        "connect_failures",
        "protocol_errors",
    ):
        if _int(result.get(key)):
            reasons.append(f"{key}={_int(result.get(key))}")
    # A server that is slow to exit after SIGTERM (it is SIGKILLed after 60 s) is noted in
    # ``sigterm_exit`` / ``shutdown_s``; it does not invalidate the figures measured before.
    return ", ".join(reasons) or None


def run_scenario(name: str, scenario: str, plan: Plan, run_dir: Path, index: int) -> JsonDict:
    """One run of one scenario against one server (a fresh server process)."""
    env: dict[str, str] = {}
    if scenario == "heartbeat":
        env = {"PING_INTERVAL_MS": "2000", "PING_TIMEOUT_MS": "1000"}
    log_path = run_dir / f"{scenario}.{name}.{index}.log"
    started = time.monotonic()
    try:
        with running_server(name, env, log_path) as server:
            result: JsonDict
            if scenario in THROUGHPUT_LOADS:
                result = throughput_loadgen(server, plan, scenario).result(_timed_run(plan))
            elif scenario == "idle":
                result = run_idle(server, plan, plan.idle, 1)
            elif scenario == "idle-max":
                result = run_idle(server, plan, plan.idle_max, plan.idle_procs)
            else:
                result = run_heartbeat(server, plan)
            result["server_peak_rss_kib"] = proc_rss_kib(server.pid)
        result["sigterm_exit"] = server.exit_on_sigterm
        result["shutdown_s"] = server.shutdown_s
    except RuntimeError as exc:
        result = {"failed": str(exc)}
    result["wall_s"] = round(time.monotonic() - started, 2)
    result["failure"] = failure_reason(result)
    return result


# -- summary ---------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _get(result: JsonDict, *path: str) -> float | None:
    value: object = result
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, int | float) else None


def summarize(runs: Sequence[JsonDict]) -> JsonDict:
    """The medians over runs of one scenario on one server; any failed run fails it."""
    failures = [str(r["failure"]) for r in runs if r.get("failure")]

    def med(*path: str) -> float | None:
        return _median([_get(r, *path) for r in runs])

    return {
        "runs": len(runs),
        "failed_runs": len(failures),
        "failures": failures,
        "rate": med("delivered_per_s"),
        "p50_us": med("latency", "p50_us"),
        "p99_us": med("latency", "p99_us"),
        "server_cpu": med("cpu", "server_cpu"),
        "foreign_on_server_core": med("cpu", "foreign_on_server_core"),
        "shutdown_s": med("shutdown_s"),
        "loadgen_cpu": med("cpu", "loadgen_cpu"),
        "server_rss_kib": med("server_rss_kib"),
        "kib_per_connection": med("kib_per_connection"),
        "connected": med("connected"),
        "ping_p50_us": med("ping_error", "p50_us"),
        "ping_p99_us": med("ping_error", "p99_us"),
        "drop_delta_median_us": med("drop_delta_median_us"),
        "loss": sum(_int(r.get("loss")) for r in runs),
        "anomalies": sum(_int(r.get("anomalies")) for r in runs),
        "bad_acks": sum(_int(r.get("bad_acks")) for r in runs),
    }


UNITS: Final = {
    "fanout": "deliveries/s",
    "rooms": "deliveries/s",
    "echo": "round trips/s",
    "idle": "connects/s",
    "idle-max": "connects/s",
    "heartbeat": "drop error",
}


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _fmt_ms(us: float | None) -> str:
    if us is None:
        return "-"
    ms = us / 1000
    return f"{ms:,.1f} ms" if ms < 100 else f"{ms:,.0f} ms"


def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def render_table(summary: dict[str, dict[str, JsonDict]], servers: Sequence[str]) -> str:
    """The Markdown tables: absolute figures per server, then ratios against each peer."""
    lines = [
        "| scenario | server | rate | p50 | p99 | loss | anomalies | bad acks | server CPU "
        "| other CPU on server core | loadgen CPU | server RSS | KiB/conn |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, per_server in summary.items():
        for name in servers:
            s = per_server.get(name)
            if s is None:
                continue
            rss = _get(s, "server_rss_kib")
            kib = _get(s, "kib_per_connection")
            rate = _get(s, "rate")
            if s.get("failed_runs"):
                rate_text = f"FAIL ({'; '.join(map(str, _list(s.get('failures'))))})"
            elif scenario == "heartbeat":
                rate_text = f"drop {_fmt_signed_ms(_get(s, 'drop_delta_median_us'))} late"
            else:
                rate_text = f"{_fmt_rate(rate)} {UNITS[scenario]}"
            p50, p99 = _get(s, "p50_us"), _get(s, "p99_us")
            lines.append(
                f"| {scenario} | {SERVER_LABELS[name]} | {rate_text} | {_fmt_ms(p50)} "
                f"| {_fmt_ms(p99)} | {_int(s.get('loss'))} | {_int(s.get('anomalies'))} "
                f"| {_int(s.get('bad_acks'))} | {_fmt_pct(_get(s, 'server_cpu'))} "
                f"| {_fmt_pct(_get(s, 'foreign_on_server_core'))} "
                f"| {_fmt_pct(_get(s, 'loadgen_cpu'))} "
                f"| {'-' if rss is None else f'{rss / 1024:,.0f} MiB'} "
                f"| {'-' if kib is None else f'{kib:.1f}'} |"
            )
    peers = [p for p in servers if p not in ("roomcast", "null")]
    if "roomcast" in servers and peers:
        lines += [
            "",
            "| scenario | metric | "
            + " | ".join(f"roomcast / {SERVER_LABELS[p]}" for p in peers)
            + " |",
            "|---|---|" + "---:|" * len(peers),
        ]
        for scenario, per_server in summary.items():
            mine = per_server.get("roomcast")
            if mine is None:
                continue
            if scenario in ("idle", "idle-max"):
                metric, key = "memory per connection (lower is better)", "kib_per_connection"
            elif scenario == "heartbeat":
                metric, key = "p99 drop error (lower is better)", "p99_us"
            else:
                metric, key = f"{UNITS[scenario]} (higher is better)", "rate"
            cells = []
            for peer in peers:
                theirs = per_server.get(peer)
                if theirs is None or mine.get("failed_runs") or theirs.get("failed_runs"):
                    cells.append("-")
                else:
                    cells.append(_fmt_ratio(_get(mine, key), _get(theirs, key)))
            lines.append(f"| {scenario} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_machine(info: JsonDict) -> str:
    """One line: what ran the benchmark (ratios between runs on different CPUs mislead:
    Node and Python do not gain alike from a faster one)."""
    return (
        f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores, Linux"
        f" {info.get('kernel', '?')}; Python {info.get('python', '?')}, Node"
        f" {info.get('node', '?')}, socket.io {info.get('socket.io') or '?'},"
        f" python-socketio {info.get('python-socketio', '?')}"
    )


def render_shutdowns(results: dict[str, dict[str, list[JsonDict]]]) -> str:
    """One line: the longest exit after SIGTERM per server, and whether any was killed."""
    worst: dict[str, tuple[float, str]] = {}
    killed: set[str] = set()
    for scenario, per in results.items():
        for name, runs in per.items():
            for run in runs:
                seconds = _get(run, "shutdown_s")
                if run.get("sigterm_exit") is False:
                    killed.add(name)
                if seconds is not None and seconds > worst.get(name, (-1.0, ""))[0]:
                    worst[name] = (seconds, scenario)
    parts = []
    for name, (seconds, scenario) in worst.items():
        note = ", SIGKILLed after 60 s in some run" if name in killed else ""
        parts.append(f"{SERVER_LABELS[name]} {seconds:.1f} s ({scenario}{note})")
    return "Longest exit after SIGTERM: " + "; ".join(parts) + "."


def _fmt_signed_ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:+.1f} ms"


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


# -- machine ---------------------------------------------------------------------------------


def _version(command: Sequence[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def machine() -> JsonDict:
    """What ran the benchmark."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    node_pkg = NODE_DIR / "node_modules" / "socket.io" / "package.json"
    socketio_version = (
        json.loads(node_pkg.read_text()).get("version") if node_pkg.exists() else None
    )
    psio_python = str(PSIO_VENV / "bin" / "python")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _version(["node", "--version"]),
        "socket.io": socketio_version,
        "python-socketio": _version(
            [
                psio_python,
                "-c",
                "import socketio.async_server, importlib.metadata as m; "
                "print(m.version('python-socketio'))",
            ]
        ),
        "open_files_limit": FD_LIMIT,
        "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
        "server_core": SERVER_CORE,
        "loadgen_core": LOADGEN_CORE,
    }


# -- main ------------------------------------------------------------------------------------


def _csv(value: str, allowed: Sequence[str]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown: {', '.join(bad)} (choose from {allowed})")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    """Set up, run every scenario for every server, print and save the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs, one run each")
    parser.add_argument("--runs", type=int, default=None, help="runs per scenario (default 3)")
    parser.add_argument(
        "--servers",
        type=lambda v: _csv(v, SERVERS),
        default=[name for name in SERVERS if name != "roomcast-asgi"],
        help=",".join(SERVERS) + " (roomcast-asgi, the ASGI front, only on request: asgi extra)",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda v: _csv(v, SCENARIOS),
        default=list(SCENARIOS),
        help=",".join(SCENARIOS),
    )
    parser.add_argument(
        "--idle-max",
        type=int,
        default=19_600,
        help="connections of the idle-max scenario (fd limit 20,000)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="repeat a run disturbed by other processes on the server core up to N times",
    )
    parser.add_argument("--no-setup", action="store_true", help="skip npm ci / the psio venv")
    args = parser.parse_args(argv)
    if not args.no_setup:
        setup()
    plan = Plan(quick=args.quick, idle_max=args.idle_max)
    runs: int = args.runs if args.runs is not None else (1 if args.quick else 3)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS / f"run-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[JsonDict]]] = {}
    started = time.monotonic()
    retries_left = MAX_RETRIES_TOTAL
    loadavg_start = Path("/proc/loadavg").read_text().split()[:3]
    log(f"load average at start: {' '.join(loadavg_start)} (other processes disturb the figures)")
    for scenario in args.scenarios:
        results[scenario] = {name: [] for name in args.servers}
        for index in range(runs):
            for name in args.servers:  # interleaved, so that drift hits every server alike
                if name == "null" and (scenario not in NULL_SCENARIOS or index > 0):
                    continue
                if name.startswith("trio-") and scenario not in CEILING_SCENARIOS:
                    continue
                if scenario == "idle-max" and index >= plan.idle_max_runs:
                    continue
                log(f"{scenario} run {index + 1}/{runs}: {name}")
                result = run_scenario(name, scenario, plan, run_dir, index)
                for attempt in range(args.retries):
                    if retries_left <= 0:
                        break
                    foreign = _get(result, "cpu", "foreign_on_server_core")
                    if foreign is None or foreign <= DISTURBED or result.get("failure"):
                        break
                    log(f"  other processes took {foreign:.0%} of the server core: again")
                    retries_left -= 1
                    again = run_scenario(name, scenario, plan, run_dir, index)
                    again["attempts"] = attempt + 2
                    if (_get(again, "cpu", "foreign_on_server_core") or 0.0) < foreign:
                        result = again
                results[scenario][name].append(result)
                log(f"  -> {_one_line(scenario, result)}")
    summary = {
        scenario: {name: summarize(rs) for name, rs in per.items() if rs}
        for scenario, per in results.items()
    }
    info = machine()
    table = "\n\n".join(
        (render_machine(info), render_table(summary, args.servers), render_shutdowns(results))
    )
    report: JsonDict = {
        "started_utc": stamp,
        "loadavg_at_start": loadavg_start,
        "wall_s": round(time.monotonic() - started, 1),
        "machine": info,
        "plan": plan.describe(),
        "runs_per_scenario": runs,
        "summary": summary,
        "runs": results,
    }
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"\nJSON: {out.relative_to(ROOT)}  (logs: {run_dir.relative_to(ROOT)})")
    draw_charts(out, RESULTS / f"charts-{stamp}")
    failed = [
        f"{scenario}/{name}"
        for scenario, per in summary.items()
        for name, s in per.items()
        if s.get("failed_runs")
    ]
    if failed:
        print(f"FAILED (loss, reordering, bad acks or drops): {', '.join(failed)}")
        return 1
    return 0


def draw_charts(results: Path, out_dir: Path) -> None:
    """The SVG charts of a results file (bench/charts.py in the charts' venv), into
    ``out_dir``; a failure to draw is reported, and does not fail the run."""
    python = CHARTS_VENV / "bin" / "python"
    if not python.exists():
        log("no bench/.venv-charts (--no-setup on a fresh checkout?): no charts")
        return
    drawn = subprocess.run(
        [str(python), str(BENCH / "charts.py"), str(results), str(out_dir)], check=False
    )
    if drawn.returncode != 0:
        log(f"drawing the charts failed (exit status {drawn.returncode})")
        return
    print(
        f"Charts: {out_dir.relative_to(ROOT)}/ (to publish them with this table:"
        f" python bench/charts.py {results.relative_to(ROOT)} docs/img)"
    )


def _one_line(scenario: str, result: JsonDict) -> str:
    if result.get("failure"):
        return f"FAILED: {result['failure']}"
    if scenario in ("idle", "idle-max"):
        kib = _get(result, "kib_per_connection")
        return (
            f"{_int(result.get('connected'))} connected, "
            f"{'-' if kib is None else f'{kib:.1f}'} KiB/conn, "
            f"{_fmt_rate(_get(result, 'delivered_per_s'))} connects/s"
        )
    if scenario == "heartbeat":
        return (
            f"drop delta median {_fmt_signed_ms(_get(result, 'drop_delta_median_us'))}, "
            f"p99 |error| {_fmt_ms(_get(result, 'drop_error', 'p99_us'))}, "
            f"ping p99 |error| {_fmt_ms(_get(result, 'ping_error', 'p99_us'))}"
        )
    return (
        f"{_fmt_rate(_get(result, 'delivered_per_s'))} {UNITS[scenario]}, "
        f"p50 {_fmt_ms(_get(result, 'latency', 'p50_us'))}, "
        f"p99 {_fmt_ms(_get(result, 'latency', 'p99_us'))}, "
        f"server CPU {_fmt_pct(_get(result, 'cpu', 'server_cpu'))}, "
        f"loadgen CPU {_fmt_pct(_get(result, 'cpu', 'loadgen_cpu'))}"
    )


if __name__ == "__main__":
    sys.exit(main())
