"""How long each simulated evict or wake operation takes, step by step.

Owns: the per-step durations the simulator charges (defaults in the range the reference
measurements report for an 8B model: level-1 sleep seconds, level-2 wake with a weight
reload, CRIU tens of seconds, cold start near a minute) and the `--switch-cost` override,
which makes every evict + wake pair cost exactly the given seconds.
Does not: decide anything; the core decides which steps run. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpumux.core.eviction import PHASE_OF, Step
from gpumux.scheduler.messages import Operation, OpKind

#: Seconds per step when no override is given.
STEP_SECS: dict[Step, float] = {
    Step.SLEEP_OFFLOAD: 3.0,
    Step.SLEEP_DISCARD: 0.3,
    Step.CUDA_SUSPEND: 5.0,
    Step.CRIU_DUMP: 10.0,
    Step.STOP: 2.0,
    Step.COLD_START: 45.0,
    Step.CUDA_RESUME: 2.5,
    Step.CRIU_RESTORE: 12.0,
    Step.WAKE_ALL: 1.5,
    Step.WAKE_WEIGHTS: 0.2,
    Step.RELOAD_WEIGHTS: 4.0,
    Step.WAKE_KV_CACHE: 0.3,
    Step.RESET_PREFIX_CACHE: 0.05,
    Step.WARMUP: 0.5,
}

#: With an override, the eviction takes this share of a switch and the wake the rest
#: (sleeping is the cheaper half for level 2, the dearer for level 1; 40 % splits them).
EVICT_SHARE = 0.4


@dataclass(frozen=True)
class SwitchModel:
    override_secs: float | None = None  # evict + wake of one switch, whatever the steps

    def phases(self, op: Operation) -> tuple[tuple[str, float], ...]:
        """(phase, seconds) for each step of `op`, in order."""
        steps = op.steps or (Step.STOP,)
        base = [STEP_SECS[step] for step in steps]
        if self.override_secs is not None:
            share = EVICT_SHARE if op.kind is not OpKind.WAKE else 1 - EVICT_SHARE
            total = sum(base)
            base = [self.override_secs * share * secs / total for secs in base]
        return tuple((PHASE_OF[step], secs) for step, secs in zip(steps, base, strict=True))

    def duration(self, op: Operation) -> float:
        return sum(secs for _, secs in self.phases(op))
