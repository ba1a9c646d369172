"""The cluster's shared ordered log: one Redis Stream of event-log records (opt-in).

With ``RedisSettings(shared_log=True)`` every recorded broadcast of every node is
appended to one stream, and every node delivers the stream's broadcasts to its own
sockets in stream order. So all nodes, and all clients, see one order, and an offset
means the same event on every node: a client that reconnects to another node can be
recovered there (its saved session is in Redis too), ``Namespace.history`` reads the
stream, and ``roomcast replay --redis`` replays it.

The layout (``P`` is the cluster's channel prefix)::

    P#~log           the stream; entry ids are 0-1, 0-2, ... (the cluster-wide offsets)
    P#~log#seq       the last offset handed out
    P#~log#epoch     the epoch: a random id made when the stream is (re)created
    P#~session#PID   a socket's session: live (its node holds it) or saved (disconnected)

An entry has the fields ``n`` (the appending node), ``t`` (that node's token for it,
which lets the node find its own entries) and ``r``: one or more event-log record
frames (``roomcast.protocol`` record codec, the same as the file log) whose ``offset``
and ``epoch`` are left 0 and empty: the entry id and the epoch key give them. A
broadcast to several rooms is one entry with one record per room, as in the file log.
Broadcast records hold the event's arguments without the offset (clients get it
appended on delivery).

Offsets come from one Lua script that increments the counter and adds the entries in
the same step, so the stream has no holes: a reader that sees offset ``n + 2`` after
``n`` knows one entry was trimmed, and a recovery whose next event is not the one after
the client's offset is refused (a gap), never patched over. If Redis loses the stream
(a restart without persistence), the script finds no epoch key, starts a new epoch, and
every older offset stops being recoverable.

A session is in Redis from the socket's CONNECT on, so that a node killed without a
word leaves its sockets recoverable on the others. Its value is one msgpack array::

    [STATE, NODE, SID, NAMESPACE, ROOMS, DATA, AT, EPOCH]

``STATE`` is ``"live"`` (``NODE`` holds the socket) or ``"saved"`` (disconnected at wall
time ``AT``). The owner writes it in its appender's round trips, in order: the live
session before the socket is registered (connect), again with every join and leave
(queued before the JOIN or LEAVE entry, so it is in Redis when the join returns), saved
on a recoverable disconnect, deleted on another one. Every change but the first is made
only while the key still says ``live`` and this node (a byte-prefix test in Lua), or,
for a renewal's write-back, while it is absent, so a node whose session was taken over
elsewhere cannot overwrite it. A live session expires
unless its node renews it (``SharedLog._refresher``); see ``docs/scaling.md`` for why
and for the bounds.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

import attrs
import coredis
import coredis.exceptions
import msgpack
import trio
from coredis.response.types import StreamEntry

from roomcast.engine.adapters.cluster import ClusterError
from roomcast.engine.adapters.shared import AppendOutcome
from roomcast.engine.recovery import MissedEvent, SavedSession
from roomcast.protocol import (
    DEFAULT_MAX_RECORD_BYTES,
    DisconnectReason,
    LogRecord,
    RecordReader,
    RemoteProtocolError,
)

__all__ = [
    "LogGap",
    "SharedEntry",
    "SharedLog",
    "SharedLogResetError",
    "read_shared_log",
]

logger = logging.getLogger(__name__)

APPEND_SCRIPT: Final = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SET', KEYS[3], epoch)
end
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
local first = n + 1
local entries = tonumber(ARGV[5])
for i = 6, 5 + 2 * entries, 2 do
  n = n + 1
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '0-' .. n,
             'n', ARGV[3], 't', ARGV[i], 'r', ARGV[i + 1])
end
redis.call('SET', KEYS[2], n)
local reply = {epoch, first, n}
local prefix = ARGV[4]
local k = 4
for i = 6 + 2 * entries, #ARGV, 3 do
  local key, op = KEYS[k], ARGV[i]
  k = k + 1
  local done = 1
  if op ~= 'set' then
    local current = redis.call('GET', key)
    done = (current and string.sub(current, 1, #prefix) == prefix) and 1 or 0
  end
  if done == 1 then
    if op == 'del' then
      redis.call('DEL', key)
    else
      redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[i + 2])
    end
  end
  reply[#reply + 1] = done
end
return reply
"""
"""Append entries (``ARGV[6:]``: ``ARGV[5]`` token, records pairs) under consecutive
offsets, starting a new epoch first when there is none; then apply session writes
(``op, value, ttl_ms`` triples on ``KEYS[4:]``): ``set`` (unconditional), ``own`` (set if
the key is this node's live session: ``ARGV[4]`` is that prefix) and ``del`` (delete
if so). Returns the epoch, the first and last offsets, and 1 or 0 per session write."""

TAKE_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
"""Replace a session with this node's live one if it is still what was read (1), else 0."""

REFRESH_SCRIPT: Final = """
local missing = {}
for i = 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if not current then
    missing[#missing + 1] = i
  elseif string.sub(current, 1, #ARGV[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
return missing
"""
"""Renew the TTL of those of ``KEYS`` that are this node's live sessions; return the
(1-based) indices of those Redis does not have. Another node's session is left alone."""

RESTORE_SCRIPT: Final = """
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[1 + i], 'PX', ARGV[1], 'NX')
end
return #KEYS
"""
"""Write back sessions Redis lost (``ARGV[2:]``, with TTL ``ARGV[1]``), where still absent."""

LIVE: Final = "live"
SAVED: Final = "saved"
_SESSION_FIELDS: Final = 8
_REFRESH_BATCH: Final = 1000
_TAKE_ATTEMPTS: Final = 3

_PAGE: Final = 1000


class SharedLogResetError(ClusterError):
    """The shared log's epoch changed under a running node (its key was lost)."""


@attrs.frozen(kw_only=True)
class LogGap:
    """Entries of the shared log this node never delivered.

    Attributes:
        reason: ``"trimmed"`` (the stream's length bound dropped them before this node
            read them, e.g. during a long outage) or ``"reset"`` (Redis lost the log and
            a new epoch began).
        missed: How many entries, when known.
    """

    reason: str
    missed: int | None


@attrs.frozen
class _SessionWrite:
    key: bytes
    op: str  # "set", "own" or "del" (APPEND_SCRIPT)
    value: bytes = b""
    ttl_ms: int = 0


@attrs.define(eq=False)
class _Append:
    data: bytes | None
    token: int
    session: _SessionWrite | None = None
    written: bool = False
    answered: trio.Event = attrs.field(factory=trio.Event)
    delivered: trio.Event = attrs.field(factory=trio.Event)
    offset: int | None = None
    sent: bool = False
    count: int = 0


@attrs.frozen(kw_only=True)
class SharedEntry:
    """One entry of the shared log, decoded.

    Attributes:
        offset: Its offset (the entry id's sequence part), cluster-wide.
        node: The node that appended it.
        token: That node's token for it.
        records: Its records, with ``offset`` and ``epoch`` filled in.
    """

    offset: int
    node: str
    token: int
    records: tuple[LogRecord, ...]

    def broadcast(self) -> MissedEvent | None:
        """The broadcast event this entry holds, or None (a connection event)."""
        return MissedEvent.of_broadcast(self.records)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry_offset(identifier: object) -> int:
    ms, _, seq = _text(identifier).partition("-")
    if ms != "0" or not seq.isdigit():
        raise RemoteProtocolError(
            f"bad shared log entry id {identifier!r}", reason=DisconnectReason.PARSE_ERROR
        )
    return int(seq)


def decode_entry(
    identifier: object, fields: dict[Any, Any], epoch: str, *, max_record_bytes: int
) -> SharedEntry:
    """Decode one stream entry.

    Raises:
        RemoteProtocolError: The entry is not one of ours or is damaged.
    """
    offset = _entry_offset(identifier)
    values = {_text(k): v for k, v in fields.items()}
    node, token, data = values.get("n"), values.get("t"), values.get("r")
    if not isinstance(data, bytes) or node is None or token is None:
        raise RemoteProtocolError(
            f"shared log entry {offset} lacks fields", reason=DisconnectReason.PARSE_ERROR
        )
    token_text = _text(token)
    if not token_text.isdigit():
        raise RemoteProtocolError(
            f"shared log entry {offset}: bad token", reason=DisconnectReason.PARSE_ERROR
        )
    reader = RecordReader(max_record_bytes=max_record_bytes)
    reader.feed(data)
    records: list[LogRecord] = []
    while (record := reader.next_record()) is not None:
        records.append(attrs.evolve(record, offset=offset, epoch=epoch))
    reader.finish()
    return SharedEntry(
        offset=offset, node=_text(node), token=int(token_text), records=tuple(records)
    )


def _session_bytes(session: SavedSession, epoch: str, *, state: str, node: str) -> bytes:
    packed: bytes = msgpack.packb(
        [
            state,
            node,
            session.sid,
            session.namespace,
            sorted(session.rooms),
            session.data,
            session.disconnected_at,
            epoch,
        ],
        default=repr,
    )
    return packed


def _live_prefix(node: str) -> bytes:
    """The first bytes of every live session value of ``node`` (see APPEND_SCRIPT)."""
    packer = msgpack.Packer()
    return packer.pack_array_header(_SESSION_FIELDS) + packer.pack(LIVE) + packer.pack(node)


@attrs.frozen(kw_only=True)
class _StoredSession:
    session: SavedSession
    state: str
    node: str
    epoch: str


def _session_from(pid: str, data: bytes) -> _StoredSession | None:
    try:
        state, node, sid, namespace, rooms, values, at, epoch = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not (
        state in (LIVE, SAVED)
        and isinstance(node, str)
        and isinstance(sid, str)
        and isinstance(namespace, str)
        and isinstance(rooms, list)
        and isinstance(values, dict)
        and isinstance(at, float | int)
        and isinstance(epoch, str)
    ):
        return None
    session = SavedSession(
        pid=pid,
        sid=sid,
        namespace=namespace,
        rooms=frozenset(r for r in rooms if isinstance(r, str)),
        data=values,
        disconnected_at=float(at),
    )
    return _StoredSession(session=session, state=state, node=node, epoch=epoch)


def _new_epoch() -> str:
    return secrets.token_hex(4)


_REDIS_ERRORS: Final = (coredis.exceptions.RedisError, OSError, TimeoutError)
"""What a Redis command raises when the connection or the server fails."""
_READ_ERRORS: Final = (*_REDIS_ERRORS, RemoteProtocolError)
"""... and what reading the log raises on top: a damaged entry."""


def log_key(prefix: str) -> bytes:
    """The stream of cluster ``prefix``'s shared log (``#seq`` and ``#epoch`` follow it)."""
    return f"{prefix}#~log".encode()


def _decode_all(
    raw: Iterable[StreamEntry], epoch: str, *, max_record_bytes: int
) -> list[SharedEntry]:
    return [
        decode_entry(e.identifier, e.field_values, epoch, max_record_bytes=max_record_bytes)
        for e in raw
    ]


async def _scan(
    client: coredis.Redis[bytes],
    stream: bytes,
    take: Callable[[StreamEntry], None],
    *,
    start: str = "-",
    end: str = "+",
    backwards: bool = False,
    more: Callable[[], bool] = lambda: True,
) -> None:
    """Hand the entries from ``start`` to ``end`` (or from ``end`` down to ``start``) to
    ``take``, a page per round trip, while ``more()`` says so."""
    while more():
        if backwards:
            page = await client.xrevrange(stream, end, start, count=_PAGE)
        else:
            page = await client.xrange(stream, start, end, count=_PAGE)
        for e in page:
            take(e)
        if len(page) < _PAGE:
            return
        last = f"(0-{_entry_offset(page[-1].identifier)}"
        if backwards:
            end = last
        else:
            start = last


@attrs.define(eq=False)
class _Recovery:
    """A session ``SharedLog.prepare_recovery`` took over (a ``PreparedRecovery``)."""

    log: SharedLog
    session: SavedSession
    after: int
    entries: list[SharedEntry]
    read_up_to: int
    epoch: str

    async def finish(
        self,
        *,
        rooms: frozenset[str],
        send: Callable[[MissedEvent, str], None],
        join: Callable[[], Awaitable[None]],
    ) -> None:
        """See ``PreparedRecovery.finish``."""
        await self.log._finish_recovery(self, rooms=rooms, send=send, join=join)


@attrs.define(eq=False)
class SharedLog:
    """This node's side of the shared log: appending, reading in order, sessions.

    ``RedisCluster`` owns one when ``RedisSettings.shared_log`` is on and runs it on each
    Redis connection (``run``).

    Attributes:
        prefix: The cluster's channel prefix (the keys' prefix).
        node_id: This node's id (the ``n`` of its entries).
        deliver: Delivers one entry to this node's sockets; returns how many it reached.
        on_gap: Told about entries this node never delivered.
        count_not_sent: Told (with ``"broadcast"`` or ``"record"``) about each entry
            that did not reach Redis, or may not have.
        max_len: The stream's length bound (approximate, Redis's ``MAXLEN ~``).
        block: Seconds one read waits for new entries.
        catch_up_timeout: Seconds a recovery waits for this node's reader to reach the
            client's offset before it gives up (the client is then not recovered).
        queue_size: Appends waiting for Redis.
        max_batch: Most entries in one append round trip.
        max_record_bytes: Largest record accepted.
        probe_owner: Asked, when a client wants to recover a session that is live on
            another node (``node, namespace, pid``), whether that node still holds it:
            None when it does (or cannot be asked), else the seconds since the node was
            found dead (0 when it answered that it no longer holds the socket). Without
            it such sessions are never taken.
        session_refresh: Seconds between the renewals of this node's live sessions' TTL.
        owner_timeout: How long finding out that an owner is dead may take (the
            cluster's ``node_timeout``): part of a live session's TTL.
    """

    prefix: str
    node_id: str
    deliver: Callable[[SharedEntry], Awaitable[int]]
    on_gap: Callable[[LogGap], None]
    count_not_sent: Callable[[str], None] = lambda kind: None
    max_len: int = 100_000
    block: float = 1.0
    catch_up_timeout: float = 2.0
    queue_size: int = 4096
    max_batch: int = 256
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    probe_owner: Callable[[str, str, str], Awaitable[float | None]] | None = None
    session_refresh: float = 30.0
    owner_timeout: float = 5.0
    epoch: str | None = attrs.field(default=None, init=False)
    delivered: int = attrs.field(default=0, init=False)
    """The last offset this node delivered (of ``epoch``)."""
    _client: coredis.Redis[bytes] | None = attrs.field(default=None, init=False)
    _send: trio.MemorySendChannel[_Append] | None = attrs.field(default=None, init=False)
    _own: dict[int, _Append] = attrs.field(factory=dict, init=False)
    _tokens: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _progress: trio.Event = attrs.field(factory=trio.Event, init=False)
    _live: dict[str, bytes] = attrs.field(factory=dict, init=False)
    """The sockets this node holds (by pid), whose sessions it keeps live in Redis, with
    the last value written for each."""
    _window: float = attrs.field(default=0.0, init=False)

    # -- keys -------------------------------------------------------------------------------

    @property
    def stream_key(self) -> bytes:
        return log_key(self.prefix)

    @property
    def _keys(self) -> list[bytes]:
        stream = self.stream_key
        return [stream, stream + b"#seq", stream + b"#epoch"]

    def session_key(self, pid: str) -> bytes:
        return f"{self.prefix}#~session#{pid}".encode()

    def recovery_offset(self, seq: int) -> str:
        """The recovery offset clients hold for entry ``seq`` of the current epoch."""
        return f"{self.epoch}-{seq}"

    # -- running on a connection ------------------------------------------------------------

    async def _append_raw(
        self, client: coredis.Redis[bytes], items: Sequence[_Append]
    ) -> tuple[str, int, list[bool]]:
        entries = [item for item in items if item.data is not None]
        writes = [item.session for item in items if item.session is not None]
        args: list[str | bytes | int] = [
            self.max_len,
            _new_epoch(),
            self.node_id,
            _live_prefix(self.node_id),
            len(entries),
        ]
        for item in entries:
            assert item.data is not None
            args += [item.token, item.data]
        for write in writes:
            args += [write.op, write.value, write.ttl_ms]
        keys = [*self._keys, *(write.key for write in writes)]
        reply = await client.eval(APPEND_SCRIPT, keys=keys, args=args)
        if not isinstance(reply, list | tuple) or len(reply) != 3 + len(writes):
            raise ClusterError(f"unexpected answer of the append script: {reply!r}")
        epoch, first, _last, *written = reply
        return _text(epoch), int(first), [bool(int(w)) for w in written]

    async def run(
        self,
        client: coredis.Redis[bytes],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the shared log over ``client`` until cancelled (or the link fails).

        ``started`` once the epoch is known and appends are taken.

        Raises:
            SharedLogResetError: The epoch changed while running.
        """
        epoch, first, _ = await self._append_raw(client, ())
        head = first - 1
        if self.epoch is None:
            self.delivered = head  # a new node starts at the end
        elif epoch != self.epoch:
            logger.warning(
                "cluster node %s: the shared log was reset (epoch %s, was %s): entries "
                "not delivered before are lost",
                self.node_id,
                epoch,
                self.epoch,
            )
            self.delivered = 0
            self._notify_progress()
            self.on_gap(LogGap(reason="reset", missed=None))
        self.epoch = epoch
        send, receive = trio.open_memory_channel[_Append](self.queue_size)
        self._client = client
        self._send = send
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._appender, client, receive)
                nursery.start_soon(self._reader, client)
                nursery.start_soon(self._refresher, client)
                task_status.started()
        finally:
            self._client = None
            self._send = None
            send.close()
            while True:
                try:
                    item = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                item.answered.set()  # never sent
            receive.close()
            for item in list(self._own.values()):
                item.answered.set()
                item.delivered.set()
            self._own.clear()
            self._notify_progress()

    async def _appender(
        self, client: coredis.Redis[bytes], receive: trio.MemoryReceiveChannel[_Append]
    ) -> None:
        while True:
            batch = [await receive.receive()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            for item in batch:
                item.sent = True
            try:
                epoch, first, written = await self._append_raw(client, batch)
            except BaseException:
                for item in batch:
                    item.answered.set()
                raise
            offsets = itertools.count(first)
            results = iter(written)
            for item in batch:
                if item.data is not None:
                    item.offset = next(offsets)
                if item.session is not None:
                    item.written = next(results)
                item.answered.set()
            if epoch != self.epoch:
                raise SharedLogResetError(f"the shared log's epoch changed to {epoch}")

    async def _reader(self, client: coredis.Redis[bytes]) -> None:
        stream = self.stream_key
        block_ms = max(1, int(self.block * 1000))
        while True:
            reply = await client.xread({stream: f"0-{self.delivered}"}, count=_PAGE, block=block_ms)
            if not reply:
                continue
            entries = next(iter(reply.values()), ())
            epoch = self.epoch
            assert epoch is not None
            async with self._lock:
                for entry in entries:
                    await self._deliver_one(entry.identifier, entry.field_values, epoch)
                self._notify_progress()

    async def _deliver_one(self, identifier: object, fields: dict[Any, Any], epoch: str) -> None:
        try:
            offset = _entry_offset(identifier)
        except RemoteProtocolError as exc:
            logger.warning("shared log: skipped %s", exc)
            return
        if offset <= self.delivered:
            return
        if offset > self.delivered + 1:
            missed = offset - self.delivered - 1
            logger.warning(
                "cluster node %s: %d shared log entries were trimmed before it read them",
                self.node_id,
                missed,
            )
            self.on_gap(LogGap(reason="trimmed", missed=missed))
        try:
            entry = decode_entry(identifier, fields, epoch, max_record_bytes=self.max_record_bytes)
        except RemoteProtocolError as exc:
            logger.warning("shared log: skipped a damaged entry %s: %s", identifier, exc)
            self.delivered = offset
            return
        count = 0
        try:
            # All or nothing: a lost Redis connection cancels the reader, and cutting a
            # delivery in half would mark the entry delivered with some of its rooms never
            # sent it. (Local delivery only queues into room inboxes: it does not wait on
            # Redis, nor on any client.)
            with trio.CancelScope(shield=True):
                count = await self.deliver(entry)
        except Exception:
            logger.exception("shared log: delivering entry %d failed", offset)
        finally:
            self.delivered = offset
            if entry.node == self.node_id:
                own = self._own.pop(entry.token, None)
                if own is not None:
                    own.count = count
                    own.delivered.set()

    async def _refresher(self, client: coredis.Redis[bytes]) -> None:
        """Every ``session_refresh`` seconds (and at once after a reconnection), renew
        the TTL of this node's live sessions, and write back those Redis does not have:
        written during an outage, expired during a long one, or lost with Redis's data."""
        prefix = _live_prefix(self.node_id)
        while True:
            pids = list(self._live)
            ttl_ms = self._live_ttl_ms()
            for start in range(0, len(pids), _REFRESH_BATCH):
                chunk = pids[start : start + _REFRESH_BATCH]
                keys = [self.session_key(pid) for pid in chunk]
                missing = await client.eval(REFRESH_SCRIPT, keys=keys, args=[prefix, ttl_ms])
                assert isinstance(missing, list | tuple)
                lost = [chunk[int(i) - 1] for i in missing]
                lost = [pid for pid in lost if pid in self._live]  # not closed meanwhile
                if lost:
                    await client.eval(
                        RESTORE_SCRIPT,
                        keys=[self.session_key(pid) for pid in lost],
                        args=[ttl_ms, *(self._live[pid] for pid in lost)],
                    )
            await trio.sleep(self.session_refresh)

    def _live_ttl_ms(self) -> int:
        """A live session's TTL: after its node's last renewal, the node may die within
        ``session_refresh`` (plus one for a slow renewal), be found dead within
        ``owner_timeout``, and its clients then have the recovery window."""
        ttl = self._window + 2 * self.session_refresh + self.owner_timeout
        return max(1, int(ttl * 1000))

    def _notify_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # -- appending --------------------------------------------------------------------------

    async def broadcast(self, data: bytes) -> tuple[AppendOutcome, int]:
        """Append one broadcast entry and wait until this node delivered it.

        Returns the outcome and how many of this node's sockets it reached.

        Cancellation: the entry may be in the log (and then every node delivers it).
        """
        send = self._send
        if send is None:
            await trio.lowlevel.checkpoint()
            self.count_not_sent("broadcast")
            return AppendOutcome.NOT_SENT, 0
        item = _Append(data=data, token=next(self._tokens))
        self._own[item.token] = item
        try:
            try:
                send.send_nowait(item)
            except trio.WouldBlock:
                await send.send(item)
            await item.answered.wait()
            if item.offset is None:
                self.count_not_sent("broadcast")
                return (AppendOutcome.UNKNOWN if item.sent else AppendOutcome.NOT_SENT), 0
            await item.delivered.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.count_not_sent("broadcast")
            return AppendOutcome.NOT_SENT, 0
        finally:
            self._own.pop(item.token, None)
        if item.offset > self.delivered:
            return AppendOutcome.APPENDED, 0  # the connection was lost before delivery
        return AppendOutcome.DELIVERED, item.count

    async def append(self, data: bytes) -> bool:
        """Append a connection record and wait until Redis has it (one round trip), so
        that entries that follow from it, on any node, come after it. False when it
        did not get there (told to ``count_not_sent`` as ``"record"``), or may not have.

        Cancellation: it may be appended.
        """
        send = self._send
        if send is None:
            await trio.lowlevel.checkpoint()
            self.count_not_sent("record")
            return False
        item = _Append(data=data, token=0)
        try:
            await send.send(item)
            await item.answered.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if item.offset is None:
            self.count_not_sent("record")
            return False
        return True

    def append_nowait(self, data: bytes) -> bool:
        """Queue a connection record (connect, join, ...) without waiting; False when it
        could not be queued (told to ``count_not_sent`` as ``"record"``)."""
        send = self._send
        if send is not None:
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                send.send_nowait(_Append(data=data, token=0))
                return True
        self.count_not_sent("record")
        return False

    # -- sessions and recovery ------------------------------------------------------------------

    async def _session_write(self, write: _SessionWrite) -> _Append | None:
        """Queue a session write (waiting for room, not for Redis); None without Redis."""
        send = self._send
        if send is None:
            await trio.lowlevel.checkpoint()
            return None
        item = _Append(data=None, token=0, session=write)
        try:
            try:
                send.send_nowait(item)
            except trio.WouldBlock:
                await send.send(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        return item

    def _live_write(self, session: SavedSession, op: str) -> _SessionWrite | None:
        epoch = self.epoch
        if epoch is None:
            return None
        value = _session_bytes(session, epoch, state=LIVE, node=self.node_id)
        self._live[session.pid] = value
        return _SessionWrite(
            key=self.session_key(session.pid), op=op, value=value, ttl_ms=self._live_ttl_ms()
        )

    def holds(self, pid: str) -> bool:
        """Whether this node holds the socket of session ``pid`` (its session is live)."""
        return pid in self._live

    async def open_session(self, session: SavedSession, window: float) -> bool:
        """Put a new socket's session in Redis as live on this node, and keep it live
        until ``save_session`` or ``close_session``; False when it could not be written
        (no Redis): the first renewal after the reconnection writes it then.

        ``window`` is the recovery window (``max_disconnection_duration``).

        Cancellation: it may have been written (the session is then held).
        """
        self._window = max(self._window, window)
        write = self._live_write(session, "set")
        item = await self._session_write(write) if write is not None else None
        if item is None:
            return False
        await item.answered.wait()
        return item.written

    async def update_session(self, session: SavedSession) -> None:
        """Queue the new state (rooms, data) of a socket this node holds, without waiting
        for Redis; it reaches Redis no later than anything this node queues after it (a
        JOIN record, say). Without Redis, the first renewal after the reconnection writes
        it if Redis lost the session meanwhile. Nothing happens for a session this node
        does not hold.

        Cancellation: it may have been queued.
        """
        write = self._live_write(session, "own") if session.pid in self._live else None
        if write is None:
            await trio.lowlevel.checkpoint()
            return
        await self._session_write(write)

    async def close_session(self, pid: str) -> None:
        """Forget a session this node holds (its socket left for good): queue its
        deletion, without waiting for Redis.

        Cancellation: it may have been queued (else it expires with its TTL).
        """
        if self._live.pop(pid, None) is None:
            await trio.lowlevel.checkpoint()
            return
        await self._session_write(_SessionWrite(key=self.session_key(pid), op="del"))

    async def save_session(self, session: SavedSession, ttl: float) -> bool:
        """Turn a live session into a disconnected one, kept for ``ttl`` seconds; False
        without Redis, or when the session is not this node's any more (another node
        took it over, or it expired during an outage).

        Cancellation: it may have been saved.
        """
        self._live.pop(session.pid, None)
        epoch = self.epoch
        if epoch is None:
            await trio.lowlevel.checkpoint()
            return False
        write = _SessionWrite(
            key=self.session_key(session.pid),
            op="own",
            value=_session_bytes(session, epoch, state=SAVED, node=self.node_id),
            ttl_ms=max(1, int(ttl * 1000)),
        )
        item = await self._session_write(write)
        if item is None:
            logger.warning("session %s not saved in Redis: no connection", session.sid)
            return False
        await item.answered.wait()
        if not item.written:
            logger.warning("session %s not saved: it is no longer this node's", session.sid)
        return item.written

    async def prepare_recovery(
        self,
        namespace: str,
        pid: str,
        recovery_offset: str,
        *,
        now: float,
        max_age: float,
        max_events: int,
    ) -> _Recovery | None:
        """Check that session ``pid`` can be recovered from ``recovery_offset`` and take it over
        (it is then live on this node).

        A saved session counts from its disconnect; a live one of another node is asked
        for (``probe_owner``) and counts from the time its node was found dead.

        Returns None (not recovered) when there is no Redis, the session is unknown,
        expired or of another namespace, its node still holds it, the offset is of
        another epoch or not yet reached here, more than ``max_events`` entries followed
        it, or some of them are gone (a gap).

        Cancellation: the session may have been taken over (a later attempt finds it
        live on this node, not held, and takes it).
        """
        client, epoch = self._client, self.epoch
        name, _, seq_text = recovery_offset.rpartition("-")
        if client is None or epoch is None or name != epoch or not seq_text.isdigit():
            await trio.lowlevel.checkpoint()
            return None
        after = int(seq_text)
        key = self.session_key(pid)
        self._window = max(self._window, max_age)
        try:
            for _ in range(_TAKE_ATTEMPTS):
                raw = await client.get(key)
                found = _session_from(pid, raw) if isinstance(raw, bytes) else None
                if found is None or found.session.namespace != namespace or found.epoch != epoch:
                    return None
                session = await self._disconnected(found, namespace, now)
                if session is None or now - session.disconnected_at > max_age:
                    return None
                entries = await self._missed(client, epoch, after, max_events)
                if entries is None:
                    return None
                assert isinstance(raw, bytes)
                if await self._take(client, session, raw, epoch):
                    break
                # Changed since it was read (its node saved it meanwhile): read it again.
            else:
                return None
        except _READ_ERRORS as exc:
            logger.warning("recovery of %s refused: %s", pid, exc)
            return None
        read_up_to = entries[-1].offset if entries else after
        return _Recovery(
            log=self,
            session=session,
            after=after,
            entries=entries,
            read_up_to=read_up_to,
            epoch=epoch,
        )

    async def _disconnected(
        self, found: _StoredSession, namespace: str, now: float
    ) -> SavedSession | None:
        """The session with its disconnect time, or None if its socket is still held."""
        session = found.session
        if found.state == SAVED:
            await trio.lowlevel.checkpoint()
            return session
        if found.node == self.node_id:
            await trio.lowlevel.checkpoint()
            if session.pid in self._live:
                return None  # this node holds it
            return attrs.evolve(session, disconnected_at=now)
        if self.probe_owner is None:
            await trio.lowlevel.checkpoint()
            return None
        age = await self.probe_owner(found.node, namespace, session.pid)
        if age is None:
            logger.info("recovery of %s refused: node %s holds it", session.sid, found.node)
            return None
        logger.info(
            "session %s of node %s is recoverable: the node was found dead %.1f s ago",
            session.sid,
            found.node,
            age,
        )
        return attrs.evolve(session, disconnected_at=now - age)

    async def _missed(
        self, client: coredis.Redis[bytes], epoch: str, after: int, max_events: int
    ) -> list[SharedEntry] | None:
        """The entries after offset ``after``, once this node has read up to it; None if
        that takes too long, or they are too many or do not follow on from ``after``."""
        with trio.move_on_after(self.catch_up_timeout):
            while self.delivered < after and self.epoch == epoch:
                await self._progress.wait()
        if self.delivered < after or self.epoch != epoch:
            return None
        raw_entries = await client.xrange(self.stream_key, f"(0-{after}", "+", count=max_events + 1)
        if len(raw_entries) > max_events:
            return None
        entries = _decode_all(raw_entries, epoch, max_record_bytes=self.max_record_bytes)
        if entries and entries[0].offset != after + 1:
            return None  # entries right after the client's offset were trimmed
        return entries

    async def _take(
        self, client: coredis.Redis[bytes], session: SavedSession, raw: bytes, epoch: str
    ) -> bool:
        """Make the session, if it is still ``raw``, live on this node: one node only
        can take it, and it stays in Redis (a crash right after loses nothing)."""
        pid = session.pid
        value = _session_bytes(session, epoch, state=LIVE, node=self.node_id)
        self._live[pid] = value  # held from now on: an owner probe hears so
        taken = False
        try:
            taken = bool(
                await client.eval(
                    TAKE_SCRIPT,
                    keys=[self.session_key(pid)],
                    args=[raw, value, self._live_ttl_ms()],
                )
            )
        finally:
            if not taken:
                self._live.pop(pid, None)
        return taken

    async def _finish_recovery(
        self,
        recovery: _Recovery,
        *,
        rooms: frozenset[str],
        send: Callable[[MissedEvent, str], None],
        join: Callable[[], Awaitable[None]],
    ) -> None:
        """``PreparedRecovery.finish`` of ``recovery``, a session this log took over.

        Cancellation: some events may be sent; the rooms may not be joined.
        """
        async with self._lock:
            upto = self.delivered
            entries = [e for e in recovery.entries if e.offset <= upto]
            client = self._client
            if upto > recovery.read_up_to and client is not None and self.epoch == recovery.epoch:
                try:
                    more = await client.xrange(
                        self.stream_key, f"(0-{recovery.read_up_to}", f"0-{upto}"
                    )
                    entries += _decode_all(
                        more, recovery.epoch, max_record_bytes=self.max_record_bytes
                    )
                except _READ_ERRORS as exc:
                    logger.warning("recovered socket may miss events: %s", exc)
            for entry in entries:
                event = entry.broadcast()
                if event is not None and event.is_for(recovery.session.namespace, rooms):
                    send(event, f"{recovery.epoch}-{entry.offset}")
            await join()

    @contextlib.asynccontextmanager
    async def delivery_held(self) -> AsyncIterator[int]:
        """Hold this node's delivery of the log (as a recovery's ``finish`` does) and give the
        last offset delivered: what a socket joins meanwhile it gets live from the next
        offset on (``roomcast.engine.history``).

        Cancellation: delivery resumes.
        """
        async with self._lock:
            yield self.delivered

    # -- reading ------------------------------------------------------------------------------

    async def history(
        self, namespace: str, room: str, *, last: int | None, after: int | None
    ) -> list[LogRecord]:
        """The room's records in the shared log: the last ``last``, or every one after
        offset ``after`` (oldest first).

        Raises:
            ClusterError: No Redis connection, or it failed.
        """
        client, epoch = self._client, self.epoch
        if client is None or epoch is None:
            await trio.lowlevel.checkpoint()
            raise ClusterError("no Redis connection: the shared log cannot be read")

        def in_room(raw: StreamEntry) -> list[LogRecord]:
            entry = decode_entry(
                raw.identifier, raw.field_values, epoch, max_record_bytes=self.max_record_bytes
            )
            return [r for r in entry.records if r.namespace == namespace and r.room == room]

        found: list[LogRecord] = []
        try:
            if last is not None and after is None:  # newest first, until there are enough
                await _scan(
                    client,
                    self.stream_key,
                    lambda raw: found.extend(reversed(in_room(raw))),
                    backwards=True,
                    more=lambda: len(found) < last,
                )
                return list(reversed(found[:last]))
            start = f"(0-{after}" if after is not None else "-"
            await _scan(
                client, self.stream_key, lambda raw: found.extend(in_room(raw)), start=start
            )
        except _READ_ERRORS as exc:
            raise ClusterError(f"the shared log could not be read: {exc}") from exc
        return found if last is None else found[-last:]


async def read_shared_log(
    client: coredis.Redis[bytes],
    prefix: str,
    *,
    since_offset: int | None = None,
    until_offset: int | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    on_damaged: Callable[[str], None] | None = None,
) -> list[LogRecord]:
    """Every record of cluster ``prefix``'s shared log (offsets inclusive), oldest first.

    A damaged entry is reported to ``on_damaged`` and skipped.
    """
    stream = log_key(prefix)
    raw_epoch = await client.get(stream + b"#epoch")
    if raw_epoch is None:
        return []
    epoch = _text(raw_epoch)
    records: list[LogRecord] = []

    def take(raw: StreamEntry) -> None:
        try:
            entry = decode_entry(
                raw.identifier, raw.field_values, epoch, max_record_bytes=max_record_bytes
            )
        except RemoteProtocolError as exc:
            if on_damaged is not None:
                on_damaged(f"entry {_text(raw.identifier)}: {exc}")
            return
        records.extend(entry.records)

    await _scan(
        client,
        stream,
        take,
        start=f"0-{since_offset}" if since_offset is not None else "-",
        end=f"0-{until_offset}" if until_offset is not None else "+",
    )
    return records
