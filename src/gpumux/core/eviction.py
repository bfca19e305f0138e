"""The eviction ladder as data: which steps evict or wake a model, in which order.

Owns: the weights × process model of design §3 turned into step sequences, the state a
model rests in after eviction, and the phase name each step is measured under.
Does not: perform steps (the orchestrator does, through its effects). Pure.

Why data: the orchestrator, the simulator and the tests all walk the same sequences,
so "skipping reload_weights after level 2" (which makes vLLM answer garbage) can only
happen in one place.
"""

from __future__ import annotations

from enum import StrEnum

from gpumux.core.config import EvictionConfig, ProcessStrategy, WeightStrategy
from gpumux.core.states import ModelState


class Step(StrEnum):
    SLEEP_OFFLOAD = "sleep_offload"  # POST /sleep?level=1&mode=wait
    SLEEP_DISCARD = "sleep_discard"  # POST /sleep?level=2&mode=wait
    CUDA_SUSPEND = "cuda_suspend"
    CRIU_DUMP = "criu_dump"
    STOP = "stop"  # SIGTERM the group, grace, SIGKILL, reap
    COLD_START = "cold_start"  # spawn, wait for /health
    CUDA_RESUME = "cuda_resume"
    CRIU_RESTORE = "criu_restore"
    WAKE_ALL = "wake_all"  # POST /wake_up
    WAKE_WEIGHTS = "wake_weights"  # POST /wake_up?tags=weights
    RELOAD_WEIGHTS = "reload_weights"  # POST /collective_rpc {"method": "reload_weights"}
    WAKE_KV_CACHE = "wake_kv_cache"  # POST /wake_up?tags=kv_cache
    RESET_PREFIX_CACHE = "reset_prefix_cache"  # POST /reset_prefix_cache
    WARMUP = "warmup"  # one 1-token completion


#: Metric phase (gpumux_switch_phase_seconds{phase}) for each step.
PHASE_OF: dict[Step, str] = {
    Step.SLEEP_OFFLOAD: "sleep",
    Step.SLEEP_DISCARD: "sleep",
    Step.CUDA_SUSPEND: "suspend",
    Step.CRIU_DUMP: "dump",
    Step.STOP: "stop",
    Step.COLD_START: "start",
    Step.CUDA_RESUME: "resume",
    Step.CRIU_RESTORE: "restore",
    Step.WAKE_ALL: "wake",
    Step.WAKE_WEIGHTS: "wake",
    Step.RELOAD_WEIGHTS: "reload",
    Step.WAKE_KV_CACHE: "wake",
    Step.RESET_PREFIX_CACHE: "wake",
    Step.WARMUP: "warmup",
}

#: How a live backend's weights stand after each step that changes them (a CRIU image
#: records it, so its restore knows which wake steps the weights need).
WEIGHTS_AFTER: dict[Step, WeightStrategy] = {
    Step.COLD_START: WeightStrategy.RETAIN,
    Step.SLEEP_OFFLOAD: WeightStrategy.OFFLOAD,
    Step.SLEEP_DISCARD: WeightStrategy.DISCARD,
    Step.WAKE_ALL: WeightStrategy.RETAIN,
    Step.WAKE_KV_CACHE: WeightStrategy.RETAIN,
}

_WEIGHTS_SLEEP: dict[WeightStrategy, tuple[Step, ...]] = {
    WeightStrategy.RETAIN: (),
    WeightStrategy.OFFLOAD: (Step.SLEEP_OFFLOAD,),
    WeightStrategy.DISCARD: (Step.SLEEP_DISCARD,),
}

_WEIGHTS_WAKE: dict[WeightStrategy, tuple[Step, ...]] = {
    WeightStrategy.RETAIN: (),
    WeightStrategy.OFFLOAD: (Step.WAKE_ALL,),
    WeightStrategy.DISCARD: (
        Step.WAKE_WEIGHTS,
        Step.RELOAD_WEIGHTS,
        Step.WAKE_KV_CACHE,
        Step.RESET_PREFIX_CACHE,
    ),
}

_PROCESS_EVICT: dict[ProcessStrategy, tuple[tuple[Step, ...], ModelState]] = {
    ProcessStrategy.KEEP_RUNNING: ((), ModelState.SLEEPING),
    ProcessStrategy.CUDA_SUSPEND: ((Step.CUDA_SUSPEND,), ModelState.SUSPENDED),
    ProcessStrategy.CHECKPOINT: ((Step.CRIU_DUMP,), ModelState.CHECKPOINTED),
    ProcessStrategy.STOP: ((Step.STOP,), ModelState.STOPPED),
}


def evict_plan(eviction: EvictionConfig) -> tuple[tuple[Step, ...], ModelState]:
    """The steps that evict an awake model, and the state it rests in afterwards."""
    process_steps, resting = _PROCESS_EVICT[eviction.process]
    if eviction.process is ProcessStrategy.STOP:
        # The weights step would only delay a kill that frees everything anyway.
        return process_steps, resting
    return _WEIGHTS_SLEEP[eviction.weights] + process_steps, resting


def wake_plan(weights: WeightStrategy, from_state: ModelState, *, warmup: bool) -> tuple[Step, ...]:
    """The steps that make a model in `from_state` ready again.

    `weights` is the strategy the model was evicted with (for a pre-baked image, the one
    recorded in its manifest).
    """
    tail = (Step.WARMUP,) if warmup else ()
    if from_state is ModelState.STOPPED or from_state is ModelState.FAILED:
        return (Step.COLD_START, *tail)
    process: dict[ModelState, tuple[Step, ...]] = {
        ModelState.SLEEPING: (),
        ModelState.SUSPENDED: (Step.CUDA_RESUME,),
        ModelState.CHECKPOINTED: (Step.CRIU_RESTORE,),
    }
    if from_state not in process:
        raise ValueError(f"cannot wake a model that is {from_state.value}")
    return process[from_state] + _WEIGHTS_WAKE[weights] + tail


def pins_host_memory(eviction: EvictionConfig) -> bool:
    """Whether a model evicted this way keeps its weights (or all its GPU state) in host RAM.

    Level-1 sleep copies the weights to pinned host memory; cuda_suspend moves every CUDA
    allocation there. A CRIU image or a stop leaves nothing behind in RAM.
    """
    if eviction.process is ProcessStrategy.CUDA_SUSPEND:
        return True
    return (
        eviction.process is ProcessStrategy.KEEP_RUNNING
        and eviction.weights is WeightStrategy.OFFLOAD
    )


def without_host_pin(eviction: EvictionConfig) -> EvictionConfig:
    """The nearest eviction that pins no host RAM: level 2 instead of level 1, else a stop."""
    if eviction.process is ProcessStrategy.KEEP_RUNNING:
        return EvictionConfig(weights=WeightStrategy.DISCARD, process=ProcessStrategy.KEEP_RUNNING)
    return EvictionConfig(weights=eviction.weights, process=ProcessStrategy.STOP)
