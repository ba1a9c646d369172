"""python-socketio's ``AsyncClient`` over HTTP long-polling only, for test_polling_peers.py.

Usage: python polling_psio_client.py URL [polling|default]

Two clients, a in workspace "alpha" and c in "beta", both with ``transports=["polling"]``
(or, with ``default``, the client's default transports: polling, then the upgrade to
WebSocket).
Prints JSON lines ``{"event": NAME, ...}``; after ``checkpoint`` it waits for one line on
stdin (the test inspects the server meanwhile), then disconnects and prints ``done``.
Exit 0 after ``done``, 1 after ``{"event": "error"}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import traceback
from typing import Final

import socketio

WATCHDOG: Final = 15.0
QUIET: Final = 0.3


def report(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def patterned(length: int) -> bytes:
    return bytes(i % 251 for i in range(length))


class Client:
    """One AsyncClient and the receive_message events it got."""

    def __init__(self, name: str, transports: list[str] | None) -> None:
        self.name = name
        self.transports = transports
        self.sio = socketio.AsyncClient(reconnection=False)
        self.messages: list[dict[str, object]] = []
        self._changed = asyncio.Event()
        self.sio.on("receive_message", self._received)

    async def _received(self, message: dict[str, object]) -> None:
        self.messages.append(message)
        self._changed.set()

    async def wait_messages(self, count: int) -> None:
        """Wait until ``count`` receive_message events arrived."""
        async with asyncio.timeout(3):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()

    async def connect(self, url: str) -> None:
        await self.sio.connect(url, transports=self.transports, wait_timeout=5)

    async def call(self, event: str, *args: object) -> object:
        return await self.sio.call(event, args if len(args) > 1 else args[0], timeout=5)


async def scenario(url: str, transports: list[str] | None) -> None:
    a, c = Client("a", transports), Client("c", transports)
    await asyncio.gather(a.connect(url), c.connect(url))
    for client in (a, c):
        report(
            "connected",
            name=client.name,
            sid=client.sio.get_sid(),
            transport=client.sio.transport(),
        )
    for client, workspace in ((a, "alpha"), (c, "beta")):
        ack = await client.call("join_workspace", workspace)
        assert ack == {"ok": True, "workspaceId": workspace, "history": []}, ack

    sent = await a.call("dispatch_message", {"workspaceId": "alpha", "textMarker": "from psio"})
    assert isinstance(sent, dict), sent
    assert sent["ok"] is True, sent
    assert sent["delivered"] == 1, sent
    await a.wait_messages(1)
    assert a.messages[0]["text"] == "from psio", a.messages
    assert a.messages[0]["sender"] == a.sio.get_sid(), a.messages

    # Binary over polling: base64 "b" packets, attachments in order.
    blob = patterned(50_000)
    echoed = await a.sio.call("echo", ({"blob": blob, "n": 7}, b"\x00\xff", "é ☃"), timeout=5)
    # Several ack arguments come back as a tuple.
    assert isinstance(echoed, tuple), type(echoed)
    assert len(echoed) == 3, len(echoed)
    assert echoed[0] == {"blob": blob, "n": 7}, "the blob differs"
    assert echoed[1] == b"\x00\xff", echoed[1]
    assert echoed[2] == "é ☃", echoed[2]
    report("binary", size=len(echoed[0]["blob"]), tail=base64.b64encode(echoed[1]).decode())

    await asyncio.sleep(QUIET)
    assert c.messages == [], c.messages
    report(
        "checkpoint",
        transports={str(cl.sio.get_sid()): cl.sio.transport() for cl in (a, c)},
        received=[len(a.messages), len(c.messages)],
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for client in (a, c):
        await client.sio.disconnect()
    report("done")


async def main() -> int:
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["polling"], ["default"]):
        print("usage: python polling_psio_client.py URL [polling|default]", file=sys.stderr)
        return 2
    transports = None if sys.argv[2:] == ["default"] else ["polling"]
    try:
        async with asyncio.timeout(WATCHDOG):
            await scenario(sys.argv[1], transports)
    except Exception:  # noqa: BLE001 - the one boundary: report any failure as a line
        report("error", message=traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
