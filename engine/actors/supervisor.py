"""The supervisor: heartbeat and connect deadlines for every connection, room restarts."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol

import attrs
import trio

from roomcast.engine.actors.room import RoomActor
from roomcast.engine.actors.wakeup import WakeupTimer
from roomcast.engine.errors import EngineError
from roomcast.engine.transport.reactor import Reactor

__all__ = ["DeadlineScheduler", "Periodic", "RoomCrashLoopError", "Supervisor", "Timed"]

logger = logging.getLogger(__name__)


class Timed(Protocol):
    """Something with a deadline: a connection's next heartbeat or connect check."""

    timer_token: int

    def on_deadline(self, now: float) -> None:
        """Called once the deadline passed; the object reschedules itself if it must."""


class RoomCrashLoopError(EngineError):
    """A room actor crashed more often than the restart intensity allows."""


def _live(entry: tuple[float, int, weakref.ref[Timed]]) -> bool:
    target = entry[2]()
    return target is not None and target.timer_token == entry[1]


@attrs.define(eq=False)
class DeadlineScheduler:
    """One task that wakes objects at their deadlines, for any number of objects.

    A heap of ``(deadline, token, object)``; rescheduling pushes a new entry with a new
    token, and stale entries are skipped when they surface (lazy deletion). One sleeping
    task serves 100,000 connections, instead of 100,000 sleeping tasks.
    """

    # Targets are held weakly: a connection that closed (and cancelled its entry) is freed
    # at once instead of living on in the heap until its old deadline.
    _heap: list[tuple[float, int, weakref.ref[Timed]]] = attrs.field(factory=list)
    _stale: int = 0  # heap entries whose target was rescheduled or cancelled since
    _tokens: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _sleep: trio.CancelScope | None = None
    _timer: WakeupTimer | None = None  # (while running, where there is one)
    _after: list[Callable[[], None]] = attrs.field(factory=list)

    def schedule(self, target: Timed, deadline: float) -> None:
        """Call ``target.on_deadline`` at ``deadline``, replacing any earlier schedule."""
        if target.timer_token:
            self._stale += 1  # its previous entry is now stale
        if deadline == math.inf:
            target.timer_token = 0  # nothing to wake: no entry
            return
        token = next(self._tokens)
        target.timer_token = token
        heapq.heappush(self._heap, (deadline, token, weakref.ref(target)))
        if self._sleep is not None and deadline < self._sleep.deadline:
            self._sleep.deadline = deadline
            if self._timer is not None:
                self._timer.arm(deadline - trio.current_time())

    def call_after_pass(self, job: Callable[[], None]) -> None:
        """Call ``job`` (from a target's ``on_deadline``) once every deadline due now
        has been handled: what the peers must see goes out for all of them first, the
        bookkeeping after."""
        self._after.append(job)

    def cancel(self, target: Timed) -> None:
        """Forget ``target``'s schedule."""
        if target.timer_token:
            self._stale += 1
        target.timer_token = 0

    def __len__(self) -> int:
        return len(self._heap)

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Wake targets at their deadlines, forever.

        Cancellation: targets not yet due are not called.
        """
        self._timer = WakeupTimer.open()
        try:
            task_status.started()
            await self._run()
        finally:
            if self._timer is not None:
                self._timer.close()
                self._timer = None

    async def _run(self) -> NoReturn:
        heap = self._heap
        clock = trio.current_time
        timer = self._timer
        while True:
            now = clock()
            # Deadlines that pass while earlier ones are handled are handled in the same
            # step: after a burst (a hundred silent clients dropped together) the next
            # one would otherwise wait for a pass of the scheduler, behind every task
            # the burst woke (the dropped connections' cleanup among them).
            while heap and (heap[0][0] <= now or heap[0][0] <= (now := clock())):
                _, token, ref = heapq.heappop(heap)
                target = ref()
                if target is None or target.timer_token != token:
                    self._stale -= 1
                else:
                    target.timer_token = 0
                    try:
                        target.on_deadline(now)
                    except Exception:
                        logger.exception("deadline handler of %r failed", target)
            if self._after:  # nothing more is due: the jobs the handlers queued
                self._run_after_pass()
                continue  # (then what became due while they ran, before sleeping)
            # Rebuild when most entries are stale (counted as they go stale, not by
            # scanning the heap on every wakeup).
            if self._stale > 64 and self._stale * 2 > len(heap):
                self._compact()
                heap = self._heap
            deadline = heap[0][0] if heap else math.inf
            with trio.CancelScope(deadline=deadline) as self._sleep:
                if timer is None:
                    await trio.sleep_forever()
                else:  # the timer wakes it on time; the deadline is the fallback
                    if deadline != math.inf:
                        timer.arm(deadline - clock())
                    await timer.wait()
            self._sleep = None

    def _run_after_pass(self) -> None:
        jobs, self._after = self._after, []
        for job in jobs:
            try:
                job()
            except Exception:
                logger.exception("deadline job %r failed", job)

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if _live(e)]
        heapq.heapify(self._heap)
        self._stale = 0


@attrs.define(eq=False)
class Periodic:
    """A synchronous job the scheduler runs every ``interval`` seconds (``Supervisor.every``)."""

    interval: float
    job: Callable[[], None]
    scheduler: DeadlineScheduler
    timer_token: int = 0

    def on_deadline(self, now: float) -> None:
        self.scheduler.schedule(self, now + self.interval)
        self.job()


@attrs.define(eq=False)
class Supervisor:
    """Owns the deadline scheduler, periodic jobs, the reactor that reads and writes for
    WebSocket connections (where the platform has epoll), and the room actors (with
    OTP-style restarts).

    ``run`` is started in the server's nursery; it opens the nursery that room actors run
    in. A room actor that raises is restarted with its state; more than ``max_restarts``
    crashes of the rooms within ``restart_window`` seconds escalate as RoomCrashLoopError.
    """

    max_restarts: int = 5
    restart_window: float = 10.0
    scheduler: DeadlineScheduler = attrs.field(factory=DeadlineScheduler)
    reactor: Reactor | None = attrs.field(
        factory=lambda: Reactor() if Reactor.available() else None
    )
    _nursery: trio.Nursery | None = None
    _crashes: deque[float] = attrs.field(factory=deque)
    _periodic: list[Periodic] = attrs.field(factory=list)
    rooms_running: int = 0

    @property
    def running(self) -> bool:
        """Whether ``run`` is running (room actors and connections can be started)."""
        return self._nursery is not None

    def every(self, interval: float, job: Callable[[], None]) -> Periodic:
        """Run the synchronous ``job`` every ``interval`` seconds (on the scheduler, so
        it costs no task), from now if the supervisor runs, else from its ``run``; a job
        that raises is logged and runs again at its next time."""
        periodic = Periodic(interval=interval, job=job, scheduler=self.scheduler)
        self._periodic.append(periodic)
        if self._nursery is not None:  # running already: its first time is one interval on
            self.scheduler.schedule(periodic, trio.current_time() + interval)
        return periodic

    def cancel(self, periodic: Periodic) -> None:
        """Stop running a job ``every`` started."""
        self._periodic.remove(periodic)
        self.scheduler.cancel(periodic)

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Run the scheduler and the reactor, and host room actors, until cancelled.

        Cancellation: every room actor is cancelled with it.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.scheduler.run)
                if self.reactor is not None:
                    await nursery.start(self.reactor.run)
                now = trio.current_time()
                for periodic in self._periodic:
                    self.scheduler.schedule(periodic, now + periodic.interval)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
        raise AssertionError("unreachable")  # pragma: no cover

    async def start_connection(self, run: Callable[..., Awaitable[None]]) -> None:
        """Start a connection actor that no request task owns (a polling session).

        Cancellation: the actor may or may not have started.
        """
        if self._nursery is None:
            raise RuntimeError("the supervisor is not running")
        await self._nursery.start(run)

    def spawn_room(self, actor: RoomActor) -> None:
        """Start ``actor`` under supervision."""
        if self._nursery is None:
            raise RuntimeError("the supervisor is not running")
        self._nursery.start_soon(self._supervise_room, actor)

    async def _supervise_room(self, actor: RoomActor) -> None:
        self.rooms_running += 1
        try:
            while True:
                try:
                    await actor.run()
                    return
                except Exception as exc:
                    now = trio.current_time()
                    self._crashes.append(now)
                    while self._crashes and self._crashes[0] < now - self.restart_window:
                        self._crashes.popleft()
                    logger.exception("room actor %s %r crashed", actor.namespace, actor.name)
                    if len(self._crashes) > self.max_restarts:
                        raise RoomCrashLoopError(
                            f"{len(self._crashes)} room crashes within {self.restart_window} s"
                        ) from exc
        finally:
            self.rooms_running -= 1
            actor.retire()
