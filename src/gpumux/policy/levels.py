"""`eviction: "auto"`: the level of each eviction, chosen per switch.

Owns: the levels auto chooses among, each level's prior costs before anything was
measured (scaled by the model's size with the rates measured on one H200, design §8),
and the rule. For a model about to leave, every level ℓ it may use gets

    price(ℓ) = evict(ℓ) + wake(ℓ)        (learned per model and level, else the prior)

(the pinning of a first level-1 sleep spread over `PIN_AMORTIZED_OVER` round trips),
and the rule picks, among the levels the host-RAM budget allows (a level that pins new
host RAM must leave `host_memory.reserve_gib` free), the lowest price; except that a
model predicted not to be needed for a long time (`reuse_in` ≥ `RELEASE_AFTER` × its
cheapest price; unknown before two arrivals) while host RAM is tight (the room left
above the reserve would not hold another copy of its weights) takes the cheapest level
that holds *no* host RAM, so that RAM goes to models that will wake sooner. Without a
budget (or a reading) nothing is gained by giving RAM back, so the faster wake stays.
A process that already slept at level 1 holds its pinned backup anyway (vLLM frees it
only at exit), so level 1 costs it no new RAM, and leaving it at level 1 keeps that RAM
pinned: "holds no host RAM" means level 2, a
checkpoint or a stop.
Does not: read costs or the budget itself (the caller passes them in) or carry the
eviction out. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from gpumux.core.config import EvictionConfig, ProcessStrategy, WeightStrategy
from gpumux.core.eviction import pins_host_memory

W, P = WeightStrategy, ProcessStrategy
LEVEL1 = EvictionConfig(weights=W.OFFLOAD, process=P.KEEP_RUNNING)
LEVEL2 = EvictionConfig(weights=W.DISCARD, process=P.KEEP_RUNNING)
SUSPEND = EvictionConfig(weights=W.RETAIN, process=P.CUDA_SUSPEND)
CHECKPOINT = EvictionConfig(weights=W.DISCARD, process=P.CHECKPOINT)
#: Without sleep mode the weights cannot be discarded first: the image holds them too.
CHECKPOINT_WHOLE = EvictionConfig(weights=W.RETAIN, process=P.CHECKPOINT)
STOP = EvictionConfig(weights=W.RETAIN, process=P.STOP)
#: In the order ties are broken: the shallower level first.
LEVELS = (LEVEL1, LEVEL2, SUSPEND, CHECKPOINT, STOP)

#: A model not needed for this many of its cheapest round trips gives its host RAM back.
RELEASE_AFTER = 20.0
#: A process's first level-1 sleep pins its backup once for its whole life; the price of
#: level 1 counts that pinning spread over this many round trips, not on the first alone
#: (else level 2 would always look cheaper to a model that never slept at level 1 yet).
PIN_AMORTIZED_OVER = 4.0

GB = 1e9
#: Rates measured on one H200 in a VM (design §8), bytes per second, and fixed costs.
PIN_ALLOC = 2.35 * GB  # fresh pinned host memory, paid on a process's first level-1 sleep
PINNED_COPY = 54.0 * GB  # level-1 sleep and wake, each way
#: Level-2 reload_weights and cold starts read the weights' files: 4.5–7.7 GB/s from the
#: page cache, 1.4–1.9 GB/s from disk. The daemon cannot see the page cache, so the prior
#: assumes disk (a first reload pays it; the learned cost takes over after one sample).
FILE_RELOAD = 1.6 * GB
SUSPEND_RATE = 2.2 * GB  # cuda-checkpoint suspend (all GPU memory of the process)
RESUME_RATE = 6.5 * GB
CRIU_RATE = 1.5 * GB  # CRIU dump or restore of the process's host memory (disk-bound)
FIXED_SECS = 0.5  # the HTTP round trips and engine bookkeeping of each operation
COLD_START_SECS = 30.0  # process start, CUDA init, graph capture (before loading weights)


@dataclass(frozen=True)
class Sizes:
    """What the priors scale with."""

    weights_bytes: int  # the model's weights (what level 1 pins, level 2 reloads)
    gpu_bytes: int  # what its process holds on the GPUs awake (what a suspend moves)
    has_backup: bool  # its process already slept at level 1 (no new pinning)


def prior_secs(level: EvictionConfig, op: str, sizes: Sizes) -> float:
    """Seconds to `op` ("evict" or "wake") at `level` before any measurement."""
    weights, gpu = sizes.weights_bytes, sizes.gpu_bytes
    if level == LEVEL1:
        if op == "evict":
            pin = 0.0 if sizes.has_backup else weights / PIN_ALLOC
            return FIXED_SECS + pin + weights / PINNED_COPY
        return FIXED_SECS + weights / PINNED_COPY
    if level == LEVEL2:
        return FIXED_SECS if op == "evict" else FIXED_SECS + weights / FILE_RELOAD
    if level == SUSPEND:
        return FIXED_SECS + gpu / (SUSPEND_RATE if op == "evict" else RESUME_RATE)
    if level == CHECKPOINT:
        image = gpu - weights  # weights discarded first; the rest of the process is dumped
        criu = FIXED_SECS + max(0, image) / CRIU_RATE
        return criu if op == "evict" else criu + weights / FILE_RELOAD
    if level == CHECKPOINT_WHOLE:
        return FIXED_SECS + gpu / CRIU_RATE
    return 2.0 if op == "evict" else COLD_START_SECS + weights / FILE_RELOAD


def prior_price(level: EvictionConfig, sizes: Sizes) -> float:
    """evict + wake at `level` before any measurement, first-sleep pinning amortized."""
    if level == LEVEL1 and not sizes.has_backup:
        backed = Sizes(sizes.weights_bytes, sizes.gpu_bytes, has_backup=True)
        pinning = sizes.weights_bytes / PIN_ALLOC / PIN_AMORTIZED_OVER
        return prior_price(level, backed) + pinning
    return prior_secs(level, "evict", sizes) + prior_secs(level, "wake", sizes)


def available_levels(*, sleep_mode: bool, checkpoint: bool) -> tuple[EvictionConfig, ...]:
    """The levels a model may use: sleep levels need sleep mode, suspend and checkpoint a
    `checkpoint` section."""
    found: list[EvictionConfig] = []
    for level in LEVELS:
        if level == CHECKPOINT and checkpoint and not sleep_mode:
            found.append(CHECKPOINT_WHOLE)
            continue
        if level.needs_sleep_mode and not sleep_mode:
            continue
        if level.needs_checkpoint_section and not checkpoint:
            continue
        found.append(level)
    return tuple(found)


def holds_host_ram(level: EvictionConfig) -> bool:
    """Whether the model holds pinned host RAM once evicted at `level` (level 2, a
    checkpoint and a stop give back even the backup of an earlier level-1 sleep)."""
    return pins_host_memory(level)


def new_host_ram(level: EvictionConfig, sizes: Sizes) -> int:
    """Host RAM `level` pins that the model does not hold already."""
    if level == LEVEL1:
        return 0 if sizes.has_backup else sizes.weights_bytes
    if level == SUSPEND:
        return sizes.gpu_bytes
    return 0


@dataclass(frozen=True)
class Choice:
    level: EvictionConfig
    why: str
    prices: dict[str, float]


def choose_level(
    levels: tuple[EvictionConfig, ...],
    price: Callable[[EvictionConfig], float],
    sizes: Sizes,
    *,
    host_room: int | None,
    reuse_in: float,
) -> Choice:
    """The level to evict with now.

    `price(level)` is evict + wake for this model (learned, else the prior); `host_room`
    the host RAM that may still be pinned above the reserve (None: no budget, or no
    reading yet); `reuse_in` the predicted seconds until the model is needed again.
    """
    prices = {str(level): price(level) for level in levels}
    allowed = [
        level for level in levels if host_room is None or new_host_ram(level, sizes) <= host_room
    ]
    allowed = allowed or [lv for lv in levels if new_host_ram(lv, sizes) == 0] or list(levels)
    best = min(allowed, key=lambda lv: prices[str(lv)])
    why = "cheapest round trip"
    if len(allowed) < len(levels):
        why = "cheapest round trip the host-RAM budget allows"
    cheapest = prices[str(best)]
    tight = host_room is not None and host_room < sizes.weights_bytes
    long_idle = math.isfinite(reuse_in) and reuse_in >= RELEASE_AFTER * cheapest
    if holds_host_ram(best) and tight and long_idle:
        releasing = [lv for lv in allowed if not holds_host_ram(lv)]
        if releasing:
            best = min(releasing, key=lambda lv: prices[str(lv)])
            why = "not needed soon: gives its host RAM back"
    return Choice(best, why, prices)
