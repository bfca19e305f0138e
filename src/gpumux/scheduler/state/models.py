"""The model table: one `Slot` per model, and the guarded ways a slot's lifecycle moves.

Owns: the slots, the operation ids, the pinned model of manual mode, the held models
(`pinned: true` or `POST /api/models/{m}/pin`: never a victim), every lifecycle
transition (through `states.transition()`, announced as `StateChanged`), starting an
operation, stopping a whole tree, and how placement sees the table (tenants, admission).
Does not: decide when a model moves (the other parts do) or touch queues. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping

from gpumux.core.config import EvictionConfig, ModelConfig, PolicyConfig
from gpumux.core.eviction import Step
from gpumux.core.placement import Admission, Tenant, admit, lru_rank
from gpumux.core.states import MODEL_TRANSITIONS, WAKEABLE_STATES, ModelState, transition
from gpumux.policy.costs import SwitchCosts
from gpumux.policy.demand import DemandBook
from gpumux.policy.victims import gdsf_rank
from gpumux.scheduler.messages import Mode, Operation, OpKind, StartOp, StateChanged
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.slots import Slot

M = ModelState
#: States from which a model can be brought up (woken, restored, resumed or cold-started).
STARTABLE = WAKEABLE_STATES | {M.STOPPED}
#: States in which the model's process no longer exists (its host RAM is given back).
_PROCESS_GONE = frozenset({M.STOPPED, M.CHECKPOINTED, M.FAILED})


class Models:
    def __init__(self, capacity: Mapping[int, int], costs: SwitchCosts, policy: PolicyConfig):
        self.slots: dict[str, Slot] = {}
        self.pinned: str | None = None
        #: Models no policy, placement or idle TTL evicts (config `pinned`, admin pin).
        self.held: set[str] = set()
        self._capacity = dict(capacity)
        self._costs = costs
        self._min_active_secs = policy.min_active_secs
        self._rank = gdsf_rank if policy.victims == "cost" else lru_rank
        self._next_op = 1
        #: Each model's decayed arrival rate (victims, eviction ahead of need, auto).
        self.demand = DemandBook(policy.demand_time_constant_secs)

    def add(
        self,
        alias: str,
        config: ModelConfig,
        eviction: EvictionConfig,
        residual_bytes: int,
        *,
        auto: bool = False,
    ) -> None:
        self.slots[alias] = Slot(alias, config, eviction, residual_bytes=residual_bytes, auto=auto)
        self.hold(alias, on=config.pinned)

    def hold(self, alias: str, *, on: bool) -> None:
        """Pin (`on`) or unpin `alias` against eviction."""
        if on:
            self.held.add(alias)
        else:
            self.held.discard(alias)

    def protected(self, alias: str) -> bool:
        """Never a victim: held, or the manual-mode model."""
        return alias in self.held or alias == self.pinned

    @property
    def capacity(self) -> Mapping[int, int]:
        return self._capacity

    @property
    def mode(self) -> Mode:
        return Mode.MANUAL if self.pinned else Mode.AUTO

    @property
    def busy(self) -> bool:
        """An operation runs or a model drains: a switch is under way."""
        return any(s.op is not None or s.state is M.DRAINING for s in self.slots.values())

    @property
    def all_stopped(self) -> bool:
        return all(not s.process_alive and s.op is None for s in self.slots.values())

    def pin(self, alias: str | None) -> None:
        self.pinned = alias

    # ---- lifecycle ---------------------------------------------------------------------

    def set_state(self, slot: Slot, target: ModelState, out: Outbox) -> None:
        before = slot.state
        slot.state = transition(MODEL_TRANSITIONS, before, target, what=f"model {slot.alias}")
        # A stopping tree holds what it held before (a crashed sleeper: its residual only).
        slot.stopping_from = before if target is M.STOPPING else None
        if target in _PROCESS_GONE:
            slot.l1_backup = False  # the process and its pinned host cache are gone
        out.add(StateChanged(slot.alias, before, target))

    def start_op(
        self,
        slot: Slot,
        kind: OpKind,
        steps: tuple[Step, ...],
        resting: ModelState,
        switch_id: int | None,
        *,
        abort: bool,
        now: float,
        out: Outbox,
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
        out.add(StartOp(op))

    def stop_tree(self, slot: Slot, now: float, out: Outbox) -> None:
        """Kill `slot`'s whole process tree now; requests in flight on it end with it."""
        self.set_state(slot, M.STOPPING, out)
        self.start_op(
            slot, OpKind.STOP, (Step.STOP,), M.STOPPED, None, abort=True, now=now, out=out
        )

    def stop_idle_trees(self, now: float, out: Outbox) -> None:
        """Shutdown: stop every live tree nobody uses and no operation holds."""
        for slot in self.slots.values():
            if slot.op is not None or not slot.process_alive or slot.leases:
                continue
            if slot.state is M.DRAINING:
                continue  # its drain evicts it first; the stop follows
            self.stop_tree(slot, now, out)

    def slot_of_op(self, op_id: int) -> Slot | None:
        for slot in self.slots.values():
            if slot.op is not None and slot.op.op_id == op_id:
                return slot
        return None

    # ---- placement -----------------------------------------------------------------------

    def wake_cost(self, slot: Slot) -> float:
        op = "cold_start" if slot.state is M.STOPPED else "wake"
        if slot.auto and slot.evicted_with is not None and op == "wake":
            return self._costs.op_cost(slot.alias, op, str(slot.evicted_with))
        return self._costs.op_cost(slot.alias, op, str(slot.eviction))

    def evict_cost(self, slot: Slot) -> float:
        return self._costs.op_cost(slot.alias, "evict", str(slot.eviction))

    def tenants(self, now: float, *, force: bool = False) -> dict[str, Tenant]:
        """The table as placement sees it; `force` (an operator's switch) ignores min_active."""
        return {
            alias: s.tenant(
                min_active_secs=0.0 if force else self._min_active_secs,
                wake_cost_secs=self.wake_cost(s),
                evict_cost_secs=self.evict_cost(s),
                reuse_rate=self.demand.rate_at(alias, now),
                pinned=self.protected(alias),
            )
            for alias, s in self.slots.items()
        }

    def admit(self, alias: str, now: float, *, force: bool = False) -> Admission:
        """Placement's answer, victims ranked by `policy.victims` (GDSF: `policy.victims`;
        or least recently used)."""
        return admit(alias, self.tenants(now, force=force), self._capacity, now, self._rank)
