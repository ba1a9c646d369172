"""Scale-out through Redis: many roomcast nodes act as one Socket.IO server.

Run one ``RedisCluster`` per process next to the server, and give the server its
adapter factory::

    cluster = RedisCluster(settings=RedisSettings(url="redis://127.0.0.1:6379/0"))
    server = Server(adapter_factory=cluster.adapter_factory)
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        await nursery.start(server.serve, "0.0.0.0", 5000)

Each namespace gets a ``RedisAdapter``: local membership and fan-out stay in the
in-memory adapter (room actors), and the adapter adds the other nodes over Redis
pub/sub (see ``docs/scaling.md`` for the channels, the message format and what happens
when Redis goes away). The inter-node messages are defined in
``roomcast.engine.adapters.cluster``.

Redis must be trusted: any client that can publish on the cluster's channels can make
every node send anything to any socket. Use Redis ACLs, a password and TLS
(``RedisSettings``), and a private network.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import random
import secrets
from collections.abc import Callable
from ssl import SSLContext, create_default_context
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeAlias

import anyio
import attrs
import coredis
import coredis.exceptions
import trio
from coredis.patterns.pubsub import PubSub
from coredis.retry import NoRetryPolicy

from roomcast.engine.adapters.base import (
    Adapter,
    AdapterHost,
    BroadcastAckResult,
    BroadcastOptions,
    LocalSocket,
    ServerSideResult,
    SocketInfo,
)
from roomcast.engine.adapters.cluster import (
    FINAL_PARTS,
    AckAnswerPart,
    AckBroadcast,
    AckFinished,
    AckRecipients,
    AddSockets,
    Applied,
    Body,
    BroadcastBody,
    Bye,
    ClusterError,
    ClusterTimeoutError,
    ClusterUnavailableError,
    DelSockets,
    DisconnectSockets,
    Envelope,
    Failed,
    FetchSockets,
    Heartbeat,
    Hello,
    HoldsSession,
    Operation,
    Part,
    RequestBody,
    ResponseBody,
    ServerAnswer,
    ServerSideEmit,
    SocketsFound,
    decode_envelope,
    encode_envelope,
    sender_of,
)
from roomcast.engine.adapters.memory import MemoryAdapter
from roomcast.engine.adapters.redis_log import (
    LogGap,
    SharedEntry,
    SharedLog,
    SharedLogResetError,
)
from roomcast.engine.config import Config
from roomcast.engine.transport.frames import OutFrame, SharedFrame
from roomcast.protocol import JsonValue, RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "ClusterEvent",
    "ClusterStatus",
    "Connected",
    "Disconnected",
    "LogGap",
    "OutageReport",
    "PeerJoined",
    "PeerLost",
    "RedisAdapter",
    "RedisCluster",
    "RedisSettings",
    "TrafficMissed",
]

logger = logging.getLogger(__name__)

LocalAdapterFactory: TypeAlias = Callable[[str, Callable[..., None], Config], Adapter]

_LINK_ERRORS: Final = (
    coredis.exceptions.RedisError,
    OSError,
    TimeoutError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
)
"""What a lost, refused or stalled Redis connection raises (coredis wraps most of it in
``ConnectionError``; anyio's deadlines raise ``TimeoutError``)."""
_QUEUE_ERRORS: Final = (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError)
_MAX_GONE: Final = 1024


# --------------------------------------------------------------------------- settings


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _valid_prefix(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value or "#" in value:
        raise ValueError(f"channel_prefix must be non-empty and without '#', got {value!r}")


def _after_heartbeat(
    instance: RedisSettings, attribute: attrs.Attribute[float], value: float
) -> None:
    if not value > instance.heartbeat_interval:
        raise ValueError(
            f"node_timeout ({value}) must be longer than heartbeat_interval "
            f"({instance.heartbeat_interval})"
        )


@attrs.frozen(kw_only=True)
class RedisSettings:
    """How a node reaches Redis and the other nodes.

    Attributes:
        url: ``redis://[[user]:password@]host:port/db`` or ``rediss://...`` for TLS
            (coredis's URL syntax; ``rediss://`` takes ``ssl_*`` query arguments).
        channel_prefix: The cluster's name: the prefix of every channel it uses and a
            field of every message. Nodes with different prefixes ignore each other, so
            one Redis can serve several clusters. No ``#``.
        username: Redis ACL user (overrides the URL's).
        password: Redis password (overrides the URL's).
        ssl: Connect with TLS even for a ``redis://`` URL.
        ssl_context: The TLS context to use (wins over the ``ssl_*`` fields).
        ssl_ca_certs: CA bundle that signs the server's certificate.
        ssl_certfile: Client certificate, for Redis's ``tls-auth-clients``.
        ssl_keyfile: Its private key.
        ssl_check_hostname: Check the server certificate's host name.
        connect_timeout: Seconds to open a Redis connection.
        heartbeat_interval: Seconds between a node's heartbeats.
        node_timeout: A node not heard from for this long is taken for dead: its
            sockets stop being listed and requests stop waiting for it. Also: when this
            node has not even heard its own heartbeat for this long, it takes its Redis
            connection for stalled and reconnects.
        request_timeout: Seconds a cluster-wide request (fetch, join, leave,
            disconnect) waits for the other nodes before ``ClusterTimeoutError``.
        reconnect_interval: First delay before reconnecting to Redis; it doubles
            (with jitter) after each failed attempt...
        max_reconnect_interval: ... up to this.
        publish_queue_size: Messages waiting to be published. A broadcast waits for room
            while the connection is up; control messages are dropped when it is full.
        max_publish_batch: Most messages sent in one pipelined round trip.
        max_message_bytes: Largest inter-node message accepted.
        max_concurrent_requests: Requests of other nodes served at once; more are
            answered with a failure ("busy").
        shared_log: Keep the cluster's ordered log on a Redis Stream (see
            ``roomcast.engine.adapters.redis_log``): recorded broadcasts go through it,
            every node delivers them in its order, and history and connection state
            recovery work on every node. Every node of a cluster must agree on it.
        log_max_len: The stream's length bound (approximate): how far back history and
            recovery reach.
        log_catch_up_timeout: Seconds a recovery waits for this node to have read up to
            the client's offset.
        session_refresh_interval: Seconds between a node's renewals of the TTL of the
            sessions it holds in Redis (shared log with recovery): a killed node's
            sessions expire at most ``max_disconnection_duration + 2 *
            session_refresh_interval + node_timeout`` after its last renewal.
    """

    url: str = "redis://127.0.0.1:6379/0"
    channel_prefix: str = attrs.field(default="roomcast", validator=_valid_prefix)
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    ssl: bool = False
    ssl_context: SSLContext | None = None
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    connect_timeout: float = attrs.field(default=2.0, validator=_positive)
    heartbeat_interval: float = attrs.field(default=1.0, validator=_positive)
    node_timeout: float = attrs.field(default=5.0, validator=[_positive, _after_heartbeat])
    request_timeout: float = attrs.field(default=5.0, validator=_positive)
    reconnect_interval: float = attrs.field(default=0.1, validator=_positive)
    max_reconnect_interval: float = attrs.field(default=5.0, validator=_positive)
    publish_queue_size: int = 4096
    max_publish_batch: int = 512
    max_message_bytes: int = 16 * 1024 * 1024
    max_concurrent_requests: int = 64
    shared_log: bool = False
    log_max_len: int = attrs.field(default=100_000, validator=attrs.validators.gt(0))
    log_catch_up_timeout: float = attrs.field(default=2.0, validator=_positive)
    session_refresh_interval: float = attrs.field(default=30.0, validator=_positive)

    def tls_context(self) -> SSLContext | None:
        """The TLS context to connect with, or None for a plain (or ``rediss://``) URL."""
        if self.ssl_context is not None:
            return self.ssl_context
        if not self.ssl:
            return None
        context = create_default_context(cafile=self.ssl_ca_certs)
        if self.ssl_certfile is not None:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        context.check_hostname = self.ssl_check_hostname
        return context


# --------------------------------------------------------------------------- reports


@attrs.frozen(kw_only=True)
class OutageReport:
    """One period without Redis, told once it ended.

    Attributes:
        started: Trio time the connection was lost (or the first attempt failed).
        ended: Trio time it was back.
        not_sent: Messages this node could not publish meanwhile, by kind
            (``broadcast``, ``request``, ``response``): those never reached the others.
    """

    started: float
    ended: float
    not_sent: dict[str, int]

    @property
    def duration(self) -> float:
        """Seconds without Redis."""
        return self.ended - self.started


@attrs.frozen(kw_only=True)
class Connected:
    """The node (re)connected to Redis; ``outage`` tells about the gap before, if any."""

    outage: OutageReport | None


@attrs.frozen(kw_only=True)
class Disconnected:
    """The node lost Redis (or could not reach it); it serves its own clients only."""

    reason: str


@attrs.frozen(kw_only=True)
class PeerJoined:
    """A node was heard from for the first time (or again after it was lost)."""

    node: str


@attrs.frozen(kw_only=True)
class PeerLost:
    """A node left (``reason`` "left") or was not heard from in time ("timeout")."""

    node: str
    reason: str


@attrs.frozen(kw_only=True)
class TrafficMissed:
    """Messages of ``node`` on ``channel`` that never arrived here (a sequence gap)."""

    node: str
    channel: str
    count: int


ClusterEvent: TypeAlias = Connected | Disconnected | PeerJoined | PeerLost | TrafficMissed | LogGap


@attrs.frozen(kw_only=True)
class ClusterStatus:
    """A node's view of the cluster.

    Attributes:
        node_id: This node's id (new on every start).
        connected: Whether it has a working Redis connection now.
        peers: The other nodes it currently hears from.
        outage_since: Trio time the current outage began, or None when connected.
        outages: How many outages there were (the current one included).
        last_outage: The last outage that ended.
        not_sent: Messages never published, by kind, since the start.
        missed: Messages of other nodes that never arrived, by node, since the start.
        dropped: Messages received and thrown away (malformed, another cluster's or
            another protocol version's).
        log_epoch: The shared log's epoch (None when it is off or not reached yet).
        log_delivered: The last shared log offset this node delivered.
    """

    node_id: str
    connected: bool
    peers: frozenset[str]
    outage_since: float | None
    outages: int
    last_outage: OutageReport | None
    not_sent: dict[str, int]
    missed: dict[str, int]
    dropped: int
    log_epoch: str | None = None
    log_delivered: int = 0


# --------------------------------------------------------------------------- internals


class _LinkStalledError(ClusterError):
    """No message (not even our own heartbeat) arrived for ``node_timeout`` seconds."""


@attrs.frozen(kw_only=True)
class _Outgoing:
    channel: bytes
    data: bytes
    kind: str | None  # None: a control message, not counted when it is lost


@attrs.define(eq=False)
class _PendingRequest:
    """A request of this node, waiting for the other nodes' final parts."""

    waiting: set[str]
    on_part: Callable[[str, Part], None] | None = None
    parts: list[tuple[str, Part]] = attrs.field(factory=list)
    done: trio.Event = attrs.field(factory=trio.Event)
    failure: ClusterError | None = None

    def feed(self, node: str, part: Part) -> None:
        self.parts.append((node, part))
        if self.on_part is not None:
            self.on_part(node, part)
        if isinstance(part, FINAL_PARTS):
            self.drop(node)

    def drop(self, node: str) -> None:
        self.waiting.discard(node)
        if not self.waiting:
            self.done.set()

    def fail(self, error: ClusterError) -> None:
        self.failure = error
        self.done.set()


@attrs.define(eq=False)
class _Link:
    """One working connection to Redis: a client (publishing) and a subscription."""

    client: coredis.Redis[bytes]
    pubsub: PubSub[bytes]
    send: trio.MemorySendChannel[_Outgoing]
    receive: trio.MemoryReceiveChannel[_Outgoing]
    subscribed: set[bytes] = attrs.field(factory=set)
    last_received: float = 0.0


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return False


def _eio(frame: OutFrame) -> str | bytes:
    return frame.eio if isinstance(frame, SharedFrame) else frame


# --------------------------------------------------------------------------- the node


@attrs.define(eq=False)
class RedisCluster:
    """This node's membership in a cluster of roomcast nodes that share a Redis.

    Start ``run`` in a nursery before serving; pass ``adapter_factory`` to the Server.

    Attributes:
        settings: How to reach Redis and the other nodes.
        on_event: Called (synchronously, never awaited) with each ``ClusterEvent``:
            connected, disconnected, a peer joined or was lost, traffic was missed.
        local_factory: Builds the local part of each namespace's adapter (the
            in-memory adapter by default).
        node_id: This node's id, new for every process.
    """

    settings: RedisSettings = attrs.field(factory=RedisSettings)
    on_event: Callable[[ClusterEvent], None] | None = None
    local_factory: LocalAdapterFactory | None = None
    node_id: str = attrs.field(factory=lambda: secrets.token_hex(8))
    _adapters: dict[str, RedisAdapter] = attrs.field(factory=dict, init=False)
    _link: _Link | None = attrs.field(default=None, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _peers: dict[str, float] = attrs.field(factory=dict, init=False)
    _pending: dict[int, _PendingRequest] = attrs.field(factory=dict, init=False)
    _request_ids: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _seqs: dict[bytes, int] = attrs.field(factory=dict, init=False)
    _last_seq: dict[tuple[str, bytes], int] = attrs.field(factory=dict, init=False)
    _not_sent: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _missed: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _dropped: int = attrs.field(default=0, init=False)
    _outage_since: float | None = attrs.field(default=None, init=False)
    _outage_not_sent: collections.Counter[str] = attrs.field(
        factory=collections.Counter, init=False
    )
    _outages: int = attrs.field(default=0, init=False)
    _last_outage: OutageReport | None = attrs.field(default=None, init=False)
    _changed: trio.Event | None = attrs.field(default=None, init=False)
    _channels_changed: trio.Event | None = attrs.field(default=None, init=False)
    _requests_running: int = attrs.field(default=0, init=False)
    _link_was_up: bool = attrs.field(default=False, init=False)
    _gone: collections.OrderedDict[str, float] = attrs.field(
        factory=collections.OrderedDict, init=False
    )
    """Nodes found dead (Trio time), the latest ``_MAX_GONE``: a recovery of one of their
    sessions need not ask them."""
    shared_log: SharedLog | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        settings = self.settings
        if settings.shared_log:
            self.shared_log = SharedLog(
                prefix=settings.channel_prefix,
                node_id=self.node_id,
                deliver=self._deliver_entry,
                on_gap=self._notify,
                count_not_sent=self._count_not_sent,
                max_len=settings.log_max_len,
                block=min(settings.heartbeat_interval, settings.node_timeout / 2),
                catch_up_timeout=settings.log_catch_up_timeout,
                queue_size=settings.publish_queue_size,
                probe_owner=self._probe_owner,
                session_refresh=settings.session_refresh_interval,
                owner_timeout=settings.node_timeout,
            )

    # -- channels ---------------------------------------------------------------------------

    @property
    def cluster_channel(self) -> bytes:
        """Heartbeats and requests: every node subscribes."""
        return f"{self.settings.channel_prefix}#~cluster".encode()

    def node_channel(self, node: str) -> bytes:
        """Responses to the requests of ``node``."""
        return f"{self.settings.channel_prefix}#~node#{node}".encode()

    def namespace_channel(self, namespace: str) -> bytes:
        """Broadcasts in ``namespace``: the nodes that have it subscribe."""
        return f"{self.settings.channel_prefix}#{namespace}".encode()

    def _wanted_channels(self) -> set[bytes]:
        wanted = {self.cluster_channel, self.node_channel(self.node_id)}
        wanted.update(self.namespace_channel(name) for name in self._adapters)
        return wanted

    # -- the adapter factory ----------------------------------------------------------------

    def adapter_factory(
        self, name: str, spawn_room: Callable[..., None], config: Config
    ) -> RedisAdapter:
        """Build the adapter of namespace ``name`` (pass this to ``Server``)."""
        if self.local_factory is not None:
            local = self.local_factory(name, spawn_room, config)
        else:
            local = MemoryAdapter(
                namespace=name, spawn_room=spawn_room, room_inbox_size=config.room_inbox_size
            )
        adapter = RedisAdapter(namespace=name, cluster=self, local=local)
        self._adapters[name] = adapter
        if self._channels_changed is not None:
            self._channels_changed.set()
        return adapter

    # -- status -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether this node has a working Redis connection now."""
        return self._link is not None

    @property
    def peers(self) -> frozenset[str]:
        """The other nodes this node hears from."""
        return frozenset(self._peers)

    def status(self) -> ClusterStatus:
        """A snapshot of this node's view of the cluster."""
        return ClusterStatus(
            node_id=self.node_id,
            connected=self.connected,
            peers=self.peers,
            outage_since=self._outage_since,
            outages=self._outages,
            last_outage=self._last_outage,
            not_sent=dict(self._not_sent),
            missed=dict(self._missed),
            dropped=self._dropped,
            log_epoch=self.shared_log.epoch if self.shared_log is not None else None,
            log_delivered=self.shared_log.delivered if self.shared_log is not None else 0,
        )

    async def wait_until(self, predicate: Callable[[ClusterStatus], bool]) -> ClusterStatus:
        """Wait until ``predicate(status)`` holds; return that status.

        Cancellation: nothing changes.
        """
        while True:
            status = self.status()
            if predicate(status):
                await trio.lowlevel.checkpoint()
                return status
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    def _notify(self, event: ClusterEvent | None = None) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        if event is not None and self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                logger.exception("cluster on_event callback failed on %r", event)

    # -- running ----------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Join the cluster and stay in it, reconnecting to Redis with backoff, until
        cancelled. ``started`` comes after the first connection attempt, whether it
        worked or not: a node without Redis still serves its own clients.

        Cancellation: the other nodes are told this node leaves (when Redis is reachable
        within ``connect_timeout``); requests in flight fail with ClusterUnavailableError.
        """
        settings = self.settings
        self._channels_changed = trio.Event()
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        delay = settings.reconnect_interval
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                while True:
                    reason = "connection closed"
                    try:
                        await self._connect_once(ready)
                    except* (*_LINK_ERRORS, _LinkStalledError, SharedLogResetError) as group:
                        reason = "; ".join(repr(exc) for exc in _leaves(group))
                    if self._link_was_up:
                        delay = settings.reconnect_interval
                    self._link_was_up = False
                    self._link_down(reason)
                    ready()
                    await trio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, settings.max_reconnect_interval)
            finally:
                self._nursery = None
                self._channels_changed = None
        raise AssertionError("unreachable")  # pragma: no cover

    def _client(self) -> coredis.Redis[bytes]:
        settings = self.settings
        options: dict[str, Any] = {}
        if settings.username is not None:
            options["username"] = settings.username
        if settings.password is not None:
            options["password"] = settings.password
        context = settings.tls_context()
        if context is not None:
            options["ssl_context"] = context
        client: coredis.Redis[bytes] = coredis.Redis.from_url(
            settings.url,
            decode_responses=False,
            retry_policy=NoRetryPolicy(),
            connect_timeout=settings.connect_timeout,
            stream_timeout=settings.node_timeout,
            client_name=f"roomcast-{self.node_id}",
            **options,
        )
        return client

    async def _connect_once(self, ready: Callable[[], None]) -> None:
        settings = self.settings
        async with (
            self._client() as client,
            client.pubsub(
                retry_policy=None,
                ignore_subscribe_messages=True,
                subscription_timeout=settings.connect_timeout,
            ) as pubsub,
        ):
            channels = self._wanted_channels()
            await pubsub.subscribe(*sorted(channels))
            send, receive = trio.open_memory_channel[_Outgoing](settings.publish_queue_size)
            link = _Link(client=client, pubsub=pubsub, send=send, receive=receive)
            link.subscribed.update(channels)
            link.last_received = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    if self.shared_log is not None:
                        await nursery.start(self.shared_log.run, client)
                    self._link_up(link)
                    ready()
                    nursery.start_soon(self._publisher, link)
                    nursery.start_soon(self._heartbeats, link)
                    nursery.start_soon(self._subscriber, link)
                    await self._receiver(link)
            except BaseException as exc:
                if _only_cancelled(exc):
                    with trio.move_on_after(settings.connect_timeout, shield=True):
                        await self._say_bye()
                raise
            finally:
                self._link = None
                send.close()
                lost = 0
                while True:
                    try:
                        item = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    self._count_not_sent(item.kind)
                    lost += 1
                receive.close()
                if lost:
                    logger.warning("%d queued cluster messages were not published", lost)

    async def _say_bye(self) -> None:
        # The link's own connections are being cancelled with us: a fresh client (the
        # caller shields it, with a deadline) tells the others at once that we leave.
        data = self._encode(self.cluster_channel, "", Bye(), data=False)
        try:
            async with self._client() as client:
                await client.publish(self.cluster_channel, data)
        except _LINK_ERRORS:
            logger.debug("could not tell the cluster that this node leaves")

    def _link_up(self, link: _Link) -> None:
        self._link = link
        self._link_was_up = True
        self._peers.clear()  # stale after an outage; everyone answers the HELLO at once
        self._send_control(self.cluster_channel, Hello())
        self._send_control(self.cluster_channel, Heartbeat())
        report = None
        if self._outage_since is not None:
            report = OutageReport(
                started=self._outage_since,
                ended=trio.current_time(),
                not_sent=dict(self._outage_not_sent),
            )
            self._last_outage = report
            self._outage_since = None
            self._outage_not_sent.clear()
            logger.warning(
                "cluster node %s: Redis is back after %.1f s; not published meanwhile: %s",
                self.node_id,
                report.duration,
                report.not_sent or "nothing",
            )
        else:
            logger.info("cluster node %s joined via %s", self.node_id, self._safe_url())
        self._notify(Connected(outage=report))

    def _link_down(self, reason: str) -> None:
        self._link = None
        error = ClusterUnavailableError(f"lost the Redis connection: {reason}")
        for pending in self._pending.values():
            pending.fail(error)
        if self._outage_since is None:
            self._outage_since = trio.current_time()
            self._outages += 1
            self._outage_not_sent.clear()
            logger.warning(
                "cluster node %s has no Redis connection (%s): serving its own clients "
                "only, reconnecting",
                self.node_id,
                reason,
            )
            self._notify(Disconnected(reason=reason))

    def _safe_url(self) -> str:
        url = self.settings.url
        scheme, sep, rest = url.partition("://")
        if "@" in rest:
            rest = "***@" + rest.rpartition("@")[2]
        return scheme + sep + rest

    # -- the link's tasks -------------------------------------------------------------------

    async def _publisher(self, link: _Link) -> None:
        """Publish queued messages in order, a pipelined batch per round trip."""
        limit = self.settings.max_publish_batch
        while True:
            batch = [await link.receive.receive()]
            while len(batch) < limit:
                try:
                    batch.append(link.receive.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                if len(batch) == 1:
                    await link.client.publish(batch[0].channel, batch[0].data)
                else:
                    async with link.client.pipeline(transaction=False) as pipe:
                        for item in batch:
                            pipe.publish(item.channel, item.data)
            except BaseException:
                for item in batch:
                    self._count_not_sent(item.kind)
                raise

    async def _heartbeats(self, link: _Link) -> None:
        """Say we are alive, forget silent peers, and notice a stalled connection."""
        settings = self.settings
        while True:
            self._send_control(self.cluster_channel, Heartbeat())
            await trio.sleep(settings.heartbeat_interval)
            now = trio.current_time()
            if now - link.last_received > settings.node_timeout:
                raise _LinkStalledError(
                    f"nothing received from Redis for {now - link.last_received:.1f} s"
                )
            for node, heard in list(self._peers.items()):
                if now - heard > settings.node_timeout:
                    self._lose_peer(node, "timeout")

    async def _subscriber(self, link: _Link) -> None:
        """Subscribe to the channels of namespaces created while connected."""
        while True:
            changed = self._channels_changed
            assert changed is not None
            await changed.wait()
            self._channels_changed = trio.Event()
            missing = self._wanted_channels() - link.subscribed
            if missing:
                await link.pubsub.subscribe(*sorted(missing))
                link.subscribed.update(missing)

    async def _receiver(self, link: _Link) -> None:
        settings = self.settings
        prefix = settings.channel_prefix
        async for message in link.pubsub:
            link.last_received = trio.current_time()
            if message["type"] != "message":
                continue
            channel = message["channel"]
            data = message["data"]
            if not isinstance(channel, bytes) or not isinstance(data, bytes):
                self._dropped += 1
                continue
            if sender_of(data) == self.node_id:
                continue  # our own broadcast or request: done locally already
            try:
                envelope = decode_envelope(prefix, data, max_bytes=settings.max_message_bytes)
            except RemoteProtocolError as exc:
                self._dropped += 1
                logger.warning("dropped a message on %r: %s", channel, exc)
                continue
            if envelope.node == self.node_id:
                continue
            self._heard(envelope.node)
            if envelope.seq:
                self._track(envelope.node, channel, envelope.seq)
            await self._dispatch(channel, envelope)

    # -- receiving --------------------------------------------------------------------------

    def _heard(self, node: str) -> None:
        self._gone.pop(node, None)
        known = node in self._peers
        self._peers[node] = trio.current_time()
        if not known:
            logger.info("cluster node %s: node %s joined", self.node_id, node)
            self._notify(PeerJoined(node=node))

    def _found_dead(self, node: str) -> None:
        self._gone.setdefault(node, trio.current_time())
        while len(self._gone) > _MAX_GONE:
            self._gone.popitem(last=False)

    def _lose_peer(self, node: str, reason: str) -> None:
        self._found_dead(node)
        if self._peers.pop(node, None) is None:
            return
        for key in [key for key in self._last_seq if key[0] == node]:
            del self._last_seq[key]
        for pending in self._pending.values():
            pending.drop(node)
        logger.warning("cluster node %s: node %s is gone (%s)", self.node_id, node, reason)
        self._notify(PeerLost(node=node, reason=reason))

    def _track(self, node: str, channel: bytes, seq: int) -> None:
        key = (node, channel)
        last = self._last_seq.get(key)
        self._last_seq[key] = seq if last is None else max(seq, last)
        if last is not None and seq > last + 1:
            count = seq - last - 1
            self._missed[node] += count
            name = channel.decode(errors="replace")
            logger.warning(
                "cluster node %s: %d messages of node %s on %s never arrived",
                self.node_id,
                count,
                node,
                name,
            )
            self._notify(TrafficMissed(node=node, channel=name, count=count))

    async def _dispatch(self, channel: bytes, envelope: Envelope) -> None:
        body = envelope.body
        match body:
            case Heartbeat():
                pass
            case Hello():
                self._send_control(self.cluster_channel, Heartbeat())
            case Bye():
                self._lose_peer(envelope.node, "left")
            case BroadcastBody():
                adapter = self._adapters.get(envelope.namespace)
                if adapter is not None and channel == self.namespace_channel(adapter.namespace):
                    await adapter.deliver(body)
            case RequestBody():
                self._serve(envelope, body)
            case ResponseBody():
                pending = self._pending.get(body.request_id)
                if pending is not None:
                    pending.feed(envelope.node, body.part)

    async def _deliver_entry(self, entry: SharedEntry) -> int:
        """Deliver a shared log entry's broadcast to this node's sockets."""
        event = entry.broadcast()
        adapter = self._adapters.get(event.namespace) if event is not None else None
        if event is None or adapter is None or self.shared_log is None:
            await trio.lowlevel.checkpoint()
            return 0
        return await adapter.host.deliver_shared(
            event, self.shared_log.recovery_offset(entry.offset)
        )

    async def _probe_owner(self, node: str, namespace: str, pid: str) -> float | None:
        """Whether ``node`` still holds the socket of session ``pid``: None if it does
        (or this node cannot tell: no Redis, or the node failed to answer), else the
        seconds since it was found dead (0: now, or it answered that it does not).

        A node already lost to the heartbeats is dead; any other is asked, and one that
        does not answer within ``node_timeout`` is found dead now.

        Cancellation: nothing is decided.
        """
        lost = self._gone.get(node)
        if lost is not None:
            await trio.lowlevel.checkpoint()
            return trio.current_time() - lost
        op = HoldsSession(node=node, pid=pid)
        try:
            parts, _ = await self.request(
                namespace,
                op,
                within=self.settings.node_timeout,
                strict=False,
                nodes=frozenset({node}),
            )
        except ClusterUnavailableError:
            return None
        answers = [part for sender, part in parts if sender == node]
        if not answers:  # no answer in time, or lost to the heartbeats meanwhile
            logger.warning(
                "cluster node %s: node %s did not answer within %.1f s: taken for dead",
                self.node_id,
                node,
                self.settings.node_timeout,
            )
            self._found_dead(node)
            return trio.current_time() - self._gone.get(node, trio.current_time())
        part = answers[-1]
        if isinstance(part, Applied) and not part.count:
            return 0.0  # alive, and the socket is gone
        return None

    def _serve(self, envelope: Envelope, body: RequestBody) -> None:
        nursery = self._nursery
        if nursery is None:  # pragma: no cover - only while shutting down
            return
        if self._requests_running >= self.settings.max_concurrent_requests:
            self._respond(envelope, body, Failed(reason="busy"))
            return
        self._requests_running += 1
        nursery.start_soon(self._serve_request, envelope, body)

    def _respond(self, envelope: Envelope, body: RequestBody, part: Part) -> None:
        self._send_nowait(
            self.node_channel(envelope.node),
            envelope.namespace,
            ResponseBody(request_id=body.request_id, part=part),
        )

    async def _serve_request(self, envelope: Envelope, body: RequestBody) -> None:
        """Do another node's request on this node's sockets and answer it."""
        adapter = self._adapters.get(envelope.namespace)
        op = body.op

        def respond(part: Part) -> None:
            self._respond(envelope, body, part)

        try:
            if adapter is None:
                await trio.lowlevel.checkpoint()
                respond(_nothing_here(op))
            else:
                part = await adapter.serve(op, respond)
                if part is not None:
                    respond(part)
        except Exception as exc:
            logger.exception("serving request %r of node %s failed", op, envelope.node)
            respond(Failed(reason=repr(exc)))
        finally:
            self._requests_running -= 1

    # -- sending ----------------------------------------------------------------------------

    def _encode(self, channel: bytes, namespace: str, body: Body, *, data: bool) -> bytes:
        seq = 0
        if data:
            seq = self._seqs.get(channel, 0) + 1
            self._seqs[channel] = seq
        envelope = Envelope(node=self.node_id, seq=seq, namespace=namespace, body=body)
        return encode_envelope(self.settings.channel_prefix, envelope)

    def _count_not_sent(self, kind: str | None) -> None:
        if kind is None:
            return
        self._not_sent[kind] += 1
        if self._outage_since is not None:
            self._outage_not_sent[kind] += 1

    def _send_control(self, channel: bytes, body: Body) -> None:
        link = self._link
        if link is None:
            return
        data = self._encode(channel, "", body, data=False)
        with contextlib.suppress(*_QUEUE_ERRORS):
            link.send.send_nowait(_Outgoing(channel=channel, data=data, kind=None))

    def _outgoing(self, channel: bytes, namespace: str, body: Body) -> _Outgoing:
        kind = type(body).__name__.removesuffix("Body").lower()
        return _Outgoing(
            channel=channel, data=self._encode(channel, namespace, body, data=True), kind=kind
        )

    def _send_nowait(self, channel: bytes, namespace: str, body: Body) -> bool:
        item = self._outgoing(channel, namespace, body)
        link = self._link
        if link is None:
            self._count_not_sent(item.kind)
            return False
        try:
            link.send.send_nowait(item)
        except _QUEUE_ERRORS:
            self._count_not_sent(item.kind)
            return False
        return True

    async def _send(self, channel: bytes, namespace: str, body: Body) -> bool:
        item = self._outgoing(channel, namespace, body)
        link = self._link
        if link is None:
            await trio.lowlevel.checkpoint()
            self._count_not_sent(item.kind)
            return False
        try:
            # Without a schedule point while there is room: a burst of broadcasts from one
            # task then goes out as one pipelined batch, not one round trip each.
            link.send.send_nowait(item)
        except trio.WouldBlock:
            try:
                await link.send.send(item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._count_not_sent(item.kind)
                return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await trio.lowlevel.checkpoint()
            self._count_not_sent(item.kind)
            return False
        return True

    async def publish_broadcast(
        self, namespace: str, frames: tuple[OutFrame, ...], opts: BroadcastOptions
    ) -> bool:
        """Send a broadcast to the other nodes; False if it could not be queued (no Redis).

        Waits while the publish queue is full. Cancellation: it may have been queued.
        """
        body = BroadcastBody(opts=opts, frames=[_eio(frame) for frame in frames])
        return await self._send(self.namespace_channel(namespace), namespace, body)

    async def notify_others(self, namespace: str, op: Operation) -> None:
        """Send a request nobody answers (a server-side emit).

        Cancellation: it may have been queued.

        Raises:
            ClusterUnavailableError: No Redis connection.
        """
        body = RequestBody(request_id=next(self._request_ids), op=op)
        if not await self._send(self.cluster_channel, namespace, body):
            raise ClusterUnavailableError("no Redis connection: the other nodes were not told")

    async def request(
        self,
        namespace: str,
        op: Operation,
        *,
        within: float,
        on_part: Callable[[str, Part], None] | None = None,
        strict: bool = True,
        nodes: frozenset[str] | None = None,
    ) -> tuple[list[tuple[str, Part]], frozenset[str]]:
        """Ask every other node to do ``op`` and collect their answers.

        Returns each answer with its node, and the nodes that did not finish in time.
        Waits up to ``within`` seconds for the nodes this node hears from (or for
        ``nodes``, heard from or not); a node lost meanwhile is not waited for.

        Cancellation: late answers are ignored.

        Raises:
            ClusterUnavailableError: No Redis connection (or it was lost meanwhile).
            ClusterTimeoutError: ``strict`` and some nodes did not answer in time.
        """
        if self._link is None:
            await trio.lowlevel.checkpoint()
            self._count_not_sent("request")
            raise ClusterUnavailableError("no Redis connection: the other nodes were not asked")
        request_id = next(self._request_ids)
        pending = _PendingRequest(
            waiting=set(self._peers if nodes is None else nodes), on_part=on_part
        )
        self._pending[request_id] = pending
        try:
            body = RequestBody(request_id=request_id, op=op)
            if not await self._send(self.cluster_channel, namespace, body):
                raise ClusterUnavailableError("no Redis connection: the other nodes were not asked")
            if pending.waiting:
                with trio.move_on_after(within):
                    await pending.done.wait()
        finally:
            del self._pending[request_id]
        if pending.failure is not None and strict:
            raise pending.failure
        missing = frozenset(pending.waiting)
        if missing and strict:
            raise ClusterTimeoutError(
                f"{len(missing)} nodes did not answer within {within} s", missing=missing
            )
        return pending.parts, missing


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    found: list[Exception] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def _nothing_here(op: Operation) -> Part:
    """The answer of a node that does not have the namespace."""
    match op:
        case FetchSockets():
            return SocketsFound(sockets=())
        case AddSockets() | DelSockets() | DisconnectSockets():
            return Applied(count=0)
        case ServerSideEmit():
            return ServerAnswer(args=None)
        case AckBroadcast():
            return AckFinished()
        case HoldsSession():
            return Applied(count=0)


# --------------------------------------------------------------------------- the adapter


@attrs.define(eq=False)
class RedisAdapter(Adapter):
    """One namespace's adapter on a cluster node: local rooms plus the other nodes.

    Local membership and fan-out are the ``local`` adapter's (room actors); this adapter
    adds publishing to, and delivering from, the other nodes. ``broadcast`` returns how
    many sockets *of this node* were reached.
    """

    namespace: str
    cluster: RedisCluster
    local: Adapter

    def bind(self, host: AdapterHost) -> None:
        super().bind(host)
        self.local.bind(host)

    # -- local membership: the local adapter's --------------------------------------------

    def add_socket(self, socket: LocalSocket) -> None:
        self.local.add_socket(socket)

    async def add_all(self, sid: str, rooms: Iterable[str]) -> None:
        await self.local.add_all(sid, rooms)

    async def delete(self, sid: str, room: str) -> None:
        await self.local.delete(sid, room)

    async def delete_all(self, sid: str) -> None:
        await self.local.delete_all(sid)

    def sockets(self, opts: BroadcastOptions) -> set[str]:
        return self.local.sockets(opts)

    def socket_rooms(self, sid: str) -> frozenset[str]:
        return self.local.socket_rooms(sid)

    def rooms(self) -> frozenset[str]:
        return self.local.rooms()

    async def aclose(self) -> None:
        await self.local.aclose()

    # -- broadcasting -----------------------------------------------------------------------

    async def broadcast(
        self,
        frames: tuple[OutFrame, ...],
        opts: BroadcastOptions,
        *,
        on_member: Callable[[str], None] | None = None,
    ) -> int:
        delivered = await self.local.broadcast(frames, opts, on_member=on_member)
        if not opts.local:
            await self.cluster.publish_broadcast(self.namespace, frames, opts)
        return delivered

    async def deliver(self, body: BroadcastBody) -> None:
        """Deliver another node's broadcast to the matching sockets of this node.

        Cancellation: some sockets may have it queued.
        """
        frames = tuple(SharedFrame(eio=frame) for frame in body.frames)
        await self.local.broadcast(frames, attrs.evolve(body.opts, local=True))

    # -- cluster-wide operations ------------------------------------------------------------

    @property
    def node_count(self) -> int:
        return 1 + len(self.cluster.peers)

    @property
    def history_is_local(self) -> bool:
        return False  # other nodes' broadcasts arrive as frames, unrecorded here

    @property
    def shared_log(self) -> SharedLog | None:
        return self.cluster.shared_log

    async def _ask(self, op: Operation) -> list[tuple[str, Part]]:
        parts, _ = await self.cluster.request(
            self.namespace, op, within=self.cluster.settings.request_timeout
        )
        for node, part in parts:
            if isinstance(part, Failed):
                raise ClusterError(f"node {node} failed: {part.reason}")
        return parts

    async def fetch_sockets(self, opts: BroadcastOptions) -> list[SocketInfo]:
        found = self.local_socket_infos(opts)
        if opts.local:
            await trio.lowlevel.checkpoint()
            return found
        for _, part in await self._ask(FetchSockets(opts=opts)):
            if isinstance(part, SocketsFound):
                found.extend(part.sockets)
        return found

    async def add_sockets(self, opts: BroadcastOptions, rooms: frozenset[str]) -> None:
        await self.local.add_sockets(opts, rooms)
        if not opts.local:
            await self._ask(AddSockets(opts=opts, rooms=rooms))

    async def del_sockets(self, opts: BroadcastOptions, rooms: frozenset[str]) -> None:
        await self.local.del_sockets(opts, rooms)
        if not opts.local:
            await self._ask(DelSockets(opts=opts, rooms=rooms))

    async def disconnect_sockets(self, opts: BroadcastOptions, *, close: bool) -> None:
        await self.local.disconnect_sockets(opts, close=close)
        if not opts.local:
            await self._ask(DisconnectSockets(opts=opts, close=close))

    async def broadcast_with_ack(
        self,
        event: str,
        args: tuple[JsonValue, ...],
        opts: BroadcastOptions,
        *,
        within: float,
    ) -> BroadcastAckResult:
        sent: set[str] = set()
        answers: dict[str, tuple[JsonValue, ...]] = {}

        def on_part(node: str, part: Part) -> None:
            if isinstance(part, AckRecipients):
                sent.update(part.sids)
            elif isinstance(part, AckAnswerPart):
                answers[part.sid] = part.args

        async def remote() -> None:
            op = AckBroadcast(opts=opts, event=event, args=args, within=within)
            try:
                await self.cluster.request(
                    self.namespace, op, within=within, on_part=on_part, strict=False
                )
            except ClusterUnavailableError as exc:
                logger.warning("broadcast with ack reached this node only: %s", exc)

        async with trio.open_nursery() as nursery:
            if not opts.local:
                nursery.start_soon(remote)
            await self.host.call_local(
                event,
                args,
                opts,
                within=within,
                on_sent=sent.update,
                on_answer=answers.__setitem__,
            )
        answered = {sid: answer for sid, answer in answers.items() if sid in sent}
        return BroadcastAckResult(answers=answered, missing=frozenset(sent - answered.keys()))

    async def server_side_emit(self, event: str, args: tuple[JsonValue, ...]) -> None:
        await self.cluster.notify_others(
            self.namespace, ServerSideEmit(event=event, args=args, want_answer=False)
        )

    async def server_side_call(
        self, event: str, args: tuple[JsonValue, ...], *, within: float
    ) -> ServerSideResult:
        op = ServerSideEmit(event=event, args=args, want_answer=True)
        parts, missing = await self.cluster.request(self.namespace, op, within=within, strict=False)
        answers: dict[str, tuple[JsonValue, ...]] = {}
        silent = set(missing)
        for node, part in parts:
            if isinstance(part, ServerAnswer) and part.args is not None:
                answers[node] = part.args
            else:
                silent.add(node)
        return ServerSideResult(answers=answers, missing=frozenset(silent - answers.keys()))

    # -- serving the other nodes' requests --------------------------------------------------

    async def serve(self, op: Operation, respond: Callable[[Part], None]) -> Part | None:
        """Do another node's request on this node's sockets; the final answer (None when
        there is nothing to answer). ``respond`` sends intermediate parts.

        Cancellation: the operation may be partly done; nothing more is answered.
        """
        match op:
            case FetchSockets():
                await trio.lowlevel.checkpoint()
                return SocketsFound(sockets=self.local_socket_infos(op.opts))
            case AddSockets():
                count = len(self.local.sockets(op.opts))
                await self.local.add_sockets(op.opts, op.rooms)
                return Applied(count=count)
            case DelSockets():
                count = len(self.local.sockets(op.opts))
                await self.local.del_sockets(op.opts, op.rooms)
                return Applied(count=count)
            case DisconnectSockets():
                count = len(self.local.sockets(op.opts))
                await self.local.disconnect_sockets(op.opts, close=op.close)
                return Applied(count=count)
            case ServerSideEmit():
                answer = await self.host.handle_server_side(op.event, op.args)
                return ServerAnswer(args=answer) if op.want_answer else None
            case AckBroadcast():
                await self.host.call_local(
                    op.event,
                    op.args,
                    op.opts,
                    within=op.within,
                    on_sent=lambda sids: respond(AckRecipients(sids=sids)),
                    on_answer=lambda sid, args: respond(AckAnswerPart(sid=sid, args=args)),
                )
                return AckFinished()
            case HoldsSession():
                await trio.lowlevel.checkpoint()
                if op.node != self.cluster.node_id:
                    return None  # asked of another node
                log = self.cluster.shared_log
                return Applied(count=int(log is not None and log.holds(op.pid)))
