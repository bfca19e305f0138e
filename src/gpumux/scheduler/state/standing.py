"""What requests may do without waking the scheduler task: take a standing grant (a lease
granted ahead) and, while nothing waits on it, release a lease.

Owns: each model's standing grants (tickets granted to no request yet, in `STANDING`),
their ticket numbers (negative, so they never meet the runner's, which count up from 1),
turning one into an ordinary lease when the runner reports it taken (`claimed`), and the
end-of-step pass that stocks a model that may have them and withdraws them from one that
may not (`end_step`), and whether a release may reach the core late (`end_step`'s answer: only
when no queue waits for room, no drain or removal for a last lease, and no shutdown).
Does not: hold the shelf requests take from, or the releases not yet reported: the runner
does, carries out every `Stock` in the same step, before any other task runs, and reports
what requests did unasked within `policy.lease_sync_ms`.

Why this is safe with one owner: a standing grant is what `Submit` would get at once from
a ready model with room and nothing queued, so a request that takes one gets exactly what
asking would have given it, provided nothing changed meanwhile. Only the owner's steps
change anything, and each begins by learning every claim since the last one (the runner
passes them in) and ends with this pass, which withdraws what no longer holds before the
step returns. A taken grant counts as a lease from the moment it was taken (its `at`), for
idle timers and demand alike; an untaken one counts only against `max_concurrency`.
Pure.
"""

from __future__ import annotations

import itertools

from gpumux.core.states import REQUEST_TRANSITIONS, RequestState, transition
from gpumux.scheduler.messages import Grant, QueueWait, Stock
from gpumux.scheduler.state.models import M, Models
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.queues import Queues
from gpumux.scheduler.state.retirements import Retirements
from gpumux.scheduler.state.slots import Slot, Ticket
from gpumux.scheduler.state.warmup import Warmup

#: What a model that may have standing grants starts with (see `_sizes`).
FIRST_STOCK = 4


class StandingGrants:
    def __init__(
        self,
        models: Models,
        queues: Queues,
        warmup: Warmup,
        retirements: Retirements,
        per_model: int,
    ) -> None:
        self._models = models
        self._queues = queues
        self._warmup = warmup
        self._retirements = retirements
        self._per_model = per_model
        self._ids = itertools.count(-1, -1)
        #: model → its standing tickets, and the process they were granted for.
        self._stands: dict[str, dict[int, Ticket]] = {}
        self._targets: dict[str, tuple[int | None, int]] = {}
        # How many each model stands now, and how many of them were taken since the last
        # restock: a model starts with a few and doubles while half of them go between
        # two steps, up to `per_model`, so a model that just woke (a switch) costs a few
        # grants made and withdrawn, and a busy one seldom finds its shelf empty.
        self._sizes: dict[str, int] = {}
        self._taken: dict[str, int] = {}

    def count(self, alias: str) -> int:
        return len(self._stands.get(alias, ()))

    def claimed(self, ticket: int, at: float, out: Outbox) -> None:
        """A request took `ticket` at `at`: from now on it is a lease like any other."""
        for stands in self._stands.values():
            entry = stands.pop(ticket, None)
            if entry is not None:
                break
        else:
            return  # not a standing grant: nothing to count
        alias = entry.model
        self._taken[alias] = self._taken.get(alias, 0) + 1
        entry.enqueued_at = at
        self._queues.lease(entry, self._models.slots[alias], at)
        self._models.demand.arrived(alias, at)
        out.add(QueueWait(alias, 0.0))

    def end_step(self, shutting_down: bool, out: Outbox) -> bool:
        """Restock every model as the step leaves things; whether a release may wait."""
        slots = self._models.slots.values()
        if self._per_model:
            self._restock(shutting_down, out)
        if shutting_down or self._retirements.pending():
            return False
        return not any(slot.queue or slot.state is M.DRAINING for slot in slots)

    def _may_stand(self, slot: Slot) -> bool:
        """Whether `slot`'s next request would be granted on arrival: what a standing grant
        promises."""
        return (
            slot.state is M.READY
            and not slot.queue
            and slot.op is None
            and not self._warmup.warming(slot.alias)
            and not self._retirements.retiring(slot.alias)
        )

    def _restock(self, shutting_down: bool, out: Outbox) -> None:
        """Bring every model's stock to what it may hold now: none, or up to `per_model`
        within `max_concurrency` (leases in flight count against it)."""
        slots = self._models.slots
        for alias in [a for a in self._stands if a not in slots]:
            self._withdraw(alias, out)  # a reload removed it
        for alias, slot in slots.items():
            stands = self._stands.get(alias)
            if shutting_down or not self._may_stand(slot):
                if stands:
                    self._withdraw(alias, out)
                continue
            want = self._size(alias)
            cap = slot.config.max_concurrency
            if cap is not None:
                want = max(0, min(want, cap - len(slot.leases)))
            have = self.count(alias)
            target = (slot.pid, slot.config.port)
            # Granted for a process that is gone, or more than a lowered cap allows.
            replace = bool(stands) and (self._targets.get(alias) != target or want < have)
            if replace:
                self._drop(alias)
                have = 0
            elif want == have:
                continue
            stands = self._stands.setdefault(alias, {})
            self._targets[alias] = target
            fresh = []
            for _ in range(want - have):
                ticket = next(self._ids)
                stands[ticket] = Ticket(ticket, alias, 0.0, 0.0, RequestState.STANDING)
                fresh.append(Grant(ticket, alias, slot.pid, slot.config.port))
            out.add(Stock(alias, tuple(fresh), replace=replace))
        self._taken.clear()

    def _size(self, alias: str) -> int:
        size = self._sizes.get(alias, min(FIRST_STOCK, self._per_model))
        if 2 * self._taken.get(alias, 0) >= size:
            size = min(2 * size, self._per_model)
        self._sizes[alias] = size
        return size

    def make_room(self, slot: Slot, out: Outbox) -> None:
        """`slot` has a queue (a request that found the shelf empty, or one that reached
        the core after a restock): take back its untaken grants if they would keep a queued
        request from a lease under `max_concurrency`, so none waits behind a grant nobody
        holds. Unbounded, they stand: nothing waits for room."""
        cap = slot.config.max_concurrency
        have = self.count(slot.alias)
        if have and cap is not None and len(slot.leases) + have + len(slot.queue) > cap:
            self._withdraw(slot.alias, out)

    def _withdraw(self, alias: str, out: Outbox) -> None:
        self._drop(alias)
        self._sizes.pop(alias, None)  # it starts small again when it may stand
        out.add(Stock(alias, (), replace=True))

    def _drop(self, alias: str) -> None:
        for entry in self._stands.pop(alias, {}).values():
            entry.state = self._set(entry, RequestState.WITHDRAWN)
        self._targets.pop(alias, None)

    @staticmethod
    def _set(entry: Ticket, target: RequestState) -> RequestState:
        return transition(REQUEST_TRANSITIONS, entry.state, target, what=f"grant {entry.ticket}")
