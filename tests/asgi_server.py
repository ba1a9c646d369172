"""An ASGI app served by hypercorn's Trio worker in a child process, on 127.0.0.1 and a
free port: how the tests reach roomcast's ASGI front the way a deployment runs it.

Synchronous (a session-scoped fixture starts it once for many Trio tests): a thread reads
hypercorn's stderr, which gives the bound port ("Running on http://127.0.0.1:PORT") and
is kept for failure messages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import attrs

__all__ = ["HypercornProcess", "run_hypercorn"]

REPO: Final = Path(__file__).resolve().parent.parent
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
_RUNNING: Final = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")


@attrs.define(eq=False)
class HypercornProcess:
    """A running hypercorn: its port and what it wrote to stderr so far."""

    process: subprocess.Popen[bytes]
    port: int = 0
    stderr: list[bytes] = attrs.field(factory=list)

    def output(self) -> str:
        """Its stderr so far (the last 3,000 characters)."""
        return b"".join(self.stderr).decode(errors="replace")[-3000:]


@contextmanager
def run_hypercorn(app: str, *, cwd: Path) -> Iterator[HypercornProcess]:
    """Run ``hypercorn --worker-class trio APP`` (``module:attribute``, importable from the
    repository root) in ``cwd``; SIGTERM it (by PID) on the way out, SIGKILL if it does
    not stop within STOP_TIMEOUT.

    Raises:
        AssertionError: It did not report a listening port within START_TIMEOUT.
    """
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), child_env.get("PYTHONPATH", "")) if p
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "--worker-class",
            "trio",
            "--bind",
            "127.0.0.1:0",
            app,
        ],
        cwd=cwd,
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    running = HypercornProcess(process=process)
    listening = threading.Event()

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            running.stderr.append(line)
            found = _RUNNING.search(line)
            if found is not None and not listening.is_set():
                running.port = int(found.group(1))
                listening.set()
        listening.set()  # ended without listening: the wait below reports it

    reader = threading.Thread(target=drain, name=f"hypercorn {app} stderr", daemon=True)
    reader.start()
    try:
        listening.wait(START_TIMEOUT)
        assert running.port, f"hypercorn did not start {app}: {running.output()}"
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
        reader.join(STOP_TIMEOUT)
        if process.stderr is not None:
            process.stderr.close()
