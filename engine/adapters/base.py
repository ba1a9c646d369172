"""The adapter interface: room membership and broadcast for one namespace.

The in-memory adapter is the default; a Redis adapter implements the same interface to
make several nodes act as one. Method names follow Node ``socket.io``'s ``Adapter``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import Protocol

import attrs

from roomcast.engine.actors.outbox import Outbox, OutFrame

__all__ = ["Adapter", "BroadcastOptions", "LocalSocket"]


class LocalSocket(Protocol):
    """What an adapter needs of a socket connected to this node."""

    @property
    def sid(self) -> str: ...
    @property
    def outbox(self) -> Outbox: ...
    def evict(self, reason: str) -> None: ...


@attrs.frozen(kw_only=True)
class BroadcastOptions:
    """Who a broadcast or a server-side operation is for.

    Attributes:
        rooms: Target rooms (their union); empty means the whole namespace.
        except_rooms: Sockets in any of these rooms are left out.
        except_sids: Sockets left out by id (the sender, for ``socket.broadcast``).
        volatile: Drop the frames for a socket that cannot take them now.
        local: Only sockets on this node (meaningful for multi-node adapters).
    """

    rooms: frozenset[str] = frozenset()
    except_rooms: frozenset[str] = frozenset()
    except_sids: frozenset[str] = frozenset()
    volatile: bool = False
    local: bool = False


class Adapter(abc.ABC):
    """Membership and fan-out for one namespace. All methods run in Trio tasks."""

    @abc.abstractmethod
    def add_socket(self, socket: LocalSocket) -> None:
        """Register a socket that just connected to the namespace (joins its own sid room)."""

    @abc.abstractmethod
    async def add_all(self, sid: str, rooms: Iterable[str]) -> None:
        """Make socket ``sid`` join ``rooms``. Cancellation: some rooms may be joined."""

    @abc.abstractmethod
    async def delete(self, sid: str, room: str) -> None:
        """Make socket ``sid`` leave ``room``."""

    @abc.abstractmethod
    async def delete_all(self, sid: str) -> None:
        """Make socket ``sid`` leave every room and forget it."""

    @abc.abstractmethod
    async def broadcast(
        self,
        frames: tuple[OutFrame, ...],
        opts: BroadcastOptions,
        *,
        on_member: Callable[[str], None] | None = None,
    ) -> int:
        """Send ``frames`` to every matching socket once; return how many were reached.

        ``on_member`` is called with each reached socket's id (broadcast acks use it).
        Returns once every frame is in every recipient's outbox, so two broadcasts from
        one task reach each socket in the order they were made.
        """

    @abc.abstractmethod
    def sockets(self, opts: BroadcastOptions) -> set[str]:
        """The ids of the matching sockets on this node."""

    @abc.abstractmethod
    def socket_rooms(self, sid: str) -> frozenset[str]:
        """The rooms socket ``sid`` is in (its own id included)."""

    @abc.abstractmethod
    def rooms(self) -> frozenset[str]:
        """Every room with at least one member (sid rooms excluded)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop every room actor. Cancellation: actors may be left running."""
