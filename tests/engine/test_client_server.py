"""roomcast's own Trio client against roomcast's own server (real sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from roomcast.engine import ConnectRefusedError, Server, Socket, open_client
from roomcast.protocol import MSGPACK_PARSER, JsonValue, Parser


def app(parser: Parser | None = None) -> Server:
    server = Server(parser=parser) if parser is not None else Server()
    admin = server.of("/admin")

    @admin.use
    async def only_admins(socket: Socket, auth: JsonValue) -> None:
        if auth != {"token": "s3cret"}:
            raise ConnectRefusedError("not allowed", {"hint": "token"})

    @server.on("echo")
    async def echo(socket: Socket, *args: JsonValue) -> tuple[JsonValue, ...]:
        return args

    @server.on("join")
    async def join(socket: Socket, room: str) -> None:
        await socket.join(room)

    @server.on("say")
    async def say(socket: Socket, room: str, text: str) -> None:
        await server.to(room).emit("said", text)

    @server.on("ask-me")
    async def ask_me(socket: Socket, question: str) -> JsonValue:
        reply = await socket.call("question", question)
        return list(reply)

    return server


@asynccontextmanager
async def running(server: Server) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve, "127.0.0.1", 0)
        try:
            yield f"http://{host}:{port}"
        finally:
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("parser", ["json", "msgpack"])
async def test_our_client_and_server_talk_both_parsers(parser: str) -> None:
    server = app(MSGPACK_PARSER if parser == "msgpack" else None)
    with trio.fail_after(10):
        async with running(server) as url, open_client(url, parser=parser) as client:  # type: ignore[arg-type]
            assert await client.call("echo", 1, "two", {"3": [True]}, b"\x00\xff") == (
                1,
                "two",
                {"3": [True]},
                b"\x00\xff",
            )

            @client.on("question")
            async def answer(question: str) -> str:
                return question.upper()

            assert await client.call("ask-me", "why") == (["WHY"],)
            await client.emit("join", "r")
            await client.call("echo")  # the join is handled before this ack
            await client.emit("say", "r", "hello")
            assert await client.receive() == ("said", ("hello",))


async def test_our_client_sees_a_refusal_with_data_and_joins_with_auth() -> None:
    server = app()
    with trio.fail_after(10):
        async with running(server) as url:
            with pytest.raises(ConnectRefusedError) as info:
                async with open_client(url, namespaces={"/admin": {"token": "no"}}):
                    pass
            assert info.value.data == {"hint": "token"}
            async with open_client(url, namespaces={"/admin": {"token": "s3cret"}}) as client:
                assert client.sid("/admin") in server.of("/admin").sockets
