"""The exact offline optimum of an exclusive group: the least possible maximum wait.

Owns: `min_max_wait`, for models of which at most one is ready (or in transit) at a time,
requests known in advance, a ready model granting every waiting request at once, and each
switch costing the leaving model's drain, its memory-freeing step and the coming model's
wake (`Costs`). The drain: a model cannot start its eviction before the requests it was
granted have run for their least service time (`Request.service`), or the drain timeout
after its last grant has passed (then the core aborts them). A schedule is then a sequence
of visits; a visit to model b becomes ready at (the previous visit's release + its `free`
+ b's `wake`), grants b's waiting requests at once and b's later arrivals as they come,
and stops granting at one of those arrivals (staying longer only delays the rest). A
visit that serves nothing only adds costs, so every visit serves one request or more and
the search is finite: depth-first over (next model, how many of the current model's
arrivals to stay for), with memory of solved states and pruning by the best maximum
found. Exponential in the worst case: `simulate.bound` calls it on a few requests at a
time.
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
    service: float = 0.0  # the least time it runs once granted


#: (current model, ready at, next unserved per model, its visit's in-flight release,
#: its visit's last grant, whether it may leave without granting more)
_State = tuple[int, float, tuple[int, ...], float, float | None, bool]


class _Search:
    def __init__(
        self, requests: Sequence[Request], costs: Mapping[str, Costs], drain_secs: float
    ) -> None:
        self.models = sorted({r.model for r in requests})
        mine = [sorted((r.t, r.service) for r in requests if r.model == m) for m in self.models]
        self.times = [[t for t, _ in rs] for rs in mine]
        self.service = [[s for _, s in rs] for rs in mine]
        self.wake = [costs[m].wake for m in self.models]
        self.free = [costs[m].free for m in self.models]
        self.drain = drain_secs
        self._memo: dict[_State, float] = {}

    def done(self, ptrs: tuple[int, ...]) -> bool:
        return all(p == len(t) for p, t in zip(ptrs, self.times, strict=True))

    def enter(self, b: int, ready: float, ptrs: tuple[int, ...]) -> tuple[float, _State]:
        """b is ready at `ready` and grants its waiting requests: (longest wait, state)."""
        times, p = self.times[b], ptrs[b]
        wait = max(0.0, ready - times[p])
        release, last = -math.inf, None
        while p < len(times) and times[p] <= ready:
            release, last = max(release, ready + self.service[b][p]), ready
            p += 1
        entered = (*ptrs[:b], p, *ptrs[b + 1 :])
        return wait, (b, ready, entered, release, last, last is not None)

    def best(self, state: _State) -> float:
        """Least max wait of the unserved requests from `state` on."""
        if self.done(state[2]):
            return 0.0
        if state not in self._memo:
            self._memo[state] = self._search(state)
        return self._memo[state]

    def _search(self, state: _State) -> float:
        cur, ready, ptrs, release, last, may_leave = state
        times, service = self.times[cur], self.service[cur]
        stays = [(ready, ptrs[cur], release, last)] if may_leave else []
        for i in range(ptrs[cur], len(times)):  # stay to grant cur's arrivals up to i
            release = max(release, times[i] + service[i])
            stays.append((times[i], i + 1, release, times[i]))
        best = math.inf
        for leave, upto, in_flight, last_grant in stays:
            after = (*ptrs[:cur], upto, *ptrs[cur + 1 :])
            if self.done(after):
                return 0.0
            if last_grant is not None:  # the drain: in flight, or the timeout runs out
                leave = max(leave, min(in_flight, last_grant + self.drain))
            for b in range(len(self.models)):
                if b == cur or after[b] == len(self.times[b]):
                    continue
                wait, entered = self.enter(b, leave + self.free[cur] + self.wake[b], after)
                if wait < best:
                    best = min(best, max(wait, self.best(entered)))
        return best

    def from_empty(self, at: float) -> float:
        """Nothing ready or in transit at `at`."""
        start = tuple(0 for _ in self.models)
        best = math.inf
        for b in range(len(self.models)):
            wait, entered = self.enter(b, at + self.wake[b], start)
            best = min(best, max(wait, self.best(entered)))
        return best

    def from_ready(self, cur: int, at: float) -> float:
        """`cur` ready at `at` with nothing in flight, nothing else."""
        wait, (_, _, ptrs, release, last, _) = self.enter(cur, at, tuple(0 for _ in self.models))
        return max(wait, self.best((cur, at, ptrs, release, last, True)))


def min_max_wait(
    requests: Sequence[Request],
    costs: Mapping[str, Costs],
    *,
    free_start: bool,
    drain_secs: float = 0.0,
) -> float:
    """The least possible longest wait of `requests` (one exclusive group).

    Without `free_start`, nothing is ready at time 0 (the simulator's start). With it,
    the group may be in any state at the first arrival (any model ready there, or none):
    the best state dominates whatever an earlier schedule left (nothing in flight is
    best), so the result bounds the longest wait of these requests in any longer schedule.
    `drain_secs`: how long after its last grant a model may be made to let go.
    """
    if not requests:
        return 0.0
    search = _Search(requests, costs, drain_secs)
    if not free_start:
        return search.from_empty(0.0)
    first = min(r.t for r in requests)
    options = [search.from_empty(first)]
    options += [search.from_ready(m, first) for m in range(len(search.models))]
    return min(options)
