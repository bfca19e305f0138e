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

from gpumux.core.config import PolicyConfig
from gpumux.core.states import ModelState
from gpumux.policy.base import Decision, ModelView, Snapshot, startable

M = ModelState
#: A model in one of these states means a switch is in progress on its GPUs. Such a GPU
#: is never "idle", even though nothing on it is READY (llmux's cost_aware and time_slice
#: treated "switching" as "no active model" and bypassed every check).
TRANSITIONAL = frozenset({M.DRAINING, M.EVICTING, M.WAKING, M.STARTING, M.STOPPING})
LEAVING = frozenset({M.DRAINING, M.EVICTING, M.STOPPING})
STARTABLE = frozenset({M.STOPPED, M.SLEEPING, M.SUSPENDED, M.CHECKPOINTED})
#: A drain lasts as long as the longest request still in flight, so it varies far more
#: than an eviction or a wake; plans budget this many times its learned average.
DRAIN_MARGIN = 2.0


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


def leave_secs(view: ModelView) -> float:
    """How long `view` takes to give its GPUs back once asked: drain, then eviction."""
    return DRAIN_MARGIN * view.drain_cost_secs + view.evict_cost_secs


def hop_secs(view: ModelView, leaving: float, config: PolicyConfig) -> float:
    """From the start of a switch to `view` (its predecessor takes `leaving` to go) until
    the next switch may start: the wake and a minimum visit of `view`."""
    return leaving + view.wake_cost_secs + min_visit_secs(config)


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

    def switching_near(self, view: ModelView, states: frozenset[ModelState] = TRANSITIONAL) -> bool:
        """Another model on a GPU `view` needs is in one of `states` (by default: any
        switch is in progress there)."""
        return any(
            other.alias != view.alias and other.state in states and shares_gpu(view, other)
            for other in self.snapshot.models.values()
        )

    def holders(self, view: ModelView) -> list[ModelView]:
        """READY models on the GPUs `view` needs: the ones a switch to it would evict."""
        return [
            other
            for other in self.snapshot.models.values()
            if other.alias != view.alias and other.serving and shares_gpu(view, other)
        ]

    def may_go_first(self, view: ModelView) -> bool:
        """Whether `view` can be served before the most urgent model waiting for its GPUs
        and still leave that model its latest start (else it must wait its turn)."""
        tour = [v for v in self.candidates if not v.fits_now and shares_gpu(v, view)]
        head = min(tour, key=lambda v: (v.oldest_enqueued_at, v.alias), default=view)
        if head.alias == view.alias:
            return True
        leaving = max((leave_secs(h) for h in self.holders(view)), default=0.0)
        return self.now + hop_secs(view, leaving, self.config) <= self.urgent_at[head.alias]

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
    # Higher priority first; `may_go_first` keeps every older queue's bound regardless.
    views.sort(
        key=lambda v: (not v.switch_pending, -v.priority, v.oldest_enqueued_at, -v.queued, v.alias)
    )
    urgent = _urgent_at(views, snapshot, config)
    return Board(snapshot, config, tuple(views), urgent, tuple(backoff))


def _urgent_at(
    views: list[ModelView], snapshot: Snapshot, config: PolicyConfig
) -> dict[str, float]:
    """Latest start per candidate of an earliest-deadline-first tour that keeps the bound.

    A candidate's tour is itself, then the waiting models with later deadlines that
    compete for its GPUs. Each switch of the tour starts when the model before it has
    had its minimum visit; it takes that model's learned drain and eviction plus the
    next one's wake. Those spans are shared among the models the GPUs hold awake at once
    ("lanes"). A candidate's latest start is the tightest of its own deadline and what
    each later member needs. Models that fit now are woken at once: they join no tour.
    """
    queued = sorted(
        (v for v in views if not v.fits_now), key=lambda v: (v.oldest_enqueued_at, v.alias)
    )
    urgent: dict[str, float] = {}
    for view in queued:
        tour = [v for v in queued if shares_gpu(v, view)]
        tour = tour[tour.index(view) :]
        awake = [v for v in snapshot.models.values() if v.awake and shares_gpu(v, view)]
        lanes = max(1, len(awake))
        holders = [v for v in awake if v.serving]
        leaving = max((leave_secs(v) for v in holders), default=0.0)
        latest, elapsed = math.inf, 0.0
        for member in tour:
            assert member.oldest_enqueued_at is not None
            latest = min(latest, member.oldest_enqueued_at + config.max_wait_secs - elapsed)
            elapsed += hop_secs(member, leaving, config) / lanes
            leaving = leave_secs(member)
        urgent[view.alias] = latest
    return urgent


#: A policy's judgement of one candidate: why to bring it up now ("" = not yet), and the
#: moments at which that could change.
Verdict = Callable[[Board, ModelView], tuple[str, list[float]]]


def shared_verdict(plan: Board, view: ModelView) -> tuple[str, list[float]] | list[ModelView]:
    """The verdicts every policy shares, else the serving models holding `view`'s memory.

    A verdict is (why to bring it up now, or "" for not yet; when to look again).
    """
    if view.switch_pending:
        return "switch under way", []
    if view.fits_now:
        return "fits without evicting anyone", []
    if plan.switching_near(view, LEAVING):
        return "", []  # an eviction under way frees memory; the core re-asks after it
    holders = plan.holders(view)
    if not holders:
        if plan.switching_near(view):
            return "", []  # a wake holds the memory; nothing to evict until it is done
        return "memory held by no serving model", []
    return holders


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
