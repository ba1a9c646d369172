"""bench/contract_app.py: the event log it makes for a run is its own and goes with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int, app: subprocess.Popen[str]) -> None:
    """Until the server takes connections (its SIGTERM handler is in place by then)."""
    for _ in range(600):
        assert app.poll() is None
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the server never listened")


def test_the_temporary_log_is_deleted_when_the_server_exits(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "TMPDIR": str(tmp_path)}
    env.pop("ROOMCAST_LOG_DIR", None)
    env["ROOMCAST_LOG"] = "interval"
    with subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "contract_app.py")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    ) as app:
        try:
            assert app.stdout is not None
            assert "serving the bench contract" in app.stdout.readline()
            wait_listening(port, app)
            logs = list(tmp_path.glob("roomcast-bench-*"))
            assert len(logs) == 1
            app.send_signal(signal.SIGTERM)
            assert app.wait(timeout=60) == 0
        finally:
            if app.poll() is None:
                app.kill()
    assert not logs[0].exists()
