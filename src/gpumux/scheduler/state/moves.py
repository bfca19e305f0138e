"""How models move on and off the GPUs: admission, drains, evictions, wakes.

Owns: the mechanics of one switch — admission through placement (wake now, drain these
victims first, wait, or refuse the queue), draining a victim (bounded by
`drain_timeout_secs`), starting its eviction with the host-safe strategy, starting a
wake with the right step plan, judging both outcomes into the slot (and the costs they
teach), an eviction that freed the GPU before its last step (`policy.overlap`: the wake
waiting for that memory need not wait for the rest), and calling off a switch whose
target lost all demand before its wake began.
Does not: choose targets (the policy does, through `SchedulerCore`), count failures
(`Supervisor`) or answer anyone (the core routes a wake's outcome). Pure: `now` is passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpumux.core.config import EvictionConfig, PolicyConfig, ProcessStrategy, WeightStrategy
from gpumux.core.errors import ModelUnavailable
from gpumux.core.eviction import Step, evict_plan, wake_plan
from gpumux.core.states import ModelState
from gpumux.policy.costs import SwitchCosts
from gpumux.scheduler.messages import Operation, OpKind, OpOutcome, OpResult, Restarted
from gpumux.scheduler.state.host_budget import HostBudget
from gpumux.scheduler.state.levels import AutoLevels
from gpumux.scheduler.state.models import STARTABLE, M, Models
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.queues import Queues
from gpumux.scheduler.state.slots import Slot, Switch
from gpumux.scheduler.state.switches import SwitchBook


@dataclass(frozen=True)
class BringUp:
    """What an attempt to bring a model up did."""

    settled: bool  # a wake started, or the queue was refused; False: its GPUs must wait
    wait_until: float | None = None  # a victim becomes evictable then (re-ask)


class Moves:
    def __init__(
        self,
        models: Models,
        queues: Queues,
        host: HostBudget,
        switches: SwitchBook,
        costs: SwitchCosts,
        policy: PolicyConfig,
        levels: AutoLevels | None = None,
    ) -> None:
        self._levels = levels  # chooses each eviction's level for `eviction: "auto"` models
        self._models = models
        self._queues = queues
        self._host = host
        self._switches = switches
        self._costs = costs
        self._policy = policy

    def bring_up(self, slot: Slot, now: float, out: Outbox, *, force: bool = False) -> BringUp:
        """Start waking `slot` or draining for it; `force` ignores min_active_secs."""
        admission = self._models.admit(slot.alias, now, force=force)
        if admission.impossible:
            detail = f"`{slot.alias}` cannot be placed: {admission.impossible}"
            self._queues.reject_all(slot, lambda: ModelUnavailable(detail), out)
            return BringUp(settled=True)
        if admission.fits_now:
            self.start_wake(slot, self._switches.for_target(slot, now, out), now, out)
            return BringUp(settled=True)
        if admission.victims:
            # The switch starts when it is committed, not while it waits for min_active.
            switch = self._switches.for_target(slot, now, out)
            for victim in admission.victims:
                self.start_drain(self._models.slots[victim], switch, now, out)
        return BringUp(settled=False, wait_until=admission.wait_until)

    # ---- leaving the GPU ------------------------------------------------------------------

    def start_drain(
        self,
        slot: Slot,
        switch: Switch | None,
        now: float,
        out: Outbox,
        *,
        eviction: EvictionConfig | None = None,
    ) -> None:
        """No new leases for `slot`; it evicts when in-flight requests end or time runs out,
        with `eviction` when given (an idle step), else its own."""
        self._models.set_state(slot, M.DRAINING, out)
        slot.drain_for = switch.switch_id if switch else None
        slot.drain_eviction = eviction
        if switch is not None and slot.alias not in switch.victims:
            switch.victims.append(slot.alias)
        policy = self._policy
        drain = policy.drain_timeout_secs if policy.drain_before_switch else 0.0
        slot.drain_deadline = now + drain
        slot.drain_started_at = now
        self.finish_drain(slot, now, out)

    def finish_drain(self, slot: Slot, now: float, out: Outbox) -> None:
        """Start the eviction of a draining `slot` once it is idle or its deadline passed."""
        deadline_passed = slot.drain_deadline is not None and now >= slot.drain_deadline
        if slot.leases and not deadline_passed:
            return
        if slot.auto and slot.drain_eviction is None and self._levels is not None:
            slot.drain_eviction = self._levels.choose(slot, now, out)
        eviction = self._host.safe_eviction(slot, now, out)
        if eviction is None:
            return  # host RAM is being freed first; the next reading resumes this
        steps, resting = evict_plan(eviction)
        secs = now - (slot.drain_started_at if slot.drain_started_at is not None else now)
        if slot.drain_for is not None and secs > 0:
            # How long a busy model takes to let go: policies plan tours of models with it
            # (an idle model lets go at once, which says nothing). Not a switch cost.
            self._costs.observe_op(slot.alias, "drain", str(slot.eviction), secs)
        self._models.set_state(slot, M.EVICTING, out)
        slot.drain_deadline = None
        slot.drain_started_at = None
        slot.drain_eviction = None
        self._host.evicting(slot, eviction)
        slot.freed_to = None  # holds its whole share until this eviction says otherwise
        self._models.start_op(
            slot,
            OpKind.EVICT,
            steps,
            resting,
            slot.drain_for,
            abort=bool(slot.leases),
            now=now,
            out=out,
            eviction=eviction,
        )

    def call_off_needless(self, forced: Callable[[str], bool], now: float, out: Outbox) -> None:
        """A switch whose target lost all demand before its wake began is called off.

        Victims still draining for it go back to serving; victims already evicting finish.
        A target the operator forces (`forced(alias)`) keeps its switch without demand.
        """
        for switch in list(self._switches.active.values()):
            target = self._models.slots[switch.target]
            if target.queue or target.state not in STARTABLE or forced(target.alias):
                continue
            for victim in switch.victims:
                slot = self._models.slots[victim]
                if slot.state is M.DRAINING and slot.drain_for == switch.switch_id:
                    self._models.set_state(slot, M.READY, out)
                    slot.drain_deadline = None
                    slot.drain_started_at = None
                    slot.drain_for = None
                    slot.drain_eviction = None
            self._switches.finish(switch, target, "cancelled", now, out)

    def gpu_freed(
        self,
        slot: Slot | None,
        holds: ModelState,
        phase_secs: tuple[tuple[str, float], ...],
        out: Outbox,
    ) -> None:
        """`slot`'s eviction freed its GPU memory (down to `holds`'s footprint) and goes on.

        With `policy.overlap`, placement counts the memory as free from now on, so a wake
        waiting for it starts in this step's reconcile pass; the switch records the phases
        so far, the part of the eviction it waited for (the rest runs off its path).
        """
        if slot is None or slot.op is None or slot.state is not M.EVICTING:
            return  # the operation is over (or not an eviction): nothing left to count
        if not self._policy.overlap:
            return
        slot.freed_to = holds
        switch = self._switches.get(slot.op.switch_id)
        if switch is not None:
            switch.phases.extend(phase_secs)
        out.note("gpu_freed", {"model": slot.alias, "holds": holds.value})

    def evict_done(
        self, slot: Slot, op: Operation, outcome: OpOutcome, secs: float, now: float, out: Outbox
    ) -> None:
        overlapped, slot.freed_to = slot.freed_to is not None, None
        slot.ready_since = None
        if outcome.result is OpResult.OK:
            self._costs.observe_op(slot.alias, "evict", str(op.eviction), secs)
            slot.evicted_weights = op.eviction.weights
            slot.evicted_with = op.eviction
            slot.pid = outcome.pid if op.resting_state in (M.SLEEPING, M.SUSPENDED) else None
            if op.eviction.weights is WeightStrategy.OFFLOAD:
                slot.l1_backup = slot.pid is not None
            elif op.eviction.weights is WeightStrategy.DISCARD:
                slot.l1_backup = False  # level 2 is how the pinned backup is given back
            self._models.set_state(slot, op.resting_state, out)
        else:
            slot.pid = None
            slot.last_error = outcome.error
            self._models.set_state(slot, M.STOPPED, out)
        self._host.evicted(slot, now)
        switch = self._switches.get(op.switch_id)
        if switch is not None and not overlapped:
            switch.phases.extend(outcome.phase_secs)
        slot.drain_for = None

    # ---- coming up ----------------------------------------------------------------------

    def start_wake(
        self, slot: Slot, switch: Switch | None, now: float, out: Outbox, *, warmup: bool = False
    ) -> None:
        """Wake, resume, restore or cold-start `slot`; `warmup` adds a 1-token request."""
        weights = slot.evicted_weights or slot.eviction.weights
        from_state = slot.state
        steps = wake_plan(weights, from_state, warmup=warmup)
        if from_state is M.STOPPED:
            self._models.set_state(slot, M.STARTING, out)
            if switch is not None:
                switch.cold = True
        else:
            self._models.set_state(slot, M.WAKING, out)
        evicted_with = EvictionConfig(
            weights=weights, process=_process_for(from_state, slot.eviction)
        )
        self._models.start_op(
            slot,
            OpKind.WAKE,
            steps,
            M.READY,
            switch.switch_id if switch else None,
            abort=False,
            now=now,
            out=out,
            eviction=evicted_with,
        )

    def wake_done(
        self, slot: Slot, op: Operation, outcome: OpOutcome, secs: float, now: float, out: Outbox
    ) -> bool:
        """Judge a finished wake; True when `slot` is ready (False: it is stopped again)."""
        switch = self._switches.get(op.switch_id)
        if switch is not None:
            switch.phases.extend(outcome.phase_secs)
        if outcome.result in (OpResult.OK, OpResult.FALLBACK_COLD):
            cold = Step.COLD_START in op.steps or outcome.result is OpResult.FALLBACK_COLD
            op_name = "cold_start" if cold else "wake"
            self._costs.observe_op(slot.alias, op_name, str(op.eviction), secs)
            slot.pid = outcome.pid
            slot.ready_since = now
            slot.last_used_at = now
            slot.start_failures = 0
            slot.retry_not_before = None
            slot.evicted_weights = None
            self._models.set_state(slot, M.READY, out)
            if outcome.result is OpResult.FALLBACK_COLD:
                slot.restarts += 1
                out.add(Restarted(slot.alias, "wake_failed"))
            if switch is not None:
                self._switches.finish(switch, slot, outcome.result.value, now, out)
            return True
        slot.pid = None
        slot.ready_since = None
        slot.last_error = outcome.error
        slot.restarts += 1
        out.add(Restarted(slot.alias, "start_failed"))
        if switch is not None:
            self._switches.finish(switch, slot, "failed", now, out)
        self._models.set_state(slot, M.STOPPED, out)
        return False


def _process_for(state: ModelState, eviction: EvictionConfig) -> ProcessStrategy:
    """The process strategy a model in `state` was evicted with (labels costs and metrics)."""
    return {
        M.SLEEPING: ProcessStrategy.KEEP_RUNNING,
        M.SUSPENDED: ProcessStrategy.CUDA_SUSPEND,
        M.CHECKPOINTED: ProcessStrategy.CHECKPOINT,
    }.get(state, eviction.process if state is not M.STOPPED else ProcessStrategy.STOP)
