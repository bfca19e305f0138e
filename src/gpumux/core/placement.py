"""Memory-aware placement: which models fit on which GPUs, and who must leave for a wake.

Owns: the accounting of design §4 (an awake model reserves `utilization × capacity` on
each of its GPUs, a sleeping one its residual, everything else nothing) and who *could*
leave for a wake: READY models sharing a GPU with the target, never a pinned one nor one
still inside `min_active_secs`; idle ones are taken before busy ones (a busy one costs
a drain). Among those, *who does* leave is the policy's rank (`VictimRank`: the scheduler
passes `policy.victims.gdsf_rank`), lowest first; without one, least recently used.
Does not: decide *when* to switch (policies) or evict anything (the scheduler). Pure:
`now` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gpumux.core.states import AWAKE_STATES, ModelState

#: States whose footprint is about to shrink (an eviction is already under way).
_LEAVING = frozenset({ModelState.DRAINING, ModelState.EVICTING, ModelState.STOPPING})


@dataclass(frozen=True)
class Tenant:
    """One model as placement sees it."""

    alias: str
    gpus: tuple[int, ...]
    utilization: float
    state: ModelState
    residual_bytes: int  # GPU bytes per GPU while sleeping (CUDA context)
    resting_state: ModelState  # where its configured eviction leaves it
    idle: bool  # no in-flight and no queued requests
    last_used_at: float
    evictable_at: float  # min_active_secs: not a victim before this time
    wake_cost_secs: float = 0.0  # estimate to bring it back (cheaper = better victim)
    pinned: bool = False
    #: While stopping, or evicting past a step that freed its GPU (`policy.overlap`): the
    #: state whose memory it still holds.
    holds: ModelState | None = None
    evict_cost_secs: float = 0.0  # learned estimate of sending it away
    reuse_rate: float = 0.0  # decayed arrivals per second (how soon it is needed again)


#: A candidate victim and the GPU bytes its eviction frees → its rank (lowest leaves first).
VictimRank = Callable[[Tenant, int], tuple[float, ...]]


def lru_rank(tenant: Tenant, freed_bytes: int) -> tuple[float, ...]:
    """The rank without a policy: least recently used first, then cheapest to bring back."""
    return (tenant.last_used_at, tenant.wake_cost_secs)


@dataclass(frozen=True)
class Admission:
    """The answer for one wake: start now, evict these first, wait, or never."""

    fits_now: bool
    victims: tuple[str, ...] = ()
    wait_until: float | None = None  # a victim becomes evictable then
    impossible: str | None = None  # can never fit: the request should fail
    reason: str = ""  # why it is blocked for now (for logs and status)

    @property
    def blocked(self) -> bool:
        return not self.fits_now and not self.victims


def footprint(tenant: Tenant, state: ModelState, capacity: Mapping[int, int]) -> dict[int, int]:
    """GPU bytes `tenant` holds on each of its GPUs when in `state`."""
    if state in AWAKE_STATES:
        return {g: int(tenant.utilization * capacity[g]) for g in tenant.gpus}
    if state is ModelState.SLEEPING:
        return dict.fromkeys(tenant.gpus, tenant.residual_bytes)
    return dict.fromkeys(tenant.gpus, 0)


def usage(
    tenants: Iterable[Tenant], capacity: Mapping[int, int], *, after_evictions: bool
) -> dict[int, int]:
    """Bytes in use per GPU now, or once the evictions already under way have finished."""
    used = dict.fromkeys(capacity, 0)
    for tenant in tenants:
        if after_evictions and tenant.state in _LEAVING:
            state = tenant.resting_state
        else:
            state = tenant.holds or tenant.state
        for gpu, nbytes in footprint(tenant, state, capacity).items():
            used[gpu] = used.get(gpu, 0) + nbytes
    return used


def _fits(need: Mapping[int, int], used: Mapping[int, int], capacity: Mapping[int, int]) -> bool:
    return all(used.get(g, 0) + n <= capacity[g] for g, n in need.items())


def freed_bytes(tenant: Tenant, capacity: Mapping[int, int]) -> int:
    """GPU bytes `tenant`'s eviction (to its resting state) gives back, over all its GPUs."""
    awake = footprint(tenant, ModelState.READY, capacity)
    rest = footprint(tenant, tenant.resting_state, capacity)
    return sum(awake[g] - rest[g] for g in tenant.gpus)


def admit(
    target: str,
    tenants: Mapping[str, Tenant],
    capacity: Mapping[int, int],
    now: float,
    rank: VictimRank = lru_rank,
) -> Admission:
    """Can `target` be woken now; if not, which awake models must be evicted first?"""
    me = tenants[target]
    missing = [g for g in me.gpus if g not in capacity]
    if missing:
        return Admission(False, impossible=f"GPU {missing[0]} does not exist")
    need = footprint(me, ModelState.READY, capacity)
    if any(n > capacity[g] for g, n in need.items()):
        return Admission(False, impossible="needs more memory than the GPU has")
    others = [t for t in tenants.values() if t.alias != target]
    if _fits(need, usage(others, capacity, after_evictions=False), capacity):
        return Admission(True)
    projected = usage(others, capacity, after_evictions=True)
    if _fits(need, projected, capacity):
        return Admission(False)  # evictions already under way will make room
    shared = set(me.gpus)
    candidates = sorted(
        (
            t
            for t in others
            if t.state is ModelState.READY and not t.pinned and shared.intersection(t.gpus)
        ),
        key=lambda t: (not t.idle, rank(t, freed_bytes(t, capacity)), t.alias),
    )
    victims: list[str] = []
    later: list[float] = []
    for victim in candidates:
        if victim.evictable_at > now:
            later.append(victim.evictable_at)
            continue
        freed = footprint(victim, ModelState.READY, capacity)
        rest = footprint(victim, victim.resting_state, capacity)
        for gpu in victim.gpus:
            projected[gpu] -= freed[gpu] - rest[gpu]
        victims.append(victim.alias)
        if _fits(need, projected, capacity):
            return Admission(False, victims=tuple(victims))
    if later:
        return Admission(False, wait_until=min(later), reason="waiting for min_active_secs")
    # Models still starting or waking become candidates once ready; the scheduler re-asks
    # on every event, so this is a wait, not a failure.
    return Admission(False, reason="no evictable model frees enough memory yet")
