"""Failures the simulator can inject: operations that fail and processes that crash.

Owns: `Faults`, the plan of which operations fail (by the order they start) and when
which model's process dies, and the outcome a failing operation reports (a wake fails
outright or falls back to a cold start; an eviction falls back to killing the tree).
Does not: inject anything itself; the engine consults it. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpumux.scheduler.messages import OpKind, OpResult


@dataclass(frozen=True)
class Faults:
    failing_ops: frozenset[int] = frozenset()  # the n-th operation started (from 0) fails
    crashes: tuple[tuple[float, str], ...] = ()  # (time, model): its process dies then

    def result(self, kind: OpKind, n: int) -> OpResult:
        if n not in self.failing_ops:
            return OpResult.OK
        if kind is OpKind.WAKE:
            return OpResult.FALLBACK_COLD if n % 2 else OpResult.FAILED
        return OpResult.FALLBACK_STOP if kind is OpKind.EVICT else OpResult.FAILED
