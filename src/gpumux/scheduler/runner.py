"""The scheduler task: runs `SchedulerCore` in real time and carries out its commands.

Owns: the inbox every other component sends typed inputs to (`scheduler.inputs`), the
futures that requests and admin commands await, the running operations, the timer that
wakes the core at its next deadline, the frozen `SchedulerView` of the state after
its last step, and the shelves of standing grants the core stocks (`Stock`) with what
requests did off them since its last step (grants taken, quiet releases), handed to the
core with its next input, at most `lease_sync_secs` later (`state/standing.py` says why
that is safe). It is the only task that calls the core, so the core's state has exactly
one owner; everyone else reads `view`.
Does not: decide anything (the core does) or perform steps (the orchestrator does).
Observations (state changes, switches, waits) go to a `SchedulerObserver` — metrics and
logs in the daemon, statistics in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from gpumux.core.errors import GpumuxError, ShuttingDown
from gpumux.core.states import ModelState
from gpumux.scheduler.inbox import Inbox
from gpumux.scheduler.inputs import (
    Admin,
    AdminCommand,
    BeginShutdown,
    Cancel,
    ForceStop,
    FoundAsleep,
    GpuFreed,
    HealthFailed,
    HostMemory,
    Input,
    OpDone,
    OpPhase,
    ProcessExited,
    Release,
    Submit,
    Tick,
)
from gpumux.scheduler.messages import (
    AdminReply,
    Command,
    Grant,
    Note,
    Operation,
    OpOutcome,
    OpResult,
    QueueWait,
    Reject,
    Restarted,
    StartOp,
    StateChanged,
    Stock,
    SwitchFinished,
)
from gpumux.scheduler.orchestrator import Orchestrator
from gpumux.scheduler.state.core import SchedulerCore
from gpumux.scheduler.view import SchedulerView

#: The longest a status read waits for the owner to take in what requests did unasked.
SETTLE_WAIT_SECS = 1.0


class SchedulerObserver(Protocol):
    def state_changed(self, event: StateChanged) -> None: ...
    def switch_finished(self, event: SwitchFinished) -> None: ...
    def restarted(self, event: Restarted) -> None: ...
    def queue_wait(self, event: QueueWait) -> None: ...
    def note(self, event: Note) -> None: ...
    def queues_changed(self, depths: dict[str, int], inflight: dict[str, int]) -> None: ...


@dataclass(frozen=True)
class Lease:
    """Permission to send one request to `model`'s backend; release it exactly once.

    `pid` and `port` name the backend process the grant was made for, so the proxy never
    asks the scheduler which process that is.
    """

    ticket: int
    model: str
    pid: int | None = None
    port: int | None = None


class Scheduler:
    def __init__(
        self,
        core: SchedulerCore,
        orchestrator: Orchestrator,
        observer: SchedulerObserver,
        clock: Callable[[], float],
        *,
        lease_sync_secs: float = 0.02,
    ) -> None:
        self._core = core
        self._orchestrator = orchestrator
        self._observer = observer
        self._clock = clock
        self._view: SchedulerView | None = None  # built on first read after a step
        self._inbox: Inbox[Input] = Inbox()
        self._waiters: dict[int, asyncio.Future[Lease]] = {}
        self._tickets = itertools.count(1)
        self._replies = itertools.count(1)
        self._admin_waiters: dict[int, asyncio.Future[AdminReply]] = {}
        self._ops: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()  # set when no lease is held
        self._idle.set()
        self._stopped = asyncio.Event()  # set when every tree is stopped during shutdown
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the owner task's, once it runs
        # Standing grants (`state/standing.py`): the shelves only the owner task stocks,
        # and what requests did unasked since its last step (taken from a shelf, released
        # while nothing waited), each `(ticket, when)`, handed to the core at its next step.
        self._shelves: dict[str, list[Grant]] = {}
        self._claims: list[tuple[int, float]] = []
        self._releases: list[tuple[int, float]] = []
        self._releases_can_wait = False
        self._sync_secs = lease_sync_secs
        self._sync_timer: asyncio.TimerHandle | None = None
        self._settling: list[asyncio.Future[None]] = []  # `settle` callers, until a publish

    # ---- API for other components (they only send messages and read the view) ----------

    @property
    def view(self) -> SchedulerView:
        """The state as of the last step: frozen, so a reader cannot see a half-made one.

        A step runs without awaiting, so any read between steps sees exactly the state it
        left. The copy is made on the first read after a step, not after every step: the
        request path (two steps per request) never reads it, the monitors rarely do.
        """
        if self._view is None:
            self._view = self._core.view()
        return self._view

    async def settle(self) -> None:
        """Return once the owner has taken in what requests did without asking it so far
        (grants taken, quiet releases), so that `view` counts them: for status readers,
        which would otherwise lag by up to `lease_sync_secs`. The owner steps on the next
        turn of the loop; `SETTLE_WAIT_SECS` only bounds a read should it be gone."""
        if not (self._claims or self._releases):
            return
        waiter: asyncio.Future[None] = self._running_loop().create_future()
        self._settling.append(waiter)
        self._inbox.put(Tick())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_WAIT_SECS):
                await waiter

    async def acquire(self, model: str) -> Lease:
        """Wait until `model` may serve one request. Raises a GpumuxError when it may not."""
        if self._closed:
            raise ShuttingDown("gpumux is shutting down", retry_after=5)
        lease = self.take_standing(model)
        if lease is not None:
            return lease
        ticket = next(self._tickets)
        future: asyncio.Future[Lease] = self._running_loop().create_future()
        self._waiters[ticket] = future
        self._inbox.put(Submit(ticket, model))
        try:
            return await future
        except asyncio.CancelledError:
            # The client left while queued (or just as it was granted): tell the owner.
            self._inbox.put(Cancel(ticket))
            raise
        finally:
            self._waiters.pop(ticket, None)

    def take_standing(self, model: str) -> Lease | None:
        """A lease on `model` now, without waiting, if the owner granted one ahead (a
        standing grant: what asking would get now); else None, and nothing changed."""
        shelf = self._shelves.get(model)
        if not shelf or self._closed:
            return None
        # The owner learns of it within the bound, as of when it was taken.
        grant = shelf.pop()
        self._claims.append((grant.ticket, self._clock()))
        self._idle.clear()  # a lease is held, whatever the last step published
        self._sync_soon()
        return Lease(grant.ticket, model, grant.pid, grant.port)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The owner task's loop once it runs: on Python 3.11 `get_running_loop()` is a
        getpid() syscall, and `acquire` runs for every request."""
        return self._loop or asyncio.get_running_loop()

    def release(self, lease: Lease) -> None:
        if self._releases_can_wait:  # nothing waits for it: the owner learns of it soon
            self._releases.append((lease.ticket, self._clock()))
            self._sync_soon()
        else:
            self._inbox.put(Release(lease.ticket))

    def _sync_soon(self) -> None:
        """Make sure the owner steps within `lease_sync_secs` of what requests did
        unasked, if nothing else wakes it first (one timer for all of it)."""
        if self._sync_timer is None:
            loop = self._running_loop()
            self._sync_timer = loop.call_later(self._sync_secs, self._inbox.put, Tick())

    def process_exited(self, model: str, pid: int, code: int) -> None:
        self._inbox.put(ProcessExited(model, pid, code))

    def report_unhealthy(self, model: str, pid: int) -> None:
        self._inbox.put(HealthFailed(model, pid))

    def report_asleep(self, model: str, pid: int) -> None:
        self._inbox.put(FoundAsleep(model, pid))

    def report_host_memory(self, available_bytes: int) -> None:
        """A fresh host-RAM reading (the core keeps its budget with it)."""
        self._inbox.put(HostMemory(available_bytes))

    async def admin(self, command: AdminCommand, *, timeout: float) -> AdminReply:
        """Send an operator's command to the owner task and wait (bounded) for its reply."""
        reply = next(self._replies)
        future: asyncio.Future[AdminReply] = asyncio.get_running_loop().create_future()
        self._admin_waiters[reply] = future
        self._inbox.put(Admin(command, reply))
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._admin_waiters.pop(reply, None)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def begin_shutdown(self) -> None:
        self._closed = True
        self._inbox.put(BeginShutdown())

    def force_stop(self) -> None:
        self._inbox.put(ForceStop())

    # ---- the owner task ------------------------------------------------------------------

    async def run(self) -> None:
        """Process messages until cancelled. Operations still running are cancelled with it."""
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                message = await self._next_message()
                self._step(message)
                # What other tasks sent meanwhile is handled in the same wake-up, one input
                # after another (each with its own `now`, its commands carried out before
                # the next), then published once: no task runs between them, so none could
                # have read the states in between, and under load (a Submit and a Release
                # per request) this saves a wake-up, a deadline timer and a publish each.
                while not self._inbox.empty():
                    self._step(self._inbox.take())
                self._publish()
        finally:
            if self._sync_timer is not None:
                self._sync_timer.cancel()
            for task in list(self._ops):
                task.cancel()
            if self._ops:
                await asyncio.gather(*self._ops, return_exceptions=True)

    def _step(self, message: Input) -> None:
        """One input to the core, with whatever requests did unasked before it; its
        commands are carried out (a `Stock` included) before anything else can run."""
        claims, releases = self._claims, self._releases
        if claims or releases:
            self._claims, self._releases = [], []
            if self._sync_timer is not None:
                self._sync_timer.cancel()
                self._sync_timer = None
        now = self._clock()
        self._execute(self._core.handle(message, now, claims=claims, releases=releases))
        self._releases_can_wait = self._core.releases_can_wait

    async def _next_message(self) -> Input:
        deadline = self._core.next_deadline()
        delay = None if deadline is None else max(0.0, deadline - self._clock())
        if await self._inbox.wait(delay):
            return self._inbox.take()
        return Tick()  # the deadline came first

    def _execute(self, commands: list[Command]) -> None:
        for command in commands:
            match command:
                case Grant(ticket, model, pid, port):
                    self._resolve(ticket, Lease(ticket, model, pid, port))
                case Stock():
                    command.onto(self._shelves)
                case Reject(ticket, error):
                    self._resolve(ticket, error)
                case StartOp(op):
                    task = asyncio.get_running_loop().create_task(self._run_op(op))
                    self._ops.add(task)
                    task.add_done_callback(self._ops.discard)
                case StateChanged():
                    self._observer.state_changed(command)
                case SwitchFinished():
                    self._observer.switch_finished(command)
                case Restarted():
                    self._observer.restarted(command)
                case QueueWait():
                    self._observer.queue_wait(command)
                case Note():
                    self._observer.note(command)
                case AdminReply(reply):
                    waiter = self._admin_waiters.get(reply)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(command)

    def _publish(self) -> None:
        self._view = None  # the next reader gets the state this step left
        settling, self._settling = self._settling, []
        for waiter in settling:
            if not waiter.done():
                waiter.set_result(None)
        depths, inflight = self._core.load()
        self._observer.queues_changed(depths, inflight)
        if any(inflight.values()):
            self._idle.clear()
        else:
            self._idle.set()
        if self._core.shutting_down and self._core.models.all_stopped:
            self._stopped.set()

    def _resolve(self, ticket: int, result: Lease | GpumuxError) -> None:
        future = self._waiters.get(ticket)
        if future is None or future.done():
            # The requester is gone; a grant must not leak its lease.
            if isinstance(result, Lease):
                self._inbox.put(Release(ticket))
            return
        if isinstance(result, Lease):
            future.set_result(result)
        else:
            future.set_exception(result)

    async def _run_op(self, op: Operation) -> None:
        # Runs in its own task (a copy of the context), so these stay on this op's lines.
        structlog.contextvars.bind_contextvars(
            model=op.model, switch_id=op.switch_id, op_id=op.op_id
        )

        def report(state: ModelState) -> None:
            self._inbox.put(OpPhase(op.op_id, state))

        def freed(holds: ModelState, phases: tuple[tuple[str, float], ...]) -> None:
            self._inbox.put(GpuFreed(op.op_id, holds, phases))

        try:
            outcome = await self._orchestrator.run(op, report, freed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an effect broke its contract; the model must not hang
            outcome = OpOutcome(op.op_id, OpResult.FAILED, None, f"internal error: {exc!r}")
        self._inbox.put(OpDone(outcome))
