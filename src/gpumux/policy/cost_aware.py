"""cost_aware: switch when the waiting demand pays for the switch, or the wait bound says so.

Owns: the rule for when a serving model gives way to a waiting one. The learned switch
cost S (the holder's eviction plus the target's wake) sets the price: the switch goes
ahead when the target has queued `max(1, ceil(amortization_factor × S))` requests and
the holder has served at least S (so switching never takes more than half the time),
or when the holder ran dry and the target's arrivals were coalesced for
`coalesce_window_ms`, or when a waiting request's `max_wait_secs` bound says so (planned
over every model waiting for the same GPUs, as in time_slice; demand lets a younger
queue go first only where that plan leaves room). Models that fit without evicting
anyone are woken at once.
Does not: choose victims (placement does) or keep flags between calls: everything is
derived from the snapshot (llmux's sticky `defer_pending` flag could block a model until
an unrelated arrival). Every decision names its next recheck time. Pure.
"""

from __future__ import annotations

import math

from gpumux.core.config import PolicyConfig
from gpumux.policy.base import Decision, ModelView, Snapshot
from gpumux.policy.planning import Board, board, decide_each, shared_verdict


class CostAwarePolicy:
    name = "cost_aware"

    def __init__(self, config: PolicyConfig) -> None:
        self._config = config

    def required_requests(self, switch_secs: float) -> int:
        return max(1, math.ceil(self._config.amortization_factor * switch_secs))

    def decide(self, snapshot: Snapshot) -> Decision:
        return decide_each(board(snapshot, self._config), self._verdict)

    def _verdict(self, plan: Board, view: ModelView) -> tuple[str, list[float]]:
        """Why to bring `view` up now (empty: not yet) and when to look again."""
        early = shared_verdict(plan, view)
        if isinstance(early, tuple):
            return early
        holders = early
        assert view.oldest_enqueued_at is not None
        switch_secs = view.wake_cost_secs + max(h.evict_cost_secs for h in holders)
        required = self.required_requests(switch_secs)
        coalesced_at = view.oldest_enqueued_at + self._config.coalesce_window_ms / 1000
        urgent = plan.urgent_at[view.alias]
        later: list[float] = []
        for holder in holders:
            free_at = plan.visit_over_at(holder, 0.0)
            if plan.now < free_at:
                later.append(free_at)
                continue
            if plan.now >= urgent:
                return "max_wait_secs bound", []
            if not plan.may_go_first(view):
                later.append(urgent)
                continue  # an older queue is due first; jumping it would break its bound
            idle = holder.inflight == 0 and holder.queued == 0
            if view.queued >= required:
                window_end = plan.visit_over_at(holder, switch_secs)
                if idle or plan.now >= window_end:
                    return f"{view.queued} queued amortize a {switch_secs:.1f}s switch", []
                later.append(window_end)
            elif idle:
                if plan.now >= coalesced_at:
                    return f"{holder.alias} is idle and arrivals are coalesced", []
                later.append(coalesced_at)
            later.append(urgent)
        return "", later
