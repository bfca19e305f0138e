"""What cost_aware and time_slice both read off a snapshot: candidates, holders and deadlines.

Owns: the candidate list (models with queued demand that may be brought up now), who
holds the GPUs a candidate needs, whether a switch is already under way on them, the
minimum visit, and the wait-bound arithmetic: the latest moment a switch may start so
that every waiting model is reached within `max_wait_secs` (an earliest-deadline-first
tour, section 5 of the design).
Does not: decide whether to switch (each policy does) or read the clock. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from gpumux.config import PolicyConfig
from gpumux.policy.base import Decision, ModelView, Snapshot, startable
from gpumux.states import ModelState

M = ModelState
#: A model in one of these states means a switch is in progress on its GPUs. Such a GPU
#: is never "idle", even though nothing on it is READY (llmux's cost_aware and time_slice
#: treated "switching" as "no active model" and bypassed every check).
TRANSITIONAL = frozenset({M.DRAINING, M.EVICTING, M.WAKING, M.STARTING, M.STOPPING})
STARTABLE = frozenset({M.STOPPED, M.SLEEPING, M.SUSPENDED, M.CHECKPOINTED})


def shares_gpu(a: ModelView, b: ModelView) -> bool:
    """True when a and b compete for memory (unknown GPUs count as shared: the safe side)."""
    return not a.gpus or not b.gpus or not set(a.gpus).isdisjoint(b.gpus)


def min_visit_secs(config: PolicyConfig) -> float:
    """The shortest stay of a model once ready: the policy's quantum floor and the core's
    `min_active_secs` (placement will not evict earlier, so asking earlier only blocks)."""
    return max(config.min_active_secs, config.min_quantum_ms / 1000)


def round_trip_secs(view: ModelView) -> float:
    """Learned cost of one switch involving this model: evicting it plus waking it."""
    return view.evict_cost_secs + view.wake_cost_secs


@dataclass(frozen=True)
class Board:
    """One snapshot seen through the policies' eyes."""

    snapshot: Snapshot
    config: PolicyConfig
    candidates: tuple[ModelView, ...]  # committed switches first, then earliest deadline
    urgent_at: dict[str, float]  # start the switch to this model no later than this
    backoff_ends: tuple[float, ...]  # candidates held back by restart backoff, until then

    @property
    def now(self) -> float:
        return self.snapshot.now

    def deadline(self, view: ModelView) -> float:
        assert view.oldest_enqueued_at is not None
        return view.oldest_enqueued_at + self.config.max_wait_secs

    def switching_near(self, view: ModelView) -> bool:
        """A switch is in progress on a GPU `view` needs: wait for it to finish."""
        return any(
            other.alias != view.alias and other.state in TRANSITIONAL and shares_gpu(view, other)
            for other in self.snapshot.models.values()
        )

    def holders(self, view: ModelView) -> list[ModelView]:
        """READY models on the GPUs `view` needs: the ones a switch to it would evict."""
        return [
            other
            for other in self.snapshot.models.values()
            if other.alias != view.alias and other.serving and shares_gpu(view, other)
        ]

    def visit_over_at(self, holder: ModelView, secs: float) -> float:
        """When `holder` will have stayed `secs` (never less than the minimum visit)."""
        since = holder.ready_since if holder.ready_since is not None else -math.inf
        return since + max(secs, min_visit_secs(self.config))


def board(snapshot: Snapshot, config: PolicyConfig) -> Board:
    views: list[ModelView] = []
    backoff: list[float] = []
    for view in snapshot.models.values():
        if view.queued == 0 or view.oldest_enqueued_at is None or view.state not in STARTABLE:
            continue
        if snapshot.pinned is not None and view.alias != snapshot.pinned:
            continue
        if startable(view, snapshot.now):
            views.append(view)
        elif view.retry_not_before is not None:
            backoff.append(view.retry_not_before)
    views.sort(key=lambda v: (not v.switch_pending, v.oldest_enqueued_at, -v.queued, v.alias))
    return Board(
        snapshot, config, tuple(views), _urgent_at(views, snapshot, config), tuple(backoff)
    )


def _urgent_at(
    views: list[ModelView], snapshot: Snapshot, config: PolicyConfig
) -> dict[str, float]:
    """Latest start per candidate of an earliest-deadline-first tour that keeps the bound.

    The k-th model of the tour starts after the k-1 before it each took a switch plus a
    minimum visit, shared among the models that can be awake at once ("lanes"). Walking
    the tour backwards, a model's latest start is the tighter of its own deadline and
    what the ones after it need. Models that fit now are woken at once, so they are not
    part of the tour.
    """
    tour = sorted(
        (v for v in views if not v.fits_now),
        key=lambda v: (v.oldest_enqueued_at, v.alias),
    )
    lanes = max(1, sum(1 for v in snapshot.models.values() if v.awake))
    visit = min_visit_secs(config)
    urgent: dict[str, float] = {}
    latest = math.inf
    for view in reversed(tour):
        assert view.oldest_enqueued_at is not None
        own = view.oldest_enqueued_at + config.max_wait_secs
        latest = min(own, latest - (round_trip_secs(view) + visit) / lanes)
        urgent[view.alias] = latest
    return urgent


#: A policy's judgement of one candidate: why to bring it up now ("" = not yet), and the
#: moments at which that could change.
Verdict = Callable[[Board, ModelView], tuple[str, list[float]]]


def decide_each(plan: Board, verdict: Verdict) -> Decision:
    """Judge every candidate in priority order; re-ask at the earliest moment that matters."""
    wake: list[str] = []
    reasons: dict[str, str] = {}
    later: list[float] = list(plan.backoff_ends)
    for view in plan.candidates:
        reason, recheck = verdict(plan, view)
        if reason:
            wake.append(view.alias)
            reasons[view.alias] = reason
        later.extend(recheck)
    upcoming = [t for t in later if t > plan.now]
    return Decision(tuple(wake), recheck_at=min(upcoming, default=None), reasons=reasons)
