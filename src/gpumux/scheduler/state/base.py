"""The scheduler core's state and plumbing, shared by every part of the core.

Owns: the fields of the single-owner state (slots, tickets, switches, the forced-switch
queue, reload bookkeeping, the host-RAM reading, the command buffer) and the small
guarded helpers every input uses: lifecycle transitions, starting operations, replies,
queue rejection, failure backoff.
Does not: decide anything. The host-RAM budget (`scheduler_host`), the switch mechanics
(`scheduler_moves`), the admin and reload inputs (`scheduler_admin`) and the inputs with
the reconcile pass (`scheduler_core`) build on it as one class chain, so the state keeps
exactly one owner. Pure.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping

from gpumux.core.config import Config, EvictionConfig, ModelConfig, WeightStrategy
from gpumux.core.errors import ModelUnavailable
from gpumux.core.eviction import Step
from gpumux.core.placement import Tenant
from gpumux.core.states import (
    MODEL_TRANSITIONS,
    REQUEST_TRANSITIONS,
    WAKEABLE_STATES,
    ModelState,
    RequestState,
    transition,
)
from gpumux.policy.base import Policy
from gpumux.policy.costs import SwitchCosts
from gpumux.scheduler.messages import (
    AdminReply,
    Command,
    Operation,
    OpKind,
    Reject,
    StartOp,
    StateChanged,
    SwitchFinished,
)
from gpumux.scheduler.state.slots import Slot, Switch, Ticket

M = ModelState
GIB = 1024**3
#: States from which a model can be brought up (woken, restored, resumed or cold-started).
STARTABLE = WAKEABLE_STATES | {M.STOPPED}


class CoreBase(ABC):
    """State and helpers of the scheduler core. Not thread-safe by design: one task drives it."""

    def __init__(
        self,
        config: Config,
        policy: Policy,
        capacity: Mapping[int, int],
        *,
        costs: SwitchCosts | None = None,
        initial_states: Mapping[str, tuple[ModelState, WeightStrategy | None]] | None = None,
    ) -> None:
        self._config = config
        self._policy_config = config.policy
        self._supervision = config.supervision
        self._policy = policy
        self._capacity = dict(capacity)
        self.costs = costs or SwitchCosts()
        residual = int(config.gpu.sleeping_residual_gib * GIB)
        self.slots: dict[str, Slot] = {
            alias: Slot(alias, model, config.eviction_for(alias), residual_bytes=residual)
            for alias, model in config.models.items()
        }
        for alias, (state, weights) in (initial_states or {}).items():
            self.slots[alias].state = state
            self.slots[alias].evicted_weights = weights
        self.tickets: dict[int, Ticket] = {}
        self.switches: dict[int, Switch] = {}
        self._next_op = 1
        self._next_switch = 1
        self._recheck_at: float | None = None
        self._out: list[Command] = []
        self.shutting_down = False
        self.pinned: str | None = None
        self._warmup: list[str] = list(config.models) if config.warmup else []
        # Admin-forced wakes, served one at a time in order (concurrent switches serialise).
        self._forced: deque[tuple[str, int]] = deque()
        self._restart_after_stop: dict[str, int] = {}
        self.last_switch: dict[str, SwitchFinished] = {}  # by target, for status and replies
        # Config reload: models on their way out (alias -> new config; None = removed).
        self._retiring: dict[str, ModelConfig | None] = {}
        # The host-RAM budget (`scheduler_host`): the latest reading and stops under way.
        self._host_reserve = int(config.host_memory.reserve_gib * GIB)
        self.host_available: int | None = None
        self._host_read_at: float | None = None
        self._host_fresh = False
        # Models stopped to free host RAM, kept until a reading taken after their stop
        # finished (pinning decisions wait for it: only then is the memory visibly back).
        self._host_freeing: set[str] = set()

    def _flush(self, now: float) -> list[Command]:
        self._reconcile(now)
        out, self._out = self._out, []
        return out

    def _reply(
        self,
        reply: int,
        ok: bool,
        detail: str,
        status: int = 200,
        data: dict[str, object] | None = None,
    ) -> None:
        self._out.append(AdminReply(reply, ok, detail, status, data or {}))

    def _reset(self, slot: Slot) -> None:
        if slot.state is M.FAILED:
            self._set_state(slot, M.STOPPED)
        slot.start_failures = 0
        slot.retry_not_before = None
        slot.last_error = ""

    def _pin(self, model: str | None) -> None:
        self.pinned = model
        for slot in self.slots.values():
            slot.pinned = slot.alias == model

    def _start_op(
        self,
        slot: Slot,
        kind: OpKind,
        steps: tuple[Step, ...],
        resting: ModelState,
        switch_id: int | None,
        *,
        abort: bool,
        now: float,
        eviction: EvictionConfig | None = None,
    ) -> None:
        op = Operation(
            op_id=self._next_op,
            model=slot.alias,
            kind=kind,
            steps=steps,
            eviction=eviction or slot.eviction,
            switch_id=switch_id,
            abort_inflight=abort,
            resting_state=resting,
        )
        self._next_op += 1
        slot.op = op
        slot.op_started_at = now
        self._out.append(StartOp(op))

    def _slot_of_op(self, op_id: int) -> Slot | None:
        for slot in self.slots.values():
            if slot.op is not None and slot.op.op_id == op_id:
                return slot
        return None

    def _set_state(self, slot: Slot, target: ModelState) -> None:
        before = slot.state
        slot.state = transition(MODEL_TRANSITIONS, before, target, what=f"model {slot.alias}")
        # A stopping tree holds what it held before (a crashed sleeper: its residual only).
        slot.stopping_from = before if target is M.STOPPING else None
        self._out.append(StateChanged(slot.alias, before, target))

    def _wake_cost(self, slot: Slot) -> float:
        if slot.state is M.STOPPED:
            return self.costs.op_cost(slot.alias, "cold_start", str(slot.eviction))
        return self.costs.op_cost(slot.alias, "wake", str(slot.eviction))

    def _tenants(self, *, force: bool = False) -> dict[str, Tenant]:
        return {
            alias: s.tenant(
                min_active_secs=0.0 if force else self._policy_config.min_active_secs,
                wake_cost_secs=self._wake_cost(s),
            )
            for alias, s in self.slots.items()
        }

    def _ticket_state(self, entry: Ticket, target: RequestState) -> None:
        entry.state = transition(
            REQUEST_TRANSITIONS, entry.state, target, what=f"request {entry.ticket}"
        )

    def _drop_ticket(self, entry: Ticket) -> None:
        self.tickets.pop(entry.ticket, None)
        slot = self.slots[entry.model]
        if entry in slot.queue:
            slot.queue.remove(entry)

    def _reject_queue(self, slot: Slot, error: ModelUnavailable) -> None:
        while slot.queue:
            entry = slot.queue[0]
            self._ticket_state(entry, RequestState.REJECTED)
            self._drop_ticket(entry)
            self._out.append(Reject(entry.ticket, error))

    def _unavailable(self, slot: Slot, now: float) -> ModelUnavailable:
        retry = max(1.0, (slot.retry_not_before or now) - now)
        detail = f": {slot.last_error}" if slot.last_error else ""
        return ModelUnavailable(
            f"The model `{slot.alias}` is unavailable{detail}", retry_after=retry
        )

    def _count_failure(self, slot: Slot, now: float) -> None:
        slot.start_failures += 1
        self._judge_failures(slot, now)

    def _judge_failures(self, slot: Slot, now: float) -> None:
        """Back off exponentially; after max_start_failures the model is failed (503s)."""
        if slot.start_failures >= self._supervision.max_start_failures:
            slot.retry_not_before = now + self._supervision.failed_retry_secs
            self._set_state(slot, M.FAILED)
            self._reject_queue(slot, self._unavailable(slot, now))
            return
        slot.retry_not_before = now + self._backoff(slot)

    def _backoff(self, slot: Slot) -> float:
        exponent = max(0, slot.start_failures - 1)
        backoff: float = self._supervision.restart_backoff_secs * 2.0**exponent
        return min(backoff, self._supervision.restart_backoff_max_secs)

    @property
    def mode(self) -> str:
        return "manual" if self.pinned else "auto"

    @property
    def all_stopped(self) -> bool:
        return all(not s.process_alive and s.op is None for s in self.slots.values())

    @abstractmethod
    def _reconcile(self, now: float) -> None:
        """Bring decisions up to date after an input (defined by `SchedulerCore`)."""
