"""A lower bound on p99 wait (and an upper bound on GPU busy) that no policy can beat.

Owns: `Bound` and `compute_bound`, the optimum of an offline relaxation of the simulated
system that knows every arrival. The relaxation keeps only what no policy escapes:
- a request waits until its model is ready (a grant needs a ready model), at most
  `request_timeout_secs` (a queue timeout is counted with the time it waited);
- models start evicted, as the simulator starts them;
- models that cannot share a GPU (their `--gpu-memory-utilization` reservations add up
  to more than a card, placement's own arithmetic) are never ready or in transit at
  once: before one starts waking, the other must have finished the first step of its
  eviction, the one that frees its memory;
- a wake takes at least the cheapest wake the model's reachable eviction levels allow
  (its configured one, its idle ladder's, every level for `"auto"`) with the cheapest
  history (pinning paid, files in the page cache), and that first eviction step likewise.
- a granted request runs at least its work at one sequence's full speed (`SEQ_TPS`), and
  a model starts evicting only when what it was granted has finished or the drain timeout
  after its last grant has passed (the core's drain; a switch is decided after a grant).
It drops everything else, each of which can only lengthen a wait: batching slowdowns,
`min_active_secs`, sleeping models' residual memory, host-RAM guards, failures. So every
schedule a policy can produce is a schedule of the relaxation, and the relaxation's best
p99 is at most the policy's.

The relaxation is solved exactly (`exclusive.min_max_wait`) for each *exclusive group*
(models that pairwise cannot share a GPU: one is ready at a time) whose requests number
at most `EXACT_REQUESTS`; with at most 100 requests p99 is the maximum (nearest rank), so
the bound is then the relaxation's exact optimum. Larger instances are cut into windows
of `WINDOW` consecutive requests of a group; each window is solved exactly with the
best possible state at its start (any model ready, or none), which dominates whatever a
real schedule left behind, so some request of each window waits at least that window's
value; windows hold different requests, so p99 >= the (n - k + 1)-th largest value,
where k = ceil(0.99 n). Groups that are not exclusive (two of three fit, say) keep only
the first wake of each model. docs/policies.md ("The bound") has the argument.

Busy: a busy backend advances at least `SEQ_TPS` decode tokens per second, so a GPU is
busy at most (its models' work) / SEQ_TPS, and only from the first moment a model of it
could serve (an arrival, after a first wake) to the end of the run (which is at least
the last arrival).
Does not: run the simulation or any policy. Pure. Assumes no request is refused on
arrival (queue full) or cancelled, since those leave the policies' wait statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gpumux.core.config import Config, EvictionConfig, ProcessStrategy, WeightStrategy
from gpumux.core.eviction import evict_plan, wake_plan
from gpumux.scheduler.messages import Operation, OpKind
from gpumux.simulate.backend import SEQ_TPS, work_of
from gpumux.simulate.exclusive import Costs, Request, min_max_wait
from gpumux.simulate.scenario import capacity_bytes
from gpumux.simulate.switch_model import CostSource, step_costs
from gpumux.simulate.workloads import Arrival

EXACT_REQUESTS = 14
WINDOW = 8
P99 = 0.99
#: Every level worth choosing (retain+keep_running frees nothing).
ALL_LEVELS = tuple(
    EvictionConfig(weights=w, process=p)
    for w in WeightStrategy
    for p in ProcessStrategy
    if (w, p) != (WeightStrategy.RETAIN, ProcessStrategy.KEEP_RUNNING)
)


@dataclass(frozen=True)
class Bound:
    p99_wait: float  # no policy's p99 wait is lower
    busy_fraction: float  # no policy's busy fraction is higher
    method: str  # "exact" (the relaxation's optimum) or "windows"
    requests: int

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "p99_wait": round(self.p99_wait, 4),
            "busy_fraction": round(self.busy_fraction, 4),
            "method": self.method,
            "requests": self.requests,
        }


def levels(choice: object) -> tuple[EvictionConfig, ...]:
    """The levels one eviction setting allows: itself, or every level (`"auto"`)."""
    return (choice,) if isinstance(choice, EvictionConfig) else ALL_LEVELS


def reachable_levels(config: Config, alias: str) -> tuple[EvictionConfig, ...]:
    model = config.models[alias]
    found = list(levels(model.eviction or config.policy.eviction))
    for step in config.idle_ladder(alias):
        found += levels(step.eviction)
    return tuple(dict.fromkeys(found))


def least_costs(config: Config, source: CostSource) -> dict[str, Costs]:
    """Per model: the cheapest wake and the cheapest memory-freeing eviction step."""
    costs = step_costs(source, config)
    out: dict[str, Costs] = {}
    for alias in config.models:
        wakes, frees = [], []
        for eviction in reachable_levels(config, alias):
            steps, resting = evict_plan(eviction)
            evict = Operation(0, alias, OpKind.EVICT, steps, eviction)
            frees.append(costs.least_step_secs(evict, steps[0]))
            back = wake_plan(eviction.weights, resting, warmup=False)
            wake = Operation(0, alias, OpKind.WAKE, back, eviction)
            wakes.append(sum(costs.least_step_secs(wake, step) for step in back))
        out[alias] = Costs(wake=min(wakes), free=min(frees))
    return out


def exclusive_groups(config: Config) -> list[tuple[tuple[str, ...], bool]]:
    """Models linked by sharing a GPU they cannot share, and whether each group is
    exclusive (every pair conflicts, so one is ready at a time)."""
    cards = capacity_bytes(config)
    models = config.models

    def conflict(a: str, b: str) -> bool:
        shared = set(models[a].gpu_indices) & set(models[b].gpu_indices)
        ua, ub = models[a].gpu_memory_utilization, models[b].gpu_memory_utilization
        return any(int(ua * cards[g]) + int(ub * cards[g]) > cards[g] for g in shared)

    seen: set[str] = set()
    groups: list[tuple[tuple[str, ...], bool]] = []
    for start in models:
        if start in seen:
            continue
        group, frontier = [start], [start]
        seen.add(start)
        while frontier:
            a = frontier.pop()
            for b in models:
                if b not in seen and conflict(a, b):
                    seen.add(b)
                    group.append(b)
                    frontier.append(b)
        clique = all(conflict(a, b) for i, a in enumerate(group) for b in group[i + 1 :])
        groups.append((tuple(group), clique))
    return groups


def _p99_bound(values: list[float], n: int) -> float:
    """At least one request per value waits that long (each value counts different
    requests): the p99 (nearest rank k) is at least the (n - k + 1)-th largest value."""
    k = max(1, math.ceil(P99 * n))
    ranked = sorted(values, reverse=True)
    return ranked[n - k] if len(ranked) > n - k else 0.0


def compute_bound(config: Config, arrivals: Sequence[Arrival], source: CostSource) -> Bound:
    n = len(arrivals)
    timeout = config.policy.request_timeout_secs
    costs = least_costs(config, source)
    policy = config.policy
    drain = policy.drain_timeout_secs if policy.drain_before_switch else 0.0
    values: list[float] = []
    exact = n <= 100
    for group, clique in exclusive_groups(config):
        requests = [
            Request(a.t, a.model, work_of(a.prompt_tokens, a.output_tokens) / SEQ_TPS)
            for a in arrivals
            if a.model in group
        ]
        if not requests:
            continue
        if not clique:
            exact = False
            for alias in group:  # only the first wake of each model is certain
                first = next((r.t for r in requests if r.model == alias), None)
                if first is not None:
                    values.append(max(0.0, costs[alias].wake - first))
            continue
        group_costs = {alias: costs[alias] for alias in group}
        if len(requests) <= EXACT_REQUESTS:
            values.append(min_max_wait(requests, group_costs, free_start=False, drain_secs=drain))
            continue
        exact = False
        for i in range(0, len(requests), WINDOW):
            window = requests[i : i + WINDOW]
            values.append(min_max_wait(window, group_costs, free_start=i > 0, drain_secs=drain))
    capped = [min(v, timeout) for v in values]
    method = "exact" if exact else "windows"
    return Bound(_p99_bound(capped, n), _busy_bound(config, arrivals, costs), method, n)


def _busy_bound(config: Config, arrivals: Sequence[Arrival], costs: dict[str, Costs]) -> float:
    end = max((a.t for a in arrivals), default=0.0)
    gpus = sorted({g for m in config.models.values() for g in m.gpu_indices})
    if not arrivals or not gpus:
        return 0.0
    shares = []
    for gpu in gpus:
        here = [a for a in arrivals if gpu in config.models[a.model].gpu_indices]
        work = sum(work_of(a.prompt_tokens, a.output_tokens) for a in here) / SEQ_TPS
        # Serving starts no earlier than an arrival, nor before its model could wake.
        start = min((max(a.t, costs[a.model].wake) for a in here), default=end)
        # busy / run end is at most min(work, end - start) / end over every end the run
        # may have (>= the last arrival); the worst end is where the two meet.
        worst_end = max(end, work + start)
        if worst_end > 0:
            shares.append(min(1.0, work / worst_end, max(0.0, worst_end - start) / worst_end))
        else:
            shares.append(0.0)
    return sum(shares) / len(shares)
