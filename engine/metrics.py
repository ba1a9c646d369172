"""Prometheus metrics of one server, served at ``/metrics`` (``Config(metrics=True)``).

Needs the ``metrics`` extra (prometheus-client). Each server has its own
``CollectorRegistry`` (never the global one), so tests and several servers in one process
do not collide. Nothing is counted for Prometheus on the hot path: one collector reads, at
scrape time, the server's state (sockets, rooms, the cluster's status, the event log's
statistics) and the plain counters of ``roomcast.engine.stats``. What each metric means:
docs/operations.md, "Metrics".
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, ClassVar, Final

import attrs
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from roomcast.engine.log import LogIO
from roomcast.engine.stats import LatencyHistogram
from roomcast.protocol import DisconnectReason

if TYPE_CHECKING:
    from roomcast.engine.adapters.redis import RedisCluster
    from roomcast.engine.server import Server

__all__ = ["CONTENT_TYPE", "Metrics", "TimedLogIO"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of what ``generate_latest`` writes: the classic text format (what
prometheus-client's own HTTP server answers by default)."""


@attrs.define(eq=False)
class TimedLogIO(LogIO):
    """The event log's system calls, timed: each ``write`` (one batch of records, the
    group commit) and each ``fsync``. Called from the log writer's worker thread."""

    write_seconds: LatencyHistogram = attrs.field(factory=LatencyHistogram)
    fsync_seconds: LatencyHistogram = attrs.field(factory=LatencyHistogram)

    def write(self, fd: int, data: memoryview) -> int:
        start = time.perf_counter()
        try:
            return super().write(fd, data)
        finally:
            self.write_seconds.observe(time.perf_counter() - start)

    def fsync(self, fd: int) -> None:
        start = time.perf_counter()
        try:
            super().fsync(fd)
        finally:
            self.fsync_seconds.observe(time.perf_counter() - start)


@attrs.define(eq=False)
class Metrics:
    """The metrics of ``server``: its registry and what the collector reads."""

    server: Server
    log_io: TimedLogIO = attrs.field(factory=TimedLogIO)
    registry: CollectorRegistry = attrs.field(init=False)
    content_type: ClassVar[str] = CONTENT_TYPE
    """The content type of ``render``'s page."""

    def __attrs_post_init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def render(self) -> bytes:
        """The text exposition of every metric, now."""
        return generate_latest(self.registry)


def _cluster_of(server: Server) -> RedisCluster | None:
    """The Redis cluster the server is a node of, if any (without importing the Redis
    adapter, which needs the redis extra: no Redis adapter exists unless it is imported)."""
    redis = sys.modules.get("roomcast.engine.adapters.redis")
    if redis is None:
        return None
    for ns in server.namespaces.values():
        if isinstance(ns.adapter, redis.RedisAdapter):
            cluster: RedisCluster = ns.adapter.cluster
            return cluster
    return None


@attrs.frozen
class _Families:
    """Makes metric families; in a cluster every sample gets a ``node`` label (the node's
    id, new on every start)."""

    node: tuple[str, ...]
    names: tuple[str, ...]

    def gauge(self, name: str, doc: str, *labels: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=[*labels, *self.names])

    def counter(self, name: str, doc: str, *labels: str) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=[*labels, *self.names])

    def one(self, family: GaugeMetricFamily | CounterMetricFamily, value: float) -> Metric:
        family.add_metric(list(self.node), value)
        return family

    def histogram(self, name: str, doc: str, data: LatencyHistogram) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=list(self.names))
        family.add_metric(list(self.node), data.cumulative(), sum_value=data.total)
        return family


@attrs.define(eq=False)
class _Collector:
    """Builds every family at scrape time."""

    metrics: Metrics

    def collect(self) -> Iterable[Metric]:
        server = self.metrics.server
        cluster = _cluster_of(server)
        f = (
            _Families(node=(), names=())
            if cluster is None
            else _Families(node=(cluster.node_id,), names=("node",))
        )
        node = f.node
        sockets = f.gauge(
            "roomcast_connected_sockets", "Sockets connected, by namespace.", "namespace"
        )
        rooms = f.gauge(
            "roomcast_rooms", "Rooms with at least one member, by namespace.", "namespace"
        )
        for name, ns in sorted(server.namespaces.items()):
            sockets.add_metric([name, *node], len(ns.sockets))
            rooms.add_metric([name, *node], len(ns.adapter.rooms()))
        yield sockets
        yield rooms
        yield f.one(
            f.gauge("roomcast_connections", "Engine.IO connections open."),
            len(server.connections),
        )
        stats = server.stats
        traffic = stats.traffic
        wire = "(WebSocket frames, polling bodies)"
        for name, doc, value in (
            ("roomcast_packets_received", "Engine.IO packets received.", traffic.packets_in),
            ("roomcast_bytes_received", f"Bytes received {wire}.", traffic.bytes_in),
            ("roomcast_packets_sent", "Engine.IO packets sent.", traffic.packets_out),
            ("roomcast_bytes_sent", f"Bytes sent {wire}.", traffic.bytes_out),
        ):
            yield f.one(f.counter(name, doc), value)
        disconnects = f.counter(
            "roomcast_disconnects", "Engine.IO connections closed, by reason.", "reason"
        )
        for reason, count in sorted(stats.disconnects.items()):
            disconnects.add_metric([reason, *node], count)
        yield disconnects
        yield f.one(
            f.counter(
                "roomcast_slow_consumer_evictions",
                "Connections closed because their outbox was full.",
            ),
            stats.disconnects.get(DisconnectReason.SLOW_CONSUMER, 0),
        )
        yield f.one(
            f.counter(
                "roomcast_rate_limit_disconnects",
                "Connections closed for sending over max_events_per_second.",
            ),
            stats.disconnects.get(DisconnectReason.RATE_LIMIT_EXCEEDED, 0),
        )
        yield f.histogram(
            "roomcast_broadcast_seconds",
            "Seconds from a broadcast emit until its frames were handed to the outbox of its"
            " last recipient on this node (logging and fan-out included).",
            stats.broadcast,
        )
        log_io = self.metrics.log_io
        yield f.histogram(
            "roomcast_log_append_seconds",
            "Seconds of one append to the event log's segment file (the write of a batch"
            " of records: the group commit).",
            log_io.write_seconds,
        )
        yield f.histogram(
            "roomcast_log_fsync_seconds",
            "Seconds of one fsync of the event log's segment file.",
            log_io.fsync_seconds,
        )
        log = server.log
        if log is not None:
            statistics = log.statistics()
            yield f.one(
                f.counter("roomcast_log_records", "Records written to the event log."),
                statistics.records_written,
            )
            yield f.one(
                f.gauge("roomcast_log_queued", "Appends waiting for the event log's writer."),
                statistics.queued,
            )
        if cluster is not None:
            yield from _cluster_families(cluster, f)


def _cluster_families(cluster: RedisCluster, f: _Families) -> Iterator[Metric]:
    status = cluster.status()
    node = f.node
    yield f.one(
        f.gauge("roomcast_redis_connected", "1 when this node has a working Redis connection."),
        1 if status.connected else 0,
    )
    yield f.one(
        f.gauge("roomcast_redis_peers", "Other nodes this node hears from."), len(status.peers)
    )
    yield f.one(
        f.counter("roomcast_redis_outages", "Redis outages since the start."), status.outages
    )
    not_sent = f.counter(
        "roomcast_redis_messages_not_sent",
        "Messages to other nodes never published, by kind.",
        "kind",
    )
    for kind, count in sorted(status.not_sent.items()):
        not_sent.add_metric([kind, *node], count)
    yield not_sent
    missed = f.counter(
        "roomcast_redis_messages_missed",
        "Messages of other nodes that never arrived, by sending node.",
        "peer",
    )
    for peer, count in sorted(status.missed.items()):
        missed.add_metric([peer, *node], count)
    yield missed
    yield f.one(
        f.counter("roomcast_redis_messages_dropped", "Messages received and discarded."),
        status.dropped,
    )
    yield f.one(
        f.gauge("roomcast_redis_log_delivered", "The last shared-log offset this node delivered."),
        status.log_delivered,
    )
