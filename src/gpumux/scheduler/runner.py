"""The scheduler task: runs `SchedulerCore` in real time and carries out its commands.

Owns: the inbox every other component sends to, the futures that requests await, the
task group of running operations, and the timer that wakes the core at its next deadline.
It is the only task that calls the core, so the core's state has exactly one owner.
Does not: decide anything (the core does) or perform steps (the orchestrator does).
Observations (state changes, switches, waits) go to a `SchedulerObserver` — metrics and
logs in the daemon, statistics in tests.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from gpumux.core.errors import GpumuxError, ShuttingDown
from gpumux.core.states import ModelState
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
    SwitchFinished,
)
from gpumux.scheduler.orchestrator import Orchestrator
from gpumux.scheduler.state.core import SchedulerCore


class SchedulerObserver(Protocol):
    def state_changed(self, event: StateChanged) -> None: ...
    def switch_finished(self, event: SwitchFinished) -> None: ...
    def restarted(self, event: Restarted) -> None: ...
    def queue_wait(self, event: QueueWait) -> None: ...
    def note(self, event: Note) -> None: ...
    def queues_changed(self, depths: dict[str, int], inflight: dict[str, int]) -> None: ...


@dataclass(frozen=True)
class Lease:
    """Permission to send one request to `model`'s backend; release it exactly once."""

    ticket: int
    model: str


# ---- inbox messages ------------------------------------------------------------------


@dataclass(frozen=True)
class _Submit:
    ticket: int
    model: str


@dataclass(frozen=True)
class _Release:
    ticket: int


@dataclass(frozen=True)
class _Cancel:
    ticket: int


@dataclass(frozen=True)
class _OpDone:
    outcome: OpOutcome


@dataclass(frozen=True)
class _OpState:
    op_id: int
    state: ModelState


@dataclass(frozen=True)
class _Exited:
    model: str
    pid: int
    code: int


@dataclass(frozen=True)
class _Unhealthy:
    model: str
    pid: int


@dataclass(frozen=True)
class _Asleep:
    model: str
    pid: int


@dataclass(frozen=True)
class _Call:
    """Run `fn(core, now)` inside the owner task (admin commands, shutdown)."""

    fn: Callable[[SchedulerCore, float], list[Command]]


_Message = (
    _Submit | _Release | _Cancel | _OpDone | _OpState | _Exited | _Unhealthy | _Asleep | _Call
)


class Scheduler:
    def __init__(
        self,
        core: SchedulerCore,
        orchestrator: Orchestrator,
        observer: SchedulerObserver,
        clock: Callable[[], float],
    ) -> None:
        self.core = core
        self._orchestrator = orchestrator
        self._observer = observer
        self._clock = clock
        self._inbox: asyncio.Queue[_Message] = asyncio.Queue()
        self._waiters: dict[int, asyncio.Future[Lease]] = {}
        self._tickets = itertools.count(1)
        self._replies = itertools.count(1)
        self._admin_waiters: dict[int, asyncio.Future[AdminReply]] = {}
        self._ops: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()  # set when no lease is held
        self._idle.set()
        self._stopped = asyncio.Event()  # set when every tree is stopped during shutdown
        self._closed = False

    # ---- API for other components (they only send messages) ----------------------------

    async def acquire(self, model: str) -> Lease:
        """Wait until `model` may serve one request. Raises a GpumuxError when it may not."""
        if self._closed:
            raise ShuttingDown("gpumux is shutting down", retry_after=5)
        ticket = next(self._tickets)
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = future
        self._inbox.put_nowait(_Submit(ticket, model))
        try:
            return await future
        except asyncio.CancelledError:
            # The client left while queued (or just as it was granted): tell the owner.
            self._inbox.put_nowait(_Cancel(ticket))
            raise
        finally:
            self._waiters.pop(ticket, None)

    def release(self, lease: Lease) -> None:
        self._inbox.put_nowait(_Release(lease.ticket))

    def process_exited(self, model: str, pid: int, code: int) -> None:
        self._inbox.put_nowait(_Exited(model, pid, code))

    def report_unhealthy(self, model: str, pid: int) -> None:
        self._inbox.put_nowait(_Unhealthy(model, pid))

    def report_asleep(self, model: str, pid: int) -> None:
        self._inbox.put_nowait(_Asleep(model, pid))

    def report_host_memory(self, available_bytes: int) -> None:
        """A fresh host-RAM reading (the core keeps its budget with it)."""
        self.call(lambda core, now: core.host_memory(available_bytes, now))

    def call(self, fn: Callable[[SchedulerCore, float], list[Command]]) -> None:
        self._inbox.put_nowait(_Call(fn))

    async def admin(
        self, command: Callable[[SchedulerCore, int, float], list[Command]], *, timeout: float
    ) -> AdminReply:
        """Run an admin input in the owner task and wait (bounded) for its reply."""
        reply = next(self._replies)
        future: asyncio.Future[AdminReply] = asyncio.get_running_loop().create_future()
        self._admin_waiters[reply] = future
        self.call(lambda core, now: command(core, reply, now))
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
        self.call(lambda core, now: core.begin_shutdown(now))

    def force_stop(self) -> None:
        self.call(lambda core, now: core.force_stop_all(now))

    # ---- the owner task ------------------------------------------------------------------

    async def run(self) -> None:
        """Process messages until cancelled. Operations still running are cancelled with it."""
        try:
            while True:
                message = await self._next_message()
                now = self._clock()
                commands = self._apply(message, now) if message is not None else self.core.tick(now)
                self._execute(commands)
        finally:
            for task in list(self._ops):
                task.cancel()
            if self._ops:
                await asyncio.gather(*self._ops, return_exceptions=True)

    async def _next_message(self) -> _Message | None:
        deadline = self.core.next_deadline()
        if deadline is None:
            return await self._inbox.get()
        delay = max(0.0, deadline - self._clock())
        try:
            async with asyncio.timeout(delay):
                return await self._inbox.get()
        except TimeoutError:
            return None

    def _apply(self, message: _Message, now: float) -> list[Command]:
        core = self.core
        match message:
            case _Submit(ticket, model):
                return core.submit(ticket, model, now)
            case _Release(ticket):
                return core.release(ticket, now)
            case _Cancel(ticket):
                return core.cancel(ticket, now)
            case _OpDone(outcome):
                return core.op_done(outcome, now)
            case _OpState(op_id, state):
                return core.op_phase(op_id, state, now)
            case _Exited(model, pid, code):
                return core.process_exited(model, pid, code, now)
            case _Unhealthy(model, pid):
                return core.health_failed(model, pid, now)
            case _Asleep(model, pid):
                return core.found_asleep(model, pid, now)
            case _Call(fn):
                return fn(core, now)

    def _execute(self, commands: list[Command]) -> None:
        for command in commands:
            match command:
                case Grant(ticket, model):
                    self._resolve(ticket, Lease(ticket, model))
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
        self._after_commands()

    def _after_commands(self) -> None:
        slots = self.core.slots.values()
        depths = {s.alias: len(s.queue) for s in slots}
        inflight = {s.alias: len(s.leases) for s in slots}
        self._observer.queues_changed(depths, inflight)
        if any(inflight.values()):
            self._idle.clear()
        else:
            self._idle.set()
        if self.core.shutting_down and self.core.all_stopped:
            self._stopped.set()

    def _resolve(self, ticket: int, result: Lease | GpumuxError) -> None:
        future = self._waiters.get(ticket)
        if future is None or future.done():
            # The requester is gone; a grant must not leak its lease.
            if isinstance(result, Lease):
                self._inbox.put_nowait(_Release(ticket))
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
            self._inbox.put_nowait(_OpState(op.op_id, state))

        try:
            outcome = await self._orchestrator.run(op, report)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an effect broke its contract; the model must not hang
            outcome = OpOutcome(op.op_id, OpResult.FAILED, None, f"internal error: {exc!r}")
        self._inbox.put_nowait(_OpDone(outcome))
