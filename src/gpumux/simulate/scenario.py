"""What one simulation runs on: the config (adjusted for simulation), capacity and start.

Owns: the config the simulator drives (warm-up off, since models start in their resting
states; the policy type of the run; for `many-models`, eight models on two GPUs built in
code when the given config has fewer than eight), the GPU capacities in bytes (from
`gpu.fake_capacity_gib`, whatever the probe), and the initial model states.
Does not: run the simulation (`engine`) or generate load (`workloads`). Pure.
"""

from __future__ import annotations

from typing import Any

from gpumux.core.config import GIB, Config, EvictionConfig, WeightStrategy
from gpumux.core.eviction import evict_plan
from gpumux.core.states import ModelState

MANY_MODELS = 8
MANY_GPUS = 2


def for_policy(config: Config, policy_type: str) -> Config:
    """The config with `policy_type` and without warm-up (models start asleep already)."""
    policy = config.policy.model_copy(update={"policy_type": policy_type})
    return config.model_copy(update={"policy": policy, "warmup": False})


def many_models(config: Config) -> Config:
    """Eight models at 0.9 of one GPU each, four per GPU on two GPUs.

    Built from the first model of `config` (same eviction, queue and batch size) and the
    config's policy; a config that already has eight or more models is used as it is.
    """
    if len(config.models) >= MANY_MODELS:
        return config
    first = next(iter(config.models.values()))
    capacity = config.gpu.fake_capacity_gib[0]
    raw: dict[str, Any] = config.model_dump(mode="json", exclude={"models", "gpu"})
    raw["gpu"] = {**config.gpu.model_dump(mode="json"), "probe": "fake"}
    raw["gpu"]["fake_capacity_gib"] = [capacity] * MANY_GPUS
    template = first.model_dump(mode="json", exclude={"port", "gpus", "extra_args"})
    raw["models"] = {
        f"m{i}": {
            **template,
            "eviction": _as_json(first.eviction or config.policy.eviction),
            "port": 20000 + i,
            "gpus": [i % MANY_GPUS],
            "extra_args": ["--gpu-memory-utilization", "0.9"],
        }
        for i in range(MANY_MODELS)
    }
    # 20000+ stays clear of the usual proxy, metrics and admin ports; validation reports a clash.
    return Config.model_validate(raw)


def _as_json(eviction: EvictionConfig | str) -> object:
    """An eviction as the config file writes it (`"auto"` stays a string)."""
    return eviction if isinstance(eviction, str) else eviction.model_dump(mode="json")


def capacity_bytes(config: Config) -> dict[int, int]:
    """Bytes per GPU from `gpu.fake_capacity_gib`. A config written for real GPUs (probe
    `nvml`) may use more GPUs than that list names; those get its last entry."""
    sizes = config.gpu.fake_capacity_gib
    used = {g for model in config.models.values() for g in model.gpu_indices}
    return {
        g: int(GIB * (sizes[g] if g < len(sizes) else sizes[-1]))
        for g in used | set(range(len(sizes)))
    }


def resting_states(config: Config) -> dict[str, tuple[ModelState, WeightStrategy | None]]:
    """Every model where its eviction leaves it: the steady state of a shared GPU."""
    states: dict[str, tuple[ModelState, WeightStrategy | None]] = {}
    for alias in config.models:
        eviction = config.eviction_for(alias)
        resting = evict_plan(eviction)[1]
        states[alias] = (resting, None if resting is ModelState.STOPPED else eviction.weights)
    return states
