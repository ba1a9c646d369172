"""One task that reads and writes for many WebSocket connections (Linux ``epoll``).

Waiting on each connection's socket in its own task costs Trio a task switch, an
``epoll_ctl`` and a wrapper's worth of bookkeeping per read. The reactor keeps every
socket it serves registered in one epoll instance of its own, waits on that one file
descriptor (``trio.lowlevel.wait_readable`` on it), and when it is ready handles every
ready socket in turn: a readable one is read once and its whole messages are handed to
its connection (which decodes them and queues the app's work for its actor task), a
writable one gets the bytes the kernel pushed back before. Each connection stays an
actor: one task with its own bounded inbox, running its handlers in order.

Frames a connection's handlers produce while more of its work waits are held back
(``Outbox.hold``) so that one write sends them all; the reactor's flusher task writes
them as soon as the holder yields, as a connection's own writer task would.

The reactor serves only plain TCP sockets on platforms with ``epoll``; TLS streams,
in-memory streams, the ASGI front and HTTP long-polling keep the per-task path.
"""

from __future__ import annotations

import contextlib
import logging
import select
from typing import Final, Protocol

import attrs
import trio

__all__ = ["Reactor", "ReactorClient"]

logger = logging.getLogger(__name__)

_READ: Final = getattr(select, "EPOLLIN", 0x001) | getattr(select, "EPOLLRDHUP", 0x2000)
_WRITE: Final = getattr(select, "EPOLLOUT", 0x004)
_ERROR: Final = getattr(select, "EPOLLERR", 0x008) | getattr(select, "EPOLLHUP", 0x010)
_MAX_EVENTS: Final = 1024


class ReactorClient(Protocol):
    """A connection the reactor reads and writes for."""

    def on_readable(self, now: float) -> None:
        """The socket has bytes (or an end, or an error): read once, without blocking.

        ``now`` is when the reactor learned it (Trio's clock, read once a pass): the
        time a pong arrived, for the heartbeat, is not pushed back by the sockets
        served before this one."""

    def on_writable(self) -> None:
        """The socket takes bytes again: write what was left, without blocking."""

    def flush_held(self) -> None:
        """Write what the connection's outbox holds back (see ``Reactor.flush_soon``)."""

    def on_reactor_error(self) -> None:
        """A callback raised: the connection must close (the error was logged)."""


@attrs.define(eq=False)
class Reactor:
    """The epoll reactor: ``run`` it in a nursery that outlives the connections.

    ``register`` a connection's socket once its WebSocket is open; ``want`` says what to
    wait for (reading, writing, both, or neither while its inbox is full); ``unregister``
    before the socket is closed.
    """

    _epoll: select.epoll | None = attrs.field(default=None, init=False)
    _clients: dict[int, ReactorClient] = attrs.field(factory=dict, init=False)
    _masks: dict[int, int] = attrs.field(factory=dict, init=False)
    _held: list[ReactorClient] = attrs.field(factory=list, init=False)
    _flusher: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)

    @staticmethod
    def available() -> bool:
        """Whether this platform has ``epoll``."""
        return hasattr(select, "epoll")

    @property
    def running(self) -> bool:
        """Whether ``run`` is serving (connections may register)."""
        return self._epoll is not None

    def __len__(self) -> int:
        return len(self._clients)

    def register(self, fd: int, client: ReactorClient) -> None:
        """Start reading ``fd`` for ``client``."""
        assert self._epoll is not None, "the reactor is not running"
        self._epoll.register(fd, _READ)
        self._clients[fd] = client
        self._masks[fd] = _READ

    def want(self, fd: int, *, read: bool, write: bool) -> None:
        """Wait on ``fd`` for reading and/or writing (neither: leave it until asked)."""
        mask = (_READ if read else 0) | (_WRITE if write else 0)
        if self._masks.get(fd, mask) != mask and self._epoll is not None:
            self._epoll.modify(fd, mask)
            self._masks[fd] = mask

    def unregister(self, fd: int) -> None:
        """Stop serving ``fd`` (before it is closed)."""
        if self._clients.pop(fd, None) is not None:
            del self._masks[fd]
            if self._epoll is not None:
                with contextlib.suppress(OSError):  # already closed elsewhere
                    self._epoll.unregister(fd)

    def flush_soon(self, client: ReactorClient) -> None:
        """Have the flusher task call ``client.flush_held`` once the caller yields."""
        self._held.append(client)
        if len(self._held) == 1:
            self._flusher.unpark()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the registered sockets until cancelled.

        Cancellation: the epoll instance is closed; registered connections must have
        been closed first (their sockets are left as they are).
        """
        epoll = self._epoll = select.epoll()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._flush_loop)
                task_status.started()
                clients = self._clients
                clock = trio.current_time
                while True:
                    await trio.lowlevel.wait_readable(epoll)
                    ready = epoll.poll(0, _MAX_EVENTS)
                    now = clock()
                    for fd, events in ready:
                        client = clients.get(fd)
                        if client is None:
                            continue
                        try:
                            if events & (_READ | _ERROR):
                                client.on_readable(now)
                            if events & _WRITE and fd in clients:
                                client.on_writable()
                        except Exception:
                            # The per-connection boundary: a bug in serving one
                            # connection ends that connection, never the reactor.
                            logger.exception("reactor: serving fd %d failed", fd)
                            client.on_reactor_error()
        finally:
            self._epoll = None
            epoll.close()

    async def _flush_loop(self) -> None:
        while True:
            await self._flusher.park()
            held, self._held = self._held, []
            for client in held:
                try:
                    client.flush_held()
                except Exception:
                    logger.exception("reactor: writing held frames failed")
                    client.on_reactor_error()
