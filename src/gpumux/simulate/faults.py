"""Failures the simulator can inject: operations whose steps fail and processes that crash.

Owns: `Faults`, the plan of which operations fail (by the order they start) and when
which model's process dies, and how many step runs of a failing operation fail. The
orchestrator turns those into an outcome as it would for real ones: a failed wake kills
the tree and cold-starts once (that cold start fails too for an even-numbered operation,
so the wake ends failed), a failed eviction step kills the tree.
Does not: inject anything itself; the simulated effects consult it. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Faults:
    failing_ops: frozenset[int] = frozenset()  # the n-th operation started (from 0) fails
    crashes: tuple[tuple[float, str], ...] = ()  # (time, model): its process dies then

    def failures(self, n: int) -> int:
        """How many step runs of the n-th operation fail, counting from its first step."""
        if n not in self.failing_ops:
            return 0
        return 1 if n % 2 else 2
