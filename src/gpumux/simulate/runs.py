"""One `simulate` invocation's work: pick the config and load, run each policy on them.

Owns: turning a workload name or trace into arrivals (and, for `many-models`, the
eight-model config), and running every requested policy on the same arrivals, so the
numbers compare like for like. The CLI command and `bench/policies.py` both call this.
Does not: parse arguments or print (`command`), or draw (`plot`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gpumux.core.config import Config
from gpumux.simulate import scenario
from gpumux.simulate.engine import Simulation
from gpumux.simulate.records import RunRecord
from gpumux.simulate.switch_model import CostSource
from gpumux.simulate.workloads import Arrival, generate, load_trace

DEFAULT_DURATION_SECS = 3600.0


def load(
    config: Config,
    *,
    workload: str | None = None,
    trace: Path | None = None,
    duration: float | None = None,
    seed: int = 0,
) -> tuple[Config, list[Arrival]]:
    """The config to simulate and its arrivals. A trace is replayed whole unless a
    duration cuts it; a workload runs for `duration` (default one hour)."""
    if trace is not None:
        arrivals = load_trace(trace, list(config.models))
        if duration is not None:
            arrivals = [a for a in arrivals if a.t < duration]
        return config, arrivals
    if workload is None:
        raise ValueError("give a workload or a trace")
    if workload == "many-models":
        config = scenario.many_models(config)
    secs = DEFAULT_DURATION_SECS if duration is None else duration
    return config, generate(workload, list(config.models), secs, seed)


def run_policies(
    config: Config,
    arrivals: Sequence[Arrival],
    policies: Sequence[str],
    costs: CostSource,
) -> dict[str, RunRecord]:
    return {
        policy: Simulation(scenario.for_policy(config, policy), arrivals, costs).run()
        for policy in policies
    }
