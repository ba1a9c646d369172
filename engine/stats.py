"""What a server counts on its hot paths, in plain ints and floats.

Always on and kept cheap: an attribute increment per message on one object the server
shares with all its connections, nothing per connection. ``roomcast.engine.metrics``
reads these at scrape time (so prometheus-client stays an optional extra).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

import attrs

__all__ = ["LATENCY_BUCKETS", "LatencyHistogram", "ServerStats", "Traffic", "UNCOUNTED"]

LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
"""Upper bounds (seconds) of the latency histograms' buckets: 100 µs to 2.5 s."""


@attrs.define(eq=False)
class Traffic:
    """Engine.IO traffic of every connection of one server, since it was built.

    Packets are Engine.IO packets (PINGs, PONGs and each binary attachment included).
    Bytes are what the transport carries for them: WebSocket frames (headers included)
    and polling request and response bodies; not HTTP headers, not TLS records.

    Attributes:
        packets_in: Packets received.
        bytes_in: Bytes received.
        packets_out: Packets sent.
        bytes_out: Bytes sent.
    """

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0


UNCOUNTED: Final = Traffic()
"""Where a transport not yet attached to a server's connection counts (never read)."""


@attrs.define(eq=False)
class LatencyHistogram:
    """A fixed-bucket histogram of durations in seconds: one bisect and two additions per
    observation (no lock: only Trio's thread observes, or one log writer thread)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = attrs.field(init=False)
    total: float = 0.0

    def __attrs_post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs, cumulative, ending with ``+Inf`` (Prometheus buckets)."""
        buckets: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets


@attrs.define(eq=False)
class ServerStats:
    """A server's counters (see ``roomcast.engine.metrics`` for how they are exposed).

    Attributes:
        traffic: Packets and bytes, in and out.
        disconnects: Closed Engine.IO connections by their reason ("slow consumer",
            "rate limit exceeded", "ping timeout", "transport close", ...).
        broadcast: Seconds from a broadcast ``emit`` until its frames were handed to the
            outbox of its last recipient on this node (only counted with metrics on).
    """

    traffic: Traffic = attrs.field(factory=Traffic)
    disconnects: dict[str, int] = attrs.field(factory=dict)
    broadcast: LatencyHistogram = attrs.field(factory=LatencyHistogram)

    def closed(self, reason: str) -> None:
        """Count one closed connection."""
        self.disconnects[reason] = self.disconnects.get(reason, 0) + 1
