"""Presence: who is in a room, by an app-chosen key, on every node of a cluster.

The app gives each socket a key and a little public metadata (``Presence.track``, in
middleware, so that the key is in the socket's CONNECT record and its recovery session).
Per room, a key is present while at least one of its sockets is in the room: two tabs of
one user are one presence with two connections. ``on_join`` runs when a key's first
connection joins a room, ``on_leave`` when its last one has left.

A socket that is cut off (a recoverable disconnect reason: transport closed, ping
timeout, ...) stays counted for ``debounce`` seconds, so a client that comes back (with
the same sid when recovered, or any socket of the same key) causes no leave followed by a
join. An explicit disconnect (the client's or the server's) leaves at once.

With a Redis cluster each node sends the others its own sockets' counts per room and key
(changes as they happen, everything every ``sync_interval`` seconds and when a node
joins); every node merges them and runs the callbacks for its own members (so they emit
with ``.local``). A node found dead (``RedisSettings.node_timeout`` without a heartbeat,
noticed within one ``heartbeat_interval``) is dropped at once: its members leave.

After a restart, the sockets whose recovery sessions were rebuilt from the event log
(``Server._rebuild_recovery``) are counted again, as cut off: they leave ``debounce``
seconds after the server is back unless their clients come back.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs
import trio

from roomcast.engine.adapters.cluster import ClusterError
from roomcast.engine.recovery import RECOVERABLE_REASONS
from roomcast.protocol import JsonValue, LogRecord, RecordKind

if TYPE_CHECKING:
    from roomcast.engine.adapters.redis import ClusterStatus, RedisCluster
    from roomcast.engine.namespace import Namespace
    from roomcast.engine.socket import Socket

__all__ = ["PRESENCE_FIELD", "Member", "Presence", "PresenceCallback", "presence_at"]

logger = logging.getLogger(__name__)

PRESENCE_FIELD: Final = "presence"
"""The ``socket.data`` field that holds ``[key, meta]`` (so the key is in the socket's
CONNECT record, its recovery session, and ``fetch_sockets``)."""

_SYNC_EVENT: Final = "roomcast:presence"
"""The server-side event nodes send each other their counts with."""


@attrs.frozen(kw_only=True)
class Member:
    """One key present in a room.

    Attributes:
        key: The app's key (a user name, an account id).
        meta: Its public metadata, as ``track`` was given it.
        connections: Its sockets in the room on every node (cut-off ones still counted
            during the debounce window).
    """

    key: str
    meta: dict[str, JsonValue]
    connections: int


PresenceCallback: TypeAlias = Callable[[str, Member], Awaitable[None]]
"""``async def callback(room, member)``."""


@attrs.define(eq=False)
class _Entry:
    """One key in one room, on this node."""

    meta: dict[str, JsonValue]
    live: set[str] = attrs.field(factory=set)
    cut: dict[str, float] = attrs.field(factory=dict)
    """Sockets cut off, until when (Trio time) they still count."""

    @property
    def count(self) -> int:
        return len(self.live) + len(self.cut)


def identity(data: dict[str, Any]) -> tuple[str, dict[str, JsonValue]] | None:
    """The ``(key, meta)`` in socket data (None when the socket is not tracked)."""
    value = data.get(PRESENCE_FIELD)
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], dict)
    ):
        return value[0], value[1]
    return None


def _peers_changed(known: frozenset[str], status: ClusterStatus) -> bool:
    return status.peers != known


@attrs.define(eq=False)
class Presence:
    """Presence in one namespace's rooms (see the module docstring).

    Creating it attaches it to the namespace and to its server, whose ``serve`` runs it.

    Attributes:
        namespace: The namespace whose rooms it tracks.
        on_join: Called when a key joins a room (on every node, for its own members).
        on_leave: Called when a key has left a room.
        debounce: Seconds a cut-off socket still counts.
        sync_interval: Seconds between sending every count to the other nodes (repairs
            changes lost in a Redis outage).
    """

    namespace: Namespace
    on_join: PresenceCallback | None = None
    on_leave: PresenceCallback | None = None
    debounce: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    sync_interval: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    _local: dict[str, dict[str, _Entry]] = attrs.field(factory=dict, init=False)
    _remote: dict[str, dict[str, dict[str, tuple[dict[str, JsonValue], int]]]] = attrs.field(
        factory=dict, init=False
    )
    """Room -> key -> node -> (meta, count): what the other nodes last told us."""
    _told: dict[str, set[tuple[str, str]]] = attrs.field(factory=dict, init=False)
    """Node -> the (room, key) pairs of ``_remote`` it told us about."""
    _announced: dict[str, dict[str, dict[str, JsonValue]]] = attrs.field(factory=dict, init=False)
    """Room -> key -> meta: the keys ``on_join`` ran for (and ``on_leave`` not yet)."""
    _dirty: set[tuple[str, str]] = attrs.field(factory=set, init=False)
    _outgoing: set[tuple[str, str]] = attrs.field(factory=set, init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _to_send: trio.Event = attrs.field(factory=trio.Event, init=False)
    _send_all: bool = attrs.field(default=False, init=False)
    _deadlines: list[tuple[float, str, str, str]] = attrs.field(factory=list, init=False)
    """A heap of (until, room, key, sid) for cut-off sockets (stale ones are skipped)."""

    def __attrs_post_init__(self) -> None:
        self.namespace.presence = self
        self.namespace.server.add_service(self.run)
        self.namespace.on_server_side(_SYNC_EVENT)(self._on_sync)

    # -- the app's side -------------------------------------------------------------------

    @staticmethod
    def track(socket: Socket, key: str, meta: dict[str, JsonValue] | None = None) -> None:
        """Give ``socket`` its presence ``key`` and public ``meta``: call it in middleware
        (before the socket is accepted, so that the CONNECT record has it) or at least
        before the socket joins rooms."""
        socket.data[PRESENCE_FIELD] = [key, meta if meta is not None else {}]

    def members(self, room: str) -> list[Member]:
        """Who is in ``room`` now, on every node (sorted by key)."""
        counts: dict[str, tuple[dict[str, JsonValue], int]] = {}
        for key, entry in self._local.get(room, {}).items():
            counts[key] = (entry.meta, entry.count)
        for key, nodes in self._remote.get(room, {}).items():
            for meta, count in nodes.values():
                known = counts.get(key)
                counts[key] = (known[0] if known else meta, count + (known[1] if known else 0))
        return [
            Member(key=key, meta=meta, connections=count)
            for key, (meta, count) in sorted(counts.items())
            if count > 0
        ]

    # -- hooks (Socket.join/leave, Namespace.remove_socket, Server.on_connect) ------------

    def joined(self, socket: Socket, rooms: Iterable[str]) -> None:
        """``socket`` joined ``rooms`` (or took them back when recovered)."""
        who = identity(socket.data)
        if who is None or not socket.connected:
            return
        key, meta = who
        for room in rooms:
            if room == socket.sid:
                continue
            entry = self._local.setdefault(room, {}).get(key)
            if entry is None:
                entry = self._local[room][key] = _Entry(meta=meta)
            entry.cut.pop(socket.sid, None)
            entry.live.add(socket.sid)
            entry.meta = meta
            self._touch(room, key)

    def left(self, socket: Socket, room: str) -> None:
        """``socket`` left ``room``."""
        who = identity(socket.data)
        if who is not None:
            self._remove(room, who[0], socket.sid)

    def gone(self, socket: Socket, reason: str) -> None:
        """``socket`` disconnected (it is leaving all its rooms) for ``reason``."""
        who = identity(socket.data)
        if who is None:
            return
        key = who[0]
        cut = reason in RECOVERABLE_REASONS and self.debounce > 0
        until = trio.current_time() + self.debounce
        for room in socket.rooms - {socket.sid}:
            entry = self._local.get(room, {}).get(key)
            if entry is None or socket.sid not in entry.live:
                continue
            entry.live.discard(socket.sid)
            if cut:
                self._cut(entry, room, key, socket.sid, until)
            else:
                self._remove(room, key, socket.sid)

    def _cut(self, entry: _Entry, room: str, key: str, sid: str, until: float) -> None:
        entry.cut[sid] = until
        heapq.heappush(self._deadlines, (until, room, key, sid))
        self._changed.set()  # the run loop's next deadline changed

    def _remove(self, room: str, key: str, sid: str) -> None:
        entries = self._local.get(room)
        entry = entries.get(key) if entries is not None else None
        if entries is None or entry is None:
            return
        entry.live.discard(sid)
        entry.cut.pop(sid, None)
        if entry.count == 0:
            del entries[key]
            if not entries:
                del self._local[room]
        self._touch(room, key)

    def _touch(self, room: str, key: str) -> None:
        self._dirty.add((room, key))
        self._outgoing.add((room, key))
        self._changed.set()
        self._to_send.set()

    # -- running --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the callbacks and the timers (and, in a cluster, the exchange with the other
        nodes) until cancelled. ``Server.serve`` starts it.

        Cancellation: callbacks not yet run do not run.
        """
        self._restore()
        # A Redis adapter (made by the cluster, maybe set by ``Server.reconfigure`` after
        # this was created) names its cluster; the others have none.
        cluster: RedisCluster | None = getattr(self.namespace.adapter, "cluster", None)
        async with trio.open_nursery() as nursery:
            if cluster is not None:
                nursery.start_soon(self._send_loop, cluster)
                nursery.start_soon(self._watch_nodes, cluster)
            task_status.started()
            while True:
                self._changed = trio.Event()
                self._expire(trio.current_time())
                await self._announce()
                if self._dirty:
                    continue
                with trio.move_on_at(self._next_deadline()):
                    await self._changed.wait()

    def _restore(self) -> None:
        """Count the sockets whose recovery sessions the log gave back, as cut off (and
        as announced already)."""
        store = self.namespace.server.recovery_store
        if store is None:
            return
        until = trio.current_time() + self.debounce
        for session in store.sessions():
            who = identity(session.data)
            if session.namespace != self.namespace.name or who is None:
                continue
            key, meta = who
            for room in session.rooms - {session.sid}:
                entry = self._local.setdefault(room, {}).setdefault(key, _Entry(meta=meta))
                self._cut(entry, room, key, session.sid, until)
                # Present before the restart, still present: no join is announced (the
                # members knew), only a leave if it does not come back.
                self._announced.setdefault(room, {})[key] = meta
                self._outgoing.add((room, key))

    def _next_deadline(self) -> float:
        return self._deadlines[0][0] if self._deadlines else math.inf

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            until, room, key, sid = heapq.heappop(deadlines)
            entry = self._local.get(room, {}).get(key)
            if entry is not None and entry.cut.get(sid) == until:  # not back, not cut again
                self._remove(room, key, sid)

    def _total(self, room: str, key: str) -> tuple[dict[str, JsonValue] | None, int]:
        entry = self._local.get(room, {}).get(key)
        meta, count = (entry.meta, entry.count) if entry is not None else (None, 0)
        for found_meta, found in self._remote.get(room, {}).get(key, {}).values():
            meta = meta if meta is not None else found_meta
            count += found
        return meta, count

    async def _announce(self) -> None:
        """Run ``on_join`` / ``on_leave`` for every (room, key) whose presence changed."""
        while self._dirty:
            room, key = self._dirty.pop()
            meta, count = self._total(room, key)
            announced = self._announced.get(room, {})
            if count > 0 and meta is not None and key not in announced:
                self._announced.setdefault(room, {})[key] = meta
                await self._call(self.on_join, room, Member(key=key, meta=meta, connections=count))
            elif count == 0 and key in announced:
                gone = announced.pop(key)
                if not announced:
                    del self._announced[room]
                await self._call(self.on_leave, room, Member(key=key, meta=gone, connections=0))

    async def _call(self, callback: PresenceCallback | None, room: str, member: Member) -> None:
        if callback is None:
            await trio.lowlevel.checkpoint()
            return
        try:
            await callback(room, member)
        except Exception:
            logger.exception("presence callback failed for %s in %s", member.key, room)

    # -- the cluster ----------------------------------------------------------------------

    def _counts(self, pairs: Iterable[tuple[str, str]]) -> list[JsonValue]:
        items: list[JsonValue] = []
        for room, key in pairs:
            entry = self._local.get(room, {}).get(key)
            if entry is None:
                items.append([room, key, {}, 0])
            else:
                items.append([room, key, entry.meta, entry.count])
        return items

    async def _send_loop(self, cluster: RedisCluster) -> None:
        """Send this node's changed counts as they change, and all of them every
        ``sync_interval`` seconds or when a node joined."""
        node = cluster.node_id
        while True:
            with trio.move_on_after(self.sync_interval) as timer:
                await self._to_send.wait()
            self._to_send = trio.Event()
            if timer.cancelled_caught or self._send_all:
                self._send_all = False
                self._outgoing.clear()
                pairs = [(room, key) for room, keys in self._local.items() for key in keys]
                items = self._counts(pairs)
                kind = "all"
            else:
                items = self._counts(self._outgoing)
                self._outgoing.clear()
                kind = "changed"
            try:
                await self.namespace.server_side_emit(_SYNC_EVENT, node, kind, items)
            except ClusterError as exc:  # no Redis now: everything again, once it is back
                logger.debug("presence: counts not sent (%s)", exc)
                self._send_all = True

    async def _watch_nodes(self, cluster: RedisCluster) -> None:
        """Drop the counts of nodes the cluster lost; send everything to new ones."""
        known: frozenset[str] = frozenset()
        while True:
            status = await cluster.wait_until(partial(_peers_changed, known))
            if status.peers - known:
                self._send_all = True
                self._to_send.set()
            known = status.peers
            for node in [node for node in self._told if node not in known]:
                lost = self._forget(node)
                logger.info("presence: node %s is gone: %d of its entries leave", node, len(lost))
                self._dirty.update(lost)
                self._changed.set()

    def _set_remote(
        self, node: str, room: str, key: str, meta: dict[str, JsonValue], count: int
    ) -> None:
        """What ``node`` says it has of ``key`` in ``room`` (``count`` 0: nothing)."""
        told = self._told.setdefault(node, set())
        if count > 0:
            self._remote.setdefault(room, {}).setdefault(key, {})[node] = (meta, count)
            told.add((room, key))
            return
        told.discard((room, key))
        keys = self._remote.get(room)
        nodes = keys.get(key) if keys is not None else None
        if keys is None or nodes is None:
            return
        nodes.pop(node, None)
        if not nodes:
            del keys[key]
            if not keys:
                del self._remote[room]

    def _forget(self, node: str) -> set[tuple[str, str]]:
        """Drop everything ``node`` told us; the pairs it had."""
        told = self._told.pop(node, set())
        for room, key in list(told):
            self._set_remote(node, room, key, {}, 0)
        self._told.pop(node, None)
        return told

    async def _on_sync(self, node: JsonValue, kind: JsonValue, items: JsonValue) -> None:
        """Counts from another node (``all``: replace what it said before)."""
        await trio.lowlevel.checkpoint()
        if not isinstance(node, str) or not isinstance(items, list):
            return
        if kind == "all":
            self._dirty.update(self._forget(node))
        for item in items:
            if not (isinstance(item, list) and len(item) == 4):
                continue
            room, key, meta, count = item
            if not (isinstance(room, str) and isinstance(key, str) and isinstance(meta, dict)):
                continue
            self._set_remote(node, room, key, meta, count if isinstance(count, int) else 0)
            self._dirty.add((room, key))
        self._changed.set()


# -- from the log alone (``roomcast replay --presence``) -----------------------------------


def presence_at(records: Iterable[LogRecord], *, namespace: str, room: str) -> list[Member]:
    """Who was in ``room`` after ``records`` (oldest first; the caller stops them at the
    moment asked for), by presence key, from the log alone.

    A socket's key is the one in its CONNECT record's data (``Presence.track`` in
    middleware); a socket with none counts under its sid. Sockets are in the room from
    their JOIN (or a recovered CONNECT that lists the room) to their LEAVE or DISCONNECT;
    nobody stays across a SERVER_START, SERVER_STOP or EPOCH. The debounce window is the
    app's, not the log's: a socket cut off is gone from its DISCONNECT on.
    """
    keys: dict[str, tuple[str, dict[str, JsonValue]]] = {}
    inside: set[str] = set()
    resets = (RecordKind.SERVER_START, RecordKind.SERVER_STOP, RecordKind.EPOCH)
    for record in records:
        if record.namespace == "" and record.kind in resets:
            inside.clear()
            continue
        sid = record.sender
        if record.namespace != namespace or sid is None:
            continue
        match record.kind:
            case RecordKind.CONNECT:
                info = record.args[1] if len(record.args) > 1 else None
                data = info.get("data") if isinstance(info, dict) else None
                who = identity(data) if isinstance(data, dict) else None
                keys[sid] = who if who is not None else (sid, {})
                rooms = info.get("rooms") if isinstance(info, dict) else None
                if isinstance(rooms, list) and room in rooms:  # recovered with its rooms
                    inside.add(sid)
            case RecordKind.JOIN if record.room == room:
                inside.add(sid)
            case RecordKind.LEAVE if record.room == room:
                inside.discard(sid)
            case RecordKind.DISCONNECT:
                inside.discard(sid)
            case _:
                pass
    members: dict[str, Member] = {}
    for sid in inside:
        key, meta = keys.get(sid, (sid, {}))
        known = members.get(key)
        count = known.connections + 1 if known is not None else 1
        members[key] = Member(key=key, meta=meta, connections=count)
    return [members[key] for key in sorted(members)]
