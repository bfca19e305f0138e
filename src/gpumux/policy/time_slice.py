"""time_slice: exhaustive service in quanta sized by the switch cost, most urgent queue next.

Owns: the rule for when a model on the GPUs gives way. A model that is serving keeps the
GPUs while it has work (exhaustive service), but no longer than its quantum: a multiple
of its own learned switch cost (evict + wake), never below `min_quantum_ms` or the core's
`min_active_secs`. When it runs dry, or its quantum is spent, or a waiting request's
`max_wait_secs` bound says so, the waiting model with the earliest deadline goes next.
The bound is planned over every model waiting for the same GPUs (each switch budgeted
at its learned drain, eviction and wake, plus a minimum visit), so a later model is not
reached too late; a younger queue goes first only where that plan leaves room. Models
that fit without evicting anyone are woken at once.
Does not: choose victims (placement does) or wait on its own: every decision names the
next moment it could change (`recheck_at`), so the bound is kept by the core's timer,
not by the next arrival (llmux only checked staleness on arrivals). Pure.
"""

from __future__ import annotations

from gpumux.core.config import PolicyConfig
from gpumux.policy.base import Decision, ModelView, Snapshot
from gpumux.policy.planning import Board, board, decide_each, round_trip_secs, shared_verdict

#: A visit may last this many times the model's round-trip switch cost. Four keeps the
#: switching overhead of a busy rotation near 20 % (switch / (quantum + switch)).
QUANTUM_PER_SWITCH = 4.0


class TimeSlicePolicy:
    name = "time_slice"

    def __init__(self, config: PolicyConfig) -> None:
        self._config = config

    def quantum_secs(self, view: ModelView) -> float:
        return max(self._config.min_quantum_ms / 1000, QUANTUM_PER_SWITCH * round_trip_secs(view))

    def decide(self, snapshot: Snapshot) -> Decision:
        return decide_each(board(snapshot, self._config), self._verdict)

    def _verdict(self, plan: Board, view: ModelView) -> tuple[str, list[float]]:
        """Why to bring `view` up now (empty: not yet) and when to look again."""
        early = shared_verdict(plan, view)
        if isinstance(early, tuple):
            return early
        holders = early
        urgent = plan.urgent_at[view.alias]
        later: list[float] = []
        for holder in holders:
            free_at = plan.visit_over_at(holder, 0.0)
            if plan.now < free_at:
                later.append(free_at)
                continue
            if not plan.may_go_first(view):
                later.append(urgent)
                continue  # an older queue is due first; jumping it would break its bound
            if holder.inflight == 0 and holder.queued == 0:
                return f"{holder.alias} ran dry", []
            quantum_end = plan.visit_over_at(holder, self.quantum_secs(holder))
            if plan.now >= quantum_end:
                return f"{holder.alias} used its quantum", []
            if plan.now >= urgent:
                return "max_wait_secs bound", []
            later += [quantum_end, urgent]
        return "", later
