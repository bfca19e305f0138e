"""Requests as the scheduler holds them: tickets, per-model queues, leases.

Owns: the ticket table and each ticket's lifecycle (queued → granted → released, or
rejected, timed out, cancelled; always through `states.transition()`), queue admission
(`max_queue`), granting a ready model's queue up to its `max_concurrency`, request
deadlines, and the one way to reject a whole queue.
Does not: decide which model is ready or why a queue is refused (callers pass the
error); the per-model queue and lease set live on the `Slot` they belong to. Pure.
"""

from __future__ import annotations

from collections.abc import Callable

from gpumux.core.errors import GpumuxError, QueueFull, QueueTimeout
from gpumux.core.states import REQUEST_TRANSITIONS, RequestState, transition
from gpumux.policy.costs import SwitchCosts
from gpumux.scheduler.messages import Grant, QueueWait, Reject
from gpumux.scheduler.state.models import Models
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.slots import Slot, Ticket


class Queues:
    def __init__(self, models: Models, costs: SwitchCosts, request_timeout_secs: float) -> None:
        self.tickets: dict[int, Ticket] = {}
        self._models = models
        self._costs = costs
        self._timeout_secs = request_timeout_secs

    def enqueue(self, ticket: int, slot: Slot, now: float, out: Outbox) -> None:
        """Queue `ticket` for `slot`, or reject it when the queue is full."""
        if len(slot.queue) >= slot.config.max_queue:
            retry = max(1.0, self._costs.op_cost(slot.alias, "wake", str(slot.eviction)))
            error = QueueFull(f"The queue for `{slot.alias}` is full.", retry_after=retry)
            out.add(Reject(ticket, error))
            return
        entry = Ticket(ticket, slot.alias, now, now + self._timeout_secs)
        self.tickets[ticket] = entry
        slot.queue.append(entry)

    def grant_all(self, slot: Slot, now: float, out: Outbox) -> None:
        """`slot` is ready: queued requests get a lease on its current process, in arrival
        order, up to `max_concurrency` leases; the rest wait for a release."""
        cap = slot.config.max_concurrency
        while slot.queue and (cap is None or len(slot.leases) < cap):
            entry = slot.queue.popleft()
            self.lease(entry, slot, now)
            out.add(QueueWait(slot.alias, now - entry.enqueued_at))
            out.add(Grant(entry.ticket, slot.alias, slot.pid, slot.config.port))

    def lease(self, entry: Ticket, slot: Slot, now: float) -> None:
        """`entry` holds a lease on `slot` from `now` (granted from the queue, or a standing
        grant a request took)."""
        self._set(entry, RequestState.GRANTED)
        self.tickets[entry.ticket] = entry
        slot.leases.add(entry.ticket)
        slot.last_used_at = now

    def release(self, ticket: int, now: float) -> None:
        entry = self.tickets.pop(ticket, None)
        if entry is not None and entry.state is RequestState.GRANTED:
            self._set(entry, RequestState.RELEASED)
            # Gone only if shutdown's force stop dropped this lease and a reload had removed
            # the model: nothing is left to update.
            slot = self._models.slots.get(entry.model)
            if slot is not None:
                slot.leases.discard(ticket)
                slot.last_used_at = now

    def cancel(self, ticket: int, now: float) -> None:
        entry = self.tickets.get(ticket)
        if entry is None:
            return
        if entry.state is RequestState.GRANTED:
            self.release(ticket, now)
            return
        self._set(entry, RequestState.CANCELLED)
        self._drop(entry)

    def expire(self, now: float, out: Outbox) -> None:
        for slot in self._models.slots.values():
            for entry in [t for t in slot.queue if t.deadline <= now]:
                self._set(entry, RequestState.TIMED_OUT)
                self._drop(entry)
                error = QueueTimeout(
                    f"Timed out after {self._timeout_secs:g}s waiting for `{slot.alias}`."
                )
                out.add(Reject(entry.ticket, error))

    def reject_all(self, slot: Slot, error: Callable[[], GpumuxError], out: Outbox) -> None:
        """Answer every request queued for `slot` with `error()`, in arrival order."""
        while slot.queue:
            entry = slot.queue[0]
            self._set(entry, RequestState.REJECTED)
            self._drop(entry)
            out.add(Reject(entry.ticket, error()))

    def drop_leases(self) -> None:
        """Shutdown gave up on requests in flight: their trees may be stopped under them."""
        for slot in self._models.slots.values():
            slot.leases.clear()

    def deadlines(self) -> list[float]:
        # The queued tickets are exactly those in the slots' queues (every move out of
        # QUEUED also takes the ticket off its queue), and those are what `expire` walks.
        # Read there, not from `tickets`: that table also holds every granted lease, so a
        # busy model's 64 streams would be walked on every step for nothing.
        return [entry.deadline for slot in self._models.slots.values() for entry in slot.queue]

    def _set(self, entry: Ticket, target: RequestState) -> None:
        what = f"request {entry.ticket}"
        entry.state = transition(REQUEST_TRANSITIONS, entry.state, target, what=what)

    def _drop(self, entry: Ticket) -> None:
        self.tickets.pop(entry.ticket, None)
        slot = self._models.slots[entry.model]
        if entry in slot.queue:
            slot.queue.remove(entry)
