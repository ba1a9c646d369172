"""The workspace chat (with an ``echo`` handler) mounted in each ASGI framework the front
supports, for hypercorn's Trio worker in tests/asgi/test_peers.py.

One hypercorn process serves one of ``starlette_app``, ``fastapi_app`` or ``quart_app``;
each mounts the same ``chat`` (only the served one's lifespan runs it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from fastapi import FastAPI
from hypercorn.middleware.dispatcher import TrioDispatcherMiddleware
from quart_trio import QuartTrio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from examples.workspace_chat import build_server
from roomcast.engine import Config, Socket
from roomcast.engine.asgi import AsgiApp
from roomcast.protocol import JsonValue

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework

server = build_server(Config(ping_interval=2.0, ping_timeout=2.0))


@server.on("echo")
async def echo(socket: Socket, *args: JsonValue) -> tuple[JsonValue, ...]:
    """Every argument back, binary included."""
    return args


chat = AsgiApp(server)


async def hello(request: Request) -> PlainTextResponse:
    """The host app's own route."""
    return PlainTextResponse("hello from Starlette\n")


starlette_app = Starlette(
    routes=[Route("/hello", hello), Mount("/", app=chat)], lifespan=chat.lifespan
)

# FastAPI runs on Trio through anyio; it runs no mounted app's lifespan either.
fastapi_app = FastAPI(lifespan=chat.lifespan)


@fastapi_app.get("/hello")
async def fastapi_hello() -> dict[str, str]:
    """The host app's own route."""
    return {"hello": "from FastAPI"}


fastapi_app.mount("/", chat)

# Quart-Trio mounts nothing itself: hypercorn's dispatcher sends /socket.io/ to the chat
# and runs both apps' lifespans.
quart = QuartTrio(__name__)


@quart.route("/hello")
async def quart_hello() -> str:
    """The host app's own route."""
    return "hello from Quart-Trio\n"


# (hypercorn types ASGI messages as TypedDicts, the chat takes them as plain mappings.)
quart_app = TrioDispatcherMiddleware({"/socket.io": cast("ASGIFramework", chat), "": quart})
