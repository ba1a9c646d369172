"""The chat app: users (named in their auth) join rooms, talk in them, and get acks.

Events (client -> server), each answered through the ack:

* ``join(room)`` -> ``{"ok": True, "room": room}``; the others in the room get
  ``joined {"room", "user"}``.
* ``say(room, text)`` -> ``{"ok": True, "delivered": n}``; everyone in the room (the
  sender too) gets ``message {"room", "user", "text"}``.
* ``leave(room)`` -> ``{"ok": True}``; the others get ``left {"room", "user"}``.

A connection without ``{"user": name}`` in its auth is refused.

Run it: ``roomcast serve chat_app.app:build_server --port 5000`` (from ``examples/``).
"""

from __future__ import annotations

from roomcast.engine import Config, ConnectRefusedError, Server, Socket
from roomcast.protocol import JsonValue


def _user(socket: Socket) -> str:
    user = socket.data["user"]
    assert isinstance(user, str)
    return user


def build_server(config: Config | None = None) -> Server:
    """The chat app's server."""
    server = Server(config=config or Config())
    main = server.of("/")

    @main.use
    async def identify(socket: Socket, auth: JsonValue) -> None:
        user = auth.get("user") if isinstance(auth, dict) else None
        if not isinstance(user, str) or not user:
            raise ConnectRefusedError("who are you?", {"expected": {"user": "a name"}})
        socket.data["user"] = user

    @server.on("join")
    async def join(socket: Socket, room: JsonValue) -> JsonValue:
        if not isinstance(room, str) or not room:
            return {"ok": False, "error": "room must be a non-empty string"}
        await socket.join(room)
        await socket.to(room).emit("joined", {"room": room, "user": _user(socket)})
        return {"ok": True, "room": room}

    @server.on("say")
    async def say(socket: Socket, room: JsonValue, text: JsonValue) -> JsonValue:
        if not isinstance(room, str) or room not in socket.rooms or room == socket.sid:
            return {"ok": False, "error": "join the room first"}
        if not isinstance(text, str):
            return {"ok": False, "error": "text must be a string"}
        message: JsonValue = {"room": room, "user": _user(socket), "text": text}
        delivered = await server.to(room).emit("message", message)
        return {"ok": True, "delivered": delivered}

    @server.on("leave")
    async def leave(socket: Socket, room: JsonValue) -> JsonValue:
        if not isinstance(room, str) or room not in socket.rooms:
            return {"ok": False, "error": "not in that room"}
        await socket.leave(room)
        await server.to(room).emit("left", {"room": room, "user": _user(socket)})
        return {"ok": True}

    return server
