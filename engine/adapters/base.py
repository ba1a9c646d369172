"""The adapter interface: room membership and broadcast for one namespace.

The in-memory adapter is the default; a Redis adapter implements the same interface to
make several nodes act as one. Method names follow Node ``socket.io``'s ``Adapter``.

The cluster-wide operations (``fetch_sockets``, ``add_sockets``, ``del_sockets``,
``disconnect_sockets``, ``broadcast_with_ack``, ``server_side_emit``,
``server_side_call``) have single-node defaults here, which the in-memory adapter uses;
a multi-node adapter overrides them to reach the other nodes as well. They act on this
node's sockets through the namespace the adapter is bound to (``bind``), which
implements ``AdapterHost``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from roomcast.engine.actors.outbox import Outbox
from roomcast.engine.adapters.shared import ClusterLog
from roomcast.engine.handshake import Handshake
from roomcast.engine.transport.frames import OutFrame
from roomcast.protocol import JsonValue

if TYPE_CHECKING:
    from roomcast.engine.recovery import MissedEvent

__all__ = [
    "AckAnswer",
    "Adapter",
    "AdapterHost",
    "BroadcastAckResult",
    "BroadcastOptions",
    "LocalSocket",
    "ServerSideResult",
    "SocketInfo",
]

AckAnswer = Callable[[str, tuple[JsonValue, ...]], None]
"""Called with a socket id and its ack arguments when a client answers a broadcast."""


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


@attrs.frozen(kw_only=True)
class SocketInfo:
    """A socket as any node can describe it: what ``fetch_sockets`` lists.

    Attributes:
        sid: The Socket.IO socket id.
        namespace: Its namespace.
        rooms: The rooms it is in (its own id included).
        data: A copy of its ``socket.data``.
        handshake: What its client sent when it connected (``time`` is on the clock of
            the node that holds it).
        node: The id of the node that holds it; None for this node.
    """

    sid: str
    namespace: str
    rooms: frozenset[str]
    data: dict[str, JsonValue]
    handshake: Handshake
    node: str | None = None


@attrs.frozen(kw_only=True)
class BroadcastAckResult:
    """The answers to a broadcast with ack.

    Attributes:
        answers: Each answering socket id with its ack arguments.
        missing: Socket ids that were sent the event and did not answer in time.
    """

    answers: dict[str, tuple[JsonValue, ...]]
    missing: frozenset[str]


@attrs.frozen(kw_only=True)
class ServerSideResult:
    """The answers of the other nodes to a server-side call.

    Attributes:
        answers: Each answering node id with its handler's answer.
        missing: Node ids that were asked and did not answer in time (or had no handler).
    """

    answers: dict[str, tuple[JsonValue, ...]]
    missing: frozenset[str]


class AdapterHost(Protocol):
    """What an adapter needs of its namespace to act on this node's sockets."""

    @property
    def name(self) -> str: ...

    def socket_info(self, sid: str) -> SocketInfo | None:
        """The description of local socket ``sid``, or None if it is not connected here."""

    async def disconnect_local(self, sid: str, *, close: bool) -> None:
        """Disconnect local socket ``sid`` (a server-side disconnect), if it is here."""

    async def join_local(self, sid: str, rooms: frozenset[str]) -> None:
        """Make local socket ``sid`` join ``rooms`` as ``Socket.join`` does (recorded in
        the event log), if it is here."""

    async def leave_local(self, sid: str, rooms: frozenset[str]) -> None:
        """Make local socket ``sid`` leave ``rooms`` as ``Socket.leave`` does (recorded),
        if it is here."""

    async def call_local(
        self,
        event: str,
        args: tuple[JsonValue, ...],
        opts: BroadcastOptions,
        *,
        within: float,
        on_sent: Callable[[frozenset[str]], None],
        on_answer: AckAnswer,
    ) -> None:
        """Send ``event`` with an ack to the matching local sockets and collect answers.

        ``on_sent`` gets the ids the event was sent to, once; ``on_answer`` is called for
        each answer. Returns when all answered or ``within`` seconds passed.
        """

    async def handle_server_side(
        self, event: str, args: tuple[JsonValue, ...]
    ) -> tuple[JsonValue, ...] | None:
        """Run this node's server-side handler for ``event``; its answer, or None if no
        handler took it."""

    async def deliver_shared(self, event: MissedEvent, recovery_offset: str) -> int:
        """Deliver a broadcast read from the cluster's shared log (``recovery_offset`` is
        what clients see for it)
        to the matching local sockets; how many it reached."""


class Adapter(abc.ABC):
    """Membership and fan-out for one namespace. All methods run in Trio tasks."""

    _host: AdapterHost | None = None

    def bind(self, host: AdapterHost) -> None:
        """Attach the namespace the adapter serves (the namespace does this once)."""
        self._host = host

    @property
    def host(self) -> AdapterHost:
        """The namespace this adapter is bound to.

        Raises:
            RuntimeError: ``bind`` was not called.
        """
        if self._host is None:
            raise RuntimeError("the adapter is not bound to a namespace")
        return self._host

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

    def recipients_now(self, opts: BroadcastOptions) -> list[LocalSocket] | None:
        """The sockets of this node that a broadcast with ``opts`` reaches now (those
        left out by ``except`` already removed); None if this adapter cannot say without
        waiting (then ``broadcast`` delivers).

        A recorded broadcast is addressed this way when it is made, and released later
        to exactly these sockets (``engine/broadcast.py``): a whole durable batch goes
        out in offset order in one step, so each socket gets the events in log order
        whatever rooms they went to, and a socket that joins a room after a broadcast
        to it was made does not get it (its join comes after it in the log too).
        """
        return None

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

    # -- cluster-wide operations: single-node defaults -------------------------------------

    @property
    def node_count(self) -> int:
        """How many nodes this adapter knows of, itself included."""
        return 1

    @property
    def history_is_local(self) -> bool:
        """Whether every broadcast that can reach this node's sockets goes through this
        node's own broadcast path (so its recovery store saw it). False for a cluster
        adapter without a shared log: connection state recovery must then refuse, or it
        would hide the events other nodes sent meanwhile."""
        return True

    @property
    def shared_log(self) -> ClusterLog | None:
        """The cluster's shared ordered log, when the adapter has one: recorded
        broadcasts then go through it (``engine/broadcast.py``), and recovery, history
        and replay read it instead of this node's own store."""
        return None

    def local_socket_infos(self, opts: BroadcastOptions) -> list[SocketInfo]:
        """The matching sockets of this node, described."""
        host = self.host
        found = (host.socket_info(sid) for sid in sorted(self.sockets(opts)))
        return [info for info in found if info is not None]

    async def fetch_sockets(self, opts: BroadcastOptions) -> list[SocketInfo]:
        """The matching sockets of every node. Cancellation: nothing changes."""
        await trio.lowlevel.checkpoint()
        return self.local_socket_infos(opts)

    async def add_sockets(self, opts: BroadcastOptions, rooms: frozenset[str]) -> None:
        """Make the matching sockets of every node join ``rooms``.

        Cancellation: some sockets may have joined.
        """
        await trio.lowlevel.checkpoint()
        host = self.host
        for sid in sorted(self.sockets(opts)):
            await host.join_local(sid, rooms)

    async def del_sockets(self, opts: BroadcastOptions, rooms: frozenset[str]) -> None:
        """Make the matching sockets of every node leave ``rooms``.

        Cancellation: some sockets may have left.
        """
        await trio.lowlevel.checkpoint()
        host = self.host
        for sid in sorted(self.sockets(opts)):
            await host.leave_local(sid, rooms)

    async def disconnect_sockets(self, opts: BroadcastOptions, *, close: bool) -> None:
        """Disconnect the matching sockets of every node (``close``: their connections too).

        Cancellation: some sockets may be disconnected.
        """
        await trio.lowlevel.checkpoint()
        host = self.host
        for sid in sorted(self.sockets(opts)):
            await host.disconnect_local(sid, close=close)

    async def broadcast_with_ack(
        self,
        event: str,
        args: tuple[JsonValue, ...],
        opts: BroadcastOptions,
        *,
        within: float,
    ) -> BroadcastAckResult:
        """Send ``event`` with an ack to the matching sockets of every node; collect the
        answers that come within ``within`` seconds.

        Cancellation: the answers collected so far are lost; late answers are ignored.
        """
        sent: set[str] = set()
        answers: dict[str, tuple[JsonValue, ...]] = {}
        await self.host.call_local(
            event, args, opts, within=within, on_sent=sent.update, on_answer=answers.__setitem__
        )
        return BroadcastAckResult(answers=answers, missing=frozenset(sent - answers.keys()))

    async def server_side_emit(self, event: str, args: tuple[JsonValue, ...]) -> None:
        """Send ``event`` to the server-side handlers of every other node (none here).

        Cancellation: some nodes may have been sent it.
        """
        await trio.lowlevel.checkpoint()

    async def server_side_call(
        self, event: str, args: tuple[JsonValue, ...], *, within: float
    ) -> ServerSideResult:
        """Call the server-side handlers of every other node; their answers within
        ``within`` seconds (a single node has no other node to ask).

        Cancellation: the answers so far are lost.
        """
        await trio.lowlevel.checkpoint()
        return ServerSideResult(answers={}, missing=frozenset())
