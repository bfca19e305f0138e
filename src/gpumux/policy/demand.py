"""Per-model demand: an exponentially decayed arrival rate, and when the next request is due.

Owns: `Demand`, one model's estimate, and `DemandBook`, the estimates of every model.
Each arrival adds `1/τ` to a rate that decays by `e^(−Δt/τ)` (τ = `policy.
demand_time_constant_secs`), so the estimate is a moving average over about τ seconds that
follows drifting load without a window to store. `next_at` predicts the next arrival:
one mean gap after the last one while that moment is ahead, "now" while it is due (up to
two mean gaps after the last), and one (decayed) mean gap from now once it is late (for
Poisson arrivals the wait ahead does not depend on the past, and the decay lets a model
that went quiet look ever further from its next use). The mean gap is bias-corrected and
exact for a periodic load.
Does not: read the clock (`now` is passed in) or decide anything: victim choice, eviction
ahead of need and `auto` eviction read it. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: A next arrival later than this many mean gaps after the last one is "late": from then
#: on the prediction is memoryless (one decayed mean gap from now). For Poisson arrivals
#: e^−2 ≈ 14 % of gaps are that long.
OVERDUE_GAPS = 2.0


@dataclass
class Demand:
    time_constant: float
    rate: float = 0.0  # arrivals per second, as of `last_at`
    last_at: float | None = None
    first_at: float | None = None
    arrivals: int = 0

    def arrived(self, now: float) -> None:
        self.rate = self.rate_at(now) + 1.0 / self.time_constant
        self.last_at = now
        if self.first_at is None:
            self.first_at = now
        self.arrivals += 1

    def rate_at(self, now: float) -> float:
        if self.last_at is None:
            return 0.0
        return self.rate * math.exp(-max(0.0, now - self.last_at) / self.time_constant)

    def mean_gap(self) -> float:
        """The mean time between arrivals, as of the last one (inf before two arrivals)."""
        if self.arrivals < 2 or self.first_at is None or self.last_at is None:
            return math.inf
        # Count gaps, not arrivals (the last arrival's own 1/τ has no gap behind it), and
        # divide by the weight the history so far has had time to gather (τ-sized windows
        # are not full yet early on: the bias correction of any decayed average).
        gaps = self.rate - 1.0 / self.time_constant
        span = self.last_at - self.first_at
        filled = 1.0 - math.exp(-span / self.time_constant)
        if gaps <= 0 or filled <= 0:
            return math.inf
        # filled/gaps is τ(e^(P/τ) − 1) for arrivals every P seconds (each gap is weighted
        # at its end); invert it so that a periodic load is predicted exactly.
        return self.time_constant * math.log1p(filled / gaps / self.time_constant)

    def overdue_at(self) -> float:
        """From when on the next arrival counts as late (two mean gaps after the last):
        until then a request that is due is expected any moment; after, memorylessly."""
        if self.last_at is None:
            return math.inf
        return self.last_at + OVERDUE_GAPS * self.mean_gap()

    def next_at(self, now: float) -> float:
        """When the next request is expected (inf: no evidence it ever comes again)."""
        if self.last_at is None:
            return math.inf
        due = self.last_at + self.mean_gap()
        if due > now:
            return due
        if now < self.overdue_at():
            return now  # due: any moment now (a periodic load's jitter lands here)
        rate = self.rate_at(now)
        return now + 1.0 / rate if rate > 0 and self.arrivals >= 2 else math.inf


@dataclass
class DemandBook:
    time_constant: float
    models: dict[str, Demand] = field(default_factory=dict)

    def of(self, alias: str) -> Demand:
        found = self.models.get(alias)
        if found is None:
            found = self.models[alias] = Demand(self.time_constant)
        return found

    def arrived(self, alias: str, now: float) -> None:
        self.of(alias).arrived(now)

    def rate_at(self, alias: str, now: float) -> float:
        return self.of(alias).rate_at(now)

    def next_at(self, alias: str, now: float) -> float:
        return self.of(alias).next_at(now)

    def forget(self, alias: str) -> None:
        self.models.pop(alias, None)
