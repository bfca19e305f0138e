"""Sleep and wake times per strategy, read from the daemon's own `switch_finished` events.

Owns: attributing each switch's phases (gpumux measures them in the orchestrator) to the
victim's eviction and the target's wake by phase name, telling a model's first start from
a wake (a wake follows an eviction of that model), the bytes each strategy moves, and
bytes/s beside the pinned-copy reference.
Does not: read logs (`drive` hands the events over) or format anything (`report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.support.gpu_check.plan import GIB, Plan, Strategy


@dataclass
class StrategyTimes:
    strategy: Strategy
    evict_bytes: int
    wake_bytes: int
    evict_secs: list[float] = field(default_factory=list)
    wake_secs: list[float] = field(default_factory=list)
    first_start_secs: list[float] = field(default_factory=list)
    not_ok: list[str] = field(default_factory=list)  # outcomes other than ok

    def as_dict(self) -> dict[str, object]:
        return {
            "eviction": f"{self.strategy.weights}+{self.strategy.process}",
            "evict_bytes": self.evict_bytes,
            "wake_bytes": self.wake_bytes,
            "evict_secs": self.evict_secs,
            "wake_secs": self.wake_secs,
            "first_start_secs": self.first_start_secs,
            "not_ok": self.not_ok,
        }


def _phase_sum(phases: dict[str, float], names: tuple[str, ...]) -> float | None:
    found = [float(phases[n]) for n in names if n in phases]
    return sum(found) if found else None


def moved_bytes(plan: Plan, moves: str, process_bytes: int | None) -> int:
    if moves == "process":
        return process_bytes or int(plan.utilization * plan.capacity_bytes)
    return int(plan.weights_gib * GIB) if moves == "weights" else 0


def per_strategy(
    plan: Plan, events: list[dict[str, Any]], process_bytes: dict[str, int]
) -> dict[str, StrategyTimes]:
    by_alias = {s.alias: s for s in plan.strategies}
    out = {
        s.alias: StrategyTimes(
            s,
            moved_bytes(plan, s.evict_moves, process_bytes.get(s.alias)),
            moved_bytes(plan, s.wake_moves, process_bytes.get(s.alias)),
        )
        for s in plan.strategies
    }
    evicted: set[str] = set()
    for event in events:
        if event.get("event") == "host_memory_downgrade" and event.get("model") in out:
            out[event["model"]].not_ok.append(f"host budget: evicted as {event.get('instead')}")
        if event.get("event") != "switch_finished":
            continue
        phases = event.get("phases") or {}
        outcome = str(event.get("outcome"))
        victims = [v for v in event.get("victims", []) if v in by_alias]
        for victim in victims:
            if outcome != "ok":
                out[victim].not_ok.append(f"evicted: {outcome}")
            secs = _phase_sum(phases, by_alias[victim].evict_phases)
            if secs is not None and len(victims) == 1:
                out[victim].evict_secs.append(secs)
            evicted.add(victim)
        target = event.get("target")
        if target not in by_alias:
            continue
        times = out[target]
        if outcome != "ok":
            times.not_ok.append(f"woken: {outcome}")
        first = target not in evicted
        names = ("start",) if first else by_alias[target].wake_phases
        secs = _phase_sum(phases, names)
        if secs is not None:
            (times.first_start_secs if first else times.wake_secs).append(secs)
        evicted.discard(target)
    return out


def process_bytes_awake(snapshots: list[dict[str, Any]]) -> dict[str, int]:
    """The most GPU memory NVML saw each model's process hold (what a suspend moves)."""
    most: dict[str, int] = {}
    for snap in snapshots:
        for alias, nbytes in snap["gpu_bytes"].items():
            if snap["states"].get(alias) == "ready":
                most[alias] = max(most.get(alias, 0), int(nbytes))
    return most


def held_while_evicted(snapshots: list[dict[str, Any]]) -> dict[str, int]:
    """The most GPU memory each model held while in its evicted state (0 = nothing)."""
    most: dict[str, int] = {}
    for snap in snapshots:
        for alias, state in snap["states"].items():
            if state in ("sleeping", "suspended", "stopped", "checkpointed"):
                most[alias] = max(most.get(alias, 0), int(snap["gpu_bytes"].get(alias, 0)))
    return most
