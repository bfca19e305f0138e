"""What the scheduler core starts from: the GPUs' capacity and the models already baked.

Owns: the per-GPU capacity at start (the probe's totals, else a nominal size for each
GPU a model names) and the initial state of each model whose `checkpoint_path` names a
usable pre-baked image (CHECKPOINTED with the image's weights, restored on first
request), sweeping the staging litter of an interrupted run first.
Does not: open the probe or build `Checkpoints` (the composition root does) or make an
image (`prebake` does).
"""

from __future__ import annotations

from pathlib import Path

import structlog

from gpumux.checkpoint.checkpoints import Checkpoints
from gpumux.checkpoint.identity import ModelIdentity
from gpumux.core.config import GIB, Config, WeightStrategy
from gpumux.core.states import ModelState
from gpumux.gpu.probe import GpuProbe

log = structlog.get_logger(__name__)

#: Nominal per-GPU capacity when no probe can tell (placement then reasons in fractions).
NOMINAL_CAPACITY_BYTES = 80 * GIB

InitialStates = dict[str, tuple[ModelState, WeightStrategy | None]]


async def gpu_capacity(config: Config, probe: GpuProbe) -> dict[int, int]:
    """Total bytes per GPU as the probe sees them, else a nominal size per configured GPU."""
    gpus = await probe.read()
    if gpus:
        return {g.index: g.total_bytes for g in gpus}
    indices = {i for m in config.models.values() for i in m.gpu_indices}
    log.warning("gpu_capacity_unknown", probe=probe.name, nominal_bytes=NOMINAL_CAPACITY_BYTES)
    return dict.fromkeys(indices, NOMINAL_CAPACITY_BYTES)


async def initial_states(config: Config, checkpoints: Checkpoints | None) -> InitialStates:
    """CHECKPOINTED (with the image's weights) for each model whose pre-baked image exists."""
    states: InitialStates = {}
    if checkpoints is None:
        return states
    # Nothing runs yet, so every staging directory is litter of an interrupted run.
    beside = [Path(m.checkpoint_path) for m in config.models.values() if m.checkpoint_path]
    await checkpoints.catalog.sweep_staging([*beside, *(p.parent for p in beside)])
    for alias, model in config.models.items():
        if model.checkpoint_path is None:
            continue
        identity = ModelIdentity.of(config, alias)
        weights = await checkpoints.adopt_prebaked(alias, Path(model.checkpoint_path), identity)
        if weights is not None:
            states[alias] = (ModelState.CHECKPOINTED, weights)
            log.info("model_prebaked", model=alias, path=model.checkpoint_path)
    return states
