"""How the scheduler core moves models: switches, drains, evictions, wakes, warm-up.

Owns: the mechanics of one switch (admission through placement, draining victims,
starting evict and wake operations, judging their outcomes, failure backoff, the switch
record and its learned costs), the warm-up pass and the stops of a shutdown.
Does not: choose targets (the policy does, through `SchedulerCore._reconcile`) or handle
inputs. Pure: `now` is always passed in.
"""

from __future__ import annotations

from gpumux.core.config import EvictionConfig, ProcessStrategy
from gpumux.core.errors import ModelUnavailable, QueueTimeout
from gpumux.core.eviction import Step, evict_plan, wake_plan
from gpumux.core.placement import admit
from gpumux.core.states import (
    ModelState,
    RequestState,
)
from gpumux.scheduler.messages import (
    Grant,
    Note,
    Operation,
    OpKind,
    OpOutcome,
    OpResult,
    QueueWait,
    Reject,
    Restarted,
    SwitchFinished,
)
from gpumux.scheduler.state.base import STARTABLE, M
from gpumux.scheduler.state.host_budget import CoreHost
from gpumux.scheduler.state.slots import Slot, Switch


class CoreMoves(CoreHost):
    """Switch mechanics of the scheduler core (see `scheduler_base` for the state)."""

    def _try_bring_up(self, slot: Slot, now: float, *, force: bool = False) -> bool:
        """Start waking `slot` or evicting for it; False when its GPUs must wait.

        `force` (an operator's switch) ignores min_active_secs.
        """
        admission = admit(slot.alias, self._tenants(force=force), self._capacity, now)
        if admission.impossible:
            self._reject_queue(
                slot, ModelUnavailable(f"`{slot.alias}` cannot be placed: {admission.impossible}")
            )
            return True
        if admission.fits_now:
            self._start_wake(slot, self._switch_for(slot, now), now)
            return True
        if admission.victims:
            # The switch starts when it is committed, not while it waits for min_active.
            switch = self._switch_for(slot, now)
            for victim in admission.victims:
                self._start_drain(self.slots[victim], switch, now)
        if admission.wait_until is not None:
            self._recheck_at = min(self._recheck_at or admission.wait_until, admission.wait_until)
        return False

    def _switch_for(self, slot: Slot, now: float) -> Switch:
        if slot.switch_id is None or slot.switch_id not in self.switches:
            switch = Switch(self._next_switch, slot.alias, now)
            self._next_switch += 1
            self.switches[switch.switch_id] = switch
            slot.switch_id = switch.switch_id
            self._out.append(
                Note("switch_started", {"switch_id": switch.switch_id, "target": slot.alias})
            )
        return self.switches[slot.switch_id]

    def _grant_queue(self, slot: Slot, now: float) -> None:
        while slot.queue:
            entry = slot.queue.popleft()
            self._ticket_state(entry, RequestState.GRANTED)
            slot.leases.add(entry.ticket)
            slot.last_used_at = now
            self._out.append(QueueWait(slot.alias, now - entry.enqueued_at))
            self._out.append(Grant(entry.ticket, slot.alias))

    def _expire_tickets(self, now: float) -> None:
        for slot in self.slots.values():
            expired = [t for t in slot.queue if t.deadline <= now]
            for entry in expired:
                self._ticket_state(entry, RequestState.TIMED_OUT)
                self._drop_ticket(entry)
                self._out.append(
                    Reject(
                        entry.ticket,
                        QueueTimeout(
                            f"Timed out after {self._policy_config.request_timeout_secs:g}s "
                            f"waiting for `{slot.alias}`."
                        ),
                    )
                )

    def _start_drain(self, slot: Slot, switch: Switch | None, now: float) -> None:
        self._set_state(slot, M.DRAINING)
        slot.drain_for = switch.switch_id if switch else None
        if switch is not None and slot.alias not in switch.victims:
            switch.victims.append(slot.alias)
        drain = (
            self._policy_config.drain_timeout_secs
            if self._policy_config.drain_before_switch
            else 0.0
        )
        slot.drain_deadline = now + drain
        slot.drain_started_at = now
        self._maybe_finish_drain(slot, now)

    def _maybe_finish_drain(self, slot: Slot, now: float) -> None:
        deadline_passed = slot.drain_deadline is not None and now >= slot.drain_deadline
        if slot.leases and not deadline_passed:
            return
        eviction = self._host_safe_eviction(slot, now)
        if eviction is None:
            return  # host RAM is being freed first; the next reading resumes this
        steps, resting = evict_plan(eviction)
        secs = now - (slot.drain_started_at if slot.drain_started_at is not None else now)
        if slot.drain_for is not None and secs > 0:
            # How long a busy model takes to let go: policies plan tours of models with it
            # (an idle model lets go at once, which says nothing). Not a switch cost.
            self.costs.observe_op(slot.alias, "drain", str(slot.eviction), secs)
        self._set_state(slot, M.EVICTING)
        slot.drain_deadline = None
        slot.drain_started_at = None
        self._host_evicting(slot, eviction)
        self._start_op(
            slot,
            OpKind.EVICT,
            steps,
            resting,
            slot.drain_for,
            abort=bool(slot.leases),
            now=now,
            eviction=eviction,
        )

    def _cancel_needless_drains(self, now: float) -> None:
        """A switch whose target lost all demand before its wake began is called off.

        Victims still draining for it go back to serving; victims already evicting finish.
        """
        for switch in list(self.switches.values()):
            target = self.slots[switch.target]
            forced = any(model == target.alias for model, _ in self._forced)
            if target.queue or forced or target.state not in STARTABLE:
                continue
            for victim in switch.victims:
                slot = self.slots[victim]
                if slot.state is M.DRAINING and slot.drain_for == switch.switch_id:
                    self._set_state(slot, M.READY)
                    slot.drain_deadline = None
                    slot.drain_started_at = None
                    slot.drain_for = None
            self._finish_switch(switch, target, "cancelled", now)

    def _evict_done(
        self, slot: Slot, op: Operation, outcome: OpOutcome, secs: float, now: float
    ) -> None:
        slot.ready_since = None
        if outcome.result is OpResult.OK:
            self.costs.observe_op(slot.alias, "evict", str(op.eviction), secs)
            slot.evicted_weights = op.eviction.weights
            slot.pid = outcome.pid if op.resting_state in (M.SLEEPING, M.SUSPENDED) else None
            self._set_state(slot, op.resting_state)
        else:
            slot.pid = None
            slot.last_error = outcome.error
            self._set_state(slot, M.STOPPED)
        self._host_evicted(slot, now)
        switch = self.switches.get(op.switch_id) if op.switch_id is not None else None
        if switch is not None:
            switch.phases.extend(outcome.phase_secs)
        slot.drain_for = None

    def _start_wake(self, slot: Slot, switch: Switch | None, now: float) -> None:
        weights = slot.evicted_weights or slot.eviction.weights
        from_state = slot.state
        steps = wake_plan(weights, from_state, warmup=slot.warming)
        if from_state is M.STOPPED:
            self._set_state(slot, M.STARTING)
            if switch is not None:
                switch.cold = True
        else:
            self._set_state(slot, M.WAKING)
        evicted_with = EvictionConfig(
            weights=weights, process=_process_for(from_state, slot.eviction)
        )
        self._start_op(
            slot,
            OpKind.WAKE,
            steps,
            M.READY,
            switch.switch_id if switch else None,
            abort=False,
            now=now,
            eviction=evicted_with,
        )

    def _wake_done(
        self, slot: Slot, op: Operation, outcome: OpOutcome, secs: float, now: float
    ) -> None:
        switch = self.switches.get(op.switch_id) if op.switch_id is not None else None
        if switch is not None:
            switch.phases.extend(outcome.phase_secs)
        cold = Step.COLD_START in op.steps or outcome.result is OpResult.FALLBACK_COLD
        if outcome.result in (OpResult.OK, OpResult.FALLBACK_COLD):
            self.costs.observe_op(
                slot.alias, "cold_start" if cold else "wake", str(op.eviction), secs
            )
            slot.pid = outcome.pid
            slot.ready_since = now
            slot.last_used_at = now
            slot.start_failures = 0
            slot.retry_not_before = None
            slot.evicted_weights = None
            self._set_state(slot, M.READY)
            if outcome.result is OpResult.FALLBACK_COLD:
                slot.restarts += 1
                self._out.append(Restarted(slot.alias, "wake_failed"))
            if switch is not None:
                self._finish_switch(switch, slot, outcome.result.value, now)
            if slot.warming:
                slot.warming = False
                self._warmup.remove(slot.alias)
                self._start_drain(slot, None, now)
            return
        slot.pid = None
        slot.ready_since = None
        slot.last_error = outcome.error
        slot.restarts += 1
        self._out.append(Restarted(slot.alias, "start_failed"))
        if switch is not None:
            self._finish_switch(switch, slot, "failed", now)
        if slot.warming:
            slot.warming = False
            self._warmup.remove(slot.alias)
        # A failed wake already tried a cold start; count it like a failed start.
        self._set_state(slot, M.STOPPED)
        self._count_failure(slot, now)
        if self._forced and self._forced[0][0] == slot.alias and slot.state is not M.FAILED:
            _, reply = self._forced.popleft()
            self._reply(reply, False, f"`{slot.alias}` did not start: {outcome.error}", 503)

    def _finish_switch(self, switch: Switch, target: Slot, outcome: str, now: float) -> None:
        self.switches.pop(switch.switch_id, None)
        target.switch_id = None
        source = switch.victims[0] if switch.victims else None
        strategy = str(target.eviction)
        duration = now - switch.started_at
        if outcome == "ok" and not switch.cold:
            evict = sum(
                secs
                for phase, secs in switch.phases
                if phase in ("sleep", "suspend", "dump", "stop")
            )
            wake = sum(
                secs
                for phase, secs in switch.phases
                if phase not in ("sleep", "suspend", "dump", "stop", "drain")
            )
            self.costs.observe_switch(source, target.alias, strategy, evict + wake)
        finished = SwitchFinished(
            switch.switch_id,
            target.alias,
            tuple(switch.victims),
            strategy,
            outcome,
            duration,
            tuple(switch.phases),
        )
        self.last_switch[target.alias] = finished
        self._out.append(finished)

    def _advance_warmup(self, now: float) -> None:
        """Bring each model up once (answering a 1-token request) and evict it again."""
        if any(s.op is not None or s.state is M.DRAINING for s in self.slots.values()):
            return
        slot = self.slots[self._warmup[0]]
        if slot.state in STARTABLE:
            slot.warming = True
            self._start_wake(slot, None, now)
        elif slot.state is M.FAILED:
            self._warmup.pop(0)

    def _stop_idle_trees(self, now: float) -> None:
        for slot in self.slots.values():
            if slot.op is not None or not slot.process_alive or slot.leases:
                continue
            if slot.state is M.DRAINING:
                continue  # _maybe_finish_drain evicts it; the stop follows
            self._set_state(slot, M.STOPPING)
            self._start_op(slot, OpKind.STOP, (Step.STOP,), M.STOPPED, None, abort=True, now=now)


def _process_for(state: ModelState, eviction: EvictionConfig) -> ProcessStrategy:
    """The process strategy a model in `state` was evicted with (labels costs and metrics)."""
    return {
        M.SLEEPING: ProcessStrategy.KEEP_RUNNING,
        M.SUSPENDED: ProcessStrategy.CUDA_SUSPEND,
        M.CHECKPOINTED: ProcessStrategy.CHECKPOINT,
    }.get(state, eviction.process if state is not M.STOPPED else ProcessStrategy.STOP)
