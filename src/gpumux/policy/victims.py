"""Who leaves the GPU for a wake: GreedyDual-Size-Frequency over learned costs and demand.

Owns: the rank placement orders candidate victims by (lowest leaves first).
The rule: a candidate's value of staying is

    H = F × C / S

F is its decayed arrival rate (`policy.demand`: how soon it is needed again, following
drift), C its learned round trip (evict + wake: what sending it away costs if it is
needed back), S the GPU memory its eviction frees (GiB). H is the expected price per
second per GiB of keeping it away; the cheapest to keep away leaves first. This is
GreedyDual-Size-Frequency (Cherkasova 1998) with the aging clock L replaced by the decay
of F (old popularity fades on its own, so no clock is needed), and it leans towards
Belady's rule (evict what is needed furthest ahead): F is the inverse of the expected
time to the next request. Ties (no demand seen for either) fall back to least recently
used. Placement decides who *could* leave (never pinned, never inside min_active_secs,
idle before busy); this decides who *does*.
Does not: decide feasibility or when to switch. Pure.
"""

from __future__ import annotations

from gpumux.core.config import GIB
from gpumux.core.placement import Tenant

#: A floor on the freed size so that a model freeing (almost) nothing is not given an
#: infinite value.
MIN_GIB = 0.01


def value_of_staying(tenant: Tenant, freed_bytes: int) -> float:
    """GDSF's H: expected re-fetch cost per second per GiB freed if `tenant` leaves."""
    cost = tenant.evict_cost_secs + tenant.wake_cost_secs
    return tenant.reuse_rate * cost / max(MIN_GIB, freed_bytes / GIB)


def gdsf_rank(tenant: Tenant, freed_bytes: int) -> tuple[float, ...]:
    """Lowest value of staying first; then least recently used."""
    return (value_of_staying(tenant, freed_bytes), tenant.last_used_at)
