"""fifo: serve the model of the oldest waiting request next (the highest priority first).

Owns: the simplest policy, the baseline the others must beat. It wakes models in order of
priority, then of their oldest queued request; a request whose `max_wait_secs` bound
(less one switch) has come goes first whatever its priority; the scheduler's placement
and `min_active_secs` decide who leaves and when. Pure.
"""

from __future__ import annotations

from gpumux.core.config import PolicyConfig
from gpumux.policy.base import Decision, Snapshot, by_priority, overdue_at, startable, waiting


class FifoPolicy:
    name = "fifo"

    def __init__(self, config: PolicyConfig) -> None:
        self._config = config

    def decide(self, snapshot: Snapshot) -> Decision:
        order: list[str] = []
        recheck: list[float] = []
        max_priority = max((v.priority for v in snapshot.models.values()), default=0)
        for view in by_priority(waiting(snapshot), snapshot.now, self._config):
            if snapshot.pinned is not None and view.alias != snapshot.pinned:
                continue
            if startable(view, snapshot.now):
                order.append(view.alias)
                if view.priority < max_priority and overdue_at(view, self._config) > snapshot.now:
                    recheck.append(overdue_at(view, self._config))  # then it jumps the line
            elif view.retry_not_before is not None:
                recheck.append(view.retry_not_before)
        return Decision(wake=tuple(order), recheck_at=min(recheck, default=None))
