"""The exact offline optimum of an exclusive group: the least possible maximum wait.

Owns: `min_max_wait`, for models of which at most one is ready (or in transit) at a time,
requests known in advance, a ready model serving every waiting request at once, and each
switch costing the leaving model's memory-freeing step plus the coming model's wake
(`Costs`). A schedule is then a sequence of visits; a visit to model b becomes ready at
(the previous visit's end + its `free` + b's `wake`), serves b's waiting requests at
once and b's later arrivals as they come, and ends at one of those arrivals (staying
longer only delays the rest). A visit that serves nothing only adds costs, so every visit
serves one request or more and the search is finite: depth-first over (next model, how
many of the current model's arrivals to stay for), with memory of solved states and
pruning by the best maximum found. Exponential in the worst case: `simulate.bound` calls
it on a few requests at a time.
Does not: know configs or cost models (`simulate.bound` builds `Costs`). Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Costs:
    wake: float  # seconds from starting to wake until ready
    free: float  # seconds from leaving until its GPU memory is free


@dataclass(frozen=True)
class Request:
    t: float
    model: str


class _Search:
    def __init__(self, requests: Sequence[Request], costs: Mapping[str, Costs]) -> None:
        self.models = sorted({r.model for r in requests})
        self.times = [sorted(r.t for r in requests if r.model == m) for m in self.models]
        self.wake = [costs[m].wake for m in self.models]
        self.free = [costs[m].free for m in self.models]
        self._memo: dict[tuple[int, float, tuple[int, ...], bool], float] = {}

    def done(self, ptrs: tuple[int, ...]) -> bool:
        return all(p == len(t) for p, t in zip(ptrs, self.times, strict=True))

    def enter(self, b: int, ready: float, ptrs: tuple[int, ...]) -> tuple[float, tuple[int, ...]]:
        """b is ready at `ready`: it serves its waiting requests; (longest wait, ptrs)."""
        times, p = self.times[b], ptrs[b]
        wait = max(0.0, ready - times[p])
        while p < len(times) and times[p] <= ready:
            p += 1
        return wait, (*ptrs[:b], p, *ptrs[b + 1 :])

    def best(self, cur: int, ready: float, ptrs: tuple[int, ...], served: bool) -> float:
        """Least max wait of the unserved requests; `cur` is ready at `ready` and has
        served its requests up to then (`served`: at least one, so it may leave now)."""
        if self.done(ptrs):
            return 0.0
        key = (cur, ready, ptrs, served)
        if key not in self._memo:
            self._memo[key] = self._search(cur, ready, ptrs, served)
        return self._memo[key]

    def _search(self, cur: int, ready: float, ptrs: tuple[int, ...], served: bool) -> float:
        times = self.times[cur]
        stays = [(ready, ptrs[cur])] if served else []
        stays += [(times[i], i + 1) for i in range(ptrs[cur], len(times))]
        best = math.inf
        for leave, upto in stays:
            after = (*ptrs[:cur], upto, *ptrs[cur + 1 :])
            if self.done(after):
                return 0.0
            for b in range(len(self.models)):
                if b == cur or after[b] == len(self.times[b]):
                    continue
                come = leave + self.free[cur] + self.wake[b]
                wait, entered = self.enter(b, come, after)
                if wait >= best:
                    continue
                best = min(best, max(wait, self.best(b, come, entered, entered != after)))
        return best

    def from_empty(self, at: float) -> float:
        """Nothing ready or in transit at `at`."""
        start = tuple(0 for _ in self.models)
        best = math.inf
        for b in range(len(self.models)):
            come = at + self.wake[b]
            wait, entered = self.enter(b, come, start)
            best = min(best, max(wait, self.best(b, come, entered, entered != start)))
        return best

    def from_ready(self, cur: int, at: float) -> float:
        """`cur` ready at `at`, nothing else."""
        wait, entered = self.enter(cur, at, tuple(0 for _ in self.models))
        return max(wait, self.best(cur, at, entered, served=True))


def min_max_wait(
    requests: Sequence[Request], costs: Mapping[str, Costs], *, free_start: bool
) -> float:
    """The least possible longest wait of `requests` (one exclusive group).

    Without `free_start`, nothing is ready at time 0 (the simulator's start). With it,
    the group may be in any state at the first arrival (any model ready there, or none):
    the best state dominates whatever an earlier schedule left, so the result bounds the
    longest wait of these requests within any longer schedule.
    """
    if not requests:
        return 0.0
    search = _Search(requests, costs)
    if not free_start:
        return search.from_empty(0.0)
    first = min(r.t for r in requests)
    options = [search.from_empty(first)]
    options += [search.from_ready(m, first) for m in range(len(search.models))]
    return min(options)
