"""The scheduler's decision engine: the one owner of queues, leases and model states.

Owns: every model's lifecycle state, every request's queue position and lease, the
switches in progress, drain and backoff deadlines. Each input (a request, a release, an
operation's outcome, a process exit, a tick) returns the commands to carry out: grant or
reject requests, start an evict/wake operation, and observations for metrics and logs.
Does not: await, perform I/O or read the clock. The async runner (`scheduler`) and the
simulator (`simulate`) feed it inputs with `now` and execute its commands, so the same
logic runs in real and virtual time.

Long (over 400 lines) because the reconcile pass and the handlers of each input share
one invariant set; splitting them would scatter the single-owner rules across files.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from gpumux.config import Config, EvictionConfig, ModelConfig, ProcessStrategy, WeightStrategy
from gpumux.errors import ModelNotFound, ModelUnavailable, QueueFull, QueueTimeout, ShuttingDown
from gpumux.eviction import Step, evict_plan, wake_plan
from gpumux.placement import Tenant, admit
from gpumux.policy.base import Policy, Snapshot
from gpumux.policy.costs import SwitchCosts
from gpumux.scheduler_messages import (
    AdminReply,
    Command,
    Grant,
    Note,
    Operation,
    OpKind,
    OpOutcome,
    OpResult,
    QueueWait,
    Reject,
    Restarted,
    StartOp,
    StateChanged,
    SwitchFinished,
)
from gpumux.scheduler_slots import Slot, Switch, Ticket
from gpumux.states import (
    MODEL_TRANSITIONS,
    REQUEST_TRANSITIONS,
    WAKEABLE_STATES,
    ModelState,
    RequestState,
    transition,
)

M = ModelState
_STARTABLE = WAKEABLE_STATES | {M.STOPPED}


class SchedulerCore:
    """Single-owner state machine. Not thread-safe by design: one task drives it."""

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
        residual = int(config.gpu.sleeping_residual_gib * 1024**3)
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

    # ---- inputs -------------------------------------------------------------------

    def submit(self, ticket: int, model: str, now: float) -> list[Command]:
        """A request for `model` arrived; it is granted, queued or rejected."""
        slot = self.slots.get(model)
        if slot is None or self._removing(model):
            self._out.append(
                Reject(ticket, ModelNotFound(f"The model `{model}` does not exist.", param="model"))
            )
            return self._flush(now)
        if self.shutting_down:
            self._out.append(Reject(ticket, ShuttingDown("gpumux is shutting down", retry_after=5)))
            return self._flush(now)
        if slot.state is M.FAILED:
            if slot.retry_not_before is not None and now >= slot.retry_not_before:
                # Half-open: one more start attempt after the cool-down.
                self._set_state(slot, M.STOPPED)
                slot.start_failures = self._supervision.max_start_failures - 1
            else:
                self._out.append(Reject(ticket, self._unavailable(slot, now)))
                return self._flush(now)
        if len(slot.queue) >= slot.config.max_queue:
            retry = max(1.0, self.costs.op_cost(model, "wake", str(slot.eviction)))
            self._out.append(
                Reject(ticket, QueueFull(f"The queue for `{model}` is full.", retry_after=retry))
            )
            return self._flush(now)
        entry = Ticket(ticket, model, now, now + self._policy_config.request_timeout_secs)
        self.tickets[ticket] = entry
        slot.queue.append(entry)
        return self._flush(now)

    def release(self, ticket: int, now: float) -> list[Command]:
        """A granted request finished (or its client left mid-response)."""
        entry = self.tickets.pop(ticket, None)
        if entry is not None and entry.state is RequestState.GRANTED:
            self._ticket_state(entry, RequestState.RELEASED)
            slot = self.slots[entry.model]
            slot.leases.discard(ticket)
            slot.last_used_at = now
        return self._flush(now)

    def cancel(self, ticket: int, now: float) -> list[Command]:
        """The client left while queued; if it was granted meanwhile, this releases it."""
        entry = self.tickets.get(ticket)
        if entry is None:
            return self._flush(now)
        if entry.state is RequestState.GRANTED:
            return self.release(ticket, now)
        self._ticket_state(entry, RequestState.CANCELLED)
        self._drop_ticket(entry)
        return self._flush(now)

    def op_phase(self, op_id: int, state: ModelState, now: float) -> list[Command]:
        """An operation moved its model to an intermediate state (a wake fell back to cold)."""
        slot = self._slot_of_op(op_id)
        if slot is not None and slot.state is not state:
            self._set_state(slot, state)
        return self._flush(now)

    def op_done(self, outcome: OpOutcome, now: float) -> list[Command]:
        slot = self._slot_of_op(outcome.op_id)
        if slot is None or slot.op is None:
            return self._flush(now)
        op, slot.op = slot.op, None
        secs = now - slot.op_started_at
        if op.kind is OpKind.WAKE:
            self._wake_done(slot, op, outcome, secs, now)
        elif op.kind is OpKind.EVICT:
            self._evict_done(slot, op, outcome, secs, now)
        else:
            slot.pid = None
            self._set_state(slot, M.STOPPED)
            reply = self._restart_after_stop.pop(slot.alias, None)
            if reply is not None and not self.shutting_down:
                self._forced.append((slot.alias, reply))
            elif slot.start_failures and not self.shutting_down:
                self._judge_failures(slot, now)  # stopped because it was unhealthy
        return self._flush(now)

    def process_exited(self, model: str, pid: int, code: int, now: float) -> list[Command]:
        """A supervised tree's root exited. Expected exits (during an op) are the op's business."""
        slot = self.slots.get(model)
        if slot is None or slot.pid != pid:
            return self._flush(now)
        slot.pid = None
        if slot.op is not None:
            return self._flush(now)  # the running operation sees the failure itself
        self._out.append(Note("backend_crashed", {"model": model, "pid": pid, "code": code}))
        if slot.state in (M.READY, M.DRAINING, M.SLEEPING, M.SUSPENDED):
            was_ready_for = now - slot.ready_since if slot.ready_since is not None else 0.0
            slot.ready_since = None
            slot.drain_deadline = None
            slot.last_error = f"process exited with code {code}"
            slot.restarts += 1
            self._out.append(Restarted(model, "crash"))
            # A crash soon after becoming ready counts toward the crash-loop breaker
            # (judged when the stop below completes).
            if was_ready_for < self._supervision.restart_backoff_max_secs:
                slot.start_failures += 1
            else:
                slot.start_failures = 0
            slot.retry_not_before = now + self._backoff(slot) if slot.start_failures else now
            # The root is gone, but its EngineCore and workers may not be (they would keep
            # GPU memory and the image's PIDs): stop the whole tree before anything else.
            self._set_state(slot, M.STOPPING)
            self._start_op(slot, OpKind.STOP, (Step.STOP,), M.STOPPED, None, abort=True, now=now)
        return self._flush(now)

    def found_asleep(self, model: str, pid: int, now: float) -> list[Command]:
        """A ready backend reports it is asleep (someone called its /sleep): believe it.

        The level is unknown, so it wakes with the level-2 sequence, which is correct after
        either level (reload_weights after level 1 only re-reads the weights).
        """
        slot = self.slots.get(model)
        if slot is None or slot.pid != pid or slot.op is not None or slot.state is not M.READY:
            return self._flush(now)
        self._out.append(Note("backend_found_asleep", {"model": model, "pid": pid}))
        slot.ready_since = None
        slot.evicted_weights = WeightStrategy.DISCARD
        self._set_state(slot, M.SLEEPING)
        return self._flush(now)

    def health_failed(self, model: str, pid: int, now: float) -> list[Command]:
        """A live backend failed its health probes repeatedly: kill it (it restarts on demand)."""
        slot = self.slots.get(model)
        alive = (M.READY, M.SLEEPING, M.SUSPENDED)
        if slot is None or slot.pid != pid or slot.op is not None or slot.state not in alive:
            return self._flush(now)  # stale report: the owner's view wins
        slot.last_error = "failed its health checks"
        slot.restarts += 1
        self._out.append(Restarted(model, "unhealthy"))
        self._set_state(slot, M.STOPPING)
        self._start_op(slot, OpKind.STOP, (Step.STOP,), M.STOPPED, None, abort=True, now=now)
        slot.start_failures += 1  # judged when the stop completes (STOPPING cannot fail)
        slot.retry_not_before = now + self._backoff(slot)
        return self._flush(now)

    def tick(self, now: float) -> list[Command]:
        return self._flush(now)

    def begin_shutdown(self, now: float) -> list[Command]:
        """Refuse new work, fail the queues, and stop every tree once in-flight requests end."""
        self.shutting_down = True
        while self._forced:
            _, reply = self._forced.popleft()
            self._reply(reply, False, "gpumux is shutting down", 503)
        for slot in self.slots.values():
            while slot.queue:
                entry = slot.queue[0]
                self._ticket_state(entry, RequestState.REJECTED)
                self._drop_ticket(entry)
                self._out.append(
                    Reject(entry.ticket, ShuttingDown("gpumux is shutting down", retry_after=5))
                )
        return self._flush(now)

    def force_stop_all(self, now: float) -> list[Command]:
        """Shutdown's drain deadline passed: stop trees even with requests in flight."""
        for slot in self.slots.values():
            slot.leases.clear()
        return self._flush(now)

    @property
    def all_stopped(self) -> bool:
        return all(not s.process_alive and s.op is None for s in self.slots.values())

    def next_deadline(self) -> float | None:
        times: list[float] = [
            t.deadline for t in self.tickets.values() if t.state is RequestState.QUEUED
        ]
        for slot in self.slots.values():
            if slot.drain_deadline is not None and slot.state is M.DRAINING:
                times.append(slot.drain_deadline)
            # Backoff gates only a start that has not begun: a STARTING slot keeps its
            # (past) retry time, and counting it would make the runner spin.
            if slot.queue and slot.retry_not_before is not None and slot.state is M.STOPPED:
                times.append(slot.retry_not_before)
        if self._recheck_at is not None:
            times.append(self._recheck_at)
        return min(times, default=None)

    def snapshot(self, now: float) -> Snapshot:
        tenants = self._tenants()
        views = {
            alias: slot.view(
                wake_cost_secs=self._wake_cost(slot),
                evict_cost_secs=self.costs.op_cost(alias, "evict", str(slot.eviction)),
                drain_cost_secs=self.costs.op_cost(alias, "drain", str(slot.eviction)),
                # Only models with demand can be woken, so only they need placement.
                fits_now=bool(slot.queue)
                and slot.state in _STARTABLE
                and admit(alias, tenants, self._capacity, now).fits_now,
            )
            for alias, slot in self.slots.items()
        }
        switching = any(s.op is not None or s.state is M.DRAINING for s in self.slots.values())
        return Snapshot(now=now, models=views, switching=switching, pinned=self.pinned)

    # ---- admin inputs (each answers with one AdminReply) ----------------------------------

    def admin_switch(self, model: str, reply: int, now: float) -> list[Command]:
        """Make `model` ready now: drain and evict whoever must leave, ignoring min_active."""
        if self._admin_refused(model, reply):
            return self._flush(now)
        self._forced.append((model, reply))
        return self._flush(now)

    def admin_evict(self, model: str, reply: int, now: float) -> list[Command]:
        if self._admin_refused(model, reply):
            return self._flush(now)
        slot = self.slots[model]
        if slot.state is not M.READY:
            self._reply(reply, False, f"`{model}` is {slot.state.value}, not ready", 409)
        else:
            self._start_drain(slot, None, now)
            self._reply(reply, True, f"`{model}` is draining, then {slot.eviction}")
        return self._flush(now)

    def admin_restart(self, model: str, reply: int, now: float) -> list[Command]:
        if self._admin_refused(model, reply):
            return self._flush(now)
        slot = self.slots[model]
        if slot.op is not None or slot.state is M.DRAINING:
            self._reply(reply, False, f"`{model}` is busy ({slot.state.value})", 409)
        elif slot.process_alive:
            self._restart_after_stop[model] = reply
            self._set_state(slot, M.STOPPING)
            self._start_op(slot, OpKind.STOP, (Step.STOP,), M.STOPPED, None, abort=True, now=now)
        else:
            if slot.state is M.FAILED:
                self._reset(slot)
            self._forced.append((model, reply))
        return self._flush(now)

    def admin_reset(self, model: str, reply: int, now: float) -> list[Command]:
        if model not in self.slots:
            self._reply(reply, False, f"unknown model `{model}`", 404)
            return self._flush(now)
        slot = self.slots[model]
        was = slot.state
        self._reset(slot)
        self._reply(reply, True, f"`{model}` reset (was {was.value})")
        return self._flush(now)

    def admin_mode(self, mode: str, model: str | None, reply: int, now: float) -> list[Command]:
        """`manual` pins one model (never evicted, the only one woken); `auto` releases it."""
        if mode == "auto":
            self._pin(None)
            self._reply(reply, True, "automatic switching")
        elif mode == "manual":
            target = model or next(
                (s.alias for s in self.slots.values() if s.state is M.READY), None
            )
            if target is None or target not in self.slots:
                self._reply(reply, False, "manual mode needs a model (none is ready)", 400)
            else:
                self._pin(target)
                self._forced.append((target, reply))
        else:
            self._reply(reply, False, f"unknown mode {mode!r}", 400)
        return self._flush(now)

    @property
    def mode(self) -> str:
        return "manual" if self.pinned else "auto"

    def _pin(self, model: str | None) -> None:
        self.pinned = model
        for slot in self.slots.values():
            slot.pinned = slot.alias == model

    def _reset(self, slot: Slot) -> None:
        if slot.state is M.FAILED:
            self._set_state(slot, M.STOPPED)
        slot.start_failures = 0
        slot.retry_not_before = None
        slot.last_error = ""

    def _admin_refused(self, model: str, reply: int) -> bool:
        if model not in self.slots or self._removing(model):
            self._reply(reply, False, f"unknown model `{model}`", 404)
        elif self.shutting_down:
            self._reply(reply, False, "gpumux is shutting down", 503)
        else:
            return False
        return True

    def _reply(
        self,
        reply: int,
        ok: bool,
        detail: str,
        status: int = 200,
        data: dict[str, object] | None = None,
    ) -> None:
        self._out.append(AdminReply(reply, ok, detail, status, data or {}))

    def _advance_forced(self, now: float) -> None:
        """Serve the head of the forced queue: done when ready, failed when it cannot start."""
        while self._forced:
            model, reply = self._forced[0]
            slot = self.slots[model]
            if slot.state is M.READY:
                self._forced.popleft()
                last = self.last_switch.get(model)
                details: dict[str, object] = {"model": model}
                if last is not None:
                    details |= {
                        "switch_id": last.switch_id,
                        "victims": list(last.victims),
                        "outcome": last.outcome,
                        "duration_s": last.duration_secs,
                        "phases": last.phase_totals(),
                    }
                self._reply(reply, True, f"`{model}` is ready", data=details)
                continue
            if slot.state is M.FAILED:
                self._forced.popleft()
                self._reply(reply, False, f"`{model}` failed: {slot.last_error}", 503)
                continue
            if slot.state in _STARTABLE and slot.op is None:
                self._try_bring_up(slot, now, force=True)
            return

    # ---- config reload (SIGHUP) ---------------------------------------------------------

    def reload(self, config: Config, reply: int, now: float) -> list[Command]:
        """Apply a new model table: add new models, drain and stop removed ones, restart
        changed ones with their new config. Untouched models keep slot, queue and process.
        """
        if self.shutting_down:
            self._reply(reply, False, "gpumux is shutting down", 503)
            return self._flush(now)
        old = {a: s for a, s in self.slots.items() if not self._removing(a)}
        added = [a for a in config.models if a not in self.slots]
        removed = [a for a in old if a not in config.models]
        changed = [
            a
            for a in config.models
            if a in old
            and (old[a].config != config.models[a] or old[a].eviction != config.eviction_for(a))
        ]
        self._config = config
        residual = int(config.gpu.sleeping_residual_gib * 1024**3)
        for alias in added:
            self.slots[alias] = Slot(
                alias, config.models[alias], config.eviction_for(alias), residual_bytes=residual
            )
        for alias in removed + changed:
            self._retire(self.slots[alias], config.models.get(alias))
        self._out.append(
            Note("config_reloaded", {"added": added, "removed": removed, "changed": changed})
        )
        self._reply(
            reply,
            True,
            "config reloaded",
            data={"added": added, "removed": removed, "changed": changed},
        )
        return self._flush(now)

    def _removing(self, alias: str) -> bool:
        return alias in self._retiring and self._retiring[alias] is None

    def _retire(self, slot: Slot, new: ModelConfig | None) -> None:
        self._retiring[slot.alias] = new
        # Its next eviction is a plain stop: the process must go, whatever the strategy.
        slot.eviction = EvictionConfig(weights=WeightStrategy.RETAIN, process=ProcessStrategy.STOP)
        if new is not None:
            return  # a changed model keeps its queue: those requests wait for the restart
        gone = ModelNotFound(f"The model `{slot.alias}` was removed from the config.")
        while slot.queue:
            entry = slot.queue[0]
            self._ticket_state(entry, RequestState.REJECTED)
            self._drop_ticket(entry)
            self._out.append(Reject(entry.ticket, gone))
        for model, reply in [f for f in self._forced if f[0] == slot.alias]:
            self._forced.remove((model, reply))
            self._reply(reply, False, f"`{model}` was removed from the config", 404)
        if self.pinned == slot.alias:
            self._pin(None)
        if slot.alias in self._warmup and not slot.warming:
            self._warmup.remove(slot.alias)

    def _advance_retiring(self, now: float) -> None:
        """Walk each retiring model to `stopped`, then drop or re-create its slot."""
        for alias, new in list(self._retiring.items()):
            slot = self.slots[alias]
            if slot.op is not None or slot.state is M.DRAINING:
                continue  # the running operation or drain finishes first
            if slot.state is M.READY:
                self._start_drain(slot, None, now)
                continue
            if slot.process_alive:
                self._set_state(slot, M.STOPPING)
                self._start_op(
                    slot, OpKind.STOP, (Step.STOP,), M.STOPPED, None, abort=True, now=now
                )
                continue
            if new is None and (slot.leases or slot.queue):
                continue  # wait for the last release (the stop ended its streams)
            del self._retiring[alias]
            if slot.state in (M.FAILED, M.CHECKPOINTED):
                self._set_state(slot, M.STOPPED)  # a new config (or none) deserves a fresh start
            if new is None:
                del self.slots[alias]
                for switch in list(self.switches.values()):
                    if alias in switch.victims:
                        switch.victims.remove(alias)
                    if switch.target == alias:
                        del self.switches[switch.switch_id]
                self._out.append(Note("model_removed", {"model": alias}))
            else:
                slot.config = new
                slot.eviction = self._config.eviction_for(alias)
                slot.evicted_weights = None
                self._reset(slot)
                self._out.append(Note("model_reconfigured", {"model": alias}))

    # ---- the reconcile pass -----------------------------------------------------------

    def _flush(self, now: float) -> list[Command]:
        self._reconcile(now)
        out, self._out = self._out, []
        return out

    def _reconcile(self, now: float) -> None:
        self._advance_retiring(now)
        self._expire_tickets(now)
        for slot in self.slots.values():
            if slot.state is M.READY and slot.queue and not slot.warming:
                self._grant_queue(slot, now)
        self._cancel_needless_drains(now)
        for slot in self.slots.values():
            if slot.state is M.DRAINING:
                self._maybe_finish_drain(slot, now)
        if self.shutting_down:
            self._stop_idle_trees(now)
            return
        if self._warmup:
            self._advance_warmup(now)
            return
        self._advance_forced(now)
        if self._forced:
            return  # an operator's switch goes first; the policy resumes after it
        self._recheck_at = None
        if not any(slot.queue for slot in self.slots.values()):
            return  # policies only wake models with demand: nothing to ask
        decision = self._policy.decide(self.snapshot(now))
        self._recheck_at = decision.recheck_at
        wake = [
            m
            for m in decision.wake
            if (self.pinned is None or m == self.pinned) and m not in self._retiring
        ]
        blocked_gpus: set[int] = set()
        for target in wake:
            slot = self.slots[target]
            if slot.state not in _STARTABLE or blocked_gpus.intersection(slot.config.gpu_indices):
                continue
            if not self._try_bring_up(slot, now):
                blocked_gpus.update(slot.config.gpu_indices)

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

    def _tenants(self, *, force: bool = False) -> dict[str, Tenant]:
        return {
            alias: s.tenant(
                min_active_secs=0.0 if force else self._policy_config.min_active_secs,
                wake_cost_secs=self._wake_cost(s),
            )
            for alias, s in self.slots.items()
        }

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

    # ---- requests ---------------------------------------------------------------------

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

    def _reject_queue(self, slot: Slot, error: ModelUnavailable) -> None:
        while slot.queue:
            entry = slot.queue[0]
            self._ticket_state(entry, RequestState.REJECTED)
            self._drop_ticket(entry)
            self._out.append(Reject(entry.ticket, error))

    def _drop_ticket(self, entry: Ticket) -> None:
        self.tickets.pop(entry.ticket, None)
        slot = self.slots[entry.model]
        if entry in slot.queue:
            slot.queue.remove(entry)

    def _ticket_state(self, entry: Ticket, target: RequestState) -> None:
        entry.state = transition(
            REQUEST_TRANSITIONS, entry.state, target, what=f"request {entry.ticket}"
        )

    def _unavailable(self, slot: Slot, now: float) -> ModelUnavailable:
        retry = max(1.0, (slot.retry_not_before or now) - now)
        detail = f": {slot.last_error}" if slot.last_error else ""
        return ModelUnavailable(
            f"The model `{slot.alias}` is unavailable{detail}", retry_after=retry
        )

    # ---- draining and evicting ----------------------------------------------------------

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
        steps, resting = evict_plan(slot.eviction)
        secs = now - (slot.drain_started_at if slot.drain_started_at is not None else now)
        if slot.drain_for is not None and secs > 0:
            # How long a busy model takes to let go: policies plan tours of models with it
            # (an idle model lets go at once, which says nothing). Not a switch cost.
            self.costs.observe_op(slot.alias, "drain", str(slot.eviction), secs)
        self._set_state(slot, M.EVICTING)
        slot.drain_deadline = None
        slot.drain_started_at = None
        self._start_op(
            slot, OpKind.EVICT, steps, resting, slot.drain_for, abort=bool(slot.leases), now=now
        )

    def _cancel_needless_drains(self, now: float) -> None:
        """A switch whose target lost all demand before its wake began is called off.

        Victims still draining for it go back to serving; victims already evicting finish.
        """
        for switch in list(self.switches.values()):
            target = self.slots[switch.target]
            forced = any(model == target.alias for model, _ in self._forced)
            if target.queue or forced or target.state not in _STARTABLE:
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
        switch = self.switches.get(op.switch_id) if op.switch_id is not None else None
        if switch is not None:
            switch.phases.extend(outcome.phase_secs)
        slot.drain_for = None

    # ---- waking -----------------------------------------------------------------------

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

    # ---- warm-up, shutdown, plumbing ----------------------------------------------------

    def _advance_warmup(self, now: float) -> None:
        """Bring each model up once (answering a 1-token request) and evict it again."""
        if any(s.op is not None or s.state is M.DRAINING for s in self.slots.values()):
            return
        slot = self.slots[self._warmup[0]]
        if slot.state in _STARTABLE:
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
        self._out.append(StateChanged(slot.alias, before, target))

    def _wake_cost(self, slot: Slot) -> float:
        if slot.state is M.STOPPED:
            return self.costs.op_cost(slot.alias, "cold_start", str(slot.eviction))
        return self.costs.op_cost(slot.alias, "wake", str(slot.eviction))


def _process_for(state: ModelState, eviction: EvictionConfig) -> ProcessStrategy:
    """The process strategy a model in `state` was evicted with (labels costs and metrics)."""
    return {
        M.SLEEPING: ProcessStrategy.KEEP_RUNNING,
        M.SUSPENDED: ProcessStrategy.CUDA_SUSPEND,
        M.CHECKPOINTED: ProcessStrategy.CHECKPOINT,
    }.get(state, eviction.process if state is not M.STOPPED else ProcessStrategy.STOP)
