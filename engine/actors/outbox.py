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

    A recorded broadcast is addressed when it is made and released later, once the log
    has it (``engine/broadcast.py``). ``address`` tells the outbox of each recipient its
    number, and its release is offered with ``release=`` that number. A send made in
    between (an ack, a direct emit, an unrecorded broadcast) waits behind the broadcasts
    addressed before it, so the client gets what the server sent it in the order it was
    sent; a ``close`` in between takes effect once they are released.

    The release of a durable batch offers many sends at once with a ``gather`` list: an
    idle outbox then keeps what it is offered and joins the list, and the release calls
    ``write_gathered`` on each outbox of it at its end, so a connection gets one write
    for all its frames of the batch instead of one per send.

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
    _gathered: bool = attrs.field(default=False, init=False)
    _addressed: int = attrs.field(default=0, init=False)
    """The number of the last recorded broadcast addressed to this outbox."""
    _released: int = attrs.field(default=0, init=False)
    """The number of the last one released to it."""
    _waiting: list[tuple[int, tuple[OutFrame, ...]]] | None = attrs.field(default=None, init=False)
    """Sends that wait for the release of a broadcast addressed before them: the
    number of the last such broadcast, and the frames."""
    _waiting_frames: int = attrs.field(default=0, init=False)
    _close_at: int | None = attrs.field(default=None, init=False)
    """``close`` was called while broadcasts addressed before it were not released:
    the outbox closes once the last of them (this number) is."""

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def closed(self) -> bool:
        """Whether the outbox is closed (``close`` was called, and is not waiting for
        broadcasts addressed before it)."""
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

    def offer(
        self,
        frames: tuple[OutFrame, ...],
        *,
        volatile: bool = False,
        gather: list[Outbox] | None = None,
        release: int = 0,
    ) -> Offer:
        """Queue ``frames`` for one recipient without waiting; say what happened.

        ``DROPPED``: a volatile send to a backed-up outbox, or a closed one (the recipient
        is leaving). ``FULL``: a non-volatile send that does not fit; by the slow-consumer
        policy the caller evicts the recipient (frames queued before the bound stay).

        ``release``: these are the frames of the recorded broadcast with that number
        (``address``); sends that waited for it follow them. A send made while a
        broadcast addressed earlier is not released waits for it (``QUEUED``).

        With ``gather``, an outbox that would write at once keeps the frames instead and
        joins ``gather`` (once), and what it is offered later in the same pass joins
        them: the caller calls ``write_gathered`` on it when the pass ends.
        """
        if volatile and not self.takes_volatile():
            return Offer.DROPPED
        if release:
            close_at = self._close_at
            if close_at is not None and release > close_at:
                return Offer.DROPPED  # made after the close (``address`` ignored it)
            offered = self._queue(frames, gather)
            self._released = release
            if self._waiting is not None or close_at is not None:
                self._catch_up(gather)
            return offered
        if self._addressed > self._released:
            return self._wait_for_release(frames)
        return self._queue(frames, gather)

    def address(self, number: int) -> None:
        """The recorded broadcast ``number`` is addressed to this outbox: sends made from
        now on wait until it is released (``offer(release=number)``) or ``skip``-ped.
        Ignored once ``close`` was called."""
        if number > self._addressed and self._close_at is None and not self._closed:
            self._addressed = number

    def skip(self, number: int) -> None:
        """The recorded broadcast ``number`` addressed to this outbox will not be
        released (its records could not be written): what waited for it goes on."""
        self._released = number
        if self._waiting is not None or self._close_at is not None:
            self._catch_up(None)

    def _wait_for_release(self, frames: tuple[OutFrame, ...]) -> Offer:
        if self._closed or self._close_at is not None:
            return Offer.DROPPED
        if len(self._frames) + self._waiting_frames + len(frames) > self.max_frames:
            return Offer.FULL
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = []
        waiting.append((self._addressed, frames))
        self._waiting_frames += len(frames)
        return Offer.QUEUED

    def _catch_up(self, gather: list[Outbox] | None) -> None:
        """Queue the sends that waited for broadcasts released by now, and close if
        ``close`` waited for them."""
        released, waiting = self._released, self._waiting
        if waiting is not None:
            ready = 0
            for number, frames in waiting:
                if number > released:
                    break
                self._queue(frames, gather)  # (counted against the bound when offered)
                self._waiting_frames -= len(frames)
                ready += 1
            del waiting[:ready]
            if not waiting:
                self._waiting = None
        close_at = self._close_at
        if close_at is not None and released >= close_at:
            self._close_at = None
            self.close()

    def _queue(self, frames: tuple[OutFrame, ...], gather: list[Outbox] | None) -> Offer:
        if self._gathered:  # (only within the pass that gathered it)
            if self._closed:
                return Offer.DROPPED
            if len(self._frames) + len(frames) > self.max_frames:
                return Offer.FULL
            self._frames.extend(frames)
            return Offer.QUEUED
        direct = self.direct
        if direct is not None and self.writer_idle:
            if gather is not None:
                self._gathered = True
                self._frames.extend(frames)
                gather.append(self)
                return Offer.QUEUED
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

    def write_gathered(self) -> None:
        """End a gathering pass (see ``offer``): write what it kept at once, in one
        system call, or leave it to the writer if that cannot be done now."""
        self._gathered = False
        frames = self._frames
        if not frames:  # (written already: an eviction's close flushed it)
            return
        direct = self.direct
        if direct is not None and not self._closed:
            self._frames = []
            rest = direct(tuple(frames))
            if rest is None:  # could not try: the writer sends them
                self._frames = frames
            elif rest:
                self._frames.append(SharedFrame.wire_only(rest))
            else:
                return
        self._wake()

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
        """Refuse further frames; the writer still drains what is queued, then ends.

        While broadcasts addressed before the close are not released, it waits for them
        (and what waited for them): the outbox closes when the last is released or
        skipped; until then it takes their releases and nothing else.
        """
        if self._closed:
            return
        if self._addressed > self._released:
            self._close_at = self._addressed
            return
        self._closed = True
        self.kick()
