"""Subprocesses that print JSON lines: cluster nodes and the Node.js client driver."""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, cast

import attrs
import trio

from tests.processes import PipedProcess, open_piped

ROOT: Final = Path(__file__).resolve().parents[2]

Line = dict[str, object]


@attrs.define(eq=False, kw_only=True)
class LineProcess(PipedProcess):
    """A running process: send it JSON lines, wait for the JSON lines it prints.

    Lines that ``expect`` skips are kept, so a later ``expect`` can still find them.
    """

    name: str
    backlog: list[Line] = attrs.field(factory=list)
    _buffer: bytearray = attrs.field(factory=bytearray)
    _eof: bool = False

    async def send(self, value: Mapping[str, object]) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        await stdin.send_all((json.dumps(value) + "\n").encode())

    async def _read_line(self) -> Line:
        stdout = self.process.stdout
        assert stdout is not None
        while b"\n" not in self._buffer:
            if self._eof:
                raise AssertionError(f"{self.name} ended{self.diagnostics()}")
            chunk = await stdout.receive_some(65_536)
            if not chunk:
                self._eof = True
                continue
            self._buffer += chunk
        raw, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        if not isinstance(line, dict):  # a plain text line
            return {"event": "text", "text": raw.decode(errors="replace")}
        if line.get("event") == "error":
            raise AssertionError(f"{self.name} failed: {line}{self.diagnostics()}")
        return cast("Line", line)

    async def expect(self, predicate: Callable[[Line], bool]) -> Line:
        """The first line (kept or new) that ``predicate`` accepts; it is consumed."""
        for index, line in enumerate(self.backlog):
            if predicate(line):
                del self.backlog[index]
                return line
        while True:
            line = await self._read_line()
            if predicate(line):
                return line
            self.backlog.append(line)

    async def wait_for(self, predicate: Callable[[Line], bool]) -> None:
        """Read until some line (kept or new) is one ``predicate`` accepts; unlike
        ``expect``, every line stays in the backlog."""
        if any(predicate(line) for line in self.backlog):
            return
        while True:
            line = await self._read_line()
            self.backlog.append(line)
            if predicate(line):
                return

    async def expect_event(self, event: str, **fields: object) -> Line:
        """The first line with ``event`` and these field values."""
        return await self.expect(
            lambda line: (
                line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
            )
        )

    def diagnostics(self) -> str:
        return (
            f"\n  {self.name} backlog: {self.backlog[-20:]}"
            f"\n  {self.name} stderr: {self.stderr.decode(errors='replace')[-3000:]}"
        )


@asynccontextmanager
async def open_line_process(
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
) -> AsyncIterator[LineProcess]:
    """Start a process (in ``cwd``, the repository by default, with the repository on
    its import path); on the way out kill it (by PID) if it still runs, and reap it."""
    if cwd is not None:
        await trio.Path(cwd).mkdir(parents=True, exist_ok=True)
    async with open_piped(
        lambda process: LineProcess(name=name, process=process),
        argv,
        cwd=cwd or ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    ) as running:
        yield running


@attrs.define(eq=False)
class NodeProcess:
    """A cluster node process (tests/adapters/cluster_node.py)."""

    proc: LineProcess
    port: int
    node_id: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


NODE_ARGV: Final = (sys.executable, "-m", "tests.adapters.cluster_node")


async def node_listening(proc: LineProcess) -> NodeProcess:
    """Wait until a cluster node process listens."""
    line = await proc.expect_event("listening")
    port, node = line["port"], line["node"]
    assert isinstance(port, int)
    assert isinstance(node, str)
    return NodeProcess(proc=proc, port=port, node_id=node)


@attrs.define(eq=False)
class Driver:
    """The Node.js client driver (tests/js/cluster_driver.mjs) and its clients."""

    proc: LineProcess
    _tags: itertools.count[int] = attrs.field(factory=itertools.count)

    async def connect(
        self,
        client: str,
        url: str,
        answers: Mapping[str, list[object]] | None = None,
        *,
        auth: Mapping[str, object] | None = None,
    ) -> str:
        command = {"cmd": "connect", "id": client, "url": url, "answers": answers or {}}
        if auth is not None:
            command["auth"] = dict(auth)
        await self.proc.send(command)
        line = await self.proc.expect(
            lambda line: (
                line.get("id") == client and line.get("event") in ("connected", "connect_error")
            )
        )
        assert line["event"] == "connected", line
        sid = line["sid"]
        assert isinstance(sid, str)
        return sid

    async def drop(self, client: str) -> None:
        """Close ``client``'s transport (it keeps its session, for a recovery)."""
        await self.proc.send({"cmd": "drop", "id": client})
        await self.proc.expect_event("disconnected", id=client)

    async def reconnect(self, client: str) -> tuple[str, bool]:
        """Reconnect ``client`` after a ``drop``; its socket id and whether it was
        recovered."""
        await self.proc.send({"cmd": "reconnect", "id": client})
        line = await self.proc.expect_event("connected", id=client)
        sid, recovered = line["sid"], line["recovered"]
        assert isinstance(sid, str)
        assert isinstance(recovered, bool)
        return sid, recovered

    async def call(self, client: str, name: str, *args: object) -> list[object]:
        """Emit ``name`` with an ack from ``client``; the ack's arguments."""
        tag = f"t{next(self._tags)}"
        await self.proc.send(
            {"cmd": "emit", "id": client, "tag": tag, "name": name, "args": list(args)}
        )
        line = await self.proc.expect(lambda line: line.get("tag") == tag)
        assert line["event"] == "ack", line
        result = line["args"]
        assert isinstance(result, list)
        return result

    async def received(self, client: str, name: str) -> list[object]:
        """The arguments of the next ``name`` event ``client`` received."""
        line = await self.proc.expect(
            lambda line: (
                line.get("event") == "recv"
                and line.get("id") == client
                and line.get("name") == name
            )
        )
        args = line["args"]
        assert isinstance(args, list)
        return args

    def take_received(self, client: str) -> list[tuple[object, list[object]]]:
        """Every event ``client`` received that no ``expect`` consumed yet (in order)."""
        taken = [
            line
            for line in self.proc.backlog
            if line.get("event") == "recv" and line.get("id") == client
        ]
        self.proc.backlog = [line for line in self.proc.backlog if line not in taken]
        return [(line["name"], cast("list[object]", line["args"])) for line in taken]


@asynccontextmanager
async def open_driver(js_dir: Path) -> AsyncIterator[Driver]:
    node = "node"
    async with open_line_process("driver", [node, str(js_dir / "cluster_driver.mjs")]) as proc:
        yield Driver(proc=proc)
