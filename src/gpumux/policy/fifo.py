"""fifo: serve the model of the oldest waiting request next.

Owns: the simplest policy, the baseline the others must beat. It wakes models in order of
their oldest queued request; the scheduler's placement and `min_active_secs` decide who
leaves and when. Pure.
"""

from __future__ import annotations

from gpumux.core.config import PolicyConfig
from gpumux.policy.base import Decision, Snapshot, startable, waiting


class FifoPolicy:
    name = "fifo"

    def __init__(self, config: PolicyConfig) -> None:
        self._config = config

    def decide(self, snapshot: Snapshot) -> Decision:
        order: list[str] = []
        recheck: list[float] = []
        for view in waiting(snapshot):
            if snapshot.pinned is not None and view.alias != snapshot.pinned:
                continue
            if startable(view, snapshot.now):
                order.append(view.alias)
            elif view.retry_not_before is not None:
                recheck.append(view.retry_not_before)
        return Decision(wake=tuple(order), recheck_at=min(recheck, default=None))
