"""The wait bound with mixed priorities (hypothesis): under load below capacity, every
policy still serves each request within `max_wait_secs` plus one switch, whatever the
models' priorities — higher priority goes first only where the bound of the others holds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpumux.core.config import Config
from gpumux.simulate.faults import Faults
from gpumux.simulate.report import summarize
from gpumux.simulate.workloads import Arrival
from tests.support.sim import FAST, light_load, run_checked

pytestmark = pytest.mark.unit


@st.composite
def prioritized_light_load(draw: st.DrawFn) -> tuple[Config, list[Arrival], float]:
    config, arrivals, switch_secs = draw(light_load())
    priorities = draw(st.lists(st.integers(-2, 5), min_size=len(config.models)))
    models = {
        alias: model.model_copy(update={"priority": priority})
        for (alias, model), priority in zip(config.models.items(), priorities, strict=False)
    }
    return config.model_copy(update={"models": models}), arrivals, switch_secs


@FAST
@given(prioritized_light_load())
def test_wait_bound_holds_with_mixed_priorities(
    scenario: tuple[Config, list[Arrival], float],
) -> None:
    config, arrivals, switch_secs = scenario
    sim, _, _ = run_checked(config, arrivals, switch_secs, Faults())
    summary = summarize(sim.record)
    assert summary["over_bound"] == 0, [
        (r.model, config.models[r.model].priority, r.arrived_at, r.wait, r.switch_secs)
        for r in sim.record.requests.values()
        if r.wait is not None and r.wait > config.policy.max_wait_secs + r.switch_secs
    ]
    assert summary["completed"] == len(arrivals)
