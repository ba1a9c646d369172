"""A connection's bounded outbox: many producers, one writer that drains it in batches."""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs
import trio

from roomcast.engine.transport.frames import OutFrame, SharedFrame

__all__ = ["Offer", "Outbox"]


class Offer(enum.Enum):
    """What ``Outbox.offer`` did with a send."""

    QUEUED = "queued"
    DROPPED = "dropped"
    FULL = "full"


@attrs.define(eq=False)
class Outbox:
    """Frames waiting for one connection's writer.

    Unlike a memory channel, the writer takes everything queued at once (so it can write
    it with one ``send_all``), and control frames (PING, CLOSE) skip the bound so a full
    outbox cannot starve the heartbeat. Only the connection's writer receives.

    ``direct`` (set by a WebSocket connection's writer while it runs) writes frames
    straight to the socket without blocking: ``offer`` uses it when nothing is queued
    and the writer is parked, so most deliveries cost one system call and no task
    switch. It returns None when it could not try (the frames are then queued), else
    the bytes it could not write yet, which go first in the queue.

    The writer is either a task (``receive_batch``, parked while nothing is queued) or,
    for a connection the reactor serves, ``flush``: a synchronous call, made whenever a
    parked writer task would be woken, that writes what it can without blocking (and
    leaves the rest to the reactor, which calls it again once the socket is writable).
    """

    max_frames: int
    volatile_backlog: int = 32
    # A list, not a deque: an idle connection's empty deque costs 760 bytes, a list 56.
    _frames: list[OutFrame] = attrs.field(factory=list, init=False)
    _lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _held: bool = attrs.field(default=False, init=False)
    direct: Callable[[tuple[OutFrame, ...]], bytes | None] | None = attrs.field(
        default=None, init=False
    )
    flush: Callable[[], None] | None = attrs.field(default=None, init=False)

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def send_nowait(self, frame: OutFrame) -> None:
        """Queue a frame, or raise ``trio.WouldBlock`` if the outbox is full.

        Raises:
            trio.ClosedResourceError: The outbox was closed.
            trio.WouldBlock: ``max_frames`` frames are already queued.
        """
        if self._closed:
            raise trio.ClosedResourceError("outbox is closed")
        if len(self._frames) >= self.max_frames:
            raise trio.WouldBlock
        self._frames.append(frame)
        self._wake()

    def _wake(self) -> None:
        flush = self.flush
        if flush is not None:
            flush()
        elif self._lot:
            self._lot.unpark()

    @property
    def held(self) -> bool:
        """Whether direct writes are off (``hold``)."""
        return self._held

    @property
    def writer_idle(self) -> bool:
        """Whether a direct write cannot overtake anything: nothing queued, not held,
        and the writer waiting for frames (not for the socket)."""
        return (
            (self.flush is not None or bool(self._lot))
            and not self._frames
            and not self._held
            and not self._closed
        )

    def takes_volatile(self) -> bool:
        """Whether a volatile frame should be queued now (fewer than ``volatile_backlog`` wait)."""
        return not self._closed and len(self._frames) < self.volatile_backlog

    def offer(self, frames: tuple[OutFrame, ...], *, volatile: bool = False) -> Offer:
        """Queue ``frames`` for one recipient without waiting; say what happened.

        ``DROPPED``: a volatile send to a backed-up outbox, or a closed one (the recipient
        is leaving). ``FULL``: a non-volatile send that does not fit; by the slow-consumer
        policy the caller evicts the recipient (frames queued before the bound stay).
        """
        if volatile and not self.takes_volatile():
            return Offer.DROPPED
        direct = self.direct
        if direct is not None and self.writer_idle:
            # The writer is idle with nothing to do: nothing queued can be overtaken.
            rest = direct(frames)
            if rest is not None:
                if rest:
                    self._frames.append(SharedFrame.wire_only(rest))
                    self._wake()
                return Offer.QUEUED
        try:
            for frame in frames:
                self.send_nowait(frame)
        except trio.WouldBlock:
            return Offer.FULL
        except trio.ClosedResourceError:
            return Offer.DROPPED
        return Offer.QUEUED

    def hold(self, held: bool) -> None:
        """Turn direct writes off (``held``) or back on.

        While held, ``offer`` queues frames and wakes the writer, which writes them when
        it next runs, together with whatever else is queued by then: frames one batch of
        work produces go out in one write instead of one each. Nothing waits on the
        hold itself, so it cannot delay a frame past the holder's next checkpoint. (A
        ``flush`` writer is called when the hold ends.)
        """
        was_held, self._held = self._held, held
        if was_held and not held and self._frames and self.flush is not None:
            self.flush()

    def send_control(self, frame: OutFrame) -> None:
        """Queue a control frame regardless of the bound (ignored once closed)."""
        if self._closed:
            return
        self._frames.append(frame)
        self._wake()

    async def wait(self) -> None:
        """Wait until a frame is queued, ``kick`` is called, or the outbox is closed.

        Cancellation: nothing changes.
        """
        if self._frames or self._closed:
            await trio.lowlevel.checkpoint()
            return
        await self._lot.park()

    def take(self, limit: int) -> list[OutFrame]:
        """Take up to ``limit`` queued frames, oldest first (maybe none)."""
        frames = self._frames
        if len(frames) <= limit:
            self._frames = []
            return frames
        batch = frames[:limit]
        del frames[:limit]
        return batch

    async def receive_batch(self, limit: int) -> list[OutFrame]:
        """Wait, then take up to ``limit`` frames; an empty list means a ``kick``.

        Cancellation: a cancelled wait takes nothing from the outbox.

        Raises:
            trio.EndOfChannel: The outbox is closed and empty.
        """
        await self.wait()
        if not self._frames and self._closed:
            raise trio.EndOfChannel
        return self.take(limit)

    def kick(self) -> None:
        """Wake the writer with nothing queued (the transport has its own bytes to write)."""
        if self.flush is not None:
            self.flush()
        else:
            self._lot.unpark_all()

    def close(self) -> None:
        """Refuse further frames; the writer still drains what is queued, then ends."""
        self._closed = True
        self.kick()
