"""The scheduler's decision engine: the one owner of queues, leases and model states.

Owns: the inputs (a request, a release, a cancellation, an operation's outcome, a process
exit, a health report, a tick, shutdown) and the reconcile pass that follows each one:
expire deadlines, grant leases, finish drains, advance warm-up, forced switches and
reloads, then ask the policy and bring its choices up through placement. Every input
returns the commands to carry out (grant or reject requests, start an evict/wake
operation, observations for metrics and logs).
Does not: await, perform I/O or read the clock. The async runner (`scheduler`) and the
simulator (`simulate`) feed it inputs with `now` and execute its commands, so the same
logic runs in real and virtual time. The state and the switch mechanics live in the
class chain `scheduler_base` → `scheduler_moves` → `scheduler_admin` → here.
"""

from __future__ import annotations

from gpumux.core.config import WeightStrategy
from gpumux.core.errors import ModelNotFound, QueueFull, ShuttingDown
from gpumux.core.eviction import Step
from gpumux.core.placement import admit
from gpumux.core.states import (
    ModelState,
    RequestState,
)
from gpumux.policy.base import Snapshot
from gpumux.scheduler.messages import (
    Command,
    Note,
    OpKind,
    OpOutcome,
    Reject,
    Restarted,
)
from gpumux.scheduler.state.admin import CoreAdmin
from gpumux.scheduler.state.base import STARTABLE, M
from gpumux.scheduler.state.slots import Ticket


class SchedulerCore(CoreAdmin):
    """Single-owner state machine. Not thread-safe by design: one task drives it."""

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
                and slot.state in STARTABLE
                and admit(alias, tenants, self._capacity, now).fits_now,
            )
            for alias, slot in self.slots.items()
        }
        switching = any(s.op is not None or s.state is M.DRAINING for s in self.slots.values())
        return Snapshot(now=now, models=views, switching=switching, pinned=self.pinned)

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
        self._relieve_host_pressure(now)
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
            if slot.state not in STARTABLE or blocked_gpus.intersection(slot.config.gpu_indices):
                continue
            if not self._try_bring_up(slot, now):
                blocked_gpus.update(slot.config.gpu_indices)
