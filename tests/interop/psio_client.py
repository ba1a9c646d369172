"""A real python-socketio ``AsyncClient`` peer for tests/interop/test_python_client.py.

Usage: ``python psio_client.py URL PARSER SCENARIO``, PARSER being ``json`` (python-socketio's
default serializer) or ``msgpack`` (its msgpack serializer). It runs under asyncio, in its
own process, with ``transports=["websocket"]`` and ``reconnection=False``, and prints what
it observes as JSON lines ``{"event": NAME, ...}``, bytes as ``{"$bin": BASE64}``, like
``tests/js/client_scenarios.mjs``. Exit status: 0 after ``{"event": "done"}``, 3 after
``{"event": "error", ...}`` when the scenario outlives ``WATCHDOG``, and 1 with a traceback
on stderr when it fails. The server app is tests/interop/app.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Final

import socketio

WATCHDOG: Final = 8.0
WAIT: Final = 3.0
TOKEN: Final = "s3cret"
SERIALIZERS: Final = {"json": "default", "msgpack": "msgpack"}
WS: Final = ["websocket"]

Scenario = Callable[[str, str], Awaitable[None]]


# --------------------------------------------------------------------------- output


def to_json(value: object) -> object:
    """``value`` as JSON-able data, bytes as ``{"$bin": BASE64}``."""
    if isinstance(value, bytes | bytearray):
        return {"$bin": base64.b64encode(value).decode()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    return value


def report(event: str, **fields: object) -> None:
    """Print one JSON line."""
    print(json.dumps(to_json({"event": event, **fields})), flush=True)


# --------------------------------------------------------------------------- helpers


def new_client(serializer: str) -> socketio.AsyncClient:
    return socketio.AsyncClient(serializer=serializer, reconnection=False)


async def connect(
    client: socketio.AsyncClient,
    url: str,
    *,
    auth: object = None,
    namespaces: list[str] | None = None,
) -> None:
    await client.connect(
        url, auth=auth, transports=WS, namespaces=namespaces or ["/"], wait_timeout=WAIT
    )


def future() -> asyncio.Future[object]:
    return asyncio.get_running_loop().create_future()


async def wait(fut: asyncio.Future[object]) -> object:
    return await asyncio.wait_for(fut, WAIT)


async def request(
    client: socketio.AsyncClient, event: str, *args: object, namespace: str = "/"
) -> list[object]:
    """Emit with an ack callback; every ack argument (``call`` unpacks them)."""
    answered = future()

    def on_ack(*reply: object) -> None:
        answered.set_result(list(reply))

    await client.emit(event, args, namespace=namespace, callback=on_ack)
    reply = await wait(answered)
    assert isinstance(reply, list)
    return reply


async def call(
    client: socketio.AsyncClient, event: str, *args: object, namespace: str = "/"
) -> object:
    """Emit with an ack and return the one ack argument."""
    reply: object = await client.call(event, args, namespace=namespace, timeout=WAIT)
    return reply


def on_disconnect(client: socketio.AsyncClient, namespace: str = "/") -> asyncio.Future[object]:
    """A future for the reason of the client's next disconnect event."""
    reason = future()

    def handler(why: str) -> None:
        if not reason.done():
            reason.set_result(why)

    client.on("disconnect", handler, namespace=namespace)
    return reason


def patterned(length: int) -> bytes:
    return bytes(i % 251 for i in range(length))


# --------------------------------------------------------------------------- scenarios


async def connect_auth(url: str, serializer: str) -> None:
    auth = {"token": TOKEN, "user": "ada", "n": 7, "tags": ["a", "b"], "nested": {"ok": True}}
    client = new_client(serializer)
    echoed = future()

    def auth_echo(*args: object) -> None:
        echoed.set_result(list(args))

    client.on("auth_echo", auth_echo)
    await connect(client, url, auth=auth)
    report("connect", id=client.get_sid("/"))
    report("auth_echo", args=await wait(echoed))
    await client.disconnect()


async def refused(url: str, serializer: str) -> None:
    bad = new_client(serializer)
    errors: list[object] = []

    def connect_error(*args: object) -> None:
        errors.append(list(args))

    bad.on("connect_error", connect_error, namespace="/private")
    try:
        await connect(bad, url, auth={"token": "wrong"}, namespaces=["/private"])
    except socketio.exceptions.ConnectionError as exc:
        report("connect_error", message=str(exc), handler_args=errors, connected=bad.connected)
    else:
        raise AssertionError("the refused connect succeeded")
    good = new_client(serializer)
    await connect(good, url, auth={"token": TOKEN}, namespaces=["/private"])
    whoami = await call(good, "whoami", namespace="/private")
    report("connect", id=good.get_sid("/private"), whoami=whoami)
    await good.disconnect()


async def two_namespaces(url: str, serializer: str) -> None:
    client = new_client(serializer)
    await connect(client, url, auth={"who": "both"}, namespaces=["/", "/admin"])
    report(
        "whoami",
        root={"id": client.get_sid("/"), "reply": await call(client, "whoami")},
        admin={
            "id": client.get_sid("/admin"),
            "reply": await call(client, "whoami", namespace="/admin"),
        },
    )
    report("admin_only", reply=await call(client, "admin_only", "x", namespace="/admin"))
    await client.disconnect()


async def room_isolation(url: str, serializer: str) -> None:
    members = {"alice": "ws-1", "bob": "ws-1", "carol": "ws-2"}
    clients: dict[str, socketio.AsyncClient] = {}
    received: dict[str, list[object]] = {}
    for name in members:
        client = clients[name] = new_client(serializer)
        inbox = received[name] = []

        def receive_message(message: object, inbox: list[object] = inbox) -> None:
            inbox.append(message)

        client.on("receive_message", receive_message)
        await connect(client, url, auth={"name": name})
    joins = {name: await call(clients[name], "join_workspace", ws) for name, ws in members.items()}
    report("joins", joins=joins)
    dispatches = {
        "alice": await call(
            clients["alice"],
            "dispatch_message",
            {"workspaceId": "ws-1", "textMarker": "from-alice"},
        ),
        "carol": await call(
            clients["carol"],
            "dispatch_message",
            {"workspaceId": "ws-2", "textMarker": "from-carol"},
        ),
        "bob": await call(
            clients["bob"], "dispatch_message", {"workspaceId": "ws-2", "textMarker": "from-bob"}
        ),
    }
    report("dispatches", dispatches=dispatches)
    # Frames on one connection arrive in order: after the barrier's ack, everything the
    # server queued for that client before it has been handled.
    for client in clients.values():
        await call(client, "barrier")
    ids = {name: client.get_sid("/") for name, client in clients.items()}
    report("received", ids=ids, received=received)
    for client in clients.values():
        await client.disconnect()


async def acks(url: str, serializer: str) -> None:
    client = new_client(serializer)

    def question(payload: dict[str, int]) -> tuple[object, ...]:
        return {"answer": payload["q"] + 1}, "extra"

    client.on("question", question)
    await connect(client, url)
    report("echo", reply=await request(client, "echo", 1, "two", {"three": [3]}, None, True))
    report("add", reply=await call(client, "add", 2, 3))
    report("noop", reply=await request(client, "noop"))
    report("ask_me", reply=await call(client, "ask_me", {"q": 41}))
    await client.disconnect()


async def binary(url: str, serializer: str) -> None:
    client = new_client(serializer)
    pushed = future()

    def transform(payload: dict[str, bytes]) -> object:
        data = payload["data"]
        return {"reversed": data[::-1], "length": len(data)}

    def binary_push(*args: object) -> None:
        pushed.set_result(list(args))

    client.on("transform", transform)
    client.on("binary_push", binary_push)
    await connect(client, url)
    small = bytes([0, 1, 2, 253, 254, 255])
    payload = {
        "name": "blob",
        "data": small,
        "nested": {"list": [b"hi", 5, {"deep": patterned(100_000)}]},
    }
    report("echo", reply=await request(client, "echo", payload, b"*"))
    report("upload", reply=await call(client, "upload", {"file": small, "size": 6}))
    report("push_binary", reply=await call(client, "push_binary"))
    args = await wait(pushed)
    assert isinstance(args, list)
    first = args[0]
    assert isinstance(first, dict)
    report("binary_push", args=args, isBytes=isinstance(first["blob"], bytes))
    report("ask_binary", reply=await call(client, "ask_binary"))
    await client.disconnect()


async def broadcast_acks(url: str, serializer: str) -> None:
    clients = {name: new_client(serializer) for name in ("ana", "ben", "cy")}

    def ana_poll(question: object) -> object:
        return {"voter": "ana", "question": question}

    def ben_poll(question: object) -> object:
        return {"voter": "ben", "question": question}, 2

    # python-socketio always acks when its handler returns, so cy answers only after the
    # poll is over: a late answer the server must ignore.
    polled = asyncio.Event()
    release = asyncio.Event()

    async def cy_poll(question: object) -> object:
        polled.set()
        await release.wait()
        return {"voter": "cy", "question": "too late"}

    for name, handler in (("ana", ana_poll), ("ben", ben_poll), ("cy", cy_poll)):
        clients[name].on("poll", handler)
        await connect(clients[name], url, auth={"name": name})
        await call(clients[name], "join_room", "voters")
    reply = await call(clients["ana"], "start_poll", "voters", "lunch?")
    await call(clients["cy"], "barrier")
    ids = {name: client.get_sid("/") for name, client in clients.items()}
    report("poll", ids=ids, reply=reply, cyPolled=polled.is_set())
    release.set()
    report("after_late", reply=await call(clients["cy"], "barrier"))
    for client in clients.values():
        await client.disconnect()


async def client_disconnect(url: str, serializer: str) -> None:
    client = new_client(serializer)
    reason = on_disconnect(client)
    await connect(client, url, auth={"name": "leaver"})
    report("connect", id=client.get_sid("/"))
    await call(client, "barrier")
    await client.disconnect()
    report("disconnect", reason=await wait(reason))


async def server_disconnect(url: str, serializer: str) -> None:
    client = new_client(serializer)
    reason = on_disconnect(client)
    await connect(client, url, auth={"name": "kicked"})
    report("connect", id=client.get_sid("/"))
    await client.emit("kick_me")
    report("disconnect", reason=await wait(reason), connected=client.connected)


async def server_shutdown(url: str, serializer: str) -> None:
    client = new_client(serializer)
    reason = on_disconnect(client)
    await connect(client, url, auth={"name": "survivor"})
    report("connect", id=client.get_sid("/"))
    report("disconnect", reason=await asyncio.wait_for(reason, WATCHDOG))


async def heartbeat(url: str, serializer: str) -> None:
    client = new_client(serializer)
    await connect(client, url)
    await asyncio.sleep(1.0)  # the server pings every 100 ms meanwhile
    reply = await call(client, "barrier")
    report("alive", id=client.get_sid("/"), connected=client.connected, reply=reply)
    await client.disconnect()


async def last_moments(url: str, serializer: str) -> None:
    """Room "lobby" has two members; the leaver disconnects, and the stayer gets the
    "left" the server's disconnecting handler sent. Then the test starts killed_in_room
    and kills it: a second "left". The stayer reports both and leaves."""
    stay, leave = new_client(serializer), new_client(serializer)
    left: asyncio.Queue[object] = asyncio.Queue()

    def on_left(info: object) -> None:
        left.put_nowait(info)

    stay.on("left", on_left)
    await connect(stay, url, auth={"name": "stayer"})
    await connect(leave, url, auth={"name": "leaver"})
    await call(stay, "join_room", "lobby")
    await call(leave, "join_room", "lobby")
    report("joined", stayer=stay.get_sid("/"), leaver=leave.get_sid("/"))
    await leave.disconnect()
    report("left", args=[await asyncio.wait_for(left.get(), WAIT)])
    report("left", args=[await asyncio.wait_for(left.get(), WAIT)])
    await stay.disconnect()


async def killed_in_room(url: str, serializer: str) -> None:
    """Joins "lobby", reports "connect", then waits to be killed by the test."""
    client = new_client(serializer)
    await connect(client, url, auth={"name": "victim"})
    rooms = await call(client, "join_room", "lobby")
    report("connect", id=client.get_sid("/"), rooms=rooms)
    await asyncio.Event().wait()


async def killed(url: str, serializer: str) -> None:
    client = new_client(serializer)
    await connect(client, url, auth={"name": "victim"})
    report("connect", id=client.get_sid("/"))
    await asyncio.Event().wait()


SCENARIOS: Final[dict[str, Scenario]] = {
    scenario.__name__: scenario
    for scenario in (
        connect_auth,
        refused,
        two_namespaces,
        room_isolation,
        acks,
        binary,
        broadcast_acks,
        client_disconnect,
        server_disconnect,
        server_shutdown,
        heartbeat,
        last_moments,
        killed_in_room,
        killed,
    )
}


async def main(url: str, parser: str, name: str) -> int:
    scenario = SCENARIOS.get(name)
    if scenario is None or parser not in SERIALIZERS:
        report("error", message=f"unknown scenario {name!r} or parser {parser!r}")
        return 1
    try:
        await asyncio.wait_for(scenario(url, SERIALIZERS[parser]), WATCHDOG)
    except TimeoutError:
        report("error", message=f"scenario {name} timed out")
        return 3
    report("done")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: psio_client.py URL json|msgpack SCENARIO")
    sys.exit(asyncio.run(main(*sys.argv[1:])))
