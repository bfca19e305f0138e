"""The discrete-event loop: the real `SchedulerCore`, policy and `Orchestrator`, simulated
backends.

Owns: virtual time (a heap of events: arrivals, client disconnects, the next step of a
running operation, request completions, crashes, and the core's own deadlines), carrying
out the core's commands the way the async runner does (a grant starts service on the
simulated backend, `StartOp` runs the real orchestrator over `SimEffects` one step at a
time, its intermediate states and outcome go back to the core, a finished request is
released), and the run's records. Like the runner, a request takes a standing grant off
its model's shelf when there is one (`policy.standing_grants`), and a release nothing
waits on is handed to the core with its next input, at most `policy.lease_sync_ms` later.
Optional `Faults` make steps fail and processes crash; an observer sees every input's
commands, and an `Unasked` observer every grant taken and release handed over that way
(the property tests check invariants there).
Does not: sleep, use asyncio, or decide anything; only the core, policy and orchestrator
decide.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

from gpumux.core.config import Config
from gpumux.core.states import ModelState
from gpumux.policy.registry import make_policy
from gpumux.scheduler.inputs import (
    Cancel,
    GpuFreed,
    Input,
    OpDone,
    OpPhase,
    ProcessExited,
    Release,
    Submit,
    Tick,
)
from gpumux.scheduler.messages import Command, Grant, OpOutcome, Reject, StartOp, Stock
from gpumux.scheduler.orchestrator import Orchestrator
from gpumux.scheduler.state.core import SchedulerCore
from gpumux.simulate.backend import Fleet, work_of
from gpumux.simulate.effects import OpRun, SimEffects, advance
from gpumux.simulate.faults import Faults
from gpumux.simulate.records import RequestRecord, RunRecord, SwitchLog
from gpumux.simulate.scenario import capacity_bytes, resting_states
from gpumux.simulate.switch_model import CostSource, step_costs
from gpumux.simulate.workloads import Arrival

#: Sees every input the core handled and the commands it returned, in order.
Observer = Callable[[SchedulerCore, float, Input, list[Command]], None]
Action = Callable[[float], None]


class Unasked(Protocol):
    """Sees what requests do without an input: take a standing grant, release quietly."""

    def took(self, core: SchedulerCore, now: float, ticket: int, grant: Grant) -> None: ...
    def handed(self, core: SchedulerCore, releases: Sequence[tuple[int, float]]) -> None: ...


class Simulation:
    def __init__(
        self,
        config: Config,
        arrivals: Sequence[Arrival],
        costs: CostSource,
        *,
        faults: Faults | None = None,
        observer: Observer | None = None,
        unasked: Unasked | None = None,
    ) -> None:
        self.config = config
        policy = make_policy(config.policy)
        states = resting_states(config)
        self.core = SchedulerCore(
            config,
            policy,
            capacity_bytes(config),
            initial_states=states,
            standing_grants=config.policy.standing_grants,
        )
        self.record = RunRecord.for_config(config)
        self._arrivals = arrivals
        self._faults = faults or Faults()
        self._now = 0.0  # the time of the event being handled: the orchestrator's clock
        self._effects = SimEffects(step_costs(costs, config), self._abort)
        self._orchestrator = Orchestrator(self._effects, lambda: self._now)
        self._observer = observer
        self._unasked = unasked
        # As the runner keeps them: shelves of standing grants, what requests did unasked
        # since the core's last input (`(ticket, when)`), and which grant a request took.
        self._shelves: dict[str, list[Grant]] = {}
        self._claims: list[tuple[int, float]] = []
        self._releases: list[tuple[int, float]] = []
        self._took: dict[int, int] = {}
        self._sync_secs = config.policy.lease_sync_ms / 1000
        self._fleet = Fleet({a: m.max_num_seqs for a, m in config.models.items()}, self.record.busy)
        self._switches = SwitchLog(self.record)
        self._events: list[tuple[float, int, bool, Action]] = []  # (when, seq, is_tick, do)
        self._seq = itertools.count()
        self._ticks: set[float] = set()
        self._inputs: deque[Input] = deque()
        self._ops_started = 0
        self._pending = 0  # requests and operations not finished yet

    def run(self) -> RunRecord:
        for ticket, arrival in enumerate(self._arrivals, 1):
            self._pending += 1
            self._push(arrival.t, partial(self._arrive, ticket, arrival))
        for when, model in self._faults.crashes:
            self._push(when, partial(self._crash, model))
        now = 0.0
        # Once every request and operation is done, only the core's timers are left.
        while self._events and (self._pending or not self._events[0][2]):
            now, _, _, action = heapq.heappop(self._events)
            self._now = now
            action(now)
            deadline = self.core.next_deadline()
            if deadline is not None:
                # A deadline already due (a backoff that placement still blocks) would spin;
                # re-ask at the daemon's tick interval instead.
                tick = self.config.policy.tick_interval_ms / 1000
                self._tick_at(deadline if deadline > now else now + tick)
        if self._claims or self._releases:  # the core learns the last of them too
            self._send(now, Tick())
        self.record.end = max(now, max((a.t for a in self._arrivals), default=0.0))
        return self.record

    # ---- events ------------------------------------------------------------------------

    def _push(self, when: float, action: Action, *, tick: bool = False) -> None:
        heapq.heappush(self._events, (when, next(self._seq), tick, action))

    def _tick_at(self, when: float) -> None:
        if when not in self._ticks:
            self._ticks.add(when)
            self._push(when, self._tick, tick=True)

    def _tick(self, now: float) -> None:
        self._ticks.discard(now)
        self._send(now, Tick())

    def _arrive(self, ticket: int, arrival: Arrival, now: float) -> None:
        work = work_of(arrival.prompt_tokens, arrival.output_tokens)
        self.record.requests[ticket] = RequestRecord(ticket, arrival.model, now, work)
        if arrival.cancel_after is not None:
            self._push(now + arrival.cancel_after, partial(self._cancel, ticket))
        shelf = self._shelves.get(arrival.model)
        if shelf:
            grant = shelf.pop()
            if self._unasked is not None:
                self._unasked.took(self.core, now, ticket, grant)
            self._took[ticket] = grant.ticket
            self._claims.append((grant.ticket, now))
            self._tick_at(now + self._sync_secs)
            self._granted(ticket, grant.model, now)
            return
        self._send(now, Submit(ticket, arrival.model))

    def _cancel(self, ticket: int, now: float) -> None:
        request = self.record.requests[ticket]
        if request.finished_at is not None:
            return
        if request.outcome == "granted":  # the client leaves mid-response
            self._fleet.backends[request.model].remove(ticket, now)
            self._finish(request.model, [ticket], now, completed=False)
            return
        request.outcome, request.finished_at = "cancelled", now
        self._pending -= 1
        self._send(now, Cancel(ticket))

    def _served(self, model: str, version: int, now: float) -> None:
        if version == self._fleet.version[model]:
            done = self._fleet.backends[model].finish_due(now)
            self._finish(model, done, now, completed=True)

    def _op_done(self, outcome: OpOutcome, now: float) -> None:
        self._pending -= 1
        self._send(now, OpDone(outcome))

    def _crash(self, model: str, now: float) -> None:
        if self.core.models.slots[model].op is not None:
            return  # an operation owns the process right now and reports its fate itself
        pid = self._effects.crash(model)
        if pid is None:
            return
        self._send(now, ProcessExited(model, pid, 137))
        self._finish(model, self._fleet.backends[model].abort_all(now), now, completed=False)

    # ---- the core's inputs and commands -----------------------------------------------

    def _send(self, now: float, message: Input) -> None:
        """Feed the core one input; inputs its commands cause (releases) queue behind it."""
        self._inputs.append(message)
        if len(self._inputs) > 1:
            return  # the loop below, further up the stack, will get to it
        while self._inputs:
            message = self._inputs[0]
            claims, releases = self._claims, self._releases
            self._claims, self._releases = [], []
            if self._unasked is not None and releases:
                self._unasked.handed(self.core, releases)
            commands = self.core.handle(message, now, claims=claims, releases=releases)
            if self._observer is not None:
                self._observer(self.core, now, message, commands)
            for command in commands:
                self._execute(command, now)
            self._inputs.popleft()

    def _execute(self, command: Command, now: float) -> None:
        if isinstance(command, Grant):
            self._granted(command.ticket, command.model, now)
        elif isinstance(command, Stock):
            command.onto(self._shelves)
        elif isinstance(command, Reject):
            request = self.record.requests[command.ticket]
            request.outcome, request.decided_at, request.finished_at = "rejected", now, now
            self._pending -= 1
        elif isinstance(command, StartOp):
            self._start_op(command, now)
        else:
            self._switches.observe(command, now)

    def _granted(self, ticket: int, model: str, now: float) -> None:
        request = self.record.requests[ticket]
        request.outcome, request.decided_at = "granted", now
        request.switch_secs = self._switches.allowance(model, request.arrived_at)
        self._fleet.backends[model].add(ticket, request.work, now)
        self._backend_changed(model, now)

    def _start_op(self, command: StartOp, now: float) -> None:
        op = command.op
        n, self._ops_started = self._ops_started, self._ops_started + 1
        self._effects.begin(op, self._faults.failures(n))
        self._pending += 1
        run = self._orchestrator.run(
            op, partial(self._op_state, op.op_id), partial(self._gpu_freed, op.op_id)
        )
        self._resume(run, now)

    def _resume(self, run: OpRun, now: float) -> None:
        """Run the operation to its next step boundary; come back when that step is done."""
        result = advance(run)
        if isinstance(result, OpOutcome):
            self._op_done(result, now)
        else:
            self._push(now + result, partial(self._resume, run))

    def _op_state(self, op_id: int, state: ModelState) -> None:
        now = self._now
        self._send(now, OpPhase(op_id, state))

    def _gpu_freed(
        self, op_id: int, holds: ModelState, phases: tuple[tuple[str, float], ...]
    ) -> None:
        """An eviction's GPU memory is free while steps remain (`policy.overlap`): the
        same input the daemon's runner sends, so the core may start the next wake now."""
        self._send(self._now, GpuFreed(op_id, holds, phases))

    def _abort(self, model: str) -> None:
        """The backend dropped its in-flight requests (stopped, killed, or told to abort)."""
        now = self._now
        self._finish(model, self._fleet.backends[model].abort_all(now), now, completed=False)

    def _backend_changed(self, model: str, now: float) -> None:
        done_at = self._fleet.changed(model, now)
        if done_at is not None:
            version = self._fleet.version[model]
            self._push(done_at, partial(self._served, model, version))

    def _finish(self, model: str, tickets: list[int], now: float, *, completed: bool) -> None:
        self._backend_changed(model, now)
        for ticket in tickets:
            request = self.record.requests[ticket]
            request.finished_at, request.completed = now, completed
            self._pending -= 1
            lease = self._took.pop(ticket, ticket)
            if self.core.releases_can_wait:
                self._releases.append((lease, now))
                self._tick_at(now + self._sync_secs)
            else:
                self._send(now, Release(lease))
