"""Step durations from a cost profile: each model's bytes over the profile's rates.

Owns: `ProfileCosts`, the step costs of one simulation under a `CostProfile`: how many
bytes each step of each model moves (weights and GPU footprint from the profile, else the
config), what that takes at the profile's rates, whether a process pays for pinning (only
on its first level-1 sleep, which the simulated effects tell it), and the machine's page
cache (LRU over the models' weight files, `page_cache_gib` of it: a reload or a cold start
reads from the cache when the files are there, from disk otherwise, and leaves them
there). A model with measured seconds for an operation takes exactly those, spread over
the operation's steps in proportion to what the rates say.
Does not: keep processes or time (`simulate.effects` does), or read a profile file
(`simulate.cost_profile`). Pure. One instance per simulation: the page cache is state.

Simplifications (docs/policies.md, "Cost profiles"): a tensor-parallel model is charged as
one process moving all its bytes; the page cache does not shrink while pinned memory
grows; the cache starts empty, as after a reboot.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from gpumux.core.config import GIB, Config, ModelConfig, WeightStrategy
from gpumux.core.eviction import Step
from gpumux.scheduler.messages import Operation, OpKind
from gpumux.simulate.cost_profile import CostProfile
from gpumux.simulate.scenario import capacity_bytes

_GB = 1e9  # rates are in GB/s (decimal, as the measurements report them)
_CALLS = (Step.SLEEP_DISCARD, Step.WAKE_WEIGHTS, Step.WAKE_KV_CACHE, Step.RESET_PREFIX_CACHE)
_MOCK_WEIGHTS_FLAG = "--mock-model-gib"


@dataclass(frozen=True)
class ModelBytes:
    weights: float
    footprint: float  # what the process holds on its GPUs while awake
    residual: float  # what a sleeping process still holds (sleeping_residual_gib)


def _flag(model: ModelConfig, flag: str) -> float | None:
    args = model.extra_args
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return float(args[i + 1])
        if arg.startswith(flag + "="):
            return float(arg.split("=", 1)[1])
    return None


def model_bytes(profile: CostProfile, config: Config) -> dict[str, ModelBytes]:
    """Each model's sizes: the profile's, else util x card x TP and the mock's weights
    flag, else that share of the footprint."""
    cards = capacity_bytes(config)
    residual = config.gpu.sleeping_residual_gib * GIB
    sizes: dict[str, ModelBytes] = {}
    for alias, model in config.models.items():
        given = profile.models.get(alias)
        card = cards[model.gpu_indices[0]]
        footprint = model.gpu_memory_utilization * card * len(model.gpu_indices)
        if given is not None and given.footprint_gib is not None:
            footprint = given.footprint_gib * GIB
        weights_gib = given.weights_gib if given is not None else None
        if weights_gib is None:
            weights_gib = _flag(model, _MOCK_WEIGHTS_FLAG)
        weights = (
            weights_gib * GIB if weights_gib is not None else profile.weights_share * footprint
        )
        sizes[alias] = ModelBytes(weights, footprint, min(residual, footprint))
    return sizes


def measured_key(op: Operation) -> str:
    """The learned-cost key (`policy.costs`) of `op`: `op|weights+process`."""
    if op.kind is OpKind.WAKE:
        name = "cold_start" if Step.COLD_START in op.steps else "wake"
    else:
        name = "evict"
    return f"{name}|{op.eviction}"


class ProfileCosts:
    """Implements `switch_model.StepCosts` for one simulation of `config`."""

    def __init__(self, profile: CostProfile, config: Config) -> None:
        self._profile = profile
        self._bytes = model_bytes(profile, config)
        self._cache: OrderedDict[str, float] = OrderedDict()  # model -> cached file bytes

    def bytes_of(self, model: str) -> ModelBytes:
        return self._bytes[model]

    def step_secs(self, op: Operation, step: Step, *, first_sleep: bool = False) -> float:
        secs = self._charged(op, step, first_sleep=first_sleep, cached=None)
        if step in (Step.RELOAD_WEIGHTS, Step.COLD_START):
            self._read(op.model)
        return secs

    def least_step_secs(self, op: Operation, step: Step) -> float:
        """Pinning paid already, the files in the page cache."""
        return self._charged(op, step, first_sleep=False, cached=True)

    def _charged(
        self, op: Operation, step: Step, *, first_sleep: bool, cached: bool | None
    ) -> float:
        secs = self.estimate(op, step, first_sleep=first_sleep, cached=cached)
        measured = self._measured(op)
        if measured is not None and step in op.steps:
            total = sum(
                self.estimate(op, s, first_sleep=first_sleep, cached=cached) for s in op.steps
            )
            secs = measured * secs / total if total > 0 else measured / len(op.steps)
        return secs

    def estimate(
        self, op: Operation, step: Step, *, first_sleep: bool = False, cached: bool | None = None
    ) -> float:
        """What `step` of `op` costs at the profile's rates; `cached`: whether the model's
        files are in the page cache (None: as the cache is now)."""
        p, size = self._profile, self._bytes[op.model]
        weights = size.weights / _GB
        if step is Step.SLEEP_OFFLOAD:
            pin = weights / p.pin_gbps if first_sleep else 0.0
            return p.call_secs + pin + weights / p.pinned_copy_gbps
        if step is Step.WAKE_ALL:
            return p.call_secs + weights / p.pinned_copy_gbps
        if step in _CALLS:
            return p.call_secs
        if step is Step.RELOAD_WEIGHTS:
            return p.call_secs + self._read_secs(op.model, cached)
        if step is Step.COLD_START:
            return p.process_start_secs + self._read_secs(op.model, cached)
        if step is Step.CUDA_SUSPEND:
            return self._on_gpu(op) / _GB / p.cuda_suspend_gbps
        if step is Step.CUDA_RESUME:
            return self._on_gpu(op) / _GB / p.cuda_resume_gbps
        if step is Step.CRIU_DUMP:
            return p.criu_dump_fixed_secs + self._image(op) / _GB / p.criu_dump_gbps
        if step is Step.CRIU_RESTORE:
            return p.criu_restore_fixed_secs + self._image(op) / _GB / p.criu_restore_gbps
        if step is Step.STOP:
            return p.stop_secs
        return p.warmup_secs  # Step.WARMUP

    def _measured(self, op: Operation) -> float | None:
        given = self._profile.models.get(op.model)
        return given.seconds.get(measured_key(op)) if given is not None else None

    def _on_gpu(self, op: Operation) -> float:
        """What cuda-checkpoint moves: the whole footprint, or what a sleep left behind."""
        size = self._bytes[op.model]
        return size.footprint if op.eviction.weights is WeightStrategy.RETAIN else size.residual

    def _image(self, op: Operation) -> float:
        """A CRIU image: the process, plus the GPU memory or the offloaded weights it holds."""
        size = self._bytes[op.model]
        held = {
            WeightStrategy.RETAIN: size.footprint,
            WeightStrategy.OFFLOAD: size.weights,
            WeightStrategy.DISCARD: 0.0,
        }[op.eviction.weights]
        return self._profile.criu_process_image_gib * GIB + held

    def _read_secs(self, model: str, cached: bool | None) -> float:
        weights = self._bytes[model].weights / _GB
        if cached is None:
            cached = model in self._cache
        rate = self._profile.page_cache_read_gbps if cached else self._profile.disk_read_gbps
        return weights / rate

    def _read(self, model: str) -> None:
        """The model's files were just read: they are the most recent in the page cache."""
        self._cache.pop(model, None)
        self._cache[model] = self._bytes[model].weights
        limit = self._profile.page_cache_gib * GIB
        while self._cache and sum(self._cache.values()) > limit:
            self._cache.popitem(last=False)
