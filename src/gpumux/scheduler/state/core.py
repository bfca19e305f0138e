"""The scheduler's state owner: one input in, the commands to carry out back.

Owns: the composition of the parts (each owns its own fields; see `design.md`), the
dispatch of every input (`handle`), the inputs no single part owns (a finished
operation, shutdown, the refusals common to admin commands), and the reconcile pass
after each input: walk retiring models, expire deadlines, grant ready queues, call
off needless switches, finish drains, relieve host pressure, then the warm-up pass, the
operator's forced switch, or the policy's choices brought up through placement, then
eviction ahead of need (`Ahead`), and last the standing grants (`standing`). Also the
next deadline and the frozen view the runner publishes (the policy's snapshot is
`snapshot.py`'s).
Does not: await, perform I/O or read the clock. The async runner (`runner`) and the
simulator (`simulate`) feed it inputs with `now` and execute its commands, so the same
logic runs in real and virtual time. Not thread-safe by design: one task drives it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gpumux.core.config import GIB, Config, WeightStrategy
from gpumux.core.errors import ModelNotFound, ShuttingDown
from gpumux.core.states import ModelState
from gpumux.policy.base import Policy
from gpumux.policy.costs import SwitchCosts
from gpumux.scheduler.inputs import (
    Admin,
    AdminCommand,
    AdminEvict,
    AdminMode,
    AdminPin,
    AdminReset,
    AdminRestart,
    AdminSwitch,
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
    Reload,
    Submit,
    Tick,
)
from gpumux.scheduler.messages import AdminRefusal, Command, Mode, OpKind, OpOutcome, Reject
from gpumux.scheduler.state.ahead import Ahead
from gpumux.scheduler.state.host_budget import HostBudget
from gpumux.scheduler.state.idle import Idle
from gpumux.scheduler.state.levels import AutoLevels
from gpumux.scheduler.state.models import STARTABLE, M, Models
from gpumux.scheduler.state.moves import Moves
from gpumux.scheduler.state.operator import Operator
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.preload import Preload
from gpumux.scheduler.state.publish import publish
from gpumux.scheduler.state.queues import Queues
from gpumux.scheduler.state.reconfigure import Reconfigure, add_model
from gpumux.scheduler.state.retirements import Retirements
from gpumux.scheduler.state.slots import Slot
from gpumux.scheduler.state.snapshot import policy_snapshot
from gpumux.scheduler.state.standing import StandingGrants
from gpumux.scheduler.state.supervisor import Supervisor
from gpumux.scheduler.state.switches import SwitchBook
from gpumux.scheduler.state.warmup import Warmup
from gpumux.scheduler.view import SchedulerView

SHUTTING_DOWN = "gpumux is shutting down"


class SchedulerCore:
    def __init__(
        self,
        config: Config,
        policy: Policy,
        capacity: Mapping[int, int],
        *,
        costs: SwitchCosts | None = None,
        initial_states: Mapping[str, tuple[ModelState, WeightStrategy | None]] | None = None,
        standing_grants: int = 0,
    ) -> None:
        self._last_now = 0.0
        self._policy = policy
        self.costs = costs or SwitchCosts()
        self.shutting_down = False
        self._recheck_at: float | None = None
        self.models = Models(capacity, self.costs, config.policy)
        for alias, model in config.models.items():
            add_model(self.models, alias, model, config)
        for alias, (state, weights) in (initial_states or {}).items():
            self.models.slots[alias].state = state
            self.models.slots[alias].evicted_weights = weights
        timeout = config.policy.request_timeout_secs
        self.queues = Queues(self.models, self.costs, timeout)
        self.supervisor = Supervisor(self.models, self.queues, config.supervision)
        self.host = HostBudget(self.models, int(config.host_memory.reserve_gib * GIB))
        self.switches = SwitchBook(self.costs)
        levels = AutoLevels(self.models, self.host, self.costs, config)
        self.moves = Moves(
            self.models, self.queues, self.host, self.switches, self.costs, config.policy, levels
        )
        self.warmup = Warmup(self.models, self.moves, config.models if config.warmup else ())
        self.operator = Operator(self.models, self.moves, self.supervisor, self.switches)
        self.retirements = Retirements(self.models, self.moves)
        self.idle = Idle(self.models, self.moves, config)
        self.ahead = Ahead(self.models, self.moves, self.switches, config.policy)
        preload = (config.resolve_model(name) for name in config.preload)
        self.preload = Preload(self.models, self.moves, [a for a in preload if a is not None])
        self.standing = StandingGrants(
            self.models, self.queues, self.warmup, self.retirements, standing_grants
        )
        self.releases_can_wait = False  # the runner reads it per release: see `standing`
        parts = (
            self.retirements,
            self.idle,
            self.operator,
            self.warmup,
            self.switches,
            self.host,
            self.supervisor,
        )
        self.reconfigure = Reconfigure(config, self.models, self.queues, parts=parts)

    def handle(
        self,
        message: Input,
        now: float,
        *,
        claims: Sequence[tuple[int, float]] = (),
        releases: Sequence[tuple[int, float]] = (),
    ) -> list[Command]:
        """Apply one input, bring every decision up to date, return what to carry out.
        `claims` (standing grants taken) and `releases` (leases released without waking
        the owner task), `(ticket, when)` in order, happened before `message`: applied
        first."""
        out = Outbox()
        self._last_now = now  # the view's judgments are as of the last input
        for ticket, at in claims:
            self.standing.claimed(ticket, at, out)
        for ticket, at in releases:
            self.queues.release(ticket, at)
        self._apply(message, now, out)
        self._reconcile(now, out)
        self.releases_can_wait = self.standing.end_step(self.shutting_down, out)
        return out.take()

    def _apply(self, message: Input, now: float, out: Outbox) -> None:
        match message:
            case Submit(ticket, model):
                self._submit(ticket, model, now, out)
            case Release(ticket):
                self.queues.release(ticket, now)
            case Cancel(ticket):
                self.queues.cancel(ticket, now)
            case OpPhase(op_id, state):
                slot = self.models.slot_of_op(op_id)
                if slot is not None and slot.state is not state:
                    self.models.set_state(slot, state, out)
            case GpuFreed(op_id, holds, phase_secs):
                self.moves.gpu_freed(self.models.slot_of_op(op_id), holds, phase_secs, out)
            case OpDone(outcome):
                self._op_done(outcome, now, out)
            case ProcessExited(model, pid, code):
                self.supervisor.exited(model, pid, code, now, out)
            case HealthFailed(model, pid):
                self.supervisor.unhealthy(model, pid, now, out)
            case FoundAsleep(model, pid):
                self.supervisor.asleep(model, pid, out)
            case HostMemory(available):
                self.host.reading(available, now)
            case Tick():
                pass  # the reconcile pass below is the point
            case BeginShutdown():
                self._begin_shutdown(out)
            case ForceStop():
                self.queues.drop_leases()
            case Admin(command, reply):
                self._admin(command, reply, now, out)

    # ---- inputs no single part owns ----------------------------------------------------------

    def _submit(self, ticket: int, model: str, now: float, out: Outbox) -> None:
        slot = self.models.slots.get(model)
        if slot is None or self.retirements.removing(model):
            error = ModelNotFound(f"The model `{model}` does not exist.", param="model")
            out.add(Reject(ticket, error))
        elif self.shutting_down:
            out.add(Reject(ticket, ShuttingDown(SHUTTING_DOWN, retry_after=5)))
        elif slot.state is M.FAILED and not self.supervisor.retry_failed(slot, now, out):
            out.add(Reject(ticket, self.supervisor.unavailable(slot, now)))
        else:
            self.models.demand.arrived(model, now)
            self.queues.enqueue(ticket, slot, now, out)

    def _op_done(self, outcome: OpOutcome, now: float, out: Outbox) -> None:
        slot = self.models.slot_of_op(outcome.op_id)
        if slot is None or slot.op is None:
            return
        op, slot.op = slot.op, None
        secs = now - slot.op_started_at
        if op.kind is OpKind.EVICT:
            self.moves.evict_done(slot, op, outcome, secs, now, out)
        elif op.kind is OpKind.WAKE:
            ready = self.moves.wake_done(slot, op, outcome, secs, now, out)
            warming = self.warmup.warming(slot.alias)
            if warming:
                self.warmup.finished(slot.alias)
            if ready and warming:
                self.moves.start_drain(slot, None, now, out)  # warmed: evict it again
            elif not ready:
                # A failed wake already tried a cold start; count it like a failed start.
                self.supervisor.count_failure(slot, now, out)
                self.operator.start_failed(slot, outcome.error, out)
        else:
            self._stopped(slot, now, out)

    def _stopped(self, slot: Slot, now: float, out: Outbox) -> None:
        slot.pid = None
        self.models.set_state(slot, M.STOPPED, out)
        restart = self.operator.take_restart(slot.alias)
        if self.shutting_down:
            return
        if restart is not None:
            self.operator.switch(slot.alias, restart)
        elif slot.start_failures:
            self.supervisor.judge(slot, now, out)  # stopped because it was unhealthy

    def _begin_shutdown(self, out: Outbox) -> None:
        self.shutting_down = True
        self.operator.refuse_all(SHUTTING_DOWN, AdminRefusal.SHUTTING_DOWN, out)
        for slot in self.models.slots.values():
            self.queues.reject_all(slot, lambda: ShuttingDown(SHUTTING_DOWN, retry_after=5), out)

    def _admin(self, command: AdminCommand, reply: int, now: float, out: Outbox) -> None:
        slots = self.models.slots
        match command:
            case Reload(config):
                refusal = SHUTTING_DOWN if self.shutting_down else None
                self.reconfigure.reload(config, reply, out, refusal=refusal)
            case AdminMode(Mode.MANUAL, str() as model) if not self._in_force(model):
                # Pinning a model on its way out would queue a switch for a slot about to go.
                out.reply(reply, f"unknown model `{model}`", refusal=AdminRefusal.UNKNOWN_MODEL)
            case AdminMode():
                self.operator.mode(command, reply, out)
            case AdminReset(model) if model in slots:
                self.operator.reset(slots[model], reply, out)
            case AdminReset(model):
                out.reply(reply, f"unknown model `{model}`", refusal=AdminRefusal.UNKNOWN_MODEL)
            case _ if not self._in_force(command.model):
                detail = f"unknown model `{command.model}`"
                out.reply(reply, detail, refusal=AdminRefusal.UNKNOWN_MODEL)
            case _ if self.shutting_down:
                out.reply(reply, SHUTTING_DOWN, refusal=AdminRefusal.SHUTTING_DOWN)
            case AdminSwitch(model):
                self.operator.switch(model, reply)
            case AdminEvict(model, force):
                self.operator.evict(slots[model], reply, now, out, force=force)
            case AdminPin(model, pinned):
                self.operator.pin(slots[model], pinned, reply, out)
            case AdminRestart(model):
                self.operator.restart(slots[model], reply, now, out)

    def _in_force(self, model: str) -> bool:
        """Configured and not on its way out of the config."""
        return model in self.models.slots and not self.retirements.removing(model)

    # ---- the reconcile pass ------------------------------------------------------------------

    def _reconcile(self, now: float, out: Outbox) -> None:
        for alias, new in self.retirements.pending():
            if self.retirements.advance(alias, now, out):
                self.reconfigure.retired(alias, new, out)
        slots = self.models.slots
        self.queues.expire(now, out)
        for slot in slots.values():
            if slot.queue:  # grants standing for nobody must not take the room it needs
                self.standing.make_room(slot, out)
            if slot.state is M.READY and slot.queue and not self.warmup.warming(slot.alias):
                self.queues.grant_all(slot, now, out)
        self.moves.call_off_needless(self.operator.forcing, now, out)
        for slot in slots.values():
            if slot.state is M.DRAINING:
                self.moves.finish_drain(slot, now, out)
        if self.shutting_down:
            self.models.stop_idle_trees(now, out)
            return
        self.host.relieve_pressure(now, out)
        if self.warmup.active:
            self.warmup.advance(now, out)
            return
        if self.preload.active:
            self.preload.advance(now, out)
        self.idle.advance(now, out, self._idle_exempt)
        self._recheck(self.operator.advance(now, out))
        if self.operator.busy:
            return  # an operator's switch goes first; the policy resumes after it
        self._recheck_at = None
        self._ask_policy(now, out)
        # After the policy's wakes: an idle model leaves for a contender predicted sooner.
        self.ahead.advance(now, out, self._idle_exempt)

    def _ask_policy(self, now: float, out: Outbox) -> None:
        """Bring up, through placement, the models the policy chooses."""
        slots = self.models.slots
        if not any(slot.queue for slot in slots.values()):
            return  # policies only wake models with demand: nothing to ask
        decision = self._policy.decide(policy_snapshot(self.models, self.costs, now))
        self._recheck_at = decision.recheck_at
        pinned = self.models.pinned
        blocked_gpus: set[int] = set()
        for target in decision.wake:
            if (pinned is not None and target != pinned) or self.retirements.retiring(target):
                continue
            slot = self.models.slots[target]
            gpus = slot.config.gpu_indices
            if slot.state not in STARTABLE or blocked_gpus.intersection(gpus):
                continue
            attempt = self.moves.bring_up(slot, now, out)
            self._recheck(attempt.wait_until)
            if not attempt.settled:
                blocked_gpus.update(gpus)

    def _idle_exempt(self, alias: str) -> bool:
        """Models no idle TTL may evict: pinned ones, an operator's target, one
        warming up or on its way out; and all of them while warming up or shutting down."""
        return (
            self.shutting_down
            or self.warmup.active
            or alias == self.models.pinned
            or self.operator.forcing(alias)
            or self.retirements.retiring(alias)
            or alias in self.models.held
        )

    def _recheck(self, when: float | None) -> None:
        if when is not None:
            self._recheck_at = when if self._recheck_at is None else min(self._recheck_at, when)

    # ---- what the runner and the policy read ------------------------------------------------

    def next_deadline(self) -> float | None:
        times = self.queues.deadlines()
        for slot in self.models.slots.values():
            if slot.drain_deadline is not None and slot.state is M.DRAINING:
                times.append(slot.drain_deadline)
            # Backoff gates only a start that has not begun: a STARTING slot keeps its
            # (past) retry time, and counting it would make the runner spin.
            if slot.queue and slot.retry_not_before is not None and slot.state is M.STOPPED:
                times.append(slot.retry_not_before)
        if self._recheck_at is not None:
            times.append(self._recheck_at)
        times += self.ahead.deadlines(after=self._last_now)
        times += self.idle.deadlines(self._idle_exempt)
        return min(times, default=None)

    def load(self) -> tuple[dict[str, int], dict[str, int]]:
        """Requests queued and in flight per model (cheap: the runner reports it every step)."""
        slots = self.models.slots.values()
        return {s.alias: len(s.queue) for s in slots}, {s.alias: len(s.leases) for s in slots}

    def view(self) -> SchedulerView:
        """The frozen view of everything above, for readers outside the owner task."""
        return publish(
            self.models,
            self.host,
            self.switches,
            self.costs,
            self.idle,
            preload=self.preload.outcomes,
            shutting_down=self.shutting_down,
            now=self._last_now,
        )
