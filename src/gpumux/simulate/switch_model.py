"""How long each simulated evict or wake operation takes, step by step.

Owns: the per-step durations the simulator charges (defaults in the range the reference
measurements report for an 8B model: level-1 sleep seconds, level-2 wake with a weight
reload, CRIU tens of seconds, cold start near a minute) and the `--switch-cost` override,
which makes every evict + wake pair cost exactly the given seconds; `StepCosts`, what the
simulated effects ask for each step (this model, or a cost profile's `ProfileCosts`), and
`step_costs`, which makes one for a simulation from either.
Does not: decide anything; the core plans the steps and the orchestrator runs them
(`simulate.effects` charges each one what this says). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gpumux.core.config import Config
from gpumux.core.eviction import PHASE_OF, Step
from gpumux.scheduler.messages import Operation, OpKind
from gpumux.simulate.cost_profile import CostProfile
from gpumux.simulate.profile_costs import ProfileCosts

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


class StepCosts(Protocol):
    def step_secs(self, op: Operation, step: Step, *, first_sleep: bool = False) -> float:
        """Seconds `step` takes as part of `op`; `first_sleep`: the process has never
        slept at level 1 (so a level-1 sleep pays for pinning its host memory)."""

    def least_step_secs(self, op: Operation, step: Step) -> float:
        """The least `step` of `op` can ever take (the cheapest history): for bounds."""


@dataclass(frozen=True)
class SwitchModel:
    override_secs: float | None = None  # evict + wake of one switch, whatever the steps

    def step_secs(self, op: Operation, step: Step, *, first_sleep: bool = False) -> float:
        """Seconds `step` takes as part of `op` (the same on a first sleep as on any).

        With an override, every step of `op` is scaled by the same factor, the one that
        makes `op`'s planned steps add up to its share of the override; a step outside
        the plan (the cold start after a failed wake, a kill) is scaled alike.
        """
        secs = STEP_SECS[step]
        if self.override_secs is None:
            return secs
        total = sum(STEP_SECS[planned] for planned in op.steps)
        if total == 0:
            return 0.0
        share = EVICT_SHARE if op.kind is not OpKind.WAKE else 1 - EVICT_SHARE
        return self.override_secs * share * secs / total

    def least_step_secs(self, op: Operation, step: Step) -> float:
        return self.step_secs(op, step)

    def phases(self, op: Operation) -> tuple[tuple[str, float], ...]:
        """(phase, seconds) for each planned step of `op`, in order (when none fails)."""
        return tuple((PHASE_OF[step], self.step_secs(op, step)) for step in op.steps)

    def duration(self, op: Operation) -> float:
        return sum(secs for _, secs in self.phases(op))


#: Where a simulation's step costs come from: fixed per-step seconds or a cost profile.
CostSource = SwitchModel | CostProfile


def step_costs(source: CostSource, config: Config) -> StepCosts:
    """The step costs of one simulation of `config` (a profile's carry a page cache)."""
    if isinstance(source, CostProfile):
        return ProfileCosts(source, config)
    return source
