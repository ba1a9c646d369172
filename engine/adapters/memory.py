"""The in-memory adapter: one node, room actors, and a synchronous membership index."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs
import trio

from roomcast.engine.actors.room import (
    Broadcast,
    Crash,
    InjectedCrash,
    Join,
    Leave,
    Member,
    RoomActor,
    RoomCommand,
    Stop,
    fan_out,
)
from roomcast.engine.adapters.base import Adapter, BroadcastOptions, LocalSocket
from roomcast.engine.transport.frames import OutFrame

__all__ = ["MemoryAdapter"]


@attrs.define(eq=False)
class MemoryAdapter(Adapter):
    """Rooms of one namespace on this node.

    Each room with members has a ``RoomActor`` (spawned through ``spawn_room``, which the
    supervisor implements with restarts). The adapter keeps an index of who is where, used
    to expand ``except`` rooms and to list sockets without asking the actors; it changes
    in the same step as the command to the actor is queued, so both always agree at the
    points where a task can observe them.

    A socket's own id is a room too (as in Socket.IO); it is served without an actor:
    frames go straight to that socket's outbox.
    """

    namespace: str
    spawn_room: Callable[[RoomActor], None]
    room_inbox_size: int = 256
    _sockets: dict[str, LocalSocket] = attrs.field(factory=dict)
    _rooms: dict[str, set[str]] = attrs.field(factory=dict)
    _socket_rooms: dict[str, set[str]] = attrs.field(factory=dict)
    _actors: dict[str, RoomActor] = attrs.field(factory=dict)

    def add_socket(self, socket: LocalSocket) -> None:
        self._sockets[socket.sid] = socket
        self._socket_rooms[socket.sid] = set()

    def _member(self, socket: LocalSocket) -> Member:
        return Member(sid=socket.sid, outbox=socket.outbox, evict=socket.evict)

    async def add_all(self, sid: str, rooms: Iterable[str]) -> None:
        socket = self._sockets.get(sid)
        if socket is None:
            return
        joined = self._socket_rooms[sid]
        # The index takes every room in this step, before anything waits: a recorded
        # broadcast made from now on is addressed to the socket (``recipients_now``).
        # (A recovering socket relies on it: the events it missed are those before.)
        new = [room for room in dict.fromkeys(rooms) if room not in joined and room != sid]
        for room in new:
            joined.add(room)
            self._rooms.setdefault(room, set()).add(sid)
        pending: list[trio.Event] = []
        for room in new:
            command = Join(member=self._member(socket))
            if await self._send(self._actor(room), command):
                pending.append(command.done)
        for done in pending:
            await done.wait()

    @staticmethod
    async def _send(actor: RoomActor, command: RoomCommand) -> bool:
        """Queue a command for a room actor; False if the room is retired (its
        supervision ended): there is nobody left to do it."""
        try:
            await actor.inbox.send(command)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def _command(self, actor: RoomActor, command: RoomCommand) -> None:
        """Queue a command for a room actor and wait until it is done (at once for a
        retired room: ``retire`` releases every waiter)."""
        if await self._send(actor, command):
            await command.done.wait()

    def _actor(self, room: str) -> RoomActor:
        actor = self._actors.get(room)
        if actor is None:
            actor = RoomActor(
                namespace=self.namespace,
                name=room,
                inbox_size=self.room_inbox_size,
            )
            self._actors[room] = actor
            self.spawn_room(actor)
        return actor

    async def delete(self, sid: str, room: str) -> None:
        joined = self._socket_rooms.get(sid)
        if joined is None or room not in joined:
            return
        joined.discard(room)
        await self._leave(sid, room)

    async def _leave(self, sid: str, room: str) -> None:
        members = self._rooms.get(room)
        if members is None:  # pragma: no cover - the index and the rooms agree
            return
        members.discard(sid)
        actor = self._actors[room]
        command = Leave(sid=sid)
        if not members:
            # The room is empty: retire its actor now, so a later join starts a new one.
            del self._rooms[room]
            del self._actors[room]
            await self._send(actor, command)
            stop = Stop()
            await self._command(actor, stop)
            actor.inbox.close()
        else:
            await self._command(actor, command)

    async def delete_all(self, sid: str) -> None:
        self._sockets.pop(sid, None)
        joined = self._socket_rooms.pop(sid, set())
        for room in sorted(joined):
            await self._leave(sid, room)

    async def broadcast(
        self,
        frames: tuple[OutFrame, ...],
        opts: BroadcastOptions,
        *,
        on_member: Callable[[str], None] | None = None,
    ) -> int:
        exclude = self._excluded(opts)
        if not opts.rooms:
            return fan_out(
                list(self._sockets.values()),
                frames,
                exclude=exclude,
                volatile=opts.volatile,
                on_member=on_member,
            )
        seen: set[str] | None = set() if len(opts.rooms) > 1 else None
        delivered = 0
        # Handed to every room first (waiting only while an inbox is full), then waited
        # for together: the rooms fan out concurrently, and ``emit`` still returns once
        # every frame is in every recipient's outbox.
        commands: list[Broadcast] = []
        for room in sorted(opts.rooms):
            socket = self._sockets.get(room)
            if socket is not None:  # a socket's own room
                delivered += fan_out(
                    (socket,),
                    frames,
                    exclude=exclude,
                    seen=seen,
                    volatile=opts.volatile,
                    on_member=on_member,
                )
                continue
            actor = self._actors.get(room)
            if actor is None:
                continue
            command = Broadcast(
                frames=frames,
                exclude=exclude,
                seen=seen,
                volatile=opts.volatile,
                on_member=on_member,
            )
            if await self._send(actor, command):
                commands.append(command)
        for command in commands:
            await command.done.wait()
            if command.delivered:
                delivered += command.delivered[0]
        return delivered

    def recipients_now(self, opts: BroadcastOptions) -> list[LocalSocket]:
        """The members of the target rooms as the index has them now (the state every
        room actor reaches once its queued joins and leaves are done)."""
        exclude = self._excluded(opts)
        sockets = self._sockets
        if not opts.rooms:
            if not exclude:
                return list(sockets.values())
            return [s for sid, s in sockets.items() if sid not in exclude]
        if len(opts.rooms) == 1:
            (room,) = opts.rooms
            if room in sockets:  # a socket's own room
                return [] if room in exclude else [sockets[room]]
            # (A member may be gone from ``sockets`` already: its rooms are left next.)
            members = self._rooms.get(room, ())
            if not exclude:
                return [s for s in map(sockets.get, members) if s is not None]
            return [sockets[sid] for sid in members if sid in sockets and sid not in exclude]
        seen: set[str] = set(exclude)
        targets: list[LocalSocket] = []
        for room in sorted(opts.rooms):
            for sid in [room] if room in sockets else self._rooms.get(room, ()):
                if sid not in seen and sid in sockets:
                    seen.add(sid)
                    targets.append(sockets[sid])
        return targets

    def _excluded(self, opts: BroadcastOptions) -> frozenset[str]:
        if not opts.except_rooms:
            return opts.except_sids
        excluded = set(opts.except_sids)
        for room in opts.except_rooms:
            if room in self._sockets:
                excluded.add(room)
            excluded.update(self._rooms.get(room, ()))
        return frozenset(excluded)

    def sockets(self, opts: BroadcastOptions) -> set[str]:
        exclude = self._excluded(opts)
        if not opts.rooms:
            return {sid for sid in self._sockets if sid not in exclude}
        found: set[str] = set()
        for room in opts.rooms:
            if room in self._sockets:
                found.add(room)
            found.update(self._rooms.get(room, ()))
        return found - exclude

    def socket_rooms(self, sid: str) -> frozenset[str]:
        joined = self._socket_rooms.get(sid)
        if joined is None:
            return frozenset()
        return frozenset(joined | {sid})

    def rooms(self) -> frozenset[str]:
        return frozenset(self._rooms)

    async def crash_room(self, room: str, error: Exception | None = None) -> bool:
        """Make the actor of ``room`` crash (fault injection); False if there is none.

        The supervisor restarts it with its members; returns once the crash happened.
        """
        actor = self._actors.get(room)
        if actor is None:
            await trio.lowlevel.checkpoint()
            return False
        command = Crash(error=error or InjectedCrash(f"injected crash of room {room!r}"))
        await self._command(actor, command)
        return True

    async def aclose(self) -> None:
        actors = list(self._actors.values())
        self._actors.clear()
        self._rooms.clear()
        for actor in actors:
            stop = Stop()
            await self._command(actor, stop)
            actor.inbox.close()
