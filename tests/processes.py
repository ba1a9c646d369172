"""Child processes of the tests (peers, cluster nodes): started with pipes, their stderr
kept for failure messages, and on the way out killed by PID if still running, reaped,
and their pipes closed; and the npm installs the JavaScript peers need."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, TypeVar

import attrs
import pytest
import trio

__all__ = ["KILL_GRACE", "PipedProcess", "npm_ci_if_stale", "open_piped"]

KILL_GRACE: Final = 5.0
"""Seconds to wait for a killed process to be reaped."""


@attrs.define(eq=False, kw_only=True)
class PipedProcess:
    """A running child process; ``stderr`` collects what it wrote there."""

    process: trio.Process
    stderr: bytearray = attrs.field(factory=bytearray)
    stderr_done: trio.Event = attrs.field(factory=trio.Event)
    _stderr_grew: trio.Event = attrs.field(factory=trio.Event)

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the process by its PID, if it still runs."""
        if self.process.returncode is None:
            self.process.kill()

    def terminate(self) -> None:
        """SIGTERM the process by its PID, if it still runs."""
        if self.process.returncode is None:
            self.process.terminate()

    async def wait_stderr(self, text: bytes) -> None:
        """Wait until the process has written ``text`` to stderr (from its start on)."""
        while text not in self.stderr:
            if self.stderr_done.is_set():
                raise AssertionError(
                    f"the process ended before it wrote {text!r}: "
                    f"{self.stderr.decode(errors='replace')[-3000:]}"
                )
            await self._stderr_grew.wait()  # set for every chunk, and at the end

    async def _drain_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        try:
            while chunk := await stderr.receive_some(65_536):
                self.stderr += chunk
                self._stderr_grew.set()
                self._stderr_grew = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.stderr_done.set()
            self._stderr_grew.set()


P = TypeVar("P", bound=PipedProcess)


@asynccontextmanager
async def open_piped(
    make: Callable[[trio.Process], P],
    argv: Sequence[str],
    *,
    stdin: int = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> AsyncIterator[P]:
    """Start ``argv`` with stdout and stderr piped (stdin too, unless told otherwise) and
    wrap it with ``make``; on the way out kill it if it still runs and reap it."""
    process = await trio.lowlevel.open_process(
        list(argv),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    running = make(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(running._drain_stderr)
            try:
                yield running
            finally:
                running.kill()
                with trio.move_on_after(KILL_GRACE, shield=True):
                    await process.wait()
                nursery.cancel_scope.cancel()
    finally:
        running.kill()
        with trio.move_on_after(KILL_GRACE, shield=True):
            await process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    await trio.aclose_forcefully(stream)


def npm_ci_if_stale(directory: Path) -> None:
    """Run ``npm ci`` (from the committed ``package-lock.json``) in ``directory`` when its
    ``node_modules`` is missing or older than the lockfile. Fails the test, never skips,
    without npm or when the install fails."""
    lockfile = directory / "package-lock.json"
    # npm writes node_modules/.package-lock.json at the end of every install.
    marker = directory / "node_modules" / ".package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lockfile.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"npm is required to install the packages of {directory}: not on PATH")
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"`npm ci` in {directory} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
