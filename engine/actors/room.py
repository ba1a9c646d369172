"""The room actor: one task per room owning its members and its fan-out."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol, TypeAlias

import attrs
import trio

from roomcast.engine.actors.outbox import Offer, Outbox
from roomcast.engine.transport.frames import OutFrame
from roomcast.protocol import DisconnectReason

__all__ = [
    "Broadcast",
    "Crash",
    "InjectedCrash",
    "Join",
    "Leave",
    "Member",
    "RoomActor",
    "RoomCommand",
    "Stop",
    "fan_out",
]

logger = logging.getLogger(__name__)


class Recipient(Protocol):
    """What a fan-out needs of a member: its id, its outbox, and how to evict it."""

    @property
    def sid(self) -> str: ...
    @property
    def outbox(self) -> Outbox: ...
    def evict(self, reason: str) -> None: ...


@attrs.frozen(kw_only=True)
class Member:
    """A room member as the room sees it: where to put frames and how to evict it.

    Attributes:
        sid: The Socket.IO socket id.
        outbox: The member connection's outbox.
        evict: Called (synchronously) when the member cannot keep up; it closes the
            member's connection as a slow consumer. It never blocks the room.
    """

    sid: str
    outbox: Outbox
    evict: Callable[[str], None]


@attrs.frozen(kw_only=True)
class Join:
    """Add ``member`` to the room."""

    member: Member
    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.frozen(kw_only=True)
class Leave:
    """Remove the member with ``sid`` from the room."""

    sid: str
    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.frozen(kw_only=True)
class Broadcast:
    """Fan ``frames`` out to every member not in ``exclude`` and not yet in ``seen``.

    ``seen`` is shared by the rooms of one multi-room broadcast, so a socket in several
    target rooms gets the frames once (Socket.IO's union semantics). Once done,
    ``delivered`` is how many members it reached.
    """

    frames: tuple[OutFrame, ...]
    exclude: frozenset[str] = frozenset()
    seen: set[str] | None = None
    volatile: bool = False
    on_member: Callable[[str], None] | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    delivered: list[int] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class Stop:
    """Finish the commands before this one, then end the actor."""

    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.frozen(kw_only=True)
class Crash:
    """Make the actor raise ``error`` (fault injection for tests of supervision)."""

    error: Exception
    done: trio.Event = attrs.field(factory=trio.Event)


class InjectedCrash(Exception):
    """The default error of a ``Crash`` command."""


RoomCommand: TypeAlias = Join | Leave | Broadcast | Stop | Crash


@attrs.define(eq=False)
class RoomActor:
    """Owns one room: its membership and its fan-out.

    Only ``run`` touches the state. Others send commands on ``inbox``. Fan-out never awaits
    a member: ``send_nowait`` into each outbox; a full outbox drops a volatile frame and
    evicts the member otherwise (the slow-consumer policy).
    """

    namespace: str
    name: str
    inbox_size: int
    members: dict[str, Member] = attrs.field(factory=dict)
    inbox: trio.MemorySendChannel[RoomCommand] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[RoomCommand] = attrs.field(init=False)

    stopped: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        self.inbox, self._receive = trio.open_memory_channel[RoomCommand](self.inbox_size)

    def retire(self) -> None:
        """The actor will not run again (its supervision ended): refuse new commands and
        release everyone waiting on one still queued, so nobody waits on a dead room."""
        while True:
            try:
                command = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                break
            command.done.set()
        self._receive.close()  # later senders get BrokenResourceError
        self.stopped.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Process commands until ``Stop``; a crash leaves the state for a restart.

        Cancellation: commands not yet processed stay in the inbox.
        """
        task_status.started()
        async for command in self._receive:
            try:
                if isinstance(command, Broadcast):
                    self._fan_out(command)
                elif isinstance(command, Join):
                    self.members[command.member.sid] = command.member
                elif isinstance(command, Leave):
                    self.members.pop(command.sid, None)
                elif isinstance(command, Crash):
                    raise command.error
                else:
                    command.done.set()
                    return
            finally:
                command.done.set()

    def _fan_out(self, command: Broadcast) -> None:
        command.delivered.append(
            fan_out(
                self.members.values(),
                command.frames,
                exclude=command.exclude,
                seen=command.seen,
                volatile=command.volatile,
                on_member=command.on_member,
                where=f" from room {self.name!r}",
            )
        )


def fan_out(
    members: Iterable[Recipient],
    frames: tuple[OutFrame, ...],
    *,
    exclude: frozenset[str] = frozenset(),
    seen: set[str] | None = None,
    volatile: bool = False,
    on_member: Callable[[str], None] | None = None,
    where: str = "",
    gather: list[Outbox] | None = None,
    release: int = 0,
) -> int:
    """Offer ``frames`` to every member not in ``exclude`` and not yet in ``seen`` (which
    it extends); return how many took them. Never waits: a full outbox drops a volatile
    send and evicts the member otherwise (the slow-consumer policy), once the loop is
    done. Used by room actors and by the release of recorded broadcasts alike (which
    passes ``gather`` and ``release``: see ``Outbox.offer``).
    """
    delivered = 0
    evicted: list[Recipient] = []
    check = bool(exclude) or seen is not None
    for member in members:
        if check:
            sid = member.sid
            if sid in exclude:
                continue
            if seen is not None:
                if sid in seen:
                    continue
                seen.add(sid)
        offered = member.outbox.offer(frames, volatile=volatile, gather=gather, release=release)
        if offered is Offer.FULL:
            evicted.append(member)
        if offered is not Offer.QUEUED:
            continue  # (a closed outbox: the member is leaving; its cleanup removes it)
        delivered += 1
        if on_member is not None:
            on_member(member.sid)
    for member in evicted:
        logger.warning("evicting slow consumer %s%s", member.sid, where)
        member.evict(DisconnectReason.SLOW_CONSUMER)
    return delivered
