"""GPU memory is never over budget while evictions overlap wakes (hypothesis, virtual time).

The real core and policies run in `OverlapWorld`, which carries out their operations with
steps that take random virtual time, reports `GpuFreed` after an eviction step that freed
the GPU while steps remain, and keeps its own account of what each process physically
holds (a wake holds its whole share from the moment it begins). Under random arrivals,
models, GPU shares and multi-step evictions, that account never exceeds a GPU, and every
request is answered. A fixed scenario shows the world does overlap (the property is not
vacuous).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpumux.core.config import GIB, Config
from gpumux.core.eviction import Step
from tests.support.overlap_world import OverlapWorld
from tests.support.sim import make_config as sim_config

pytestmark = pytest.mark.unit

#: Evictions of several steps (the GPU is free after the first) and of one.
EVICTIONS = (
    "offload+cuda_suspend",
    "discard+cuda_suspend",
    "offload+checkpoint",
    "discard+checkpoint",
    "offload+keep_running",
    "retain+stop",
)
POLICIES = ("fifo", "cost_aware", "time_slice")


def make_config(
    policy: str, utils: list[float], evictions: list[str], gpus: int, *, overlap: bool = True
) -> Config:
    """The property tests' config, with long request timeouts (a wake may wait for CRIU)."""
    return sim_config(policy, utils, evictions, gpus, request_timeout_secs=600, overlap=overlap)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[OverlapWorld, int]:
    n = draw(st.integers(2, 5))
    gpus = draw(st.integers(1, 2))
    utils = draw(st.lists(st.sampled_from([0.3, 0.45, 0.6, 0.9]), min_size=n, max_size=n))
    evictions = draw(st.lists(st.sampled_from(EVICTIONS), min_size=n, max_size=n))
    config = make_config(draw(st.sampled_from(POLICIES)), utils, evictions, gpus)
    secs = draw(
        st.dictionaries(
            st.tuples(st.sampled_from(list(config.models)), st.sampled_from(list(Step))),
            st.floats(0, 20, allow_nan=False),
        )
    )
    world = OverlapWorld(
        config,
        dict.fromkeys(range(gpus), 80 * GIB),
        lambda model, step: secs.get((model, step), 1.0),
        service_secs=draw(st.floats(0.1, 10, allow_nan=False)),
    )
    arrivals = draw(
        st.lists(
            st.tuples(st.floats(0, 120, allow_nan=False), st.sampled_from(list(config.models))),
            max_size=30,
        )
    )
    for ticket, (at, model) in enumerate(sorted(arrivals), start=1):
        world.arrive(at, ticket, model)
    return world, len(arrivals)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_gpu_memory_is_never_over_budget_while_evictions_overlap_wakes(
    scenario: tuple[OverlapWorld, int],
) -> None:
    world, requests = scenario
    world.run(until=10_000)
    event(f"overlapped wakes: {min(world.overlapped, 3)}")
    assert world.over_budget == []
    assert len(world.answered) == requests  # every request was granted or rejected


def test_the_world_overlaps_a_wake_with_the_rest_of_an_eviction() -> None:
    """Two models that cannot be awake together; `m0` evicts by sleep (1 s), then suspend
    (10 s). The request for `m1` wakes it during the suspend, within the GPU's budget."""
    config = make_config("fifo", [0.9, 0.9], ["offload+cuda_suspend"] * 2, 1)
    secs = {Step.SLEEP_OFFLOAD: 1.0, Step.CUDA_SUSPEND: 10.0, Step.COLD_START: 2.0}
    world = OverlapWorld(config, {0: 80 * GIB}, lambda _, step: secs.get(step, 0.0))
    world.arrive(0.0, 1, "m0")
    world.arrive(5.0, 2, "m1")
    world.run(until=100)
    assert world.overlapped == 1
    assert world.over_budget == []
    assert world.answered == {1: "granted", 2: "granted"}


def test_without_overlap_the_same_world_waits_for_the_whole_eviction() -> None:
    config = make_config("fifo", [0.9, 0.9], ["offload+cuda_suspend"] * 2, 1, overlap=False)
    secs = {Step.SLEEP_OFFLOAD: 1.0, Step.CUDA_SUSPEND: 10.0, Step.COLD_START: 2.0}
    world = OverlapWorld(config, {0: 80 * GIB}, lambda _, step: secs.get(step, 0.0))
    world.arrive(0.0, 1, "m0")
    world.arrive(5.0, 2, "m1")
    world.run(until=100)
    assert world.overlapped == 0
    assert world.answered == {1: "granted", 2: "granted"}
