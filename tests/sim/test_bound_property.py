"""No policy beats the bound: random small loads, every policy in the registry.

Hypothesis draws a config (two to four models, memory shares that may or may not fit
together, one or two GPUs, any eviction level), a cost source (fixed switch costs, the
default per-step costs, or the `h200-vm` profile) and up to 30 requests; every policy's
p99 wait must be at least the bound's and its GPU busy at most the bound's. Queues are
long enough that no request is refused on arrival (the bound's stated assumption).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumux.core.config import Config
from gpumux.policy.registry import POLICIES
from gpumux.simulate.bound import compute_bound
from gpumux.simulate.cost_profile import H200_VM
from gpumux.simulate.engine import Simulation
from gpumux.simulate.report import summarize
from gpumux.simulate.scenario import for_policy
from gpumux.simulate.switch_model import CostSource, SwitchModel
from gpumux.simulate.workloads import Arrival
from tests.support.sim import make_config

pytestmark = pytest.mark.unit
EVICTIONS = (
    "offload+keep_running",
    "discard+keep_running",
    "retain+stop",
    "retain+cuda_suspend",
    "discard+cuda_suspend",
    "discard+checkpoint",
)
SLACK = 1e-6


@st.composite
def instances(draw: st.DrawFn) -> tuple[Config, list[Arrival], CostSource]:
    n = draw(st.integers(2, 4))
    gpus = draw(st.integers(1, 2))
    utils = draw(st.lists(st.sampled_from([0.3, 0.45, 0.6, 0.9]), min_size=n, max_size=n))
    evictions = draw(st.lists(st.sampled_from(EVICTIONS), min_size=n, max_size=n))
    # Deep queues: the bound assumes no request is refused for a full queue.
    config = make_config("time_slice", utils, evictions, gpus, max_queue=256)
    models = list(config.models)
    sources: list[CostSource] = [SwitchModel(1.0), SwitchModel(10.0), SwitchModel(), H200_VM]
    costs = draw(st.sampled_from(sources))
    horizon = draw(st.sampled_from([20.0, 100.0, 400.0]))
    arrivals = draw(
        st.lists(
            st.builds(
                Arrival,
                t=st.floats(0, horizon, allow_nan=False),
                model=st.sampled_from(list(models)),
                prompt_tokens=st.integers(0, 300),
                output_tokens=st.integers(1, 300),
            ),
            min_size=1,
            max_size=30,
        )
    )
    return config, sorted(arrivals, key=lambda a: a.t), costs


@settings(max_examples=60, deadline=None)
@given(instances())
def test_no_policy_in_the_registry_beats_the_bound(
    instance: tuple[Config, list[Arrival], CostSource],
) -> None:
    config, arrivals, costs = instance
    bound = compute_bound(config, arrivals, costs)
    for policy in sorted(POLICIES):
        got = summarize(Simulation(for_policy(config, policy), arrivals, costs).run())
        assert got["p99_wait"] >= bound.p99_wait - SLACK, (policy, got, bound)
        assert got["busy_fraction"] <= bound.busy_fraction + SLACK, (policy, got, bound)
