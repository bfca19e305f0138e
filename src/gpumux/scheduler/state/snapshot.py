"""What the policy sees: the model table as a frozen `Snapshot`, as of `now`.

Owns: the copy of each slot into a `ModelView` with its learned costs (wake, evict,
drain), its demand estimate (decayed arrival rate, predicted next request) and whether
placement could wake it now without evicting anyone.
Does not: decide anything, or keep anything between calls. Pure.
"""

from __future__ import annotations

from gpumux.core.placement import admit
from gpumux.policy.base import Snapshot
from gpumux.policy.costs import SwitchCosts
from gpumux.scheduler.state.models import STARTABLE, Models


def policy_snapshot(models: Models, costs: SwitchCosts, now: float) -> Snapshot:
    tenants = models.tenants(now)
    capacity = models.capacity
    views = {
        alias: slot.view(
            wake_cost_secs=models.wake_cost(slot),
            evict_cost_secs=costs.op_cost(alias, "evict", str(slot.eviction)),
            drain_cost_secs=costs.op_cost(alias, "drain", str(slot.eviction)),
            # Only models with demand can be woken, so only they need placement.
            fits_now=bool(slot.queue)
            and slot.state in STARTABLE
            and admit(alias, tenants, capacity, now).fits_now,
            arrival_rate=models.demand.rate_at(alias, now),
            next_arrival_at=models.demand.next_at(alias, now),
        )
        for alias, slot in models.slots.items()
    }
    return Snapshot(now=now, models=views, switching=models.busy, pinned=models.pinned)
