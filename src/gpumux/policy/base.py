"""The policy interface: the frozen snapshot a policy sees and the decision it returns.

Owns: `ModelView`, `Snapshot`, `Decision`, the `Policy` protocol and the helpers every
policy shares (`waiting`, `startable`, and the priority order `by_priority`).
Does not: evict, wake or read the clock; the scheduler builds the snapshot (with `now`)
and carries the decision out, asking placement which victims make room; which policy a
`policy_type` names is `registry`'s business (it imports the policies, which import
this). Pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gpumux.core.config import PolicyConfig
from gpumux.core.states import AWAKE_STATES, ModelState


@dataclass(frozen=True)
class ModelView:
    alias: str
    state: ModelState
    queued: int
    oldest_enqueued_at: float | None
    inflight: int
    ready_since: float | None
    last_used_at: float
    retry_not_before: float | None = None  # restart backoff: no start before this
    wake_cost_secs: float = 0.0  # learned estimate of bringing it back
    evict_cost_secs: float = 0.0  # learned estimate of evicting it
    drain_cost_secs: float = 0.0  # learned time its in-flight requests take to end on a drain
    max_num_seqs: int = 256
    fits_now: bool = False  # placement could wake it now without evicting anyone
    gpus: tuple[int, ...] = ()  # GPUs it occupies when awake; () = unknown, assume all
    switch_pending: bool = False  # a switch to bring it up has begun (victims may be draining)
    priority: int = 0  # higher goes first among waiting models, within the wait bound
    arrival_rate: float = 0.0  # decayed arrivals per second (`policy.demand`)
    next_arrival_at: float = math.inf  # its next request, predicted (inf: none expected)

    @property
    def awake(self) -> bool:
        return self.state in AWAKE_STATES

    @property
    def serving(self) -> bool:
        return self.state is ModelState.READY

    @property
    def has_demand(self) -> bool:
        return self.queued > 0


@dataclass(frozen=True)
class Snapshot:
    now: float
    models: Mapping[str, ModelView]
    switching: bool  # an eviction or wake is under way somewhere
    pinned: str | None = None  # manual mode: only this model may be woken


@dataclass(frozen=True)
class Decision:
    """Wake these models, in this order of priority; ask again at `recheck_at`."""

    wake: tuple[str, ...] = ()
    recheck_at: float | None = None
    reasons: Mapping[str, str] = field(default_factory=dict)


class Policy(Protocol):
    name: str

    def decide(self, snapshot: Snapshot) -> Decision: ...


PolicyFactory = Callable[[PolicyConfig], Policy]


def waiting(snapshot: Snapshot) -> list[ModelView]:
    """Models with queued demand that are not serving, oldest request first."""
    views = [
        v
        for v in snapshot.models.values()
        if v.has_demand and not v.serving and v.oldest_enqueued_at is not None
    ]
    return sorted(views, key=lambda v: (v.oldest_enqueued_at, v.alias))


def overdue_at(view: ModelView, config: PolicyConfig) -> float:
    """When `view`'s oldest request must be switched to, whatever the priorities, so that
    it is served within `max_wait_secs` plus one switch: its bound less one round trip."""
    assert view.oldest_enqueued_at is not None
    switch = view.wake_cost_secs + view.evict_cost_secs
    return view.oldest_enqueued_at + max(0.0, config.max_wait_secs - switch)


def by_priority(views: list[ModelView], now: float, config: PolicyConfig) -> list[ModelView]:
    """`views` (oldest request first) reordered: overdue ones first, oldest first; then
    higher priority first, oldest first within a priority. Unchanged when all priorities
    are equal (plain oldest-first)."""
    if len({v.priority for v in views}) <= 1:
        return views
    return sorted(
        views,
        key=lambda v: (now < overdue_at(v, config), -v.priority, v.oldest_enqueued_at, v.alias),
    )


def startable(view: ModelView, now: float) -> bool:
    return view.retry_not_before is None or view.retry_not_before <= now
