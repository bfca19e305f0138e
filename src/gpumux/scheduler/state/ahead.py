"""Eviction ahead of need, in the scheduler: which idle models leave in the background.

Owns: the pass that offers each idle READY model (past `min_active_secs`, not exempt) to
`policy.ahead.should_leave` against every model that is not awake and would pick it as
a victim (placement's `admit`, with the policy's victim rank), and starts its drain and
eviction through `Moves` (drain rules unchanged; it is idle, so the eviction starts at
once). Switched by `policy.evict_ahead`. Also the next moment the verdict could change,
for the core's deadline.
Does not: predict demand (`policy.demand`) or choose the level of the eviction (the
model's own, or `auto`'s choice in `Moves`). Pure: `now` is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gpumux.core.config import PolicyConfig
from gpumux.policy.ahead import AHEAD_MARGIN, Contender, Idler, should_leave
from gpumux.scheduler.state.models import STARTABLE, M, Models
from gpumux.scheduler.state.moves import Moves
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.slots import Slot
from gpumux.scheduler.state.switches import SwitchBook


class Ahead:
    def __init__(
        self, models: Models, moves: Moves, switches: SwitchBook, policy: PolicyConfig
    ) -> None:
        self._models = models
        self._moves = moves
        self._switches = switches
        self.enabled = policy.evict_ahead
        self._min_active = policy.min_active_secs
        self._recheck_at: float | None = None

    def advance(self, now: float, out: Outbox, exempt: Callable[[str], bool]) -> None:
        """Evict ahead every idle model the rule says should leave now."""
        self._recheck_at = None
        if not self.enabled:
            return
        for slot in list(self._models.slots.values()):
            if slot.state is not M.READY or not slot.idle or slot.op is not None:
                continue
            if exempt(slot.alias) or self._models.protected(slot.alias):
                continue
            evictable_at = (slot.ready_since or 0.0) + self._min_active
            if evictable_at > now:
                self._later(evictable_at)
                continue
            contender = self._contender(slot, now)
            if contender is None:
                continue
            out.note(
                "evict_ahead",
                {"model": slot.alias, "for": contender.alias, "queued": contender.queued},
            )
            self._moves.start_drain(slot, None, now, out)
            self._switches.left_ahead(slot.alias, slot.config.gpu_indices)

    def deadlines(self, *, after: float) -> list[float]:
        """When the verdict could next change; a time not `after` the last input is stale
        (its pass was skipped, e.g. while an operator's switch ran) and left out."""
        at = self._recheck_at
        return [at] if at is not None and at > after else []

    def _contender(self, slot: Slot, now: float) -> Contender | None:
        """The first model `slot` should leave for now, else None (noting when to look again)."""
        others = self._could_contend(slot)
        if not others:
            # Nothing could take its place until some input changes the table (a state,
            # a switch, the pinned model), and every input reconciles: no prediction to
            # make, no time to look again. The common case of one busy model per GPU,
            # where this pass runs after every request.
            return None
        demand = self._models.demand
        idler = Idler(
            slot.alias,
            demand.next_at(slot.alias, now),
            self._models.evict_cost(slot) + self._models.wake_cost(slot),
        )
        self._later(self._when_idle_enough(slot, idler, now))
        for other in others:
            if other.retry_not_before is not None and other.retry_not_before > now:
                continue
            contender = Contender(other.alias, len(other.queue), demand.next_at(other.alias, now))
            if not should_leave(idler, contender, now):
                continue
            admission = self._models.admit(other.alias, now)
            if slot.alias in admission.victims:
                return contender
        return None

    def _could_contend(self, slot: Slot) -> list[Slot]:
        """The models that may be woken in `slot`'s place, whatever the time: startable,
        not switching, sharing a GPU with it, and the pinned one in manual mode."""
        gpus = set(slot.config.gpu_indices)
        pinned = self._models.pinned
        return [
            other
            for other in self._models.slots.values()
            if other is not slot
            and other.state in STARTABLE
            and other.switch_id is None
            and pinned in (None, other.alias)
            and not gpus.isdisjoint(other.config.gpu_indices)
        ]

    def _when_idle_enough(self, slot: Slot, idler: Idler, now: float) -> float | None:
        """When `slot`'s predicted idle time could first cover its margin (predictions of a
        quiet model drift later as its decayed rate falls)."""
        demand = self._models.demand.of(slot.alias)
        late = demand.overdue_at()
        if late > now and math.isfinite(late):
            return late  # then the prediction becomes the memoryless one
        if demand.last_at is None or demand.rate <= 0:
            return None
        need = AHEAD_MARGIN * idler.round_trip_secs
        # 1 / (rate · e^(−(t−last)/τ)) ≥ need  ⇔  t ≥ last + τ · ln(need · rate)
        at = demand.last_at + demand.time_constant * math.log(max(1e-12, need * demand.rate))
        return at if at > now else None

    def _later(self, when: float | None) -> None:
        if when is not None and math.isfinite(when):
            self._recheck_at = when if self._recheck_at is None else min(self._recheck_at, when)
