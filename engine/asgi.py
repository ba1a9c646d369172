"""roomcast as an ASGI application, for an ASGI server that runs on Trio.

``AsgiApp(server)`` answers the ``http``, ``websocket`` and ``lifespan`` scopes:

- ``http``: Engine.IO long-polling (a held GET ends when the client disconnects: the ASGI
  server's ``http.disconnect``), ``/healthz`` and the server's static files;
- ``websocket``: an Engine.IO WebSocket, new or upgrading a polling session; refusals are
  HTTP answers through the ``websocket.http.response`` extension, as on the built-in front;
- ``lifespan``: ``Server.running()`` (event log, supervisor, the connections' nursery)
  and the ``services`` (a Redis cluster's ``run``), for the app's lifetime.

Both fronts route every request through ``Server.handle_request``, so the wire behaviour
is the same (docs/asgi.md says where the ASGI server's own answers differ). Serve it with
``hypercorn --worker-class trio module:app``; mount it in Starlette or FastAPI (running
on Trio through anyio) with the framework's ``lifespan=app.lifespan``, or beside a
Quart-Trio app with hypercorn's ``TrioDispatcherMiddleware``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

import attrs
import trio

from roomcast.engine.errors import TransportClosed
from roomcast.engine.server import Server
from roomcast.engine.transport.asgi import (
    AsgiHttpExchange,
    AsgiReceive,
    AsgiScope,
    AsgiSend,
    asgi_request,
)
from roomcast.engine.transport.http import error_body

__all__ = ["AsgiApp", "Service"]

logger = logging.getLogger(__name__)

Service = Callable[..., Awaitable[object]]
"""A long-running task that the lifespan starts with ``nursery.start`` before the server,
and cancels after it (a ``RedisCluster.run``)."""


def _services(value: Iterable[Service]) -> tuple[Service, ...]:
    return tuple(value)


def _require_trio() -> None:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        raise RuntimeError(
            "roomcast's ASGI app runs on Trio only: serve it with a Trio worker "
            "(hypercorn --worker-class trio)"
        ) from None


def _describe(exc: BaseException) -> str:
    """One line for the ASGI server: the innermost errors (not "Exceptions from Trio
    nursery")."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


@attrs.define(eq=False)
class AsgiApp:
    """``server`` as an ASGI 3.0 application (see the module docstring).

    Attributes:
        server: The Socket.IO server; its ``config.path`` (``/socket.io/``) is matched
            against the scope's whole path, so mount the app at ``/`` or at that path.
        services: Started, in order, before the server when the lifespan starts, and
            cancelled after it when the lifespan ends.
    """

    server: Server
    services: tuple[Service, ...] = attrs.field(default=(), converter=_services)
    _running: bool = attrs.field(default=False, init=False)

    async def __call__(self, scope: AsgiScope, receive: AsgiReceive, send: AsgiSend) -> None:
        """Answer one ASGI scope.

        Cancellation: a WebSocket connection closes as in a server shutdown; a held
        polling GET is answered CLOSE.
        """
        kind = scope.get("type")
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind in ("http", "websocket"):
            await self._request(scope, receive, send)
        else:
            raise ValueError(f"roomcast's ASGI app has no {kind!r} scope")

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Run the services and the server for the block: what the ``lifespan`` scope
        does, for a framework that runs its mounted apps' lifespans itself
        (``Starlette(lifespan=roomcast_app.lifespan)``; ``app`` is the framework's).

        Cancellation: as leaving the block: connections close with "server shutting
        down", the log closes, then the services stop.

        Raises:
            RuntimeError: Not running on Trio, or running already.
        """
        _require_trio()
        async with trio.open_nursery() as nursery:
            for service in self.services:
                await nursery.start(service)
            async with self.server.running():
                self._running = True
                try:
                    yield
                finally:
                    self._running = False
            nursery.cancel_scope.cancel()

    async def _lifespan(self, receive: AsgiReceive, send: AsgiSend) -> None:
        message = await receive()
        if message.get("type") != "lifespan.startup":
            return
        started = False
        failure: str | None = None
        try:
            async with self.lifespan():
                await send({"type": "lifespan.startup.complete"})
                started = True
                while (await receive()).get("type") != "lifespan.shutdown":
                    pass
        except Exception as exc:
            # The app's boundary: a server that cannot start (a locked log) or stop is
            # reported to the ASGI server, which then stops.
            logger.exception("roomcast's lifespan failed")
            failure = _describe(exc)
        if failure is None:
            await send({"type": "lifespan.shutdown.complete"})
        else:
            phase = "shutdown" if started else "startup"
            await send({"type": f"lifespan.{phase}.failed", "message": failure})

    async def _request(self, scope: AsgiScope, receive: AsgiReceive, send: AsgiSend) -> None:
        exchange = AsgiHttpExchange(scope=scope, receive=receive, send=send)
        if exchange.is_websocket and (await receive()).get("type") != "websocket.connect":
            return
        request = asgi_request(scope)
        if not self._running:
            logger.error(
                "a request before roomcast's lifespan started: the ASGI server must run the "
                "lifespan scope, or the framework that mounts the app its lifespan "
                "(Starlette(lifespan=app.lifespan))"
            )
            await exchange.respond(503, error_body(3, "Server not started"))
            return
        try:
            await self.server.handle_request(exchange, request)
        except TransportClosed:
            pass
        except Exception:
            # The per-request boundary, as on the built-in front: logged, answered 500 if
            # nothing was answered yet, never the ASGI server's problem.
            logger.exception("request handling failed for %s", request.remote)
            with trio.move_on_after(self.server.config.close_grace, shield=True):
                await exchange.respond(500, error_body(3, "Internal server error"))
