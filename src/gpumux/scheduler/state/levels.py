"""`eviction: "auto"` in the scheduler: gathers what `policy.levels` needs and notes its choice.

Owns: for a model whose eviction is `"auto"`, at the moment its drain ends: the levels it
may use (sleep mode, a `checkpoint` section), each level's price for it (learned per
model and level by `SwitchCosts`, else the size-scaled prior), the host RAM that may
still be pinned (`HostBudget.room_bytes`), and the predicted time until it is needed
again (`Models.demand`); then `policy.levels.choose_level` decides. The choice is noted
(`auto_eviction`) with every level's price.
Does not: carry the eviction out (`Moves`) or guard host RAM afterwards (the budget's
guard still applies to the chosen level). Pure: `now` is passed in.
"""

from __future__ import annotations

from gpumux.core.config import GIB, Config, EvictionConfig, ProcessStrategy
from gpumux.core.placement import Tenant, footprint
from gpumux.core.states import ModelState
from gpumux.policy.costs import SwitchCosts
from gpumux.policy.levels import (
    Sizes,
    available_levels,
    choose_level,
    prior_price,
    prior_secs,
)
from gpumux.scheduler.state.host_budget import HostBudget
from gpumux.scheduler.state.models import Models
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.slots import Slot

#: Without `host_memory_gib`, weights are taken as this share of the GPU reservation
#: (vLLM's reservation also holds the KV cache; the measured 30.7 GB model sat in a 42 GB
#: reservation, and the simulator's profiles assume the same share).
WEIGHTS_SHARE = 0.75


class AutoLevels:
    def __init__(self, models: Models, host: HostBudget, costs: SwitchCosts, config: Config):
        self._models = models
        self._host = host
        self._costs = costs
        self._checkpoint = config.checkpoint is not None  # suspend and CRIU need the section

    def sizes(self, slot: Slot) -> Sizes:
        gpu = sum(footprint(self._tenant(slot), ModelState.READY, self._models.capacity).values())
        weights = slot.config.host_memory_gib
        weights_bytes = int(weights * GIB) if weights is not None else int(WEIGHTS_SHARE * gpu)
        return Sizes(weights_bytes=weights_bytes, gpu_bytes=gpu, has_backup=slot.l1_backup)

    def price(self, slot: Slot, level: EvictionConfig, sizes: Sizes) -> float:
        """evict + wake at `level` for `slot`: learned where measured, else the prior."""
        wake_op = "cold_start" if level.process is ProcessStrategy.STOP else "wake"
        evict = self._costs.learned(slot.alias, "evict", str(level))
        wake = self._costs.learned(slot.alias, wake_op, str(level))
        if evict is None and wake is None:
            return prior_price(level, sizes)
        evict = evict if evict is not None else prior_secs(level, "evict", sizes)
        return evict + (wake if wake is not None else prior_secs(level, "wake", sizes))

    def choose(self, slot: Slot, now: float, out: Outbox) -> EvictionConfig:
        sizes = self.sizes(slot)
        levels = available_levels(
            sleep_mode=slot.config.enable_sleep_mode, checkpoint=self._checkpoint
        )
        choice = choose_level(
            levels,
            lambda level: self.price(slot, level, sizes),
            sizes,
            host_room=self._host.room_bytes(),
            reuse_in=self._models.demand.next_at(slot.alias, now) - now,
        )
        out.note(
            "auto_eviction",
            {
                "model": slot.alias,
                "eviction": str(choice.level),
                "why": choice.why,
                "prices_s": {k: round(v, 3) for k, v in choice.prices.items()},
            },
        )
        return choice.level

    def _tenant(self, slot: Slot) -> Tenant:
        return slot.tenant(min_active_secs=0.0, wake_cost_secs=0.0)
