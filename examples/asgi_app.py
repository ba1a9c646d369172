"""The workspace chat (examples/workspace_chat.py) mounted in a Starlette app, served by an
ASGI server on Trio.

Run from the repository root (``pip install -e '.[asgi]'`` brings hypercorn and Starlette):
``hypercorn --worker-class trio examples.asgi_app:app`` then
- http://127.0.0.1:8000/hello is the Starlette app's own route;
- Socket.IO clients connect at ``/socket.io/`` (``io("http://127.0.0.1:8000")``);
- http://127.0.0.1:8000/ is the chat page, served by the chat server as on its own.

The chat keeps its event log in ``./roomcast-log`` with recovery on, as
``python examples/workspace_chat.py`` does; one worker process only (two would share one
log directory: the second refuses to start).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from examples.workspace_chat import build_server
from roomcast.engine import RecoveryConfig
from roomcast.engine.asgi import AsgiApp

chat = AsgiApp(build_server(recovery=RecoveryConfig()))
"""The chat server as an ASGI app (it can also be served alone:
``hypercorn --worker-class trio examples.asgi_app:chat``)."""


async def hello(request: Request) -> PlainTextResponse:
    """The host app's own route."""
    return PlainTextResponse("hello from Starlette\n")


# Mounted at "/", after the app's own routes: the chat answers /socket.io/ (it matches its
# config.path against the whole request path) and its page. Starlette runs no lifespan of
# a mounted app, so the chat's runs as the Starlette app's.
app = Starlette(routes=[Route("/hello", hello), Mount("/", app=chat)], lifespan=chat.lifespan)
