"""`eviction: "auto"`'s rule (pure): priors by size, the host-RAM budget, reuse."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from gpumux.core.config import EvictionConfig
from gpumux.policy.levels import (
    CHECKPOINT,
    CHECKPOINT_WHOLE,
    LEVEL1,
    LEVEL2,
    LEVELS,
    STOP,
    SUSPEND,
    Sizes,
    available_levels,
    choose_level,
    prior_price,
    prior_secs,
)

pytestmark = pytest.mark.unit
GB = 10**9
BIG = Sizes(weights_bytes=30 * GB, gpu_bytes=72 * GB, has_backup=False)


def prior(sizes: Sizes) -> Callable[[EvictionConfig], float]:
    return lambda level: prior_price(level, sizes)


def test_priors_scale_with_size_and_the_first_level1_sleep_pays_pinning() -> None:
    small = Sizes(weights_bytes=3 * GB, gpu_bytes=8 * GB, has_backup=False)
    for level in LEVELS:
        assert prior_secs(level, "wake", BIG) >= prior_secs(level, "wake", small)
    backed = Sizes(weights_bytes=30 * GB, gpu_bytes=72 * GB, has_backup=True)
    first, later = prior_secs(LEVEL1, "evict", BIG), prior_secs(LEVEL1, "evict", backed)
    assert first > 10 > later  # 30 GB: ~13 s of pinning first, then ~0.6 s of copy


def test_levels_need_sleep_mode_or_a_checkpoint_section() -> None:
    assert available_levels(sleep_mode=True, checkpoint=False) == (LEVEL1, LEVEL2, STOP)
    assert available_levels(sleep_mode=False, checkpoint=True) == (SUSPEND, CHECKPOINT_WHOLE, STOP)


def test_with_room_and_reuse_soon_the_cheapest_round_trip_wins() -> None:
    backed = Sizes(weights_bytes=30 * GB, gpu_bytes=72 * GB, has_backup=True)
    price = prior(backed)
    choice = choose_level(LEVELS, price, backed, host_room=100 * GB, reuse_in=10.0)
    assert choice.level == LEVEL1  # the backup is there: 0.6 s each way


def test_a_model_that_never_slept_at_level1_still_prefers_it_with_room() -> None:
    choice = choose_level(LEVELS, prior(BIG), BIG, host_room=100 * GB, reuse_in=10.0)
    assert choice.level == LEVEL1  # the pinning is paid once for the process's life


def test_without_host_room_level1_gives_way_to_a_level_that_pins_nothing_new() -> None:
    price = prior(BIG)
    choice = choose_level(LEVELS, price, BIG, host_room=5 * GB, reuse_in=10.0)
    assert choice.level in (LEVEL2, CHECKPOINT, STOP)
    assert choice.level == LEVEL2  # the cheapest of those: reload from the page cache


def test_a_model_not_needed_for_long_gives_its_host_ram_back() -> None:
    backed = Sizes(weights_bytes=30 * GB, gpu_bytes=72 * GB, has_backup=True)
    price = prior(backed)
    choice = choose_level(LEVELS, price, backed, host_room=20 * GB, reuse_in=3600.0)
    assert choice.level == LEVEL2, choice
    unknown = choose_level(LEVELS, price, backed, host_room=20 * GB, reuse_in=math.inf)
    assert unknown.level == LEVEL1  # no evidence either way: the cheapest round trip
    roomy = choose_level(LEVELS, price, backed, host_room=100 * GB, reuse_in=3600.0)
    assert roomy.level == LEVEL1  # RAM to spare: giving it back gains nothing
    unbudgeted = choose_level(LEVELS, price, backed, host_room=None, reuse_in=3600.0)
    assert unbudgeted.level == LEVEL1


def test_learned_costs_override_the_priors() -> None:
    def price(level: EvictionConfig) -> float:
        return 1.0 if level == CHECKPOINT else 50.0

    choice = choose_level(LEVELS, price, BIG, host_room=None, reuse_in=5.0)
    assert choice.level == CHECKPOINT
